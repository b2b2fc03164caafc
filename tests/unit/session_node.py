"""The sessions actor in the simulator with a real PKI and stand-ins for its neighbours (the sessions tests' harness).

A `Pki` is a network on soft tokens (root, nodes n1 and n2, clients of every
kind), built once per test module. Each simulated node runs the real gateway,
sessions and echo actors beside stand-ins: `FakeSubkeys` (one sub-key
certified by the node's soft token, answering `CurrentSubkey` and
`SubkeySign` as the real actor does; it can rotate or refuse), and
`Recorder`s for the `keys` and `admin` actors (they answer every request and
record who sent it). A `Client` plays a real client over raw frames: the
handshake with `ClientHandshake` and the client's soft token, then requests
sealed in its session (`Simulation.send_frame` / `inbox`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.actors.demo import EchoActor
from keyswarm.actors.gateway import Gateway
from keyswarm.actors.messages import EchoResult, Failure
from keyswarm.actors.runtime import Actor, ActorSpec, Context
from keyswarm.actors.session_messages import RequestLimits
from keyswarm.actors.sessions import SESSIONS, SessionsActor, SessionSettings
from keyswarm.actors.subkeys import SUBKEYS, CurrentSubkey, SubkeyInfo, SubkeySign, SubkeySignature
from keyswarm.crypto.certificates import client_certificate, node_certificate, root_certificate, subkey_certificate
from keyswarm.crypto.handshake import ClientCredentials, ClientHandshake, ClientSession, NodeSettings
from keyswarm.crypto.resumption import ClientResumption
from keyswarm.crypto.sealing import DomainKey
from keyswarm.crypto.tickets import TicketKeys
from keyswarm.errors import ErrorCode
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.policy import PolicyTable, fold_policy
from keyswarm.sim import Simulation
from keyswarm.sim.node import WALL_EPOCH_S
from keyswarm.storage.bodies import tag_of_body
from keyswarm.storage.events import GENESIS_PREV, Event
from keyswarm.transport import codec, frames

#: Certificates are issued this long before the simulation's wall clock at virtual time 0.
ISSUED = datetime.fromtimestamp(WALL_EPOCH_S - 600, timezone.utc)
NODES = ("n1", "n2")
DER = Encoding.DER


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(DER)


@dataclass
class ClientId:
    name: str
    token: SoftToken
    certificate: bytes
    intermediates: tuple[bytes, ...] = ()


@dataclass
class Pki:
    """A network on soft tokens: root, node certificates with a sub-key each, and clients."""

    root: x509.Certificate
    root_token: SoftToken
    nodes: dict[str, tuple[SoftToken, x509.Certificate]] = field(default_factory=dict)
    clients: dict[str, ClientId] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(5))

    def subkey(self, node: str, serial: int) -> tuple[Ed25519PrivateKey, bytes]:
        """A fresh sub-key of `node` and its certificate (DER), as the node's token would certify it."""
        token, cert = self.nodes[node]
        signing = Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        agreement = X25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        sub = subkey_certificate(token, cert, signing.public_key(), agreement.public_key(), node_name=node,
                                 serial=serial, now=ISSUED, lifetime=timedelta(days=2))
        return signing, der(sub)

    def client(self, name: str, directory: Path, *, admin: bool = False, issuer: str | None = None) -> ClientId:
        token = SoftToken.create(directory / f"{name}.key", algorithm="ed25519", entropy=self.rng.randbytes)
        by = self.clients[issuer] if issuer else None
        issuer_token = self.root_token if by is None else by.token
        issuer_cert = self.root if by is None else x509.load_der_x509_certificate(by.certificate)
        cert = client_certificate(issuer_token, issuer_cert, token.identity_public_key(), client_name=name,
                                  now=ISSUED, admin=admin, entropy=self.rng.randbytes)
        found = self.clients[name] = ClientId(name, token, der(cert), () if by is None else (by.certificate,))
        return found


def build_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(11)
    root_token = SoftToken.create(directory / "root.key", algorithm="ed25519", entropy=rng.randbytes)
    root = root_certificate(root_token, network_name="sessions", now=ISSUED, entropy=rng.randbytes)
    pki = Pki(root, root_token, rng=rng)
    for name in NODES:
        token = SoftToken.create(directory / f"{name}.key", algorithm="ed25519", entropy=rng.randbytes)
        cert = node_certificate(root_token, root, token.identity_public_key(), node_name=name, now=ISSUED,
                                entropy=rng.randbytes)
        pki.nodes[name] = (token, cert)
    for name in ("app1", "app2", "ops", "gone", "mallory"):
        pki.client(name, directory)
    pki.client("boss", directory, admin=True)  # an admin certificate from the root: the bootstrap admin
    pki.client("minion", directory, issuer="boss")  # issued by boss's admin certificate
    return pki


