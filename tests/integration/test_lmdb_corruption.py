"""LmdbLog against damaged, foreign and shared files on a real disk.

Bytes are changed inside record values only (found by content in data.mdb):
changing LMDB's page headers can crash the C library, which is LMDB's own
business (`LmdbLog.verify_file` checks the page structure offline). Every
copy of the target bytes is changed, since LMDB keeps stale copies of pages
it has replaced. Breaks with valid checksums ("planted") are written with
raw lmdb, to show the integrity walk checks cross-references, not only
checksums. A reader beside a writer runs the writer in a subprocess
(py-lmdb refuses to open one environment twice in a process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from keyswarm.errors import CorruptRecord, StorageError
from keyswarm.storage import lmdb_layout
from keyswarm.storage.events import GENESIS_PREV, Event, digest
from keyswarm.storage.lmdb_layout import origin_key
from keyswarm.storage.lmdb_log import LmdbLog
from keyswarm.storage.log import IntegrityProblem, Snapshot

pytestmark = pytest.mark.integration

PARTITIONS = 4
MARKER = b"MARKER-7f3a9c-"
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def chain(origin: str, n: int, *, marked: int | None = None, start: int = 1, prev: bytes = GENESIS_PREV) -> list[Event]:
    """A valid chain; the event at origin seq `marked` carries MARKER in its body."""
    events = []
    for seq in range(start, start + n):
        body = (MARKER if seq == marked else b"") + b"body-%s-%d-" % (origin.encode(), seq) + b"." * 40
        event = Event(partition=seq % PARTITIONS, origin=origin, origin_seq=seq, hlc=seq << 16, type=1,
                      subject=f"key-{seq}", body=body, prev=prev, sig=b"s" * 64)
        prev = digest(event)
        events.append(event)
    return events


def open_log(path: Path, **kwargs: object) -> LmdbLog:
    return LmdbLog.open(path, node_id="n1", partitions=PARTITIONS, genesis=b"g", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def written(tmp_path: Path) -> Iterator[tuple[Path, list[Event], list[Event]]]:
    """A closed log of two origins; origin a's seq 17 carries MARKER."""
    path = tmp_path / "log"
    a, b = chain("a", 30, marked=17), chain("b", 10)
    with open_log(path) as log:
        log.append(a[:10] + b[:5])
        log.append(a[10:] + b[5:])
        log.write_snapshot(Snapshot(partition=1, seq=2, state=b"state"))
    yield path, a, b


def position_of(path: Path, event: Event) -> tuple[int, int]:
    with LmdbLog.open_existing(path) as log:
        for seq, held in log.read_partition(event.partition):
            if held == event:
                return event.partition, seq
    raise AssertionError(f"{event} not in the log")


def change_everywhere(data: Path, needle: bytes, at: int) -> int:
    """XOR one byte at `at` in every copy of `needle` in the file; returns the copies changed."""
    raw = bytearray(data.read_bytes())
    copies, i = 0, raw.find(needle)
    while i != -1:
        raw[i + at] ^= 0x5A
        copies += 1
        i = raw.find(needle, i + 1)
    with open(data, "r+b") as f:  # in place: same inode, same size
        f.write(raw)
    return copies


def raw_env(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), max_dbs=16, subdir=True)


def raw_get(path: Path, db: bytes, key: bytes) -> bytes:
    env = raw_env(path)
    try:
        with env.begin(db=env.open_db(db, create=False)) as txn:
            value = txn.get(key)
    finally:
        env.close()
    assert value is not None
    return value


def raw_edit(path: Path, edit: Callable[[lmdb.Transaction, Callable[[bytes], object]], None]) -> None:
    env = raw_env(path)
    try:
        with env.begin(write=True) as txn:
            edit(txn, lambda name: env.open_db(name, txn=txn, create=False))
    finally:
        env.close()


def seal(key: bytes, payload: bytes) -> bytes:
    return lmdb_layout.seal(key, payload)


