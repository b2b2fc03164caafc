"""Key operations end to end on real nodes (`NodeThread` on ZeroMQ): two nodes of one network on soft tokens.

The PKI is made in `tmp_path` with `keyswarm.enrolment` (what `keyswarm init`,
`enroll-node` and `enroll-client [--admin]` run): every node's
`domain-key.sealed` is named by `[token] domain_key`, unsealed with the
node's token at start, and runs the key service. The clients are the raw
DEALER helper of test_sessions_node (handshake, sealed requests); an admin
client bootstraps the policy for a second client, which then creates a key,
encrypts and decrypts. A ticket from node A resumes on node B (one domain key).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from keyswarm.actors.key_messages import CreateKey, Decrypt, DecryptResult, Encrypt, EncryptResult, SetPolicy
from keyswarm.actors.messages import Echo, EchoResult
from keyswarm.config import TokenConfig
from keyswarm.crypto.resumption import ClientResumption
from keyswarm.enrolment import TokenAccess, create_network, enrol_client, enrol_node
from keyswarm.errors import ConfigError, ErrorCode
from keyswarm.node.node_thread import NodeThread
from keyswarm.node.node_token import open_node_token
from keyswarm.storage.policy_bodies import PolicyRule
from test_sessions_node import RawClient  # the raw DEALER client (tests/integration on sys.path)

pytestmark = pytest.mark.integration

NODES = ("ka", "kb")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("keys-pki")
    root = TokenAccess(spec=f"soft:{base / 'root.token'}")
    create_network(root, network_name="keys", out_dir=base)
    for name in NODES:
        (base / name).mkdir()
        enrol_node(root, base / "root.pem", TokenAccess(spec=f"soft:{base / name / 'node.token'}"), name=name,
                   out_dir=base / name)
    for name, admin in (("boss", True), ("app1", False)):
        (base / name).mkdir()
        enrol_client(root, base / "root.pem", name=name, out_dir=base / name, key_file=base / name / "key.pem",
                     admin=admin)
    return {"base": base, **{name: base / name for name in (*NODES, "boss", "app1")}}


def token_section(node_dir: Path, *, domain_key: bool = True) -> dict[str, str]:
    return {
        "spec": f"soft:{node_dir / 'node.token'}",
        "node_certificate": str(node_dir / "node.pem"),
        "root_certificate": str(node_dir / "root.pem"),
        **({"domain_key": str(node_dir / "domain-key.sealed")} if domain_key else {}),
    }


@pytest.fixture
def network(pki, config_maker, healthy, zmq_context) -> list[NodeThread]:
    started: list[NodeThread] = []
    try:
        for attempt in range(5):
            try:
                for config in config_maker(list(NODES)):
                    token = TokenConfig(**token_section(pki[config.node.id]))
                    started.append(NodeThread(dataclasses.replace(config, token=token)).start())
                break
            except Exception:  # a lost port race: try again on fresh ports
                for node in started:
                    node.stop()
                started.clear()
                if attempt == 4:
                    raise
        for node in started:
            wait_ready(node, healthy, zmq_context)
        yield started
    finally:
        for node in started:
            node.stop()


def wait_ready(node: NodeThread, healthy: Callable, context: zmq.Context) -> None:
    deadline = time.monotonic() + 10.0
    while True:
        health = healthy(node.client_endpoint, context)
        if health.subkey == "ok" and all(health.actors.get(a) == "running" for a in ("sessions", "keys", "admin")):
            return
        assert time.monotonic() < deadline, f"node not ready within 10 s: {health}"
        time.sleep(0.02)


def value(reply):  # noqa: ANN001, ANN201
    assert reply.ok, reply
    return reply.value


def test_keys_end_to_end_on_two_nodes(pki, network, zmq_context) -> None:
    node_a, node_b = network
    boss = RawClient(node_a.client_endpoint, zmq_context, pki["boss"])
    app = RawClient(node_a.client_endpoint, zmq_context, pki["app1"])
    try:
        boss.handshake()
        # Before the admin grants anything, app1 is refused (default deny).
        app.handshake()
        refused = app.call(CreateKey(name="app1/k", algorithm="aes256-gcm"))
        assert refused.error.code is ErrorCode.FORBIDDEN, refused

        rules = (PolicyRule(pattern="app1/*", ops=("encrypt", "decrypt", "key.create")),)
        value(boss.call(SetPolicy(client="app1", rules=rules, client_request_id=os.urandom(16))))

        # The policy reaches the sessions actor once durable; retry briefly until the create is allowed.
        deadline = time.monotonic() + 5.0
        while (created := app.call(CreateKey(name="app1/k", algorithm="aes256-gcm",
                                             client_request_id=b"create-app1-k"))).error is not None:
            assert created.error.code is ErrorCode.FORBIDDEN and time.monotonic() < deadline, created
            time.sleep(0.05)
        assert created.value.name == "app1/k", created

        sealed = value(app.call(Encrypt(name="app1/k", plaintext=b"attack at dawn", context=b"ctx")))
        assert isinstance(sealed, EncryptResult) and b"attack at dawn" not in sealed.ciphertext
        opened = value(app.call(Decrypt(ciphertext=sealed.ciphertext, context=b"ctx")))
        assert isinstance(opened, DecryptResult) and opened.plaintext == b"attack at dawn"

        # Outside its pattern: FORBIDDEN, naming the operation and the key.
        other = app.call(Encrypt(name="app2/x", plaintext=b"x"))
        assert other.error.code is ErrorCode.FORBIDDEN and "app2/x" in other.error.message, other
        other_create = app.call(CreateKey(name="app2/x", algorithm="aes256-gcm"))
        assert other_create.error.code is ErrorCode.FORBIDDEN, other_create

        # Tampered ciphertext: DECRYPT_FAILED, never a plaintext.
        tampered = bytearray(sealed.ciphertext)
        tampered[-1] ^= 0x01
        broken = app.call(Decrypt(ciphertext=bytes(tampered), context=b"ctx"))
        assert broken.error.code is ErrorCode.DECRYPT_FAILED and broken.value is None, broken
        # The wrong context: the same.
        wrong = app.call(Decrypt(ciphertext=sealed.ciphertext, context=b"other"))
        assert wrong.error.code is ErrorCode.DECRYPT_FAILED, wrong

        # A ticket node A issued resumes on node B: the same domain key keys the tickets.
        session = app.session
        resumer = RawClient(node_b.client_endpoint, zmq_context, pki["app1"])
        try:
            machine = ClientResumption.from_session(session)
            resumed = resumer.plain(machine.resume(os.urandom))
            assert resumed.ok, resumed
            resumer.session = machine.receive_resumed(resumed.value)
            assert resumer.session.node == "kb"
            assert value(resumer.call(Echo(payload=b"on b"))) == EchoResult(payload=b"on b", node="kb")
        finally:
            resumer.close()
    finally:
        boss.close()
        app.close()
    for node in network:
        intake = node.stats()
        assert intake["internal_errors"] == 0, intake


def test_a_node_without_a_domain_key_serves_no_keys(pki, node_factory, healthy, zmq_context) -> None:
    (node,) = node_factory(["ka"], token=token_section(pki["ka"], domain_key=False))
    deadline = time.monotonic() + 10.0
    while (health := healthy(node.client_endpoint, zmq_context)).subkey != "ok":
        assert time.monotonic() < deadline, health
        time.sleep(0.02)
    assert "keys" not in health.actors and "admin" not in health.actors, health
    client = RawClient(node.client_endpoint, zmq_context, pki["boss"])
    try:
        client.handshake()
        reply = client.call(SetPolicy(client="app1", rules=()))
        assert reply.error.code is ErrorCode.UNAVAILABLE and "serves no keys" in reply.error.message, reply
        assert reply.error.retryable
    finally:
        client.close()


@pytest.mark.parametrize("damage", ["missing", "garbage", "other-token"])
def test_a_wrong_domain_key_file_refuses_the_start(pki, config_maker, tmp_path, damage) -> None:
    (config,) = config_maker(["ka"])
    section = token_section(pki["ka"])
    if damage == "missing":
        section["domain_key"] = str(tmp_path / "absent.sealed")
    elif damage == "garbage":
        (tmp_path / "garbage.sealed").write_bytes(b"\x00" * 90)
        section["domain_key"] = str(tmp_path / "garbage.sealed")
    else:  # sealed to kb's token, not ka's
        section["domain_key"] = str(pki["kb"] / "domain-key.sealed")
    config = dataclasses.replace(config, token=TokenConfig(**section))
    with pytest.raises(ConfigError) as caught:
        open_node_token(config)
    message = str(caught.value)
    assert "token.domain_key" in message and section["domain_key"] in message, message
