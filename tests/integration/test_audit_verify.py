"""`keyswarm audit verify` finds every planted break in a real LMDB log.

Each test builds a real `LmdbLog` in `tmp_path` with `OriginChain`s (three
origins, a key rotation, several interleaved batches), closes it, plants one
break by writing the LMDB file directly (the `lmdb` module, or raw bytes of
data.mdb for a flipped byte), then runs the command in-process through
`keyswarm.cli.main` and checks the exit code and the first line it reports:
partition, local seq, origin, origin_seq and reason. Records are re-sealed
with `lmdb_layout.seal` where a planted change must get past the record
checksum, so the chain checks are what catch it.

One test runs `python -m keyswarm audit verify` as a subprocess while a
writer thread in this process appends to the same log: the node's case.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import pytest

from keyswarm.cli import main
from keyswarm.storage import lmdb_layout as layout
from keyswarm.storage.bodies import KeyConfigSet, KeyCreated, KeyDisabled, KeyVersionAdded
from keyswarm.storage.chain import OriginChain, Signer, draft
from keyswarm.storage.events import Event, digest
from keyswarm.storage.lmdb_log import LmdbLog
from keyswarm.transport import codec

pytestmark = pytest.mark.integration

PARTITIONS = 8
ORIGINS = ("n1", "n2", "n3")
NAMES = [f"key-{i}" for i in range(12)]
MARKER = b"@@audit-flip-marker@@"
T0_MS = 1_750_000_000_000


@dataclass
class Built:
    """A log on disk and what was written to it."""

    path: Path
    events: dict[tuple[str, int], Event]  # (origin, origin_seq) -> event
    positions: dict[tuple[str, int], tuple[int, int]]  # (origin, origin_seq) -> (partition, local seq)
    batches: dict[str, list[list[int]]]  # origin -> origin_seqs of each appended batch
    signers: dict[str, list[Signer]]  # origin -> keys in the order used
    marked: tuple[str, int]  # the event whose body carries MARKER

    def head_seq(self, origin: str) -> int:
        return self.batches[origin][-1][-1]

    def where(self, origin: str, origin_seq: int) -> str:
        partition, seq = self.positions[(origin, origin_seq)]
        return f"partition {partition}, seq {seq}, origin {origin!r}, origin_seq {origin_seq}"


def build_log(path: Path, *, rounds: int = 4, batch: int = 9) -> Built:
    """Three origins append interleaved batches; n2 rotates its key after round 1."""
    log = LmdbLog.open(path, node_id="n1", partitions=PARTITIONS, genesis=b"test-genesis")
    signers = {o: [Signer(bytes([i + 1]) * 32)] for i, o in enumerate(ORIGINS)}
    chains = {o: OriginChain(o, signers[o][0]) for o in ORIGINS}
    built = Built(path, {}, {}, {o: [] for o in ORIGINS}, signers, ("", 0))
    created: set[str] = set()
    now = T0_MS
    try:
        for r in range(rounds):
            for o_index, origin in enumerate(ORIGINS):
                now += 1
                drafts = []
                for i in range(batch):
                    name = NAMES[(r * 7 + o_index * 5 + i) % len(NAMES)]
                    marking = origin == "n3" and r == 1 and i == 3  # a version in the middle of a batch
                    material = MARKER if marking else bytes(32)
                    if name not in created:
                        created.add(name)
                        body: object = KeyCreated(name=name, algorithm="aes256-gcm", version_id=os.urandom(8), material=material)
                    elif i % 3 == 0 or marking:
                        body = KeyVersionAdded(name=name, version_id=os.urandom(8), material=material)
                    elif i % 3 == 1:
                        body = KeyConfigSet(name=name, min_decryption_version=1 + i)
                    else:
                        body = KeyDisabled(name=name)
                    drafts.append(draft(body, subject=name, partitions=PARTITIONS))
                events = chains[origin].seal(drafts, now)
                if origin == "n2" and r == 1:
                    new = Signer(bytes([9]) * 32)
                    signers[origin].append(new)
                    events.append(chains[origin].rotate(new, now))
                result = log.append(events)
                for event, position in zip(events, result.positions):
                    key = (event.origin, event.origin_seq)
                    built.events[key] = event
                    built.positions[key] = position
                    if MARKER in event.body:
                        built.marked = key
                built.batches[origin].append([e.origin_seq for e in events])
    finally:
        log.close()
    return built


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build_log(tmp_path / "log")


# --- planting -----------------------------------------------------------------------


@contextmanager
def raw_lmdb(path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """One write transaction on the log's LMDB environment, committed on exit."""
    env = lmdb.open(str(path), max_dbs=16, subdir=True)
    try:
        with env.begin(write=True) as txn:
            yield txn, {name: env.open_db(name.encode(), txn=txn, create=False) for name in layout.DB_NAMES}
    finally:
        env.close()


