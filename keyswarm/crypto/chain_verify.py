"""Chain verification: is this certificate a live keyswarm identity of this network?

Owns `verify_chain`, its result `VerifiedIdentity` and its one failure,
`CertificateInvalid(reason, detail)`.

Rules:
- The shapes are fixed, not discovered: a node certificate is issued by the
  root; a sub-key or event-signer certificate by a node certificate (the
  one intermediate) of the same node name;
  a client certificate by the root or by an admin client certificate. No path
  building, so no path-building ambiguity for a forger to exploit.
- Checks run in a fixed order, and the first failure is the reason given:
  malformed -> wrong_network -> wrong_kind -> wrong_issuer -> bad_signature
  -> revoked -> not_yet_valid / expired. Signatures before time, so a forged
  certificate is reported as forged, never as merely expired; revocation
  before time because a revocation always wins (DESIGN section 1). Validity
  is checked from the root down, so the certificate named is the highest
  one outside its validity: a node whose certificate expired is reported as
  that, not as its sub-key's expiry, which follows from it.
- `now` is an argument (never the clock), so the simulator and tests choose it.
- Certificates arrive from peers as bytes: each is capped at
  `MAX_CERTIFICATE_BYTES`, and any parse failure of the foreign library
  becomes `malformed` here, at the boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from keyswarm.crypto.certificates import (
    EVENT_SIGNING_EKU_OID,
    Identity,
    agreement_public_key,
    certificate_fingerprint,
    certificate_identity,
    is_ca,
    network_id as network_id_of,
)
from keyswarm.errors import AuthError
from keyswarm.hardware.token import IdentityPublicKey, identity_algorithm_of

#: Largest certificate accepted from a peer; ours are under 1 KiB.
MAX_CERTIFICATE_BYTES = 16 * 1024
#: The deepest keyswarm chain is sub-key (or signer) <- node <- root (or client <- admin <- root).
MAX_INTERMEDIATES = 1
EXPECTED_KINDS = ("node", "client", "subkey", "signer")
REASONS = frozenset(
    {"malformed", "wrong_network", "wrong_kind", "wrong_issuer", "bad_signature", "revoked", "not_yet_valid", "expired"}
)

#: A revocation check: a predicate, or a collection of serials (int) and
#: SHA-256 certificate fingerprints (bytes, or hex str).
Revoked = Callable[[x509.Certificate], bool] | Collection[int | bytes | str]

# Exceptions cryptography raises (often lazily, on first access to a field)
# for certificates it cannot make sense of.
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


class CertificateInvalid(AuthError):
    """A certificate chain failed verification; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, f"unknown certificate failure reason {reason!r}"
        self.reason = reason
        self.detail = detail
        super().__init__(f"certificate rejected ({reason}): {detail}")


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedIdentity:
    """A verified leaf. For a sub-key or signer, `name` is its node; for a sub-key `agreement_public_key` is set."""

    kind: str
    name: str
    network_id: str
    uri: str
    public_key: IdentityPublicKey
    serial: int
    fingerprint: bytes
    not_valid_after: datetime
    agreement_public_key: X25519PublicKey | None = None
    issuer_fingerprint: bytes = b""


