"""X.509 certificates for keyswarm identities, signed through a `Token`.

Owns the identity URIs, the network id, the five certificate builders (root,
node, sub-key, event signer, client) and the one routine that signs a certificate with a key
that is not in memory. Verification lives in `chain_verify`.

Rules:
- Identities are URI SANs: `keyswarm://<network-id>/root`,
  `keyswarm://<network-id>/node/<name>`, `keyswarm://<network-id>/client/<name>`,
  `keyswarm://<network-id>/node/<name>/subkey` for a node's sub-key, and
  `keyswarm://<network-id>/node/<name>/signer` for the key that signs the
  node's event-log checkpoints (kind `signer`). Every certificate carries
  exactly one keyswarm URI, and every kind has its own URI shape, so no
  certificate of one kind can pass for another: a sub-key (which
  authenticates sessions) is never an event signer, and the reverse.
- `network-id` = hex of the first 16 bytes of SHA-256 over the root public
  key's SubjectPublicKeyInfo DER.
- The issuer's private key stays in its token. `sign_with_token` builds the
  certificate with a throwaway key of the issuer's algorithm (so the
  AlgorithmIdentifier inside and outside the TBS is right), has the token sign
  the TBS bytes, and splices that signature into the DER by hand (ykman's
  `sign_certificate_builder` does the same). The result is checked against
  the issuer before it is returned: a token holding the wrong key is caught
  here, not by a peer.
- Builders never read the clock: `now` is an argument (the simulator runs on
  virtual time). Validity starts `CLOCK_SKEW_BACKDATE` before `now` so a peer
  whose clock lags a little still accepts a certificate minted this second.
- A sub-key certificate certifies an Ed25519 signing key (its subject key)
  and an X25519 agreement key together: the X25519 key rides in the
  non-critical extension `SUBKEY_AGREEMENT_KEY_OID`, its value the key's
  SubjectPublicKeyInfo DER. The OID sits under keyswarm's private arc, a
  UUID OID (ITU-T X.667, `2.25.<uuid>`), which needs no registration.
- A signer certificate certifies the long-lived Ed25519 key that signs the
  node's event-log checkpoints (docs/storage.md, "Signing"). It is issued
  by the node certificate through the node's token, like a sub-key, carries
  only the extended key usage `EVENT_SIGNING_EKU_OID` (no serverAuth or
  clientAuth: it never authenticates a session), and never outlives the
  node certificate that issued it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keyswarm.errors import ErrorCode, KeyswarmError, TokenError
from keyswarm.hardware.token import (
    Entropy,
    IdentityPublicKey,
    Token,
    identity_algorithm_of,
    public_key_fingerprint,
)

#: keyswarm's private OID arc: the UUID OID of c48ef914-e2ef-4738-88e2-e7cf8f74bd06.
KEYSWARM_OID_ARC = "2.25.261271045302542897985033363819792219398"
#: Extension carrying a sub-key's X25519 agreement key (arc .1 = certificate extensions).
SUBKEY_AGREEMENT_KEY_OID = x509.ObjectIdentifier(KEYSWARM_OID_ARC + ".1.1")
#: Extended key usage of a signer certificate: signs event-log checkpoints (arc .2 = key purposes).
EVENT_SIGNING_EKU_OID = x509.ObjectIdentifier(KEYSWARM_OID_ARC + ".2.1")

URI_SCHEME = "keyswarm"
#: Kinds a certificate can name. Roots sign nodes and clients; nodes sign their sub-keys and event signers.
CERTIFICATE_KINDS = ("root", "node", "client", "subkey", "signer")
#: The URI path segment after `node/<name>/` of the kinds a node issues to itself.
NODE_SUFFIX_KINDS = {"subkey": "subkey", "signer": "signer"}
#: Node and client names: short, URI- and DN-safe, so the CN stays within X.520's 64 characters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
NETWORK_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
MAX_NETWORK_NAME_CHARS = 64

CLOCK_SKEW_BACKDATE = timedelta(minutes=1)
DEFAULT_ROOT_LIFETIME = timedelta(days=3650)
DEFAULT_NODE_LIFETIME = timedelta(days=365)
DEFAULT_CLIENT_LIFETIME = timedelta(days=365)
DEFAULT_SUBKEY_LIFETIME = timedelta(hours=1)
#: An event signer's certificate lives as long as this, or its node certificate, whichever ends first.
DEFAULT_SIGNER_LIFETIME = timedelta(days=365)
#: X.509 serials are positive and at most 20 octets.
MAX_SERIAL = (1 << 159) - 1


class BadCertificateRequest(KeyswarmError):
    """A builder was asked for a certificate it must not issue (bad name, wrong issuer, wrong key type)."""

    code = ErrorCode.BAD_REQUEST


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """What a keyswarm URI names. `name` is None for the root."""

    network_id: str
    kind: str
    name: str | None

    @property
    def uri(self) -> str:
        return identity_uri(self.network_id, self.kind, self.name)


# --- identities ------------------------------------------------------------


def network_id(root: x509.Certificate | IdentityPublicKey) -> str:
    """The network id of a root certificate or root public key: 32 hex characters."""
    public_key = root.public_key() if isinstance(root, x509.Certificate) else root
    return public_key_fingerprint(public_key)[:16].hex()  # type: ignore[arg-type]


def identity_uri(network: str, kind: str, name: str | None = None) -> str:
    """The URI SAN for `kind`/`name` in `network`; `BadCertificateRequest` on a bad part."""
    if not NETWORK_ID_PATTERN.fullmatch(network):
        raise BadCertificateRequest(f"network id {network!r} is not 32 lowercase hex characters")
    if kind == "root":
        if name is not None:
            raise BadCertificateRequest("a root identity has no name")
        return f"{URI_SCHEME}://{network}/root"
    if kind not in CERTIFICATE_KINDS:
        raise BadCertificateRequest(f"unknown identity kind {kind!r}")
    if name is None or not NAME_PATTERN.fullmatch(name):
        raise BadCertificateRequest(
            f"{kind} name {name!r} must be 1-48 characters of letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    if kind in NODE_SUFFIX_KINDS:
        return f"{URI_SCHEME}://{network}/node/{name}/{NODE_SUFFIX_KINDS[kind]}"
    return f"{URI_SCHEME}://{network}/{kind}/{name}"


def parse_identity_uri(uri: str) -> Identity:
    """The identity a keyswarm URI names; ValueError if `uri` is not one."""
    prefix = f"{URI_SCHEME}://"
    if not uri.startswith(prefix):
        raise ValueError(f"{uri!r} is not a {URI_SCHEME}:// URI")
    network, _, path = uri[len(prefix) :].partition("/")
    parts = path.split("/")
    match parts:
        case ["root"]:
            kind, name = "root", None
        case ["node" | "client" as kind, name]:
            pass
        case ["node", name, "subkey"]:
            kind = "subkey"
        case ["node", name, "signer"]:
            kind = "signer"
        case _:
            raise ValueError(f"{uri!r} names no keyswarm identity")
    try:
        canonical = identity_uri(network, kind, name)
    except BadCertificateRequest as exc:
        raise ValueError(f"{uri!r}: {exc}") from exc
    if canonical != uri:
        raise ValueError(f"{uri!r} is not in canonical form")
    return Identity(network_id=network, kind=kind, name=name)


def certificate_identity(cert: x509.Certificate) -> Identity:
    """The one keyswarm identity in `cert`'s SAN; ValueError if there is none or more than one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise ValueError("certificate has no subjectAltName") from exc
    uris = [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith(URI_SCHEME + ":")]
    if len(uris) != 1:
        raise ValueError(f"certificate carries {len(uris)} keyswarm URIs; exactly one is required")
    return parse_identity_uri(uris[0])


