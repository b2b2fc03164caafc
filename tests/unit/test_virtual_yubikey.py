"""The virtual YubiKey's connection: framing, management applet, faults, overlap detector, latency, saved state.

yubikit sends extended APDUs over USB and short, chained ones over NFC, so
the yubikit-driven tests run on both transports; the raw-APDU tests pin the
framing rules down byte by byte.
"""

from __future__ import annotations

import dataclasses
import random
import stat
import threading

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from smartcard.Exceptions import CardConnectionException
from yubikit.core import TRANSPORT
from yubikit.core.smartcard import ApduError, SmartCardConnection
from yubikit.management import CAPABILITY, FORM_FACTOR, ManagementSession
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, SLOT, PivSession
from yubikit.yubiotp import SLOT as OTP_SLOT
from yubikit.yubiotp import HmacSha1SlotConfiguration, YubiOtpSession

from keyswarm.errors import ConfigError
from keyswarm.hardware.virtual_apdu import Work
from keyswarm.hardware.virtual_profile import LatencyModel, firmware_profile
from keyswarm.hardware.virtual_yubikey import VirtualStateError, VirtualYubiKey

SELECT_PIV = bytes.fromhex("00a4040005a000000308")
GET_VERSION = bytes.fromhex("00fd000000")


def make_device(firmware: str = "5.7.2", seed: int = 5, **kwargs: object) -> VirtualYubiKey:
    kwargs.setdefault("latency", LatencyModel.zero())
    return VirtualYubiKey(firmware, serial=16180339, entropy=random.Random(seed).randbytes, **kwargs)  # type: ignore[arg-type]


# --- yubikit on both transports --------------------------------------------


@pytest.mark.parametrize("firmware", ["5.4.3", "5.7.2"])
def test_management_session_reads_device_info(firmware: str) -> None:
    device = make_device(firmware)
    assert isinstance(device, SmartCardConnection) and device.transport == TRANSPORT.USB
    info = ManagementSession(device).read_device_info()
    assert info.serial == 16180339
    assert tuple(info.version) == firmware_profile(firmware).version
    assert info.form_factor == FORM_FACTOR.USB_A_KEYCHAIN
    usb = info.supported_capabilities[TRANSPORT.USB]
    assert CAPABILITY.PIV in usb and CAPABILITY.OTP in usb


@pytest.mark.parametrize("transport", [TRANSPORT.USB, TRANSPORT.NFC])
def test_large_objects_travel_chained_or_extended(transport: TRANSPORT) -> None:
    device = make_device(transport=transport)
    piv = PivSession(device)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    big = bytes(random.Random(1).randbytes(3000))  # > 255: chained / 61xx over NFC
    piv.put_object(0x5FC102, big)
    assert piv.get_object(0x5FC102) == big
    piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert len(piv.attest_key(SLOT.AUTHENTICATION).tbs_certificate_bytes) > 255


def test_oversized_object_is_no_space() -> None:
    piv = PivSession(make_device(transport=TRANSPORT.NFC))
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    with pytest.raises(ApduError) as refused:
        piv.put_object(0x5FC102, bytes(3053))
    assert refused.value.sw == 0x6A84


# --- raw framing -------------------------------------------------------------


@pytest.mark.parametrize(
    ("apdu", "sw"),
    [
        (b"", 0x6700),  # no header
        (b"\x00\xa4\x04", 0x6700),  # truncated header
        (bytes.fromhex("00a4040005a0000003"), 0x6700),  # Lc says 5, 4 follow
        (bytes.fromhex("00a4040003a000000308"), 0x6700),  # Lc says 3, 5 follow (+1 is not an Le)
        (bytes.fromhex("00a404000000"), 0x6700),  # extended marker with one length byte
        (bytes.fromhex("00a40400000000"), 0x6A82),  # case 2 extended: SELECT with no AID
        (bytes.fromhex("00a4040000000000"), 0x6700),  # extended Lc of zero
        (bytes(4) + b"\x00\x0f\xa0" + bytes(4000), 0x6700),  # past the 3062-byte maximum
        (bytes.fromhex("80a4040005a000000308"), 0x6E00),  # proprietary class
        (bytes.fromhex("84a4040005a000000308"), 0x6E00),  # secure messaging (SCP) is not emulated
        (bytes.fromhex("00fd0000"), 0x6D00),  # no applet selected yet
        (bytes.fromhex("00a4040005a000000999"), 0x6A82),  # unknown AID
        (bytes.fromhex("00a4000005a000000308"), 0x6A86),  # select by something other than AID
        (bytes.fromhex("00c0000000"), 0x6985),  # GET RESPONSE with nothing pending
    ],
)
def test_malformed_apdus_get_status_words(apdu: bytes, sw: int) -> None:
    assert make_device().send_and_receive(apdu) == (b"", sw)


