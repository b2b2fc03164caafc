"""The real driver on real ZeroMQ: health, echo, peer pings, services, shutdown.

Nodes run as NodeThreads on 127.0.0.1 random ports (see conftest). Every wait
is bounded; nodes are stopped at teardown.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import psutil
import pytest
import zmq

from keyswarm.actors.demo import COUNTER_SERVICE, CounterIncrement
from keyswarm.actors.messages import CounterValue, Echo, EchoResult, Health, HealthResult, Increment, PingPeer
from keyswarm.actors.runtime import Actor, ActorSpec, Context
from keyswarm.client.plain import PlainClient, RequestFailed
from keyswarm.config import PeerConfig
from keyswarm.errors import ErrorCode, KeyswarmError, TransportError
from keyswarm.node.assembly import node_actors
from keyswarm.node.driver import NodeDriver, NodeThread
from keyswarm.transport import frames

pytestmark = pytest.mark.integration

#: Peer links connect in the background (IMMEDIATE refuses sends until then).
PEER_SETTLE_S = 10.0


def ping_until_ok(client: PlainClient, target: str) -> object:
    deadline = time.monotonic() + PEER_SETTLE_S
    while True:
        reply = client.request(PingPeer(target=target, timeout_s=1.0), timeout_s=3.0)
        if reply.ok:
            return reply.value
        assert reply.error.code is ErrorCode.UNAVAILABLE, reply.error
        assert time.monotonic() < deadline, f"could not ping {target} within {PEER_SETTLE_S} s: {reply.error}"
        time.sleep(0.05)


def wait_for(predicate, timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        time.sleep(0.01)


class SlowCounter:
    """A counter service that says when it starts a request and answers once `release` is set
    (at most 5 s later: a test that forgets it still ends)."""

    name = COUNTER_SERVICE

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.value = 0
        self.closed = False

    def handle(self, request: object) -> object:
        assert type(request) is CounterIncrement
        self.started.set()
        self.release.wait(5.0)
        self.value += request.by
        return self.value

    def close(self) -> None:
        self.closed = True


class BlackHole(Actor):
    """A gateway that never answers: the node's own deadline must."""

    def on_message(self, ctx: Context, msg: object) -> None:
        pass


def send_raw(sock: zmq.Socket, request_id: int, msg: object) -> None:
    sock.send(frames.encode_request(request_id, msg))


def recv_reply(sock: zmq.Socket, timeout_s: float = 5.0) -> frames.Reply:
    assert sock.poll(int(timeout_s * 1000)), f"no reply within {timeout_s} s"
    return frames.decode_reply(sock.recv())


# --- serving -------------------------------------------------------------------


def test_node_answers_health_with_its_id(client: PlainClient) -> None:
    health = client.call(Health())
    assert isinstance(health, HealthResult)
    assert health.node == "n1"
    assert health.status == "ok"
    assert set(health.actors) == {spec.name for spec in node_actors()}
    assert all(state == "running" for state in health.actors.values())


def test_echo_returns_the_payload(client: PlainClient) -> None:
    for payload in (b"", b"hello", bytes(range(256)) * 100):
        result = client.call(Echo(payload=payload))
        assert result == EchoResult(payload=payload, node="n1")


def test_ping_between_three_nodes(node_factory, zmq_context: zmq.Context) -> None:
    nodes = node_factory(["a", "b", "c"])
    for node in nodes:
        with PlainClient(node.client_endpoint, zmq_context=zmq_context) as client:
            for other in nodes:
                if other is node:
                    continue
                result = ping_until_ok(client, other.driver.node_id)
                assert result.target == other.driver.node_id
                assert result.rtt_ms >= 0


def test_ping_to_a_stopped_peer_is_unavailable(node_factory, zmq_context: zmq.Context) -> None:
    a, b = node_factory(["a", "b"])
    with PlainClient(a.client_endpoint, zmq_context=zmq_context) as client:
        ping_until_ok(client, "b")
        assert b.stop() == 0
        # Whether a notices the link is down (send refused) or the ping times out, the answer is UNAVAILABLE.
        reply = client.request(PingPeer(target="b", timeout_s=0.5), timeout_s=3.0)
        assert reply.error is not None and reply.error.code is ErrorCode.UNAVAILABLE, reply
        assert reply.error.retryable
        # A node nobody configured is refused at once.
        with pytest.raises(RequestFailed) as failed:
            client.call(PingPeer(target="nobody", timeout_s=0.5))
        assert failed.value.code is ErrorCode.UNAVAILABLE