def agreement_public_key(subkey_cert: x509.Certificate) -> X25519PublicKey:
    """The X25519 agreement key certified with a sub-key; ValueError if absent or not X25519."""
    try:
        value = subkey_cert.extensions.get_extension_for_oid(SUBKEY_AGREEMENT_KEY_OID).value
    except x509.ExtensionNotFound as exc:
        raise ValueError("sub-key certificate carries no agreement key extension") from exc
    key = serialization.load_der_public_key(value.value)  # type: ignore[attr-defined]
    if not isinstance(key, X25519PublicKey):
        raise ValueError(f"sub-key agreement key is {type(key).__name__}, not X25519")
    return key


# --- builders --------------------------------------------------------------


def root_certificate(
    token: Token,
    *,
    network_name: str,
    now: datetime,
    lifetime: timedelta = DEFAULT_ROOT_LIFETIME,
    serial: int | None = None,
    entropy: Entropy = os.urandom,
) -> x509.Certificate:
    """The self-signed root certificate of a new network, signed by `token`'s identity key."""
    if not 1 <= len(network_name) <= MAX_NETWORK_NAME_CHARS or not network_name.isprintable():
        raise BadCertificateRequest(f"network name must be 1-{MAX_NETWORK_NAME_CHARS} printable characters")
    public_key = token.identity_public_key()
    network = network_id(public_key)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, network_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "root"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"keyswarm root {network}"),
        ]
    )
    builder = _base_builder(subject, subject, public_key, serial, entropy, now, lifetime, "root", network, None)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
    builder = builder.add_extension(_key_usage(signature=False, cert_sign=True, crl_sign=True), critical=True)
    cert = sign_with_token(token, builder, public_key)
    _check_issued_by(cert, cert)
    return cert


