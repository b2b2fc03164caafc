"""yubikit's own `YubiOtpSession` on the virtual YubiKey: HMAC-SHA1 challenge-response and slot programming."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest
from yubikit.core.otp import CommandRejectedError
from yubikit.core.smartcard import ApduError
from yubikit.yubiotp import SLOT, HmacSha1SlotConfiguration, YubiOtpSession

from keyswarm.hardware.virtual_otp import crc16
from keyswarm.hardware.virtual_profile import LatencyModel
from keyswarm.hardware.virtual_yubikey import VirtualYubiKey

KEY = bytes.fromhex("00112233445566778899aabbccddeeff01234567")


@pytest.fixture(params=("5.4.3", "5.7.2"))
def device(request: pytest.FixtureRequest) -> VirtualYubiKey:
    return VirtualYubiKey(request.param, serial=2718281, entropy=random.Random(3).randbytes, latency=LatencyModel.zero())


def expected(key: bytes, challenge: bytes) -> bytes:
    return hmac.new(key, challenge, hashlib.sha1).digest()


def test_hmac_sha1_matches_the_host_for_every_challenge_length_below_64(device: VirtualYubiKey) -> None:
    otp = YubiOtpSession(device)
    otp.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(KEY))
    rng = random.Random(11)
    for length in range(0, 64):
        challenge = rng.randbytes(length)
        assert otp.calculate_hmac_sha1(SLOT.TWO, challenge) == expected(KEY, challenge), f"length {length}"
    # Challenges ending in the bytes yubikit pads with (00 and 01) round-trip too.
    for challenge in (b"abc\x00", b"abc\x00\x00", b"\x01", b"\x00" * 63):
        assert otp.calculate_hmac_sha1(SLOT.TWO, challenge) == expected(KEY, challenge)


def test_a_64_byte_challenge_loses_its_trailing_run_under_lt64(device: VirtualYubiKey) -> None:
    otp = YubiOtpSession(device)
    otp.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(KEY))
    challenge = bytes(range(61)) + b"\x07\x07\x07"
    assert otp.calculate_hmac_sha1(SLOT.TWO, challenge) == expected(KEY, bytes(range(61)))
    otp.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(KEY).lt64(False))
    assert otp.calculate_hmac_sha1(SLOT.TWO, challenge) == expected(KEY, challenge)


def test_short_keys_are_zero_padded_like_hmac_does(device: VirtualYubiKey) -> None:
    otp = YubiOtpSession(device)
    otp.put_configuration(SLOT.ONE, HmacSha1SlotConfiguration(KEY[:16]))
    assert otp.calculate_hmac_sha1(SLOT.ONE, b"challenge") == expected(KEY[:16], b"challenge")


def test_programming_sequence_and_config_state(device: VirtualYubiKey) -> None:
    otp = YubiOtpSession(device)
    assert not otp.get_config_state().is_configured(SLOT.TWO)
    for _ in range(3):  # yubikit itself checks each write moves the sequence by exactly one
        otp.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(KEY))
    state = YubiOtpSession(device).get_config_state()
    assert state.is_configured(SLOT.TWO) and not state.is_touch_triggered(SLOT.TWO)
    assert not state.is_configured(SLOT.ONE)
    otp.delete_slot(SLOT.TWO)  # the last slot: the sequence drops to 0
    assert not YubiOtpSession(device).get_config_state().is_configured(SLOT.TWO)
    with pytest.raises(ApduError):
        otp.calculate_hmac_sha1(SLOT.TWO, b"x")


def test_access_code_protects_the_slot(device: VirtualYubiKey) -> None:
    otp = YubiOtpSession(device)
    code = b"secret"
    otp.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(KEY), acc_code=code)
    with pytest.raises(CommandRejectedError):
        otp.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(bytes(20)))
    assert otp.calculate_hmac_sha1(SLOT.TWO, b"c") == expected(KEY, b"c")
    otp.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(bytes(20)), cur_acc_code=code)
    assert otp.calculate_hmac_sha1(SLOT.TWO, b"c") == expected(bytes(20), b"c")


def test_swap_and_serial(device: VirtualYubiKey) -> None:
    otp = YubiOtpSession(device)
    assert otp.get_serial() == 2718281
    otp.put_configuration(SLOT.ONE, HmacSha1SlotConfiguration(KEY))
    otp.swap_slots()
    assert otp.calculate_hmac_sha1(SLOT.TWO, b"s") == expected(KEY, b"s")


def test_a_config_with_a_bad_crc_is_rejected_without_a_new_sequence(device: VirtualYubiKey) -> None:
    status = YubiOtpSession(device).get_config_state()  # selects OTP
    assert not status.is_configured(SLOT.TWO)
    config = bytearray(HmacSha1SlotConfiguration(KEY).get_config())
    assert crc16(bytes(config)) == 0xF0B8  # the residual the device checks
    config[0] ^= 0xFF
    data, sw = device.send_and_receive(bytes([0, 0x01, 0x03, 0, 58]) + bytes(config) + bytes(6))
    assert sw == 0x9000 and data[3] == 0  # status answered, sequence unchanged
