"""The foundation's demonstration actors: echo, pinger and counter.

They prove one actor set runs unchanged on the simulator and on ZeroMQ
(tests/contract/test_drivers.py), and they stay useful to operators:
`ping.peer` checks the peer network from any node. The counter shows the
shape of every later actor that needs a blocking service: ask, remember who
is waiting under the ticket, answer when the `ServiceResult` arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyswarm.actors.messages import (
    CounterValue,
    Echo,
    EchoResult,
    Failure,
    Increment,
    Ping,
    PingPeer,
    PingPeerResult,
    Pong,
)
from keyswarm.actors.runtime import Actor, Address, Context, Sender, ServiceResult
from keyswarm.errors import ErrorCode

#: Name of the blocking service the counter asks.
COUNTER_SERVICE = "counter-store"


class EchoActor(Actor):
    """Answers peers' pings and clients' echoes."""

    name = "echo"

    def on_message(self, ctx: Context, msg: object) -> None:
        match msg:
            case Ping(nonce=nonce):
                ctx.reply(Pong(nonce=nonce, node=ctx.node))
            case Echo(payload=payload):
                ctx.reply(EchoResult(payload=payload, node=ctx.node))
            case _:
                ctx.log.debug("echo ignores %s", type(msg).__name__)


@dataclass(frozen=True, slots=True)
class PingTimeout:
    nonce: bytes


@dataclass(slots=True)
class _Probe:
    client: Sender
    target: str
    sent_at: float
    timer: int


class PingerActor(Actor):
    """Pings another node's echo actor for a client and reports the round trip."""

    name = "pinger"
    MAX_PENDING = 10_000

    def __init__(self) -> None:
        self.pending: dict[bytes, _Probe] = {}

    def on_message(self, ctx: Context, msg: object) -> None:
        match msg:
            case PingPeer(target=target, timeout_s=timeout_s):
                self._ping(ctx, target, timeout_s)
            case Pong(nonce=nonce):
                probe = self.pending.pop(nonce, None)
                if probe is None:
                    return  # late, duplicated or forged: a nonce answers once
                ctx.cancel_timer(probe.timer)
                rtt_ms = (ctx.now() - probe.sent_at) * 1000.0
                ctx.reply_to(probe.client, PingPeerResult(target=probe.target, rtt_ms=rtt_ms))
            case PingTimeout(nonce=nonce):
                probe = self.pending.pop(nonce, None)
                if probe is not None:
                    ctx.reply_to(
                        probe.client,
                        Failure.of(ErrorCode.UNAVAILABLE, f"no answer from node {probe.target!r}"),
                    )

    def _ping(self, ctx: Context, target: str, timeout_s: float) -> None:
        if not 0 < timeout_s <= 60:
            ctx.reply(Failure.of(ErrorCode.BAD_REQUEST, "timeout_s must be in (0, 60]"))
            return
        if len(self.pending) >= self.MAX_PENDING:
            ctx.reply(Failure.of(ErrorCode.BUSY, "too many pings in flight"))
            return
        nonce = ctx.entropy(12)
        if not ctx.send(Address(target, "echo"), Ping(nonce=nonce)):
            ctx.reply(Failure.of(ErrorCode.UNAVAILABLE, f"node {target!r} is unknown or not reachable"))
            return
        timer = ctx.start_timer(timeout_s, PingTimeout(nonce))
        self.pending[nonce] = _Probe(client=ctx.sender, target=target, sent_at=ctx.now(), timer=timer)


@dataclass(frozen=True, slots=True)
class CounterIncrement:
    """The request the counter actor hands its blocking service."""

    name: str
    by: int


class CounterActor(Actor):
    """Keeps named counters through a blocking service."""

    name = "counter"
    MAX_NAME_BYTES = 256

    def __init__(self) -> None:
        self.waiting: dict[int, tuple[Sender, str]] = {}

    def on_message(self, ctx: Context, msg: object) -> None:
        match msg:
            case Increment(name=name, by=by):
                if not name or len(name.encode()) > self.MAX_NAME_BYTES:
                    ctx.reply(Failure.of(ErrorCode.BAD_REQUEST, "counter name must be 1-256 bytes"))
                    return
                ticket = ctx.ask(COUNTER_SERVICE, CounterIncrement(name=name, by=by))
                self.waiting[ticket] = (ctx.sender, name)
            case ServiceResult(ticket=ticket):
                client, name = self.waiting.pop(ticket, (None, ""))
                if msg.ok:
                    ctx.reply_to(client, CounterValue(name=name, value=msg.value))
                elif msg.error.code is ErrorCode.INTERNAL:
                    # The text of an internal failure is for the operator's log, not the client.
                    ctx.log.error("counter store failed: %s", msg.error)
                    ctx.reply_to(client, Failure.of(ErrorCode.INTERNAL, "the counter store failed"))
                else:
                    ctx.reply_to(client, Failure.of(msg.error.code, str(msg.error)))
