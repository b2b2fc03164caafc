"""Sealing: secrets at rest under a token, secrets in transit to an X25519 key, and the domain key.

Owns the sealed-envelope format, its three ways of deriving a key (token
ECDH, token HMAC-SHA1 challenge-response, HPKE to an X25519 public key) and
`DomainKey`, the network's 256-bit secret with its wrap / derive helpers.

Envelope (all versions start the same; docs/hardware.md "Sealing"):

    magic 4 b"KSSL" | version 1 (=1) | scheme 1 | recipient 16 | body

    scheme 1  token ECDH, X25519   body: ephemeral pub 32  | ChaCha20-Poly1305 ct
    scheme 2  token ECDH, P-256    body: ephemeral pub 65  | ct   (uncompressed point)
    scheme 3  token HMAC-SHA1      body: challenge 32      | ct
    scheme 4  HPKE to X25519       body: RFC 9180 enc 32   | ct

`recipient` names who can open it: the first 16 bytes of SHA-256 over the
recipient's SubjectPublicKeyInfo (schemes 1, 2, 4), or for scheme 3 a check
value derived with the key, so a wrong token is reported as such, not as
tampering.

Rules:
- Token ECDH is ECIES as age-plugin-yubikey does it: an ephemeral key on the
  sealing key's curve, ECDH through `Token.key_agreement`, then HKDF-SHA256
  (salt = ephemeral pub || recipient pub, info = b"keyswarm seal v1" +
  length-prefixed context) -> 32-byte key + 12-byte nonce for
  ChaCha20-Poly1305, with the whole header as AAD. Each envelope has a
  fresh key, so the derived nonce is never reused.
- HPKE (scheme 4) is RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256),
  HKDF-SHA256, ChaCha20-Poly1305, with info = b"keyswarm seal v1" +
  context + header. cryptography's `hpke` module seals when it exists and no
  entropy is passed; otherwise (older cryptography, or the simulator wanting
  a deterministic ephemeral key) the ~40 lines below compute the same RFC 9180
  construction by hand. Both paths produce and open the same bytes; a test
  checks each against the other.
- The context label binds an envelope to its purpose: a domain key sealed
  for transport never opens as a node secret at rest.
- Every failure to open is `UnsealFailed` (`WrongRecipient` when the envelope
  names another key); token failures (`TokenAbsent` ...) pass through as is.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from keyswarm.errors import DecryptFailed, ErrorCode, KeyswarmError
from keyswarm.hardware.token import (
    BadPeerKey,
    Entropy,
    SealingPublicKey,
    Token,
    generate_private_key,
    public_key_fingerprint,
)

try:
    from cryptography.hazmat.primitives import hpke as _hpke

    _HPKE_SUITE = _hpke.Suite(_hpke.KEM.X25519, _hpke.KDF.HKDF_SHA256, _hpke.AEAD.CHACHA20_POLY1305)
except (ImportError, AttributeError):  # cryptography < 46 has no HPKE
    _hpke = None
    _HPKE_SUITE = None

#: True when HPKE comes from cryptography; False when the built-in RFC 9180 code does it.
HPKE_FROM_CRYPTOGRAPHY = _HPKE_SUITE is not None

MAGIC = b"KSSL"
ENVELOPE_VERSION = 1
SCHEME_TOKEN_X25519, SCHEME_TOKEN_P256, SCHEME_TOKEN_HMAC, SCHEME_HPKE_X25519 = 1, 2, 3, 4
RECIPIENT_BYTES = 16
#: Sealed secrets are keys and small records; anything larger is not ours.
MAX_PLAINTEXT_BYTES = 1 << 20
MAX_CONTEXT_BYTES = 256
SEAL_LABEL = b"keyswarm seal v1"
DOMAIN_KEY_BYTES = 32

_HEADER_BYTES = len(MAGIC) + 2 + RECIPIENT_BYTES
_TAG_BYTES = 16
_BODY_PREFIX = {SCHEME_TOKEN_X25519: 32, SCHEME_TOKEN_P256: 65, SCHEME_TOKEN_HMAC: 32, SCHEME_HPKE_X25519: 32}
_HMAC_CHALLENGE_BYTES = 32


class UnsealFailed(DecryptFailed):
    """A sealed envelope cannot be opened: damaged, tampered, or not a keyswarm envelope."""


class WrongRecipient(UnsealFailed):
    """The envelope was sealed to another token or key."""


# --- sealing to a token (at rest) ------------------------------------------


def seal_to_token(
    token: Token, plaintext: bytes, *, context: bytes, method: str = "ecdh", entropy: Entropy = os.urandom
) -> bytes:
    """Seal `plaintext` so only `token` can open it. `method`: "ecdh" (sealing key) or "hmac" (OTP slot)."""
    _check_sizes(plaintext, context)
    if method == "hmac":
        challenge = entropy(_HMAC_CHALLENGE_BYTES)
        key, nonce, check = _hmac_keys(token, challenge, context)
        header = _header(SCHEME_TOKEN_HMAC, check) + challenge
        return header + ChaCha20Poly1305(key).encrypt(nonce, plaintext, header)
    if method != "ecdh":
        raise ValueError(f"sealing method must be 'ecdh' or 'hmac', not {method!r}")
    recipient = token.sealing_public_key()
    p256 = isinstance(recipient, ec.EllipticCurvePublicKey)
    ephemeral = generate_private_key("p256" if p256 else "x25519", entropy)
    ephemeral_public = _point_bytes(ephemeral.public_key())  # type: ignore[arg-type]
    header = _header(SCHEME_TOKEN_P256 if p256 else SCHEME_TOKEN_X25519, _recipient_id(recipient)) + ephemeral_public
    shared = token.key_agreement(ephemeral.public_key())  # type: ignore[arg-type]
    key, nonce = _ecies_keys(shared, ephemeral_public, _point_bytes(recipient), context)
    return header + ChaCha20Poly1305(key).encrypt(nonce, plaintext, header)


def unseal_with_token(token: Token, envelope: bytes, *, context: bytes) -> bytes:
    """Open an envelope made by `seal_to_token` (either method)."""
    scheme, recipient_id, prefix, ciphertext = _parse(envelope, context)
    header = envelope[: _HEADER_BYTES + len(prefix)]
    if scheme == SCHEME_TOKEN_HMAC:
        key, nonce, check = _hmac_keys(token, prefix, context)
        if not hmac.compare_digest(check, recipient_id):
            raise WrongRecipient("envelope was sealed with another token's HMAC-SHA1 secret (or another context)")
        return _decrypt(key, nonce, ciphertext, header)
    if scheme not in (SCHEME_TOKEN_X25519, SCHEME_TOKEN_P256):
        raise UnsealFailed(f"envelope scheme {scheme} is not sealed to a token")
    recipient = token.sealing_public_key()
    if not hmac.compare_digest(_recipient_id(recipient), recipient_id):
        raise WrongRecipient(
            f"envelope was sealed to key {recipient_id.hex()}; "
            f"this token's sealing key is {_recipient_id(recipient).hex()}"
        )
    try:
        if scheme == SCHEME_TOKEN_X25519:
            ephemeral: SealingPublicKey = X25519PublicKey.from_public_bytes(prefix)
        else:
            ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), prefix)
        shared = token.key_agreement(ephemeral)
    except (ValueError, BadPeerKey) as exc:
        raise UnsealFailed(f"envelope's ephemeral key is invalid: {exc}") from exc
    key, nonce = _ecies_keys(shared, prefix, _point_bytes(recipient), context)
    return _decrypt(key, nonce, ciphertext, header)


def _ecies_keys(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(hashes.SHA256(), 44, salt=ephemeral + recipient, info=_info(context)).derive(shared)
    return okm[:32], okm[32:]


def _hmac_keys(token: Token, challenge: bytes, context: bytes) -> tuple[bytes, bytes, bytes]:
    # 20-byte response = 160 bits of secret; the challenge is the HKDF salt so
    # every envelope gets its own key.
    response = token.hmac_sha1(challenge)
    okm = HKDF(hashes.SHA256(), 60, salt=challenge, info=_info(context) + b"/hmac").derive(response)
    return okm[:32], okm[32:44], okm[44:60]


# --- sealing to an X25519 public key (HPKE) ---------------------------------


def seal_to_x25519(
    recipient: X25519PublicKey, plaintext: bytes, *, context: bytes, entropy: Entropy | None = None
) -> bytes:
    """Seal to an X25519 public key (a node's sub-key agreement key) with HPKE base mode.

    `entropy` makes the ephemeral key deterministic (simulator, tests).
    """
    _check_sizes(plaintext, context)
    if not isinstance(recipient, X25519PublicKey):
        raise ValueError(f"recipient must be an X25519 public key, not {type(recipient).__name__}")
    header = _header(SCHEME_HPKE_X25519, _recipient_id(recipient))
    info = _info(context) + header
    if entropy is None and _HPKE_SUITE is not None:
        return header + _HPKE_SUITE.encrypt(plaintext, recipient, info=info)
    ephemeral = generate_private_key("x25519", entropy or os.urandom)
    return header + rfc9180_seal(recipient, info, plaintext, ephemeral)  # type: ignore[arg-type]


def open_from_x25519(private_key: X25519PrivateKey, envelope: bytes, *, context: bytes) -> bytes:
    """Open an envelope made by `seal_to_x25519` with the recipient's private key."""
    scheme, recipient_id, _, _ = _parse(envelope, context)
    if scheme != SCHEME_HPKE_X25519:
        raise UnsealFailed(f"envelope scheme {scheme} is not sealed to an X25519 key")
    mine = _recipient_id(private_key.public_key())
    if not hmac.compare_digest(mine, recipient_id):
        raise WrongRecipient(f"envelope was sealed to key {recipient_id.hex()}; this key is {mine.hex()}")
    header, body = envelope[:_HEADER_BYTES], envelope[_HEADER_BYTES:]
    info = _info(context) + header
    try:
        if _HPKE_SUITE is not None:
            return _HPKE_SUITE.decrypt(body, private_key, info=info)
        return rfc9180_open(private_key, info, body)
    except (InvalidTag, ValueError) as exc:
        raise UnsealFailed("envelope does not open: tampered, or sealed for another context") from exc


_KEM_SUITE_ID = b"KEM" + struct.pack(">H", 0x0020)  # DHKEM(X25519, HKDF-SHA256)
_HPKE_SUITE_ID = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0003)  # + HKDF-SHA256, ChaCha20-Poly1305