# --- bytes changed inside values ------------------------------------------------------


def test_a_changed_byte_in_an_event_is_reported_with_its_location(written: tuple) -> None:
    path, a, b = written
    partition, seq = position_of(path, a[16])
    assert change_everywhere(path / "data.mdb", MARKER, 3) >= 1
    with open_log(path) as log:
        with pytest.raises(CorruptRecord) as caught:
            log.read_partition(partition)
        problem = caught.value.problem  # type: ignore[attr-defined]
        assert (problem.db, problem.partition, problem.seq) == ("events", partition, seq)
        assert f"partition {partition} seq {seq}" in str(caught.value)
        with pytest.raises(CorruptRecord):
            list(log.iter_partition(partition))  # never skipped
        with pytest.raises(CorruptRecord):
            log.read_origin("a")
        # Everything around the damaged record still reads.
        assert len(log.read_partition(partition, limit=seq - 1)) == seq - 1
        assert log.read_partition(partition, from_seq=seq + 1)
        assert log.read_origin("a", to_seq=16) == a[:16]
        assert log.read_origin("b") == b
        problems = log.verify_integrity()
    assert problems and (problems[0].db, problems[0].partition, problems[0].seq) == ("events", partition, seq)
    assert "checksum" in problems[0].reason


def test_a_changed_byte_in_an_origins_entry_is_reported(written: tuple) -> None:
    path, a, _ = written
    value = raw_get(path, b"origins", origin_key("a", 5))
    assert change_everywhere(path / "data.mdb", value, 20) >= 1  # inside the digest
    with open_log(path) as log:
        with pytest.raises(CorruptRecord) as caught:
            log.read_origin("a")
        assert caught.value.problem == IntegrityProblem(  # type: ignore[attr-defined]
            db="origins", origin="a", origin_seq=5, reason="checksum mismatch (the stored bytes changed)"
        )
        assert log.read_origin("a", from_seq=6) == a[5:]
        problems = log.verify_integrity()
    assert [(p.db, p.origin, p.origin_seq) for p in problems] == [("origins", "a", 5)]


def test_a_changed_byte_in_a_head_is_reported_and_stops_appends_to_that_origin(written: tuple) -> None:
    path, a, b = written
    value = raw_get(path, b"heads", b"b")
    assert change_everywhere(path / "data.mdb", value, 12) >= 1
    with open_log(path) as log:
        with pytest.raises(CorruptRecord) as caught:
            log.heads()
        assert (caught.value.problem.db, caught.value.problem.origin) == ("heads", "b")  # type: ignore[attr-defined]
        with pytest.raises(CorruptRecord):
            log.append(chain("b", 1, start=11, prev=digest(b[-1])))
        assert log.append(chain("a", 1, start=31, prev=digest(a[-1]))).appended == 1  # other origins go on
        problems = log.verify_integrity()
    assert [(p.db, p.origin) for p in problems] == [("heads", "b")]


# --- breaks with valid checksums: the cross-references ---------------------------------


def test_a_record_that_does_not_decode_is_corrupt(written: tuple) -> None:
    path, _, _ = written
    key = lmdb_layout.EVENT_KEY.pack(2, 1)
    raw_edit(path, lambda txn, db: txn.put(key, seal(key, b"\xc1not msgpack"), db=db(b"events")))
    with open_log(path) as log:
        with pytest.raises(CorruptRecord, match="does not decode") as caught:
            log.read_partition(2)
        assert (caught.value.problem.partition, caught.value.problem.seq) == (2, 1)  # type: ignore[attr-defined]
        problems = log.verify_integrity()
    assert (problems[0].db, problems[0].partition, problems[0].seq) == ("events", 2, 1)