@pytest.mark.parametrize(
    ("apdu", "sw"),
    [
        (bytes.fromhex("0042000000"), 0x6D00),  # unknown INS
        (bytes.fromhex("0087039b047c058000"), 0x6A80),  # TLV longer than the body
        (bytes.fromhex("0087031104" + "7c80" + "0000"), 0x6A80),  # indefinite length
        (bytes.fromhex("00870399047c028000"), 0x6A86),  # authenticate against no slot
        (bytes.fromhex("0020008003313233"), 0x6A80),  # PIN block not 8 bytes
        (bytes.fromhex("002000810831323334353637ff"), 0x6A88),  # VERIFY the PUK
        (bytes.fromhex("00cb3fff045c035fc1"), 0x6A80),  # object TLV cut short
        (bytes.fromhex("00cb0000055c035fc105"), 0x6A86),  # GET DATA with wrong P1/P2
        (bytes.fromhex("00cb3fff055c035fc105"), 0x6A82),  # no such object yet
        (bytes.fromhex("00f70000"), 0x6A88),  # metadata for an empty slot reference
        (bytes.fromhex("00f9800000"), 0x6A86),  # attest a reference that is no slot
        (bytes.fromhex("0047009a057c03800111"), 0x6982),  # generate without the management key
    ],
)
def test_malformed_piv_commands_get_status_words(apdu: bytes, sw: int) -> None:
    device = make_device()
    assert device.send_and_receive(SELECT_PIV)[1] == 0x9000
    assert device.send_and_receive(apdu)[1] == sw


def test_command_chaining_and_get_response_by_hand() -> None:
    device = make_device()
    device.send_and_receive(SELECT_PIV)
    assert device.send_and_receive(bytes.fromhex("0010000000"))[1] == 0x6D00  # the selected applet answers
    # A chained VERIFY: the body arrives in two links and is checked as one.
    assert device.send_and_receive(bytes.fromhex("102000800431323334")) == (b"", 0x9000)  # CLA 10: "1234"
    assert device.send_and_receive(bytes.fromhex("00200080043536ffff")) == (b"", 0x9000)  # CLA 00: "56" + pad
    assert PivSession(device).get_pin_attempts() == 3
    # A chain broken off by another command is refused, and forgotten.
    device.send_and_receive(SELECT_PIV)
    assert device.send_and_receive(bytes.fromhex("102000800431323334")) == (b"", 0x9000)
    assert device.send_and_receive(GET_VERSION) == (b"", 0x6883)
    assert device.send_and_receive(GET_VERSION)[1] == 0x9000
    # A chain longer than the device's buffer.
    link = bytes.fromhex("10db3fffff") + bytes(255)
    sws = [device.send_and_receive(link)[1] for _ in range(13)]
    assert sws[:12] == [0x9000] * 12 and sws[12] == 0x6700


def test_response_chaining_by_hand() -> None:
    device = make_device()
    piv = PivSession(device)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.put_object(0x5FC102, bytes(600))
    device.send_and_receive(SELECT_PIV)
    data, sw = device.send_and_receive(bytes.fromhex("00cb3fff055c035fc10200"))  # short, Le=256
    collected = data
    while sw >> 8 == 0x61:
        assert len(data) == 256
        data, sw = device.send_and_receive(bytes.fromhex("00c0000000"))
        collected += data
    assert sw == 0x9000 and collected == b"\x53\x82\x02\x58" + bytes(600)
    assert device.send_and_receive(bytes.fromhex("00c0000000"))[1] == 0x6985  # drained


