"""Envelope format (docs/protocol.md 11.6): round trips, tampering, hostile bytes."""

from __future__ import annotations

import contextlib
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from keyswarm.crypto import envelope
from keyswarm.errors import DecodeError, DecryptFailed

KEY = bytes(range(32))
WRAPPED = b"ks\x01\x01" + b"\x00\x03abc" + b"\x01v" + bytes(12) + bytes(48)  # any bytes: the node's business
NONCE = bytes(range(100, 112))


def sealed(plaintext: bytes = b"attack at dawn", context: bytes = b"") -> bytes:
    return bytes(envelope.seal(KEY, WRAPPED, plaintext, nonce=NONCE, context=context))


def test_the_layout_is_magic_length_wrapped_key_nonce_then_aes_gcm_with_the_header_as_aad() -> None:
    blob = sealed(b"hello", context=b"ctx")
    head = b"kse\x01" + len(WRAPPED).to_bytes(4, "big") + WRAPPED
    assert blob[: len(head)] == head and blob[len(head) : len(head) + 12] == NONCE
    assert blob[len(head) + 12 :] == AESGCM(KEY).encrypt(NONCE, b"hello", head + b"ctx")
    assert envelope.wrapped_key(blob) == WRAPPED
    assert envelope.open_(KEY, blob, context=b"ctx") == b"hello"


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 1 << 20])
def test_round_trips_of_every_size_and_from_any_buffer(size: int) -> None:
    data = os.urandom(size)
    blob = envelope.seal(KEY, WRAPPED, memoryview(data), nonce=NONCE)
    for form in (bytes(blob), blob, memoryview(blob)):
        assert envelope.open_(KEY, form) == data


def test_every_flipped_byte_fails_to_open_and_never_yields_plaintext() -> None:
    blob = sealed(b"x" * 40, context=b"c")
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises((DecodeError, DecryptFailed)):
            envelope.open_(KEY, bytes(bad), context=b"c")


def test_another_context_another_key_or_a_swapped_wrapped_key_do_not_open() -> None:
    blob = sealed(b"data", context=b"a")
    with pytest.raises(DecryptFailed, match="does not authenticate"):
        envelope.open_(KEY, blob, context=b"b")
    with pytest.raises(DecryptFailed):
        envelope.open_(bytes(32), blob, context=b"a")
    other = bytes(envelope.seal(KEY, WRAPPED[:-1] + b"\x01", b"data", nonce=NONCE, context=b"a"))
    swapped = other[: 8 + len(WRAPPED)] + blob[8 + len(WRAPPED) :]
    with pytest.raises(DecryptFailed):
        envelope.open_(KEY, swapped, context=b"a")
    with pytest.raises(DecryptFailed, match="data key is 16 bytes"):
        envelope.open_(bytes(16), blob, context=b"a")


@pytest.mark.parametrize("blob, match", [
    (b"", "not a keyswarm envelope"),
    (b"ks\x01\x01" + bytes(60), "not a keyswarm envelope"),
    (b"kse\x02" + bytes(60), "version 2 is not supported"),
    (b"kse\x01" + (0).to_bytes(4, "big") + bytes(60), "wrapped key length 0"),
    (b"kse\x01" + (1 << 31).to_bytes(4, "big") + bytes(60), "outside 1..65536"),
    (b"kse\x01" + (10).to_bytes(4, "big") + bytes(20), "shorter than its header"),
    (b"kse\x01" + (10).to_bytes(4, "big") + bytes(37), "shorter than its header"),
])
def test_malformed_envelopes_are_decode_errors_before_any_crypto(blob: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        envelope.wrapped_key(blob)
    with pytest.raises(DecodeError, match=match):
        envelope.open_(KEY, blob)


def test_wrong_types_and_bad_arguments_are_refused() -> None:
    with pytest.raises(DecodeError, match="not str"):
        envelope.wrapped_key("kse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="AES-256"):
        envelope.seal(bytes(16), WRAPPED, b"", nonce=NONCE)
    with pytest.raises(ValueError, match="nonce"):
        envelope.seal(KEY, WRAPPED, b"", nonce=bytes(8))
    with pytest.raises(ValueError, match="wrapped data key"):
        envelope.seal(KEY, b"", b"", nonce=NONCE)
    with pytest.raises(ValueError, match="wrapped data key"):
        envelope.seal(KEY, bytes(envelope.MAX_WRAPPED_BYTES + 1), b"", nonce=NONCE)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(DecodeError, DecryptFailed):  # the only two outcomes allowed besides a plaintext
        assert envelope.open_(KEY, data) is not None