def node_certificate(
    root_token: Token,
    root_cert: x509.Certificate,
    node_public_key: IdentityPublicKey,
    *,
    node_name: str,
    now: datetime,
    lifetime: timedelta = DEFAULT_NODE_LIFETIME,
    serial: int | None = None,
    entropy: Entropy = os.urandom,
) -> x509.Certificate:
    """A node's certificate: the root certifies the node token's identity key.

    CA with path length 0: the node signs its own sub-key certificates.
    """
    _require_issuer(root_token, root_cert, ("root",), "a node certificate")
    _require_identity_key(node_public_key, "node")
    builder = _issued_builder(root_cert, node_public_key, "node", node_name, serial, entropy, now, lifetime)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(_key_usage(cert_sign=True), critical=True)
    return _sign_issued(root_token, root_cert, builder)


def _require_own_ed25519(node_token: Token, node_cert: x509.Certificate, node_name: str, key: object,
                         what: str) -> None:
    """A node certifies only its own keys (`what`: "sub-key", "event signer"), and only Ed25519 ones."""
    issuer = _require_issuer(node_token, node_cert, ("node",), f"a {what} certificate")
    if issuer.name != node_name:
        raise BadCertificateRequest(f"node {issuer.name!r} cannot certify the {what} of node {node_name!r}")
    if not isinstance(key, Ed25519PublicKey):
        raise BadCertificateRequest(f"the {what} key must be Ed25519, not {type(key).__name__}")


def subkey_certificate(
    node_token: Token,
    node_cert: x509.Certificate,
    signing_public_key: Ed25519PublicKey,
    agreement_key: X25519PublicKey,
    *,
    node_name: str,
    serial: int,
    now: datetime,
    lifetime: timedelta = DEFAULT_SUBKEY_LIFETIME,
) -> x509.Certificate:
    """A short-lived sub-key certificate: the node's token certifies an Ed25519 + X25519 pair."""
    _require_own_ed25519(node_token, node_cert, node_name, signing_public_key, "sub-key")
    if not isinstance(agreement_key, X25519PublicKey):
        raise BadCertificateRequest(f"sub-key agreement key must be X25519, not {type(agreement_key).__name__}")
    builder = _issued_builder(node_cert, signing_public_key, "subkey", node_name, serial, None, now, lifetime)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(_key_usage(), critical=True)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    builder = builder.add_extension(eku, critical=False)
    spki = agreement_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    builder = builder.add_extension(x509.UnrecognizedExtension(SUBKEY_AGREEMENT_KEY_OID, spki), critical=False)
    return _sign_issued(node_token, node_cert, builder)