def rfc9180_seal(
    recipient: X25519PublicKey, info: bytes, plaintext: bytes, ephemeral: X25519PrivateKey, aad: bytes = b""
) -> bytes:
    """RFC 9180 single-shot base-mode seal: enc || ciphertext. The fallback for `hpke`."""
    enc = _point_bytes(ephemeral.public_key())
    key, nonce = _rfc9180_keys(ephemeral.exchange(recipient), enc, _point_bytes(recipient), info)
    return enc + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def rfc9180_open(private_key: X25519PrivateKey, info: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    """RFC 9180 single-shot base-mode open; ValueError / InvalidTag on failure."""
    enc, ciphertext = sealed[:32], sealed[32:]
    ephemeral = X25519PublicKey.from_public_bytes(enc)
    key, nonce = _rfc9180_keys(private_key.exchange(ephemeral), enc, _point_bytes(private_key.public_key()), info)
    return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)


def _rfc9180_keys(dh: bytes, enc: bytes, recipient: bytes, info: bytes) -> tuple[bytes, bytes]:
    # DHKEM ExtractAndExpand (RFC 9180 section 4.1), then KeySchedule (5.1), mode_base, empty PSK.
    eae_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"eae_prk", dh)
    shared_secret = _labeled_expand(_KEM_SUITE_ID, eae_prk, b"shared_secret", enc + recipient, 32)
    psk_id_hash = _labeled_extract(_HPKE_SUITE_ID, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE_ID, b"", b"info_hash", info)
    schedule_context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(_HPKE_SUITE_ID, shared_secret, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE_ID, secret, b"key", schedule_context, 32)
    base_nonce = _labeled_expand(_HPKE_SUITE_ID, secret, b"base_nonce", schedule_context, 12)
    return key, base_nonce  # sequence number 0: the nonce is base_nonce itself


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    # HKDF-Extract is HMAC(salt, ikm); an empty salt equals HashLen zero bytes under HMAC's key padding.
    return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = struct.pack(">H", length) + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled_info).derive(prk)


