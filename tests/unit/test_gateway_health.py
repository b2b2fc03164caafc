"""The gateway's `health`: token and sub-key states gathered from the hardware and sub-keys actors.

Driven in the simulator with stand-in `hardware` and `subkeys` actors that
answer their status requests (or stay silent), so each rule of the
gathering round shows on its own: answered once both replied, never later
than `HEALTH_GATHER_TIMEOUT_S`, concurrent requests served by one round, no
state from a peer, nothing asked of actors a node does not run.
"""

from __future__ import annotations

import pytest

from keyswarm.actors.gateway import HEALTH_GATHER_TIMEOUT_S, Gateway
from keyswarm.actors.hardware import TokenStatus, TokenStatusResult
from keyswarm.actors.messages import Health
from keyswarm.actors.runtime import Actor, ActorSpec, Address, Context
from keyswarm.actors.subkeys import SubkeyStatus, SubkeyStatusResult
from keyswarm.node.assembly import GATEWAY
from keyswarm.sim import LinkProfile, Simulation

FIXED = LinkProfile(latency_s=0.001, jitter_s=0.0)
TOKEN = TokenStatusResult(state="absent", kind="yubikey", serial=7, firmware="5.7.2", queue_depth=0, detail="pulled")
SUBKEY = SubkeyStatusResult(
    state="renewing", current_serial=0xABC, current_not_after_s=1_700_003_600.0, previous_serial=0, failures=2, rotations=1
)


class StandIn(Actor):
    """Answers one status request kind with a fixed reply, or stays silent; counts what it was asked."""

    asked: dict[str, int] = {}

    def __init__(self, name: str, request: type, reply: object | None):
        self.name, self.request, self.answer = name, request, reply

    def on_message(self, ctx: Context, msg: object) -> None:
        if type(msg) is self.request:
            StandIn.asked[self.name] = StandIn.asked.get(self.name, 0) + 1
            if self.answer is not None:
                ctx.reply(self.answer)


class Forger(Actor):
    """On another node, under the name `subkeys`: sends n1's gateway a status reply in the real actor's place.

    (`SubkeyStatusResult` is a registered message, so a peer frame can carry
    one; `TokenStatusResult` is local-only and cannot travel at all.)
    """

    def on_message(self, ctx: Context, msg: object) -> None:
        ctx.send(Address("n1", GATEWAY), SUBKEY)


def simulation(*, token: object | None = TOKEN, subkey: object | None = SUBKEY, with_actors: bool = True) -> Simulation:
    StandIn.asked = {}
    specs = [ActorSpec(GATEWAY, Gateway)]
    if with_actors:
        specs += [
            ActorSpec("hardware", lambda: StandIn("hardware", TokenStatus, token)),
            ActorSpec("subkeys", lambda: StandIn("subkeys", SubkeyStatus, subkey)),
        ]
    forgers = [ActorSpec("subkeys", Forger)]
    return Simulation(1, ["n1", "n2"], actors=lambda node: specs if node == "n1" else forgers, client_link=FIXED)


def test_health_carries_the_token_and_subkey_states() -> None:
    sim = simulation()
    handle = sim.submit("n1", Health())
    sim.run_for(0.1)
    outcome = sim.replies[handle]
    value = outcome.reply.value
    assert (value.token, value.token_kind, value.subkey) == ("absent", "yubikey", "renewing")
    assert (value.subkey_serial, value.subkey_not_after_s) == (0xABC, 1_700_003_600.0)
    assert outcome.latency_s == pytest.approx(0.002), "answered in the same turn: the actors answer from memory"


def test_a_silent_actor_delays_health_by_the_gather_timeout_at_most() -> None:
    sim = simulation(subkey=None)
    handles = [sim.submit("n1", Health()) for _ in range(3)]  # one round serves all three
    sim.run_for(1.0)
    for handle in handles:
        outcome = sim.replies[handle]
        assert outcome.latency_s == pytest.approx(0.002 + HEALTH_GATHER_TIMEOUT_S)
        assert (outcome.reply.value.token, outcome.reply.value.subkey) == ("absent", "unknown")
        assert outcome.reply.value.subkey_serial == 0
    assert StandIn.asked == {"hardware": 1, "subkeys": 1}


def test_a_node_without_the_actors_answers_at_once_with_empty_fields() -> None:
    sim = simulation(with_actors=False)
    handle = sim.submit("n1", Health())
    sim.run_for(0.1)
    outcome = sim.replies[handle]
    assert outcome.latency_s == pytest.approx(0.002)
    assert (outcome.reply.value.token, outcome.reply.value.subkey, outcome.reply.value.token_kind) == ("", "", "")


def test_a_peer_cannot_feed_the_gateway_a_token_state() -> None:
    sim = simulation(token=None, subkey=None)
    handle = sim.submit("n1", Health())  # a round starts; the real actors stay silent

    def forge() -> None:  # mid-round, a peer answers in their place
        sim.node("n2").runtime.deliver("subkeys", None, "go")
        sim.node("n2").drain()

    sim.at(0.1, forge, "forge")
    sim.run_for(1.0)
    value = sim.replies[handle].reply.value
    assert (value.token, value.subkey) == ("unknown", "unknown"), value
