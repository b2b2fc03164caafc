"""Private keys in the virtual PIV applet's slots: generate, import, sign, agree, persist.

Owns the key material and the per-algorithm rules the YubiKey applies:

- P-256 / P-384 sign the digest the host sent (yubikit hashes and truncates
  to the key size on the host). A shorter digest is the same integer
  left-padded with zeros, which is what ECDSA does with it; a longer one is
  6A80. Signatures are DER ECDSA with RFC 6979 nonces, so a seeded device
  produces the same bytes every run.
- Ed25519 signs the message itself (64 raw bytes); X25519 only agrees.
- ECDH takes an uncompressed point (P-256 / P-384, answers the
  x-coordinate) or 32 raw bytes (X25519). A point off the curve, a wrong
  length, or an X25519 result of all zeros is 6A80.
- Key generation draws from the device's `entropy(n)` so a seeded simulator
  gets the same keys every run.
- `SlotKey.to_state` writes the private key in the clear: the state file of
  a virtual device is test data, not a secret store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from keyswarm.hardware.virtual_apdu import SW_WRONG_DATA, ApduReject, tlv
from keyswarm.hardware.virtual_profile import KEY_ECCP256, KEY_ECCP384, KEY_ED25519, KEY_X25519

Entropy = Callable[[int], bytes]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey

PIN_POLICY_NEVER, PIN_POLICY_ONCE, PIN_POLICY_ALWAYS = 1, 2, 3
TOUCH_POLICY_NEVER, TOUCH_POLICY_ALWAYS, TOUCH_POLICY_CACHED = 1, 2, 3
ORIGIN_GENERATED, ORIGIN_IMPORTED = 1, 2

# Import tags (yubikit `put_key`): EC private scalar, Ed25519 seed, X25519 scalar.
TAG_IMPORT_EC, TAG_IMPORT_ED25519, TAG_IMPORT_X25519 = 0x06, 0x07, 0x08

_CURVES: dict[int, tuple[ec.EllipticCurve, hashes.HashAlgorithm, int]] = {
    # key type: (curve, prehash algorithm of the same width, group order)
    KEY_ECCP256: (
        ec.SECP256R1(),
        hashes.SHA256(),
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    KEY_ECCP384: (
        ec.SECP384R1(),
        hashes.SHA384(),
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    ),
}


def _ec_from_scalar(key_type: int, scalar: int) -> ec.EllipticCurvePrivateKey:
    curve, _, order = _CURVES[key_type]
    if not 1 <= scalar < order:
        raise ApduReject(SW_WRONG_DATA)
    return ec.derive_private_key(scalar, curve)


def generate_private_key(key_type: int, entropy: Entropy) -> PrivateKey:
    """A fresh key of `key_type` from `entropy`. The caller checked the type is supported."""
    if key_type in _CURVES:
        _, _, order = _CURVES[key_type]
        width = (order.bit_length() + 7) // 8
        # 8 extra bytes make the modulo bias negligible (FIPS 186-5 A.2.1).
        scalar = int.from_bytes(entropy(width + 8), "big") % (order - 1) + 1
        return _ec_from_scalar(key_type, scalar)
    if key_type == KEY_ED25519:
        return ed25519.Ed25519PrivateKey.from_private_bytes(entropy(32))
    if key_type == KEY_X25519:
        return x25519.X25519PrivateKey.from_private_bytes(entropy(32))
    raise ApduReject(SW_WRONG_DATA)


def import_private_key(key_type: int, fields: dict[int, bytes]) -> PrivateKey:
    """The key an IMPORT KEY body carries (tags 06 / 07 / 08); malformed is 6A80."""
    if key_type in _CURVES and TAG_IMPORT_EC in fields:
        _, _, order = _CURVES[key_type]
        if len(fields[TAG_IMPORT_EC]) != (order.bit_length() + 7) // 8:
            raise ApduReject(SW_WRONG_DATA)
        return _ec_from_scalar(key_type, int.from_bytes(fields[TAG_IMPORT_EC], "big"))
    if key_type == KEY_ED25519 and len(fields.get(TAG_IMPORT_ED25519, b"")) == 32:
        return ed25519.Ed25519PrivateKey.from_private_bytes(fields[TAG_IMPORT_ED25519])
    if key_type == KEY_X25519 and len(fields.get(TAG_IMPORT_X25519, b"")) == 32:
        return x25519.X25519PrivateKey.from_private_bytes(fields[TAG_IMPORT_X25519])
    raise ApduReject(SW_WRONG_DATA)


def _private_bytes(key: PrivateKey) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        width = (key.curve.key_size + 7) // 8
        return key.private_numbers().private_value.to_bytes(width, "big")
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _load_private(key_type: int, raw: bytes) -> PrivateKey:
    if key_type in _CURVES:
        return _ec_from_scalar(key_type, int.from_bytes(raw, "big"))
    if key_type == KEY_ED25519:
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    if key_type == KEY_X25519:
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    raise ValueError(f"unknown key type 0x{key_type:02X}")


@dataclass(slots=True)
class SlotKey:
    """A private key in a PIV slot with its resolved policies (never DEFAULT)."""

    key_type: int
    private_key: PrivateKey
    pin_policy: int
    touch_policy: int
    origin: int

    def public_key(self) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | x25519.X25519PublicKey:
        return self.private_key.public_key()

    def public_point(self) -> bytes:
        """The public key as the device encodes it in tag 86."""
        public = self.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            return public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return public.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def public_template(self) -> bytes:
        """Tag 86 with the point: the body of 7F49 and of metadata tag 04."""
        return tlv(0x86, self.public_point())

    def sign(self, message: bytes) -> bytes:
        """The GENERAL AUTHENTICATE signature over what the host sent."""
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            _, prehash, _ = _CURVES[self.key_type]
            if len(message) > prehash.digest_size:
                raise ApduReject(SW_WRONG_DATA)
            digest = message.rjust(prehash.digest_size, b"\0")
            return key.sign(digest, ec.ECDSA(Prehashed(prehash), deterministic_signing=True))
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        raise ApduReject(SW_WRONG_DATA)  # X25519 keys only agree

    def agree(self, peer: bytes) -> bytes:
        """The ECDH shared secret with the peer's encoded public key."""
        key = self.private_key
        try:
            if isinstance(key, ec.EllipticCurvePrivateKey):
                width = (key.curve.key_size + 7) // 8
                if len(peer) != 1 + 2 * width or peer[0] != 0x04:  # uncompressed points only
                    raise ApduReject(SW_WRONG_DATA)
                point = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, peer)
                return key.exchange(ec.ECDH(), point)
            if isinstance(key, x25519.X25519PrivateKey):
                if len(peer) != 32:
                    raise ApduReject(SW_WRONG_DATA)
                return key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError as exc:  # off-curve point, or an all-zero X25519 result
            raise ApduReject(SW_WRONG_DATA) from exc
        raise ApduReject(SW_WRONG_DATA)  # Ed25519 keys only sign

    def to_state(self) -> dict[str, object]:
        """Plain JSON-able state, private key in the clear (test device)."""
        return {
            "key_type": self.key_type,
            "private": _private_bytes(self.private_key).hex(),
            "pin_policy": self.pin_policy,
            "touch_policy": self.touch_policy,
            "origin": self.origin,
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> SlotKey:
        key_type = int(state["key_type"])  # type: ignore[call-overload]
        return cls(
            key_type=key_type,
            private_key=_load_private(key_type, bytes.fromhex(str(state["private"]))),
            pin_policy=int(state["pin_policy"]),  # type: ignore[call-overload]
            touch_policy=int(state["touch_policy"]),  # type: ignore[call-overload]
            origin=int(state["origin"]),  # type: ignore[call-overload]
        )
