"""A real node process certifies its event-signing key with its soft token, and the audit checks it.

The data dir holds a chain the node wrote before it had a token (uncertified,
made here with `open_node_storage`, exactly as the node opens it). Started
with its token, the node issues `node-signing.pem`, records it in the chain
(a SignerKey naming the same key), and `keyswarm audit verify --root
root.pem` accepts the chain, as a process, with exit 0. A damaged or hostile
certificate file is replaced with a warning naming it; a directory in its
place refuses the start (exit 2, the file named). Every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.config import config_to_toml, node_config
from keyswarm.node.assembly import open_node_storage
from keyswarm.node.signer_certificate import CERTIFICATE_FILE
from keyswarm.storage.bodies import SIGNER_KEY_TYPE, KeyDisabled, decode_body
from keyswarm.storage.chain import OriginChain, Signer, draft
from keyswarm.storage.lmdb_log import LmdbLog
from test_node_process_token import REPO, enrol, make_root  # tests/integration is on sys.path

pytestmark = pytest.mark.integration

NODE = "p1"
RECORDED = "storage records the signer certificate"
WAIT_S = 20.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    base = tmp_path_factory.mktemp("pki")
    ours, theirs = make_root(base / "root", "ours"), make_root(base / "other-root", "theirs")
    return {"p1": enrol(ours, base / "p1", NODE), "theirs": enrol(theirs, base / "theirs", NODE)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def config_for(data_dir: Path, token: dict[str, str] | None = None):  # noqa: ANN201
    node = {"id": NODE, "data_dir": str(data_dir), "client_endpoint": f"tcp://127.0.0.1:{free_port()}",
            "peer_endpoint": f"tcp://127.0.0.1:{free_port()}"}
    return node_config(node=node, **({"token": token} if token else {}))


def uncertified_chain(data_dir: Path, events: int = 5) -> None:
    """What a node without a token left behind: its key file and a chain signed by it, uncertified."""
    storage = open_node_storage(config_for(data_dir))
    try:
        chain = OriginChain(NODE, Signer(storage.signer_key))
        drafts = [draft(KeyDisabled(name=f"k{i}"), subject=f"k{i}", partitions=storage.event_log.meta().partitions)
                  for i in range(events)]
        storage.event_log.append(chain.seal(drafts, int(time.time() * 1000)))
    finally:
        storage.event_log.close()


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def run_until(directory: Path, config, needle: str) -> str:  # noqa: ANN001
    """Run the node until its log shows `needle` (bounded), stop it with SIGTERM; its log."""
    path = directory / "node.toml"
    path.write_text(config_to_toml(config))
    log_path = directory / "node.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "keyswarm", "--log-level", "info", "node", "--config",
                                    str(path)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env())
    try:
        deadline = time.monotonic() + WAIT_S
        while needle not in log_path.read_text(errors="replace"):
            assert process.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, f"no {needle!r} within {WAIT_S} s:\n{log_path.read_text()}"
            time.sleep(0.05)
        time.sleep(0.2)  # the commit's log line comes before its durable answer: let it land
    finally:
        process.terminate()
        process.wait(10)
    text = log_path.read_text(errors="replace")
    assert process.returncode == 0, text
    return text


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyswarm", "audit", "verify", "--no-progress", *args],
                          capture_output=True, text=True, env=env(), stdin=subprocess.DEVNULL, timeout=60)


def signer_keys(data_dir: Path) -> list:
    with LmdbLog.open_existing(data_dir / "log", readonly=True) as log:
        return [(e.origin_seq, decode_body(e)) for e in log.read_origin(NODE) if e.type == SIGNER_KEY_TYPE]


def test_a_node_on_its_token_certifies_its_chain_and_the_audit_accepts_it(
    pki: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    uncertified_chain(data)
    root_pem = pki["p1"]["root_certificate"]
    before = audit("--data", str(data), "--root", root_pem)
    assert before.returncode == 0 and "warning: " in before.stdout and "uncertified" in before.stdout, before.stdout
    assert audit("--data", str(data), "--root", root_pem, "--require-certified").returncode == 1

    run_until(tmp_path, config_for(data, pki["p1"]), RECORDED)
    pem = data / CERTIFICATE_FILE
    assert (pem.stat().st_mode & 0o777) == 0o600
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    keys = signer_keys(data)
    assert [(seq, bool(body.certificate)) for seq, body in keys] == [(1, False), (7, True)]
    assert keys[1][1].public_key == keys[0][1].public_key  # the same key, now certified
    assert keys[1][1].certificate == cert.public_bytes(Encoding.DER)
    assert keys[1][1].intermediates == (x509.load_pem_x509_certificate(
        Path(pki["p1"]["node_certificate"]).read_bytes()).public_bytes(Encoding.DER),)

    after = audit("--data", str(data), "--root", root_pem, "--require-certified")
    assert after.returncode == 0, after.stdout + after.stderr
    assert "signer certificate verifies" in after.stdout and "1 signer certificates" in after.stdout
    assert "warning" not in after.stdout
    # Against another network's root, the same chain fails with a clear reason.
    wrong = audit("--data", str(data), "--root", pki["theirs"]["root_certificate"])
    assert wrong.returncode == 1, wrong.stdout
    assert "origin 'p1', origin_seq 7: bad_certificate" in wrong.stdout and "wrong_network" in wrong.stdout

    # A second start finds the certificate recorded: nothing more is written.
    run_until(tmp_path, config_for(data, pki["p1"]), "event signer certified by")
    assert len(signer_keys(data)) == 2


@pytest.mark.parametrize("content", ["garbage", "huge", "another-network"])
def test_a_hostile_certificate_file_is_replaced_with_a_warning_naming_it(
    pki: dict[str, dict[str, str]], tmp_path: Path, content: str
) -> None:
    data = tmp_path / "data"
    uncertified_chain(data)
    pem = data / CERTIFICATE_FILE
    if content == "garbage":
        pem.write_bytes(os.urandom(300))
    elif content == "huge":
        pem.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * (1 << 20))
    else:  # a well-formed signer certificate, of the other network (made by a node of it)
        other = tmp_path / "other"
        uncertified_chain(other)
        run_until(tmp_path, config_for(other, pki["theirs"]), RECORDED)
        pem.write_bytes((other / CERTIFICATE_FILE).read_bytes())
    log = run_until(tmp_path, config_for(data, pki["p1"]), RECORDED)
    warnings = [line for line in log.splitlines() if "stored signer certificate cannot be used" in line]
    assert len(warnings) == 1 and str(pem) in warnings[0] and " WARNING " in warnings[0], log
    done = audit("--data", str(data), "--root", pki["p1"]["root_certificate"], "--require-certified")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_directory_in_place_of_the_certificate_file_refuses_the_start(
    pki: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    uncertified_chain(data)
    (data / CERTIFICATE_FILE).mkdir()
    path = tmp_path / "node.toml"
    path.write_text(config_to_toml(config_for(data, pki["p1"])))
    result = subprocess.run([sys.executable, "-m", "keyswarm", "node", "--config", str(path)], capture_output=True,
                            text=True, env=env(), stdin=subprocess.DEVNULL, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "could not start" in line]
    assert len(lines) == 1 and str(data / CERTIFICATE_FILE) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