def test_ping_to_a_silent_peer_times_out_on_the_runtime_timer(
    node_factory, config_maker, zmq_context: zmq.Context
) -> None:
    # A peer that accepts the connection and never answers: only the pinger's
    # timer (the driver's wake_at) can answer the client.
    ghost = zmq_context.socket(zmq.ROUTER)
    ghost.setsockopt(zmq.LINGER, 0)
    ghost.bind("tcp://127.0.0.1:*")
    ghost_endpoint = ghost.getsockopt(zmq.LAST_ENDPOINT).decode()
    (config,) = config_maker(["a"])
    config = dataclasses.replace(config, peers=(PeerConfig(id="ghost", endpoint=ghost_endpoint),))
    node = NodeThread(config).start()
    try:
        with PlainClient(node.client_endpoint, zmq_context=zmq_context) as client:
            deadline = time.monotonic() + PEER_SETTLE_S
            while True:
                started = time.monotonic()
                reply = client.request(PingPeer(target="ghost", timeout_s=0.3), timeout_s=5.0)
                elapsed = time.monotonic() - started
                assert reply.error is not None and reply.error.code is ErrorCode.UNAVAILABLE, reply
                if "no answer" in reply.error.message:
                    break  # connected, sent, and timed out
                assert time.monotonic() < deadline, "the link to the silent peer never came up"
                time.sleep(0.05)
        assert 0.29 <= elapsed < 3.0, f"the 0.3 s timer answered after {elapsed:.3f} s"
        assert ghost.poll(1000), "the ping reached the silent peer"
        identity, _frame = ghost.recv_multipart()
        assert identity == b"a"
    finally:
        assert node.stop() == 0
        ghost.close(linger=0)


def test_counter_runs_on_its_service_thread(client: PlainClient, node: NodeThread) -> None:
    values = [client.call(Increment(name="hits", by=2)).value for _ in range(3)]
    assert values == [2, 4, 6]
    assert client.call(Increment(name="other")) == CounterValue(name="other", value=1)
    assert any(t.name == f"keyswarm-service-{COUNTER_SERVICE}" for t in threading.enumerate())
    stats = node.stats()
    assert stats["services"][COUNTER_SERVICE]["handled"] == 4


def test_a_reply_to_a_departed_client_is_counted(node_factory, zmq_context: zmq.Context) -> None:
    slow = SlowCounter()
    (node,) = node_factory(["n1"], driver_kwargs={"services": {COUNTER_SERVICE: slow}})
    raw = zmq_context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(node.client_endpoint)
    send_raw(raw, 1, Increment(name="gone"))
    assert slow.started.wait(5.0)
    raw.close(linger=0)  # the client leaves before its answer is ready
    # Answer only once the node's end of that TCP connection is closed (libzmq then has dropped the
    # client's pipe): an event to wait for, not a sleep that a loaded machine can outrun.
    port = int(node.client_endpoint.rsplit(":", 1)[1])
    wait_for(lambda: not any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
                             for c in psutil.Process().net_connections(kind="tcp")),
             what="the node to close the departed client's connection")
    slow.release.set()
    wait_for(lambda: node.stats()["reply_drops_gone"] == 1, what="the drop to be counted")
    stats = node.stats()
    assert stats["inflight"] == 0 and stats["replies_out"] == 0


def test_a_request_nobody_answers_expires_in_the_node(node_factory, zmq_context: zmq.Context) -> None:
    (node,) = node_factory(["n1"], driver_kwargs={"actors": [ActorSpec("gateway", BlackHole)], "request_deadline_s": 0.3})
    with PlainClient(node.client_endpoint, zmq_context=zmq_context) as client:
        started = time.monotonic()
        reply = client.request(Health(), timeout_s=5.0)
        assert reply.error is not None and reply.error.code is ErrorCode.UNAVAILABLE
        assert "timed out in the node" in reply.error.message
        assert time.monotonic() - started < 3.0
    stats = node.stats()
    assert stats["inflight"] == 0 and stats["clients_inflight"] == 0
    assert stats["expired"] == 1