def signer_certificate(
    node_token: Token,
    node_cert: x509.Certificate,
    signing_public_key: Ed25519PublicKey,
    *,
    node_name: str,
    now: datetime,
    lifetime: timedelta = DEFAULT_SIGNER_LIFETIME,
    serial: int | None = None,
    entropy: Entropy = os.urandom,
) -> x509.Certificate:
    """The certificate of a node's event-signing key: the node's token certifies an Ed25519 key.

    Valid until `now + lifetime` or the node certificate's notAfter, whichever
    comes first (a node cannot vouch past its own validity).
    """
    _require_own_ed25519(node_token, node_cert, node_name, signing_public_key, "event signer")
    if now.tzinfo is None:
        raise BadCertificateRequest("`now` must be timezone-aware (UTC)")
    start = now.astimezone(timezone.utc).replace(microsecond=0)
    lifetime = min(lifetime, node_cert.not_valid_after_utc - start)
    if lifetime <= timedelta(0):
        raise BadCertificateRequest(
            f"the node certificate expired at {node_cert.not_valid_after_utc.isoformat()}: it cannot certify a signer"
        )
    builder = _issued_builder(node_cert, signing_public_key, "signer", node_name, serial, entropy, now, lifetime)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(_key_usage(), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([EVENT_SIGNING_EKU_OID]), critical=False)
    return _sign_issued(node_token, node_cert, builder)


def client_certificate(
    issuer_token: Token,
    issuer_cert: x509.Certificate,
    client_public_key: IdentityPublicKey,
    *,
    client_name: str,
    now: datetime,
    lifetime: timedelta = DEFAULT_CLIENT_LIFETIME,
    admin: bool = False,
    serial: int | None = None,
    entropy: Entropy = os.urandom,
) -> x509.Certificate:
    """A client certificate, issued by the root or by an admin client.

    `admin=True` (root only) makes a CA with path length 0 that may issue
    client certificates; what an admin may *do* is still the policy table's call.
    """
    issuer = _require_issuer(issuer_token, issuer_cert, ("root", "client"), "a client certificate")
    if issuer.kind == "client" and not is_ca(issuer_cert):
        raise BadCertificateRequest(f"client {issuer.name!r} is not an admin and cannot issue client certificates")
    if admin and issuer.kind != "root":
        raise BadCertificateRequest("only the root issues admin certificates")
    _require_identity_key(client_public_key, "client")
    builder = _issued_builder(issuer_cert, client_public_key, "client", client_name, serial, entropy, now, lifetime)
    builder = builder.add_extension(x509.BasicConstraints(ca=admin, path_length=0 if admin else None), critical=True)
    builder = builder.add_extension(_key_usage(cert_sign=admin), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return _sign_issued(issuer_token, issuer_cert, builder)


def is_ca(cert: x509.Certificate) -> bool:
    """True if `cert` has basicConstraints CA:TRUE."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


# --- signing through a token -----------------------------------------------


def sign_with_token(
    token: Token, builder: x509.CertificateBuilder, issuer_public_key: IdentityPublicKey
) -> x509.Certificate:
    """Sign `builder` with `token`'s identity key (which must be `issuer_public_key`)."""
    algorithm = identity_algorithm_of(issuer_public_key)
    draft = builder.sign(_throwaway_key(algorithm), None if algorithm == "ed25519" else hashes.SHA256())
    # Token.sign meets X.509 as it is: Ed25519 signs the TBS bytes themselves,
    # P-256 returns the DER ECDSA-Sig-Value over SHA-256(TBS) that
    # ecdsa-with-SHA256 puts in the BIT STRING.
    signature = token.sign(draft.tbs_certificate_bytes)
    tbs, signature_algorithm, _ = _der_sequence_items(draft.public_bytes(serialization.Encoding.DER))
    der = _der(0x30, tbs + signature_algorithm + _der(0x03, b"\x00" + signature))
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise TokenError(f"token signature did not form a valid certificate ({len(signature)}-byte signature)") from exc


@functools.cache
def _throwaway_key(algorithm: str) -> Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    # Only its algorithm matters: its signature is cut out and replaced, so
    # one key per process is as good as one per certificate.
    if algorithm == "ed25519":
        return Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_sequence_items(der: bytes) -> list[bytes]:
    """The raw TLVs inside the outer SEQUENCE of `der` (single-byte tags, definite lengths)."""

    def read_tlv(offset: int) -> tuple[int, int]:
        # Returns (start of content, end of TLV).
        first = der[offset + 1]
        if first < 0x80:
            return offset + 2, offset + 2 + first
        count = first & 0x7F
        length = int.from_bytes(der[offset + 2 : offset + 2 + count], "big")
        return offset + 2 + count, offset + 2 + count + length

    if der[0] != 0x30:
        raise AssertionError("cryptography produced a certificate that is not a DER SEQUENCE")
    offset, end = read_tlv(0)
    items = []
    while offset < end:
        _, item_end = read_tlv(offset)
        items.append(der[offset:item_end])
        offset = item_end
    return items


# --- builder internals -----------------------------------------------------


def _base_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: IdentityPublicKey,
    serial: int | None,
    entropy: Entropy | None,
    now: datetime,
    lifetime: timedelta,
    kind: str,
    network: str,
    name: str | None,
) -> x509.CertificateBuilder:
    if now.tzinfo is None:
        raise BadCertificateRequest("`now` must be timezone-aware (UTC)")
    if lifetime <= timedelta(0):
        raise BadCertificateRequest(f"certificate lifetime must be positive, got {lifetime}")
    if serial is None:
        assert entropy is not None, "a builder without a serial needs entropy"
        serial = (int.from_bytes(entropy(20), "big") >> 1) or 1
    if not 1 <= serial <= MAX_SERIAL:
        raise BadCertificateRequest(f"certificate serial must be 1..2**159-1, got {serial}")
    start = now.astimezone(timezone.utc).replace(microsecond=0)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri(network, kind, name))])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(start - CLOCK_SKEW_BACKDATE)
        .not_valid_after(start + lifetime)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _issued_builder(
    issuer_cert: x509.Certificate,
    public_key: IdentityPublicKey,
    kind: str,
    name: str,
    serial: int | None,
    entropy: Entropy | None,
    now: datetime,
    lifetime: timedelta,
) -> x509.CertificateBuilder:
    network = certificate_identity(issuer_cert).network_id
    organisation = issuer_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    common_name = f"{name} {kind}" if kind in NODE_SUFFIX_KINDS else name
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(organisation[0].value))] if organisation else []
    attributes += [
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    builder = _base_builder(
        x509.Name(attributes), issuer_cert.subject, public_key, serial, entropy, now, lifetime, kind, network, name
    )
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())  # type: ignore[arg-type]
    return builder.add_extension(aki, critical=False)


