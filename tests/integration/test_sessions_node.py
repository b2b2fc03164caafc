"""Sessions on a real node (`NodeThread` on ZeroMQ), certified with a soft token, driven by a raw DEALER client.

The PKI is made in `tmp_path` with `keyswarm.enrolment` (what `keyswarm init`,
`enroll-node` and `enroll-client` run): a root and a node on soft tokens, a
client with a key file. The client is a few lines over pyzmq and
`keyswarm.crypto.handshake.ClientHandshake` (the Python client library is
another piece of work): it opens a session with the full handshake and sends
requests sealed in it, as a client in any language would from
docs/protocol.md section 12. Every wait is bounded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keyswarm.actors.key_messages import Encrypt
from keyswarm.actors.messages import Echo, EchoResult, Health, HealthResult
from keyswarm.crypto.handshake import ClientCredentials, ClientHandshake, ClientSession
from keyswarm.enrolment import TokenAccess, create_network, enrol_client, enrol_node
from keyswarm.errors import ErrorCode
from keyswarm.transport import frames

pytestmark = pytest.mark.integration

TIMEOUT_MS = 5000


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sessions-pki")
    root = TokenAccess(spec=f"soft:{base / 'root.token'}")
    create_network(root, network_name="sessions", out_dir=base)
    (base / "s1").mkdir()
    (base / "alice").mkdir()
    enrol_node(root, base / "root.pem", TokenAccess(spec=f"soft:{base / 's1' / 'node.token'}"), name="s1",
               out_dir=base / "s1")
    enrol_client(root, base / "root.pem", name="alice", out_dir=base / "alice", key_file=base / "alice" / "key.pem")
    return {"base": base, "node": base / "s1", "client": base / "alice"}


class RawClient:
    """A DEALER speaking keyswarm frames: plain requests, the full handshake, sealed requests."""

    def __init__(self, endpoint: str, context: zmq.Context, client_dir: Path):
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.dir = client_dir
        self.key = serialization.load_pem_private_key((client_dir / "key.pem").read_bytes(), password=None)
        self.rid = 0
        self.session: ClientSession | None = None

    def close(self) -> None:
        self.sock.close()

    def exchange(self, data: bytes) -> bytes:
        self.sock.send(data)
        assert self.sock.poll(TIMEOUT_MS), "no answer within 5 s"
        return self.sock.recv()

    def plain(self, msg: object) -> frames.Reply:
        self.rid += 1
        return frames.decode_reply(self.exchange(frames.encode_request(self.rid, msg)))

    def handshake(self) -> ClientSession:
        def pem(path: Path) -> x509.Certificate:
            return x509.load_pem_x509_certificate(path.read_bytes())

        machine = ClientHandshake(ClientCredentials(
            root_certificate=pem(self.dir / "root.pem"),
            certificate=pem(self.dir / "client.pem").public_bytes(serialization.Encoding.DER),
        ))
        challenge = self.plain(machine.hello(os.urandom))
        assert challenge.ok, challenge
        to_sign = machine.receive_challenge(challenge.value, now=time.time())
        welcome = self.plain(machine.auth(self.key.sign(to_sign)))
        assert welcome.ok, welcome
        self.session = machine.receive_welcome(welcome.value)
        return self.session

    def seal(self, msg: object) -> bytes:
        self.rid += 1
        return self.session.channel.seal(frames.encode_request(self.rid, msg))

    def open(self, data: bytes) -> frames.Reply:
        if frames.decode_frame(data).kind == frames.Kind.SESSION:
            return frames.decode_reply(self.session.channel.open(data)[1])
        return frames.decode_reply(data)

    def call(self, msg: object) -> frames.Reply:
        return self.open(self.exchange(self.seal(msg)))


def start_node(node_factory: Callable, pki: dict[str, Path], healthy: Callable, context: zmq.Context):
    node_dir = pki["node"]
    (node,) = node_factory(["s1"], token={
        "spec": f"soft:{node_dir / 'node.token'}",
        "node_certificate": str(node_dir / "node.pem"),
        "root_certificate": str(node_dir / "root.pem"),
    })
    deadline = time.monotonic() + 10.0
    while (health := healthy(node.client_endpoint, context)).subkey != "ok":
        assert time.monotonic() < deadline, f"no sub-key within 10 s: {health}"
        time.sleep(0.02)
    assert health.actors.get("sessions") == "running", health
    return node


def test_a_client_opens_a_session_and_talks_inside_it(pki, node_factory, healthy, zmq_context) -> None:
    node = start_node(node_factory, pki, healthy, zmq_context)
    client = RawClient(node.client_endpoint, zmq_context, pki["client"])
    try:
        session = client.handshake()
        assert session.node == "s1" and session.ticket and session.expires_at_s > time.time() + 3000
        reply = client.call(Health())
        assert reply.ok and isinstance(reply.value, HealthResult) and reply.request_id == client.rid, reply
        assert reply.value.actors["sessions"] == "running"
        assert client.call(Echo(payload=b"sealed")).value == EchoResult(payload=b"sealed", node="s1")
        # A fresh network has no policy: default deny, named.
        forbidden = client.call(Encrypt(name="app/x", plaintext=b"x"))
        assert forbidden.error.code is ErrorCode.FORBIDDEN and "app/x" in forbidden.error.message, forbidden
        # The same bytes twice: the second is refused, unsealed, under the frame's counter.
        frame = client.seal(Echo(payload=b"once"))
        assert client.open(client.exchange(frame)).ok
        replay = frames.decode_reply(client.exchange(frame))
        assert replay.error.code is ErrorCode.REPLAYED and replay.request_id == client.session.channel.next_counter - 1
        # Key operations are not served outside a session.
        plain = client.plain(Encrypt(name="app/x", plaintext=b"x"))
        assert plain.error.code is ErrorCode.UNAUTHENTICATED, plain
    finally:
        client.close()
    stats = node.call(lambda: node.driver.runtime.actor("sessions").stats())
    assert stats["welcomes"] == 1 and stats["replayed"] == 1 and stats["table"].size == 1, stats
    intake = node.stats()
    assert intake["inflight"] == 0 and intake["internal_errors"] == 0, intake


def test_two_clients_on_one_node_keep_their_sessions_apart(pki, node_factory, healthy, zmq_context) -> None:
    node = start_node(node_factory, pki, healthy, zmq_context)
    first, second = (RawClient(node.client_endpoint, zmq_context, pki["client"]) for _ in range(2))
    try:
        first.handshake()
        second.handshake()
        for i in range(50):  # interleaved, counters overlapping: each in its own session
            assert first.call(Echo(payload=b"1-%d" % i)).value.payload == b"1-%d" % i
            assert second.call(Echo(payload=b"2-%d" % i)).value.payload == b"2-%d" % i
    finally:
        first.close()
        second.close()
    stats = node.stats()
    assert stats["expired"] == 0 and stats["late_replies"] == 0, stats
