"""The hardware actor's state machine (sans-IO, a fake token service), the token service on a soft token,
and the runtime's node conditions the actor uses to report `degraded`.

The actor runs in a real `NodeRuntime` on a fake `Environment`: submissions
are recorded and answered by the test (`complete`), time moves only when the
test moves it, so queue bounds, one-at-a-time and backoff timings are exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keyswarm.actors.hardware import (
    ABSENT,
    PIN_BLOCKED,
    PIN_REJECTED,
    READY,
    STARTING,
    TOKEN_CONDITION,
    Certify,
    CertifySubkey,
    HardwareActor,
    ReadInfo,
    Reconnect,
    SealSecret,
    SealToToken,
    SecretSealed,
    SecretUnsealed,
    Sign,
    SubkeyCertified,
    TokenSign,
    TokenSignature,
    TokenStatus,
    TokenStatusResult,
    Unseal,
    UnsealSecret,
)
from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Actor, ActorSpec, Address, ClientRef, Context, NodeRuntime
from keyswarm.crypto.certificates import BadCertificateRequest, network_id, node_certificate, root_certificate
from keyswarm.crypto.chain_verify import verify_chain
from keyswarm.crypto.sealing import UnsealFailed
from keyswarm.errors import AuthError, ErrorCode, PinBlocked, ServiceError, TokenAbsent
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.hardware.token import TokenInfo, check_signature
from keyswarm.node.token_service import BadTokenRequest, TokenService, hardware_components

INFO = TokenInfo(kind="virtual", serial=1234, firmware="5.7.2", identity_algorithm="ed25519", hardware_protected=False)


class FakeEnv:
    """Records submissions; time moves only when the test sets `now`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.submitted: list[tuple[str, int, object]] = []
        self.client: list[tuple[ClientRef, object]] = []
        self.remote: list[tuple[Address, Address, object]] = []

    def monotonic(self) -> float:
        return self.now

    def wall_time(self) -> float:
        return 1_750_000_000.0 + self.now

    def entropy(self, n: int) -> bytes:
        return bytes([7]) * n

    def send_remote(self, to: Address, sender: Address, msg: object) -> bool:
        self.remote.append((to, sender, msg))
        return True

    def reply_client(self, ref: ClientRef, msg: object) -> bool:
        self.client.append((ref, msg))
        return True

    def submit(self, service: str, ticket: int, request: object) -> bool:
        self.submitted.append((service, ticket, request))
        return True

    def wake_at(self, deadline: float) -> None:
        pass


@dataclass(frozen=True)
class Send:
    """Tell the requester actor to send `msg` to the hardware actor."""

    msg: object


class Requester(Actor):
    """A local actor that sends what it is told to and keeps every reply."""

    def __init__(self) -> None:
        self.replies: list[object] = []

    def on_message(self, ctx: Context, msg: object) -> None:
        if type(msg) is Send:
            ctx.send("hardware", msg.msg)
        else:
            self.replies.append(msg)


class Rig:
    def __init__(self, **options: object) -> None:
        options.setdefault("probe_interval_s", None)
        self.completed: set[int] = set()  # tickets the test has answered
        self.env = FakeEnv()
        specs = [ActorSpec("hardware", lambda: HardwareActor(**options)), ActorSpec("app", Requester)]
        self.runtime = NodeRuntime("n1", specs, self.env, rng=random.Random(1))
        self.runtime.start()
        self.run()

    @property
    def actor(self) -> HardwareActor:
        return self.runtime.actor("hardware")

    @property
    def replies(self) -> list[object]:
        return self.runtime.actor("app").replies

    def send(self, *messages: object) -> None:
        for msg in messages:
            self.runtime.deliver("app", None, Send(msg))
        self.run()

    def run(self) -> None:
        while self.runtime.run():
            pass

    def pending(self) -> list[tuple[int, object]]:
        """Submissions not yet completed, oldest first."""
        done = self.completed
        return [(ticket, request) for _, ticket, request in self.env.submitted if ticket not in done]

    def complete(self, value: object = None, error: Exception | None = None) -> object:
        (ticket, request), *rest = self.pending()
        assert not rest, f"more than one request in flight: {self.pending()}"
        self.completed.add(ticket)
        self.runtime.complete(ticket, value=value, error=error)
        self.run()
        return request

    def advance(self, seconds: float) -> None:
        self.env.now += seconds
        self.runtime.fire_timers()
        self.run()

    def status(self) -> TokenStatusResult:
        self.send(TokenStatus())
        return self.replies.pop()


