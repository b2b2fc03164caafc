"""The ciphertext format: round trips, what is bound, strict parsing, the text form, and the doc vectors."""

from __future__ import annotations

import base64
import random
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyswarm.crypto import ciphertext as ct
from keyswarm.crypto import named_keys
from keyswarm.crypto.ciphertext import Ciphertext, ReadyKey
from keyswarm.crypto.named_keys import AEAD_ALGORITHMS, KeyRequestError, WrongKeyType
from keyswarm.errors import DecodeError, DecryptFailed, ErrorCode

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def entropy(seed: int = 1):
    return random.Random(seed).randbytes


def ready(algorithm: str = "aes256-gcm", name: str = "app1/db", vid: bytes = b"v1", seed: int = 1) -> ReadyKey:
    material = named_keys.generate_material(algorithm, entropy(seed))
    return ReadyKey(name, vid, named_keys.load_key(algorithm, material))


def sealed(key: ReadyKey | None = None, plaintext: bytes = b"secret payload", context: bytes = b"") -> bytes:
    return ct.encrypt(key or ready(), plaintext, entropy=entropy(99), context=context)


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", AEAD_ALGORITHMS)
@pytest.mark.parametrize("plaintext", [b"", b"x", b"a" * 1000])
@pytest.mark.parametrize("context", [b"", b"tenant=7"])
def test_round_trip(algorithm: str, plaintext: bytes, context: bytes) -> None:
    key = ready(algorithm)
    blob = ct.encrypt(key, plaintext, entropy=entropy(), context=context)
    assert ct.decrypt(blob, key, context=context) == plaintext
    assert ct.decrypt(ct.parse(blob), key, context=context) == plaintext
    assert ct.decrypt(bytearray(blob), key, context=context) == plaintext
    assert len(blob) == len(key.header) + 12 + len(plaintext) + 16


@pytest.mark.parametrize("algorithm", AEAD_ALGORITHMS)
@pytest.mark.parametrize("size", [0, 100, 5000, 1 << 20])
def test_bulk_encrypt_writes_the_same_bytes_in_place(algorithm: str, size: int) -> None:
    key = ready(algorithm)
    plaintext = random.Random(size).randbytes(size)
    bulk = ct.encrypt_bulk(key, plaintext, entropy=entropy(7), context=b"c")
    assert type(bulk) is bytearray
    assert bulk == ct.encrypt(key, plaintext, entropy=entropy(7), context=b"c")
    assert ct.decrypt(bulk, key, context=b"c") == plaintext
    assert ct.decrypt(memoryview(bulk), key, context=b"c") == plaintext
    parsed = ct.parse(bytes(bulk))
    assert type(parsed.sealed) is (memoryview if size >= 4096 else bytes)


@PROPERTY
@given(plaintext=st.binary(max_size=300), context=st.binary(max_size=40),
       name=st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= 256),
       vid=st.binary(min_size=1, max_size=64))
def test_round_trip_for_any_name_version_and_context(plaintext: bytes, context: bytes, name: str, vid: bytes) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates cannot be a key name
    key = ready(name=name, vid=vid)
    blob = ct.encrypt(key, plaintext, entropy=entropy(), context=context)
    parsed = ct.parse(blob)
    assert (parsed.name, parsed.version_id, parsed.algorithm) == (name, vid, "aes256-gcm")
    assert ct.decrypt(parsed, key, context=context) == plaintext


def test_parse_reads_the_header() -> None:
    key = ready("chacha20-poly1305", name="app1/é", vid=b"\x01\x02")
    blob = ct.encrypt(key, b"hi", entropy=lambda n: b"N" * n)
    parsed = ct.parse(blob)
    assert parsed == Ciphertext(algorithm="chacha20-poly1305", name="app1/é", version_id=b"\x01\x02",
                                header=key.header, nonce=b"N" * 12, sealed=blob[len(key.header) + 12:])
    assert key.header == b"ks\x01\x02\x00\x07app1/\xc3\xa9\x02\x01\x02"