def verify_chain(
    leaf: x509.Certificate | bytes,
    intermediates: Sequence[x509.Certificate | bytes],
    root: x509.Certificate | bytes,
    *,
    now: datetime,
    network_id: str,
    revoked: Revoked = frozenset(),
    expected_kind: str = "node",
) -> VerifiedIdentity:
    """Verify `leaf` up to the pinned `root` of `network_id` at time `now`.

    Raises `CertificateInvalid` with the first failing check's reason.
    """
    if expected_kind not in EXPECTED_KINDS:
        raise ValueError(f"expected_kind must be one of {EXPECTED_KINDS}, not {expected_kind!r}")
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware (UTC)")
    if len(intermediates) > MAX_INTERMEDIATES:
        raise CertificateInvalid("malformed", f"{len(intermediates)} intermediates; keyswarm chains have at most one")
    leaf_cert = _load(leaf, "leaf")
    middle = [_load(cert, "intermediate") for cert in intermediates]
    root_cert = _load(root, "root")
    chain = [leaf_cert, *middle, root_cert]

    identities = [_identity(cert) for cert in chain]
    root_identity = identities[-1]
    if root_identity.kind != "root":
        raise CertificateInvalid("malformed", f"the root given is {root_identity.uri}, not a root certificate")
    actual_network = _parse(lambda: network_id_of(root_cert), "root public key")
    if actual_network != network_id:
        raise CertificateInvalid(
            "wrong_network", f"the root given is the root of network {actual_network}, not {network_id}"
        )
    if root_identity.network_id != actual_network:
        raise CertificateInvalid(
            "malformed", f"the root certificate names {root_identity.uri}, but its key makes it {actual_network}"
        )
    for identity in identities[:-1]:
        if identity.network_id != network_id:
            raise CertificateInvalid("wrong_network", f"{identity.uri} belongs to network {identity.network_id}")

    _check_shape(chain, identities, expected_kind)
    for child, parent, child_id, parent_id in zip(chain, chain[1:], identities, identities[1:]):
        _check_link(child, parent, child_id, parent_id)
    for cert, identity in zip(chain[:-1], identities):
        if _is_revoked(cert, revoked):
            raise CertificateInvalid("revoked", f"{_describe(cert, identity)} is revoked")
    for cert, identity in reversed(list(zip(chain, identities))):  # root first (module docstring)
        if now < cert.not_valid_before_utc:
            raise CertificateInvalid(
                "not_yet_valid", f"{_describe(cert, identity)} is valid from {cert.not_valid_before_utc.isoformat()}"
            )
        if now > cert.not_valid_after_utc:
            raise CertificateInvalid(
                "expired", f"{_describe(cert, identity)} expired at {cert.not_valid_after_utc.isoformat()}"
            )

    leaf_identity = identities[0]
    assert leaf_identity.name is not None
    return VerifiedIdentity(
        kind=leaf_identity.kind,
        name=leaf_identity.name,
        network_id=network_id,
        uri=leaf_identity.uri,
        public_key=leaf_cert.public_key(),  # type: ignore[arg-type]
        serial=leaf_cert.serial_number,
        fingerprint=certificate_fingerprint(leaf_cert),
        not_valid_after=leaf_cert.not_valid_after_utc,
        agreement_public_key=agreement_public_key(leaf_cert) if expected_kind == "subkey" else None,
        issuer_fingerprint=certificate_fingerprint(chain[1]),
    )


def _load(cert: x509.Certificate | bytes, role: str) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    if not isinstance(cert, (bytes, bytearray, memoryview)):
        raise CertificateInvalid("malformed", f"{role} certificate is a {type(cert).__name__}, not DER bytes")
    if len(cert) > MAX_CERTIFICATE_BYTES:
        raise CertificateInvalid(
            "malformed", f"{role} certificate is {len(cert)} bytes (limit {MAX_CERTIFICATE_BYTES})"
        )
    try:
        return x509.load_der_x509_certificate(bytes(cert))
    except ValueError as exc:
        raise CertificateInvalid("malformed", f"{role} certificate is not DER X.509: {exc}") from exc


def _parse(read: Callable[[], object], what: str) -> object:
    try:
        return read()
    except _PARSE_ERRORS as exc:
        raise CertificateInvalid("malformed", f"cannot read the {what}: {exc}") from exc


def _identity(cert: x509.Certificate) -> Identity:
    return _parse(lambda: certificate_identity(cert), "certificate's keyswarm identity")  # type: ignore[return-value]


