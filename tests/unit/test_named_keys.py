"""Named-key algorithms: material, loading, every operation, wrong-type refusals, wrapping."""

from __future__ import annotations

import hashlib
import hmac as stdlib_hmac
import random

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from keyswarm.crypto import named_keys
from keyswarm.crypto.named_keys import (
    AEAD_ALGORITHMS,
    ALGORITHMS,
    OPERATIONS,
    AeadKey,
    BadKeyMaterial,
    HmacKey,
    KeyRequestError,
    SigningKey,
    UnknownAlgorithm,
    WrongKeyType,
)
from keyswarm.crypto.sealing import DomainKey, UnsealFailed, WrongRecipient
from keyswarm.errors import DecryptFailed, ErrorCode

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def entropy(seed: int = 1):
    return random.Random(seed).randbytes


def loaded(algorithm: str, seed: int = 1) -> named_keys.LoadedKey:
    return named_keys.load_key(algorithm, named_keys.generate_material(algorithm, entropy(seed)))


# --- material ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_material_is_32_bytes_and_drawn_from_the_callers_entropy(algorithm: str) -> None:
    a = named_keys.generate_material(algorithm, entropy(7))
    b = named_keys.generate_material(algorithm, entropy(7))
    assert len(a) == 32 and a == b, "same entropy, same material: the simulator depends on it"
    assert a != named_keys.generate_material(algorithm, entropy(8))


def test_p256_scalar_is_rejection_sampled_never_reduced() -> None:
    draws = [b"\xff" * 32, bytes(32), (P256_ORDER).to_bytes(32, "big"), (P256_ORDER - 1).to_bytes(32, "big")]
    source = iter(draws)
    material = named_keys.generate_material("ecdsa-p256", lambda n: next(source))
    assert material == (P256_ORDER - 1).to_bytes(32, "big"), "0, n and values >= n are redrawn, not reduced"
    key = named_keys.load_key("ecdsa-p256", material)
    assert isinstance(key, SigningKey)


def test_a_short_entropy_read_is_an_invariant_violation() -> None:
    with pytest.raises(AssertionError, match="entropy source returned 3 bytes"):
        named_keys.generate_material("aes256-gcm", lambda n: b"abc")


def test_unknown_algorithm_is_a_bad_request_naming_the_choices() -> None:
    with pytest.raises(UnknownAlgorithm, match="unknown key algorithm 'rsa-2048'; keyswarm offers aes256") as caught:
        named_keys.generate_material("rsa-2048", entropy())
    assert caught.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(UnknownAlgorithm):
        named_keys.load_key("des", bytes(32))


@pytest.mark.parametrize(("algorithm", "material"), [
    ("aes256-gcm", bytes(16)),
    ("ed25519", bytes(31)),
    ("ecdsa-p256", bytes(32)),  # scalar 0
    ("ecdsa-p256", P256_ORDER.to_bytes(32, "big")),
])
def test_material_that_is_not_a_key_is_refused(algorithm: str, material: bytes) -> None:
    with pytest.raises(BadKeyMaterial) as caught:
        named_keys.load_key(algorithm, material)
    assert caught.value.code is ErrorCode.INTERNAL


def test_loaded_keys_hold_ready_objects_and_never_show_secrets() -> None:
    aes, chacha = loaded("aes256-gcm"), loaded("chacha20-poly1305")
    assert isinstance(aes, AeadKey) and isinstance(aes.aead, AESGCM)
    assert isinstance(chacha, AeadKey) and isinstance(chacha.aead, ChaCha20Poly1305)
    mac = loaded("hmac-sha256")
    assert isinstance(mac, HmacKey) and repr(mac) == "HmacKey(hmac-sha256)"
    signer = loaded("ed25519")
    assert isinstance(signer, SigningKey) and "ed25519" in repr(signer)


# --- operations -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", AEAD_ALGORITHMS)
def test_aead_round_trip_and_tamper(algorithm: str) -> None:
    key = loaded(algorithm)
    nonce = bytes(12)
    sealed = named_keys.encrypt(key, nonce, b"attack at dawn", b"aad")
    assert named_keys.decrypt(key, nonce, sealed, b"aad") == b"attack at dawn"
    assert named_keys.decrypt(key, nonce, memoryview(sealed), b"aad") == b"attack at dawn"
    for bad in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:-1]):
        with pytest.raises(DecryptFailed):
            named_keys.decrypt(key, nonce, bad, b"aad")
    with pytest.raises(DecryptFailed) as caught:
        named_keys.decrypt(key, nonce, sealed, b"other aad")
    assert caught.value.code is ErrorCode.DECRYPT_FAILED


@pytest.mark.parametrize("prehashed", [False, True])
def test_ecdsa_p256_signatures_verify_with_cryptography_directly(prehashed: bool) -> None:
    material = named_keys.generate_material("ecdsa-p256", entropy(3))
    key = named_keys.load_key("ecdsa-p256", material)
    message = b"transfer 10 EUR"
    data = hashlib.sha256(message).digest() if prehashed else message
    signature = named_keys.sign(key, data, prehashed=prehashed)
    public = ec.derive_private_key(int.from_bytes(material, "big"), ec.SECP256R1()).public_key()
    public.verify(signature, message, ec.ECDSA(hashes.SHA256()))  # DER, SHA-256, over the message
    assert named_keys.verify(key, data, signature, prehashed=prehashed)
    # and signatures cryptography makes verify here
    theirs = ec.derive_private_key(int.from_bytes(material, "big"), ec.SECP256R1()).sign(
        hashlib.sha256(message).digest(), ec.ECDSA(Prehashed(hashes.SHA256())))
    assert named_keys.verify(key, message, theirs)
    assert not named_keys.verify(key, b"transfer 99 EUR", signature)


