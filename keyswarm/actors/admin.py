"""The `admin` actor: the writer of the network's policy events (`policy.set`, `client.revoke`, `node.revoke`).

Owns the admin operations that change the policy table: it validates them,
appends `PolicySet` / `ClientRevoked` / `NodeRevoked` events (partition 0, subject "")
through the storage actor, answers once they are durable, and hands the
durable events to the `sessions` actor (`PolicyChanged`), which folds them
into the table it authorises with.

Rules:
- Who may call these is decided before they get here: the sessions actor
  forwards an admin request only for a client the policy makes admin. This
  actor checks what is written (rules through `validate_rules`, the
  envelope through `check_policy_envelope`), not who writes it.
- Durable before visible, as for keys (event_writer.py): the answer and the
  `PolicyChanged` notice come only after `EventsAppended`; every durable
  policy event the storage actor reports is passed on, even one of a write
  given up on, so the table never misses a durable event.
- Retried writes apply once while this actor lives: a retry of a write in
  flight joins it; a retry of an answered one (same client and
  `client_request_id`, kept in a bounded LRU of `MAX_REMEMBERED`) gets the
  original answer. Unlike key writes, these records are not persisted: a
  retry that crosses a restart of this actor writes again. `PolicySet`,
  `ClientRevoked` and `NodeRevoked` are idempotent in effect (the same rules set again, the
  same revocation), so the only loss is when another admin changed the same
  client's rules between the write and its retry.
- One write in flight at a time; others wait in a bounded queue (BUSY past it).
- Answer, then notice: the answer to a write goes out before its
  `PolicyChanged`. An in-session answer is sealed by the sessions actor,
  so both land in its mailbox in that order and nothing comes between: an
  admin who revokes the node it is connected to (which closes every session
  there), or itself, still gets its answer.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from keyswarm.actors.event_writer import WRITE_TIMEOUT_S, EventWriter, Outcome, WriteTimeout
from keyswarm.actors.key_messages import (
    MAX_CLIENT_REQUEST_ID_BYTES,
    PolicyChanged,
    RevokeClient,
    RevokeClientResult,
    RevokeNode,
    RevokeNodeResult,
    SetPolicy,
    SetPolicyResult,
)
from keyswarm.actors.key_requests import failure_of
from keyswarm.actors.keys import client_of
from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import SESSIONS, Actor, Context, Sender
from keyswarm.errors import DecodeError, ErrorCode, KeyswarmError
from keyswarm.policy import validate_node_name, validate_rules
from keyswarm.storage.bodies import request_fingerprint
from keyswarm.storage.chain import Draft, draft
from keyswarm.storage.policy_bodies import (
    POLICY_BODY_BY_TAG,
    ClientRevoked,
    NodeRevoked,
    PolicySet,
    check_policy_envelope,
)

ADMIN = "admin"
#: Answered admin writes remembered for retries.
MAX_REMEMBERED = 10_000
#: Admin writes waiting for the one in flight.
MAX_QUEUED = 1_000


@dataclass(slots=True)
class _AdminWrite:
    request: bytes
    senders: list[Sender]
    draft: Draft | None = None
    answer: object = None  # the answer once durable


class AdminActor(Actor):
    """Validates and writes policy events; tells the sessions actor about durable ones."""

    name = ADMIN

    def __init__(self, *, partitions: int, write_timeout_s: float = WRITE_TIMEOUT_S):
        self.partitions = partitions
        self.writer = EventWriter(timeout_s=write_timeout_s)
        self._queue: deque[_AdminWrite] = deque()
        self._pending: dict[bytes, _AdminWrite] = {}
        self._answered: OrderedDict[bytes, object] = OrderedDict()
        self.writes = 0
        self.deduplicated = 0

    def on_message(self, ctx: Context, msg: object) -> None:
        kind = type(msg)
        if kind is SetPolicy or kind is RevokeClient or kind is RevokeNode:
            self._on_request(ctx, msg)
        elif kind is WriteTimeout:
            self._settle(ctx, self.writer.on_timeout(ctx, msg))
        elif self.writer.is_storage_answer(ctx, msg):
            self._settle(ctx, self.writer.on_answer(ctx, msg))
        else:
            ctx.log.debug("admin ignores %s", kind.__name__)

    def _on_request(self, ctx: Context, msg: SetPolicy | RevokeClient | RevokeNode) -> None:
        sender = ctx.sender
        if len(msg.client_request_id) > MAX_CLIENT_REQUEST_ID_BYTES:
            ctx.reply(Failure.of(ErrorCode.BAD_REQUEST,
                                 f"client_request_id is at most {MAX_CLIENT_REQUEST_ID_BYTES} bytes"))
            return
        request = request_fingerprint(client_of(sender), msg.client_request_id)
        if request:
            if request in self._answered:
                self._answered.move_to_end(request)
                self.deduplicated += 1
                ctx.reply(self._answered[request])
                return
            joined = self._pending.get(request)
            if joined is not None:
                joined.senders.append(sender)
                self.deduplicated += 1
                return
        try:
            write = _AdminWrite(request, [sender])
            write.draft, write.answer = self._build(msg)
        except KeyswarmError as exc:
            ctx.reply(failure_of(exc))
            return
        if len(self._queue) >= MAX_QUEUED:
            ctx.reply(Failure.of(ErrorCode.BUSY, "too many admin writes queued; retry later"))
            return
        self._queue.append(write)
        if request:
            self._pending[request] = write
        self._pump(ctx)

    def _build(self, msg: SetPolicy | RevokeClient | RevokeNode) -> tuple[Draft, object]:
        if type(msg) is SetPolicy:
            rules = validate_rules(msg.rules)
            body: object = PolicySet(client=msg.client, rules=rules)
            answer: object = SetPolicyResult(client=msg.client, rules=rules)
        elif type(msg) is RevokeNode:
            body = NodeRevoked(node=validate_node_name(msg.node), reason=msg.reason)
            answer = RevokeNodeResult(node=msg.node)
        else:
            body = ClientRevoked(client=msg.client, fingerprint=msg.fingerprint, reason=msg.reason)
            answer = RevokeClientResult(client=msg.client)
        d = draft(body, subject="", partitions=self.partitions)
        try:
            check_policy_envelope(d, body)
        except DecodeError as exc:
            raise DecodeError(f"{type(msg).__name__}: {exc}") from None
        return d, answer

    def _pump(self, ctx: Context) -> None:
        if self.writer.busy or not self._queue:
            return
        write = self._queue.popleft()
        assert write.draft is not None
        if not self.writer.send(ctx, [write.draft], write):
            self._finish(ctx, write, Failure.of(ErrorCode.BUSY, "the storage actor is over its queue bound"))
            self._pump(ctx)

    def _settle(self, ctx: Context, outcome: Outcome) -> None:
        policy_events = tuple(e for e in outcome.events if e.type in POLICY_BODY_BY_TAG)
        write = outcome.token
        if write is not None:
            if outcome.failure is not None:
                self._finish(ctx, write, outcome.failure)  # type: ignore[arg-type]
            else:
                self.writes += 1
                self._finish(ctx, write, write.answer, remember=True)  # type: ignore[union-attr, arg-type]
        if policy_events:  # after the answer (module docstring, "Answer, then notice")
            ctx.send(SESSIONS, PolicyChanged(policy_events))
        self._pump(ctx)

    def _finish(self, ctx: Context, write: _AdminWrite, answer: object, *, remember: bool = False) -> None:
        if write.request:
            if self._pending.get(write.request) is write:
                del self._pending[write.request]
            if remember:
                self._answered[write.request] = answer
                if len(self._answered) > MAX_REMEMBERED:
                    self._answered.popitem(last=False)
        for sender in write.senders:
            ctx.reply_to(sender, answer)
