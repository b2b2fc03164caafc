"""Who sends and who is answered: actor addresses, client references, and the
runtime-local messages that carry answers.

Owns `Address` (an actor on some node), `ClientRef` (a client request
awaiting its answer), `Sender`, and the messages the runtime itself makes
and that never travel on the wire: `ServiceResult` (a blocking service's
answer), `SessionReply` (an answer on its way to be sealed) and `RawFrame`
(bytes already encoded for a client). `keyswarm.actors.runtime` re-exports
every name here; import from either.

Rules:
- Frozen dataclasses; fields are append-only with defaults (STYLE habit 3),
  so a `ClientRef` built with three arguments means what it always meant.
- None of these is a registered message: no peer frame can carry one, so a
  peer can never pose as a client or as a service's answer.
- `ClientRef` has three shapes (docs/architecture.md, "The session path"):
  1. a plain request: `(node, identity, request_id)`;
  2. an in-session frame as it arrived: `session` is the session id the
     frame names and `request_id` its counter. It names the frame's slot in
     the driver's in-flight table; answers to it go out as they are: an
     unsealed error reply under the counter, or the `RawFrame` the sessions
     actor sealed;
  3. an opened in-session request: also `inner_id` (the inner request's id)
     and `client` (the authenticated client's name). `Context.reply_to`
     hands answers to this shape to the local `sessions` actor as a
     `SessionReply`, which it seals under the session's keys; the serving
     actor replies exactly as it would to a plain request.
  Only the driver builds shape 1 and 2, and only the sessions actor shape 3,
  after the frame authenticated and the policy allowed the request: an actor
  may trust `client` of a shape-3 sender.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyswarm.errors import KeyswarmError

#: The actor that seals answers to opened in-session requests (`ClientRef.inner_id` set).
SESSIONS = "sessions"


@dataclass(frozen=True, slots=True)
class Address:
    """An actor somewhere in the network: `(node, actor)`."""

    node: str
    actor: str

    def __str__(self) -> str:
        return f"{self.actor}@{self.node}"


@dataclass(frozen=True, slots=True)
class ClientRef:
    """A client request awaiting its answer on `node`'s client socket (three shapes: module docstring)."""

    node: str
    identity: bytes  # the client's ZeroMQ routing id on that socket
    request_id: int  # plain: the request id; in-session: the frame's counter
    session: bytes = b""  # in-session: the session id the frame names (b"": a plain request)
    inner_id: int | None = None  # opened in-session request: the inner request's id (None: not one)
    client: str = ""  # opened in-session request: the authenticated client's name

    @property
    def slot(self) -> ClientRef:
        """The in-flight slot this answer closes: this reference without `inner_id` and `client`."""
        if self.inner_id is None:
            return self
        return ClientRef(self.node, self.identity, self.request_id, self.session)


#: Who sent the message an actor is handling: an actor, a client request, or
#: nobody (timers, service results, the runtime itself).
Sender = Address | ClientRef | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceResult:
    """The answer to `ctx.ask(service, request)`: a value or an error."""

    ticket: int
    service: str
    value: object = None
    error: KeyswarmError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class SessionReply:
    """An actor's answer `msg` to the opened in-session request `ref`, on its way to `sessions`."""

    ref: ClientRef
    msg: object


@dataclass(frozen=True, slots=True)
class RawFrame:
    """Bytes to send a client as they are (a sealed in-session frame); never re-encoded."""

    data: bytes

    def __repr__(self) -> str:  # traces show replies: keep a 16 MiB frame to one short line
        return f"RawFrame({len(self.data)}B)"
