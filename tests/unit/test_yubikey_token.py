"""`YubiKeyToken` on the `VirtualYubiKey` at firmware 5.4.3 and 5.7.2, and token specs.

`YubiKeyTokenSuite` is the whole token path (generate, sign, certificates,
a root / node / sub-key chain, sealing, HMAC-SHA1, the PIN rules). It runs
here on a virtual device per firmware, and `tests/hardware/test_real_yubikey.py`
runs the very same class against a real YubiKey. Tests that need fault
injection (unplug, fail next) or the APDU log are virtual-only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding
from yubikit.core.smartcard import SmartCardConnection
from yubikit.piv import PIN_POLICY, SLOT, PivSession

from keyswarm.crypto.certificates import network_id, node_certificate, root_certificate, subkey_certificate
from keyswarm.crypto.chain_verify import verify_chain
from keyswarm.crypto.sealing import seal_to_token, unseal_with_token
from keyswarm.errors import ConfigError, PinBlocked, TokenAbsent, TokenError
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.hardware.specs import TokenSpec, open_token, parse_token_spec
from keyswarm.hardware.token import BadPeerKey, check_signature
from keyswarm.hardware.virtual_yubikey import LatencyModel, VirtualYubiKey
from keyswarm.hardware.yubikey_token import (
    MissingPin,
    PinSource,
    PinTryRefused,
    WrongPin,
    WrongPuk,
    YubiKeyToken,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
#: X25519 point of order 8 (RFC 7748 section 5 test input): the shared secret is all zero.
LOW_ORDER_X25519 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


@dataclass
class Rig:
    """One device under test: how to open a token on it, its PIN and PUK."""

    open: Callable[..., YubiKeyToken]
    connect: Callable[[], SmartCardConnection]  # a raw connection, for checks behind the token's back
    firmware: tuple[int, int, int]
    pin: str = "123456"
    puk: str = "12345678"
    device: VirtualYubiKey | None = None  # None for a real YubiKey
    opened: list[YubiKeyToken] = field(default_factory=list)

    def token(self, **kwargs: object) -> YubiKeyToken:
        kwargs.setdefault("pin", self.pin)
        token = self.open(**kwargs)
        self.opened.append(token)
        return token

    @property
    def ed25519(self) -> bool:
        return self.firmware >= (5, 7, 0)

    def needs_virtual(self) -> VirtualYubiKey:
        if self.device is None:
            pytest.skip("needs the virtual YubiKey's fault injection")
        return self.device


class YubiKeyTokenSuite:
    """The YubiKeyToken path; subclasses provide a `rig` fixture."""

    @pytest.fixture
    def token(self, rig: Rig) -> YubiKeyToken:
        token = rig.token()
        token.generate()
        return token

    def test_info_comes_from_the_device(self, rig: Rig, token: YubiKeyToken) -> None:
        info = token.info()
        assert info.serial == token.serial and info.serial
        assert info.firmware == "%d.%d.%d" % rig.firmware
        assert info.identity_algorithm == ("ed25519" if rig.ed25519 else "p256")
        assert info.sealing_algorithm == ("x25519" if rig.ed25519 else "p256")

    def test_generate_uses_the_firmware_algorithm_and_pin_policies(self, rig: Rig, token: YubiKeyToken) -> None:
        identity, sealing = token.identity_public_key(), token.sealing_public_key()
        if rig.ed25519:
            assert isinstance(identity, Ed25519PublicKey) and isinstance(sealing, X25519PublicKey)
        else:
            assert isinstance(identity, ec.EllipticCurvePublicKey) and isinstance(sealing, ec.EllipticCurvePublicKey)
        token.close()
        piv = PivSession(rig.connect())
        assert piv.get_slot_metadata(SLOT.SIGNATURE).pin_policy == PIN_POLICY.ALWAYS
        assert piv.get_slot_metadata(SLOT.RETIRED1).pin_policy == PIN_POLICY.ONCE
        assert piv.get_slot_metadata(SLOT.SIGNATURE).generated

    def test_ed25519_below_5_7_is_refused(self, rig: Rig) -> None:
        token = rig.token()
        if rig.ed25519:
            token.generate(algorithm="p256")  # P-256 stays available on 5.7
            assert token.info().identity_algorithm == "p256"
        else:
            with pytest.raises(TokenError, match="no Ed25519"):
                token.generate(algorithm="ed25519")

    def test_signatures_verify_one_after_another(self, token: YubiKeyToken) -> None:
        for message in (b"first", b"second", b"x" * 1000):
            assert check_signature(token.identity_public_key(), token.sign(message), message)

    def test_certificates_are_written_and_read(self, token: YubiKeyToken) -> None:
        assert token.read_certificate("identity") is None and token.read_certificate("sealing") is None
        root = root_certificate(token, network_name="lab", now=NOW)
        der = root.public_bytes(Encoding.DER)
        token.write_certificate("identity", der)
        assert token.read_certificate("identity") == der
        with pytest.raises(TokenError, match="not for the key"):
            token.write_certificate("sealing", der)
        with pytest.raises(TokenError):
            token.write_certificate("identity", b"not a certificate")
        token.generate()  # new keys: the old certificate no longer applies
        assert token.read_certificate("identity") is None

    def test_root_node_and_subkey_chain_through_the_token(self, token: YubiKeyToken, tmp_path) -> None:
        # The YubiKey as the root of a network that enrols a soft node ...
        root = root_certificate(token, network_name="lab", now=NOW)
        soft = SoftToken.create(tmp_path / "node.key", entropy=random.Random(1).randbytes)
        node = node_certificate(token, root, soft.identity_public_key(), node_name="n1", now=NOW)
        verify_chain(node, [], root, now=NOW + timedelta(minutes=5), network_id=network_id(root), expected_kind="node")
        # ... and as a node of a soft root, certifying its own sub-key.
        soft_root = root_certificate(soft, network_name="lab", now=NOW)
        yk_node = node_certificate(soft, soft_root, token.identity_public_key(), node_name="n2", now=NOW)
        signing, agreement = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
        sub = subkey_certificate(
            token, yk_node, signing.public_key(), agreement.public_key(), node_name="n2", serial=7, now=NOW
        )
        identity = verify_chain(
            sub, [yk_node], soft_root, now=NOW + timedelta(minutes=5), network_id=network_id(soft_root),
            expected_kind="subkey",
        )
        assert identity.name == "n2" and identity.serial == 7

    def test_seal_and_unseal_with_ecdh_and_hmac(self, token: YubiKeyToken) -> None:
        envelope = seal_to_token(token, b"domain key", context=b"domain-key/at-rest")
        assert unseal_with_token(token, envelope, context=b"domain-key/at-rest") == b"domain key"
        token.configure_hmac(overwrite=True)
        envelope = seal_to_token(token, b"other", context=b"c", method="hmac")
        assert unseal_with_token(token, envelope, context=b"c") == b"other"
        # Back on PIV after OTP: a new PIV session, the PIN verified again.
        assert check_signature(token.identity_public_key(), token.sign(b"after otp"), b"after otp")

    def test_hmac_sha1_is_deterministic_and_bounded(self, token: YubiKeyToken) -> None:
        token.configure_hmac(bytes(range(20)), overwrite=True)
        for challenge in (b"a", bytes(32), b"\xff" * 63):
            assert token.hmac_sha1(challenge) == hmac.new(bytes(range(20)), challenge, hashlib.sha1).digest()
        with pytest.raises(TokenError, match="1..63"):
            token.hmac_sha1(bytes(64))
        with pytest.raises(TokenError, match="already configured"):
            token.configure_hmac()

    def test_bad_peer_keys_are_bad_peer_keys(self, rig: Rig, token: YubiKeyToken) -> None:
        other = ec.generate_private_key(ec.SECP384R1()).public_key()
        with pytest.raises(BadPeerKey):
            token.key_agreement(other)
        if rig.ed25519:
            with pytest.raises(BadPeerKey):
                token.key_agreement(X25519PublicKey.from_public_bytes(LOW_ORDER_X25519))
        else:
            with pytest.raises(BadPeerKey):
                token.key_agreement(X25519PrivateKey.generate().public_key())
        # The token still works after refusing.
        assert len(token.key_agreement(_ephemeral_for(token.sealing_public_key()))) == 32

    def test_wrong_pin_reports_tries_and_is_never_retried(self, rig: Rig, token: YubiKeyToken) -> None:
        wrong = rig.token(pin="999999")
        with pytest.raises(WrongPin) as first:
            wrong.sign(b"x")
        assert first.value.tries_left == 2 and "2 tries left" in str(first.value)
        with pytest.raises(WrongPin):
            wrong.sign(b"y")  # latched: the device is not asked again
        assert token.pin_attempts() == 2
        token.sign(b"right pin")  # a right PIN resets the counter
        assert token.pin_attempts() == 3

    def test_the_last_try_is_never_burnt_unless_allowed(self, rig: Rig, token: YubiKeyToken) -> None:
        for _ in range(2):
            with pytest.raises(WrongPin):
                rig.token(pin="999999").sign(b"x")
        assert token.pin_attempts() == 1
        with pytest.raises(PinTryRefused) as refused:
            rig.token(pin="999999").sign(b"x")
        assert refused.value.tries_left == 1 and token.pin_attempts() == 1
        with pytest.raises(PinTryRefused):
            rig.token().sign(b"x")  # even the right PIN: nobody may gamble the last try by default
        assert check_signature(token.identity_public_key(), rig.token(allow_last_pin_try=True).sign(b"ok"), b"ok")
        assert token.pin_attempts() == 3

    def test_lockout_is_pin_blocked_and_the_puk_unblocks(self, rig: Rig, token: YubiKeyToken) -> None:
        for _ in range(2):
            with pytest.raises(WrongPin):
                rig.token(pin="999999").sign(b"x")
        with pytest.raises(PinBlocked, match="unblock-pin"):
            rig.token(pin="999999", allow_last_pin_try=True).sign(b"x")
        with pytest.raises(PinBlocked, match="PUK"):
            rig.token().sign(b"x")  # the right PIN cannot help now
        fixer = rig.token(pin="999999")
        with pytest.raises(WrongPuk) as wrong_puk:
            fixer.unblock_pin("00000000", rig.pin)
        assert wrong_puk.value.tries_left == 2
        fixer.unblock_pin(rig.puk, rig.pin)
        assert check_signature(token.identity_public_key(), fixer.sign(b"back"), b"back")
        assert rig.token().pin_attempts() == 3

    def test_a_wrong_management_key_is_a_token_error(self, rig: Rig) -> None:
        token = rig.token(management_key=bytes(24))
        with pytest.raises(TokenError, match="management key"):
            token.generate()

    def test_the_pin_is_in_no_repr_and_no_log(self, rig: Rig, token: YubiKeyToken, caplog) -> None:
        caplog.set_level(1)  # everything, yubikit's APDU traffic level included
        token.sign(b"logged?")
        texts = [repr(token), repr(PinSource(rig.pin)), repr(PinSource(rig.pin).get())]
        texts += [record.getMessage() for record in caplog.records]
        pin_hex = rig.pin.encode().hex()
        assert not any(rig.pin in text or pin_hex in text for text in texts), texts


def _ephemeral_for(public: object) -> object:
    if isinstance(public, X25519PublicKey):
        return X25519PrivateKey.generate().public_key()
    return ec.generate_private_key(ec.SECP256R1()).public_key()


# --- on the virtual YubiKey -------------------------------------------------------


def virtual_rig(firmware: str, **kwargs: object) -> Rig:
    kwargs.setdefault("latency", LatencyModel.zero())
    device = VirtualYubiKey(firmware, serial=31415926, entropy=random.Random(firmware).randbytes, **kwargs)

    def open_token(**options: object) -> YubiKeyToken:
        return YubiKeyToken(device.connect(), kind="virtual", connect=device.connect, **options)  # type: ignore[arg-type]

    return Rig(open=open_token, connect=device.connect, firmware=device.profile.version, device=device)


@pytest.fixture(params=["5.4.3", "5.7.2"])
def rig(request: pytest.FixtureRequest) -> Rig:
    return virtual_rig(request.param)


class TestVirtualYubiKey(YubiKeyTokenSuite):
    """The suite on the emulator, once per firmware (the `rig` fixture above)."""


@pytest.mark.parametrize("firmware", ["5.4.3", "5.7.2"])
def test_unplug_during_a_signature_is_token_absent_until_reconnected(firmware: str) -> None:
    armed = [False]

    def sleep(seconds: float) -> None:
        # Called while the device works on an APDU: pull the key out mid-signature.
        if armed[0] and seconds >= LatencyModel().sign_s:
            armed[0] = False
            device.unplug()

    rig = virtual_rig(firmware, latency=LatencyModel(), sleep=sleep)
    device = rig.device
    token = rig.token()
    token.generate()
    armed[0] = True
    with pytest.raises(TokenAbsent, match="removed"):
        token.sign(b"x")
    assert not device.plugged
    with pytest.raises(TokenAbsent, match="disconnected"):
        token.info()  # dead connection: no APDU until reconnected
    with pytest.raises(TokenAbsent):
        token.reconnect()  # still out
    device.plug()
    token.reconnect()
    assert check_signature(token.identity_public_key(), token.sign(b"back"), b"back")


def test_a_failing_apdu_is_a_token_error_and_the_token_recovers() -> None:
    rig = virtual_rig("5.7.2")
    token = rig.token()
    token.generate()
    rig.device.fail_next(sw=0x6F00)
    with pytest.raises(TokenError, match="6f00"):
        token.sign(b"x")
    assert check_signature(token.identity_public_key(), token.sign(b"x"), b"x")


def test_pin_ALWAYS_verifies_before_every_signature_and_ONCE_once_per_session() -> None:
    rig = virtual_rig("5.7.2")
    token = rig.token()
    token.generate()
    seen: list[bytes] = []
    send = rig.device.send_and_receive
    rig.device.send_and_receive = lambda apdu: (seen.append(bytes(apdu[:2])), send(apdu))[1]  # type: ignore[method-assign]
    for _ in range(3):
        token.sign(b"x")
    assert seen.count(b"\x00\x20") == 3  # VERIFY before each 9c signature
    seen.clear()
    fresh = rig.token()  # a new PIV session: nothing verified yet
    for _ in range(3):
        fresh.key_agreement(X25519PrivateKey.generate().public_key())
    assert seen.count(b"\x00\x20") == 1  # slot 82 is PIN ONCE: verified once this session


def test_a_token_over_a_closed_token_is_a_token_error() -> None:
    rig = virtual_rig("5.7.2")
    token = rig.token()
    token.close()
    token.close()
    with pytest.raises(TokenError, match="closed"):
        token.info()


# --- the PIN source ------------------------------------------------------------------


def test_pin_source_order_config_then_environment_then_prompt() -> None:
    assert PinSource("111111", environ={"KEYSWARM_PIN": "222222"}).get().reveal() == "111111"
    assert PinSource(environ={"KEYSWARM_PIN": "222222"}).get().reveal() == "222222"
    asked = []
    source = PinSource(environ={}, prompt=lambda text: asked.append(text) or "333333", interactive=True)
    assert source.get("PIN? ").reveal() == "333333" and source.get().reveal() == "333333"
    assert asked == ["PIN? "]  # asked once, kept


def test_pin_source_never_prompts_without_a_terminal() -> None:
    def never(_: str) -> str:
        raise AssertionError("prompted without a terminal")

    with pytest.raises(MissingPin, match="KEYSWARM_PIN"):
        PinSource(environ={}, prompt=never, interactive=False).get()


def test_pin_of_the_wrong_length_never_reaches_the_device() -> None:
    rig = virtual_rig("5.7.2")
    rig.token().generate()
    with pytest.raises(MissingPin, match="6 to 8"):
        rig.token(pin="123").sign(b"x")
    assert rig.token().pin_attempts() == 3


# --- token specs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("soft:/k/node.key", TokenSpec(scheme="soft", path="/k/node.key")),
        ("virtual:/v/a.vyk", TokenSpec(scheme="virtual", path="/v/a.vyk")),
        (
            "virtual:/v/a.vyk?fw=5.4.3&serial=12345678&latency=zero",
            TokenSpec(scheme="virtual", path="/v/a.vyk", firmware="5.4.3", serial=12345678, latency="zero"),
        ),
        ("yubikey:12345678", TokenSpec(scheme="yubikey", serial=12345678)),
        ("yubikey:", TokenSpec(scheme="yubikey")),
    ],
)
def test_token_specs_parse_and_print_back(text: str, spec: TokenSpec) -> None:
    assert parse_token_spec(text) == spec
    assert parse_token_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    ["", "node.key", "pkcs11:x", "soft:", "virtual:?fw=5.7.2", "virtual:/a?colour=red", "virtual:/a?fw=1&fw=2",
     "virtual:/a?latency=slow", "yubikey:abc", "yubikey:-1", "virtual:/a?serial=0"],
)
def test_bad_token_specs_are_config_errors_naming_the_spec(text: str) -> None:
    with pytest.raises(ConfigError, match="token spec"):
        parse_token_spec(text)


def test_virtual_spec_creates_saves_and_reopens_the_device(tmp_path) -> None:
    path = tmp_path / "root.vyk"
    spec = f"virtual:{path}?fw=5.4.3&serial=27182818&latency=zero"
    with pytest.raises(TokenAbsent, match="no virtual YubiKey"):
        open_token(spec, pin="123456")
    token = open_token(spec, pin="123456", create=True)
    token.generate()
    root = root_certificate(token, network_name="lab", now=NOW)
    token.write_certificate("identity", root.public_bytes(Encoding.DER))
    token.close()
    with pytest.raises(WrongPin):
        open_token(spec, pin="999999").sign(b"x")  # PIN counters are saved too
    again = open_token(f"virtual:{path}", pin="123456")
    assert again.info().serial == 27182818 and again.info().firmware == "5.4.3"
    assert x509.load_der_x509_certificate(again.read_certificate("identity")) == root
    assert again.pin_attempts() == 2
    with pytest.raises(TokenError, match="firmware 5.4.3, not 5.7.2"):
        open_token(f"virtual:{path}?fw=5.7.2", pin="123456")


def test_soft_spec_opens_a_soft_token(tmp_path) -> None:
    token = open_token(f"soft:{tmp_path / 'n.key'}", create=True)
    assert token.info().kind == "soft"
    assert open_token(f"soft:{tmp_path / 'n.key'}").identity_public_key() == token.identity_public_key()


def test_apdu_traffic_loggers_are_held_above_traffic_level() -> None:
    rig = virtual_rig("5.7.2")
    rig.token()
    for name in ("ykman.pcsc", "yubikit.core.smartcard"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.DEBUG


# --- real devices through ykman's listing (faked: no PC/SC here) ----------------------


@dataclass
class FakeInfo:
    serial: int | None
    version: tuple[int, int, int]


class FakeDevice:
    """What ykman's listing hands back, opening a connection to a virtual YubiKey."""

    def __init__(self, device: VirtualYubiKey):
        self.device = device

    def open_connection(self, connection_type: type) -> SmartCardConnection:
        assert connection_type is SmartCardConnection
        return self.device.connect()