def test_nonces_come_from_the_callers_entropy() -> None:
    key = ready()
    assert sealed(key) == sealed(key), "same entropy, same bytes"
    assert ct.encrypt(key, b"p", entropy=entropy(1)) != ct.encrypt(key, b"p", entropy=entropy(2))
    with pytest.raises(AssertionError, match="entropy source returned 4 bytes"):
        ct.encrypt(key, b"p", entropy=lambda n: b"1234")


# --- what is bound -----------------------------------------------------------------------


def test_the_context_is_bound() -> None:
    key = ready()
    blob = sealed(key, context=b"tenant=7")
    for wrong in (b"", b"tenant=8", b"tenant=7 "):
        with pytest.raises(DecryptFailed):
            ct.decrypt(blob, key, context=wrong)
    with pytest.raises(DecryptFailed):
        ct.decrypt(sealed(key), key, context=b"tenant=7")


def test_a_ciphertext_opens_only_with_the_key_version_it_names() -> None:
    key = ready()
    blob = sealed(key)
    same_material = named_keys.generate_material("aes256-gcm", entropy(1))
    for other in (ReadyKey("app1/other", b"v1", named_keys.load_key("aes256-gcm", same_material)),
                  ReadyKey("app1/db", b"v2", named_keys.load_key("aes256-gcm", same_material)),
                  ReadyKey("app1/db", b"v1", named_keys.load_key("chacha20-poly1305", same_material)),
                  ready(seed=2)):
        with pytest.raises(DecryptFailed) as caught:
            ct.decrypt(blob, other)
        assert caught.value.code is ErrorCode.DECRYPT_FAILED


def test_rewriting_the_header_to_name_another_key_fails_to_authenticate() -> None:
    """Same material under two names: moving a ciphertext by editing its header does not work."""
    material = named_keys.generate_material("aes256-gcm", entropy(5))
    a = ReadyKey("app1/aaaa", b"v1", named_keys.load_key("aes256-gcm", material))
    b = ReadyKey("app2/bbbb", b"v1", named_keys.load_key("aes256-gcm", material))
    blob = sealed(a)
    moved = b.header + blob[len(a.header):]
    assert ct.parse(moved).name == "app2/bbbb"
    with pytest.raises(DecryptFailed):
        ct.decrypt(moved, b)


def test_every_truncation_is_refused() -> None:
    key = ready()
    blob = sealed(key, context=b"c")
    for cut in range(len(blob)):
        with pytest.raises((DecodeError, DecryptFailed)):
            ct.decrypt(blob[:cut], key, context=b"c")


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_byte_flip_is_refused(mask: int) -> None:
    key = ready()
    blob = sealed(key, context=b"c")
    for i in range(len(blob)):
        flipped = bytearray(blob)
        flipped[i] ^= mask
        with pytest.raises((DecodeError, DecryptFailed)):
            ct.decrypt(bytes(flipped), key, context=b"c")


def test_trailing_bytes_are_refused() -> None:
    key = ready()
    with pytest.raises(DecryptFailed):
        ct.decrypt(sealed(key) + b"\x00", key)


@PROPERTY
@given(garbage=st.binary(max_size=200))
def test_garbage_is_a_decode_error_or_a_failed_decrypt_never_a_crash(garbage: bytes) -> None:
    key = ready()
    for blob in (garbage, key.header + garbage, b"ks\x01\x01" + garbage):
        with pytest.raises((DecodeError, DecryptFailed)):
            ct.decrypt(blob, key)


# --- strict parsing ---------------------------------------------------------------------------


def header(name: bytes = b"app1/db", vid: bytes = b"v1", version: int = 1, algorithm: int = 1,
           name_len: int | None = None) -> bytes:
    n = len(name) if name_len is None else name_len
    return b"ks" + bytes((version, algorithm)) + n.to_bytes(2, "big") + name + bytes((len(vid),)) + vid