# --- policy events ------------------------------------------------------------------------

_SEQ = [0]


def event(body: object, *, origin: str = "n1", hlc: int | None = None) -> Event:
    _SEQ[0] += 1
    seq = _SEQ[0]
    return Event(partition=0, origin=origin, origin_seq=seq, hlc=seq * 10 if hlc is None else hlc,
                 type=tag_of_body(body), subject="", body=codec.encode(body), prev=GENESIS_PREV)


def policy(*bodies: object) -> PolicyTable:
    return fold_policy(event(body) for body in bodies)


# --- stand-ins --------------------------------------------------------------------------------


class FakeSubkeys(Actor):
    """The sub-keys actor's answers, for one node: `CurrentSubkey`, `SubkeySign` (local actors only)."""

    def __init__(self, keys: list[tuple[Ed25519PrivateKey, bytes, int]], state: dict):
        self.keys = keys  # (signing key, certificate DER, serial); the last is current
        self.state = state  # shared with the test: "ready" (bool), "rotate_after_info" (bool), "signed" (int)

    def on_message(self, ctx: Context, msg: object) -> None:
        if not self.state.get("ready", True):
            ctx.reply(Failure.of(ErrorCode.UNAVAILABLE, "this node has no valid sub-key: no sub-key certified yet"))
            return
        key, cert, serial = self.keys[-1] if self.state.get("current") is None else self.keys[self.state["current"]]
        if type(msg) is CurrentSubkey:
            ctx.reply(SubkeyInfo(certificate_der=cert, signing_public_key=b"", agreement_public_key=b"",
                                 not_after_s=WALL_EPOCH_S + 86_400, serial=serial))
            if self.state.pop("rotate_after_info", False):
                self.state["current"] = len(self.keys) - 1
        elif type(msg) is SubkeySign:
            self.state["signed"] = self.state.get("signed", 0) + 1
            ctx.reply(SubkeySignature(signature=key.sign(msg.data), serial=serial, request_id=msg.request_id))


class Recorder(Actor):
    """Stands in for the keys or admin actor: answers every request, remembers (sender, request)."""

    def __init__(self, seen: list, answer: Callable[[Context, object], object] | None = None):
        self.seen = seen
        self.answer = answer

    def on_message(self, ctx: Context, msg: object) -> None:
        self.seen.append((ctx.sender, msg))
        ctx.reply(self.answer(ctx, msg) if self.answer else EchoResult(payload=b"served", node=ctx.node))


@dataclass
class SessionNet:
    """A simulation of nodes running the sessions actor, and what its stand-ins saw."""

    sim: Simulation
    pki: Pki
    subkeys: dict[str, dict] = field(default_factory=dict)  # node -> FakeSubkeys state
    keys_seen: list = field(default_factory=list)
    admin_seen: list = field(default_factory=list)

    def actor(self, node: str = "n1") -> SessionsActor:
        return self.sim.node(node).runtime.actor(SESSIONS)  # type: ignore[return-value]

    def wall(self) -> float:
        return WALL_EPOCH_S + self.sim.now


def session_net(
    pki: Pki,
    seed: int,
    *,
    nodes: Iterable[str] = ("n1",),
    table: PolicyTable | None = None,
    domain_key: DomainKey | None = None,
    ttl_s: float = 3600.0,
    limits: RequestLimits | None = None,
    services: Callable[[str], dict] | None = None,
    policy_service: str | None = None,
    rotated: bool = False,
    **settings: object,
) -> SessionNet:
    """Nodes running gateway, sessions, echo, a fake sub-keys actor and recorders for keys and admin."""
    net: SessionNet = None  # type: ignore[assignment]
    shared = TicketKeys(domain_key) if domain_key is not None else None
    subkey_sets: dict[str, list] = {}
    for index, node in enumerate(nodes):
        first = pki.subkey(node, 100 + index)
        keys = [(*first, 100 + index)]
        if rotated:
            keys.append((*pki.subkey(node, 200 + index), 200 + index))
        subkey_sets[node] = keys

    def actors(node: str) -> list[ActorSpec]:
        _, cert = pki.nodes[node]
        session_settings = SessionSettings(
            node=NodeSettings(node_name=node, root_certificate=pki.root, session_ttl_s=ttl_s,
                              ticket_lifetime_s=ttl_s),
            node_certificate_der=der(cert),
            ticket_keys=shared,
            limits=limits or RequestLimits(),
            policy=None if policy_service else (table if table is not None else PolicyTable()),
            policy_service=policy_service,
            **settings,  # type: ignore[arg-type]
        )
        state = net.subkeys.setdefault(node, {"current": 0 if rotated else None})
        return [
            ActorSpec("gateway", Gateway),
            ActorSpec(SESSIONS, lambda: SessionsActor(session_settings)),
            ActorSpec(EchoActor.name, EchoActor),
            ActorSpec(SUBKEYS, lambda: FakeSubkeys(subkey_sets[node], state)),
            ActorSpec("keys", lambda: Recorder(net.keys_seen)),
            ActorSpec("admin", lambda: Recorder(net.admin_seen)),
        ]

    net = SessionNet(sim=None, pki=pki)  # type: ignore[arg-type]
    net.sim = Simulation(seed, list(nodes), actors=actors, services=services or (lambda node: {}))
    return net


