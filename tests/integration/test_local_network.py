"""Three real node processes on 127.0.0.1: health, sub-keys, peer pings, clean SIGTERM, nothing left.

The network is started with `keyswarm up`'s own machinery
(`keyswarm.node.local_network`): a root and one soft token per node enrolled
first, then one `python -m keyswarm node --config` process per node, each in
its own process group, each running the hardware and sub-keys actors. Then
`keyswarm up --demo` runs end to end as a subprocess, as `make demo` runs it
(and once with `--no-tokens`). Every wait is bounded; whatever a failed test
left running is killed in `finally`.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from keyswarm.actors.messages import Health, HealthResult, PingPeer, PingPeerResult
from keyswarm.node.local_network import (
    LocalNetwork,
    child_environment,
    find_free_base_port,
    plan_network,
    request,
)

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
#: Peer links connect in the background; a ping may be refused until they are up.
PING_SETTLE_S = 10.0


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def kill_leftovers(pids: list[int]) -> None:
    for pid in pids_alive(pids):
        try:
            os.killpg(pid, signal.SIGKILL)  # each node leads its own group
        except ProcessLookupError:
            pass


def ping_until_ok(endpoint: str, target: str) -> PingPeerResult:
    deadline = time.monotonic() + PING_SETTLE_S
    while True:
        reply = request(endpoint, PingPeer(target=target, timeout_s=1.0), timeout_s=3.0)
        if reply.error is None:
            return reply.value
        assert time.monotonic() < deadline, f"{endpoint} could not ping {target} within {PING_SETTLE_S} s: {reply.error}"
        time.sleep(0.1)


def subkey_ok(endpoint: str) -> HealthResult:
    """Health, once the node's first sub-key is certified (bounded)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        reply = request(endpoint, Health(), timeout_s=3.0)
        assert reply.error is None, reply.error
        if reply.value.subkey == "ok":
            return reply.value
        assert time.monotonic() < deadline, f"{endpoint}: no sub-key within {START_TIMEOUT_S} s: {reply.value}"
        time.sleep(0.05)


def test_three_node_processes_answer_ping_each_other_and_stop_cleanly(tmp_path: Path) -> None:
    plan = plan_network(3, base_port=find_free_base_port(3), root=str(tmp_path))
    network = LocalNetwork(plan, log_level="info", stop_timeout_s=STOP_TIMEOUT_S)
    pids: list[int] = []
    try:
        network.start()
        pids = [p.pid for p in network.processes.values()]
        health = network.wait_healthy(START_TIMEOUT_S)
        assert network.pki is not None and network.pki.made == ("root", "n1", "n2", "n3")

        for node in plan:
            value = subkey_ok(node.client_endpoint)
            assert isinstance(value, HealthResult)
            assert value.node == node.id and value.status == "ok"
            assert value.actors["hardware"] == value.actors["subkeys"] == "running", value
            assert (value.token, value.token_kind) == ("ready", "soft") and value.subkey_serial > 0, value
            assert value.subkey_not_after_s > time.time() + 3000, value
            assert health[node.id].node == node.id
            log = Path(node.log_path).read_text(errors="replace")
            assert "WARNING keyswarm.node: node %s runs on a SOFT TOKEN" % node.id in log, log[-2000:]

        for source in plan:
            for target in plan:
                if target.id != source.id:
                    result = ping_until_ok(source.client_endpoint, target.id)
                    assert result.target == target.id and result.rtt_ms >= 0

        reports = network.stop()
        logs = {n.id: Path(n.log_path).read_text(errors="replace")[-2000:] for n in plan}
        for report in reports:
            assert report.returncode == 0 and not report.killed, (report, logs[report.id])
            assert report.seconds < STOP_TIMEOUT_S
        assert pids_alive(pids) == [], "node processes left running after SIGTERM"
    finally:
        network.stop()
        kill_leftovers(pids)