@pytest.mark.parametrize(("blob", "error"), [
    (b"", "truncated: 0 bytes"),
    (b"KS" + header()[2:] + bytes(28), "does not start with 'ks'"),
    (header(version=2) + bytes(28), "format version 2 is not supported"),
    (header(algorithm=3) + bytes(28), "unknown ciphertext algorithm id 3"),
    (header(algorithm=0) + bytes(28), "unknown ciphertext algorithm id 0"),
    (header(name=b"", name_len=0) + bytes(40), r"names a key of 0 bytes \(1..256\)"),
    (header(name=b"a" * 257) + bytes(28), r"names a key of 257 bytes \(1..256\)"),
    (header(name_len=65535) + bytes(28), "names a key of 65535 bytes"),
    (header(name_len=20), "truncated"),
    (header(vid=b"") + bytes(40), r"version id of 0 bytes \(1..64\)"),
    (header(vid=b"v" * 65) + bytes(28), r"version id of 65 bytes \(1..64\)"),
    (header() + bytes(27), "truncated: 43 bytes, its header needs 44"),
    (header(name=b"app1/\xff\xfe") + bytes(28), "key name is not UTF-8"),
])
def test_malformed_ciphertexts_are_decode_errors(blob: bytes, error: str) -> None:
    with pytest.raises(DecodeError, match=error) as caught:
        ct.parse(blob)
    assert caught.value.code is ErrorCode.BAD_REQUEST


def test_the_name_limit_follows_the_node_up_to_the_format_limit() -> None:
    long_name = "n" * 1000
    blob = sealed(ready(name=long_name))
    with pytest.raises(DecodeError, match="1000 bytes"):
        ct.parse(blob)
    assert ct.parse(blob, max_name_bytes=1000).name == long_name
    with pytest.raises(KeyRequestError, match="1..4096"):
        ready(name="n" * 4097)


# --- operations and refusals --------------------------------------------------------------------


def test_rewrap_moves_a_ciphertext_to_the_new_version_and_keeps_the_context() -> None:
    old, new = ready(vid=b"v1", seed=1), ready(vid=b"v2", seed=2)
    blob = sealed(old, b"payload", context=b"ctx")
    moved = ct.rewrap(blob, old, new, entropy=entropy(3), context=b"ctx")
    assert ct.parse(moved).version_id == b"v2"
    assert ct.decrypt(moved, new, context=b"ctx") == b"payload"
    with pytest.raises(DecryptFailed):
        ct.decrypt(moved, old, context=b"ctx")
    again = ct.rewrap(moved, new, new, entropy=entropy(4), context=b"ctx")
    assert again != moved and ct.decrypt(again, new, context=b"ctx") == b"payload"
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptFailed):
        ct.rewrap(tampered, old, new, entropy=entropy(), context=b"ctx")


@pytest.mark.parametrize("length", [16, 32, 64])
def test_datakey_plaintext_comes_back_from_its_ciphertext(length: int) -> None:
    key = ready("chacha20-poly1305")
    data_key = ct.datakey(key, entropy=entropy(), context=b"file=1", length=length)
    assert len(data_key.plaintext) == length
    assert ct.decrypt(data_key.ciphertext, key, context=b"file=1") == data_key.plaintext
    assert data_key.plaintext.hex() not in repr(data_key)


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256", "hmac-sha256"])
def test_keys_that_make_no_ciphertexts_are_refused(algorithm: str) -> None:
    key = ready(algorithm)
    assert key.header == b""
    for call in (lambda: ct.encrypt(key, b"p", entropy=entropy()),
                 lambda: ct.decrypt(sealed(), key),
                 lambda: ct.datakey(key, entropy=entropy())):
        with pytest.raises(WrongKeyType, match=f"a {algorithm} key cannot"):
            call()


def test_context_is_capped() -> None:
    key = ready()
    with pytest.raises(KeyRequestError, match="context is 8193 bytes"):
        ct.encrypt(key, b"p", entropy=entropy(), context=b"c" * 8193)


# --- the text form -----------------------------------------------------------------------


