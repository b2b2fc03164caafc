"""The gateway actor: the first actor every client request reaches.

The driver has already decoded and size-checked the frame and enforced the
per-client in-flight cap; the gateway answers what it owns (`health`) and
forwards the rest to the actor that serves it, keeping the client as the
sender so that actor replies straight to the client. An operation nobody
serves is a BAD_REQUEST, never a silent drop.
"""

from __future__ import annotations

from keyswarm.actors.messages import Echo, Failure, Health, HealthResult, Increment, PingPeer
from keyswarm.actors.runtime import Actor, Context
from keyswarm.errors import ErrorCode

#: Which local actor serves each client operation.
ROUTES: dict[type, str] = {
    Echo: "echo",
    PingPeer: "pinger",
    Increment: "counter",
}


class Gateway(Actor):
    name = "gateway"

    def __init__(self, routes: dict[type, str] | None = None):
        self.routes = ROUTES if routes is None else routes
        self.started_at = 0.0

    def on_start(self, ctx: Context) -> None:
        self.started_at = ctx.now()

    def on_message(self, ctx: Context, msg: object) -> None:
        if type(msg) is Health:
            states = {name: row["state"] for name, row in ctx.stats().items()}
            ctx.reply(
                HealthResult(
                    node=ctx.node,
                    status=ctx.node_status(),
                    actors=states,
                    uptime_s=ctx.now() - self.started_at,
                )
            )
            return
        target = self.routes.get(type(msg))
        if target is None:
            ctx.reply(Failure.of(ErrorCode.BAD_REQUEST, f"operation {type(msg).__name__} is not served by this node"))
        elif not ctx.forward(target, msg):
            ctx.reply(Failure.of(ErrorCode.BUSY, f"{target} is over its queue bound"))
