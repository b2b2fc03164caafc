"""Named-key algorithms: what each key type is, how its material is made, loaded, wrapped and used.

Owns the five algorithms of named keys (DESIGN section 1), the operations
each one offers, their key material, the loaded key objects the key cache
holds (`AeadKey`, `SigningKey`, `HmacKey`), the low-level operations on them,
and `wrap_material` / `unwrap_material`, which keep material in the event log
under the domain key.

| algorithm           | material                         | operations                        |
|---------------------|----------------------------------|-----------------------------------|
| `aes256-gcm`        | 32 random bytes                  | encrypt decrypt rewrap datakey    |
| `chacha20-poly1305` | 32 random bytes                  | encrypt decrypt rewrap datakey    |
| `ed25519`           | 32-byte private seed (RFC 8032)  | sign verify                       |
| `ecdsa-p256`        | 32-byte big-endian scalar, 1..n-1| sign verify (prehashed optional)  |
| `hmac-sha256`       | 32 random bytes                  | hmac verify                       |

Rules:
- Pure: randomness comes only from the caller's `entropy(n)`; nothing here
  reads a clock or the OS. Signatures need no randomness: Ed25519 is
  deterministic, and ECDSA uses RFC 6979 deterministic nonces wherever the
  OpenSSL under `cryptography` offers them (`ECDSA_DETERMINISTIC`), so the
  simulator's runs stay byte-identical.
- A P-256 scalar is drawn by rejection sampling (uniform in [1, n-1], one
  retry in 2**32), never by reducing modulo n (that would bias it).
- Loading builds the cipher or private-key object once (`load_key`); the key
  cache holds the loaded object, so a hot encrypt or sign never rebuilds one.
- An operation the key's algorithm does not offer, an unknown algorithm, or a
  malformed argument is a `KeyRequestError` (wire code BAD_REQUEST) naming
  the operation and the algorithm. Verification answers False for any bad
  signature, including one that is not even well-formed.
- Wrapped material is bound to the key name and version id by the wrap
  label: material moved to another name or version does not unwrap.
- Public keys are SubjectPublicKeyInfo DER, readable by openssl and every
  crypto library, for both signing algorithms.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from hmac import compare_digest

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from keyswarm.crypto.sealing import DomainKey
from keyswarm.errors import DecryptFailed, ErrorCode, KeyswarmError

Entropy = Callable[[int], bytes]

AES256_GCM = "aes256-gcm"
CHACHA20_POLY1305 = "chacha20-poly1305"
ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256"
HMAC_SHA256 = "hmac-sha256"

#: Operations each algorithm offers (the op names of the wire protocol).
OPERATIONS: dict[str, frozenset[str]] = {
    AES256_GCM: frozenset({"encrypt", "decrypt", "rewrap", "datakey"}),
    CHACHA20_POLY1305: frozenset({"encrypt", "decrypt", "rewrap", "datakey"}),
    ED25519: frozenset({"sign", "verify"}),
    ECDSA_P256: frozenset({"sign", "verify"}),
    HMAC_SHA256: frozenset({"hmac", "verify"}),
}
ALGORITHMS = tuple(OPERATIONS)
AEAD_ALGORITHMS = (AES256_GCM, CHACHA20_POLY1305)
MATERIAL_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
HMAC_BYTES = 32
#: Sizes a data key may have (AES-128/192/256, and 64 bytes for two-key schemes).
DATA_KEY_SIZES = (16, 24, 32, 64)

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_SHA256_BYTES = 32
_SHA256_BLOCK = 64
_IPAD = bytes(b ^ 0x36 for b in range(256))  # translate tables: XOR every key byte with the pad
_OPAD = bytes(b ^ 0x5C for b in range(256))
_WRAP_LABEL = b"keyswarm named-key material v1"


def _ecdsa_schemes() -> tuple[ec.ECDSA, ec.ECDSA, bool]:
    """(plain, prehashed, deterministic): RFC 6979 when this OpenSSL offers it."""
    probe = ec.derive_private_key(1, ec.SECP256R1())
    try:
        plain = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)  # type: ignore[call-arg]
        probe.sign(b"", plain)
        return plain, ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True), True  # type: ignore[call-arg]
    except (TypeError, UnsupportedAlgorithm):  # cryptography < 43, or OpenSSL < 3.2
        return ec.ECDSA(hashes.SHA256()), ec.ECDSA(Prehashed(hashes.SHA256())), False


_ECDSA, _ECDSA_PREHASHED, ECDSA_DETERMINISTIC = _ecdsa_schemes()


# --- errors ----------------------------------------------------------------------


class KeyRequestError(KeyswarmError):
    """A key request that cannot be served as asked: fix the request (BAD_REQUEST)."""

    code = ErrorCode.BAD_REQUEST


class UnknownAlgorithm(KeyRequestError):
    """The algorithm is not one of `ALGORITHMS`."""


class WrongKeyType(KeyRequestError):
    """The key's algorithm does not offer the operation (sign with an AES key)."""