def test_keyswarm_up_demo_runs_and_stops_every_node(tmp_path: Path) -> None:
    base = find_free_base_port(3)
    command = [sys.executable, "-m", "keyswarm", "up", "--nodes", "3", "--demo", "--base-port", str(base), "--data", str(tmp_path)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_environment(), start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        leftovers = _node_processes_under(tmp_path)
        kill_leftovers(leftovers)
    assert process.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    for node_id in ("n1", "n2", "n3"):
        assert node_id in out
        assert (tmp_path / node_id / "node.toml").is_file()
        assert (tmp_path / node_id / "node.pem").is_file() and (tmp_path / node_id / "node.token").is_file()
        assert "[token]" in (tmp_path / node_id / "node.toml").read_text()
    assert (tmp_path / "root" / "root.pem").is_file()
    assert "SOFT TOKEN" in out and "NOT hardware-protected" in out
    assert "2. sub-keys: each node minted a sub-key" in out
    subkey_rows = [line.split() for line in out.splitlines() if line.strip().startswith(("n1 ", "n2 ", "n3 "))]
    assert sum(1 for row in subkey_rows if row[1:4] == ["soft,", "ready", "ok"]) == 3, out
    assert "demo: every step succeeded" in out
    # Steps 6-8: enrolled clients and a policy, keys and a mixed workload, a summary.
    assert "6. clients:" in out and "7. workload:" in out and "8. summary:" in out, out
    for client in ("ops", "app1"):
        assert (tmp_path / "clients" / client / "client.pem").is_file()
        assert (tmp_path / "clients" / client / "key.pem").stat().st_mode & 0o777 == 0o600
    assert "policy.set app1: app1/*" in out
    for key in ("app1/aes", "app1/ed", "app1/mac"):
        assert re.search(rf"^  {re.escape(key)} .* created$", out, re.M), out
    assert re.search(r"rotation: app1/aes v1 -> v2 half-way through; (\d+)/\1 ciphertexts .* still decrypt  ok", out), out
    assert "no replication yet" in out
    assert re.search(r"refused as it should be: app1 encrypt app2/x -> FORBIDDEN", out), out
    assert re.search(r"envelope: 8 MiB sealed in app1's process .* opened again  ok", out), out
    assert re.search(r"the session itself runs (aes256-gcm|chacha20-poly1305)", out), out
    summary = out[out.index("8. summary:"):]
    for op in ("encrypt", "decrypt", "sign", "verify", "hmac", "key.rotate"):
        row = re.search(rf"^  {re.escape(op)} +(\d+) +0 +[\d.]+ +[\d.]+ +[\d.]+$", summary, re.M)
        assert row and int(row.group(1)) > 0, summary
    assert re.search(r"throughput: [1-9]\d* ops/s", summary) and "errors by code: none" in summary, summary
    assert "all 3 nodes stopped cleanly" in out
    assert "FAIL" not in out
    assert "Traceback" not in err
    assert leftovers == [], "keyswarm up left node processes running"


def test_keyswarm_up_without_tokens_runs_nodes_without_hardware_actors(tmp_path: Path) -> None:
    base = find_free_base_port(2)
    command = [sys.executable, "-m", "keyswarm", "up", "--nodes", "2", "--demo", "--no-tokens", "--base-port", str(base),
               "--data", str(tmp_path)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=child_environment(), timeout=90)
    finally:
        kill_leftovers(_node_processes_under(tmp_path))
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "sub-keys" not in result.stdout and "hardware" not in result.stdout and "SOFT TOKEN" not in result.stdout
    assert "demo: every step succeeded" in result.stdout
    assert "[token]" not in (tmp_path / "n1" / "node.toml").read_text()
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_keyswarm_up_stops_every_node_on_ctrl_c_or_sigterm(tmp_path: Path, signum: int) -> None:
    base = find_free_base_port(2)
    command = [sys.executable, "-m", "keyswarm", "up", "--nodes", "2", "--base-port", str(base), "--data", str(tmp_path),
               "--status-interval", "0.2"]
    env = {**child_environment(), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        seen = read_until(process, b"n1 ok", timeout_s=START_TIMEOUT_S)  # the first health report
        assert len(_node_processes_under(tmp_path)) == 2
        process.send_signal(signum)
        out, _ = process.communicate(timeout=STOP_TIMEOUT_S + 10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        leftovers = _node_processes_under(tmp_path)
        kill_leftovers(leftovers)
    output = (seen + out).decode(errors="replace")
    assert process.returncode == 0, output
    assert "all 2 nodes stopped cleanly" in output
    assert leftovers == [], "keyswarm up left node processes running"


def test_keyswarm_up_refuses_a_busy_port_and_names_it(tmp_path: Path) -> None:
    import socket

    base = find_free_base_port(2)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 102))  # n2's peer port
        holder.listen()
        result = subprocess.run(
            [sys.executable, "-m", "keyswarm", "up", "--nodes", "2", "--base-port", str(base), "--data", str(tmp_path)],
            capture_output=True, text=True, env=child_environment(), timeout=30,
        )
    assert result.returncode == 1, result
    assert str(base + 102) in result.stderr and "n2" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "n1" / "node.toml").exists(), "nothing is written before the ports are checked"


def read_until(process: subprocess.Popen, needle: bytes, *, timeout_s: float) -> bytes:
    """Read `process`'s stdout until `needle` shows up; fails the test after `timeout_s`."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    fd = process.stdout.fileno()
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{needle!r} not printed within {timeout_s} s:\n{seen.decode(errors='replace')}"
        if select.select([fd], [], [], remaining)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"output ended before {needle!r}:\n{seen.decode(errors='replace')}"
            seen += chunk
    return seen


def _node_processes_under(root: Path) -> list[int]:
    """Pids of live node processes whose config lies under `root` (found by command line)."""
    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if any(str(root) in part for part in cmdline) and "node" in cmdline:
            pids.append(process.info["pid"])
    return pids_alive(pids)