def test_a_record_under_the_wrong_key_is_corrupt(written: tuple) -> None:
    path, _, _ = written
    moved_from, moved_to = lmdb_layout.EVENT_KEY.pack(1, 1), lmdb_layout.EVENT_KEY.pack(1, 2)

    def move(txn: lmdb.Transaction, db: Callable[[bytes], object]) -> None:
        txn.put(moved_to, txn.get(moved_from, db=db(b"events")), db=db(b"events"))

    raw_edit(path, move)
    with open_log(path) as log:
        with pytest.raises(CorruptRecord, match="partition 1 seq 2"):
            log.read_partition(1)
        assert any((p.partition, p.seq) == (1, 2) for p in log.verify_integrity())


def twin_of(event: Event) -> Event:
    """Another event under the same origin seq and prev (what an equivocating origin signs)."""
    return Event(**{**{f: getattr(event, f) for f in Event.__dataclass_fields__}, "body": b"equivocated"})


def test_planted_breaks_with_valid_checksums_are_found(written: tuple) -> None:
    from keyswarm.transport import codec

    path, a, b = written
    pa, sa = position_of(path, a[7])
    pb, sb = position_of(path, b[4])
    key_a, key_b = lmdb_layout.EVENT_KEY.pack(pa, sa), lmdb_layout.EVENT_KEY.pack(pb, sb)

    def plant(txn: lmdb.Transaction, db: Callable[[bytes], object]) -> None:
        # a8 replaced by its twin: the origins index still holds the real digest.
        txn.put(key_a, seal(key_a, codec.encode(twin_of(a[7]))), db=db(b"events"))
        # b5 replaced and its index entry rewritten to match: only b6's prev tells.
        twin = twin_of(b[4])
        txn.put(key_b, seal(key_b, codec.encode(twin)), db=db(b"events"))
        okey = origin_key("b", 5)
        txn.put(okey, seal(okey, key_b + digest(twin)), db=db(b"origins"))
        # b's head rolled back one event.
        index = txn.get(origin_key("b", 9), db=db(b"origins"))
        txn.put(b"b", seal(b"b", lmdb_layout.U64.pack(9) + index[-32:]), db=db(b"heads"))
        snap = lmdb_layout.U16.pack(3)
        txn.put(snap, seal(snap, lmdb_layout.U64.pack(999) + b"x"), db=db(b"snapshots"))  # past the log

    raw_edit(path, plant)
    with open_log(path) as log:
        with pytest.raises(CorruptRecord, match="digest does not match"):
            log.read_origin("a")
        with pytest.raises(CorruptRecord, match="prev does not match"):
            log.read_origin("b")
        with pytest.raises(CorruptRecord, match="prev does not match"):
            log.read_origin("b", from_seq=6, to_seq=7)  # the link into a range is checked too
        assert log.read_origin("b", from_seq=7) == b[6:]
        found = [((p.db, p.partition, p.seq, p.origin, p.origin_seq), p.reason) for p in log.verify_integrity()]
    assert any("digest does not match" in r for k, r in found if k[:3] == ("events", pa, sa))
    assert any("chain broken" in r for k, r in found if k[0] == "events" and k[3:] == ("b", 6))
    assert any("behind" in r for k, r in found if k[0] == "heads" and k[3] == "b")
    assert any("past the partition" in r for k, r in found if k[:2] == ("snapshots", 3))
    assert len(found) == 4, found


def test_a_missing_event_record_is_reported_not_skipped(written: tuple) -> None:
    path, _, _ = written
    key = lmdb_layout.EVENT_KEY.pack(3, 2)
    raw_edit(path, lambda txn, db: txn.delete(key, db=db(b"events")))
    with open_log(path) as log:
        with pytest.raises(CorruptRecord, match="partition 3 seq 2: missing"):
            log.read_partition(3)
        problems = log.verify_integrity()
    assert ("events", 3, 3) in [(p.db, p.partition, p.seq) for p in problems]  # seq 3 follows seq 1
    assert any(p.db == "origins" and "holds no event" in p.reason for p in problems)


# --- files that are not a sound keyswarm log ----------------------------------------------