class BadKeyMaterial(KeyswarmError):
    """Stored material that unwrapped but is not a key of its algorithm: a writer bug, never client input."""

    code = ErrorCode.INTERNAL


def check_algorithm(algorithm: str) -> None:
    """UnknownAlgorithm unless `algorithm` is a named-key algorithm."""
    if algorithm not in OPERATIONS:
        raise UnknownAlgorithm(f"unknown key algorithm {algorithm!r}; keyswarm offers {', '.join(ALGORITHMS)}")


def check_operation(algorithm: str, op: str) -> None:
    """WrongKeyType unless keys of `algorithm` offer `op` (checked before any material is touched)."""
    check_algorithm(algorithm)
    if op not in OPERATIONS[algorithm]:
        offered = ", ".join(sorted(OPERATIONS[algorithm]))
        raise WrongKeyType(f"a {algorithm} key cannot {op} (it offers {offered})")


# --- material --------------------------------------------------------------------


def _draw(entropy: Entropy, n: int) -> bytes:
    data = entropy(n)
    # A short read from a broken entropy source must never become a weak key.
    if len(data) != n:
        raise AssertionError(f"entropy source returned {len(data)} bytes, asked for {n}")
    return data


def generate_material(algorithm: str, entropy: Entropy) -> bytes:
    """Fresh raw secret material for a key of `algorithm` (see the table above)."""
    check_algorithm(algorithm)
    if algorithm != ECDSA_P256:
        return _draw(entropy, MATERIAL_BYTES)
    while True:  # rejection sampling: uniform in [1, n-1]
        candidate = _draw(entropy, MATERIAL_BYTES)
        if 1 <= int.from_bytes(candidate, "big") < _P256_ORDER:
            return candidate


def generate_data_key(entropy: Entropy, length: int = 32) -> bytes:
    """Plaintext for a data key (`ciphertext.datakey` wraps it under a named key)."""
    if length not in DATA_KEY_SIZES:
        raise KeyRequestError(f"a data key is {', '.join(map(str, DATA_KEY_SIZES))} bytes, not {length}")
    return _draw(entropy, length)


def _wrap_label(name: str, version_id: bytes) -> bytes:
    # Length-prefixed, so no (name, version_id) pair can pose as another.
    encoded = name.encode("utf-8")
    return _WRAP_LABEL + struct.pack(">H", len(encoded)) + encoded + struct.pack(">B", len(version_id)) + version_id


def wrap_material(domain_key: DomainKey, name: str, version_id: bytes, material: bytes, *, entropy: Entropy) -> bytes:
    """`material` sealed under the domain key for the log (`KeyCreated.material`), bound to name + version."""
    return domain_key.wrap(material, label=_wrap_label(name, version_id), entropy=entropy)


def unwrap_material(domain_key: DomainKey, name: str, version_id: bytes, wrapped: bytes) -> bytes:
    """The material `wrap_material` sealed; `UnsealFailed` (a DecryptFailed) when it was wrapped for
    another name, version or domain key, or was damaged."""
    return domain_key.unwrap(wrapped, label=_wrap_label(name, version_id))


# --- loaded keys -----------------------------------------------------------------


class AeadKey:
    """A loaded aes256-gcm or chacha20-poly1305 key: the cipher object, built once."""

    __slots__ = ("algorithm", "aead")

    def __init__(self, algorithm: str, material: bytes):
        self.algorithm = algorithm
        self.aead: AESGCM | ChaCha20Poly1305 = (AESGCM if algorithm == AES256_GCM else ChaCha20Poly1305)(material)

    def __repr__(self) -> str:
        return f"AeadKey({self.algorithm})"


class SigningKey:
    """A loaded ed25519 or ecdsa-p256 key: the private and public key objects, built once."""

    __slots__ = ("algorithm", "private", "public", "public_der")

    def __init__(self, algorithm: str, material: bytes):
        self.algorithm = algorithm
        if algorithm == ED25519:
            self.private: Ed25519PrivateKey | ec.EllipticCurvePrivateKey = Ed25519PrivateKey.from_private_bytes(
                material
            )
        else:
            scalar = int.from_bytes(material, "big")
            if not 1 <= scalar < _P256_ORDER:
                raise ValueError("P-256 scalar out of range")
            self.private = ec.derive_private_key(scalar, ec.SECP256R1())
        self.public = self.private.public_key()
        self.public_der = self.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def __repr__(self) -> str:
        return f"SigningKey({self.algorithm}, public {hashlib.sha256(self.public_der).hexdigest()[:16]})"