def test_random_apdus_never_raise() -> None:
    """Seeded fuzz: mutated and random APDUs to every applet answer a status word."""
    device = make_device()
    piv = PivSession(device)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    seeds = [
        SELECT_PIV,
        bytes.fromhex("00a4040007a0000005272001"),
        bytes.fromhex("00a4040008a000000527471117"),
        bytes.fromhex("00200080083132333435363738"),
        bytes.fromhex("0047009a057c03800111"),
        bytes.fromhex("0087119a0a7c08820081040102030405"),
        bytes.fromhex("00db3fff0c5c035fc102530400010203"),
        bytes.fromhex("0001380040") + bytes(64),
        bytes.fromhex("001d000000"),
    ]
    rng = random.Random(20240601)
    for round_ in range(3000):
        apdu = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 4)):
            choice = rng.random()
            if choice < 0.5 and apdu:
                apdu[rng.randrange(len(apdu))] = rng.randrange(256)
            elif choice < 0.75:
                del apdu[rng.randrange(len(apdu) + 1) :]
            else:
                apdu += rng.randbytes(rng.randint(1, 8))
        if round_ % 10 == 0:
            apdu = bytearray(rng.randbytes(rng.randint(0, 40)))
        data, sw = device.send_and_receive(bytes(apdu))
        assert isinstance(data, bytes) and 0 <= sw <= 0xFFFF, f"round {round_}: {apdu.hex()}"
    PivSession(device).get_pin_attempts()  # still answering


# --- faults -----------------------------------------------------------------


def test_unplug_raises_the_pyscard_error_and_plug_starts_a_fresh_session() -> None:
    device = make_device()
    piv = PivSession(device)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.verify_pin("123456")
    device.unplug()
    with pytest.raises(CardConnectionException, match="Card was removed"):
        piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"m", hashes.SHA256())
    device.plug()
    with pytest.raises(ApduError):  # the old session died with the power: nothing is selected
        piv.get_pin_attempts()
    piv = PivSession(device)
    with pytest.raises(ApduError) as unverified:  # and the PIN must be verified again
        piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"m", hashes.SHA256())
    assert unverified.value.sw == 0x6982
    piv.verify_pin("123456")
    public.verify(piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"m", hashes.SHA256()), b"m", ec.ECDSA(hashes.SHA256()))


def test_unplug_during_a_signature() -> None:
    device: VirtualYubiKey

    def sleep(seconds: float) -> None:
        device.unplug()  # only the signature costs time in this model

    device = make_device(latency=dataclasses.replace(LatencyModel.zero(), sign_s=0.05), sleep=sleep)
    piv = PivSession(device)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.verify_pin("123456")
    with pytest.raises(CardConnectionException):
        piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"m", hashes.SHA256())
    assert not device.plugged


def test_close_then_connect() -> None:
    device = make_device()
    PivSession(device).verify_pin("123456")
    device.close()
    with pytest.raises(CardConnectionException, match="not connected"):
        device.send_and_receive(SELECT_PIV)
    assert PivSession(device.connect()).get_pin_attempts() == 3


def test_fail_next_answers_the_injected_word_then_recovers() -> None:
    device = make_device()
    piv = PivSession(device)
    device.fail_next(2, sw=0x6F00)
    for _ in range(2):
        with pytest.raises(ApduError) as failed:
            piv.verify_pin("123456")
        assert failed.value.sw == 0x6F00
    piv.verify_pin("123456")
    assert piv.get_pin_attempts() == 3  # failed APDUs were never executed
    with pytest.raises(ValueError):
        device.fail_next(0)


def test_overlapping_apdus_trip_the_detector() -> None:
    entered, release = threading.Event(), threading.Event()

    def blocking_sleep(seconds: float) -> None:
        entered.set()
        assert release.wait(10), "test never released the first APDU"

    device = make_device(latency=LatencyModel(), sleep=blocking_sleep)
    first = threading.Thread(target=device.send_and_receive, args=(SELECT_PIV,), name="hardware-1")
    first.start()
    try:
        assert entered.wait(10)
        with pytest.raises(AssertionError) as overlap:
            device.send_and_receive(GET_VERSION)
    finally:
        release.set()
        first.join(10)
    message = str(overlap.value)
    assert "hardware-1: 00a40400" in message and "MainThread: 00fd0000" in message
    assert device.overlaps == [("hardware-1: 00a40400", "MainThread: 00fd0000")]
    assert device.send_and_receive(GET_VERSION)[1] == 0x9000  # the device itself is fine


