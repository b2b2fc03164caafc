"""`NodeRuntime` on its own, driven through a tiny fake `Environment` (no simulator, no sockets)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from keyswarm.actors.runtime import (
    Actor,
    ActorSpec,
    ActorState,
    Address,
    ClientRef,
    Context,
    Delivery,
    NodeRuntime,
    ServiceResult,
    SupervisorPolicy,
)
from keyswarm.errors import Busy


class FakeEnv:
    """Records what the runtime asks of its driver; time moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.remote: list[tuple[Address, Address, object]] = []
        self.client: list[tuple[ClientRef, object]] = []
        self.submitted: list[tuple[str, int, object]] = []
        self.wakes: list[float] = []
        self.accept_submit = True

    def monotonic(self) -> float:
        return self.now

    def wall_time(self) -> float:
        return 1_700_000_000.0 + self.now

    def entropy(self, n: int) -> bytes:
        return bytes(n)

    def send_remote(self, to: Address, sender: Address, msg: object) -> bool:
        self.remote.append((to, sender, msg))
        return True

    def reply_client(self, ref: ClientRef, msg: object) -> bool:
        self.client.append((ref, msg))
        return True

    def submit(self, service: str, ticket: int, request: object) -> bool:
        self.submitted.append((service, ticket, request))
        return self.accept_submit

    def wake_at(self, deadline: float) -> None:
        self.wakes.append(deadline)


@dataclass(frozen=True)
class Do:
    """Test instruction: the recording actor calls `fn(ctx)`."""

    fn: object


class Recorder(Actor):
    """Logs (actor, sender, message) to a shared journal; runs `Do` instructions; raises on 'boom'."""

    def __init__(self, name: str, journal: list):
        self.name = name
        self.journal = journal

    def on_message(self, ctx: Context, msg: object) -> None:
        self.journal.append((self.name, ctx.sender, msg))
        if msg == "boom":
            raise RuntimeError("boom")
        if type(msg) is Do:
            msg.fn(ctx)


def build(*names: str, capacity: int = 100, policy: SupervisorPolicy = SupervisorPolicy(), propagate=()):
    env = FakeEnv()
    journal: list = []
    specs = [ActorSpec(name, lambda name=name: Recorder(name, journal), capacity) for name in names]
    runtime = NodeRuntime("n1", specs, env, rng=random.Random(7), supervisor=policy, propagate=propagate)
    runtime.start()
    return runtime, env, journal


def drain(runtime: NodeRuntime) -> None:
    while runtime.run():
        pass


def test_messages_arrive_in_order_and_actors_take_turns() -> None:
    runtime, _, journal = build("a", "b")
    for i in range(3):
        runtime.deliver("a", None, f"a{i}")
    runtime.deliver("b", None, "b0")
    runtime.deliver("a", None, Do(lambda ctx: ctx.send("b", "from-a")))
    drain(runtime)
    assert [(actor, msg) for actor, _, msg in journal if type(msg) is str] == [
        ("a", "a0"), ("a", "a1"), ("a", "a2"), ("b", "b0"), ("b", "from-a"),
    ]
    assert journal[-1][1] == Address("n1", "a")  # the sender of a local send is the sending actor


def test_a_turn_is_bounded_so_a_busy_actor_cannot_starve_others() -> None:
    runtime, _, journal = build("a", "b")
    for i in range(NodeRuntime.TURN + 1):
        runtime.deliver("a", None, i)
    runtime.deliver("b", None, "b")
    drain(runtime)
    order = [msg for _, _, msg in journal]
    assert order.index("b") == NodeRuntime.TURN  # b ran after a's first turn, before a's last message


def test_full_mailbox_refuses_and_counts_the_drop() -> None:
    runtime, _, journal = build("a", capacity=2)
    assert runtime.deliver("a", None, 1) is Delivery.QUEUED
    assert runtime.deliver("a", None, 2) is Delivery.QUEUED
    assert runtime.deliver("a", None, 3) is Delivery.FULL
    assert runtime.stats()["a"]["dropped"] == 1
    drain(runtime)
    assert [m for _, _, m in journal] == [1, 2]
    assert runtime.deliver("nobody", None, 1) is Delivery.NO_SUCH_ACTOR


