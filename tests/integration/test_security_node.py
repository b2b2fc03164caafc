"""Security and bad input (issue 5) through a running node: what the unit and sim tests check, over ZeroMQ.

One node on a soft token with a domain key (so the keys and admin actors run),
an admin client `boss` and plain clients, made with `keyswarm.enrolment`
(which builds the certificates with `keyswarm.crypto.certificates` at the
`now` it is given: in the past for an expired certificate, in the future for
a not-yet-valid one). Clients are the raw DEALER helper of test_sessions_node.
docs/security-tests.md maps every item of the issue to its tests.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keyswarm.actors.key_messages import (
    CreateKey, Decrypt, Encrypt, EncryptBatch, EncryptItem, RevokeClient, RevokeNode, SetPolicy,
)
from keyswarm.actors.messages import Echo, EchoResult, Health, HealthResult
from keyswarm.cli import main as cli_main
from keyswarm.client.errors import UnavailableError
from keyswarm.client.sync import Client
from keyswarm.crypto.handshake import ClientCredentials, ClientHandshake
from keyswarm.crypto.session_keys import parse_frame
from keyswarm.crypto.certificates import client_certificate
from keyswarm.enrolment import TokenAccess, create_network, enrol_client, enrol_node, open_access
from keyswarm.errors import AuthError, ErrorCode
from keyswarm.storage.policy_bodies import PolicyRule
from keyswarm.transport import frames
from keyswarm.transport.codec import write_msgpack
from test_keys_node import token_section, wait_ready
from test_sessions_node import RawClient

pytestmark = pytest.mark.integration

MAX_BATCH_ITEMS = 4


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("security-pki")
    root = TokenAccess(spec=f"soft:{base / 'root.token'}")
    # The root dates from ten days ago, so a client clock a few days back finds the root valid and the node not yet.
    create_network(root, network_name="security", out_dir=base, now=datetime.now(timezone.utc) - timedelta(days=10))
    (base / "sn").mkdir()
    enrol_node(root, base / "root.pem", TokenAccess(spec=f"soft:{base / 'sn' / 'node.token'}"), name="sn",
               out_dir=base / "sn")
    for name in ("boss", "app1", "victim"):
        (base / name).mkdir()
        enrol_client(root, base / "root.pem", name=name, out_dir=base / name, key_file=base / name / "key.pem",
                     admin=name == "boss")
    # Certificates issued with a `now` in the past (expired yesterday) and in the future (valid from tomorrow).
    # `enrol_client` checks what it issues at its `now`, where the fresh root is not valid yet: build them directly.
    root_cert = x509.load_pem_x509_certificate((base / "root.pem").read_bytes())
    now = datetime.now(timezone.utc)
    with open_access(root, create=False) as token:
        for name, issued, lifetime in (("old", now - timedelta(days=2), timedelta(days=1)),
                                       ("early", now + timedelta(days=1), timedelta(days=30))):
            (base / name).mkdir()
            key = Ed25519PrivateKey.generate()
            cert = client_certificate(token, root_cert, key.public_key(), client_name=name, now=issued,
                                      lifetime=lifetime)
            (base / name / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (base / name / "key.pem").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            shutil.copyfile(base / "root.pem", base / name / "root.pem")
    # A client of another network, holding our root (so its own check of the node passes).
    other = base / "other"
    other.mkdir()
    other_root = TokenAccess(spec=f"soft:{other / 'root.token'}")
    create_network(other_root, network_name="elsewhere", out_dir=other)
    (base / "stranger").mkdir()
    enrol_client(other_root, other / "root.pem", name="app1", out_dir=base / "stranger",
                 key_file=base / "stranger" / "key.pem")
    shutil.copyfile(base / "root.pem", base / "stranger" / "root.pem")
    # app1's certificate with one signature byte flipped: a forgery.
    (base / "forged").mkdir()
    der = bytearray(x509.load_pem_x509_certificate((base / "app1" / "client.pem").read_bytes())
                    .public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    (base / "forged" / "client.pem").write_bytes(
        x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM))
    for name in ("root.pem", "key.pem"):
        shutil.copyfile(base / "app1" / name, base / "forged" / name)
    return {"base": base, **{p.name: p for p in base.iterdir() if p.is_dir()}}


@pytest.fixture
def node(pki, node_factory, healthy, zmq_context):
    (node,) = node_factory(["sn"], token=token_section(pki["sn"]), limits={"max_batch_items": MAX_BATCH_ITEMS})
    wait_ready(node, healthy, zmq_context)
    return node


@pytest.fixture
def connect(node, pki, zmq_context):
    opened: list[RawClient] = []

    def make(name: str) -> RawClient:
        client = RawClient(node.client_endpoint, zmq_context, pki[name])
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()
    assert node.stats()["internal_errors"] == 0


def attempt(client: RawClient, *, other_transcript: bool = False) -> frames.Reply:
    """A full handshake that returns the node's answer to the auth (the welcome or the refusal).

    `other_transcript`: a malicious client signs other bytes than the transcript (the machine's own
    check that it signed what it was given is pointed at those bytes, so it seals the auth anyway)."""
    machine = ClientHandshake(ClientCredentials(
        root_certificate=x509.load_pem_x509_certificate((client.dir / "root.pem").read_bytes()),
        certificate=x509.load_pem_x509_certificate((client.dir / "client.pem").read_bytes())
        .public_bytes(serialization.Encoding.DER),
    ))
    challenge = client.plain(machine.hello(os.urandom))
    assert challenge.ok, challenge
    to_sign = machine.receive_challenge(challenge.value, now=time.time())
    if other_transcript:
        to_sign = machine._to_sign = b"not the transcript" + to_sign
    return client.plain(machine.auth(client.key.sign(to_sign)))


def value(reply: frames.Reply):  # noqa: ANN201
    assert reply.ok, reply
    return reply.value


def grant(boss: RawClient, client: RawClient, name: str, *ops: str) -> None:
    """The admin sets `name`'s rules; wait (bounded) until the node's gate lets `client` create app1 keys."""
    rules = (PolicyRule(pattern=f"{name}/*", ops=ops),)
    value(boss.call(SetPolicy(client=name, rules=rules, client_request_id=os.urandom(16))))
    deadline = time.monotonic() + 5.0
    while (created := client.call(CreateKey(name=f"{name}/k", algorithm="aes256-gcm",
                                            client_request_id=b"create-" + name.encode()))).error is not None:
        assert created.error.code is ErrorCode.FORBIDDEN and time.monotonic() < deadline, created
        time.sleep(0.05)


@pytest.mark.parametrize("who, why", [
    ("old", "expired"), ("early", "not yet valid"), ("stranger", "another network"), ("forged", "bad signature"),
])
def test_a_live_node_refuses_bad_client_certificates(connect, who: str, why: str) -> None:
    refused = attempt(connect(who))
    assert refused.error is not None and refused.error.code is ErrorCode.UNAUTHENTICATED, (why, refused)
    # The node still serves a good client.
    good = connect("app1")
    good.handshake()
    assert value(good.call(Echo(payload=b"fine"))) == EchoResult(payload=b"fine", node="sn")


def test_a_client_signing_a_different_transcript_is_refused_by_a_live_node(connect) -> None:
    refused = attempt(connect("app1"), other_transcript=True)
    assert refused.error.code is ErrorCode.UNAUTHENTICATED, refused
    assert attempt(connect("app1")).ok  # the same client, signing the transcript: welcome


def test_a_revoked_clients_open_session_and_new_handshakes_are_refused(connect) -> None:
    boss, victim, bystander = connect("boss"), connect("victim"), connect("app1")
    for client in (boss, victim, bystander):
        client.handshake()
    assert value(victim.call(Echo(payload=b"in"))).payload == b"in"
    value(boss.call(RevokeClient(client="victim", reason="test", client_request_id=os.urandom(16))))
    deadline = time.monotonic() + 5.0
    while (reply := victim.call(Echo(payload=b"still?"))).ok:  # the revocation is durable, then folded
        assert time.monotonic() < deadline, "the revoked client's session still served after 5 s"
        time.sleep(0.05)
    assert reply.error.code is ErrorCode.UNAUTHENTICATED, reply
    again = connect("victim")
    refused = attempt(again)
    assert refused.error.code is ErrorCode.UNAUTHENTICATED and "revoked" in refused.error.message, refused
    assert value(bystander.call(Echo(payload=b"unaffected"))).payload == b"unaffected"


def test_a_non_admin_calling_policy_set_is_forbidden(connect) -> None:
    app = connect("app1")
    app.handshake()
    rules = (PolicyRule(pattern="*", ops=("*",)),)
    reply = app.call(SetPolicy(client="app1", rules=rules, client_request_id=os.urandom(16)))
    assert reply.error.code is ErrorCode.FORBIDDEN, reply
    assert app.call(Encrypt(name="app2/x", plaintext=b"x")).error.code is ErrorCode.FORBIDDEN


def test_reordered_frames_are_served_once_and_replays_refused(connect) -> None:
    client = connect("app1")
    client.handshake()
    sealed = [client.seal(Echo(payload=bytes([i]))) for i in range(3)]
    for data in (sealed[2], sealed[0], sealed[1]):
        client.sock.send(data)
    replies = []
    for _ in range(3):
        assert client.sock.poll(5000)
        replies.append(client.open(client.sock.recv()))
    assert sorted(value(r).payload for r in replies) == [b"\x00", b"\x01", b"\x02"]
    for data in sealed:
        replay = frames.decode_reply(client.exchange(data))
        assert replay.error.code is ErrorCode.REPLAYED, replay
    assert value(client.call(Echo(payload=b"after"))).payload == b"after"


def test_a_frame_of_session_a_sent_with_session_bs_id_is_unauthenticated(connect) -> None:
    alice, bob = connect("app1"), connect("app1")
    alice.handshake()
    bob.handshake()
    counter, _, ciphertext = parse_frame(alice.seal(Echo(payload=b"mine")))
    forged = write_msgpack([1, "s", counter, [bob.session.session_id, ciphertext]])
    reply = frames.decode_reply(alice.exchange(forged))  # plain: no session key vouches for it
    assert reply.error.code is ErrorCode.UNAUTHENTICATED, reply
    unknown = frames.decode_reply(alice.exchange(write_msgpack([1, "s", counter, [bytes(16), ciphertext]])))
    assert unknown.error.code is ErrorCode.UNAUTHENTICATED, unknown
    assert value(bob.call(Echo(payload=b"bob"))).payload == b"bob"
    assert value(alice.call(Echo(payload=b"alice"))).payload == b"alice"


def test_malformed_and_oversized_inner_plaintexts_are_answered_inside_the_session(connect) -> None:
    boss, app = connect("boss"), connect("app1")
    boss.handshake()
    app.handshake()
    grant(boss, app, "app1", "encrypt", "key.create")

    def sealed_error(msg: object) -> frames.Reply:
        data = app.exchange(app.seal(msg) if not isinstance(msg, bytes) else app.session.channel.seal(msg))
        assert parse_frame(data)[1] == app.session.session_id, "answered inside the session"
        reply = app.open(data)
        assert not reply.ok, reply
        return reply

    assert sealed_error(b"\xc1").error.code is ErrorCode.BAD_REQUEST  # not msgpack
    assert sealed_error(write_msgpack([1, "q", 7, {"op": "no.such.op"}])).error.code is ErrorCode.BAD_REQUEST
    many = EncryptBatch(items=tuple(EncryptItem(name="app1/k", plaintext=b"") for _ in range(MAX_BATCH_ITEMS + 1)))
    assert sealed_error(many).error.code is ErrorCode.TOO_LARGE
    assert sealed_error(Encrypt(name="app1/" + "x" * 300, plaintext=b"")).error.code is ErrorCode.BAD_REQUEST
    # An inner plaintext past the frame limit makes the sealed frame too large as well: refused plain, at intake.
    huge = frames.decode_reply(app.exchange(app.seal(Echo(payload=bytes(70_000)))))
    assert huge.error.code is ErrorCode.TOO_LARGE, huge
    assert value(app.call(Health())).node == "sn"


def test_tampered_ciphertext_is_decrypt_failed_with_no_plaintext(connect) -> None:
    boss, app = connect("boss"), connect("app1")
    boss.handshake()
    app.handshake()
    grant(boss, app, "app1", "encrypt", "decrypt", "key.create")
    secret = b"attack at dawn, " * 4
    ciphertext = value(app.call(Encrypt(name="app1/k", plaintext=secret, context=b"ctx"))).ciphertext
    codes: dict[ErrorCode, int] = {}
    for i in range(0, len(ciphertext), 7):  # a flip in the header, the nonce, the body and the tag
        tampered = bytearray(ciphertext)
        tampered[i] ^= 0x01
        data = app.exchange(app.seal(Decrypt(ciphertext=bytes(tampered), context=b"ctx")))
        assert frames.decode_frame(data).kind == frames.Kind.SESSION, "answered inside the session"
        inner = app.session.channel.open(data)[1]
        reply = frames.decode_reply(inner)
        assert reply.value is None and secret[:16] not in inner, (i, reply)
        codes[reply.error.code] = codes.get(reply.error.code, 0) + 1
    # Flips in the header rename the key or its version (FORBIDDEN / KEY_NOT_FOUND / BAD_REQUEST); the rest fail the tag.
    assert set(codes) <= {ErrorCode.DECRYPT_FAILED, ErrorCode.BAD_REQUEST, ErrorCode.KEY_NOT_FOUND,
                          ErrorCode.FORBIDDEN} and codes[ErrorCode.DECRYPT_FAILED] >= len(codes), codes
    body = bytearray(ciphertext)
    body[-1] ^= 0x01
    assert app.call(Decrypt(ciphertext=bytes(body), context=b"ctx")).error.code is ErrorCode.DECRYPT_FAILED
    assert app.call(Decrypt(ciphertext=ciphertext[:-1], context=b"ctx")).error.code is ErrorCode.DECRYPT_FAILED
    assert value(app.call(Decrypt(ciphertext=ciphertext, context=b"ctx"))).plaintext == secret


def test_twenty_thousand_half_open_handshakes_from_one_client_stay_bounded(node, connect) -> None:
    flood = connect("app1")
    machine = ClientHandshake(ClientCredentials(
        root_certificate=x509.load_pem_x509_certificate((flood.dir / "root.pem").read_bytes()),
        certificate=x509.load_pem_x509_certificate((flood.dir / "client.pem").read_bytes())
        .public_bytes(serialization.Encoding.DER),
    ))
    hello = machine.hello(os.urandom)
    rid = 0
    sessions = node.driver.runtime.actor("sessions")
    answers: dict[str, int] = {}
    for _ in range(20):
        for _ in range(1000):
            rid += 1
            flood.sock.send(frames.encode_request(rid, hello))
        for _ in range(1000):
            assert flood.sock.poll(10_000), "a hello went unanswered"
            reply = frames.decode_reply(flood.sock.recv())
            kind = type(reply.value).__name__ if reply.ok else reply.error.code.name
            answers[kind] = answers.get(kind, 0) + 1
        pending = node.call(lambda: len(sessions.pending))
        assert pending <= 64, pending  # bounded per peer, however many hellos came
    # Every hello is answered: a challenge, or BUSY once the one client floods (the intake's per-client limit).
    assert sum(answers.values()) == 20_000 and set(answers) <= {"Challenge", "BUSY"}, answers
    other = connect("victim")
    other.handshake()
    assert value(other.call(Echo(payload=b"served"))).payload == b"served"


# --- the node's certificate, seen by a client; node.revoke ----------------------------------------


def _recording_signer(signed: list[bytes]):  # noqa: ANN202
    def sign(data: bytes) -> bytes:
        signed.append(data)
        return b"x" * 64

    return sign


@pytest.mark.parametrize("skew_s, problem", [
    (400 * 86_400.0, "expired"),  # past the node certificate's notAfter (365 days)
    (-5 * 86_400.0, "not_yet_valid"),  # before its notBefore (the root is ten days old)
])
def test_a_client_whose_clock_is_outside_the_node_certificate_refuses_the_node_before_signing(
    node, pki, skew_s: float, problem: str
) -> None:
    signed: list[bytes] = []
    client_dir = pki["app1"]
    with pytest.raises(AuthError) as info:
        Client.connect(node.client_endpoint, root_certificate=client_dir / "root.pem",
                       client_certificate=client_dir / "client.pem", key=_recording_signer(signed),
                       timeout_s=5.0, retries=0, clock=lambda: time.time() + skew_s)
    message = str(info.value)
    assert f"certificate: {problem}" in message and "node certificate keyswarm://" in message, message
    assert "/node/sn" in message, message
    assert signed == [], "the client signed for a node it could not verify"


def test_a_client_pinning_another_networks_root_refuses_the_node_before_signing(node, pki) -> None:
    signed: list[bytes] = []
    with pytest.raises(AuthError, match="wrong_network") as info:
        Client.connect(node.client_endpoint, root_certificate=pki["other"] / "root.pem",
                       client_certificate=pki["app1"] / "client.pem", key=_recording_signer(signed),
                       timeout_s=5.0, retries=0)
    assert "certificate" in str(info.value)
    assert signed == []


def test_a_client_told_the_node_certificate_is_revoked_refuses_it_before_signing(node, pki, tmp_path, capsys) -> None:
    """A compromised node would not refuse its own clients: a client given the node certificate's
    fingerprint refuses the node itself, during the handshake, before its token signs anything."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate((pki["sn"] / "node.pem").read_bytes())
    fingerprint = cert.fingerprint(hashes.SHA256())
    signed: list[bytes] = []
    with pytest.raises(AuthError, match="revoked") as info:
        Client.connect(node.client_endpoint, root_certificate=pki["app1"] / "root.pem",
                       client_certificate=pki["app1"] / "client.pem", key=_recording_signer(signed),
                       timeout_s=5.0, retries=0, revoked_certificates=[fingerprint.hex()])
    assert "node certificate" in str(info.value) and signed == []
    # Another certificate's fingerprint changes nothing.
    with Client.connect(node.client_endpoint, root_certificate=pki["app1"] / "root.pem",
                        client_certificate=pki["app1"] / "client.pem", key=pki["app1"] / "key.pem",
                        timeout_s=5.0, revoked_certificates=[bytes(32)]) as client:
        assert client.health().node == "sn"
    # From the shell: a list as `openssl x509 -fingerprint -sha256` prints it; a bad list is exit 3.
    app = pki["app1"]
    auth = ["client", "--connect", node.client_endpoint, "--root-cert", str(app / "root.pem"), "--cert",
            str(app / "client.pem"), "--key", str(app / "key.pem"), "--retries", "0"]
    listing = tmp_path / "revoked.txt"
    openssl_form = ":".join(f"{b:02X}" for b in fingerprint)
    listing.write_text(f"# revoked nodes\n\nsha256 Fingerprint={openssl_form}\n")
    assert cli_main([*auth, "--revoked-certs", str(listing), "key", "list"]) == 3
    assert "revoked" in capsys.readouterr().err
    for bad in ("not-hex\n", "ab" * 31 + "\n", "\xff\n"):
        listing.write_bytes(bad.encode("latin-1"))
        assert cli_main([*auth, "--revoked-certs", str(listing), "key", "list"]) == 3, bad
        err = capsys.readouterr().err
        assert "not a SHA-256 fingerprint" in err or "not ASCII" in err, err
    assert cli_main([*auth, "--revoked-certs", str(tmp_path / "absent"), "key", "list"]) == 3


