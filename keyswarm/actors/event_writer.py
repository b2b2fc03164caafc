"""An actor's appends through the storage actor: one live batch at a time, answers matched to batches.

Owns `EventWriter`, which the `keys.<p>` actors and the `admin` actor use to
turn drafts into durable events, and the rules by which the storage actor's
answers (`EventsAppended` or `Failure`, which carry no correlation id) are
matched to the batch they answer.

Rules:
- At most one *live* batch: the owner sends the next batch only when the
  previous one was answered (or given up on). Writes of one owner are then
  checked against a state that holds every earlier write, and the storage
  actor still group-commits the batches of many owners together.
- `EventsAppended` is matched by content: its events are the drafts of one
  batch (type, subject and body, in order). The owner folds the events of
  every `EventsAppended` it gets, matched or not: folding is idempotent and
  convergent, and a durable event must never be missing from the state.
- A `Failure` says nothing about which batch it answers. The storage actor
  answers one owner's appends in order, except for appends it refuses at
  once (busy, bad draft), which can overtake an accepted one still queued.
  So a `Failure` answers the oldest batch still owed an answer; when that is
  a batch already given up on, the live batch may stay unanswered, and its
  timeout answers it UNAVAILABLE (retryable). Every path ends in an honest
  answer: "durable", "failed", or "unknown, retry" (writes carry request
  ids, so a retry after "unknown" applies once).
- `timeout_s` bounds how long a live batch waits (the storage actor may
  restart and forget it). A batch given up on stays owed: its late answer
  is still matched (and its events folded), so it cannot be taken for the
  answer of a later batch.
- Only the node's own `storage` actor is listened to; anything else with
  these types is ignored (a peer frame could carry them).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Address, Context
from keyswarm.actors.storage import STORAGE, AppendEvents, EventDraft, EventsAppended
from keyswarm.errors import ErrorCode
from keyswarm.storage.chain import Draft

#: Seconds a live batch waits for the storage actor before it is answered UNAVAILABLE.
WRITE_TIMEOUT_S = 10.0
#: Batches given up on that are still remembered (their late answers matched); older ones are forgotten.
MAX_ABANDONED = 64


@dataclass(frozen=True, slots=True)
class WriteTimeout:
    """Timer: the live batch `serial` has waited `timeout_s`."""

    serial: int


class _Batch:
    __slots__ = ("serial", "drafts", "token", "timer", "live")

    def __init__(self, serial: int, drafts: tuple[EventDraft, ...], token: object, timer: int):
        self.serial = serial
        self.drafts = drafts
        self.token = token
        self.timer = timer
        self.live = True


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a storage answer or a timeout means to the owner.

    `token` is the live batch's token when this answers it (None: it answered
    nothing live). `events` are durable events to fold (any answer may bring
    some). `failure` is set when the live batch failed or timed out.
    """

    token: object | None
    events: tuple = ()
    failure: Failure | None = None


_NOTHING = Outcome(None)


class EventWriter:
    """Sends an owner's drafts to the storage actor and matches the answers."""

    def __init__(self, *, timeout_s: float = WRITE_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._owed: deque[_Batch] = deque()  # sent, not answered by storage; oldest first
        self._live: _Batch | None = None
        self._serial = 0

    @property
    def busy(self) -> bool:
        """Whether a batch is live (the owner must wait before sending the next)."""
        return self._live is not None

    def send(self, ctx: Context, drafts: list[Draft], token: object) -> bool:
        """Append `drafts` in one durable commit; the answer comes back as an `Outcome`
        carrying `token`. False (nothing sent, nothing live) when the storage actor's
        mailbox refused it: the owner answers BUSY."""
        assert self._live is None, "one live batch at a time"
        encoded = tuple(EventDraft.of(d) for d in drafts)
        if not ctx.send(STORAGE, AppendEvents(drafts=encoded)):
            return False
        self._serial += 1
        timer = ctx.start_timer(self.timeout_s, WriteTimeout(self._serial))
        batch = _Batch(self._serial, encoded, token, timer)
        self._live = batch
        self._owed.append(batch)
        return True

    def is_storage_answer(self, ctx: Context, msg: object) -> bool:
        """Whether `msg` is an answer from this node's storage actor (what `on_answer` takes)."""
        sender = ctx.sender
        return (
            (type(msg) is EventsAppended or type(msg) is Failure)
            and type(sender) is Address and sender.node == ctx.node and sender.actor == STORAGE
        )

    def on_answer(self, ctx: Context, msg: EventsAppended | Failure) -> Outcome:
        """Match a storage answer to its batch (see the module rules)."""
        if type(msg) is EventsAppended:
            batch = self._match(msg.events)
            if batch is None:
                return Outcome(None, msg.events)
            return Outcome(self._settle(ctx, batch), msg.events)
        if not self._owed:
            return _NOTHING
        batch = self._owed[0]
        live = batch.live
        return Outcome(self._settle(ctx, batch), (), msg if live else None)

    def on_timeout(self, ctx: Context, msg: WriteTimeout) -> Outcome:
        live = self._live
        if live is None or live.serial != msg.serial:
            return _NOTHING
        live.live = False
        self._live = None
        while len(self._owed) > MAX_ABANDONED:
            self._owed.popleft()
        return Outcome(live.token, (), Failure(
            code=ErrorCode.UNAVAILABLE, retryable=True,
            message="the event log did not confirm the write in time; it may or may not have applied "
                    "(retry with the same client_request_id)",
        ))

    def _match(self, events: tuple) -> _Batch | None:
        for batch in self._owed:
            drafts = batch.drafts
            if len(drafts) == len(events) and all(
                d.body == e.body and d.type == e.type and d.subject == e.subject for d, e in zip(drafts, events)
            ):
                return batch
        return None

    def _settle(self, ctx: Context, batch: _Batch) -> object | None:
        self._owed.remove(batch)
        if not batch.live:
            return None
        batch.live = False
        self._live = None
        ctx.cancel_timer(batch.timer)
        return batch.token