class HmacKey:
    """A loaded hmac-sha256 key: RFC 2104's inner and outer pads, hashed once.

    A MAC is then two hash-state copies and two updates (about a third of
    `hmac.digest`'s cost, which redoes the key schedule per call). Nothing
    secret appears in a repr.
    """

    __slots__ = ("algorithm", "_inner", "_outer")

    def __init__(self, algorithm: str, material: bytes):
        self.algorithm = algorithm
        block = material.ljust(_SHA256_BLOCK, b"\0")  # 32-byte keys never need hashing down first
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def mac(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def __repr__(self) -> str:
        return "HmacKey(hmac-sha256)"


LoadedKey = AeadKey | SigningKey | HmacKey
_LOADERS: dict[str, type[AeadKey] | type[SigningKey] | type[HmacKey]] = {
    AES256_GCM: AeadKey,
    CHACHA20_POLY1305: AeadKey,
    ED25519: SigningKey,
    ECDSA_P256: SigningKey,
    HMAC_SHA256: HmacKey,
}


def load_key(algorithm: str, material: bytes) -> LoadedKey:
    """The ready-to-use key object for raw `material` (what the key cache stores)."""
    check_algorithm(algorithm)
    if len(material) != MATERIAL_BYTES:
        raise BadKeyMaterial(f"{algorithm} material is {MATERIAL_BYTES} bytes, got {len(material)}")
    try:
        return _LOADERS[algorithm](algorithm, material)
    except ValueError as exc:
        raise BadKeyMaterial(f"material is not a valid {algorithm} key: {exc}") from exc


def public_key(algorithm: str, material: bytes) -> bytes:
    """SubjectPublicKeyInfo DER of a signing key; WrongKeyType for symmetric keys."""
    check_operation(algorithm, "verify")
    key = load_key(algorithm, material)
    if not isinstance(key, SigningKey):
        raise WrongKeyType(f"a {algorithm} key has no public key")
    return key.public_der


# --- operations ------------------------------------------------------------------


def _refuse(key: LoadedKey, op: str) -> KeyRequestError:
    offered = ", ".join(sorted(OPERATIONS[key.algorithm]))
    return WrongKeyType(f"a {key.algorithm} key cannot {op} (it offers {offered})")


def encrypt(key: LoadedKey, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AEAD ciphertext || 16-byte tag. `ciphertext.encrypt` builds the keyswarm format on top."""
    if type(key) is not AeadKey:
        raise _refuse(key, "encrypt")
    return key.aead.encrypt(nonce, plaintext, aad)


def decrypt(key: LoadedKey, nonce: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes:
    """The plaintext, or DecryptFailed (never a partial plaintext: the tag is checked first)."""
    if type(key) is not AeadKey:
        raise _refuse(key, "decrypt")
    try:
        return key.aead.decrypt(nonce, sealed, aad)  # type: ignore[arg-type]
    except InvalidTag:
        raise DecryptFailed("ciphertext does not authenticate: tampered, truncated, or another context") from None


def sign(key: LoadedKey, message: bytes, *, prehashed: bool = False) -> bytes:
    """Ed25519 signature (64 bytes), or DER ECDSA P-256 over SHA-256 of `message`.

    `prehashed`: `message` is already the 32-byte SHA-256 digest (ecdsa-p256 only).
    """
    if type(key) is not SigningKey:
        raise _refuse(key, "sign")
    private = key.private
    if isinstance(private, Ed25519PrivateKey):
        if prehashed:
            raise KeyRequestError("ed25519 signs the message itself; prehashed input is for ecdsa-p256")
        return private.sign(message)
    if prehashed:
        _check_digest(message)
        return private.sign(message, _ECDSA_PREHASHED)
    return private.sign(message, _ECDSA)


def verify(key: LoadedKey, message: bytes, signature: bytes, *, prehashed: bool = False) -> bool:
    """True when `signature` is this key's over `message` (an HMAC key checks a MAC in constant time)."""
    if type(key) is HmacKey:
        if prehashed:
            raise KeyRequestError("an hmac-sha256 key has no prehashed form")
        return compare_digest(key.mac(message), signature)
    if type(key) is not SigningKey:
        raise _refuse(key, "verify")
    public = key.public
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            if prehashed:
                _check_digest(message)
                public.verify(signature, message, _ECDSA_PREHASHED)
            else:
                public.verify(signature, message, _ECDSA)
        else:
            if prehashed:
                raise KeyRequestError("ed25519 signs the message itself; prehashed input is for ecdsa-p256")
            public.verify(signature, message)
    except (InvalidSignature, ValueError):  # a malformed DER signature is just a bad signature
        return False
    return True


def hmac(key: LoadedKey, message: bytes) -> bytes:
    """HMAC-SHA256 of `message` (32 bytes)."""
    if type(key) is not HmacKey:
        raise _refuse(key, "hmac")
    return key.mac(message)


def _check_digest(message: bytes) -> None:
    if len(message) != _SHA256_BYTES:
        raise KeyRequestError(f"a prehashed message is a {_SHA256_BYTES}-byte SHA-256 digest, got {len(message)} bytes")