def ready_rig(**options: object) -> Rig:
    rig = Rig(**options)
    assert type(rig.complete(INFO)) is ReadInfo
    return rig


# --- the state machine -------------------------------------------------------------


def test_starts_with_a_probe_and_queues_requests_until_it_answers() -> None:
    rig = Rig()
    assert rig.actor.state == STARTING
    rig.send(TokenSign(data=b"early"))
    assert len(rig.pending()) == 1  # only the probe: the request waits
    assert type(rig.complete(INFO)) is ReadInfo
    assert rig.actor.state == READY
    assert rig.complete(b"sig") == Sign(data=b"early")
    assert rig.replies == [TokenSignature(signature=b"sig")]
    status = rig.status()
    assert (status.state, status.kind, status.serial, status.firmware, status.queue_depth) == (
        READY, "virtual", 1234, "5.7.2", 0)


def test_one_request_at_a_time_in_arrival_order() -> None:
    rig = ready_rig()
    rig.send(*(TokenSign(data=bytes([i])) for i in range(5)))
    assert rig.status().queue_depth == 5
    for i in range(5):
        assert len(rig.pending()) == 1
        assert rig.complete(bytes([i]) * 2) == Sign(data=bytes([i]))
    assert rig.replies == [TokenSignature(signature=bytes([i]) * 2) for i in range(5)]


def test_every_request_kind_maps_to_its_service_request_and_reply() -> None:
    rig = ready_rig()
    rig.send(
        CertifySubkey(signing_public_key=b"s", agreement_public_key=b"a", node_certificate_der=b"n", serial=9),
        SealSecret(plaintext=b"p", context=b"c"),
        UnsealSecret(envelope=b"e", context=b"c"),
    )
    certify = rig.complete(b"der")
    assert certify == Certify(signing_public_key=b"s", agreement_public_key=b"a", node_certificate_der=b"n",
                              serial=9, lifetime_s=3600.0, now_s=1_750_000_000.0)
    seal = rig.complete(b"env")
    assert type(seal) is SealToToken and seal.method == "ecdh" and seal.entropy == bytes([7]) * 64
    assert rig.complete(b"p") == Unseal(envelope=b"e", context=b"c")
    assert rig.replies == [SubkeyCertified(certificate_der=b"der"), SecretSealed(envelope=b"env"),
                           SecretUnsealed(plaintext=b"p")]


def test_the_queue_bound_answers_busy() -> None:
    rig = ready_rig(max_queue=3)
    rig.send(*(TokenSign(data=bytes([i])) for i in range(5)))
    busy = [r for r in rig.replies if isinstance(r, Failure)]
    assert [f.code for f in busy] == [ErrorCode.BUSY, ErrorCode.BUSY] and all(f.retryable for f in busy)
    assert rig.actor.refused_busy == 2 and rig.status().queue_depth == 3
    for _ in range(3):
        rig.complete(b"sig")
    assert rig.replies.count(TokenSignature(signature=b"sig")) == 3


def test_only_local_actors_reach_the_token() -> None:
    rig = ready_rig()
    client = ClientRef("n1", b"c", 1)
    rig.runtime.deliver("hardware", client, TokenSign(data=b"x"))
    rig.runtime.deliver("hardware", Address("n2", "subkeys"), TokenSign(data=b"x"))
    rig.run()
    assert rig.env.client[0][1].code is ErrorCode.FORBIDDEN
    assert rig.env.remote[0][2].code is ErrorCode.FORBIDDEN
    assert rig.pending() == []