@pytest.fixture
def connected(monkeypatch: pytest.MonkeyPatch) -> list:
    import ykman.device

    listed: list = []
    monkeypatch.setattr(ykman.device, "list_all_devices", lambda types: list(listed))
    return listed


def test_open_by_serial_picks_that_device(connected: list) -> None:
    from keyswarm.hardware.specs import list_yubikeys

    for serial in (22222222, 11111111):
        device = VirtualYubiKey("5.7.2", serial=serial, latency=LatencyModel.zero())
        connected.append((FakeDevice(device), FakeInfo(serial, (5, 7, 2))))
    assert [(d.serial, d.firmware, d.spec) for d in list_yubikeys()] == [
        (11111111, "5.7.2", "yubikey:11111111"), (22222222, "5.7.2", "yubikey:22222222")]
    token = open_token("yubikey:11111111", pin="123456")
    assert token.info().serial == 11111111 and token.info().kind == "yubikey" and token.info().hardware_protected
    with pytest.raises(TokenAbsent, match="33333333 is not connected"):
        open_token("yubikey:33333333")
    with pytest.raises(TokenAbsent, match="exactly one"):
        open_token("yubikey:")
    # Reconnecting goes through the listing again and checks it is the same key.
    token.generate()
    connected[1][0].device.unplug()
    with pytest.raises(TokenAbsent):
        token.sign(b"x")
    connected[1][0].device.plug()
    token.reconnect()
    assert check_signature(token.identity_public_key(), token.sign(b"x"), b"x")


def test_no_pcsc_is_told_apart_from_no_key(connected: list, monkeypatch: pytest.MonkeyPatch) -> None:
    import smartcard.System

    def no_service() -> list:
        raise RuntimeError("Failed to establish context: Service not available.")

    monkeypatch.setattr(smartcard.System, "readers", no_service)
    with pytest.raises(TokenError, match="pcscd"):
        open_token("yubikey:12345678")
    monkeypatch.setattr(smartcard.System, "readers", lambda: [])
    with pytest.raises(TokenAbsent, match="not connected"):
        open_token("yubikey:12345678")