def _health(client: RawClient) -> HealthResult:
    reply = client.plain(Health())
    assert reply.ok, reply
    return reply.value


def test_node_revoke_closes_open_sessions_and_new_connections_get_unavailable(node, connect, pki, capsys) -> None:
    victim, bystander = connect("victim"), connect("app1")
    victim.handshake()
    assert value(victim.call(Echo(payload=b"in"))).payload == b"in"
    # A non-admin may not revoke a node.
    bystander.handshake()
    reply = bystander.call(RevokeNode(node="sn", client_request_id=os.urandom(16)))
    assert reply.error.code is ErrorCode.FORBIDDEN, reply
    # The admin revokes it from the command line.
    boss = pki["boss"]
    code = cli_main(["client", "--connect", node.client_endpoint, "--root-cert", str(boss / "root.pem"),
                     "--cert", str(boss / "client.pem"), "--key", str(boss / "key.pem"), "--timeout", "5", "--json",
                     "revoke-node", "sn", "--reason", "disk stolen"])
    out = capsys.readouterr().out
    assert code == 0 and '"revoked_node": "sn"' in out, (code, out)
    deadline = time.monotonic() + 5.0
    while (reply := victim.call(Echo(payload=b"still?"))).ok:  # durable, then folded: the sessions close
        assert time.monotonic() < deadline, "a session on the revoked node still served after 5 s"
        time.sleep(0.05)
    assert reply.error.code is ErrorCode.UNAUTHENTICATED, reply
    hello = connect("victim").plain(ClientHandshake(ClientCredentials(
        root_certificate=x509.load_pem_x509_certificate((pki["victim"] / "root.pem").read_bytes()),
        certificate=x509.load_pem_x509_certificate((pki["victim"] / "client.pem").read_bytes())
        .public_bytes(serialization.Encoding.DER),
    )).hello(os.urandom))
    assert hello.error.code is ErrorCode.UNAVAILABLE and hello.error.retryable, hello
    assert "this node is revoked: disk stolen" in hello.error.message, hello
    with pytest.raises(UnavailableError, match="revoked"):
        Client.connect(node.client_endpoint, root_certificate=pki["app1"] / "root.pem",
                       client_certificate=pki["app1"] / "client.pem", key=pki["app1"] / "key.pem",
                       timeout_s=5.0, retries=0)
    shown = _health(connect("app1"))
    assert shown.status == "degraded" and "disk stolen" in shown.conditions["revoked"], shown
