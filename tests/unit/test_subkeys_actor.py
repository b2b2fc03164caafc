"""The sub-keys actor in the simulator: minting, certification, rotation, retries, expiry.

The actor runs unchanged inside `keyswarm.sim.driver.Simulation`, beside a
fake hardware actor (`FakeHardware`) that certifies with a SoftToken through
`crypto.certificates.subkey_certificate`, and that a test can make fail,
fall silent, answer late or answer wrongly. One test swaps in the real
hardware actor and token service, to hold the message contract to what they
speak. Requests to the actor come from a `Probe` actor on the same node (or
on another node, for the local-only checks), which records every reply.

Virtual time starts at 0; a node's wall clock reads `WALL_EPOCH_S` plus it,
so certificate times in these tests are whole seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from keyswarm.actors.hardware import CertifySubkey, SubkeyCertified
from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Actor, ActorSpec, Address, Context
from keyswarm.actors.subkeys import (
    SUBKEY_CONDITION,
    CurrentSubkey,
    SubkeyAgree,
    SubkeyAgreement,
    SubkeyInfo,
    SubkeySettings,
    SubkeysActor,
    SubkeySign,
    SubkeySignature,
    SubkeyState,
    SubkeyStatus,
    SubkeyStatusResult,
    ValidSubkeys,
    ValidSubkeysResult,
    subkeys_spec,
)
from keyswarm.config import SubkeysConfig
from keyswarm.crypto.certificates import network_id, node_certificate, root_certificate, subkey_certificate
from keyswarm.crypto.chain_verify import verify_chain
from keyswarm.errors import ErrorCode
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.node.token_service import hardware_components
from keyswarm.sim.driver import Simulation
from keyswarm.sim.node import WALL_EPOCH_S

LIFETIME_S = 3600.0
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
_DER = serialization.Encoding.DER


def counter_entropy(label: bytes):
    """Deterministic entropy for the test tokens (distinct per label)."""
    import hashlib

    counter = 0

    def entropy(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            out += hashlib.sha256(label + counter.to_bytes(8, "big")).digest()
            counter += 1
        return out[:n]

    return entropy


@dataclass
class Pki:
    root_token: SoftToken
    root_cert: object
    node_token: SoftToken
    node_cert: object

    @property
    def node_der(self) -> bytes:
        return self.node_cert.public_bytes(_DER)

    @property
    def network(self) -> str:
        return network_id(self.root_cert)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory: Path = tmp_path_factory.mktemp("pki")
    issued = datetime.fromtimestamp(WALL_EPOCH_S, timezone.utc) - timedelta(days=1)
    root_token = SoftToken.create(directory / "root.key", entropy=counter_entropy(b"root"))
    root_cert = root_certificate(root_token, network_name="test", now=issued)
    node_token = SoftToken.create(directory / "n1.key", entropy=counter_entropy(b"n1"))
    node_cert = node_certificate(root_token, root_cert, node_token.identity_public_key(), node_name="n1", now=issued)
    return Pki(root_token, root_cert, node_token, node_cert)


# --- the fake hardware actor and the probe ----------------------------------------------


@dataclass
class Script:
    """What the fake hardware actor does; shared across its incarnations."""

    mode: str = "certify"  # certify | fail | silent | wrong_agreement
    latency_s: float = 0.0
    latencies: tuple[float, ...] = ()  # per request, in order; then latency_s
    requests: list[tuple[float, CertifySubkey]] = field(default_factory=list)


@dataclass(frozen=True)
class _Answer:
    to: Address
    msg: object


class FakeHardware(Actor):
    name = "hardware"

    def __init__(self, pki: Pki, script: Script):
        self.pki, self.script = pki, script

    def on_message(self, ctx: Context, msg: object) -> None:
        match msg:
            case CertifySubkey():
                self.script.requests.append((ctx.now(), msg))
                answer = self._answer(msg)
                if answer is None:
                    return
                index = len(self.script.requests) - 1
                latencies = self.script.latencies
                latency = latencies[index] if index < len(latencies) else self.script.latency_s
                if latency:
                    ctx.start_timer(latency, _Answer(ctx.sender, answer))
                else:
                    ctx.reply(answer)
            case _Answer(to=to, msg=answer):
                ctx.send(to, answer)

    def _answer(self, msg: CertifySubkey) -> object | None:
        mode = self.script.mode
        if mode == "silent":
            return None
        if mode == "fail":
            return Failure.of(ErrorCode.UNAVAILABLE, "the token was removed")
        agreement = X25519PublicKey.from_public_bytes(msg.agreement_public_key)
        if mode == "wrong_agreement":
            agreement = X25519PrivateKey.from_private_bytes(bytes(32)).public_key()
        cert = subkey_certificate(
            self.pki.node_token,
            self.pki.node_cert,
            Ed25519PublicKey.from_public_bytes(msg.signing_public_key),
            agreement,
            node_name="n1",
            serial=msg.serial,
            now=datetime.fromtimestamp(msg.now_s, timezone.utc),
            lifetime=timedelta(seconds=msg.lifetime_s),
        )
        return SubkeyCertified(certificate_der=cert.public_bytes(_DER))


@dataclass(frozen=True)
class Ask:
    """Test input to the probe: send `msg` to the sub-keys actor at `node`."""

    msg: object
    node: str = "n1"


class Probe(Actor):
    name = "probe"

    def __init__(self, replies: list[object]):
        self.replies = replies

    def on_message(self, ctx: Context, msg: object) -> None:
        if isinstance(msg, Ask):
            ctx.send(Address(msg.node, "subkeys"), msg.msg)
        else:
            self.replies.append(msg)


class Harness:
    """One simulated node `n1` (sub-keys, fake hardware, probe) and a peer `n2` (a probe)."""

    def __init__(self, pki: Pki, seed: int = 1, *, script: Script | None = None, real_hardware: bool = False, **settings):
        self.pki = pki
        self.script = script or Script()
        self.replies: dict[str, list[object]] = {"n1": [], "n2": []}
        self.settings = SubkeySettings(node_name="n1", node_certificate_der=pki.node_der, lifetime_s=LIFETIME_S, **settings)
        services = {}
        if real_hardware:
            spec, service = hardware_components(pki.node_token, probe_interval_s=None)
            services = {service.name: service}

        def actors(node: str) -> list[ActorSpec]:
            probe = ActorSpec(Probe.name, lambda: Probe(self.replies[node]))
            if node != "n1":
                return [probe]
            hardware = spec if real_hardware else ActorSpec(FakeHardware.name, lambda: FakeHardware(pki, self.script))
            return [hardware, subkeys_spec(self.settings), probe]

        self.sim = Simulation(seed, ["n1", "n2"], actors=actors, services=lambda node: services if node == "n1" else {})

    @property
    def actor(self) -> SubkeysActor:
        return self.sim.node("n1").runtime.actor("subkeys")

    @property
    def runtime(self):
        return self.sim.node("n1").runtime

    def wall(self) -> datetime:
        return datetime.fromtimestamp(self.sim.node("n1").wall_time(), timezone.utc)

    def ask(self, msg: object, *, via: str = "n1") -> object:
        """Send `msg` from `via`'s probe to n1's sub-keys actor; return the reply."""
        replies = self.replies[via]
        before = len(replies)
        node = self.sim.node(via)
        node.runtime.deliver("probe", None, Ask(msg))
        node.drain()  # a delivery from outside the event heap: run the node as an event would
        assert self.sim.run_until(lambda: len(replies) > before, max_s=5.0), f"no reply to {msg!r}"
        return replies[-1]

    def request_times(self) -> list[float]:
        return [round(t, 6) for t, _ in self.script.requests]

    def verify(self, der: bytes):
        return verify_chain(
            der, [self.pki.node_cert], self.pki.root_cert,
            now=self.wall(), network_id=self.pki.network, expected_kind="subkey",
        )


# --- minting and certification -----------------------------------------------------------


def test_a_subkey_is_minted_and_certified_on_start(pki: Pki) -> None:
    h = Harness(pki)
    h.sim.run_for(1.0)
    info = h.ask(CurrentSubkey())
    assert isinstance(info, SubkeyInfo)
    assert h.actor.state is SubkeyState.OK and h.runtime.status == "ok"
    verified = h.verify(info.certificate_der)
    assert verified.kind == "subkey" and verified.name == "n1"
    assert verified.public_key.public_bytes(*_RAW) == info.signing_public_key
    assert verified.agreement_public_key.public_bytes(*_RAW) == info.agreement_public_key
    assert verified.serial == info.serial
    assert info.not_after_s == WALL_EPOCH_S + LIFETIME_S
    request = h.script.requests[0][1]
    assert request.node_certificate_der == pki.node_der and request.lifetime_s == LIFETIME_S


def test_with_the_real_hardware_actor_and_token_service(pki: Pki) -> None:
    h = Harness(pki, real_hardware=True)
    h.sim.run_for(1.0)
    info = h.ask(CurrentSubkey())
    assert isinstance(info, SubkeyInfo), info
    assert h.verify(info.certificate_der).name == "n1"


def test_same_seed_same_keys_and_another_seed_other_keys(pki: Pki) -> None:
    def first_key(seed: int) -> tuple[bytes, bytes, int]:
        h = Harness(pki, seed)
        h.sim.run_for(1.0)
        info = h.ask(CurrentSubkey())
        return info.signing_public_key, info.agreement_public_key, info.serial

    assert first_key(7) == first_key(7)
    assert first_key(7) != first_key(8)


def test_settings_come_from_the_subkeys_config_and_refuse_a_foreign_certificate(pki: Pki) -> None:
    settings = SubkeySettings.from_config(
        SubkeysConfig(lifetime_s=600.0, rotate_at_fraction=0.25), node_name="n1", node_certificate_der=pki.node_der
    )
    assert (settings.lifetime_s, settings.rotate_at_fraction) == (600.0, 0.25)
    with pytest.raises(ValueError, match="not node 'n2'"):
        SubkeySettings(node_name="n2", node_certificate_der=pki.node_der)
    with pytest.raises(ValueError, match="not a keyswarm certificate|node certificate"):
        SubkeySettings(node_name="n1", node_certificate_der=b"not a certificate")
    with pytest.raises(ValueError, match="rotate_at_fraction"):
        SubkeySettings(node_name="n1", node_certificate_der=pki.node_der, rotate_at_fraction=1.0)


# --- rotation and the previous key ----------------------------------------------------------


def test_rotation_happens_exactly_at_half_life_in_virtual_time(pki: Pki) -> None:
    h = Harness(pki, script=Script(latency_s=0.25))
    h.sim.run_for(2 * LIFETIME_S + 1.0)
    assert h.request_times() == [0.0, 1800.0, 3600.0, 5400.0, 7200.0]
    assert h.actor.rotations == 5
    # Each request asks for a certificate starting at the moment it was sent.
    assert [r.now_s - WALL_EPOCH_S for _, r in h.script.requests] == [0.0, 1800.0, 3600.0, 5400.0, 7200.0]


def test_rotate_at_fraction_is_honoured(pki: Pki) -> None:
    h = Harness(pki, rotate_at_fraction=0.75)
    h.sim.run_for(LIFETIME_S + 1.0)
    assert h.request_times() == [0.0, 2700.0]


def test_previous_key_is_kept_until_it_expires_then_dropped(pki: Pki) -> None:
    h = Harness(pki)
    h.sim.run_for(1.0)
    first = h.ask(CurrentSubkey())
    h.sim.run_for(LIFETIME_S / 2)  # t = 1801: the successor is installed
    second = h.ask(CurrentSubkey())
    assert second.serial != first.serial
    valid = h.ask(ValidSubkeys())
    assert isinstance(valid, ValidSubkeysResult)
    assert valid.certificates == (second.certificate_der, first.certificate_der)
    for der in valid.certificates:
        h.verify(der)  # both still verify: peers accept recent signatures by either

    # The previous key still answers key agreement for peers that used it.
    peer = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    peer_public = peer.public_key().public_bytes(*_RAW)
    agreed = h.ask(SubkeyAgree(peer_public=peer_public, serial=first.serial))
    assert isinstance(agreed, SubkeyAgreement) and agreed.serial == first.serial
    assert agreed.shared_secret == peer.exchange(X25519PublicKey.from_public_bytes(first.agreement_public_key))

    h.script.mode = "fail"  # no third key: the drop of the first is not masked by a rotation
    h.sim.run_until(lambda: h.sim.now >= LIFETIME_S + 0.5, max_s=LIFETIME_S)
    assert h.ask(ValidSubkeys()).certificates == (second.certificate_der,)
    dropped = h.ask(SubkeyAgree(peer_public=peer_public, serial=first.serial))
    assert isinstance(dropped, Failure) and dropped.code is ErrorCode.BAD_REQUEST
    assert h.actor.state is SubkeyState.RENEWING and h.runtime.status == "ok"


# --- failures: retries, timeouts, expiry ------------------------------------------------------


def test_failed_certification_is_retried_with_doubling_backoff(pki: Pki) -> None:
    h = Harness(pki, script=Script(mode="fail"), retry_initial_s=1.0, retry_max_s=8.0)
    h.sim.run_for(20.0)
    assert h.request_times() == [0.0, 1.0, 3.0, 7.0, 15.0]  # delays 1, 2, 4, 8
    assert h.actor.state is SubkeyState.STARTING and h.actor.failures == 5
    refused = h.ask(CurrentSubkey())
    assert isinstance(refused, Failure) and refused.code is ErrorCode.UNAVAILABLE
    assert "no sub-key certified yet" in refused.message and "token was removed" in refused.message

    h.sim.run_for(8.0)  # the cap: 15 + 8 = 23
    assert h.request_times()[-1] == 23.0
    h.script.mode = "certify"
    h.sim.run_for(8.0)
    assert isinstance(h.ask(CurrentSubkey()), SubkeyInfo)
    status = h.ask(SubkeyStatus())
    assert isinstance(status, SubkeyStatusResult)
    assert status.state == "ok" and status.failures == 0 and status.last_error == ""


def test_no_answer_from_hardware_counts_as_a_failure(pki: Pki) -> None:
    h = Harness(pki, script=Script(mode="silent"), certify_timeout_s=5.0, retry_initial_s=1.0)
    h.sim.run_for(12.0)
    assert h.request_times() == [0.0, 6.0]  # timed out at 5, retried 1 s later
    assert "no answer from the hardware actor" in h.actor.last_error


def test_a_late_answer_to_an_abandoned_request_is_ignored(pki: Pki) -> None:
    h = Harness(pki, script=Script(latencies=(10.0, 4.5)), certify_timeout_s=5.0, retry_initial_s=1.0)
    h.sim.run_for(10.2)  # first timed out at 5, second sent at 6; the first's answer came at 10
    assert h.actor.current is None and h.actor.pending is not None
    assert h.actor.failures == 1  # the stale answer was neither installed nor counted as a failure
    h.sim.run_for(1.0)  # the second answer arrives at 10.5
    info = h.ask(CurrentSubkey())
    assert info.signing_public_key == h.script.requests[1][1].signing_public_key


def test_a_certificate_for_other_keys_is_refused_and_retried(pki: Pki) -> None:
    h = Harness(pki, script=Script(mode="wrong_agreement"), retry_initial_s=1.0)
    h.sim.run_for(1.5)
    assert h.actor.current is None and len(h.script.requests) == 2
    assert "agreement key" in h.actor.last_error


def test_current_key_expiring_without_replacement_is_reported(pki: Pki) -> None:
    h = Harness(pki, retry_initial_s=1.0, retry_max_s=60.0)
    h.sim.run_for(1.0)
    first = h.ask(CurrentSubkey())
    h.script.mode = "fail"
    h.sim.run_for(LIFETIME_S - 2.0)  # t = 3599: still valid, renewal failing since 1800
    assert h.actor.state is SubkeyState.RENEWING and h.runtime.status == "ok"
    assert h.ask(CurrentSubkey()).serial == first.serial
    signed = h.ask(SubkeySign(data=b"still fine"))
    assert isinstance(signed, SubkeySignature)

    h.sim.run_for(2.0)  # t = 3601: expired
    assert h.actor.state is SubkeyState.EXPIRED
    assert h.runtime.status == "degraded"
    assert [name for name, _ in h.runtime.conditions] == [SUBKEY_CONDITION]
    for request in (CurrentSubkey(), SubkeySign(data=b"x")):
        refused = h.ask(request)
        assert isinstance(refused, Failure) and refused.code is ErrorCode.UNAVAILABLE
        assert "expired" in refused.message
    assert h.ask(ValidSubkeys()).certificates == ()
    assert h.ask(SubkeyStatus()).state == "expired"

    h.script.mode = "certify"  # the token is back: the next retry restores the node
    h.sim.run_for(61.0)
    assert isinstance(h.ask(CurrentSubkey()), SubkeyInfo)
    assert h.actor.state is SubkeyState.OK and h.runtime.status == "ok" and h.runtime.conditions == ()


# --- serving -----------------------------------------------------------------------------------


def test_sign_and_agree_use_the_current_key(pki: Pki) -> None:
    h = Harness(pki)
    h.sim.run_for(1.0)
    info = h.ask(CurrentSubkey())
    signed = h.ask(SubkeySign(data=b"transcript"))
    assert isinstance(signed, SubkeySignature) and signed.serial == info.serial
    Ed25519PublicKey.from_public_bytes(info.signing_public_key).verify(signed.signature, b"transcript")

    peer = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    agreed = h.ask(SubkeyAgree(peer_public=peer.public_key().public_bytes(*_RAW)))
    assert agreed.serial == info.serial
    assert agreed.shared_secret == peer.exchange(X25519PublicKey.from_public_bytes(info.agreement_public_key))


@pytest.mark.parametrize("peer_public", [bytes(32), b"short"], ids=["low-order point", "wrong length"])
def test_agreement_with_a_bad_peer_key_is_a_bad_request(pki: Pki, peer_public: bytes) -> None:
    h = Harness(pki)
    h.sim.run_for(1.0)
    refused = h.ask(SubkeyAgree(peer_public=peer_public))
    assert isinstance(refused, Failure) and refused.code is ErrorCode.BAD_REQUEST


def test_a_peer_gets_certificates_but_never_a_signature_or_an_agreement(pki: Pki) -> None:
    h = Harness(pki)
    h.sim.run_for(1.0)
    assert isinstance(h.ask(CurrentSubkey(), via="n2"), SubkeyInfo)
    assert len(h.ask(ValidSubkeys(), via="n2").certificates) == 1
    for request in (SubkeySign(data=b"sign this for me"), SubkeyAgree(peer_public=bytes(range(32)))):
        refused = h.ask(request, via="n2")
        assert isinstance(refused, Failure) and refused.code is ErrorCode.FORBIDDEN


def test_no_message_and_no_repr_carries_a_private_key(pki: Pki) -> None:
    h = Harness(pki)
    h.sim.run_for(1.0)
    current = h.actor.current
    secrets = [
        current.signing.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
        current.agreement.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
    ]
    shown = repr(current) + "".join(h.sim.trace_lines())
    for reply in (h.ask(CurrentSubkey()), h.ask(ValidSubkeys()), h.ask(SubkeyStatus())):
        shown += repr(reply)
    for secret in secrets:
        assert secret.hex() not in shown and repr(secret) not in shown
