"""The handshake and resumption, driven through a fake link.

As h11's ConnectionPair: a `Pair` holds a client machine and a node
machine and carries every message through the real wire envelope
(`encode_request` / `decode_reply` ...), with hooks that let a test play
the network attacker on any message in flight. The PKI is real: soft
tokens, X.509 certificates from `keyswarm.crypto.certificates`, one network
per root algorithm plus a foreign one. The docs/protocol.md test vectors
are in test_session_vectors.py; resumption and tickets in test_resumption.py.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keyswarm.crypto.certificates import (
    certificate_fingerprint,
    client_certificate,
    node_certificate,
    root_certificate,
    subkey_certificate,
)
from keyswarm.crypto.handshake import (
    ClientCredentials,
    ClientHandshake,
    ClientSession,
    LocalHandshakeError,
    NodeCredentials,
    NodeHandshake,
    NodeSettings,
    PeerAuthFailed,
    State,
    VersionMismatch,
)
from keyswarm.crypto.handshake_messages import (
    Auth,
    AuthBody,
    Challenge,
    Hello,
    Transcript,
    Welcome,
    mix_challenge,
    mix_hello,
    node_signed_data,
)
from keyswarm.crypto.sealing import DomainKey
from keyswarm.crypto.session_keys import C2S, seal_message
from keyswarm.crypto.session_table import PendingHandshakes, Session
from keyswarm.crypto.tickets import TicketKeys
from keyswarm.errors import AuthError, ErrorCode
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.transport.codec import encode, read_msgpack
from keyswarm.transport.frames import decode_reply, decode_request, encode_reply, encode_request

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
T = NOW.timestamp()
DER = serialization.Encoding.DER


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(DER)


def flip_signature(cert: x509.Certificate) -> bytes:
    """The certificate with one bit of its signature flipped: a forgery."""
    data = bytearray(der(cert))
    data[-5] ^= 0x01
    return bytes(data)


@dataclass
class Client:
    token: SoftToken
    certificate: bytes
    intermediates: tuple[bytes, ...] = ()

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.certificate)


@dataclass
class Net:
    """One network: a root, node n1 with its sub-key, clients of every kind, a ticket key."""

    root_token: SoftToken
    root: x509.Certificate
    node_token: SoftToken
    node: x509.Certificate
    subkey: Ed25519PrivateKey
    subkey_cert: x509.Certificate
    settings: NodeSettings
    tickets: TicketKeys
    clients: dict[str, Client] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def creds(self, node: x509.Certificate | bytes | None = None, subkey: x509.Certificate | bytes | None = None,
              serial: int | None = None) -> NodeCredentials:
        node_der = self.node if node is None else node
        sub = self.subkey_cert if subkey is None else subkey
        return NodeCredentials(
            node_certificate=node_der if isinstance(node_der, bytes) else der(node_der),
            subkey_certificate=sub if isinstance(sub, bytes) else der(sub),
            subkey_serial=self.subkey_cert.serial_number if serial is None else serial,
        )

    def mint_subkey(
        self, *, node: x509.Certificate | None = None, token: SoftToken | None = None,
        now: datetime = NOW, serial: int = 99, name: str = "n1",
    ) -> tuple[Ed25519PrivateKey, x509.Certificate]:
        signing = Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        agreement = X25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        cert = subkey_certificate(
            token or self.node_token, node or self.node, signing.public_key(), agreement.public_key(),
            node_name=name, serial=serial, now=now,
        )
        return signing, cert

    def mint_node(
        self, *, now: datetime = NOW, name: str = "n1"
    ) -> tuple[x509.Certificate, Ed25519PrivateKey, x509.Certificate]:
        cert = node_certificate(self.root_token, self.root, self.node_token.identity_public_key(), node_name=name,
                                now=now, entropy=self.rng.randbytes)
        signing, sub = self.mint_subkey(node=cert, now=now, name=name)
        return cert, signing, sub

    def mint_client(
        self, name: str, algorithm: str, directory: Path, *, now: datetime = NOW,
        lifetime: timedelta = timedelta(days=365), issuer: Client | None = None, admin: bool = False,
    ) -> Client:
        token = SoftToken.create(directory / f"{name}-{self.rng.random()}.key", algorithm=algorithm,
                                 entropy=self.rng.randbytes)
        issuer_token, issuer_cert = (self.root_token, self.root) if issuer is None else (issuer.token, issuer.cert)
        cert = client_certificate(issuer_token, issuer_cert, token.identity_public_key(), client_name=name, now=now,
                                  lifetime=lifetime, admin=admin, entropy=self.rng.randbytes)
        return Client(token, der(cert), () if issuer is None else (issuer.certificate,))


def build_net(directory: Path, algorithm: str, seed: int) -> Net:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    root_token = SoftToken.create(directory / "root.key", algorithm=algorithm, entropy=rng.randbytes)
    root = root_certificate(root_token, network_name=f"net {seed}", now=NOW, entropy=rng.randbytes)
    node_token = SoftToken.create(directory / "node.key", algorithm=algorithm, entropy=rng.randbytes)
    node = node_certificate(root_token, root, node_token.identity_public_key(), node_name="n1", now=NOW,
                            entropy=rng.randbytes)
    net = Net(root_token, root, node_token, node, None, None,  # type: ignore[arg-type]
              NodeSettings(node_name="n1", root_certificate=root),
              TicketKeys(DomainKey(rng.randbytes(32))), rng=rng)
    net.subkey, net.subkey_cert = net.mint_subkey(serial=17)
    net.clients["ed25519"] = net.mint_client("app1", "ed25519", directory)
    net.clients["p256"] = net.mint_client("app2", "p256", directory)
    admin = net.mint_client("admin", "ed25519", directory, admin=True)
    net.clients["admin"] = admin
    net.clients["admin-issued"] = net.mint_client("app3", "p256", directory, issuer=admin)
    return net


@pytest.fixture(scope="module", params=["ed25519", "p256"], ids=lambda a: f"root={a}")
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Net:
    return build_net(tmp_path_factory.mktemp(f"net-{request.param}"), request.param, seed=1)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Net:
    return build_net(tmp_path_factory.mktemp("foreign"), "ed25519", seed=2)


@pytest.fixture(scope="module")
def ed_net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    """One Ed25519 network, for tests that need not run per root algorithm."""
    return build_net(tmp_path_factory.mktemp("ed"), "ed25519", seed=3)


# --- the fake link ------------------------------------------------------------------

Hook = Callable[[object], object]


class Pair:
    """A client machine and a node machine joined by a fake link that speaks the real envelope."""

    def __init__(self, net: Net, client: Client | str = "ed25519", *, creds: NodeCredentials | None = None,
                 settings: NodeSettings | None = None, seed: int = 3):
        self.net = net
        self.who = net.clients[client] if isinstance(client, str) else client
        self.client = ClientHandshake(ClientCredentials(
            root_certificate=net.root, certificate=self.who.certificate, intermediates=self.who.intermediates,
        ))
        self.node = NodeHandshake(settings or net.settings)
        self.creds = creds or net.creds()
        self.subkey = net.subkey
        self.rng = random.Random(seed)
        self.wire: list[bytes] = []
        self.sent: dict[str, object] = {}
        self.hooks: dict[str, Hook] = {}
        self.sign: Callable[[bytes], bytes] = self.who.token.sign
        self.token_calls = 0
        self.rid = 0

    def entropy(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def to_node(self, msg: object) -> object:
        self.rid += 1
        data = encode_request(self.rid, msg)
        self.wire.append(data)
        rid, got = decode_request(data)
        assert rid == self.rid
        self.sent[type(got).__name__] = got
        return self.hooks.get(type(got).__name__, lambda m: m)(got)

    def to_client(self, msg: object) -> object:
        data = encode_reply(self.rid, msg)
        self.wire.append(data)
        reply = decode_reply(data)
        assert reply.ok and reply.request_id == self.rid
        return self.hooks.get(type(reply.value).__name__, lambda m: m)(reply.value)

    def hello(self) -> Hello:
        return self.to_node(self.client.hello(self.entropy))  # type: ignore[return-value]

    def challenge(self, hello: Hello | None = None, *, serial: int | None = None) -> Challenge:
        to_sign = self.node.receive_hello(hello or self.hello(), credentials=self.creds, entropy=self.entropy)
        challenge = self.node.challenge(self.subkey.sign(to_sign),
                                        serial=self.creds.subkey_serial if serial is None else serial)
        return self.to_client(challenge)  # type: ignore[return-value]

    def auth(self, *, now: float = T, revoked: object = frozenset()) -> Auth:
        to_sign = self.client.receive_challenge(self.challenge(), now=now, revoked=revoked)  # type: ignore[arg-type]
        self.token_calls += 1
        return self.to_node(self.client.auth(self.sign(to_sign)))  # type: ignore[return-value]

    def run(self, *, now: float = T, node_revoked: object = frozenset(), client_revoked: object = frozenset(),
            tickets: bool = True) -> tuple[ClientSession, Session]:
        auth = self.auth(now=now, revoked=node_revoked)
        welcome, session = self.node.receive_auth(
            auth, now=now, entropy=self.entropy, revoked=client_revoked,  # type: ignore[arg-type]
            tickets=self.net.tickets if tickets else None,
        )
        return self.client.receive_welcome(self.to_client(welcome)), session  # type: ignore[arg-type]


def refused(call: Callable[[], object], reason: str, subreason: str | None = None) -> PeerAuthFailed:
    with pytest.raises(PeerAuthFailed) as info:
        call()
    assert (info.value.reason, info.value.subreason) == (reason, subreason), str(info.value)
    assert isinstance(info.value, AuthError)
    return info.value


# --- the full handshake ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ed25519", "p256", "admin-issued"])
def test_a_full_handshake_establishes_one_session_on_both_sides(net: Net, kind: str) -> None:
    pair = Pair(net, kind)
    mine, theirs = pair.run()
    assert pair.client.state is State.ESTABLISHED and pair.node.state is State.ESTABLISHED
    assert mine.session_id == theirs.session_id and len(mine.session_id) == 16
    assert mine.channel.keys[:32] == theirs.keys[32:] and mine.channel.keys[32:] == theirs.keys[:32]
    assert theirs.open(mine.channel.seal(b"ping")) == (0, b"ping")
    assert mine.channel.open(theirs.seal(b"pong")) == (0, b"pong")
    cert = pair.who.cert
    assert theirs.client.name == {"ed25519": "app1", "p256": "app2", "admin-issued": "app3"}[kind]
    assert theirs.client.fingerprint == certificate_fingerprint(cert) and theirs.client.serial == cert.serial_number
    issuer = net.root if kind != "admin-issued" else net.clients["admin"].cert
    assert theirs.client.issuer_fingerprint == certificate_fingerprint(issuer)
    assert mine.expires_at_s == theirs.expires_at_s == T + net.settings.session_ttl_s
    assert mine.node == pair.client.node == "n1" and mine.ticket and mine.ticket_expires_at_s == T + 3600
    assert pair.token_calls == 1


def test_the_handshake_rides_the_client_envelope(net: Net) -> None:
    pair = Pair(net)
    pair.run()
    ops = [read_msgpack(frame)[3]["op"] for frame in pair.wire]
    assert ops == ["handshake.hello", "handshake.challenge", "handshake.auth", "handshake.welcome"]
    kinds = [read_msgpack(frame)[1] for frame in pair.wire]
    assert kinds == ["q", "r", "q", "r"]


def test_the_client_identity_never_crosses_the_wire_in_clear(net: Net) -> None:
    pair = Pair(net, "admin-issued")
    pair.run()
    wire = b"".join(pair.wire)
    assert pair.who.certificate not in wire and pair.who.intermediates[0] not in wire
    assert b"app3" not in wire and b"admin" not in wire
    assert der(net.node) in wire  # nodes are public


def test_a_session_never_outlives_the_client_certificate(net: Net, tmp_path: Path) -> None:
    short = net.mint_client("brief", "ed25519", tmp_path, lifetime=timedelta(minutes=10))
    mine, theirs = Pair(net, short).run()
    not_after = short.cert.not_valid_after_utc.timestamp()
    assert theirs.expires_at_s == mine.expires_at_s == not_after < T + 3600
    assert mine.ticket_expires_at_s == not_after


def test_without_a_ticket_key_the_welcome_carries_no_ticket(net: Net) -> None:
    mine, _ = Pair(net).run(tickets=False)
    assert mine.ticket == b"" and mine.ticket_expires_at_s == 0.0


# --- the client refuses the node ---------------------------------------------------


def node_variant(net: Net, foreign: Net, variant: str) -> tuple[NodeCredentials, Ed25519PrivateKey, str]:
    """Credentials for a bad node, the sub-key that signs, and the expected certificate reason."""
    if variant == "node expired":
        node, signing, sub = net.mint_node(now=NOW - timedelta(days=400))
        # A sub-key minted at NOW under the expired node certificate (the token still works).
        signing, sub = net.mint_subkey(node=node)
        return net.creds(node, sub, sub.serial_number), signing, "expired"
    if variant == "node not yet valid":
        node, _, _ = net.mint_node(now=NOW + timedelta(days=1))
        signing, sub = net.mint_subkey(node=node)
        return net.creds(node, sub, sub.serial_number), signing, "not_yet_valid"
    if variant == "sub-key expired":
        signing, sub = net.mint_subkey(now=NOW - timedelta(hours=2))
        return net.creds(subkey=sub, serial=sub.serial_number), signing, "expired"
    if variant == "node forged":
        return net.creds(node=flip_signature(net.node)), net.subkey, "bad_signature"
    if variant == "sub-key forged":
        return net.creds(subkey=flip_signature(net.subkey_cert)), net.subkey, "bad_signature"
    if variant == "other network":
        return foreign.creds(), foreign.subkey, "wrong_network"
    if variant == "sub-key of another node":
        other, _, _ = net.mint_node(name="n2")
        return net.creds(node=other), net.subkey, "wrong_issuer"
    raise AssertionError(variant)


NODE_VARIANTS = ["node expired", "node not yet valid", "sub-key expired", "node forged", "sub-key forged",
                 "other network", "sub-key of another node"]


@pytest.mark.parametrize("variant", NODE_VARIANTS)
def test_the_client_refuses_a_bad_node_before_it_signs(net: Net, foreign: Net, variant: str) -> None:
    creds, signing, reason = node_variant(net, foreign, variant)
    pair = Pair(net, creds=creds)
    pair.subkey = signing
    refused(pair.auth, "certificate", reason)
    assert pair.token_calls == 0 and pair.client.state is State.FAILED


@pytest.mark.parametrize("what", ["node", "sub-key"])
def test_the_client_refuses_a_revoked_node_or_sub_key(net: Net, what: str) -> None:
    serial = (net.node if what == "node" else net.subkey_cert).serial_number
    refused(lambda: Pair(net).auth(revoked={serial}), "certificate", "revoked")


def test_a_tampered_challenge_signature_is_refused(net: Net) -> None:
    pair = Pair(net)
    pair.hooks["Challenge"] = lambda c: dataclasses.replace(c, signature=bytes([c.signature[0] ^ 1]) + c.signature[1:])
    refused(pair.auth, "signature")
    assert pair.token_calls == 0


def test_a_signature_by_a_sub_key_other_than_the_certified_one_is_refused(net: Net) -> None:
    pair = Pair(net)
    pair.subkey, _ = net.mint_subkey()  # signs, but the challenge carries net.subkey_cert
    refused(pair.auth, "signature")


def test_a_hello_changed_in_flight_breaks_the_node_signature_for_the_client(net: Net) -> None:
    pair = Pair(net)
    pair.hooks["Hello"] = lambda h: dataclasses.replace(h, client_nonce=bytes(32))
    refused(pair.auth, "signature")


def test_a_challenge_field_changed_in_flight_is_refused(net: Net) -> None:
    pair = Pair(net)
    pair.hooks["Challenge"] = lambda c: dataclasses.replace(c, node_nonce=bytes(32))
    refused(pair.auth, "signature")


# --- the node refuses the client ---------------------------------------------------


def test_the_node_refuses_bad_client_certificates(net: Net, foreign: Net, tmp_path: Path) -> None:
    cases = {
        "expired": net.mint_client("old", "ed25519", tmp_path, now=NOW - timedelta(days=400)),
        "not_yet_valid": net.mint_client("early", "p256", tmp_path, now=NOW + timedelta(days=1)),
        "wrong_network": foreign.clients["ed25519"],
        "wrong_kind": Client(net.node_token, der(net.node)),
    }
    forged = net.clients["ed25519"]
    cases["bad_signature"] = Client(forged.token, flip_signature(forged.cert))
    for reason, client in cases.items():
        pair = Pair(net, client)
        error = refused(pair.run, "certificate", reason)
        assert pair.node.state is State.FAILED and pair.client.state is State.AWAIT_WELCOME, reason
        assert "client certificate" in str(error) or "client" in error.detail


@pytest.mark.parametrize("by", ["serial", "fingerprint", "fingerprint-hex", "issuer", "predicate"])
def test_the_node_refuses_a_revoked_client(net: Net, by: str) -> None:
    pair = Pair(net, "admin-issued")
    cert, admin = pair.who.cert, net.clients["admin"].cert
    revoked = {
        "serial": {cert.serial_number},
        "fingerprint": {certificate_fingerprint(cert)},
        "fingerprint-hex": {certificate_fingerprint(cert).hex()},
        "issuer": {admin.serial_number},
        "predicate": lambda c: c.serial_number == cert.serial_number,
    }[by]
    refused(lambda: pair.run(client_revoked=revoked), "certificate", "revoked")


def forge_auth(pair: Pair, body: AuthBody | bytes) -> Auth:
    """A malicious client: seals whatever it likes under the real handshake key, skipping its own checks."""
    pair.client.receive_challenge(pair.challenge(), now=T)
    plaintext = body if isinstance(body, bytes) else encode(body)
    sealed = seal_message(pair.client._hs_c2s, C2S, plaintext, pair.client._hs_hash)
    return Auth(handshake_id=pair.client._handshake_id, sealed=sealed)


def receive(pair: Pair, auth: Auth) -> tuple[Welcome, Session]:
    return pair.node.receive_auth(auth, now=T, entropy=pair.entropy, tickets=pair.net.tickets)


def test_a_client_signing_a_different_transcript_is_refused(net: Net) -> None:
    pair = Pair(net, "p256")
    auth = forge_auth(pair, AuthBody(client_certificate=pair.who.certificate, intermediates=(),
                                     signature=pair.who.token.sign(b"keyswarm/v1 client signature\x00" + bytes(32))))
    refused(lambda: receive(pair, auth), "signature")


def test_a_client_presenting_someone_elses_certificate_is_refused(net: Net) -> None:
    pair = Pair(net, "ed25519")
    victim = net.clients["p256"]
    auth = forge_auth(pair, AuthBody(client_certificate=victim.certificate, intermediates=(), signature=b"\x00" * 64))
    refused(lambda: receive(pair, auth), "signature")


def test_a_token_signing_with_the_wrong_key_is_our_own_fault(net: Net) -> None:
    pair = Pair(net, "ed25519")
    pair.sign = net.clients["p256"].token.sign
    with pytest.raises(LocalHandshakeError, match="our token's signature"):
        pair.auth()
    assert pair.client.state is State.FAILED


def test_a_tampered_sealed_auth_is_refused(net: Net) -> None:
    pair = Pair(net)
    pair.hooks["Auth"] = lambda a: dataclasses.replace(a, sealed=a.sealed[:-1] + bytes([a.sealed[-1] ^ 1]))
    refused(pair.run, "sealed")


def test_an_authentic_but_malformed_auth_body_is_refused(net: Net) -> None:
    pair = Pair(net)
    refused(lambda: receive(pair, forge_auth(pair, b"\x93\x01\x02\x03")), "malformed")


def test_an_auth_replayed_into_another_handshake_does_not_open(net: Net) -> None:
    first = Pair(net, seed=10)
    auth = first.auth()
    second = Pair(net, seed=11)
    second.challenge()
    with pytest.raises(LocalHandshakeError, match="another handshake"):
        receive(second, auth)
    third = Pair(net, seed=12)
    third.challenge()
    replayed = dataclasses.replace(auth, handshake_id=third.node.handshake_id)
    refused(lambda: receive(third, replayed), "sealed")


# --- the client refuses the welcome -------------------------------------------------


def test_a_tampered_welcome_is_refused(net: Net) -> None:
    pair = Pair(net)
    pair.hooks["Welcome"] = lambda w: Welcome(sealed=bytes([w.sealed[0] ^ 1]) + w.sealed[1:])
    refused(pair.run, "sealed")
    assert pair.client.state is State.FAILED


def test_a_welcome_naming_another_node_is_refused(net: Net) -> None:
    impostor = dataclasses.replace(net.settings, node_name="n9")
    refused(Pair(net, settings=impostor).run, "identity")


# --- versions and malformed values --------------------------------------------------


def test_a_hello_without_a_common_version_is_unsupported_version(net: Net) -> None:
    pair = Pair(net)
    pair.hooks["Hello"] = lambda h: dataclasses.replace(h, versions=(2, 3))
    with pytest.raises(VersionMismatch) as info:
        pair.challenge()
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION and "speaks (1,)" in str(info.value)


def test_a_challenge_choosing_a_version_not_offered_is_refused(net: Net) -> None:
    pair = Pair(net)
    pair.hooks["Challenge"] = lambda c: dataclasses.replace(c, version=7)
    with pytest.raises(VersionMismatch):
        pair.auth()


@pytest.mark.parametrize(
    ("message", "change"),
    [
        ("Hello", {"client_ephemeral": bytes(32)}),  # a low-order point: an all-zero secret
        ("Hello", {"client_ephemeral": b"\x01" * 31}),
        ("Hello", {"client_nonce": b"\x01" * 33}),
        ("Hello", {"versions": tuple(range(1, 40))}),
        ("Hello", {"versions": (0,)}),
        ("Challenge", {"handshake_id": b"short"}),
        ("Challenge", {"node_nonce": b""}),
    ],
)
def test_malformed_values_are_refused_by_name(net: Net, message: str, change: dict[str, object]) -> None:
    pair = Pair(net)
    pair.hooks[message] = lambda m: dataclasses.replace(m, **change)
    refused(pair.auth, "malformed")


def test_a_node_signing_a_low_order_ephemeral_is_refused(net: Net) -> None:
    pair = Pair(net)

    def resigned(challenge: Challenge) -> Challenge:
        # A malicious (but certified) node: signs a challenge with a low-order ephemeral key.
        bad = dataclasses.replace(challenge, node_ephemeral=bytes(32))
        transcript = Transcript()
        mix_hello(transcript, pair.sent["Hello"])  # type: ignore[arg-type]
        return dataclasses.replace(bad, signature=net.subkey.sign(node_signed_data(mix_challenge(transcript, bad))))

    pair.hooks["Challenge"] = resigned
    refused(pair.auth, "malformed")


# --- the state machines -----------------------------------------------------------


def test_calls_out_of_order_are_local_errors(net: Net) -> None:
    pair = Pair(net)
    with pytest.raises(LocalHandshakeError, match="cannot auth in state start"):
        pair.client.auth(b"sig")
    with pytest.raises(LocalHandshakeError, match="cannot challenge in state start"):
        pair.node.challenge(b"x" * 64, serial=17)
    pair.hello()
    with pytest.raises(LocalHandshakeError, match="cannot hello in state await_challenge"):
        pair.client.hello(pair.entropy)


def test_a_failed_machine_refuses_everything(net: Net) -> None:
    pair = Pair(net)
    pair.hooks["Challenge"] = lambda c: dataclasses.replace(c, signature=b"\x00" * 64)
    refused(pair.auth, "signature")
    for call in (lambda: pair.client.auth(b""), lambda: pair.client.receive_welcome(Welcome(sealed=b""))):
        with pytest.raises(LocalHandshakeError, match="state failed"):
            call()


def test_a_sub_key_rotated_between_reading_and_signing_is_our_own_fault(net: Net) -> None:
    pair = Pair(net)
    with pytest.raises(LocalHandshakeError, match="rotated meanwhile"):
        pair.challenge(serial=net.subkey_cert.serial_number + 1)
    assert pair.node.state is State.FAILED


def test_a_short_entropy_read_is_an_assertion(net: Net) -> None:
    pair = Pair(net)
    with pytest.raises(AssertionError, match="entropy"):
        pair.client.hello(lambda n: b"\x00" * (n - 1))


# --- half-open handshakes -------------------------------------------------------------


def test_twenty_thousand_half_open_handshakes_from_one_client_stay_bounded(ed_net: Net) -> None:
    net = ed_net
    pending = PendingHandshakes(capacity=10_000, per_peer=8, ttl_s=30)
    creds, rng = net.creds(), random.Random(6)

    def half_open(peer: bytes, hello: Hello) -> Challenge:
        node = NodeHandshake(net.settings)
        to_sign = node.receive_hello(hello, credentials=creds, entropy=rng.randbytes)
        challenge = node.challenge(net.subkey.sign(to_sign), serial=creds.subkey_serial)
        pending.put(peer, node.handshake_id, node, now=0.0)
        return challenge

    honest = Pair(net, "p256", seed=99)
    honest_challenge = half_open(b"honest", honest.hello())
    # The attacker repeats one hello and never answers: the node still pays for each.
    flood = ClientHandshake(ClientCredentials(root_certificate=net.root, certificate=honest.who.certificate))
    hello = flood.hello(random.Random(5).randbytes)
    half_open(b"mallory", hello)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            half_open(b"mallory", hello)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(pending) == 1 + 8 and pending.evicted_per_peer == 20_001 - 8
    assert grown < 16 * 1024, f"{grown} bytes more held after 20,000 half-open handshakes"
    # The honest client, which started first, is still served.
    node = pending.take(honest_challenge.handshake_id, now=1.0)
    assert isinstance(node, NodeHandshake)
    honest.node = node
    to_sign = honest.client.receive_challenge(honest.to_client(honest_challenge), now=T)  # type: ignore[arg-type]
    welcome, session = node.receive_auth(honest.to_node(honest.client.auth(honest.who.token.sign(to_sign))),
                                         now=T, entropy=honest.entropy)  # type: ignore[arg-type]
    mine = honest.client.receive_welcome(honest.to_client(welcome))  # type: ignore[arg-type]
    assert session.open(mine.channel.seal(b"still served")) == (0, b"still served")