def event_key(built: Built, origin: str, origin_seq: int) -> bytes:
    return layout.EVENT_KEY.pack(*built.positions[(origin, origin_seq)])


def rewrite_event(built: Built, origin: str, origin_seq: int, event: Event) -> None:
    """Store `event` where (origin, origin_seq) is, with a valid record checksum."""
    key = event_key(built, origin, origin_seq)
    with raw_lmdb(built.path) as (txn, dbs):
        txn.put(key, layout.seal(key, codec.encode(event)), db=dbs["events"])


def rewrite_index(built: Built, origin: str, origin_seq: int, *, points_to: tuple[str, int], digest_of: Event) -> None:
    okey = layout.origin_key(origin, origin_seq)
    with raw_lmdb(built.path) as (txn, dbs):
        txn.put(okey, layout.seal(okey, event_key(built, *points_to) + digest(digest_of)), db=dbs["origins"])


def checkpoints(built: Built, origin: str) -> list[int]:
    return [seq for (o, seq), e in sorted(built.events.items()) if o == origin and e.sig]


# --- running the command --------------------------------------------------------------


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", "verify", "--no-progress", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def first_break(out: str) -> str:
    match = re.search(r"^first broken link: (.*)$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


def assert_break(capsys: pytest.CaptureFixture[str], built: Built, where: str, reason: str, *, detail: str = "") -> str:
    code, out, err = audit(capsys, "--data", str(built.path))
    assert code == 1, out + err
    line = first_break(out)
    assert line.startswith(f"{where}: {reason}"), f"expected {where}: {reason}\n got {line}"
    assert detail in line, line
    return out


# --- a sound log ------------------------------------------------------------------------


def test_a_sound_log_verifies_with_a_summary(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = audit(capsys, "--data", str(built.path))
    assert code == 0, out + err
    assert out.startswith("ok: ")
    total = len(built.events)
    signatures = sum(1 for e in built.events.values() if e.sig)
    assert f"3 origins, {total:,} events in " in out and f" of {PARTITIONS} partitions, {signatures} signatures" in out, out
    assert re.search(r"\d+\.\d\d s \(\d+\.\d us/event\)", out), out
    assert err == ""


def test_a_node_data_directory_is_accepted_and_quiet_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_log(tmp_path / "data" / "log", rounds=1)
    code, out, err = audit(capsys, "--data", str(tmp_path / "data"), "--quiet")
    assert (code, out, err) == (0, "", "")


def test_progress_goes_to_stderr_when_asked(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", "verify", "--data", str(built.path), "--progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert "records" in captured.err and "chains" in captured.err and "/s" in captured.err
    assert "[" not in captured.out


# --- planted breaks ---------------------------------------------------------------------


def test_a_flipped_byte_inside_an_event_is_a_corrupt_record(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert built.marked[0] == "n3"
    data = built.path / "data.mdb"
    raw = bytearray(data.read_bytes())
    hits = [m.start() for m in re.finditer(re.escape(MARKER), raw)]
    assert hits, "the marker payload is not in data.mdb"
    for at in hits:  # stale copies on free pages too: flipping those is harmless
        raw[at + 3] ^= 0x01
    data.write_bytes(bytes(raw))
    assert_break(capsys, built, built.where(*built.marked), "corrupt_record", detail="checksum mismatch")


def test_an_event_replaced_with_another_body_is_a_digest_mismatch_at_that_event(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    origin, seq = "n1", built.batches["n1"][1][3]  # inside a batch: no signature on it
    old = built.events[(origin, seq)]
    forged = dataclasses.replace(old, body=codec.encode(KeyDisabled(name=old.subject)), type=codec.tag_of(KeyDisabled))
    rewrite_event(built, origin, seq, forged)
    assert_break(capsys, built, built.where(origin, seq), "digest_mismatch", detail="digest does not match")


def test_a_replaced_event_with_its_index_rewritten_breaks_the_next_link(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    origin, seq = "n3", built.batches["n3"][2][4]
    old = built.events[(origin, seq)]
    forged = dataclasses.replace(old, body=codec.encode(KeyDisabled(name=old.subject)), type=codec.tag_of(KeyDisabled))
    rewrite_event(built, origin, seq, forged)
    rewrite_index(built, origin, seq, points_to=(origin, seq), digest_of=forged)
    assert_break(capsys, built, built.where(origin, seq + 1), "wrong_prev")


def test_a_forged_signature_is_a_bad_signature(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    origin, seq = "n1", checkpoints(built, "n1")[2]
    rewrite_event(built, origin, seq, dataclasses.replace(built.events[(origin, seq)], sig=os.urandom(64)))
    assert_break(capsys, built, built.where(origin, seq), "bad_signature", detail="does not verify under key")


def test_a_signature_by_the_wrong_key_is_a_bad_signature(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    origin, seq = "n3", checkpoints(built, "n3")[-1]
    event = built.events[(origin, seq)]
    stranger = Signer(bytes([77]) * 32)
    rewrite_event(built, origin, seq, dataclasses.replace(event, sig=stranger.sign_digest(digest(event))))
    assert_break(capsys, built, built.where(origin, seq), "bad_signature")


def test_a_rotation_signed_by_the_new_key_is_named(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    rotation = next(seq for (o, seq), e in sorted(built.events.items()) if o == "n2" and seq > 1 and e.subject == "")
    event = built.events[("n2", rotation)]
    new_key = built.signers["n2"][1]
    rewrite_event(built, "n2", rotation, dataclasses.replace(event, sig=new_key.sign_digest(digest(event))))
    assert_break(capsys, built, built.where("n2", rotation), "rotation_not_by_previous_key")


def test_an_unsigned_tail_is_reported_at_its_first_event(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    origin = "n1"
    last_batch = built.batches[origin][-1]
    event = built.events[(origin, last_batch[-1])]
    rewrite_event(built, origin, last_batch[-1], dataclasses.replace(event, sig=b""))
    assert_break(capsys, built, built.where(origin, last_batch[0]), "unsigned_tail",
                 detail=f"origin_seq {last_batch[0]}..{last_batch[-1]} carry no signature")


def test_a_deleted_event_is_a_gap_reported_at_the_next_event(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    # An event in the middle of n2's chain and of its partition, so both indexes show the hole.
    last_in = {}
    for partition, local in built.positions.values():
        last_in[partition] = max(last_in.get(partition, 0), local)
    origin, seq = next(("n2", s) for s in built.batches["n2"][2][1:-1]
                       if built.positions[("n2", s)][1] < last_in[built.positions[("n2", s)][0]])
    with raw_lmdb(built.path) as (txn, dbs):
        assert txn.delete(event_key(built, origin, seq), db=dbs["events"])
        assert txn.delete(layout.origin_key(origin, seq), db=dbs["origins"])
    out = assert_break(capsys, built, built.where(origin, seq + 1), "wrong_seq", detail=f"expected origin_seq {seq}, got {seq + 1}")
    assert "more problem(s) (--all lists them)" in out, out
    code, out_all, _ = audit(capsys, "--data", str(built.path), "--all")
    partition, local = built.positions[(origin, seq)]
    assert code == 1
    assert f"also: partition {partition}, seq {local + 1}: bad_event_record: local seqs {local}..{local} are missing" in out_all, out_all


def test_a_duplicated_origin_seq_in_the_index_is_a_wrong_seq(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    origin, seq = "n1", built.batches["n1"][1][5]
    rewrite_index(built, origin, seq + 1, points_to=(origin, seq), digest_of=built.events[(origin, seq)])
    assert_break(capsys, built, built.where(origin, seq), "wrong_seq", detail=f"expected origin_seq {seq + 1}, got {seq}")


def test_a_head_behind_its_chain_is_a_head_mismatch(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    origin = "n3"
    end = built.head_seq(origin)
    hkey = origin.encode()
    with raw_lmdb(built.path) as (txn, dbs):
        txn.put(hkey, layout.seal(hkey, layout.U64.pack(end - 1) + digest(built.events[(origin, end - 1)])), db=dbs["heads"])
    assert_break(capsys, built, built.where(origin, end), "head_mismatch", detail=f"the head says origin_seq {end - 1}")


def test_a_head_with_another_digest_is_a_head_mismatch(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    origin = "n2"
    end = built.head_seq(origin)
    hkey = origin.encode()
    with raw_lmdb(built.path) as (txn, dbs):
        txn.put(hkey, layout.seal(hkey, layout.U64.pack(end) + bytes(32)), db=dbs["heads"])
    assert_break(capsys, built, built.where(origin, end), "head_mismatch", detail="digest")


def test_all_lists_every_break_and_each_chain_is_checked(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    forged_sig = ("n1", checkpoints(built, "n1")[1])
    rewrite_event(built, *forged_sig, dataclasses.replace(built.events[forged_sig], sig=bytes(64)))
    tail = built.batches["n3"][-1]
    rewrite_event(built, "n3", tail[-1], dataclasses.replace(built.events[("n3", tail[-1])], sig=b""))
    code, out, _ = audit(capsys, "--data", str(built.path), "--all")
    assert code == 1
    assert f"first broken link: {built.where(*forged_sig)}: bad_signature" in out, out
    assert f"also: {built.where('n3', tail[0])}: unsigned_tail" in out, out


def test_the_records_walk_in_a_second_process_finds_the_same(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = audit(capsys, "--data", str(built.path), "--jobs", "2")
    assert code == 0 and out.startswith("ok: "), out + err
    partition, local = built.positions[("n1", 3)]
    with raw_lmdb(built.path) as (txn, dbs):  # a snapshot no chain reads: only the records walk sees it
        key = layout.U16.pack(partition)
        txn.put(key, b"\x00\x00\x00\x00" + layout.U64.pack(local) + b"garbage", db=dbs["snapshots"])
    code, out, err = audit(capsys, "--data", str(built.path), "--jobs", "2")
    assert code == 1, out + err
    assert first_break(out) == f"partition {partition}: bad_snapshot: {layout.CHANGED}", out


def test_max_problems_caps_the_report(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    for origin in ORIGINS:  # three broken chains
        seq = checkpoints(built, origin)[1]
        rewrite_event(built, origin, seq, dataclasses.replace(built.events[(origin, seq)], sig=bytes(64)))
    code, out, _ = audit(capsys, "--data", str(built.path), "--all", "--max-problems", "2")
    assert code == 1
    assert out.count(": bad_signature") == 2 and "stopped after 2 problems (--max-problems)" in out, out


# --- what is not a log --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "no keyswarm event log in"),
        (lambda p: p.write_bytes(b"not a directory"), "is a file"),
        (lambda p: (p.mkdir(), (p / "data.mdb").write_bytes(os.urandom(3 * 4096))), "not an LMDB file"),
        (lambda p: None, "does not exist"),
    ],
    ids=["empty-dir", "a-file", "garbage", "missing"],
)
def test_a_directory_without_a_log_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, message: str) -> None:
    target = tmp_path / "target"
    make(target)
    code, out, err = audit(capsys, "--data", str(target))
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify"]) == 2
    assert main(["audit"]) == 2
    assert main(["audit", "verify", "--data", "x", "--max-problems", "0"]) == 2
    assert "--data" in capsys.readouterr().err


# --- beside a running writer ------------------------------------------------------------------


def test_verify_as_a_process_while_a_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "data" / "log"
    build_log(path, rounds=2)
    log = LmdbLog.open(path, node_id="n1", partitions=PARTITIONS, genesis=b"test-genesis")
    chain = OriginChain("n4", Signer(bytes([44]) * 32))
    stop = threading.Event()
    appended = [0]

    def write() -> None:
        now = T0_MS + 10_000
        while not stop.is_set():
            now += 1
            drafts = [draft(KeyConfigSet(name=NAMES[i % len(NAMES)], deletion_allowed=bool(i % 2)), subject=NAMES[i % len(NAMES)],
                            partitions=PARTITIONS) for i in range(50)]
            log.append(chain.seal(drafts, now))
            appended[0] += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while appended[0] < 100:  # n4's chain is several read batches long before the audit starts
            stop.wait(0.01)
            assert writer.is_alive(), "the writer died"
        before = appended[0]
        done = subprocess.run(
            [sys.executable, "-m", "keyswarm", "audit", "verify", "--data", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
        )
        during = appended[0]
    finally:
        stop.set()
        writer.join(10)
        log.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: ") and "4 origins" in done.stdout, done.stdout
    assert during - before >= 10, "the writer made little progress while the audit ran"