def test_a_taken_port_is_a_transport_error(node: NodeThread, config_maker) -> None:
    (config,) = config_maker(["n2"])
    config = dataclasses.replace(config, node=dataclasses.replace(config.node, client_endpoint=node.client_endpoint))
    clash = NodeThread(config)
    with pytest.raises(TransportError, match="bind client socket"):
        clash.start(timeout_s=5.0)


# --- shutdown --------------------------------------------------------------------


def test_request_stop_finishes_in_flight_work_and_refuses_new(node_factory, zmq_context: zmq.Context) -> None:
    threads_before = set(threading.enumerate())
    slow = SlowCounter()
    (node,) = node_factory(["n1"], driver_kwargs={"services": {COUNTER_SERVICE: slow}})
    raw = zmq_context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(node.client_endpoint)
    try:
        send_raw(raw, 41, Increment(name="slow"))
        assert slow.started.wait(5.0), "the slow request never reached its service"
        node.driver.request_stop()
        wait_for(lambda: node.driver.runtime.status == "draining", what="draining")
        with PlainClient(node.client_endpoint, zmq_context=zmq_context) as late:
            refused = late.request(Health())
        assert refused.error is not None and refused.error.code is ErrorCode.UNAVAILABLE
        assert "draining" in refused.error.message and refused.error.retryable
        slow.release.set()  # the in-flight request finishes during the drain
        answered = recv_reply(raw)
        assert answered.request_id == 41
        assert answered.value == CounterValue(name="slow", value=1)
    finally:
        raw.close(linger=0)
    assert node.stop() == 0
    assert slow.closed, "the driver closes its services"
    driver: NodeDriver = node.driver
    assert all(sock.closed for sock in (driver._client_sock, driver._peer_sock, *driver._dealers.values()))
    assert driver._context.closed
    wait_for(lambda: set(threading.enumerate()) <= threads_before, what="node threads gone")


def test_run_returns_zero_and_leaves_no_threads(zmq_context: zmq.Context, config_maker, healthy) -> None:
    threads_before = set(threading.enumerate())
    (config,) = config_maker(["n1"])
    node = NodeThread(config).start()
    try:
        healthy(node.client_endpoint, zmq_context)
    finally:
        code = node.stop()
    assert code == 0
    wait_for(lambda: set(threading.enumerate()) <= threads_before, what="node threads gone")


def test_a_second_stop_request_abandons_work_and_answers_it(node_factory, zmq_context: zmq.Context) -> None:
    (node,) = node_factory(["n1"], driver_kwargs={"actors": [ActorSpec("gateway", BlackHole)]})
    raw = zmq_context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(node.client_endpoint)
    try:
        send_raw(raw, 7, Health())
        wait_for(lambda: node.stats()["inflight"] == 1, what="request in flight")
        node.driver.request_stop()
        wait_for(lambda: node.driver.runtime.status == "draining", what="draining")
        started = time.monotonic()
        node.driver.request_stop()  # the second: stop now
        node._thread.join(5.0)
        assert not node._thread.is_alive()
        assert time.monotonic() - started < 2.0, "the second request did not cut the grace period short"
        assert node.exit_code == 1
        reply = recv_reply(raw)
        assert reply.request_id == 7 and reply.error.code is ErrorCode.UNAVAILABLE
    finally:
        raw.close(linger=0)


def test_insecure_entropy_is_refused_outside_the_sim_profile(config_maker) -> None:
    (config,) = config_maker(["n1"])
    forged = object.__new__(type(config.runtime))
    for name in config.runtime.__dataclass_fields__:
        object.__setattr__(forged, name, getattr(config.runtime, name))
    object.__setattr__(forged, "allow_insecure_entropy", True)
    hand_made = object.__new__(type(config))
    for name in config.__dataclass_fields__:
        object.__setattr__(hand_made, name, getattr(config, name))
    object.__setattr__(hand_made, "runtime", forged)  # bypasses the config's own check on purpose
    with pytest.raises(KeyswarmError, match="insecure entropy"):
        NodeDriver(hand_made)


def test_node_process_drains_on_sigterm_and_logs(node_process, zmq_context: zmq.Context) -> None:
    node = node_process()
    with PlainClient(node.client_endpoint, zmq_context=zmq_context) as client:
        assert client.call(Echo(payload=b"x")).payload == b"x"
    assert node.stop() == 0
    log = node.log()
    assert "node p1 started (profile lan)" in log and node.client_endpoint in log
    assert "SIGTERM" in log and "stopped with exit code 0" in log