def test_ecdsa_is_deterministic_when_openssl_allows() -> None:
    key = loaded("ecdsa-p256")
    same = named_keys.sign(key, b"m") == named_keys.sign(key, b"m")
    assert same is named_keys.ECDSA_DETERMINISTIC


def test_ed25519_signatures_verify_with_cryptography_directly() -> None:
    material = named_keys.generate_material("ed25519", entropy(4))
    key = named_keys.load_key("ed25519", material)
    signature = named_keys.sign(key, b"hello")
    Ed25519PrivateKey.from_private_bytes(material).public_key().verify(signature, b"hello")
    assert named_keys.verify(key, b"hello", Ed25519PrivateKey.from_private_bytes(material).sign(b"hello"))
    assert not named_keys.verify(key, b"hello!", signature)
    with pytest.raises(KeyRequestError, match="prehashed input is for ecdsa-p256"):
        named_keys.sign(key, hashlib.sha256(b"hello").digest(), prehashed=True)


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
@pytest.mark.parametrize("signature", [b"", b"\x30", b"\x00" * 64, b"\x30\x06\x02\x01\x01\x02\x01\x01", b"x" * 200])
def test_malformed_signatures_are_just_false(algorithm: str, signature: bytes) -> None:
    assert named_keys.verify(loaded(algorithm), b"m", signature) is False


def test_prehashed_input_must_be_a_sha256_digest() -> None:
    with pytest.raises(KeyRequestError, match="32-byte SHA-256 digest, got 5 bytes"):
        named_keys.sign(loaded("ecdsa-p256"), b"short", prehashed=True)


def test_public_keys_are_spki_der_that_cryptography_loads() -> None:
    for algorithm, cls in (("ed25519", Ed25519PublicKey), ("ecdsa-p256", ec.EllipticCurvePublicKey)):
        material = named_keys.generate_material(algorithm, entropy(5))
        der = named_keys.public_key(algorithm, material)
        public = serialization.load_der_public_key(der)
        assert isinstance(public, cls)
        assert der == named_keys.load_key(algorithm, material).public_der
    with pytest.raises(WrongKeyType, match="a aes256-gcm key cannot verify"):
        named_keys.public_key("aes256-gcm", bytes(32))


def test_hmac_matches_the_standard_library_and_verifies_in_constant_time() -> None:
    material = named_keys.generate_material("hmac-sha256", entropy(6))
    key = named_keys.load_key("hmac-sha256", material)
    for message in (b"", b"a", b"x" * 64, b"x" * 1000):
        mac = named_keys.hmac(key, message)
        assert mac == stdlib_hmac.new(material, message, hashlib.sha256).digest()
        assert named_keys.verify(key, message, mac)
        assert not named_keys.verify(key, message, mac[:-1] + bytes([mac[-1] ^ 1]))
        assert not named_keys.verify(key, message, mac[:16])


# --- wrong operations for the type --------------------------------------------------------

CALLS = {
    "encrypt": lambda k: named_keys.encrypt(k, bytes(12), b"p", b""),
    "decrypt": lambda k: named_keys.decrypt(k, bytes(12), bytes(16), b""),
    "sign": lambda k: named_keys.sign(k, b"m"),
    "verify": lambda k: named_keys.verify(k, b"m", b"s"),
    "hmac": lambda k: named_keys.hmac(k, b"m"),
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("op", sorted(CALLS))
def test_operations_the_type_does_not_offer_are_refused(algorithm: str, op: str) -> None:
    key = loaded(algorithm)
    if op in OPERATIONS[algorithm]:
        if op != "decrypt":
            CALLS[op](key)
        return
    with pytest.raises(WrongKeyType, match=f"a {algorithm} key cannot {op} \\(it offers ") as caught:
        CALLS[op](key)
    assert caught.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(WrongKeyType):
        named_keys.check_operation(algorithm, op)


def test_check_operation_covers_the_table() -> None:
    named_keys.check_operation("aes256-gcm", "datakey")
    named_keys.check_operation("hmac-sha256", "verify")
    with pytest.raises(WrongKeyType, match="a ed25519 key cannot rewrap"):
        named_keys.check_operation("ed25519", "rewrap")
    with pytest.raises(UnknownAlgorithm):
        named_keys.check_operation("nope", "encrypt")


def test_data_key_sizes() -> None:
    for size in named_keys.DATA_KEY_SIZES:
        assert len(named_keys.generate_data_key(entropy(), size)) == size
    with pytest.raises(KeyRequestError, match="not 7"):
        named_keys.generate_data_key(entropy(), 7)


# --- wrapping material for the log ---------------------------------------------------------


def test_wrapped_material_unwraps_only_under_its_name_version_and_domain_key() -> None:
    domain = DomainKey.generate(entropy(10))
    material = named_keys.generate_material("aes256-gcm", entropy(11))
    wrapped = named_keys.wrap_material(domain, "app1/db", b"v1", material, entropy=entropy(12))
    assert material not in wrapped
    assert named_keys.unwrap_material(domain, "app1/db", b"v1", wrapped) == material
    for name, vid in (("app1/db2", b"v1"), ("app1/db", b"v2"), ("app1/d", b"bv1")):
        with pytest.raises(UnsealFailed):
            named_keys.unwrap_material(domain, name, vid, wrapped)
    with pytest.raises(WrongRecipient):
        named_keys.unwrap_material(DomainKey.generate(entropy(13)), "app1/db", b"v1", wrapped)
    with pytest.raises(DecryptFailed):
        named_keys.unwrap_material(domain, "app1/db", b"v1", wrapped[:-1] + bytes([wrapped[-1] ^ 1]))