def test_a_truncated_file_is_refused_on_open(written: tuple) -> None:
    path, a, b = written
    with open_log(path) as log:  # grow the file well past its first pages
        log.append(chain("c", 400))
    data = path / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    for opener in (lambda: open_log(path), lambda: LmdbLog.open_existing(path)):
        with pytest.raises(StorageError, match="truncated"):
            opener()
    os.truncate(data, 100)
    with pytest.raises(StorageError, match="not an LMDB file"):
        open_log(path)
    os.truncate(data, 0)
    with pytest.raises(StorageError, match="empty"):
        open_log(path)


def test_a_garbage_data_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(StorageError, match="not an LMDB file"):
        open_log(tmp_path)
    with pytest.raises(StorageError, match="not an LMDB file"):
        LmdbLog.open_existing(tmp_path)


def test_an_lmdb_environment_that_is_not_a_keyswarm_log_is_refused(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=env.open_db(b"things", txn=txn))
    env.close()
    with pytest.raises(StorageError, match="not a keyswarm event log"):
        open_log(tmp_path)
    with pytest.raises(StorageError, match="no keyswarm event log"):
        LmdbLog.open_existing(tmp_path / "elsewhere")


def test_a_newer_schema_is_refused(written: tuple) -> None:
    path, _, _ = written
    raw_edit(path, lambda txn, db: txn.put(b"schema_version", lmdb_layout.U32.pack(2), db=db(b"meta")))
    for opener in (lambda: open_log(path), lambda: LmdbLog.open_existing(path)):
        with pytest.raises(StorageError, match="written by schema 2; this keyswarm reads up to 1"):
            opener()


def test_another_nodes_or_networks_log_is_refused(written: tuple) -> None:
    path, _, _ = written
    with pytest.raises(StorageError, match="belongs to node 'n1', not 'n2'"):
        LmdbLog.open(path, node_id="n2", partitions=PARTITIONS, genesis=b"g")
    with pytest.raises(StorageError, match="has 4 partitions, the config says 8"):
        LmdbLog.open(path, node_id="n1", partitions=8, genesis=b"g")
    with pytest.raises(StorageError, match="another network"):
        LmdbLog.open(path, node_id="n1", partitions=PARTITIONS, genesis=b"other")
    with open_log(path) as log:  # and the refusals left it usable
        assert log.meta().node_id == "n1"


# --- map growth, read-only readers, the structural check -------------------------------------


def test_the_map_doubles_when_full_and_the_batch_is_retried(tmp_path: Path) -> None:
    initial = 32 * 1024
    events = chain("a", 3000)
    with open_log(tmp_path / "log", map_size_bytes=initial) as log:
        for i in range(0, len(events), 500):
            assert log.append(events[i : i + 500]).appended == 500
        assert log._env.info()["map_size"] >= 8 * initial
    with open_log(tmp_path / "log", map_size_bytes=initial) as log:
        assert log.read_origin("a") == events
        assert log.verify_integrity() == []


def test_a_read_only_log_refuses_writes(written: tuple) -> None:
    path, a, _ = written
    with LmdbLog.open_existing(path) as log:
        assert log.read_origin("a") == a
        with pytest.raises(StorageError, match="read-only"):
            log.append(chain("z", 1))
        with pytest.raises(StorageError, match="read-only"):
            log.write_snapshot(Snapshot(partition=0, seq=0, state=b""))


def test_the_structural_check_passes_a_sound_file_and_fails_garbage(written: tuple, tmp_path: Path) -> None:
    path, _, _ = written
    assert LmdbLog.verify_file(path) == []
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(os.urandom(8192))
    assert LmdbLog.verify_file(tmp_path / "junk")