@pytest.mark.parametrize("size", range(0, 6))
def test_text_round_trip_for_every_length_mod_3(size: int) -> None:
    blob = sealed(plaintext=b"z" * size)
    text = ct.to_text(blob)
    assert text.startswith("ks:v1:") and "=" not in text and re.fullmatch(r"ks:v1:[A-Za-z0-9_-]+", text)
    assert ct.from_text(text) == blob


@pytest.mark.parametrize(("text", "error"), [
    ("", "does not start with 'ks:v1:'"),
    ("ks:v2:AAAA", "version v2 is not supported"),
    ("KS:v1:AAAA", "does not start"),
    ("vault:v1:AAAA", "does not start"),
    ("ks:v1:AAAA=", "outside base64url"),
    ("ks:v1:AA==", "outside base64url"),
    ("ks:v1:AA A", "outside base64url"),
    ("ks:v1:AAAA\n", "outside base64url"),
    ("ks:v1:AB+/", "outside base64url"),
    ("ks:v1:AAAAA", "impossible base64 length"),
    ("ks:v1:AB", "non-zero trailing bits"),
    ("ks:v1:AAB", "non-zero trailing bits"),
    ("ks:v1:ÄÄÄÄ", "outside base64url"),
])
def test_text_decoding_is_strict(text: str, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        ct.from_text(text)


def test_text_must_be_a_str() -> None:
    with pytest.raises(DecodeError, match="is a str, not bytes"):
        ct.from_text(b"ks:v1:AAAA")  # type: ignore[arg-type]


@PROPERTY
@given(data=st.binary(max_size=64))
def test_each_blob_has_exactly_one_text_form(data: bytes) -> None:
    text = ct.to_text(data)
    assert ct.from_text(text) == data
    body = text[len("ks:v1:"):]
    assert base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)) == data


# --- the test vectors of docs/protocol.md, section 11 ----------------------------------------------

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
VECTOR_BLOCK = re.compile(r"```ciphertext-vector\n(.*?)```", re.DOTALL)
EXPECTED_VECTORS = ("aes256-gcm", "chacha20-poly1305")


def doc_vectors() -> dict[str, dict[str, str]]:
    vectors = {}
    for block in VECTOR_BLOCK.findall(PROTOCOL_MD.read_text(encoding="utf-8")):
        fields: dict[str, str] = {}
        last = None
        for line in block.splitlines():
            if line[:1].isspace() and last is not None:  # a continuation of a hex field
                fields[last] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            last, fields[key.strip()] = key.strip(), value.strip()
        vectors[fields["vector"]] = fields
    return vectors


def test_the_doc_has_exactly_the_vectors_this_test_checks() -> None:
    assert sorted(doc_vectors()) == sorted(EXPECTED_VECTORS)


@pytest.mark.parametrize("name", EXPECTED_VECTORS)
def test_doc_vector(name: str) -> None:
    v = doc_vectors()[name]
    hexbytes = lambda field: bytes.fromhex(v[field])  # noqa: E731
    key = ReadyKey(v["key_name"], hexbytes("version_id"), named_keys.load_key(v["algorithm"], hexbytes("material")))
    nonce, context, plaintext = hexbytes("nonce"), hexbytes("context"), hexbytes("plaintext")
    blob = ct.encrypt(key, plaintext, entropy=lambda n: nonce, context=context)
    assert key.header.hex(" ") == hexbytes("header").hex(" "), "docs/protocol.md header no longer matches"
    assert blob.hex(" ") == hexbytes("ciphertext").hex(" "), "docs/protocol.md no longer matches what encrypt writes"
    assert ct.to_text(blob) == v["text"] and ct.from_text(v["text"]) == blob
    assert ct.decrypt(blob, key, context=context) == plaintext
    # what another implementation computes from the document alone:
    aead = {"aes256-gcm": AESGCM, "chacha20-poly1305": ChaCha20Poly1305}[v["algorithm"]](hexbytes("material"))
    header_bytes = hexbytes("header")
    assert blob == header_bytes + nonce + aead.encrypt(nonce, plaintext, header_bytes + context)
