"""The event-signer certificate kind: issued by a node through its token, verified up to the root.

`keyswarm://<net>/node/<name>/signer` certifies the long-lived Ed25519 key
that signs a node's event-log checkpoints. It must never pass for a sub-key
(which authenticates sessions), a node or a client certificate, nor the
reverse.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from keyswarm.crypto.certificates import (
    EVENT_SIGNING_EKU_OID,
    BadCertificateRequest,
    certificate_identity,
    identity_uri,
    node_certificate,
    parse_identity_uri,
    signer_certificate,
)
from keyswarm.crypto.chain_verify import verify_chain
from test_certificates import ALGORITHM_PAIRS, NOW, Pki, build_pki, reason_of  # tests/unit is on sys.path

SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module", params=ALGORITHM_PAIRS, ids=lambda pair: f"root={pair[0]},node={pair[1]}")
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"), *request.param)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("foreign"), "ed25519", "ed25519", seed=99)


def signer(pki: Pki, **kwargs: object) -> x509.Certificate:
    options = {"node_name": "n1", "now": NOW, **kwargs}
    return signer_certificate(pki.node_token, pki.node, SIGNING_KEY.public_key(), **options)  # type: ignore[arg-type]


def test_the_signer_uri_is_its_own_kind_under_the_node() -> None:
    network = "0" * 32
    uri = identity_uri(network, "signer", "n1")
    assert uri == f"keyswarm://{network}/node/n1/signer"
    identity = parse_identity_uri(uri)
    assert (identity.kind, identity.name, identity.uri) == ("signer", "n1", uri)
    # The node's other identities parse to other kinds: none can pose as another.
    assert parse_identity_uri(f"keyswarm://{network}/node/n1/subkey").kind == "subkey"
    assert parse_identity_uri(f"keyswarm://{network}/node/n1").kind == "node"
    for bad in (f"keyswarm://{network}/node/n1/signer/x", f"keyswarm://{network}/client/n1/signer",
                f"keyswarm://{network}/node/n1/events"):
        with pytest.raises(ValueError):
            parse_identity_uri(bad)


def test_a_signer_certificate_is_issued_by_the_node_and_verifies_up_to_the_root(pki: Pki) -> None:
    cert = signer(pki)
    identity = certificate_identity(cert)
    assert (identity.kind, identity.name, identity.network_id) == ("signer", "n1", pki.network)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [EVENT_SIGNING_EKU_OID]  # never serverAuth / clientAuth: no session with it
    assert ExtendedKeyUsageOID.CLIENT_AUTH not in usages and ExtendedKeyUsageOID.SERVER_AUTH not in usages
    assert cert.issuer == pki.node.subject
    verified = verify_chain(cert, [pki.node], pki.root, now=NOW, network_id=pki.network, expected_kind="signer")
    assert (verified.kind, verified.name) == ("signer", "n1")
    assert verified.public_key.public_bytes_raw() == SIGNING_KEY.public_key().public_bytes_raw()  # type: ignore[union-attr]
    assert verified.agreement_public_key is None


def test_a_signer_certificate_never_outlives_its_node_certificate(pki: Pki) -> None:
    cert = signer(pki, lifetime=timedelta(days=5000))
    assert cert.not_valid_after_utc == pki.node.not_valid_after_utc
    short = signer(pki, lifetime=timedelta(days=3))
    assert short.not_valid_after_utc == NOW + timedelta(days=3)
    with pytest.raises(BadCertificateRequest, match="expired"):
        signer(pki, now=pki.node.not_valid_after_utc + timedelta(seconds=1))


def test_the_builder_refuses_what_it_must_not_issue(pki: Pki) -> None:
    with pytest.raises(BadCertificateRequest, match="cannot certify the event signer of node 'n2'"):
        signer(pki, node_name="n2")
    with pytest.raises(BadCertificateRequest, match="Ed25519"):
        signer_certificate(pki.node_token, pki.node, ec.generate_private_key(ec.SECP256R1()).public_key(),
                           node_name="n1", now=NOW)  # fmt: skip
    with pytest.raises(BadCertificateRequest, match="root certificate cannot issue"):
        signer_certificate(pki.root_token, pki.root, SIGNING_KEY.public_key(), node_name="n1", now=NOW)
    with pytest.raises(BadCertificateRequest, match="does not hold"):  # n2's token, n1's certificate
        signer_certificate(pki.other_node_token, pki.node, SIGNING_KEY.public_key(), node_name="n1", now=NOW)


def test_a_signer_of_another_network_is_wrong_network(pki: Pki, foreign: Pki) -> None:
    theirs = signer(foreign)
    assert reason_of(theirs, [foreign.node], pki.root, now=NOW, network_id=pki.network,
                     expected_kind="signer") == "wrong_network"  # fmt: skip
    # Presented with our network id but their root: the root is not ours.
    assert reason_of(theirs, [foreign.node], foreign.root, now=NOW, network_id=pki.network,
                     expected_kind="signer") == "wrong_network"  # fmt: skip


def test_a_signer_presented_with_another_nodes_certificate_is_refused(pki: Pki) -> None:
    cert = signer(pki)
    assert reason_of(cert, [pki.other_node], pki.root, now=NOW, network_id=pki.network,
                     expected_kind="signer") == "wrong_issuer"  # fmt: skip


def test_a_signer_certificate_naming_another_node_than_its_issuer_is_wrong_issuer(pki: Pki, tmp_path: Path) -> None:
    # A forged shape: n1's token issues a certificate whose URI names n2's signer (the builder refuses it,
    # so it is made by hand the way a forger would).
    from keyswarm.crypto import certificates as certs

    builder = certs._issued_builder(pki.node, SIGNING_KEY.public_key(), "signer", "n2", None, bytes, NOW,
                                    timedelta(days=1))  # fmt: skip
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([EVENT_SIGNING_EKU_OID]), critical=False)
    forged = certs._sign_issued(pki.node_token, pki.node, builder)
    assert reason_of(forged, [pki.node], pki.root, now=NOW, network_id=pki.network,
                     expected_kind="signer") == "wrong_issuer"  # fmt: skip


def test_an_expired_or_not_yet_valid_signer_is_refused(pki: Pki) -> None:
    cert = signer(pki, lifetime=timedelta(days=1))
    later = NOW + timedelta(days=1, seconds=1)
    assert reason_of(cert, [pki.node], pki.root, now=later, network_id=pki.network, expected_kind="signer") == "expired"
    earlier = NOW - timedelta(minutes=2)  # before the one-minute backdate
    assert reason_of(cert, [pki.node], pki.root, now=earlier, network_id=pki.network,
                     expected_kind="signer") == "not_yet_valid"  # fmt: skip


def test_the_verified_key_is_the_certified_key(pki: Pki) -> None:
    # verify_chain certifies *a* key; callers compare it with the key they hold (the audit and the node do).
    other = Ed25519PrivateKey.generate().public_key()
    cert = signer_certificate(pki.node_token, pki.node, other, node_name="n1", now=NOW)
    verified = verify_chain(cert, [pki.node], pki.root, now=NOW, network_id=pki.network, expected_kind="signer")
    assert verified.public_key.public_bytes_raw() == other.public_bytes_raw()  # type: ignore[union-attr]
    assert verified.public_key.public_bytes_raw() != SIGNING_KEY.public_key().public_bytes_raw()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("leaf", "intermediates", "expected"),
    [
        ("subkey", ["node"], "signer"),  # a sub-key is not an event signer
        ("node", [], "signer"),  # nor is a node certificate
        ("client", [], "signer"),
        ("signer", ["node"], "subkey"),  # and an event signer is no sub-key
        ("signer", ["node"], "node"),
        ("signer", ["node"], "client"),
    ],
)
def test_a_certificate_of_another_kind_is_refused_in_both_directions(
    pki: Pki, leaf: str, intermediates: list[str], expected: str
) -> None:
    cert = signer(pki) if leaf == "signer" else getattr(pki, leaf)
    chain = [getattr(pki, name) for name in intermediates]
    assert reason_of(cert, chain, pki.root, now=NOW, network_id=pki.network, expected_kind=expected) == "wrong_kind"


def test_a_signer_without_its_node_certificate_is_a_malformed_chain(pki: Pki) -> None:
    assert reason_of(signer(pki), [], pki.root, now=NOW, network_id=pki.network, expected_kind="signer") == "malformed"


def test_a_signer_certificate_without_the_event_signing_usage_is_malformed(pki: Pki) -> None:
    from keyswarm.crypto import certificates as certs

    builder = certs._issued_builder(pki.node, SIGNING_KEY.public_key(), "signer", "n1", None, bytes, NOW,
                                    timedelta(days=1))  # fmt: skip
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    odd = certs._sign_issued(pki.node_token, pki.node, builder)
    assert reason_of(odd, [pki.node], pki.root, now=NOW, network_id=pki.network, expected_kind="signer") == "malformed"


def test_a_node_certificate_cannot_be_reissued_as_a_signer_by_the_root(pki: Pki) -> None:
    # The root certifies nodes; a "signer" straight under the root has the wrong shape.
    cert = node_certificate(pki.root_token, pki.root, SIGNING_KEY.public_key(), node_name="n1", now=NOW)
    assert reason_of(cert, [], pki.root, now=NOW, network_id=pki.network, expected_kind="signer") == "wrong_kind"