def test_token_absent_degrades_fails_fast_and_reconnects_with_backoff() -> None:
    rig = ready_rig(reconnect_initial_s=0.5, reconnect_max_s=4.0)
    rig.send(TokenSign(data=b"a"), TokenSign(data=b"b"))
    rig.complete(error=TokenAbsent("card removed"))
    first, second = rig.replies
    assert first.code is second.code is ErrorCode.UNAVAILABLE and first.retryable and second.retryable
    assert rig.runtime.status == "degraded"
    assert rig.runtime.conditions[0][0] == TOKEN_CONDITION and "card removed" in rig.runtime.conditions[0][1]
    rig.send(TokenSign(data=b"c"))  # fails fast, never queued
    assert rig.replies[-1].code is ErrorCode.UNAVAILABLE and rig.pending() == []
    assert rig.status().state == ABSENT
    # Attempts at 0.5, then 1, 2, 4, 4 s after each failure.
    for delay in (0.5, 1.0, 2.0, 4.0, 4.0):
        rig.advance(delay - 0.01)
        assert rig.pending() == [], f"reconnect before {delay} s"
        rig.advance(0.01)
        assert rig.complete(error=TokenAbsent("still out")) == Reconnect()
    rig.advance(4.0)
    assert rig.complete(INFO) == Reconnect()
    assert rig.runtime.status == "ok" and rig.runtime.conditions == () and rig.actor.state == READY
    rig.send(TokenSign(data=b"d"))
    assert rig.complete(b"sig") == Sign(data=b"d")


@pytest.mark.parametrize(
    ("error", "state"),
    [(PinBlocked("PIN blocked; unblock it with the PUK"), PIN_BLOCKED), (AuthError("wrong PIN: 2 tries left"), PIN_REJECTED)],
)
def test_pin_failures_stop_everything_without_retrying(error: Exception, state: str) -> None:
    rig = ready_rig()
    rig.send(TokenSign(data=b"a"), TokenSign(data=b"b"))
    rig.complete(error=error)
    assert all(r.code is ErrorCode.UNAVAILABLE and not r.retryable and str(error) in r.message for r in rig.replies)
    assert len(rig.replies) == 2 and rig.runtime.status == "degraded" and rig.actor.state == state
    rig.send(TokenSign(data=b"c"))
    assert rig.replies[-1].message == str(error)
    rig.advance(3600.0)
    assert rig.pending() == [], "a PIN failure must never be retried"
    assert rig.status().state == state


def test_other_errors_reach_the_requester_and_the_actor_goes_on() -> None:
    rig = ready_rig()
    rig.send(UnsealSecret(envelope=b"x", context=b"c"), TokenSign(data=b"y"), TokenSign(data=b"z"))
    rig.complete(error=UnsealFailed("tampered"))
    rig.complete(error=ServiceError("bug: secret detail"))
    rig.complete(b"sig")
    unseal, internal, ok = rig.replies
    assert unseal.code is ErrorCode.DECRYPT_FAILED and "tampered" in unseal.message
    assert internal.code is ErrorCode.INTERNAL and "secret detail" not in internal.message
    assert ok == TokenSignature(signature=b"sig") and rig.runtime.status == "ok"


def test_an_idle_probe_notices_a_pulled_token() -> None:
    rig = ready_rig(probe_interval_s=10.0)
    rig.advance(9.9)
    assert rig.pending() == []
    rig.advance(0.1)
    assert rig.complete(INFO) == ReadInfo()
    rig.advance(10.0)
    rig.complete(error=TokenAbsent("gone"))
    assert rig.runtime.status == "degraded" and rig.actor.state == ABSENT


def test_a_probe_failing_at_start_with_the_token_absent_degrades_at_once() -> None:
    rig = Rig(reconnect_initial_s=0.25)
    rig.complete(error=TokenAbsent("no device"))
    assert rig.actor.state == ABSENT and rig.runtime.status == "degraded"
    rig.advance(0.25)
    assert rig.complete(INFO) == Reconnect()
    assert rig.runtime.status == "ok"


def test_the_factory_builds_the_actor_and_the_service(tmp_path) -> None:
    token = SoftToken.create(tmp_path / "t.key", entropy=random.Random(2).randbytes)
    spec, service = hardware_components(token, max_queue=5)
    assert spec.name == "hardware" and service.name == "token"
    assert spec.factory().max_queue == 5 and service.token is token


# --- runtime conditions --------------------------------------------------------------


def test_conditions_degrade_the_node_until_cleared() -> None:
    rig = ready_rig()
    runtime = rig.runtime
    runtime.set_condition("a", degraded=True, detail="first")
    runtime.set_condition("b", degraded=True)
    runtime.set_condition("a", degraded=True, detail="again")
    assert runtime.status == "degraded" and runtime.conditions == (("a", "again"), ("b", ""))
    runtime.set_condition("a", degraded=False)
    runtime.set_condition("zzz", degraded=False)  # clearing an unset condition is a no-op
    assert runtime.conditions == (("b", ""),) and runtime.status == "degraded"
    runtime.set_condition("b", degraded=False)
    assert runtime.status == "ok"
    with pytest.raises(ValueError):
        runtime.set_condition("", degraded=True)