# --- the domain key -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainKey:
    """The network's 256-bit domain key for one epoch. Its bytes never appear in a repr."""

    secret: bytes = field(repr=False)
    epoch: int = 0

    def __post_init__(self) -> None:
        if len(self.secret) != DOMAIN_KEY_BYTES:
            raise ValueError(f"a domain key is {DOMAIN_KEY_BYTES} bytes, not {len(self.secret)}")
        if not 0 <= self.epoch < 1 << 32:
            raise ValueError(f"domain key epoch {self.epoch} out of range")

    @classmethod
    def generate(cls, entropy: Entropy, *, epoch: int = 0) -> DomainKey:
        secret = entropy(DOMAIN_KEY_BYTES)
        assert len(secret) == DOMAIN_KEY_BYTES, "entropy source returned a short read"
        return cls(secret, epoch)

    @property
    def key_id(self) -> bytes:
        """8 bytes that name this key without revealing it (in wrapped records and logs)."""
        return hashlib.sha256(b"keyswarm domain key id" + struct.pack(">I", self.epoch) + self.secret).digest()[:8]

    def derive(self, label: bytes, length: int = 32) -> bytes:
        """A subkey for one purpose (e.g. b"ticket"): HKDF-SHA256 with `label` in the info."""
        return HKDF(hashes.SHA256(), length, salt=None, info=b"keyswarm domain v1/" + label).derive(self.secret)

    def wrap(self, material: bytes, *, label: bytes, entropy: Entropy = os.urandom) -> bytes:
        """Encrypt key material under this domain key: key_id 8 | nonce 12 | ChaCha20-Poly1305 ct.

        `label` (e.g. the named key and version) is authenticated, not stored.
        """
        nonce = entropy(12)
        header = self.key_id + nonce
        return header + ChaCha20Poly1305(self.derive(b"wrap")).encrypt(nonce, material, header + label)

    def unwrap(self, wrapped: bytes, *, label: bytes) -> bytes:
        if len(wrapped) < 20 + _TAG_BYTES:
            raise UnsealFailed(f"wrapped key material is truncated ({len(wrapped)} bytes)")
        if not hmac.compare_digest(wrapped[:8], self.key_id):
            raise WrongRecipient(f"material was wrapped under domain key {wrapped[:8].hex()}, not {self.key_id.hex()}")
        return _decrypt(self.derive(b"wrap"), wrapped[8:20], wrapped[20:], wrapped[:20] + label)

    def to_bytes(self) -> bytes:
        return struct.pack(">I", self.epoch) + self.secret

    @classmethod
    def from_bytes(cls, data: bytes) -> DomainKey:
        if len(data) != 4 + DOMAIN_KEY_BYTES:
            raise UnsealFailed(f"sealed domain key has {len(data)} bytes, expected {4 + DOMAIN_KEY_BYTES}")
        return cls(data[4:], struct.unpack(">I", data[:4])[0])