def test_local_send_to_a_full_mailbox_returns_false() -> None:
    runtime, _, _ = build("a", "b", capacity=1)
    results: list[bool] = []
    runtime.deliver("a", None, Do(lambda ctx: results.extend([ctx.send("b", 1), ctx.send("b", 2)])))
    drain(runtime)
    assert results == [True, False]


def test_timers_fire_in_deadline_order_and_cancel_works() -> None:
    runtime, env, journal = build("a")
    ids: dict[str, int] = {}

    def arm(ctx: Context) -> None:
        ids["late"] = ctx.start_timer(2.0, "late")
        ids["early"] = ctx.start_timer(1.0, "early")
        ids["cancelled"] = ctx.start_timer(0.5, "cancelled")
        ids["tie"] = ctx.start_timer(1.0, "tie")

    runtime.deliver("a", None, Do(arm))
    drain(runtime)
    assert env.wakes[-1] == 0.5  # the earliest deadline armed the driver
    cancels: list[bool] = []
    cancel = Do(lambda ctx: cancels.append(ctx.cancel_timer(ids["cancelled"])))
    runtime.deliver("a", None, cancel)
    runtime.deliver("a", None, cancel)
    drain(runtime)
    assert cancels == [True, False]
    del journal[1:]
    env.now = 1.0
    assert runtime.fire_timers() == 2
    drain(runtime)
    assert [m for _, _, m in journal[1:]] == ["early", "tie"]  # ties by creation order
    assert env.wakes[-1] == 2.0
    env.now = 2.5
    runtime.fire_timers()
    drain(runtime)
    assert [m for _, _, m in journal[1:]] == ["early", "tie", "late"]
    assert all(sender is None for _, sender, _ in journal[1:])


def test_ask_delivers_a_service_result() -> None:
    runtime, env, journal = build("a")
    tickets: list[int] = []
    runtime.deliver("a", None, Do(lambda ctx: tickets.append(ctx.ask("store", "req"))))
    drain(runtime)
    assert env.submitted == [("store", tickets[0], "req")]
    assert runtime.pending_asks() == 1
    runtime.complete(tickets[0], value=42)
    runtime.complete(tickets[0], value=43)  # a second completion is ignored
    drain(runtime)
    result = journal[-1][2]
    assert result == ServiceResult(ticket=tickets[0], service="store", value=42)
    assert result.ok and runtime.pending_asks() == 0


def test_a_refused_ask_answers_at_once_with_an_error() -> None:
    runtime, env, journal = build("a")
    env.accept_submit = False
    runtime.deliver("a", None, Do(lambda ctx: ctx.ask("nowhere", "req")))
    drain(runtime)
    result = journal[-1][2]
    assert type(result) is ServiceResult and not result.ok
    assert isinstance(result.error, Busy) and result.service == "nowhere"


def test_results_owed_to_a_crashed_incarnation_are_discarded() -> None:
    runtime, env, journal = build("a")
    tickets: list[int] = []
    runtime.deliver("a", None, Do(lambda ctx: tickets.append(ctx.ask("store", "req"))))
    runtime.deliver("a", None, "boom")
    drain(runtime)
    assert runtime.stats()["a"]["state"] == ActorState.RESTARTING.value
    env.now = 0.1
    runtime.fire_timers()  # the supervisor's restart
    assert runtime.stats()["a"]["state"] == ActorState.RUNNING.value
    runtime.complete(tickets[0], value=1)
    drain(runtime)
    assert not any(type(m) is ServiceResult for _, _, m in journal)


def test_timers_of_a_crashed_incarnation_do_not_fire() -> None:
    runtime, env, journal = build("a")
    runtime.deliver("a", None, Do(lambda ctx: ctx.start_timer(1.0, "tick")))
    runtime.deliver("a", None, "boom")
    drain(runtime)
    env.now = 5.0
    runtime.fire_timers()
    drain(runtime)
    assert "tick" not in [m for _, _, m in journal]


def test_forward_keeps_the_client_as_sender() -> None:
    runtime, env, journal = build("gateway", "worker")
    ref = ClientRef("n1", b"c1", 9)

    runtime.deliver("gateway", ref, Do(lambda ctx: ctx.forward("worker", Do(lambda c: c.reply("done")))))
    drain(runtime)
    assert journal[-1][:2] == ("worker", ref)
    assert env.client == [(ref, "done")]