# --- the token service on a soft token ---------------------------------------------


@pytest.fixture
def soft_network(tmp_path):
    root_token = SoftToken.create(tmp_path / "root.key", entropy=random.Random(3).randbytes)
    node_token = SoftToken.create(tmp_path / "node.key", entropy=random.Random(4).randbytes)
    now = datetime(2025, 6, 1, tzinfo=timezone.utc)
    root = root_certificate(root_token, network_name="lab", now=now)
    node = node_certificate(root_token, root, node_token.identity_public_key(), node_name="n1", now=now)
    return root, node, node_token, now


def _raw(key: object) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_service_certifies_a_subkey_that_verifies(soft_network) -> None:
    root, node, node_token, now = soft_network
    service = TokenService(node_token)
    signing, agreement = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    der = service.handle(Certify(
        signing_public_key=_raw(signing.public_key()), agreement_public_key=_raw(agreement.public_key()),
        node_certificate_der=node.public_bytes(Encoding.DER), serial=42, lifetime_s=600.0, now_s=now.timestamp(),
    ))
    identity = verify_chain(der, [node], root, now=now, network_id=network_id(root), expected_kind="subkey")
    assert identity.name == "n1" and identity.serial == 42
    assert x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp() == now.timestamp() + 600


@pytest.mark.parametrize(
    "request_",
    [
        Certify(signing_public_key=b"short", agreement_public_key=bytes(32), node_certificate_der=b"x", serial=1,
                lifetime_s=600.0, now_s=0.0),
        Certify(signing_public_key=bytes(32), agreement_public_key=bytes(32), node_certificate_der=b"x", serial=1,
                lifetime_s=10.0, now_s=0.0),
    ],
)
def test_service_refuses_malformed_certify_requests(soft_network, request_: Certify) -> None:
    with pytest.raises(BadCertificateRequest):
        TokenService(soft_network[2]).handle(request_)


def test_service_signs_seals_and_unseals(soft_network) -> None:
    token = soft_network[2]
    service = TokenService(token)
    assert check_signature(token.identity_public_key(), service.handle(Sign(data=b"m")), b"m")
    for method in ("ecdh", "hmac"):
        seal = SealToToken(plaintext=b"secret", context=b"c", method=method, entropy=bytes(range(64)))
        envelope = service.handle(seal)
        assert envelope == service.handle(seal), "the same entropy seals the same bytes (the simulator needs it)"
        assert service.handle(Unseal(envelope=envelope, context=b"c")) == b"secret"
    with pytest.raises(UnsealFailed):
        service.handle(Unseal(envelope=b"junk", context=b"c"))
    with pytest.raises(BadTokenRequest):
        service.handle(SealToToken(plaintext=b"s", context=b"c", method="rot13", entropy=bytes(64)))
    with pytest.raises(BadTokenRequest):
        service.handle(Sign(data=bytes(1 << 20)))
    with pytest.raises(ServiceError):
        service.handle("what")
    assert service.handle(ReadInfo()).kind == "soft"


def test_service_reconnect_reopens_a_token_that_cannot_reconnect_itself(soft_network, tmp_path) -> None:
    token = soft_network[2]
    service = TokenService(token, reopen=lambda: SoftToken.open(tmp_path / "node.key"))
    assert service.handle(Reconnect()).kind == "soft"
    assert service.token is not token
    service.close()


def test_a_service_without_a_token_yet_is_absent_until_reopen_works(tmp_path) -> None:
    path = tmp_path / "late.key"
    service = TokenService(None, reopen=lambda: SoftToken.open(path))
    with pytest.raises(TokenAbsent):
        service.handle(ReadInfo())
    with pytest.raises(TokenAbsent):
        service.handle(Reconnect())  # the file is not there yet
    SoftToken.create(path, entropy=random.Random(5).randbytes).close()
    assert service.handle(Reconnect()).kind == "soft"
    assert service.handle(ReadInfo()).kind == "soft"
    with pytest.raises(ValueError):
        TokenService(None)
