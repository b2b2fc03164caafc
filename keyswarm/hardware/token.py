"""The `Token` interface: what keyswarm asks of a root of trust, and the key algorithms it speaks.

A token holds two private keys that never leave it:
- the *identity* key (PIV slot 9c on a YubiKey): signs certificates and
  transcripts. Ed25519, or P-256 where the device has no Ed25519 (YubiKey
  firmware < 5.7);
- the *sealing* key (PIV retired slot 82): answers ECDH so secrets at rest can
  be sealed to the token, as age-plugin-yubikey does. X25519 beside an Ed25519
  identity, P-256 beside a P-256 identity.

Rules:
- Token methods block (a YubiKey answers in tens of milliseconds). Only the
  hardware actor's service thread calls them; nothing else holds a token.
- Every failure is a `TokenError` (`TokenAbsent`, `PinBlocked`, `TokenBusy`,
  `BadPeerKey`, ...). Implementations translate their library's exceptions at
  this boundary with `raise ... from exc`.
- The signature contract is fixed so a certificate or transcript signed by
  one token kind verifies like one signed by another: Ed25519 signs `data`
  itself (64 raw bytes); P-256 is DER ECDSA over SHA-256(`data`).
- Key generation helpers take an `entropy(n) -> bytes` function so soft keys
  can be minted deterministically in tests and in the simulator.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from keyswarm.errors import TokenError

#: Identity key algorithms a token may hold, by the names config and `TokenInfo` use.
IDENTITY_ALGORITHMS = ("ed25519", "p256")
#: The sealing key algorithm that goes with each identity algorithm (the YubiKey pairing).
SEALING_ALGORITHM_FOR = {"ed25519": "x25519", "p256": "p256"}
#: Token kinds, as `TokenInfo.kind` reports them.
TOKEN_KINDS = ("soft", "yubikey", "virtual")
#: Certificate slots: the identity certificate (PIV 9c) and the sealing certificate (PIV 82).
CERTIFICATE_SLOTS = ("identity", "sealing")
#: YubiKey OTP HMAC-SHA1 challenges are at most 63 bytes (a 64-byte one is read as padded).
MAX_HMAC_CHALLENGE_BYTES = 63

Entropy = Callable[[int], bytes]
IdentityPublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
SealingPublicKey = X25519PublicKey | ec.EllipticCurvePublicKey
IdentityPrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
SealingPrivateKey = X25519PrivateKey | ec.EllipticCurvePrivateKey

# Order of the P-256 group: a private scalar must lie in [1, n - 1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class BadPeerKey(TokenError):
    """The peer public key given to `key_agreement` is of the wrong curve or degenerate.

    Raised by every token kind, so sealing can tell "this envelope is forged"
    from "the token is gone".
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    """What a token is. `serial` and `firmware` are None for a soft token."""

    kind: str
    serial: int | None
    firmware: str | None
    identity_algorithm: str
    hardware_protected: bool

    def __post_init__(self) -> None:
        if self.kind not in TOKEN_KINDS:
            raise ValueError(f"token kind {self.kind!r} is not one of {TOKEN_KINDS}")
        if self.identity_algorithm not in IDENTITY_ALGORITHMS:
            raise ValueError(f"identity algorithm {self.identity_algorithm!r} is not one of {IDENTITY_ALGORITHMS}")

    @property
    def sealing_algorithm(self) -> str:
        return SEALING_ALGORITHM_FOR[self.identity_algorithm]