DOMAIN_KEY_AT_REST = b"domain-key/at-rest"
DOMAIN_KEY_IN_TRANSIT = b"domain-key/enrolment"


def seal_domain_key_to_token(
    token: Token, key: DomainKey, *, method: str = "ecdh", entropy: Entropy = os.urandom
) -> bytes:
    """The domain key sealed at rest by this node's token."""
    return seal_to_token(token, key.to_bytes(), context=DOMAIN_KEY_AT_REST, method=method, entropy=entropy)


def unseal_domain_key_with_token(token: Token, envelope: bytes) -> DomainKey:
    return DomainKey.from_bytes(unseal_with_token(token, envelope, context=DOMAIN_KEY_AT_REST))


def seal_domain_key_to_subkey(
    agreement_key: X25519PublicKey, key: DomainKey, *, entropy: Entropy | None = None
) -> bytes:
    """The domain key for a newly enrolled node, sealed to its certified X25519 sub-key."""
    return seal_to_x25519(agreement_key, key.to_bytes(), context=DOMAIN_KEY_IN_TRANSIT, entropy=entropy)


def open_domain_key_from_subkey(agreement_private_key: X25519PrivateKey, envelope: bytes) -> DomainKey:
    return DomainKey.from_bytes(open_from_x25519(agreement_private_key, envelope, context=DOMAIN_KEY_IN_TRANSIT))