def test_remote_send_goes_through_the_environment() -> None:
    runtime, env, _ = build("a")
    runtime.deliver("a", None, Do(lambda ctx: ctx.send(Address("n2", "echo"), "hi")))
    drain(runtime)
    assert env.remote == [(Address("n2", "echo"), Address("n1", "a"), "hi")]


def test_remote_send_on_behalf_of_a_client_is_a_type_error() -> None:
    runtime, _, _ = build("a", propagate=(TypeError,))
    runtime.deliver("a", ClientRef("n1", b"c1", 1), Do(lambda ctx: ctx.forward(Address("n2", "echo"), "hi")))
    with pytest.raises(TypeError, match="on behalf of"):
        drain(runtime)


def test_supervisor_backs_off_exponentially_then_gives_up() -> None:
    policy = SupervisorPolicy(max_restarts=3, window_s=60.0, backoff_initial_s=0.1, backoff_max_s=10.0)
    runtime, env, _ = build("a", policy=policy)
    restarts: list[float] = []
    for _ in range(4):
        runtime.deliver("a", None, "boom")
        drain(runtime)
        if runtime.stats()["a"]["state"] == ActorState.STOPPED.value:
            break
        env.now = env.wakes[-1]
        restarts.append(env.now)
        runtime.fire_timers()
    assert restarts == pytest.approx([0.1, 0.1 + 0.2, 0.1 + 0.2 + 0.4])
    assert runtime.stats()["a"]["state"] == ActorState.STOPPED.value
    assert runtime.status == "degraded" and runtime.degraded_actors == ("a",)
    assert runtime.deliver("a", None, 1) is Delivery.STOPPED


def test_assertions_propagate_when_asked() -> None:
    runtime, _, _ = build("a", propagate=(AssertionError,))

    def fail(ctx: Context) -> None:
        raise AssertionError("invariant")

    runtime.deliver("a", None, Do(fail))
    with pytest.raises(AssertionError, match="invariant"):
        drain(runtime)


def test_stop_refuses_later_deliveries() -> None:
    runtime, _, _ = build("a")
    runtime.stop()
    assert runtime.deliver("a", None, 1) is Delivery.STOPPED
    assert runtime.stats()["a"]["state"] == ActorState.STOPPED.value


def test_each_actor_gets_its_own_seeded_rng_in_spec_order() -> None:
    seen: list[float] = []

    def grab(ctx: Context) -> None:
        seen.append(ctx.rng.random())

    for _ in range(2):
        runtime, _, _ = build("a", "b")
        runtime.deliver("a", None, Do(grab))
        runtime.deliver("b", None, Do(grab))
        drain(runtime)
    assert seen[:2] == seen[2:] and seen[0] != seen[1]


# --- answers to opened in-session requests ---------------------------------------------------


def test_answers_to_an_opened_session_request_go_to_sessions_never_dropped() -> None:
    from keyswarm.actors.runtime import SESSIONS, SessionReply

    runtime, env, journal = build(SESSIONS, "keys", capacity=1)
    opened = ClientRef("n1", b"c", 7, b"s" * 16, inner_id=42, client="app1")
    assert runtime.deliver(SESSIONS, None, "filler") is Delivery.QUEUED  # sessions' mailbox is now full
    runtime.deliver("keys", opened, Do(lambda ctx: ctx.reply("result")))
    drain(runtime)
    assert env.client == [], "not to the driver: sessions seals it first"
    assert (SESSIONS, None, SessionReply(opened, "result")) in journal, journal
    assert opened.slot == ClientRef("n1", b"c", 7, b"s" * 16)
    # A plain reference still goes straight to the driver, and so does the slot of a frame.
    runtime.deliver("keys", opened.slot, Do(lambda ctx: ctx.reply("unsealed")))
    drain(runtime)
    assert env.client == [(opened.slot, "unsealed")]


def test_forward_with_another_sender_and_no_sessions_actor_to_seal() -> None:
    runtime, env, journal = build("a", "keys")
    opened = ClientRef("n1", b"c", 7, b"s" * 16, inner_id=1, client="app1")
    runtime.deliver("a", None, Do(lambda ctx: ctx.forward("keys", Do(lambda c: journal.append(c.reply("x"))),
                                                          sender=opened)))
    drain(runtime)
    assert ("keys", opened) == journal[-2][:2], journal
    assert journal[-1] is False, "no sessions actor: the answer cannot be sealed, the request expires in the driver"
    assert env.client == []
