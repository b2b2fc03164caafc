"""A real node process (`python -m keyswarm node --config`) on a soft token and its enrolled certificates.

The PKI is made in `tmp_path` with `keyswarm.enrolment` (the code behind
`keyswarm init` and `keyswarm enroll-node`): two networks' roots, and nodes
enrolled under them (and p1 certificates outside their validity: expired,
not yet valid). A node on its soft token warns loudly at start, and
runs the hardware and sub-keys actors (health shows them, and its first
sub-key). A node whose certificate was issued for another token, by another
network's root, for another node, or is expired or not yet valid refuses
to start: exit code 2 and one clear log line. Every wait is bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import zmq
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.actors.messages import Health, HealthResult
from keyswarm.client.plain import PlainClient
from keyswarm.config import config_to_toml, node_config
from keyswarm.crypto.certificates import node_certificate
from keyswarm.enrolment import TokenAccess, create_network, enrol_node, open_access
from keyswarm.hardware.soft_token import SoftToken

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0


def make_root(directory: Path, name: str) -> tuple[TokenAccess, Path]:
    directory.mkdir(parents=True)
    access = TokenAccess(spec=f"soft:{directory / 'root.token'}")
    create_network(access, network_name=name, out_dir=directory)
    return access, directory / "root.pem"


def enrol(root: tuple[TokenAccess, Path], directory: Path, name: str) -> dict[str, str]:
    """Enrol node `name` on a new soft token in `directory`; returns its `[token]` section."""
    directory.mkdir(parents=True)
    spec = f"soft:{directory / 'node.token'}"
    enrol_node(root[0], root[1], TokenAccess(spec=spec), name=name, out_dir=directory)
    return {"spec": spec, "node_certificate": str(directory / "node.pem"), "root_certificate": str(directory / "root.pem")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    base = tmp_path_factory.mktemp("pki")
    ours, theirs = make_root(base / "root", "ours"), make_root(base / "other-root", "theirs")
    sections = {
        "p1": enrol(ours, base / "p1", "p1"),
        "p1-again": enrol(ours, base / "p1-again", "p1"),  # the same name, another token
        "p2": enrol(ours, base / "p2", "p2"),
        "p1-theirs": enrol(theirs, base / "p1-theirs", "p1"),
    }
    sections["ours-root"] = {"root_certificate": str(base / "root" / "root.pem")}
    # p1 certificates that expired yesterday and that are valid from tomorrow (built directly: enrol_node
    # checks what it issues at its own `now`).
    now = datetime.now(timezone.utc)
    for case, issued, lifetime in (("p1-expired", now - timedelta(days=3), timedelta(days=2)),
                                   ("p1-early", now + timedelta(days=1), timedelta(days=30))):
        sections[case] = mint_node(ours, base / case, "p1", issued, lifetime)
    return sections


def mint_node(root: tuple[TokenAccess, Path], directory: Path, name: str, issued: datetime,
              lifetime: timedelta) -> dict[str, str]:
    """A node token and a certificate for it issued at `issued` for `lifetime`; returns its `[token]` section."""
    directory.mkdir(parents=True)
    token = SoftToken.create(directory / "node.token", algorithm="ed25519")
    root_pem = root[1].read_bytes()
    root_cert = x509.load_pem_x509_certificate(root_pem)
    with open_access(root[0], create=False) as root_token:
        cert = node_certificate(root_token, root_cert, token.identity_public_key(), node_name=name, now=issued,
                                lifetime=lifetime)
    token.close()
    (directory / "node.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    (directory / "root.pem").write_bytes(root_pem)
    return {"spec": f"soft:{directory / 'node.token'}", "node_certificate": str(directory / "node.pem"),
            "root_certificate": str(directory / "root.pem")}


def test_a_node_on_a_soft_token_warns_and_runs_the_hardware_and_subkeys_actors(
    pki: dict[str, dict[str, str]], node_process: Callable, zmq_context: zmq.Context
) -> None:
    node = node_process(token=pki["p1"])
    health = wait_for_subkey(node.client_endpoint, zmq_context)
    assert health.status == "ok", health
    assert health.actors["hardware"] == health.actors["subkeys"] == "running", health
    assert (health.token, health.token_kind, health.subkey) == ("ready", "soft", "ok"), health
    assert health.subkey_serial > 0 and health.subkey_not_after_s > time.time() + 3000, health
    log = node.log()
    warnings = [line for line in log.splitlines() if "SOFT TOKEN" in line]
    assert len(warnings) == 1, log
    assert " WARNING " in warnings[0] and "NOT hardware-protected" in warnings[0], warnings[0]
    assert pki["p1"]["spec"].removeprefix("soft:") in warnings[0], warnings[0]
    assert node.stop() == 0, node.log()


def test_a_node_without_a_token_says_so_and_runs_neither_actor(node_process: Callable, zmq_context: zmq.Context) -> None:
    node = node_process()
    with PlainClient(node.client_endpoint, zmq_context=zmq_context, timeout_s=5.0) as client:
        health = client.call(Health())
    assert "hardware" not in health.actors and "subkeys" not in health.actors, health
    assert (health.token, health.subkey, health.subkey_serial) == ("", "", 0), health
    assert "runs without a token" in node.log()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # The certificate of p1's first token, with a second token enrolled as p1 under the same root.
        ("another-key", ["certifies a key that token", "does not hold", "issued for another token"]),
        # p1's certificate from another network's root, checked against ours.
        ("another-network", ["does not chain to the root certificate", "wrong_network"]),
        # p2's certificate and token, for a node whose id is p1.
        ("another-node", ["certifies node 'p2'", "this node's id is 'p1'"]),
        ("missing-certificate", ["field token.node_certificate", "no such file"]),
        # p1's own certificate and token, outside the certificate's validity now.
        ("expired", ["field token.node_certificate", "expired", "node certificate keyswarm://"]),
        ("not-yet-valid", ["field token.node_certificate", "not_yet_valid", "is valid from"]),
    ],
)
def test_a_node_refuses_certificates_that_are_not_its_own(
    pki: dict[str, dict[str, str]], tmp_path: Path, case: str, expected: list[str]
) -> None:
    token = {
        "another-key": {**pki["p1"], "spec": pki["p1-again"]["spec"]},
        "another-network": {**pki["p1-theirs"], **pki["ours-root"]},
        "another-node": pki["p2"],
        "missing-certificate": {**pki["p1"], "node_certificate": str(tmp_path / "absent.pem")},
        "expired": pki["p1-expired"],
        "not-yet-valid": pki["p1-early"],
    }[case]
    result = run_node(tmp_path, token)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "could not start" in line]
    assert len(lines) == 1, result.stderr
    assert "ERROR" in lines[0] and "field token." in lines[0], lines[0]
    for needle in expected:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def run_node(directory: Path, token: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a node that is expected to refuse to start (bounded: it must exit at once)."""
    config = node_config(
        node={"id": "p1", "client_endpoint": "tcp://127.0.0.1:1", "peer_endpoint": "tcp://127.0.0.1:2"}, token=token
    )
    path = directory / "node.toml"
    path.write_text(config_to_toml(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run(
        [sys.executable, "-m", "keyswarm", "node", "--config", str(path)],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=30,
    )


def wait_for_subkey(endpoint: str, context: zmq.Context) -> HealthResult:
    deadline = time.monotonic() + START_TIMEOUT_S
    with PlainClient(endpoint, zmq_context=context, timeout_s=2.0) as client:
        while True:
            health = client.call(Health())
            if health.subkey == "ok":
                return health
            assert time.monotonic() < deadline, f"no sub-key within {START_TIMEOUT_S} s: {health}"
            time.sleep(0.05)
