"""`keyswarm audit verify --root ROOT.PEM [--require-certified]` on a real LMDB log: bad input and report lines.

The log holds chains written with `OriginChain` into `LmdbLog`: n1 certified
by our network, n2 uncertified, and for the failure lines n3 with a
certificate of another key. Bad `--root` input is a usage error (exit 2,
one `error:` line naming the file); certificate problems are findings
(exit 1, the usual `LOCATION: REASON: DETAIL` line).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from signer_pki import VALID_MS, Network, build_network  # noqa: E402  (tests/unit's PKI helper)

from keyswarm.cli import main  # noqa: E402
from keyswarm.storage.bodies import KeyDisabled  # noqa: E402
from keyswarm.storage.chain import OriginChain, Signer, draft  # noqa: E402
from keyswarm.storage.lmdb_log import LmdbLog  # noqa: E402

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return build_network(tmp_path_factory.mktemp("pki"), nodes=("n1", "n3"))


def write_log(path: Path, chains: dict[str, tuple[bytes, tuple[bytes, ...]] | None], net: Network) -> Path:
    log = LmdbLog.open(path, node_id="n1", partitions=PARTITIONS, genesis=b"root-test")
    try:
        for i, (origin, certified) in enumerate(chains.items()):
            signer = Signer(bytes([i + 1]) * 32)
            certificate, intermediates = certified if certified is not None else (b"", ())
            chain = OriginChain(origin, signer, certificate=certificate, intermediates=intermediates)
            log.append(chain.seal([draft(KeyDisabled(name=f"{origin}/k"), subject=f"{origin}/k", partitions=PARTITIONS)],
                                  VALID_MS + i))  # fmt: skip
    finally:
        log.close()
    return path


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", "verify", "--no-progress", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def mixed(tmp_path: Path, net: Network) -> Path:
    """n1 certified, n2 uncertified."""
    return write_log(tmp_path / "log", {"n1": net.signer("n1", Signer(bytes([1]) * 32).public_key), "n2": None}, net)


def test_an_uncertified_chain_is_a_warning_line_and_fails_with_require_certified(
    mixed: Path, net: Network, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(net.root_pem(tmp_path / "root.pem"))
    code, out, _ = audit(capsys, "--data", str(mixed), "--root", root)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("ok: ") and f"root of network {net.network}" in lines[0]
    assert lines[1] == ("warning: partition 0, seq 2, origin 'n2', origin_seq 1: uncertified: "
                        f"signing key {Signer(bytes([2]) * 32).public_key.hex()[:16]}... carries no certificate in the chain")
    assert "1 signer certificates" in lines[2]
    code, out, _ = audit(capsys, "--data", str(mixed), "--root", root, "--require-certified")
    assert code == 1 and "first broken link: partition 0, seq 2, origin 'n2', origin_seq 1: uncertified" in out, out
    # Without --root, exactly as before: nothing about certificates.
    code, out, _ = audit(capsys, "--data", str(mixed))
    assert code == 0 and "warning" not in out and "signer certificates" not in out, out


def test_a_certificate_of_another_key_fails_with_its_reason(net: Network, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "log", {"n3": net.signer("n3", Signer(bytes([9]) * 32).public_key)}, net)
    code, out, _ = audit(capsys, "--data", str(log), "--root", str(net.root_pem(tmp_path / "root.pem")))
    assert code == 1
    assert "first broken link: partition 0, seq 1, origin 'n3', origin_seq 1: certificate_key_mismatch: " in out, out


@pytest.mark.parametrize("case", ["missing", "directory", "not-pem", "empty", "a-node-certificate", "unreadable"])
def test_bad_root_input_is_a_usage_error_naming_the_file(
    mixed: Path, net: Network, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    path = tmp_path / "root-input"
    if case == "directory":
        path.mkdir()
    elif case == "not-pem":
        path.write_bytes(os.urandom(200))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "a-node-certificate":
        path.write_bytes(net.nodes["n1"].public_bytes(Encoding.PEM))
    elif case == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads a file whatever its mode")
        path.write_bytes(b"x")
        path.chmod(0)
    code, out, err = audit(capsys, "--data", str(mixed), "--root", str(path))
    assert code == 2, (out, err)
    assert out == "" and err.startswith("error: --root: ") and str(path) in err, err


def test_require_certified_without_root_is_a_usage_error(mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = audit(capsys, "--data", str(mixed), "--require-certified")
    assert code == 2 and "--require-certified needs --root" in err
