"""`data_dir/node-signing.pem`: the event signer's certificate, issued at node start and kept beside the key.

`ensure_signer_certificate` uses a stored certificate that checks out and is
not due for renewal, and otherwise has the token issue a new one; a damaged
or hostile file is replaced (with a WARNING naming it), never trusted. And
`open_node_token(signer_public_key=...)` puts the result in the token parts,
where `node_actors` hands it to the storage actor.
"""

from __future__ import annotations

import logging
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.config import node_config
from keyswarm.enrolment import TokenAccess, create_network, enrol_node
from keyswarm.errors import ConfigError
from keyswarm.node.assembly import node_actors
from keyswarm.node.node_token import open_node_token
from keyswarm.node.signer_certificate import (
    CERTIFICATE_FILE,
    MAX_FILE_BYTES,
    ensure_signer_certificate,
    renewal_due,
)
from keyswarm.storage.chain import Signer
from signer_pki import NOW, Network, build_network, der

PUBLIC = Signer(bytes(range(32))).public_key
OTHER_PUBLIC = Signer(bytes(range(1, 33))).public_key


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return build_network(tmp_path_factory.mktemp("ours"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return build_network(tmp_path_factory.mktemp("theirs"), seed=2, nodes=("n1",))


def ensure(net: Network, data_dir: Path | None, *, token: bool = True, now=NOW, public_key: bytes = PUBLIC):
    return ensure_signer_certificate(
        data_dir, token=net.tokens["n1"] if token else None, node_cert=net.nodes["n1"], root=net.root,
        node_name="n1", public_key=public_key, now=now,
    )  # fmt: skip


def stored(data_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data_dir / CERTIFICATE_FILE).read_bytes())


def test_the_first_start_issues_and_stores_the_certificate_and_the_next_reuses_it(net: Network, tmp_path: Path) -> None:
    first = ensure(net, tmp_path)
    path = tmp_path / CERTIFICATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cert = stored(tmp_path)
    assert first.certificate_der == der(cert) and first.intermediates == (der(net.nodes["n1"]),)
    assert first.not_valid_after == net.nodes["n1"].not_valid_after_utc  # as long as the node certificate
    assert [p.name for p in tmp_path.iterdir()] == [CERTIFICATE_FILE]  # no temporary file left behind
    again = ensure(net, tmp_path, now=NOW + timedelta(days=100))
    assert again == first


def test_a_certificate_inside_its_renewal_margin_is_renewed(net: Network, tmp_path: Path) -> None:
    first = ensure(net, tmp_path)
    late = first.not_valid_after - timedelta(days=29)
    assert renewal_due(stored(tmp_path), late)
    renewed = ensure(net, tmp_path, now=late)
    assert renewed.serial != first.serial and der(stored(tmp_path)) == renewed.certificate_der
    # Renewed at the node certificate's end: it cannot go past it, so it is short, and due again at once
    # only inside half its own lifetime.
    assert renewed.not_valid_after == net.nodes["n1"].not_valid_after_utc


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("garbage", "not a PEM certificate"),
        ("huge", f"a signer certificate is under {MAX_FILE_BYTES:,}"),
        ("two-certificates", "holds 2 certificates"),
        ("another-key", "not this node's signing key"),
        ("another-node", "wrong_issuer"),
        ("another-network", "wrong_network"),
        ("a-node-certificate", "wrong_kind"),
        ("symlink", "symlink"),
        ("fifo", "not a regular file"),
    ],
)
def test_a_bad_or_hostile_file_is_replaced_with_a_warning_naming_it(
    net: Network, foreign: Network, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, said: str
) -> None:
    path = tmp_path / CERTIFICATE_FILE
    pem = lambda cert: cert.public_bytes(Encoding.PEM)  # noqa: E731
    target = tmp_path / "elsewhere.pem"
    if case == "garbage":
        path.write_bytes(b"\x00garbage\xff" * 10)
    elif case == "huge":
        path.write_bytes(b"A" * (MAX_FILE_BYTES + 1))
    elif case == "two-certificates":
        path.write_bytes(pem(net.nodes["n1"]) * 2)
    elif case == "another-key":
        ensure(net, tmp_path, public_key=OTHER_PUBLIC)
    elif case == "another-node":
        cert, _ = net.signer("n2", PUBLIC)
        path.write_bytes(pem(x509.load_der_x509_certificate(cert)))
    elif case == "another-network":
        cert, _ = foreign.signer("n1", PUBLIC)
        path.write_bytes(pem(x509.load_der_x509_certificate(cert)))
    elif case == "a-node-certificate":
        path.write_bytes(pem(net.nodes["n1"]))
    elif case == "symlink":
        ensure(net, tmp_path / "other")
        target.write_bytes((tmp_path / "other" / CERTIFICATE_FILE).read_bytes())  # even a good certificate
        path.symlink_to(target)
    elif case == "fifo":
        os.mkfifo(path)
    with caplog.at_level(logging.INFO, logger="keyswarm.node"):
        result = ensure(net, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and said in warnings[0], warnings
    assert path.is_file() and not path.is_symlink()
    assert der(stored(tmp_path)) == result.certificate_der
    if case == "symlink":  # the link itself was replaced; its target was never written through
        assert target.read_bytes() == (tmp_path / "other" / CERTIFICATE_FILE).read_bytes()


def test_a_directory_in_place_of_the_file_refuses_the_start_naming_it(net: Network, tmp_path: Path) -> None:
    (tmp_path / CERTIFICATE_FILE).mkdir()
    with pytest.raises(ConfigError) as info:
        ensure(net, tmp_path)
    assert str(tmp_path / CERTIFICATE_FILE) in str(info.value) and info.value.field == "node.data_dir"


def test_without_the_token_a_valid_stored_certificate_is_used_and_none_means_uncertified(
    net: Network, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="keyswarm.node"):
        assert ensure(net, tmp_path, token=False) is None
    assert "UNCERTIFIED" in caplog.text
    first = ensure(net, tmp_path)
    late = first.not_valid_after - timedelta(days=1)
    assert ensure(net, tmp_path, token=False, now=late) == first  # due, but nothing can renew it now
    assert ensure(net, tmp_path, token=False, now=first.not_valid_after + timedelta(seconds=1)) is None


def test_without_a_data_dir_a_certificate_is_issued_each_start_and_not_stored(net: Network) -> None:
    one, two = ensure(net, None), ensure(net, None)
    assert one is not None and two is not None and one.serial != two.serial


# --- open_node_token ---------------------------------------------------------------


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("enrolled")
    root = TokenAccess(spec=f"soft:{base / 'root.token'}")
    create_network(root, network_name="unit", out_dir=base)
    (base / "n1").mkdir()
    spec = f"soft:{base / 'n1' / 'node.token'}"
    enrol_node(root, base / "root.pem", TokenAccess(spec=spec), name="n1", out_dir=base / "n1")
    return {"spec": spec, "node_certificate": str(base / "n1" / "node.pem"), "root_certificate": str(base / "root.pem")}


def test_open_node_token_certifies_the_signing_key_and_the_storage_actor_gets_it(
    enrolled: dict[str, str], tmp_path: Path
) -> None:
    config = node_config(node={"id": "n1", "data_dir": str(tmp_path)}, token=enrolled)
    parts = open_node_token(config, signer_public_key=PUBLIC)
    try:
        certified = parts.signer_certificate
        assert certified is not None and der(stored(tmp_path)) == certified.certificate_der
        (storage,) = [spec for spec in node_actors(config.storage, signer_key=bytes(range(32)), token=parts)
                      if spec.name == "storage"]
        actor = storage.factory()
        assert actor.signer_certificate == certified.certificate_der
        assert actor.signer_intermediates == certified.intermediates
    finally:
        parts.service.close()
    # Without the signing key (callers that assemble nothing): no certificate, as before.
    parts = open_node_token(config)
    try:
        assert parts.signer_certificate is None
    finally:
        parts.service.close()