def _check_shape(chain: list[x509.Certificate], identities: list[Identity], expected_kind: str) -> None:
    """Kinds and extensions by position: which issuer each kind may have, and what each must carry."""
    leaf, leaf_id = chain[0], identities[0]
    issuers = [identity.kind for identity in identities[1:]]
    if leaf_id.kind != expected_kind:
        raise CertificateInvalid("wrong_kind", f"expected a {expected_kind} certificate, got {leaf_id.uri}")
    allowed = {
        "node": (["root"],),
        "subkey": (["node", "root"],),
        "signer": (["node", "root"],),
        "client": (["root"], ["client", "root"]),
    }
    if issuers not in allowed[expected_kind]:
        shapes = " or ".join(" <- ".join([expected_kind, *shape]) for shape in allowed[expected_kind])
        got = " <- ".join([leaf_id.kind, *issuers])
        if len(issuers) not in {len(shape) for shape in allowed[expected_kind]}:
            raise CertificateInvalid("malformed", f"chain {got} has the wrong length; expected {shapes}")
        raise CertificateInvalid("wrong_issuer", f"chain {got} is not {shapes}")
    leaf_key = _parse(leaf.public_key, "leaf public key")
    _parse(lambda: identity_algorithm_of(leaf_key), "leaf public key type")
    if expected_kind == "subkey":
        if not isinstance(leaf_key, Ed25519PublicKey):
            raise CertificateInvalid("malformed", f"sub-key signing key is {type(leaf_key).__name__}, not Ed25519")
        if _parse(lambda: is_ca(leaf), "basic constraints"):
            raise CertificateInvalid("malformed", "a sub-key certificate must not be a CA")
        _parse(lambda: agreement_public_key(leaf), "sub-key agreement key")
        if identities[1].name != leaf_id.name:
            raise CertificateInvalid(
                "wrong_issuer", f"node {identities[1].name!r} cannot certify sub-keys of node {leaf_id.name!r}"
            )
    if expected_kind == "signer":
        if not isinstance(leaf_key, Ed25519PublicKey):
            raise CertificateInvalid("malformed", f"event signing key is {type(leaf_key).__name__}, not Ed25519")
        if _parse(lambda: is_ca(leaf), "basic constraints"):
            raise CertificateInvalid("malformed", "a signer certificate must not be a CA")
        if not _parse(lambda: _has_usage(leaf, EVENT_SIGNING_EKU_OID), "extended key usage"):
            raise CertificateInvalid("malformed", f"{leaf_id.uri} lacks the event-signing extended key usage")
        if identities[1].name != leaf_id.name:
            raise CertificateInvalid(
                "wrong_issuer", f"node {identities[1].name!r} cannot certify the event signer of node {leaf_id.name!r}"
            )
    if expected_kind == "client" and not _parse(lambda: _has_client_auth(leaf), "extended key usage"):
        raise CertificateInvalid("malformed", f"{leaf_id.uri} lacks the clientAuth extended key usage")


def _check_link(child: x509.Certificate, parent: x509.Certificate, child_id: Identity, parent_id: Identity) -> None:
    """`parent` may issue certificates and did issue `child`."""
    if not _parse(lambda: _can_sign_certificates(parent), "issuer's constraints"):
        raise CertificateInvalid("wrong_issuer", f"{parent_id.uri} is not allowed to issue certificates")
    if child.issuer != parent.subject:
        raise CertificateInvalid(
            "wrong_issuer", f"{child_id.uri} was issued by {child.issuer.rfc4514_string()}, not by {parent_id.uri}"
        )
    try:
        child.verify_directly_issued_by(parent)
    except InvalidSignature as exc:
        raise CertificateInvalid(
            "bad_signature", f"the signature on {child_id.uri} does not verify under {parent_id.uri}"
        ) from exc
    except _PARSE_ERRORS as exc:
        # The names matched but the signature cannot even be checked under the
        # issuer's key (e.g. an Ed25519 signature under a P-256 root): forged.
        raise CertificateInvalid(
            "bad_signature", f"the signature on {child_id.uri} cannot be checked under {parent_id.uri}: {exc}"
        ) from exc


def _can_sign_certificates(cert: x509.Certificate) -> bool:
    if not is_ca(cert):
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return False


def _has_client_auth(cert: x509.Certificate) -> bool:
    return _has_usage(cert, ExtendedKeyUsageOID.CLIENT_AUTH)


def _has_usage(cert: x509.Certificate, usage: x509.ObjectIdentifier) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return usage in usages


def _is_revoked(cert: x509.Certificate, revoked: Revoked) -> bool:
    if callable(revoked):
        return bool(revoked(cert))
    if not revoked:
        return False
    fingerprint = certificate_fingerprint(cert)
    return cert.serial_number in revoked or fingerprint in revoked or fingerprint.hex() in revoked


def _describe(cert: x509.Certificate, identity: Identity) -> str:
    return f"{identity.kind} certificate {identity.uri} (serial {cert.serial_number:x})"
