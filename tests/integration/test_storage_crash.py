"""Crash safety of a real node's event log, and how a node starts on its disk.

The crash test (issue 3, item 8): a child process (`storage_crash_child.py`)
runs a real `NodeDriver` on a `NodeThread` with the real storage actor, the
event-log service on its own thread and an `LmdbLog` in a data directory,
plus appender actors; it prints every acknowledged append. The test kills
it with SIGKILL at a random moment, ROUNDS times on the same directory, and
after each kill reopens the log and checks: every acknowledged event is
there as acknowledged; every chain verifies (signatures, links, no unsigned
tail); `verify_integrity` finds nothing; the restarted node continued its
chain (origin_seq goes on, one genesis, the durable prefix unchanged).
A failure prints the seed; `KEYSWARM_CRASH_SEED=S` replays the same kill
delays. Every wait is bounded and the child is killed in `finally`.

Also here: the node signing key file, and a node refusing to start (exit 2
with a log line) on a damaged log or a key that is not its chain's.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keyswarm.actors.storage import AppendBatch
from keyswarm.config import config_to_toml, node_config
from keyswarm.errors import CorruptRecord
from keyswarm.node.assembly import node_services, open_node_storage
from keyswarm.node.node_key import KEY_FILE, NodeKeyError, create_node_key, load_node_key
from keyswarm.storage.bodies import SIGNER_KEY_TYPE, KeyDisabled
from keyswarm.storage.chain import OriginChain, Signer, draft, verify_chain
from keyswarm.storage.events import digest
from keyswarm.storage.fold import fold
from keyswarm.storage.lmdb_log import LmdbLog
from keyswarm.storage.snapshot import encode_state

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("storage_crash_child.py")
NODE_ID = "crash-node"
PARTITIONS = 16
ROUNDS = 20
SEED_ENV = "KEYSWARM_CRASH_SEED"
FIRST_ACK_TIMEOUT_S = 20.0
# Eight appenders, one append each in flight, a short pause between: commits
# stay small and frequent (a commit is in flight most of the time, where a
# kill hurts most), and the log stays small enough to verify in full after
# every round.
CHILD_APPENDERS = 8
CHILD_IN_FLIGHT = 1
CHILD_PAUSE_MS = 5


class Child:
    """The appending node process; its stdout is read on a thread so the pipe never fills."""

    def __init__(self, data_dir: Path, stderr_path: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        self._stderr = open(stderr_path, "ab")
        self.stderr_path = stderr_path
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), str(CHILD_APPENDERS), str(CHILD_IN_FLIGHT),
             str(CHILD_PAUSE_MS)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
        )
        self.lines: list[bytes] = []
        self.first_ack = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            self.first_ack.set()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._reader.join(10)
        self.process.stdout.close()
        self._stderr.close()

    def acks(self) -> list[tuple[int, int, list[str]]]:
        """(first_seq, last_seq, subjects) of every complete ACK line."""
        out = []
        for line in self.lines:
            if not line.endswith(b"\n"):
                continue  # cut by the kill: not an acknowledgement we saw
            tag, origin, first, last, subjects = line.decode().split()
            assert tag == "ACK" and origin == NODE_ID, line
            out.append((int(first), int(last), subjects.split(",")))
        return out

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]


def test_sigkill_at_random_moments_loses_no_acknowledged_event(tmp_path: Path) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    data = tmp_path / "node"
    acked: dict[int, str] = {}  # origin_seq -> subject, over every round
    durable_head = 0
    head_digest = b""
    for round_ in range(ROUNDS):
        hint = f"round {round_}, reproduce with {SEED_ENV}={seed}"
        child = Child(data, tmp_path / "child.stderr")
        try:
            assert child.first_ack.wait(FIRST_ACK_TIMEOUT_S), f"no acknowledgement within {FIRST_ACK_TIMEOUT_S} s; {hint}\n{child.stderr_tail()}"
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            child.kill()
        round_acks = child.acks()
        assert round_acks, f"{hint}\n{child.stderr_tail()}"
        assert min(first for first, _, _ in round_acks) > durable_head, f"the restart did not continue the chain; {hint}"
        for first, last, subjects in round_acks:
            assert last - first + 1 == len(subjects), hint
            for seq, subject in zip(range(first, last + 1), subjects):
                assert seq not in acked, f"origin_seq {seq} acknowledged twice; {hint}"
                acked[seq] = subject
        with LmdbLog.open_existing(data / "log", readonly=True) as log:
            assert log.verify_integrity() == [], hint
            events = log.read_origin(NODE_ID)
            snapshots = check_snapshots(log, hint)
        head = verify_chain(NODE_ID, events, partitions=PARTITIONS)  # links, signatures, no unsigned tail
        assert head is not None and head.origin_seq == len(events), hint
        assert sum(e.type == SIGNER_KEY_TYPE for e in events) == 1, f"one genesis: the chain was continued; {hint}"
        if durable_head:
            assert digest(events[durable_head - 1]) == head_digest, f"the durable prefix changed (a fork); {hint}"
        for seq, subject in acked.items():
            assert seq <= len(events), f"acknowledged origin_seq {seq} is gone (log ends at {len(events)}); {hint}"
            assert events[seq - 1].subject == subject, f"origin_seq {seq} is not the acknowledged event; {hint}"
        # Durable but unacknowledged events (the kill came between commit and print) are allowed.
        durable_head, head_digest = len(events), digest(events[-1])
    assert len(acked) > ROUNDS, f"too few acknowledgements to mean anything ({len(acked)}); seed={seed}"
    assert snapshots > 0, f"no snapshot was written; seed={seed}"


def check_snapshots(log: LmdbLog, hint: str) -> int:
    """Every partition's snapshot is the fold of the events it covers; returns how many there are."""
    found = 0
    for partition in range(PARTITIONS):
        snapshot = log.read_snapshot(partition)
        if snapshot is None:
            continue
        found += 1
        prefix = fold(event for seq, event in log.iter_partition(partition) if seq <= snapshot.seq)
        assert snapshot.state == encode_state(prefix), f"snapshot of partition {partition} is not its fold; {hint}"
    return found


