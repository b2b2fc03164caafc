"""Fixtures for tests that run real nodes on ZeroMQ over 127.0.0.1.

Nodes run as `NodeThread`s (a driver on its own uvloop in a daemon thread) in
the test process, so a test can reach into `node.driver` once the node is
idle. Ports are picked free by the OS; if another process grabs one before
the node binds it, the start is retried on fresh ports. Every wait is
bounded, and every node a test started is stopped at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from keyswarm.actors.messages import Health, HealthResult
from keyswarm.client.plain import PlainClient
from keyswarm.config import NodeConfig, config_to_toml, node_config
from keyswarm.errors import KeyswarmError, TransportError
from keyswarm.node.driver import NodeThread

#: Limits of the test nodes: a small frame limit keeps the oversized-frame tests cheap.
TEST_MAX_FRAME_BYTES = 64 * 1024
START_ATTEMPTS = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_configs(node_ids: list[str], **sections: dict) -> list[NodeConfig]:
    """Configs for nodes that all list each other as peers, on fresh free ports."""
    ports = {node_id: (free_port(), free_port()) for node_id in node_ids}
    limits = {"max_frame_bytes": TEST_MAX_FRAME_BYTES, **sections.pop("limits", {})}
    configs = []
    for node_id in node_ids:
        client_port, peer_port = ports[node_id]
        peers = [
            {"id": other, "endpoint": f"tcp://127.0.0.1:{ports[other][1]}"} for other in node_ids if other != node_id
        ]
        configs.append(
            node_config(
                node={
                    "id": node_id,
                    "client_endpoint": f"tcp://127.0.0.1:{client_port}",
                    "peer_endpoint": f"tcp://127.0.0.1:{peer_port}",
                },
                peers=peers,
                limits=limits,
                **sections,
            )
        )
    return configs


def start_nodes(node_ids: list[str], driver_kwargs: dict | None = None, **sections: dict) -> list[NodeThread]:
    """Start nodes peered with each other; retries on fresh ports if a bind loses a race."""
    for attempt in range(START_ATTEMPTS):
        nodes: list[NodeThread] = []
        try:
            for config in make_configs(node_ids, **sections):
                nodes.append(NodeThread(config, **(driver_kwargs or {})).start())
            return nodes
        except TransportError:
            for node in nodes:
                node.stop()
            if attempt == START_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def wait_healthy(endpoint: str, context: zmq.Context, timeout_s: float = 5.0) -> HealthResult:
    """The node's health once it answers; fails the test if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with PlainClient(endpoint, zmq_context=context, timeout_s=1.0) as client:
        while True:
            reply = client.request(Health())
            if reply.error is None:
                return reply.value
            assert time.monotonic() < deadline, f"{endpoint} not healthy within {timeout_s} s: {reply.error}"
            time.sleep(0.05)


@dataclass
class NodeProcess:
    """A node run as `python -m keyswarm node --config FILE` (what `keyswarm node` runs)."""

    config: NodeConfig
    process: subprocess.Popen
    log_path: Path

    @property
    def client_endpoint(self) -> str:
        return self.config.node.client_endpoint

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, a bounded wait for the exit code; SIGKILL if it does not come."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return self.process.returncode


def spawn_node_process(directory: Path, context: zmq.Context, **sections: dict) -> NodeProcess:
    """Start one node process on fresh ports and wait until it answers health."""
    source_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (source_root, os.environ.get("PYTHONPATH")) if p)}
    for attempt in range(START_ATTEMPTS):
        (config,) = make_configs(["p1"], **sections)
        config_path = directory / f"node-{attempt}.toml"
        config_path.write_text(config_to_toml(config))
        log_path = directory / f"node-{attempt}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "keyswarm", "--log-level", "info", "node", "--config", str(config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        node = NodeProcess(config, process, log_path)
        deadline = time.monotonic() + 15.0
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with PlainClient(node.client_endpoint, zmq_context=context, timeout_s=0.5) as client:
                    client.call(Health())
                return node
            except KeyswarmError:
                time.sleep(0.05)
        node.stop()
        if "could not start" not in node.log():  # anything but a lost port race is a failure
            raise AssertionError(f"node process did not come up:\n{node.log()}")
    raise AssertionError(f"node process could not bind free ports in {START_ATTEMPTS} attempts")


@pytest.fixture
def node_process(tmp_path: Path, zmq_context: zmq.Context) -> Iterator[Callable[..., NodeProcess]]:
    """`node_process(limits={...})`: a running node process; SIGTERMed (then killed) at teardown."""
    started: list[NodeProcess] = []

    def spawn(**sections: dict) -> NodeProcess:
        node = spawn_node_process(tmp_path, zmq_context, **sections)
        started.append(node)
        return node

    yield spawn
    for node in started:
        node.stop()


@pytest.fixture
def config_maker() -> Callable[..., list[NodeConfig]]:
    """`make_configs` as a fixture (test modules do not import conftest)."""
    return make_configs


@pytest.fixture
def healthy() -> Callable[..., HealthResult]:
    """`wait_healthy(endpoint, context, timeout_s=5.0)` as a fixture."""
    return wait_healthy


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    """The test's own context (clients' side); room for thousands of client sockets."""
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 8192)
    yield context
    context.destroy(linger=0)


@pytest.fixture
def node_factory() -> Iterator[Callable[..., list[NodeThread]]]:
    """`node_factory(["a", "b"], driver_kwargs={...}, limits={...})`: started, mutually peered nodes."""
    started: list[NodeThread] = []

    def factory(node_ids: list[str], driver_kwargs: dict | None = None, **sections: dict) -> list[NodeThread]:
        nodes = start_nodes(node_ids, driver_kwargs, **sections)
        started.extend(nodes)
        return nodes

    yield factory
    for node in started:
        node.stop()


@pytest.fixture
def node(node_factory: Callable[..., list[NodeThread]]) -> NodeThread:
    """One running node `n1` with the test limits."""
    return node_factory(["n1"])[0]


@pytest.fixture
def client(node: NodeThread, zmq_context: zmq.Context) -> Iterator[PlainClient]:
    with PlainClient(node.client_endpoint, zmq_context=zmq_context, timeout_s=5.0) as plain:
        yield plain
