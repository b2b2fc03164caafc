"""The runtime and the demo actors driven through the simulator, in virtual time.

Client links have a fixed 1 ms latency here, so round trips are exact sums
that the assertions can name.
"""

from __future__ import annotations

import pytest

from keyswarm.actors.demo import COUNTER_SERVICE
from keyswarm.actors.gateway import ROUTES, Gateway
from keyswarm.actors.messages import CounterValue, Echo, EchoResult, Health, Increment, PingPeer, PingPeerResult
from keyswarm.actors.runtime import Actor, ActorSpec, Context
from keyswarm.errors import Busy, ErrorCode
from keyswarm.node.assembly import GATEWAY, node_actors
from keyswarm.node.services import CounterStore
from keyswarm.sim import LinkProfile, RequestTimeout, ServiceLatency, Simulation

CLIENT_LATENCY_S = 0.001
FIXED_CLIENT_LINK = LinkProfile(latency_s=CLIENT_LATENCY_S, jitter_s=0.0)
ROUND_TRIP_S = 2 * CLIENT_LATENCY_S


def cluster(seed: int, **kwargs: object) -> Simulation:
    kwargs.setdefault("client_link", FIXED_CLIENT_LINK)
    return Simulation(seed, 3, **kwargs)


def answer(sim: Simulation, node: str, msg: object, timeout_s: float = 5.0):
    """Submit, run to the reply, return the outcome (reply and virtual latency)."""
    handle = sim.submit(node, msg, timeout_s=timeout_s)
    assert sim.run_until(lambda: handle in sim.replies, max_s=timeout_s), f"seed={sim.seed}: no outcome"
    return sim.replies[handle]


# --- timers in virtual time -------------------------------------------------------------


def test_echo_and_ping_work(sim_seed: int) -> None:
    sim = cluster(sim_seed)
    reply = sim.request("n1", Echo(payload=b"hello"))
    assert reply.ok and reply.value == EchoResult(payload=b"hello", node="n1"), f"seed={sim_seed}: {reply}"
    reply = sim.request("n1", PingPeer(target="n3"))
    assert reply.ok and type(reply.value) is PingPeerResult, f"seed={sim_seed}: {reply}"
    low, high = sim.network.default.latency_bounds()
    assert 2 * low * 1000 <= reply.value.rtt_ms <= 2 * high * 1000 + 1e-6, f"seed={sim_seed}: {reply.value}"


def test_ping_to_a_partitioned_node_fails_after_exactly_its_timeout(sim_seed: int) -> None:
    sim = cluster(sim_seed)
    sim.network.partition("n1", "n2")
    outcome = answer(sim, "n1", PingPeer(target="n2", timeout_s=0.75))
    assert outcome.reply.error.code == ErrorCode.UNAVAILABLE, f"seed={sim_seed}: {outcome.reply}"
    assert outcome.latency_s == pytest.approx(ROUND_TRIP_S + 0.75, abs=1e-9), f"seed={sim_seed}"
    sim.network.heal()
    assert answer(sim, "n1", PingPeer(target="n2")).ok, f"seed={sim_seed}"


def test_clock_skew_and_drift_do_not_break_timers(sim_seed: int) -> None:
    drift = 0.01  # n1's clock runs 1 % fast: its 0.75 s timer takes 0.75/1.01 virtual s
    sim = cluster(sim_seed, skew={"n1": 1234.5, "n2": -50.0}, drift={"n1": drift})
    assert sim.node("n1").monotonic() == pytest.approx(1234.5 + sim.now * (1 + drift)), f"seed={sim_seed}"
    assert sim.node("n1").wall_time() == pytest.approx(1_700_000_000 + sim.node("n1").monotonic())
    sim.network.partition("n1", "n3")
    outcome = answer(sim, "n1", PingPeer(target="n3", timeout_s=0.75))
    assert outcome.reply.error.code == ErrorCode.UNAVAILABLE, f"seed={sim_seed}: {outcome.reply}"
    assert outcome.latency_s == pytest.approx(ROUND_TRIP_S + 0.75 / (1 + drift), abs=1e-9), f"seed={sim_seed}"
    # A node far behind in time still answers pings across skewed clocks.
    assert answer(sim, "n2", PingPeer(target="n1")).ok, f"seed={sim_seed}"


