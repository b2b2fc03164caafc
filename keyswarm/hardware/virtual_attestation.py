"""PIV attestation for the virtual YubiKey: a per-device test root, the F9 key, attestation certificates.

A real YubiKey leaves the factory with an attestation key in slot F9 and a
certificate for it (object 5FFF01) issued by Yubico's PIV root CA. The
virtual device cannot chain to Yubico, so each device gets its own **test
root** instead (`create_attestation_chain`): verifiers under test trust that
root in place of Yubico's. The chain is root -> F9 attestation certificate ->
per-slot attestation certificate, all P-256 / SHA-256.

Certificates follow the shape of the real ones:
- subject "CN=YubiKey PIV Attestation <slot>", issuer = the F9 certificate's
  subject, the slot's public key;
- Yubico extensions under 1.3.6.1.4.1.41482.3: .3 firmware (3 raw bytes),
  .7 serial (DER INTEGER), .8 PIN and touch policy (2 raw bytes), .9 form
  factor (1 raw byte), all non-critical;
- fixed validity dates, as on the device, so no clock is read and a seeded
  device issues byte-identical certificates (RFC 6979 signatures, serial
  numbers from the device's entropy).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from keyswarm.hardware.virtual_piv_keys import SlotKey, generate_private_key
from keyswarm.hardware.virtual_profile import KEY_ECCP256

Entropy = Callable[[int], bytes]

#: Yubico's PIV attestation extension arc and the extensions under it.
YUBICO_PIV_ARC = "1.3.6.1.4.1.41482.3"
OID_FIRMWARE = x509.ObjectIdentifier(YUBICO_PIV_ARC + ".3")
OID_SERIAL = x509.ObjectIdentifier(YUBICO_PIV_ARC + ".7")
OID_POLICY = x509.ObjectIdentifier(YUBICO_PIV_ARC + ".8")
OID_FORM_FACTOR = x509.ObjectIdentifier(YUBICO_PIV_ARC + ".9")

# Real attestation certificates carry fixed dates, not the time of issue.
_NOT_BEFORE = dt.datetime(2016, 3, 14, tzinfo=dt.UTC)
_NOT_AFTER = dt.datetime(2052, 4, 17, tzinfo=dt.UTC)


def _serial_number(entropy: Entropy) -> int:
    # Positive and at most 20 octets (RFC 5280 4.1.2.2); the top bit cleared.
    return int.from_bytes(entropy(16), "big") >> 1 | 1


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # room for a sign bit
    return b"\x02" + bytes([len(body)]) + body


def _sign(builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)


def create_attestation_chain(
    serial: int, entropy: Entropy, attestation_key: ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, x509.Certificate]:
    """A fresh test root and the F9 certificate it issues for `attestation_key`.

    The root's private key is dropped on return: nothing after manufacture
    needs it, as with Yubico's.
    """
    root_key = generate_private_key(KEY_ECCP256, entropy)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    root_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "keyswarm virtual YubiKey (TEST ONLY)"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Virtual YubiKey PIV Test Root CA {serial}"),
        ]
    )
    root = _sign(
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(_serial_number(entropy))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False),
        root_key,
    )
    intermediate = _sign(
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Virtual YubiKey PIV Attestation {serial}")]))
        .issuer_name(root_name)
        .public_key(attestation_key.public_key())
        .serial_number(_serial_number(entropy))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        ),
        root_key,
    )
    return root, intermediate


def issue_attestation(
    *,
    slot: int,
    key: SlotKey,
    attestation_key: SlotKey,
    attestation_certificate_der: bytes,
    firmware: tuple[int, int, int],
    serial: int,
    form_factor: int,
    entropy: Entropy,
) -> bytes:
    """The DER attestation certificate for the key in `slot`.

    Raises ValueError when the F9 object does not hold a certificate or the
    F9 key cannot sign certificates; the applet answers that with a status word.
    """
    issuer_certificate = x509.load_der_x509_certificate(attestation_certificate_der)
    signer = attestation_key.private_key
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError("the attestation key must be an EC key")
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"YubiKey PIV Attestation {slot:02x}")]))
        .issuer_name(issuer_certificate.subject)
        .public_key(key.public_key())
        .serial_number(_serial_number(entropy))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.UnrecognizedExtension(OID_FIRMWARE, bytes(firmware)), critical=False)
        .add_extension(x509.UnrecognizedExtension(OID_SERIAL, _der_integer(serial)), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(OID_POLICY, bytes([key.pin_policy, key.touch_policy])), critical=False
        )
        .add_extension(x509.UnrecognizedExtension(OID_FORM_FACTOR, bytes([form_factor])), critical=False)
    )
    return _sign(builder, signer).public_bytes(Encoding.DER)


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