class Token(abc.ABC):
    """A root of trust: identity key, sealing key, certificate slots, optional HMAC-SHA1.

    Blocking. Usable as a context manager (`close` on exit).
    """

    @abc.abstractmethod
    def info(self) -> TokenInfo:
        """Kind, serial, firmware and algorithm of this token."""

    @abc.abstractmethod
    def identity_public_key(self) -> IdentityPublicKey:
        """Public half of the identity key (PIV slot 9c on a YubiKey)."""

    @abc.abstractmethod
    def sign(self, data: bytes) -> bytes:
        """Sign `data`: Ed25519 -> 64 raw bytes over `data`; P-256 -> DER ECDSA over SHA-256(`data`)."""

    @abc.abstractmethod
    def sealing_public_key(self) -> SealingPublicKey:
        """Public half of the sealing key (PIV retired slot 82 on a YubiKey)."""

    @abc.abstractmethod
    def key_agreement(self, peer_public: SealingPublicKey) -> bytes:
        """ECDH of the sealing key with `peer_public`.

        Returns the 32-byte X25519 shared secret, or the 32-byte x-coordinate
        for P-256. Raises `BadPeerKey` if `peer_public` is not on the sealing
        key's curve or yields a degenerate secret.
        """

    @abc.abstractmethod
    def generate(self, *, algorithm: str | None = None) -> None:
        """(Re)create the identity and sealing keys; `None` keeps the current algorithm.

        Certificates in the slots no longer match the new keys and are cleared.
        """

    @abc.abstractmethod
    def read_certificate(self, slot: str) -> bytes | None:
        """DER certificate in `slot` ("identity" or "sealing"), or None if empty."""

    @abc.abstractmethod
    def write_certificate(self, slot: str, der: bytes) -> None:
        """Store a DER certificate in `slot` ("identity" or "sealing")."""

    def hmac_sha1(self, challenge: bytes) -> bytes:
        """HMAC-SHA1 challenge-response (YubiKey OTP slot). Optional; most tokens lack it."""
        raise TokenError(f"{type(self).__name__} does not support HMAC-SHA1 challenge-response")

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device or forget the keys. Later calls raise `TokenError`."""

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_certificate_slot(slot: str) -> None:
    """Raise `TokenError` unless `slot` names a certificate slot."""
    if slot not in CERTIFICATE_SLOTS:
        raise TokenError(f"unknown certificate slot {slot!r}; slots are {', '.join(CERTIFICATE_SLOTS)}")


def check_hmac_challenge(challenge: bytes) -> None:
    """Raise `TokenError` unless `challenge` fits a YubiKey OTP HMAC-SHA1 challenge."""
    if not 1 <= len(challenge) <= MAX_HMAC_CHALLENGE_BYTES:
        raise TokenError(f"HMAC-SHA1 challenge must be 1..{MAX_HMAC_CHALLENGE_BYTES} bytes, got {len(challenge)}")


# --- key algorithms --------------------------------------------------------


def identity_algorithm_of(public_key: object) -> str:
    """"ed25519" or "p256" for an identity public key; `TokenError` for anything else."""
    if isinstance(public_key, Ed25519PublicKey):
        return "ed25519"
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1):
        return "p256"
    raise TokenError(f"unsupported identity key type {type(public_key).__name__}: keyswarm uses Ed25519 or P-256")


def check_signature(public_key: IdentityPublicKey, signature: bytes, data: bytes) -> bool:
    """True if `signature` over `data` verifies under `public_key` by the token signature contract."""
    try:
        if isinstance(public_key, Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_fingerprint(public_key: IdentityPublicKey | SealingPublicKey) -> bytes:
    """SHA-256 over the SubjectPublicKeyInfo DER: names a key independent of its encoding."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def generate_private_key(algorithm: str, entropy: Entropy) -> IdentityPrivateKey | SealingPrivateKey:
    """A fresh private key of `algorithm` ("ed25519", "x25519" or "p256") drawn from `entropy`."""
    if algorithm == "ed25519":
        return Ed25519PrivateKey.from_private_bytes(_draw(entropy, 32))
    if algorithm == "x25519":
        return X25519PrivateKey.from_private_bytes(_draw(entropy, 32))
    if algorithm == "p256":
        # Rejection sampling keeps the scalar uniform; a retry is needed with
        # probability ~2**-32, so this loop runs once in practice.
        while True:
            scalar = int.from_bytes(_draw(entropy, 32), "big")
            if 1 <= scalar < _P256_ORDER:
                return ec.derive_private_key(scalar, ec.SECP256R1())
    raise TokenError(f"unknown key algorithm {algorithm!r}")


def _draw(entropy: Entropy, n: int) -> bytes:
    data = entropy(n)
    # A short read from a broken entropy source must never become a weak key.
    if len(data) != n:
        raise AssertionError(f"entropy source returned {len(data)} bytes, asked for {n}")
    return data