WRITER = """
import sys
from keyswarm.storage.events import GENESIS_PREV, Event, digest
from keyswarm.storage.lmdb_log import LmdbLog

path, batches = sys.argv[1], int(sys.argv[2])
log = LmdbLog.open(path, node_id="w", partitions=4, genesis=b"g", map_size_bytes=64 * 1024)
prev, seq = {"a": GENESIS_PREV, "b": GENESIS_PREV}, {"a": 0, "b": 0}
for i in range(batches):
    batch = []
    for origin in ("a", "b"):
        for _ in range(10):
            seq[origin] += 1
            event = Event(partition=seq[origin] % 4, origin=origin, origin_seq=seq[origin], hlc=seq[origin],
                          type=1, subject="k", body=b"x" * 200, prev=prev[origin], sig=b"s")
            prev[origin] = digest(event)
            batch.append(event)
    log.append(batch)
    if i == 0:
        print("ready", flush=True)
log.close()
"""


def test_a_read_only_reader_beside_a_writer_sees_consistent_data(tmp_path: Path) -> None:
    path, batches = tmp_path / "log", 300
    python_path = os.pathsep.join(p for p in (str(SOURCE_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": python_path}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(batches)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert writer.stdout is not None and writer.stderr is not None
        assert writer.stdout.readline() == b"ready\n", writer.stderr.read()
        overlapped = 0
        with LmdbLog.open_existing(path) as log:
            while True:
                running = writer.poll() is None
                heads = log.heads()
                for origin, head in heads.items():
                    events = log.read_origin(origin)  # read after the heads: at least as long
                    assert len(events) >= head.origin_seq
                    assert digest(events[head.origin_seq - 1]) == head.digest
                    assert all(e.prev == digest(p) for p, e in zip(events, events[1:]))
                if overlapped % 5 == 0:
                    assert log.verify_integrity() == []
                overlapped += running
                if not running:
                    break
            assert writer.wait(timeout=30) == 0, writer.stderr.read()
            assert {o: h.origin_seq for o, h in log.heads().items()} == {"a": 10 * batches, "b": 10 * batches}
            assert log.verify_integrity() == []
        assert overlapped >= 1, "the reader never ran while the writer was writing"
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait(timeout=30)


def test_a_reader_adopts_a_map_another_process_grew_even_on_its_first_transaction() -> None:
    """MDB_MAP_RESIZED on a reader's first transaction (while it opens the log) or any later one:
    the reader adopts the new size and goes on; only a map that keeps growing past the retries fails."""
    import lmdb

    from keyswarm.storage import lmdb_log

    class Env:
        def __init__(self, resized: int):
            self.resized, self.adopted = resized, 0

        def begin(self, **kwargs: object) -> str:
            if self.resized:
                self.resized -= 1
                raise lmdb.MapResizedError("mdb_txn_begin: MDB_MAP_RESIZED")
            return f"txn{kwargs}"

        def set_mapsize(self, size: int) -> None:
            assert size == 0  # 0: adopt the size the file now has
            self.adopted += 1

    env = Env(resized=2)
    assert lmdb_log._begin(env, buffers=True) == "txn{'buffers': True}" and env.adopted == 2
    env = Env(resized=lmdb_log._RESIZE_ATTEMPTS)
    with pytest.raises(lmdb.MapResizedError):
        lmdb_log._begin(env)


def test_opening_beside_a_writer_adopts_a_grown_map_whichever_transaction_sees_it(tmp_path: Path, monkeypatch) -> None:
    """open_db starts transactions of its own: a map grown while a reader opens the log is adopted
    there too (MDB_MAP_RESIZED from any step of opening is retried after set_mapsize(0))."""
    import lmdb

    from keyswarm.storage import lmdb_log

    LmdbLog.open(tmp_path / "log", node_id="n1", partitions=4, genesis=b"g").close()
    real = lmdb_log.LmdbLog._open_dbs
    calls = []

    def flaky(env, path, expected, creating):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) <= 2:
            raise lmdb.MapResizedError("mdb_txn_begin: MDB_MAP_RESIZED")
        return real(env, path, expected, creating)

    monkeypatch.setattr(lmdb_log.LmdbLog, "_open_dbs", staticmethod(flaky))
    with LmdbLog.open_existing(tmp_path / "log") as log:
        assert log.heads() == {} and len(calls) == 3