# --- envelope plumbing ---------------------------------------------------------


def _header(scheme: int, recipient_id: bytes) -> bytes:
    return MAGIC + bytes([ENVELOPE_VERSION, scheme]) + recipient_id


def _parse(envelope: bytes, context: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(scheme, recipient id, scheme prefix, ciphertext) of a well-formed envelope."""
    if len(context) > MAX_CONTEXT_BYTES:
        raise ValueError(f"context label is {len(context)} bytes (limit {MAX_CONTEXT_BYTES})")
    if len(envelope) < len(MAGIC) + 2 or envelope[: len(MAGIC)] != MAGIC:
        raise UnsealFailed("not a keyswarm sealed envelope (wrong magic)")
    version, scheme = envelope[len(MAGIC)], envelope[len(MAGIC) + 1]
    if version != ENVELOPE_VERSION:
        raise UnsealFailed(f"envelope version {version} is not supported (this keyswarm reads {ENVELOPE_VERSION})")
    prefix_bytes = _BODY_PREFIX.get(scheme)
    if prefix_bytes is None:
        raise UnsealFailed(f"unknown envelope scheme {scheme}")
    if len(envelope) < _HEADER_BYTES + prefix_bytes + _TAG_BYTES:
        raise UnsealFailed(f"envelope is truncated ({len(envelope)} bytes)")
    if len(envelope) > _HEADER_BYTES + prefix_bytes + MAX_PLAINTEXT_BYTES + _TAG_BYTES:
        raise UnsealFailed(f"envelope is {len(envelope)} bytes, larger than any sealed secret")
    recipient_id = envelope[len(MAGIC) + 2 : _HEADER_BYTES]
    body = envelope[_HEADER_BYTES:]
    return scheme, recipient_id, body[:prefix_bytes], body[prefix_bytes:]


def _decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag as exc:
        raise UnsealFailed("envelope does not open: tampered, or sealed for another context") from exc


def _check_sizes(plaintext: bytes, context: bytes) -> None:
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise ValueError(f"cannot seal {len(plaintext)} bytes (limit {MAX_PLAINTEXT_BYTES})")
    if len(context) > MAX_CONTEXT_BYTES:
        raise ValueError(f"context label is {len(context)} bytes (limit {MAX_CONTEXT_BYTES})")


def _info(context: bytes) -> bytes:
    # Length-prefixed, so a context can never run into the bytes after it.
    return SEAL_LABEL + struct.pack(">H", len(context)) + context


def _recipient_id(public_key: SealingPublicKey) -> bytes:
    return public_key_fingerprint(public_key)[:RECIPIENT_BYTES]


def _point_bytes(public_key: SealingPublicKey) -> bytes:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
