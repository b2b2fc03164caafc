"""yubikit's own `PivSession` on the virtual YubiKey, at firmware 5.4.3 and 5.7.2.

Every test drives the device only through yubikit's public API (the path
`YubiKeyToken` takes) and checks results with `cryptography` on the host.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from yubikit.core import InvalidPinError, NotSupportedError
from yubikit.core.smartcard import ApduError
from yubikit.piv import (
    DEFAULT_MANAGEMENT_KEY,
    KEY_TYPE,
    MANAGEMENT_KEY_TYPE,
    PIN_POLICY,
    SLOT,
    TOUCH_POLICY,
    PivSession,
)

from keyswarm.hardware.virtual_profile import LatencyModel
from keyswarm.hardware.virtual_yubikey import VirtualYubiKey

FIRMWARES = ("5.4.3", "5.7.2")
SERIAL = 31415926


def make_device(firmware: str, seed: int = 7) -> VirtualYubiKey:
    return VirtualYubiKey(firmware, serial=SERIAL, entropy=random.Random(seed).randbytes, latency=LatencyModel.zero())


@pytest.fixture(params=FIRMWARES)
def device(request: pytest.FixtureRequest) -> VirtualYubiKey:
    return make_device(request.param)


def admin_session(device: VirtualYubiKey) -> PivSession:
    piv = PivSession(device)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    return piv


def test_session_reports_version_serial_and_default_management_key(device: VirtualYubiKey) -> None:
    piv = PivSession(device)
    assert piv.version == device.firmware
    assert piv.get_serial() == SERIAL
    assert piv.get_pin_attempts() == 3
    expected = MANAGEMENT_KEY_TYPE.TDES if device.firmware < (5, 7, 0) else MANAGEMENT_KEY_TYPE.AES192
    metadata = piv.get_management_key_metadata()
    assert (piv.management_key_type, metadata.key_type, metadata.default_value) == (expected, expected, True)
    assert piv.get_pin_metadata().default_value and piv.get_puk_metadata().total_attempts == 3


def test_pin_counts_down_blocks_and_unblocks_with_puk(device: VirtualYubiKey) -> None:
    piv = PivSession(device)
    piv.verify_pin("123456")
    for left in (2, 1, 0):
        with pytest.raises(InvalidPinError) as wrong:
            piv.verify_pin("654321")
        assert wrong.value.attempts_remaining == left
    with pytest.raises(InvalidPinError) as blocked:  # 6983: even the right PIN is refused
        piv.verify_pin("123456")
    assert blocked.value.attempts_remaining == 0
    assert piv.get_pin_attempts() == 0
    with pytest.raises(InvalidPinError) as wrong_puk:
        piv.unblock_pin("87654321", "111111")
    assert wrong_puk.value.attempts_remaining == 2
    piv.unblock_pin("12345678", "111111")
    assert piv.get_pin_attempts() == 3 and piv.get_puk_metadata().attempts_remaining == 3
    piv.verify_pin("111111")


def test_right_pin_restores_the_counter(device: VirtualYubiKey) -> None:
    piv = PivSession(device)
    with pytest.raises(InvalidPinError):
        piv.verify_pin("000000")
    assert piv.get_pin_attempts() == 2
    piv.verify_pin("123456")
    assert piv.get_pin_attempts() == 3


def test_change_pin_and_puk(device: VirtualYubiKey) -> None:
    piv = PivSession(device)
    with pytest.raises(InvalidPinError) as wrong:
        piv.change_pin("999999", "24682468")
    assert wrong.value.attempts_remaining == 2
    piv.change_pin("123456", "24682468")
    assert not piv.get_pin_metadata().default_value
    with pytest.raises(InvalidPinError):
        piv.verify_pin("123456")
    piv.verify_pin("24682468")
    with pytest.raises(ApduError) as too_short:  # a PIN is 6-8 bytes
        piv.change_pin("24682468", "12345")
    assert too_short.value.sw == 0x6A80
    piv.change_puk("12345678", "abcdefgh")
    piv.unblock_pin("abcdefgh", "135790")
    piv.verify_pin("135790")


def test_management_key_authentication(device: VirtualYubiKey) -> None:
    piv = PivSession(device)
    with pytest.raises(ApduError) as wrong:
        piv.authenticate(bytes(24))
    assert wrong.value.sw == 0x6982
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    new_key = bytes(range(100, 132))
    piv.set_management_key(MANAGEMENT_KEY_TYPE.AES256, new_key)
    fresh = PivSession(device)
    assert fresh.management_key_type == MANAGEMENT_KEY_TYPE.AES256
    assert not fresh.get_management_key_metadata().default_value
    with pytest.raises(ApduError):
        fresh.authenticate(bytes(32))
    fresh.authenticate(new_key)
    fresh.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)


def test_writes_need_the_management_key(device: VirtualYubiKey) -> None:
    piv = PivSession(device)
    piv.verify_pin("123456")  # the PIN is not enough
    for attempt in (
        lambda: piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256),
        lambda: piv.put_object(0x5FC102, b"chuid"),
        lambda: piv.set_management_key(MANAGEMENT_KEY_TYPE.TDES, bytes(24)),
    ):
        with pytest.raises(ApduError) as refused:
            attempt()
        assert refused.value.sw == 0x6982


@pytest.mark.parametrize("key_type", [KEY_TYPE.ECCP256, KEY_TYPE.ECCP384])
def test_ec_sign_verifies_on_the_host(device: VirtualYubiKey, key_type: KEY_TYPE) -> None:
    piv = admin_session(device)
    public = piv.generate_key(SLOT.AUTHENTICATION, key_type)
    piv.verify_pin("123456")
    for message in (b"", b"keyswarm", bytes(1000)):
        signature = piv.sign(SLOT.AUTHENTICATION, key_type, message, hashes.SHA256())
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))


def test_ed25519_and_x25519_on_5_7() -> None:
    piv = admin_session(make_device("5.7.2"))
    signer = piv.generate_key(SLOT.SIGNATURE, KEY_TYPE.ED25519)
    agreer = piv.generate_key(SLOT.RETIRED1, KEY_TYPE.X25519)
    assert isinstance(signer, ed25519.Ed25519PublicKey) and isinstance(agreer, x25519.X25519PublicKey)
    piv.verify_pin("123456")
    signature = piv.sign(SLOT.SIGNATURE, KEY_TYPE.ED25519, b"the message itself", None)
    assert len(signature) == 64
    signer.verify(signature, b"the message itself")
    host = x25519.X25519PrivateKey.generate()
    secret = piv.calculate_secret(SLOT.RETIRED1, host.public_key())
    assert secret == host.exchange(agreer) and len(secret) == 32


def test_25519_is_refused_by_yubikit_before_any_apdu_on_5_4() -> None:
    device = make_device("5.4.3")
    piv = admin_session(device)
    sent = device.apdu_count
    for key_type in (KEY_TYPE.ED25519, KEY_TYPE.X25519):
        with pytest.raises(NotSupportedError):
            piv.generate_key(SLOT.SIGNATURE, key_type)
    assert device.apdu_count == sent


def test_p256_ecdh_answers_the_x_coordinate(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    public = piv.generate_key(SLOT.RETIRED20, KEY_TYPE.ECCP256)
    piv.verify_pin("123456")
    host = ec.generate_private_key(ec.SECP256R1())
    assert piv.calculate_secret(SLOT.RETIRED20, host.public_key()) == host.exchange(ec.ECDH(), public)


def test_key_use_with_the_wrong_algorithm_or_an_empty_slot_is_6a80(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.verify_pin("123456")
    for slot, key_type in ((SLOT.AUTHENTICATION, KEY_TYPE.ECCP384), (SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP256)):
        with pytest.raises(ApduError) as refused:
            piv.sign(slot, key_type, b"x", hashes.SHA256())
        assert refused.value.sw == 0x6A80


def self_signed(common_name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2035, 1, 1, tzinfo=dt.UTC))
        .sign(key, hashes.SHA256())
    )


def test_certificates_round_trip_in_every_slot(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    slots = [SLOT.AUTHENTICATION, SLOT.SIGNATURE, SLOT.KEY_MANAGEMENT, SLOT.CARD_AUTH, SLOT.RETIRED1, SLOT.RETIRED20]
    for slot in slots:
        with pytest.raises(ApduError) as missing:
            piv.get_certificate(slot)
        assert missing.value.sw == 0x6A82
        certificate = self_signed(f"slot {slot:02x}")
        piv.put_certificate(slot, certificate, compress=slot == SLOT.RETIRED1)
        assert piv.get_certificate(slot) == certificate
    piv.delete_certificate(SLOT.CARD_AUTH)
    with pytest.raises(ApduError):
        piv.get_certificate(SLOT.CARD_AUTH)


def test_attestation_chains_to_the_test_root(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    public = piv.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256, touch_policy=TOUCH_POLICY.NEVER)
    attestation = piv.attest_key(SLOT.SIGNATURE)
    intermediate = piv.get_certificate(SLOT.ATTESTATION)
    attestation.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(device.test_root_certificate)
    device.test_root_certificate.verify_directly_issued_by(device.test_root_certificate)
    assert attestation.public_key() == public
    assert "YubiKey PIV Attestation 9c" in attestation.subject.rfc4514_string()
    yubico = {ext.oid.dotted_string: ext.value.value for ext in attestation.extensions}
    assert yubico["1.3.6.1.4.1.41482.3.3"] == bytes(device.firmware)
    assert yubico["1.3.6.1.4.1.41482.3.7"] == b"\x02\x04" + SERIAL.to_bytes(4, "big")
    assert yubico["1.3.6.1.4.1.41482.3.8"] == bytes([PIN_POLICY.ALWAYS, TOUCH_POLICY.NEVER])
    assert yubico["1.3.6.1.4.1.41482.3.9"] == b"\x01"


def test_attestation_refuses_empty_slots_and_imported_keys(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    with pytest.raises(ApduError) as empty:
        piv.attest_key(SLOT.AUTHENTICATION)
    assert empty.value.sw == 0x6A88
    piv.put_key(SLOT.AUTHENTICATION, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ApduError) as imported:
        piv.attest_key(SLOT.AUTHENTICATION)
    assert imported.value.sw == 0x6A80


def test_slot_metadata(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    with pytest.raises(ApduError) as empty:
        piv.get_slot_metadata(SLOT.AUTHENTICATION)
    assert empty.value.sw == 0x6A88
    public = piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, PIN_POLICY.NEVER, TOUCH_POLICY.NEVER)
    metadata = piv.get_slot_metadata(SLOT.AUTHENTICATION)
    assert (metadata.key_type, metadata.pin_policy, metadata.generated) == (KEY_TYPE.ECCP256, PIN_POLICY.NEVER, True)
    assert metadata.public_key == public
    assert piv.get_slot_metadata(SLOT.ATTESTATION).generated is False
    defaults = {SLOT.AUTHENTICATION: PIN_POLICY.ONCE, SLOT.SIGNATURE: PIN_POLICY.ALWAYS, SLOT.CARD_AUTH: PIN_POLICY.NEVER}
    for slot, policy in defaults.items():
        piv.generate_key(slot, KEY_TYPE.ECCP256)
        assert piv.get_slot_metadata(slot).pin_policy == policy


def test_pin_policy_always_needs_a_verify_right_before_each_signature(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    piv.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256)  # 9C: DEFAULT means ALWAYS
    with pytest.raises(ApduError) as never_verified:
        piv.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"a", hashes.SHA256())
    assert never_verified.value.sw == 0x6982
    piv.verify_pin("123456")
    piv.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"a", hashes.SHA256())
    with pytest.raises(ApduError):  # the verify was spent
        piv.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"b", hashes.SHA256())
    piv.verify_pin("123456")
    piv.get_slot_metadata(SLOT.SIGNATURE)  # any command in between spends it too
    with pytest.raises(ApduError):
        piv.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"c", hashes.SHA256())


def test_pin_policy_once_lasts_for_the_session(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)  # 9A: DEFAULT means ONCE
    with pytest.raises(ApduError) as unverified:
        piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"a", hashes.SHA256())
    assert unverified.value.sw == 0x6982
    piv.verify_pin("123456")
    for message in (b"a", b"b", b"c"):
        piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, message, hashes.SHA256())
    again = PivSession(device)  # a new SELECT ends the session
    with pytest.raises(ApduError):
        again.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"d", hashes.SHA256())
    again.verify_pin("123456")
    device.close()
    device.connect()
    reconnected = PivSession(device)
    with pytest.raises(ApduError):
        reconnected.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"e", hashes.SHA256())


def test_pin_policy_never_signs_without_a_pin(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    public = piv.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256, pin_policy=PIN_POLICY.NEVER)
    signature = piv.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"m", hashes.SHA256())
    public.verify(signature, b"m", ec.ECDSA(hashes.SHA256()))


def spki(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_seed_gives_the_same_keys_and_signatures() -> None:
    outputs = []
    for _ in range(2):
        piv = admin_session(make_device("5.7.2", seed=99))
        public = piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
        piv.verify_pin("123456")
        outputs.append((spki(public), piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"m", hashes.SHA256())))
    assert outputs[0] == outputs[1]
    other = admin_session(make_device("5.7.2", seed=100)).generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert spki(other) != outputs[0][0]


def test_reset_after_blocking_pin_and_puk_keeps_attestation(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.reset()
    assert piv.get_pin_attempts() == 3
    with pytest.raises(ApduError):
        piv.get_slot_metadata(SLOT.AUTHENTICATION)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.attest_key(SLOT.AUTHENTICATION).verify_directly_issued_by(piv.get_certificate(SLOT.ATTESTATION))


def test_move_and_delete_key_exist_from_5_7(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    public = piv.generate_key(SLOT.RETIRED1, KEY_TYPE.ECCP256)
    if device.firmware < (5, 7, 0):
        with pytest.raises(NotSupportedError):
            piv.move_key(SLOT.RETIRED1, SLOT.RETIRED2)
        return
    piv.move_key(SLOT.RETIRED1, SLOT.RETIRED2)
    assert piv.get_slot_metadata(SLOT.RETIRED2).public_key == public
    piv.delete_key(SLOT.RETIRED2)
    with pytest.raises(ApduError):
        piv.get_slot_metadata(SLOT.RETIRED2)


def test_set_pin_attempts_resets_pin_and_puk(device: VirtualYubiKey) -> None:
    piv = admin_session(device)
    piv.verify_pin("123456")
    piv.set_pin_attempts(5, 4)
    assert (piv.get_pin_metadata().total_attempts, piv.get_puk_metadata().total_attempts) == (5, 4)
    piv.verify_pin("123456")

