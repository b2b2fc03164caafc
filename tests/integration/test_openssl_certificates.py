"""Certificates signed through tokens are standard X.509: the `openssl` CLI reads and verifies them.

Each kind (node, sub-key, event signer, client, admin-issued client) for each root and node
algorithm is written as PEM and checked with `openssl x509 -text -noout` and
`openssl verify -CAfile root.pem [-untrusted issuer.pem] leaf.pem`, at a fixed
`-attime` so the test never depends on the wall clock.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keyswarm.crypto.certificates import (
    client_certificate,
    network_id,
    node_certificate,
    root_certificate,
    signer_certificate,
    subkey_certificate,
)
from keyswarm.hardware.soft_token import SoftToken

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command-line tool is not installed"),
]

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
ALGORITHM_PAIRS = [("ed25519", "ed25519"), ("p256", "p256"), ("ed25519", "p256"), ("p256", "ed25519")]
OPENSSL_TIMEOUT_S = 30


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=OPENSSL_TIMEOUT_S, check=False
    )


def write_pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def issue_all(directory: Path, root_algorithm: str, node_algorithm: str, seed: int = 1) -> dict[str, Path]:
    """Every certificate kind of one network, as PEM files in `directory`."""
    rng = random.Random(seed)

    def token(name: str, algorithm: str) -> SoftToken:
        return SoftToken.create(directory / name, algorithm=algorithm, entropy=rng.randbytes)

    root_token = token("root.key", root_algorithm)
    root = root_certificate(root_token, network_name="openssl test", now=NOW)
    node_token = token("node.key", node_algorithm)
    node = node_certificate(root_token, root, node_token.identity_public_key(), node_name="n1", now=NOW)
    subkey = subkey_certificate(
        node_token, node, Ed25519PrivateKey.generate().public_key(), X25519PrivateKey.generate().public_key(),
        node_name="n1", serial=42, now=NOW,
    )  # fmt: skip
    signer = signer_certificate(node_token, node, Ed25519PrivateKey.generate().public_key(), node_name="n1", now=NOW)
    client_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    client = client_certificate(root_token, root, client_key, client_name="app1", now=NOW)
    admin_token = token("admin.key", node_algorithm)
    admin_key = admin_token.identity_public_key()
    admin = client_certificate(root_token, root, admin_key, client_name="ops", now=NOW, admin=True)
    admin_client = client_certificate(admin_token, admin, Ed25519PrivateKey.generate().public_key(),
                                      client_name="app2", now=NOW)  # fmt: skip
    certs = {
        "root": root, "node": node, "subkey": subkey, "signer": signer,
        "client": client, "admin": admin, "admin_client": admin_client,
    }  # fmt: skip
    paths = {name: write_pem(directory / f"{name}.pem", cert) for name, cert in certs.items()}
    (directory / "network-id").write_text(network_id(root))
    return paths


@pytest.fixture(scope="module", params=ALGORITHM_PAIRS, ids=lambda pair: f"root={pair[0]},node={pair[1]}")
def issued(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return issue_all(tmp_path_factory.mktemp("pki"), *request.param)


# (leaf, untrusted issuer or None, URI path after the network id)
KINDS = [
    ("root", None, "root"),
    ("node", None, "node/n1"),
    ("subkey", "node", "node/n1/subkey"),
    ("signer", "node", "node/n1/signer"),
    ("client", None, "client/app1"),
    ("admin", None, "client/ops"),
    ("admin_client", "admin", "client/app2"),
]


@pytest.mark.parametrize(("leaf", "issuer", "uri_path"), KINDS, ids=[kind[0] for kind in KINDS])
def test_openssl_reads_the_certificate_and_shows_its_uri(issued: dict[str, Path], leaf: str, issuer: str | None,
                                                        uri_path: str) -> None:  # fmt: skip
    result = openssl("x509", "-in", issued[leaf], "-text", "-noout")
    assert result.returncode == 0, result.stderr
    network = (issued["root"].parent / "network-id").read_text()
    assert f"URI:keyswarm://{network}/{uri_path}" in result.stdout, result.stdout


@pytest.mark.parametrize(("leaf", "issuer", "uri_path"), KINDS, ids=[kind[0] for kind in KINDS])
def test_openssl_verifies_the_chain_to_the_root(issued: dict[str, Path], leaf: str, issuer: str | None,
                                               uri_path: str) -> None:  # fmt: skip
    untrusted = ["-untrusted", issued[issuer]] if issuer else []
    attime = str(int(NOW.timestamp()))
    result = openssl("verify", "-attime", attime, "-CAfile", issued["root"], *untrusted, issued[leaf])
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stdout + result.stderr


def test_openssl_refuses_a_chain_to_another_root(issued: dict[str, Path], tmp_path: Path) -> None:
    # Guards the positive tests: openssl really checks signatures against the root it is given.
    foreign = issue_all(tmp_path, "ed25519", "ed25519", seed=77)
    attime = str(int(NOW.timestamp()))
    result = openssl("verify", "-attime", attime, "-CAfile", foreign["root"], issued["node"])
    assert result.returncode != 0, result.stdout


def test_openssl_refuses_a_certificate_with_a_flipped_signature_byte(issued: dict[str, Path], tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate(issued["node"].read_bytes())
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    damaged = tmp_path / "damaged.der"
    damaged.write_bytes(bytes(der))
    pem = openssl("x509", "-inform", "DER", "-in", damaged, "-out", tmp_path / "damaged.pem")
    assert pem.returncode == 0, pem.stderr
    attime = str(int(NOW.timestamp()))
    result = openssl("verify", "-attime", attime, "-CAfile", issued["root"], tmp_path / "damaged.pem")
    assert result.returncode != 0, result.stdout
    assert "signature" in (result.stdout + result.stderr).lower()