def _require_issuer(token: Token, issuer_cert: x509.Certificate, kinds: tuple[str, ...], what: str) -> Identity:
    try:
        issuer = certificate_identity(issuer_cert)
    except ValueError as exc:
        raise BadCertificateRequest(f"issuer certificate is not a keyswarm certificate: {exc}") from exc
    if issuer.kind not in kinds:
        raise BadCertificateRequest(f"a {issuer.kind} certificate cannot issue {what}")
    held = public_key_fingerprint(token.identity_public_key())
    if held != public_key_fingerprint(issuer_cert.public_key()):  # type: ignore[arg-type]
        raise BadCertificateRequest(f"the token does not hold the key of the issuing {issuer.kind} certificate")
    return issuer


def _require_identity_key(public_key: object, kind: str) -> None:
    try:
        identity_algorithm_of(public_key)
    except TokenError as exc:
        raise BadCertificateRequest(f"{kind} key: {exc}") from exc


def _sign_issued(token: Token, issuer_cert: x509.Certificate, builder: x509.CertificateBuilder) -> x509.Certificate:
    cert = sign_with_token(token, builder, issuer_cert.public_key())  # type: ignore[arg-type]
    _check_issued_by(cert, issuer_cert)
    return cert


def _check_issued_by(cert: x509.Certificate, issuer_cert: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer_cert)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise TokenError("the token's signature does not verify under the issuer certificate's key") from exc


def _key_usage(*, signature: bool = True, cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def certificate_fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 over the certificate's DER: the name revocation lists use."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