def test_a_forward_clock_jump_fires_armed_timers_early(sim_seed: int) -> None:
    sim = cluster(sim_seed)
    sim.network.partition("n1", "n2")
    handle = sim.submit("n1", PingPeer(target="n2", timeout_s=1.0))
    sim.run_for(0.2)
    sim.set_skew("n1", 0.5)  # n1's clock leaps 0.5 s ahead: its timer is due 0.5 s sooner
    sim.run_until(lambda: handle in sim.replies, max_s=2.0)
    outcome = sim.replies[handle]
    assert outcome.latency_s == pytest.approx(ROUND_TRIP_S + 0.5, abs=1e-9), f"seed={sim_seed}"
    with pytest.raises(ValueError, match="never goes back"):
        sim.set_skew("n1", 0.0)


# --- supervision --------------------------------------------------------------------


class Bomb(Actor):
    """Fails every start; records the virtual node time of each attempt."""

    starts: list[float] = []

    def on_start(self, ctx: Context) -> None:
        Bomb.starts.append(ctx.now())
        raise RuntimeError("bomb goes off")

    def on_message(self, ctx: Context, msg: object) -> None:  # pragma: no cover - never starts
        pass


def test_supervisor_restarts_with_exponential_backoff_then_reports_degraded(sim_seed: int) -> None:
    Bomb.starts = []
    specs = [*node_actors(), ActorSpec("bomb", Bomb)]
    sim = cluster(sim_seed, actors=specs, skew={"n1": 77.0})
    sim.run_for(10.0)
    starts = [t for t in Bomb.starts]
    # Three nodes each start their bomb; take n1's (skewed) attempts only.
    n1 = [t - 77.0 for t in starts if t >= 77.0]
    gaps = [round(b - a, 9) for a, b in zip(n1, n1[1:])]
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.6], f"seed={sim_seed}: restarts at {n1}"
    reply = sim.request("n1", Health())
    assert reply.value.status == "degraded", f"seed={sim_seed}: {reply.value}"
    assert reply.value.actors["bomb"] == "stopped" and reply.value.actors["echo"] == "running", f"seed={sim_seed}"


class Asserter(Actor):
    def on_message(self, ctx: Context, msg: object) -> None:
        assert False, "invariant broken on purpose"


def test_an_assertion_in_an_actor_stops_the_run_with_the_seed(sim_seed: int) -> None:
    specs = [ActorSpec(GATEWAY, lambda: Gateway({**ROUTES, Echo: "asserter"})), ActorSpec("asserter", Asserter)]
    sim = cluster(sim_seed, actors=specs)
    sim.submit("n2", Echo(payload=b""))
    with pytest.raises(AssertionError, match="on purpose") as info:
        sim.run_for(1.0)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert f"seed={sim_seed}" in notes and f"--sim-seed={sim_seed}" in notes, notes


class DoubleReplier(Actor):
    def on_message(self, ctx: Context, msg: object) -> None:
        ctx.reply(EchoResult(payload=b"1", node=ctx.node))
        ctx.reply(EchoResult(payload=b"2", node=ctx.node))


def test_a_second_reply_to_one_request_is_an_invariant_violation(sim_seed: int) -> None:
    specs = [ActorSpec(GATEWAY, lambda: Gateway({Echo: "twice"})), ActorSpec("twice", DoubleReplier)]
    sim = cluster(sim_seed, actors=specs)
    sim.submit("n1", Echo(payload=b""))
    with pytest.raises(AssertionError, match="answered twice"):
        sim.run_for(1.0)


# --- back pressure and services ---------------------------------------------------------


def test_a_full_gateway_mailbox_answers_busy(sim_seed: int) -> None:
    specs = [ActorSpec(GATEWAY, Gateway, mailbox_capacity=4), *node_actors()[1:]]
    sim = cluster(sim_seed, actors=specs)
    # One burst: identical client latency, so all ten arrive in one batch.
    handles = [sim.submit("n1", Echo(payload=bytes([i]))) for i in range(10)]
    sim.run_for(1.0)
    codes = [sim.replies[h].code for h in handles]
    assert codes == ["OK"] * 4 + ["BUSY"] * 6, f"seed={sim_seed}: {codes}"
    assert all(sim.replies[h].reply.error.retryable for h in handles[4:]), f"seed={sim_seed}"
    assert sim.node("n1").runtime.stats()[GATEWAY]["dropped"] == 6, f"seed={sim_seed}"


def test_service_latency_shows_in_counter_round_trips(sim_seed: int) -> None:
    sim = cluster(sim_seed, service_latency=ServiceLatency(mean_s=0.05, jitter_s=0.0))
    outcome = answer(sim, "n1", Increment(name="a"))
    assert outcome.reply.value == CounterValue(name="a", value=1), f"seed={sim_seed}"
    assert outcome.latency_s == pytest.approx(ROUND_TRIP_S + 0.05, abs=1e-9), f"seed={sim_seed}"
    # The service takes one request at a time: a burst queues behind it.
    handles = [sim.submit("n1", Increment(name="a")) for _ in range(3)]
    sim.run_for(1.0)
    got = [(sim.replies[h].reply.value.value, round(sim.replies[h].latency_s, 9)) for h in handles]
    assert got == [(2, 0.052), (3, 0.102), (4, 0.152)], f"seed={sim_seed}: {got}"