# --- a client over raw frames -------------------------------------------------------------


class RequestFailed(Exception):
    def __init__(self, code: ErrorCode, message: str):
        self.code, self.message = code, message
        super().__init__(f"{code}: {message}")


class Client:
    """A client speaking raw frames to simulated nodes: handshake, resumption, sealed requests."""

    def __init__(self, net: SessionNet, name: str, *, identity: bytes | None = None, seed: int = 1):
        self.net = net
        self.who = net.pki.clients[name]
        self.identity = identity or name.encode()
        self.rng = random.Random(seed)
        self.session: ClientSession | None = None
        self.node = "n1"
        self.rid = 0
        # Odd seeds offer AES-256-GCM first, as the Python client does on this CPU; even seeds offer no
        # suites (an older client: ChaCha20-Poly1305), so the simulations exercise both.
        self.suites: tuple[int, ...] = (2, 1) if seed % 2 else ()

    def entropy(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    # raw frames
    def send(self, data: bytes, node: str | None = None) -> None:
        self.net.sim.send_frame(node or self.node, data, client=self.identity)

    def receive(self, count: int = 1, *, max_s: float = 5.0) -> list[bytes]:
        """The next `count` frames the node sends this client (in arrival order)."""
        inbox = self.net.sim.inbox(self.identity)
        assert self.net.sim.run_until(lambda: len(inbox) >= count, max_s=max_s), (
            f"{self.who.name}: {len(inbox)} of {count} frames within {max_s} s; {self.net.sim.replay_hint()}"
        )
        got, inbox[:count] = inbox[:count], []
        return got

    def plain(self, msg: object, node: str | None = None) -> object:
        """A plain request and its reply's value (RequestFailed for an error reply)."""
        self.rid += 1
        self.send(frames.encode_request(self.rid, msg), node)
        return value_of(frames.decode_reply(self.receive()[0]))

    # handshakes
    def handshake(self, node: str = "n1") -> ClientSession:
        self.node = node
        machine = ClientHandshake(ClientCredentials(root_certificate=self.net.pki.root,
                                                   certificate=self.who.certificate,
                                                   intermediates=self.who.intermediates), suites=self.suites)
        challenge = self.plain(machine.hello(self.entropy))
        to_sign = machine.receive_challenge(challenge, now=self.net.wall())  # type: ignore[arg-type]
        welcome = self.plain(machine.auth(self.who.token.sign(to_sign)))
        self.session = machine.receive_welcome(welcome)  # type: ignore[arg-type]
        return self.session

    def resume(self, node: str) -> ClientSession:
        assert self.session is not None
        machine = ClientResumption.from_session(self.session, suites=self.suites)
        self.node = node
        resumed = self.plain(machine.resume(self.entropy))
        self.session = machine.receive_resumed(resumed)  # type: ignore[arg-type]
        return self.session

    # in-session requests
    def seal(self, msg: object, *, rid: int | None = None) -> bytes:
        """The next in-session frame carrying request `msg` (or raw plaintext bytes)."""
        assert self.session is not None
        if rid is None:
            self.rid += 1
            rid = self.rid
        plaintext = msg if isinstance(msg, bytes) else frames.encode_request(rid, msg)
        return self.session.channel.seal(plaintext)

    def open(self, data: bytes) -> frames.Reply:
        """A frame from the node: sealed (opened with the session) or a plain error reply."""
        if frames.decode_frame(data).kind == frames.Kind.SESSION:
            _, plaintext = self.session.channel.open(data)  # type: ignore[union-attr]
            return frames.decode_reply(plaintext)
        return frames.decode_reply(data)

    def call(self, msg: object) -> object:
        """One sealed request and its sealed reply's value (RequestFailed for an error)."""
        self.send(self.seal(msg))
        return value_of(self.open(self.receive()[0]))


def refused(call: Callable[[], object], code: ErrorCode) -> RequestFailed:
    """`call()` fails with a `RequestFailed` of `code`; that failure."""
    with pytest.raises(RequestFailed) as info:
        call()
    assert info.value.code is code, str(info.value)
    return info.value


def value_of(reply: frames.Reply) -> object:
    if not reply.ok:
        raise RequestFailed(reply.error.code, reply.error.message)
    return reply.value
