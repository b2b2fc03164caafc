"""Certificates signed through soft tokens, and chain verification with each failure reason."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keyswarm.crypto import certificates as certs
from keyswarm.crypto.certificates import (
    SUBKEY_AGREEMENT_KEY_OID,
    BadCertificateRequest,
    agreement_public_key,
    certificate_fingerprint,
    certificate_identity,
    client_certificate,
    identity_uri,
    network_id,
    node_certificate,
    parse_identity_uri,
    root_certificate,
    sign_with_token,
    subkey_certificate,
)
from keyswarm.crypto.chain_verify import CertificateInvalid, verify_chain
from keyswarm.errors import AuthError, TokenError
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.hardware.token import public_key_fingerprint

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
ALGORITHM_PAIRS = [("ed25519", "ed25519"), ("p256", "p256"), ("ed25519", "p256"), ("p256", "ed25519")]


@dataclass
class Pki:
    """One network: root, two nodes with a sub-key each, a client, an admin and a client it issued."""

    root_token: SoftToken
    root: x509.Certificate
    network: str
    node_token: SoftToken
    node: x509.Certificate
    subkey_signing: Ed25519PrivateKey
    subkey_agreement: X25519PrivateKey
    subkey: x509.Certificate
    other_node_token: SoftToken
    other_node: x509.Certificate
    client: x509.Certificate
    admin_token: SoftToken
    admin: x509.Certificate
    admin_client: x509.Certificate


def build_pki(directory: Path, root_algorithm: str, node_algorithm: str, seed: int = 1) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def token(name: str, algorithm: str) -> SoftToken:
        return SoftToken.create(directory / name, algorithm=algorithm, entropy=rng.randbytes)

    root_token = token("root.key", root_algorithm)
    root = root_certificate(root_token, network_name="test net", now=NOW, entropy=rng.randbytes)
    node_token = token("node.key", node_algorithm)
    node = node_certificate(root_token, root, node_token.identity_public_key(), node_name="n1", now=NOW)
    other_node_token = token("other.key", node_algorithm)
    other_node = node_certificate(root_token, root, other_node_token.identity_public_key(), node_name="n2", now=NOW)
    signing = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    agreement = X25519PrivateKey.from_private_bytes(rng.randbytes(32))
    subkey = subkey_certificate(
        node_token, node, signing.public_key(), agreement.public_key(), node_name="n1", serial=17, now=NOW
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = client_certificate(root_token, root, client_key.public_key(), client_name="app1", now=NOW)
    admin_token = token("admin.key", "ed25519")
    admin_key = admin_token.identity_public_key()
    admin = client_certificate(root_token, root, admin_key, client_name="ops", now=NOW, admin=True)
    admin_client = client_certificate(
        admin_token, admin, Ed25519PrivateKey.generate().public_key(), client_name="app2", now=NOW
    )
    return Pki(
        root_token, root, network_id(root), node_token, node, signing, agreement, subkey,
        other_node_token, other_node, client, admin_token, admin, admin_client,
    )  # fmt: skip


@pytest.fixture(scope="module", params=ALGORITHM_PAIRS, ids=lambda pair: f"root={pair[0]},node={pair[1]}")
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"), *request.param)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another network, built the same way."""
    return build_pki(tmp_path_factory.mktemp("foreign"), "ed25519", "ed25519", seed=99)


def reason_of(*args: object, **kwargs: object) -> str:
    with pytest.raises(CertificateInvalid) as info:
        verify_chain(*args, **kwargs)  # type: ignore[arg-type]
    assert info.value.reason in str(info.value) and info.value.detail
    return info.value.reason