class Broken:
    name = COUNTER_SERVICE

    def __init__(self, exc: Exception):
        self.exc = exc

    def handle(self, request: object) -> object:
        raise self.exc

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("exc", "code"), [(Busy("disk queue full"), "BUSY"), (ZeroDivisionError("bug"), "INTERNAL")])
def test_service_failures_reach_the_client_as_errors(sim_seed: int, exc: Exception, code: str) -> None:
    sim = cluster(sim_seed, services=lambda node: {COUNTER_SERVICE: Broken(exc)})
    outcome = answer(sim, "n1", Increment(name="a"))
    assert outcome.code == code, f"seed={sim_seed}: {outcome.reply}"


def test_unknown_service_is_refused_at_once(sim_seed: int) -> None:
    sim = cluster(sim_seed, services=lambda node: {})
    outcome = answer(sim, "n1", Increment(name="a"))
    assert outcome.code == "BUSY" and outcome.latency_s == pytest.approx(ROUND_TRIP_S), f"seed={sim_seed}"


# --- crash and restart --------------------------------------------------------------------


def test_crash_and_restart_of_a_node(sim_seed: int) -> None:
    sim = cluster(sim_seed, service_latency=ServiceLatency(mean_s=0.05, jitter_s=0.0))
    assert sim.request("n2", Increment(name="c")).value.value == 1, f"seed={sim_seed}"
    in_flight = sim.submit("n2", Increment(name="c"), timeout_s=1.0)
    sim.run_for(0.01)  # the increment is inside the service now
    sim.crash("n2")
    assert [n.name for n in sim.live_nodes()] == ["n1", "n3"], f"seed={sim_seed}"
    with pytest.raises(RequestTimeout):
        sim.request("n2", Echo(payload=b"x"), timeout_s=0.5)
    assert answer(sim, "n1", PingPeer(target="n2", timeout_s=0.3)).code == "UNAVAILABLE", f"seed={sim_seed}"
    sim.run_for(1.0)
    assert sim.replies[in_flight].timed_out, f"seed={sim_seed}"
    assert sim.stats.dropped_crashed >= 2, f"seed={sim_seed}: {sim.stats}"
    sim.restart("n2")
    # In-memory services are rebuilt: the counter starts over.
    assert sim.request("n2", Increment(name="c")).value.value == 1, f"seed={sim_seed}"
    assert sim.request("n2", Health()).value.status == "ok", f"seed={sim_seed}"
    assert sim.node("n2").incarnations == 2, f"seed={sim_seed}"
    with pytest.raises(ValueError):
        sim.restart("n2")


def test_messages_in_flight_to_a_crashed_node_are_dropped_even_after_restart(sim_seed: int) -> None:
    slow = LinkProfile(latency_s=0.2, jitter_s=0.0)
    sim = cluster(sim_seed, link=slow)
    handle = sim.submit("n1", PingPeer(target="n2", timeout_s=1.0))
    sim.run_for(0.1)  # the Ping is on the wire
    sim.crash("n2")
    sim.restart("n2")
    sim.run_until(lambda: handle in sim.replies, max_s=2.0)
    assert sim.replies[handle].code == "UNAVAILABLE", f"seed={sim_seed}"
    assert any(" drop from n1: node crashed" in line for line in sim.trace_lines()), f"seed={sim_seed}"


def test_counter_state_is_per_node(sim_seed: int) -> None:
    sim = cluster(sim_seed, services=lambda node: {COUNTER_SERVICE: CounterStore(None)})
    values = [sim.request(node, Increment(name="shared")).value.value for node in ("n1", "n2", "n1")]
    assert values == [1, 1, 2], f"seed={sim_seed}"


def test_request_timeout_is_recorded_and_raised(sim_seed: int) -> None:
    sim = cluster(sim_seed)
    sim.network.isolate("n3")
    with pytest.raises(RequestTimeout) as info:
        sim.request("n3", Echo(payload=b"x"), timeout_s=0.25)
    assert info.value.outcome.timed_out and sim.now == pytest.approx(0.25), f"seed={sim_seed}"
    assert f"seed={sim_seed}" in str(info.value), f"seed={sim_seed}: {info.value}"
    assert sim.pending() == (), f"seed={sim_seed}"