# --- the node signing key file ---------------------------------------------------------


def test_the_key_file_is_created_0600_and_loaded_back(tmp_path: Path) -> None:
    path = tmp_path / "data" / KEY_FILE
    key = create_node_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_node_key(path) == key
    assert not [p for p in path.parent.iterdir() if p.name != KEY_FILE], "no temporary file left behind"
    with pytest.raises(NodeKeyError, match="appeared"):
        create_node_key(path)  # never replaces a key


@pytest.mark.parametrize(
    ("mode", "content", "match"),
    [(0o644, bytes(32), "permissions 0644"), (0o640, bytes(32), "permissions 0640"),
     (0o600, bytes(31), "31 bytes"), (0o600, bytes(64), "64 bytes")],
)
def test_an_unsafe_or_malformed_key_file_is_refused(tmp_path: Path, mode: int, content: bytes, match: str) -> None:
    path = tmp_path / KEY_FILE
    path.write_bytes(content)
    path.chmod(mode)
    with pytest.raises(NodeKeyError, match=match):
        load_node_key(path)


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    create_node_key(real)
    (tmp_path / KEY_FILE).symlink_to(real)
    with pytest.raises(NodeKeyError, match="symlink"):
        load_node_key(tmp_path / KEY_FILE)


# --- starting on a disk --------------------------------------------------------------------


def config_for(data_dir: Path, port: int = 47101):
    return node_config(
        node={"id": NODE_ID, "data_dir": str(data_dir), "client_endpoint": f"tcp://127.0.0.1:{port}",
              "peer_endpoint": f"tcp://127.0.0.1:{port + 1}"},
        storage={"partitions": PARTITIONS},
    )


def write_some_events(data_dir: Path, subject: str = "corrupt-me-please") -> None:
    """Start the node's storage, append a signed batch under its key, close."""
    storage = open_node_storage(config_for(data_dir))
    try:
        chain = OriginChain(NODE_ID, Signer(storage.signer_key))
        events = chain.seal([draft(KeyDisabled(name=subject), subject=subject, partitions=PARTITIONS)], 1_700_000_000_000)
        service = node_services(None, event_log=storage.event_log)["event-log"]
        service.handle(AppendBatch(tuple(events)))
    finally:
        storage.event_log.close()


def run_node_process(config, tmp_path: Path) -> subprocess.CompletedProcess:
    config_path = tmp_path / "node.toml"
    config_path.write_text(config_to_toml(config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "keyswarm", "node", "--config", str(config_path)],
        stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=30,
    )


def test_a_node_refuses_to_start_on_a_damaged_record_with_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "node"
    write_some_events(data)
    mdb = data / "log" / "data.mdb"
    raw = bytearray(mdb.read_bytes())
    at = raw.find(b"corrupt-me-please")
    assert at > 0
    raw[at + 3] ^= 0x01  # one flipped bit inside the event record
    mdb.write_bytes(bytes(raw))
    with pytest.raises(CorruptRecord, match="damaged") as info:
        open_node_storage(config_for(data))
    assert str(data / "log") in str(info.value)
    result = run_node_process(config_for(data), tmp_path)
    assert result.returncode == 2, result.stderr.decode(errors="replace")
    log_text = result.stderr.decode(errors="replace")
    assert "could not start" in log_text and "damaged" in log_text and str(data / "log") in log_text


def test_a_node_refuses_a_key_that_did_not_start_its_chain(tmp_path: Path) -> None:
    data = tmp_path / "node"
    write_some_events(data)
    (data / KEY_FILE).unlink()
    with pytest.raises(NodeKeyError, match="is missing, but the event log holds a chain"):
        open_node_storage(config_for(data))
    assert not (data / KEY_FILE).exists(), "a missing key next to a chain is not replaced"
    create_node_key(data / KEY_FILE)
    with pytest.raises(NodeKeyError, match="is not the key that started"):
        open_node_storage(config_for(data))
    result = run_node_process(config_for(data), tmp_path)
    assert result.returncode == 2 and b"could not start" in result.stderr


def test_a_fresh_data_dir_gets_a_log_and_a_key(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    storage = open_node_storage(config_for(data))
    storage.event_log.close()
    assert (data / "log" / "data.mdb").exists()
    assert load_node_key(data / KEY_FILE) == storage.signer_key
    again = open_node_storage(config_for(data))
    again.event_log.close()
    assert again.signer_key == storage.signer_key