def extension(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def flip_signature_byte(cert: x509.Certificate) -> bytes:
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the DER is the last byte of the signature BIT STRING
    return bytes(der)


# --- identities ---------------------------------------------------------------------


def test_network_id_is_the_first_16_bytes_of_sha256_over_the_root_spki(pki: Pki) -> None:
    spki = pki.root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pki.network == hashlib.sha256(spki).digest()[:16].hex()
    assert network_id(pki.root_token.identity_public_key()) == pki.network
    assert len(pki.network) == 32


@pytest.mark.parametrize(
    ("kind", "name", "path"),
    [("root", None, "root"), ("node", "n1", "node/n1"), ("client", "app-1.x", "client/app-1.x"),
     ("subkey", "n1", "node/n1/subkey")],
)  # fmt: skip
def test_identity_uris_round_trip(kind: str, name: str | None, path: str) -> None:
    network = "0123456789abcdef0123456789abcdef"
    uri = identity_uri(network, kind, name)
    assert uri == f"keyswarm://{network}/{path}"
    parsed = parse_identity_uri(uri)
    assert (parsed.network_id, parsed.kind, parsed.name, parsed.uri) == (network, kind, name, uri)


@pytest.mark.parametrize(
    "uri",
    [
        "https://0123456789abcdef0123456789abcdef/node/n1",
        "keyswarm://0123456789ABCDEF0123456789ABCDEF/node/n1",
        "keyswarm://0123/node/n1",
        "keyswarm://0123456789abcdef0123456789abcdef/node/",
        "keyswarm://0123456789abcdef0123456789abcdef/node/-x",
        "keyswarm://0123456789abcdef0123456789abcdef/node/a/b",
        "keyswarm://0123456789abcdef0123456789abcdef/admin/x",
        "keyswarm://0123456789abcdef0123456789abcdef/root/x",
        "keyswarm://0123456789abcdef0123456789abcdef/client/" + "x" * 49,
    ],
)
def test_bad_identity_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_identity_uri(uri)


# --- builders ------------------------------------------------------------------------


def test_root_is_a_self_signed_ca_with_path_length_1(pki: Pki) -> None:
    root = pki.root
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    constraints = extension(root, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 1
    usage = extension(root, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert certificate_identity(root).uri == f"keyswarm://{pki.network}/root"
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "test net"
    assert root.not_valid_before_utc == NOW - certs.CLOCK_SKEW_BACKDATE
    assert root.not_valid_after_utc == NOW + certs.DEFAULT_ROOT_LIFETIME
    assert pki.root_token.read_certificate("identity") is None, "a builder must not write to the token"


def test_node_is_a_ca_with_path_length_0_issued_by_the_root(pki: Pki) -> None:
    node = pki.node
    node.verify_directly_issued_by(pki.root)
    constraints = extension(node, x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = extension(node, x509.KeyUsage).value
    assert usage.digital_signature and usage.key_cert_sign
    assert node.public_key() == pki.node_token.identity_public_key()
    assert certificate_identity(node).uri == f"keyswarm://{pki.network}/node/n1"
    root_ski = extension(pki.root, x509.SubjectKeyIdentifier).value.digest
    assert extension(node, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski
    assert node.not_valid_after_utc == NOW + certs.DEFAULT_NODE_LIFETIME


def test_subkey_certifies_the_signing_and_agreement_keys_together(pki: Pki) -> None:
    subkey = pki.subkey
    subkey.verify_directly_issued_by(pki.node)
    assert subkey.serial_number == 17
    assert not extension(subkey, x509.BasicConstraints).value.ca
    assert subkey.public_key() == pki.subkey_signing.public_key()
    agreement = subkey.extensions.get_extension_for_oid(SUBKEY_AGREEMENT_KEY_OID)
    assert not agreement.critical
    assert agreement_public_key(subkey) == pki.subkey_agreement.public_key()
    assert certificate_identity(subkey).uri == f"keyswarm://{pki.network}/node/n1/subkey"
    assert subkey.not_valid_after_utc - NOW == timedelta(hours=1)


def test_client_certificates_carry_client_auth_and_admins_are_cas(pki: Pki) -> None:
    for cert in (pki.client, pki.admin, pki.admin_client):
        assert ExtendedKeyUsageOID.CLIENT_AUTH in extension(cert, x509.ExtendedKeyUsage).value
    assert not extension(pki.client, x509.BasicConstraints).value.ca
    admin_constraints = extension(pki.admin, x509.BasicConstraints).value
    assert admin_constraints.ca and admin_constraints.path_length == 0
    pki.admin_client.verify_directly_issued_by(pki.admin)


def test_builders_refuse_what_they_must_not_issue(pki: Pki) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(BadCertificateRequest, match="does not hold the key"):
        node_certificate(pki.node_token, pki.root, key, node_name="x", now=NOW)
    with pytest.raises(BadCertificateRequest, match="a node certificate cannot issue a client"):
        client_certificate(pki.node_token, pki.node, key, client_name="x", now=NOW)
    with pytest.raises(BadCertificateRequest, match="cannot issue a node"):
        node_certificate(pki.admin_token, pki.admin, key, node_name="x", now=NOW)
    with pytest.raises(BadCertificateRequest, match="only the root issues admin"):
        client_certificate(pki.admin_token, pki.admin, key, client_name="x", now=NOW, admin=True)
    with pytest.raises(BadCertificateRequest, match="cannot certify the sub-key of node 'n2'"):
        subkey_certificate(pki.node_token, pki.node, key, X25519PrivateKey.generate().public_key(),
                           node_name="n2", serial=1, now=NOW)  # fmt: skip
    with pytest.raises(BadCertificateRequest, match="agreement key must be X25519"):
        subkey_certificate(pki.node_token, pki.node, key, key,  # type: ignore[arg-type]
                           node_name="n1", serial=1, now=NOW)  # fmt: skip
    with pytest.raises(BadCertificateRequest, match="name"):
        node_certificate(pki.root_token, pki.root, key, node_name="bad/name", now=NOW)
    with pytest.raises(BadCertificateRequest, match="timezone-aware"):
        node_certificate(pki.root_token, pki.root, key, node_name="x", now=NOW.replace(tzinfo=None))
    with pytest.raises(BadCertificateRequest, match="serial"):
        subkey_certificate(pki.node_token, pki.node, key, X25519PrivateKey.generate().public_key(),
                           node_name="n1", serial=0, now=NOW)  # fmt: skip
    with pytest.raises(BadCertificateRequest, match="lifetime"):
        node_certificate(pki.root_token, pki.root, key, node_name="x", now=NOW, lifetime=timedelta(0))


def test_a_client_that_is_not_an_admin_cannot_issue(pki: Pki, tmp_path: Path) -> None:
    holder = SoftToken.create(tmp_path / "c.key")
    plain = client_certificate(pki.root_token, pki.root, holder.identity_public_key(), client_name="c", now=NOW)
    with pytest.raises(BadCertificateRequest, match="not an admin"):
        client_certificate(holder, plain, Ed25519PrivateKey.generate().public_key(), client_name="d", now=NOW)


class LyingToken(SoftToken):
    """Claims the root's public key but signs with its own: the builder must notice."""

    claimed: object

    def identity_public_key(self):  # type: ignore[override]
        return self.claimed


def test_a_token_signing_with_the_wrong_key_is_caught_by_the_builder(pki: Pki, tmp_path: Path) -> None:
    liar = LyingToken.create(tmp_path / "liar.key", algorithm=pki.root_token.info().identity_algorithm)
    liar.claimed = pki.root_token.identity_public_key()
    with pytest.raises(TokenError, match="does not verify"):
        node_certificate(liar, pki.root, Ed25519PrivateKey.generate().public_key(), node_name="x", now=NOW)


# --- verification: success ------------------------------------------------------------


def test_node_chain_verifies(pki: Pki) -> None:
    result = verify_chain(pki.node, [], pki.root, now=NOW, network_id=pki.network)
    assert (result.kind, result.name, result.network_id) == ("node", "n1", pki.network)
    assert result.uri == f"keyswarm://{pki.network}/node/n1"
    assert result.public_key == pki.node_token.identity_public_key()
    assert result.fingerprint == certificate_fingerprint(pki.node)
    assert result.issuer_fingerprint == certificate_fingerprint(pki.root)
    assert result.agreement_public_key is None


def test_subkey_chain_verifies_and_yields_the_agreement_key(pki: Pki) -> None:
    result = verify_chain(pki.subkey, [pki.node], pki.root, now=NOW, network_id=pki.network, expected_kind="subkey")
    assert (result.kind, result.name, result.serial) == ("subkey", "n1", 17)
    assert result.public_key == pki.subkey_signing.public_key()
    assert result.agreement_public_key == pki.subkey_agreement.public_key()
    assert result.not_valid_after == NOW + timedelta(hours=1)


def test_client_chains_verify_from_the_root_and_from_an_admin(pki: Pki) -> None:
    direct = verify_chain(pki.client, [], pki.root, now=NOW, network_id=pki.network, expected_kind="client")
    assert direct.name == "app1"
    via_admin = verify_chain(
        pki.admin_client, [pki.admin], pki.root, now=NOW, network_id=pki.network, expected_kind="client"
    )
    assert via_admin.name == "app2"


def test_chains_verify_from_der_bytes(pki: Pki) -> None:
    der = [c.public_bytes(serialization.Encoding.DER) for c in (pki.subkey, pki.node, pki.root)]
    result = verify_chain(der[0], [der[1]], der[2], now=NOW, network_id=pki.network, expected_kind="subkey")
    assert result.name == "n1"


# --- verification: each failure reason ----------------------------------------------------


def test_expired_certificates_are_refused(pki: Pki) -> None:
    after_subkey = pki.subkey.not_valid_after_utc + timedelta(seconds=1)
    assert reason_of(pki.subkey, [pki.node], pki.root, now=after_subkey, network_id=pki.network,
                     expected_kind="subkey") == "expired"  # fmt: skip
    after_node = pki.node.not_valid_after_utc + timedelta(seconds=1)
    assert reason_of(pki.node, [], pki.root, now=after_node, network_id=pki.network) == "expired"
    after_root = pki.root.not_valid_after_utc + timedelta(days=1)
    assert reason_of(pki.client, [], pki.root, now=after_root, network_id=pki.network,
                     expected_kind="client") == "expired"  # fmt: skip


def test_not_yet_valid_certificates_are_refused(pki: Pki) -> None:
    early = pki.node.not_valid_before_utc - timedelta(seconds=1)
    assert reason_of(pki.node, [], pki.root, now=early, network_id=pki.network) == "not_yet_valid"
    # The backdate tolerates a verifier whose clock is a little behind the issuer's.
    verify_chain(pki.node, [], pki.root, now=NOW - timedelta(seconds=30), network_id=pki.network)


def test_a_subkey_presented_with_another_nodes_certificate_is_wrong_issuer(pki: Pki) -> None:
    assert reason_of(pki.subkey, [pki.other_node], pki.root, now=NOW, network_id=pki.network,
                     expected_kind="subkey") == "wrong_issuer"  # fmt: skip


def test_a_subkey_under_a_client_certificate_is_wrong_issuer(pki: Pki) -> None:
    assert reason_of(pki.subkey, [pki.admin], pki.root, now=NOW, network_id=pki.network,
                     expected_kind="subkey") == "wrong_issuer"  # fmt: skip


def test_a_client_vouched_for_by_a_non_admin_client_is_wrong_issuer(pki: Pki) -> None:
    assert reason_of(pki.admin_client, [pki.client], pki.root, now=NOW, network_id=pki.network,
                     expected_kind="client") == "wrong_issuer"  # fmt: skip


def test_a_node_certificate_as_intermediate_for_a_node_is_malformed_chain(pki: Pki) -> None:
    assert reason_of(pki.node, [pki.other_node], pki.root, now=NOW, network_id=pki.network) == "malformed"
    assert reason_of(pki.subkey, [], pki.root, now=NOW, network_id=pki.network, expected_kind="subkey") == "malformed"


def test_a_flipped_signature_byte_is_bad_signature(pki: Pki) -> None:
    assert reason_of(flip_signature_byte(pki.node), [], pki.root, now=NOW, network_id=pki.network) == "bad_signature"
    assert reason_of(flip_signature_byte(pki.subkey), [pki.node], pki.root, now=NOW, network_id=pki.network,
                     expected_kind="subkey") == "bad_signature"  # fmt: skip


def test_a_forged_node_certificate_naming_our_network_is_bad_signature(pki: Pki, foreign: Pki) -> None:
    # The forger copies our root's name and our network id; only the signature betrays it.
    builder = certs._issued_builder(
        pki.root, foreign.node_token.identity_public_key(), "node", "evil", None, random.Random(5).randbytes, NOW,
        timedelta(days=1),
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(certs._key_usage(cert_sign=True), critical=True)
    forged = sign_with_token(foreign.root_token, builder, foreign.root_token.identity_public_key())
    assert reason_of(forged, [], pki.root, now=NOW, network_id=pki.network) == "bad_signature"


def test_certificates_of_another_network_are_wrong_network(pki: Pki, foreign: Pki) -> None:
    # Their node under our pinned root,
    assert reason_of(foreign.node, [], pki.root, now=NOW, network_id=pki.network) == "wrong_network"
    # their whole chain offered against our network id,
    assert reason_of(foreign.node, [], foreign.root, now=NOW, network_id=pki.network) == "wrong_network"
    # and our sub-key vouched for by their node.
    assert reason_of(pki.subkey, [foreign.node], pki.root, now=NOW, network_id=pki.network,
                     expected_kind="subkey") == "wrong_network"  # fmt: skip


def test_a_subkey_of_a_revoked_node_is_refused(pki: Pki) -> None:
    by_serial = {pki.node.serial_number}
    by_fingerprint = {certificate_fingerprint(pki.node)}
    by_hex = {certificate_fingerprint(pki.node).hex()}
    by_predicate = lambda cert: certificate_identity(cert).name == "n1" and cert.serial_number != 17  # noqa: E731
    for revoked in (by_serial, by_fingerprint, by_hex, by_predicate):
        assert reason_of(pki.subkey, [pki.node], pki.root, now=NOW, network_id=pki.network, revoked=revoked,
                         expected_kind="subkey") == "revoked"  # fmt: skip
        assert reason_of(pki.node, [], pki.root, now=NOW, network_id=pki.network, revoked=revoked) == "revoked"
    # Another node's revocation does not touch n1.
    verify_chain(pki.subkey, [pki.node], pki.root, now=NOW, network_id=pki.network,
                 revoked={pki.other_node.serial_number}, expected_kind="subkey")  # fmt: skip


def test_revocation_wins_over_expiry(pki: Pki) -> None:
    late = pki.node.not_valid_after_utc + timedelta(days=1)
    assert reason_of(pki.node, [], pki.root, now=late, network_id=pki.network,
                     revoked={pki.node.serial_number}) == "revoked"  # fmt: skip


def test_clients_revoked_through_their_admin(pki: Pki) -> None:
    assert reason_of(pki.admin_client, [pki.admin], pki.root, now=NOW, network_id=pki.network,
                     revoked={pki.admin.serial_number}, expected_kind="client") == "revoked"  # fmt: skip


@pytest.mark.parametrize(
    ("leaf", "intermediates", "expected"),
    [("node", [], "client"), ("client", [], "node"), ("subkey", ["node"], "node"), ("node", [], "subkey"),
     ("admin", [], "node")],
)  # fmt: skip
def test_a_certificate_of_the_wrong_kind_is_refused(
    pki: Pki, leaf: str, intermediates: list[str], expected: str
) -> None:
    chain = [getattr(pki, name) for name in intermediates]
    assert reason_of(getattr(pki, leaf), chain, pki.root, now=NOW, network_id=pki.network,
                     expected_kind=expected) == "wrong_kind"  # fmt: skip


def test_a_root_as_a_leaf_is_wrong_kind(pki: Pki) -> None:
    assert reason_of(pki.root, [], pki.root, now=NOW, network_id=pki.network) == "wrong_kind"


def test_malformed_input_is_refused_with_a_reason(pki: Pki) -> None:
    root_der = pki.root.public_bytes(serialization.Encoding.DER)
    for leaf in (b"", b"\x30\x03abc", b"not a certificate", bytes(20_000)):
        assert reason_of(leaf, [], pki.root, now=NOW, network_id=pki.network) == "malformed"
    assert reason_of(pki.node, [], root_der[:-5], now=NOW, network_id=pki.network) == "malformed"
    assert reason_of("text", [], pki.root, now=NOW, network_id=pki.network) == "malformed"
    assert reason_of(pki.subkey, [pki.node] * 1000, pki.root, now=NOW, network_id=pki.network,
                     expected_kind="subkey") == "malformed"  # fmt: skip
    assert reason_of(pki.node, [], pki.other_node, now=NOW, network_id=pki.network) == "malformed"


def test_a_certificate_without_a_keyswarm_identity_is_malformed(pki: Pki) -> None:
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    stranger = (
        x509.CertificateBuilder().subject_name(name).issuer_name(pki.root.subject).public_key(key.public_key())
        .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1)).sign(key, None)
    )  # fmt: skip
    assert reason_of(stranger, [], pki.root, now=NOW, network_id=pki.network) == "malformed"


def test_certificate_invalid_is_an_auth_error_and_bad_arguments_are_programming_errors(pki: Pki) -> None:
    assert issubclass(CertificateInvalid, AuthError)
    with pytest.raises(ValueError, match="expected_kind"):
        verify_chain(pki.node, [], pki.root, now=NOW, network_id=pki.network, expected_kind="root")
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_chain(pki.node, [], pki.root, now=NOW.replace(tzinfo=None), network_id=pki.network)


def test_a_p256_node_token_key_certified_under_an_ed25519_root_keeps_its_fingerprint(pki: Pki) -> None:
    # The certificate carries exactly the token's key, whatever the issuer's algorithm.
    assert public_key_fingerprint(pki.node.public_key()) == public_key_fingerprint(pki.node_token.identity_public_key())