# --- latency -----------------------------------------------------------------


def test_latency_model_charges_each_operation_through_the_injected_sleep() -> None:
    slept: list[float] = []
    model = LatencyModel()
    device = make_device(latency=model, sleep=slept.append)
    piv = PivSession(device)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    slept.clear()
    piv.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.verify_pin("123456")
    piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"m", hashes.SHA256())
    assert slept == [model.apdu_s + model.keygen_s, model.apdu_s + model.pin_s, model.apdu_s + model.sign_s]
    assert device.busy_s == pytest.approx(sum(slept) + 2 * (model.apdu_s + model.mgmt_auth_s) + 3 * model.apdu_s)
    assert 0.05 <= model.sign_s <= 0.1 and model.apdu_s < 0.001 and model.keygen_s == pytest.approx(0.1)
    assert model.cost_s(Work.SIGN, touch=True) == pytest.approx(model.apdu_s + model.sign_s + model.touch_s)


def test_zero_latency_never_sleeps() -> None:
    device = make_device(sleep=lambda s: pytest.fail(f"slept {s}"))
    PivSession(device).verify_pin("123456")
    assert device.busy_s == 0


def test_latency_and_profile_validation() -> None:
    with pytest.raises(ConfigError, match="sign_s"):
        LatencyModel(sign_s=-1)
    with pytest.raises(ConfigError, match="firmware"):
        firmware_profile("4.3.5")
    with pytest.raises(ConfigError, match="serial"):
        VirtualYubiKey("5.7.2", serial=0)


# --- saved state --------------------------------------------------------------


@pytest.mark.parametrize("firmware", ["5.4.3", "5.7.2"])
def test_save_and_load_keep_keys_counters_and_otp(tmp_path, firmware: str) -> None:  # noqa: ANN001
    device = make_device(firmware)
    piv = PivSession(device)
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.generate_key(SLOT.RETIRED3, KEY_TYPE.ECCP256)
    with pytest.raises(Exception):  # noqa: B017 - one wrong PIN, to see the counter persist
        piv.verify_pin("000000")
    YubiOtpSession(device).put_configuration(OTP_SLOT.TWO, HmacSha1SlotConfiguration(bytes(range(20))))
    path = tmp_path / "token.json"
    device.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    restored = VirtualYubiKey.load(path, latency=LatencyModel.zero())
    assert (restored.serial, restored.firmware) == (device.serial, device.firmware)
    assert restored.test_root_certificate == device.test_root_certificate
    piv = PivSession(restored)
    assert piv.get_pin_attempts() == 2
    piv.verify_pin("123456")
    signature = piv.sign(SLOT.RETIRED3, KEY_TYPE.ECCP256, b"after restart", hashes.SHA256())
    public.verify(signature, b"after restart", ec.ECDSA(hashes.SHA256()))
    piv.attest_key(SLOT.RETIRED3).verify_directly_issued_by(piv.get_certificate(SLOT.ATTESTATION))
    assert YubiOtpSession(restored).calculate_hmac_sha1(OTP_SLOT.TWO, b"c") == YubiOtpSession(
        device
    ).calculate_hmac_sha1(OTP_SLOT.TWO, b"c")


def test_one_seed_one_device() -> None:
    assert make_device(seed=42).to_bytes() == make_device(seed=42).to_bytes()
    assert make_device(seed=42).to_bytes() != make_device(seed=43).to_bytes()


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"format": "other"}', b"\xff\xfe", None],
    ids=["empty", "truncated", "list", "foreign", "binary", "mangled-key"],
)
def test_unreadable_state_is_a_token_error(data: bytes | None) -> None:
    if data is None:  # a valid state whose key material has been damaged
        data = make_device().to_bytes().replace(b'"key_type": 17', b'"key_type": 99')
    with pytest.raises(VirtualStateError):
        VirtualYubiKey.from_bytes(data)


def test_missing_state_file_is_a_token_error(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(VirtualStateError, match="cannot read"):
        VirtualYubiKey.load(tmp_path / "absent.json")
