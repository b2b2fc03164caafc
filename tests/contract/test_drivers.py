"""One actor set, two drivers: the same tests on the simulator and on real ZeroMQ.

Each test gets a 3-node cluster from the `cluster` fixture, parametrised
over the drivers. The harnesses expose one small surface (`request`,
`stop_node`), so the assertions below cannot tell which driver ran them:
that is the proof that actors are independent of their driver (issue 2,
item 8). Real nodes run as `NodeThread`s on 127.0.0.1 with free ports; the
simulated cluster runs in virtual time from a fixed seed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from keyswarm.actors.messages import (
    CounterValue,
    Echo,
    EchoResult,
    Health,
    HealthResult,
    Increment,
    PingPeer,
    PingPeerResult,
)
from keyswarm.client.plain import PlainClient
from keyswarm.config import node_config
from keyswarm.errors import ErrorCode
from keyswarm.node.driver import NodeThread
from keyswarm.sim.driver import Simulation
from keyswarm.transport.frames import Reply

NODES = ["n1", "n2", "n3"]


class SimHarness:
    name = "sim"

    def __init__(self, seed: int = 7):
        self.sim = Simulation(seed, nodes=NODES)

    def request(self, node: str, msg: object, *, timeout_s: float = 5.0) -> Reply:
        return self.sim.request(node, msg, timeout_s=timeout_s)

    def stop_node(self, node: str) -> None:
        self.sim.crash(node)

    def close(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RealHarness:
    name = "real"

    def __init__(self) -> None:
        ports = {node: (_free_port(), _free_port()) for node in NODES}
        self.threads: dict[str, NodeThread] = {}
        self.clients: dict[str, PlainClient] = {}
        try:
            for node in NODES:
                client_port, peer_port = ports[node]
                config = node_config(
                    node={
                        "id": node,
                        "client_endpoint": f"tcp://127.0.0.1:{client_port}",
                        "peer_endpoint": f"tcp://127.0.0.1:{peer_port}",
                    },
                    peers=[
                        {"id": other, "endpoint": f"tcp://127.0.0.1:{ports[other][1]}"}
                        for other in NODES
                        if other != node
                    ],
                )
                self.threads[node] = NodeThread(config).start(timeout_s=10.0)
                self.clients[node] = PlainClient(f"tcp://127.0.0.1:{client_port}", timeout_s=10.0)
            self._wait_until_peered(deadline=time.monotonic() + 20.0)
        except BaseException:
            self.close()
            raise

    def _wait_until_peered(self, deadline: float) -> None:
        """Peer DEALERs set IMMEDIATE, so a send fails (UNAVAILABLE) until TCP
        connects; a real network is ready once every node reaches every other."""
        for source in NODES:
            for target in NODES:
                while target != source:
                    reply = self.request(source, PingPeer(target=target, timeout_s=1.0))
                    if reply.error is None:
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{source} never reached {target}: {reply.error}")
                    time.sleep(0.02)

    def request(self, node: str, msg: object, *, timeout_s: float = 5.0) -> Reply:
        # The wall-clock wait is generous: a loaded CI machine is slow, and
        # the node answers on its own timers well within it.
        return self.clients[node].request(msg, timeout_s=timeout_s + 10.0)

    def stop_node(self, node: str) -> None:
        self.clients.pop(node).close()
        self.threads.pop(node).stop(timeout_s=10.0)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        for thread in self.threads.values():
            thread.stop(timeout_s=10.0)
        self.clients.clear()
        self.threads.clear()


@pytest.fixture(params=["sim", "real"])
def cluster(request: pytest.FixtureRequest) -> Iterator[SimHarness | RealHarness]:
    harness = SimHarness() if request.param == "sim" else RealHarness()
    try:
        yield harness
    finally:
        harness.close()


def ok_value(reply: Reply) -> object:
    assert reply.error is None, f"expected success, got {reply.error}"
    return reply.value


def error_code(reply: Reply) -> ErrorCode:
    assert reply.error is not None, f"expected an error, got {reply.value!r}"
    return reply.error.code


def test_every_node_answers_health(cluster) -> None:
    for node in NODES:
        result = ok_value(cluster.request(node, Health()))
        assert isinstance(result, HealthResult)
        assert result.node == node
        assert result.status == "ok"
        assert set(result.actors) >= {"gateway", "echo", "pinger", "counter"}
        assert all(state == "running" for state in result.actors.values()), result.actors


def test_echo_returns_the_payload_from_the_node_asked(cluster) -> None:
    for payload in (b"", b"hello", bytes(range(256)) * 64):
        result = ok_value(cluster.request("n2", Echo(payload=payload)))
        assert result == EchoResult(payload=payload, node="n2")


def test_every_node_pings_every_other(cluster) -> None:
    for source in NODES:
        for target in NODES:
            if target == source:
                continue
            result = ok_value(cluster.request(source, PingPeer(target=target, timeout_s=5.0)))
            assert isinstance(result, PingPeerResult)
            assert result.target == target
            assert result.rtt_ms >= 0.0


def test_ping_to_an_unknown_node_is_unavailable(cluster) -> None:
    reply = cluster.request("n1", PingPeer(target="nobody", timeout_s=0.5))
    assert error_code(reply) is ErrorCode.UNAVAILABLE
    assert reply.error.retryable


def test_ping_to_a_stopped_node_is_unavailable(cluster) -> None:
    assert ok_value(cluster.request("n1", PingPeer(target="n3", timeout_s=5.0)))
    cluster.stop_node("n3")
    reply = cluster.request("n1", PingPeer(target="n3", timeout_s=0.5))
    assert error_code(reply) is ErrorCode.UNAVAILABLE
    # The rest of the network is unaffected.
    assert ok_value(cluster.request("n1", PingPeer(target="n2", timeout_s=5.0)))


def test_counter_goes_through_the_blocking_service(cluster) -> None:
    values = [ok_value(cluster.request("n1", Increment(name="jobs"))) for _ in range(5)]
    assert values == [CounterValue(name="jobs", value=v) for v in range(1, 6)]
    assert ok_value(cluster.request("n1", Increment(name="other", by=10))) == CounterValue(name="other", value=10)
    assert ok_value(cluster.request("n1", Increment(name="jobs", by=-5))) == CounterValue(name="jobs", value=0)
    # Each node keeps its own counters (no replication in the foundation).
    assert ok_value(cluster.request("n2", Increment(name="jobs"))) == CounterValue(name="jobs", value=1)


def test_operation_nobody_serves_is_a_bad_request(cluster) -> None:
    reply = cluster.request("n1", HealthResult(node="x", status="ok", actors={}, uptime_s=0.0))
    assert error_code(reply) is ErrorCode.BAD_REQUEST
    assert not reply.error.retryable
    assert ok_value(cluster.request("n1", Health())).status == "ok"


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, 61.0])
def test_out_of_range_ping_timeout_is_a_bad_request(cluster, timeout_s: float) -> None:
    reply = cluster.request("n1", PingPeer(target="n2", timeout_s=timeout_s))
    assert error_code(reply) is ErrorCode.BAD_REQUEST


def test_empty_or_oversized_counter_name_is_a_bad_request(cluster) -> None:
    for name in ("", "x" * 257):
        assert error_code(cluster.request("n1", Increment(name=name))) is ErrorCode.BAD_REQUEST
