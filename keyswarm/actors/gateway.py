"""The gateway actor: the first actor every client request reaches.

The driver has already decoded and size-checked the frame and enforced the
per-client in-flight cap; the gateway answers what it owns (`health`) and
forwards the rest to the actor that serves it, keeping the client as the
sender so that actor replies straight to the client. An operation nobody
serves is a BAD_REQUEST, never a silent drop.

Sessions: the handshake operations go to the `sessions` actor. The key
service's operations and the admin operations (every operation the policy
speaks of, `keyswarm.policy.OPERATIONS`, and their batch forms) are served
inside a session only: as plain requests they are UNAUTHENTICATED. In-session
requests reach their actor from `sessions` (after the policy allowed them),
and the gateway only for what it serves itself (`health`) or nobody does.
`client_routes()` is the one route table both actors use.

Health on a node with a token: `HealthResult` also carries the token's state
(from the `hardware` actor's `TokenStatus`) and the current sub-key's state,
serial and expiry (from the `subkeys` actor's `SubkeyStatus`): serials and
times only, never key material. Both actors answer those from memory, so the
gateway asks them when a `health` arrives and answers every health request
waiting once both replied. Rules:
- One gathering round at a time; health requests arriving meanwhile join it.
- A round ends when both answered, or after `HEALTH_GATHER_TIMEOUT_S`
  (an actor restarting, or stuck behind its mailbox): health is answered
  anyway, a silent actor's fields read "unknown". Health never waits long.
- Only running actors are asked; a node without them answers at once, with
  those fields empty (as before tokens existed).
- Status replies are accepted from this node's own `hardware` and `subkeys`
  actors only: a peer frame cannot fake them.
- `conditions` names why the node is degraded (`ctx.conditions()`: the
  node's revocation, its certificate outside its validity, no sub-key, the
  token absent, ...), each with its detail, so an operator reads the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyswarm.actors.admin import ADMIN
from keyswarm.actors.hardware import HardwareActor, TokenStatus, TokenStatusResult
from keyswarm.actors.key_router import KEY_ROUTES, KEYS
from keyswarm.actors.messages import Echo, Failure, Health, HealthResult, Increment, PingPeer
from keyswarm.actors.runtime import SESSIONS, Actor, Address, Context, Sender
from keyswarm.actors.session_policy import policy_operation
from keyswarm.actors.subkeys import SUBKEYS, SubkeyStatus, SubkeyStatusResult
from keyswarm.crypto.handshake_messages import Auth, Hello, Resume
from keyswarm.errors import ErrorCode
from keyswarm.policy import OPERATIONS
from keyswarm.transport.codec import op_of

#: The gateway's name on every node.
GATEWAY = "gateway"

#: Which local actor serves each client operation of the foundation.
ROUTES: dict[type, str] = {
    Echo: "echo",
    PingPeer: "pinger",
    Increment: "counter",
}
#: The handshake operations: plain requests, served by the sessions actor.
HANDSHAKE_ROUTES: dict[type, str] = {Hello: SESSIONS, Auth: SESSIONS, Resume: SESSIONS}


def client_routes() -> dict[type, str]:
    """Every client operation this node serves and the actor that serves it (health: the gateway)."""
    return {**ROUTES, **KEY_ROUTES, **HANDSHAKE_ROUTES}


#: Why in-session key operations fail on a node that runs no key service.
NO_KEYS_MESSAGE = "this node serves no keys: no token configured"
_KEY_SERVICE_ACTORS = frozenset({KEYS, ADMIN})


def refused_delivery(ctx: Context, target: str) -> Failure:
    """The answer to a request whose forward to local actor `target` was refused.

    BUSY (retryable) when `target` runs and its mailbox is full; UNAVAILABLE
    when this node does not run it at all (no key service on a node without
    a token or domain key: "this node serves no keys"), or it has stopped.
    Reads the node's actor table only on this failure path.
    """
    state = ctx.stats().get(target, {}).get("state")
    if state is None:
        if target in _KEY_SERVICE_ACTORS or target.startswith(KEYS + "."):
            return Failure.of(ErrorCode.UNAVAILABLE, NO_KEYS_MESSAGE)
        return Failure.of(ErrorCode.UNAVAILABLE, f"this node does not run {target}")
    if state == "stopped":
        return Failure.of(ErrorCode.UNAVAILABLE, f"{target} has stopped on this node")
    return Failure.of(ErrorCode.BUSY, f"{target} is over its queue bound")


def needs_session(kind: type) -> bool:
    """Whether requests of message type `kind` are served only inside a session (a policed operation)."""
    try:
        op = op_of(kind) or ""
    except KeyError:  # not a registered message (a node-local one): no client sends it
        return False
    return policy_operation(op) in _POLICED


_POLICED = frozenset(OPERATIONS)

#: Seconds a health request waits at most for the token and sub-key states.
HEALTH_GATHER_TIMEOUT_S = 0.5
#: Health requests waiting for one round at most; past it they are answered at once from the last round.
MAX_WAITING_HEALTH = 1024
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class _GatherTimeout:
    round: int


class Gateway(Actor):
    name = "gateway"

    def __init__(self, routes: dict[type, str] | None = None):
        self.routes = client_routes() if routes is None else routes
        self._policed = frozenset(kind for kind in self.routes if needs_session(kind))
        self.started_at = 0.0
        self._round = 0
        self._waiting: list[Sender] = []
        self._asked: dict[str, object | None] = {}  # actor -> its reply this round (None: not yet)
        self._timer: int | None = None
        self._token: TokenStatusResult | None = None
        self._subkey: SubkeyStatusResult | None = None

    def on_start(self, ctx: Context) -> None:
        self.started_at = ctx.now()

    def on_message(self, ctx: Context, msg: object) -> None:
        kind = type(msg)
        if kind is Health:
            self._on_health(ctx)
            return
        if kind is TokenStatusResult or kind is SubkeyStatusResult or kind is Failure:
            if self._from_status_actor(ctx):
                self._on_status(ctx, msg)
                return
        if kind is _GatherTimeout:
            if msg.round == self._round and self._waiting:
                self._timer = None
                self._answer_waiting(ctx)
            return
        target = self.routes.get(kind)
        if kind in self._policed:  # the sessions actor forwards these itself, after the policy
            ctx.reply(Failure.of(ErrorCode.UNAUTHENTICATED,
                                 f"{op_of(kind)} is served inside a session only: open one with handshake.hello"))
        elif target is None:
            ctx.reply(Failure.of(ErrorCode.BAD_REQUEST, f"operation {kind.__name__} is not served by this node"))
        elif not ctx.forward(target, msg):
            ctx.reply(refused_delivery(ctx, target))

    # --- health ---------------------------------------------------------------------

    def _on_health(self, ctx: Context) -> None:
        if self._waiting:  # a round is gathering: join it
            if len(self._waiting) < MAX_WAITING_HEALTH:
                self._waiting.append(ctx.sender)
            else:
                ctx.reply(self._result(ctx, fresh=False))
            return
        states = {name: row["state"] for name, row in ctx.stats().items()}
        self._asked = {}
        for actor, request in ((HardwareActor.name, TokenStatus()), (SUBKEYS, SubkeyStatus())):
            if states.get(actor) == "running" and ctx.send(actor, request):
                self._asked[actor] = None
        if not self._asked:
            ctx.reply(self._result(ctx, fresh=True))
            return
        self._round += 1
        self._waiting.append(ctx.sender)
        self._timer = ctx.start_timer(HEALTH_GATHER_TIMEOUT_S, _GatherTimeout(self._round))

    def _on_status(self, ctx: Context, msg: object) -> None:
        actor = ctx.sender.actor  # type: ignore[union-attr]  -- checked by _from_status_actor
        if type(msg) is TokenStatusResult:
            self._token = msg
        elif type(msg) is SubkeyStatusResult:
            self._subkey = msg
        if actor in self._asked and self._asked[actor] is None:
            self._asked[actor] = msg
        if self._waiting and all(reply is not None for reply in self._asked.values()):
            if self._timer is not None:
                ctx.cancel_timer(self._timer)
                self._timer = None
            self._answer_waiting(ctx)

    def _answer_waiting(self, ctx: Context) -> None:
        result = self._result(ctx, fresh=True)
        waiting, self._waiting = self._waiting, []
        for sender in waiting:
            ctx.reply_to(sender, result)

    def _result(self, ctx: Context, *, fresh: bool) -> HealthResult:
        """The health answer; `fresh`: only what this round's replies said (silent actors: unknown)."""
        states = {name: row["state"] for name, row in ctx.stats().items()}
        token, subkey = self._token, self._subkey
        if fresh:
            token = token if type(self._asked.get(HardwareActor.name)) is TokenStatusResult else None
            subkey = subkey if type(self._asked.get(SUBKEYS)) is SubkeyStatusResult else None
        has_token, has_subkeys = HardwareActor.name in states, SUBKEYS in states
        return HealthResult(
            node=ctx.node,
            status=ctx.node_status(),
            actors=states,
            uptime_s=ctx.now() - self.started_at,
            token=(token.state if token is not None else UNKNOWN) if has_token else "",
            token_kind=(token.kind or "") if token is not None else "",
            subkey=(subkey.state if subkey is not None else UNKNOWN) if has_subkeys else "",
            subkey_serial=subkey.current_serial if subkey is not None else 0,
            subkey_not_after_s=subkey.current_not_after_s if subkey is not None else 0.0,
            conditions=dict(ctx.conditions()),
        )

    def _from_status_actor(self, ctx: Context) -> bool:
        sender = ctx.sender
        return (
            type(sender) is Address and sender.node == ctx.node and sender.actor in (HardwareActor.name, SUBKEYS)
        )
