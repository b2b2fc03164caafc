"""One contract for every `EventLog`: MemoryLog and LmdbLog pass the same tests.

The `log_kind` fixture is parametrised over the implementations (as
pyeventsourcing subclasses its recorder suites per backend); `create_log`
opens a fresh log of that kind and `reopen` closes one and opens it again
on the same data. The LMDB logs start with a 64 KiB map and read in
batches of 3 records, so map growth and batch boundaries run in every test.
Events are built directly with valid chains; `sig` is arbitrary (the log
checks links and digests, not signatures).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyswarm.errors import StorageError
from keyswarm.storage import lmdb_log
from keyswarm.storage.events import GENESIS_PREV, Event, Head, digest
from keyswarm.storage.lmdb_log import LmdbLog
from keyswarm.storage.log import SCHEMA_VERSION, ChainConflict, ChainGap, EventLog, LogMeta, Snapshot
from keyswarm.storage.memory_log import MemoryLog

PARTITIONS = 4
NODE = "n1"
GENESIS = b"genesis-record"


def chain(
    origin: str, n: int, *, start: int = 1, prev: bytes = GENESIS_PREV, tag: bytes = b"", partition: int | None = None
) -> list[Event]:
    """`n` valid chained events of `origin` from origin seq `start`, spread over
    the partitions unless `partition` pins them to one."""
    events = []
    for seq in range(start, start + n):
        event = Event(
            partition=(seq * 7 + len(origin)) % PARTITIONS if partition is None else partition,
            origin=origin, origin_seq=seq, hlc=seq << 16,
            type=1, subject=f"key-{seq % 5}", body=b"body-%s-%d%s" % (origin.encode(), seq, tag), prev=prev, sig=b"sig",
        )
        prev = digest(event)
        events.append(event)
    return events


def log_meta() -> LogMeta:
    return LogMeta(schema_version=SCHEMA_VERSION, node_id=NODE, partitions=PARTITIONS, genesis=GENESIS)


def relinked(event: Event, **changes: object) -> Event:
    fields = {name: getattr(event, name) for name in Event.__dataclass_fields__}
    return Event(**{**fields, **changes})


@pytest.fixture(params=["memory", "lmdb"])
def log_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "lmdb":
        monkeypatch.setattr(lmdb_log, "READ_BATCH", 3)
    return request.param


@pytest.fixture
def create_log(log_kind: str, tmp_path: Path) -> Iterator[Callable[..., EventLog]]:
    """`create_log(node_id=..., partitions=...)`: a fresh, empty log; closed at teardown."""
    opened: list[EventLog] = []
    counter = itertools.count()

    def create(node_id: str = NODE, partitions: int = PARTITIONS, genesis: bytes = GENESIS) -> EventLog:
        if log_kind == "memory":
            log: EventLog = MemoryLog(node_id=node_id, partitions=partitions, genesis=genesis)
        else:
            path = tmp_path / f"log-{next(counter)}"
            log = LmdbLog.open(path, node_id=node_id, partitions=partitions, genesis=genesis, map_size_bytes=64 * 1024)
            log._test_path = path  # type: ignore[attr-defined]
        opened.append(log)
        return log

    yield create
    for log in opened:
        log.close()


@pytest.fixture
def log(create_log: Callable[..., EventLog]) -> EventLog:
    return create_log()


@pytest.fixture
def reopen(log_kind: str) -> Callable[[EventLog], EventLog]:
    def again(log: EventLog) -> EventLog:
        if isinstance(log, MemoryLog):
            return log.reopen()
        log.close()
        path = log._test_path  # type: ignore[attr-defined]
        return LmdbLog.open(path, node_id=NODE, partitions=PARTITIONS, genesis=GENESIS)

    return again


def everything(log: EventLog) -> dict[str, object]:
    """All a log shows through its reads, for before/after comparisons."""
    return {
        "partitions": [log.read_partition(p) for p in range(PARTITIONS)],
        "heads": log.heads(),
        "last": [log.last_seq(p) for p in range(PARTITIONS)],
        "origins": {origin: log.read_origin(origin) for origin in log.heads()},
        "snapshots": [log.read_snapshot(p) for p in range(PARTITIONS)],
    }


# --- meta and the empty log ---------------------------------------------------


def test_meta_round_trip(log: EventLog) -> None:
    assert log.meta() == log_meta()


def test_an_empty_log_reads_empty(log: EventLog) -> None:
    assert log.heads() == {}
    assert [log.last_seq(p) for p in range(PARTITIONS)] == [0] * PARTITIONS
    assert log.read_partition(0) == []
    assert log.read_origin("nobody") == []
    assert log.read_snapshot(1) is None
    assert log.append([]).positions == ()
    assert log.verify_integrity() == []


# --- append and read ------------------------------------------------------------


def test_append_then_read_partition_origin_heads_and_last_seq(log: EventLog) -> None:
    events = chain("a", 10)
    result = log.append(events)
    assert result.appended == 10
    for p in range(PARTITIONS):
        mine = [e for e in events if e.partition == p]
        assert log.read_partition(p) == list(enumerate(mine, start=1)), f"partition {p}"
        assert log.last_seq(p) == len(mine)
    local = {p: 0 for p in range(PARTITIONS)}
    expected = []
    for e in events:
        local[e.partition] += 1
        expected.append((e.partition, local[e.partition]))
    assert result.positions == tuple(expected)
    assert log.read_origin("a") == events
    assert log.heads() == {"a": Head(10, digest(events[-1]))}


def test_a_chain_continues_across_batches(log: EventLog) -> None:
    events = chain("a", 9)
    for i in range(0, 9, 3):
        log.append(events[i : i + 3])
    assert log.read_origin("a") == events
    assert log.heads()["a"] == Head(9, digest(events[-1]))


def test_multiple_origins_interleaved(log: EventLog) -> None:
    a, b, c = chain("a", 6), chain("b", 6), chain("c", 4)
    log.append([a[0], b[0], a[1], c[0], b[1], b[2]])
    log.append([c[1], a[2], a[3], b[3], c[2], c[3], a[4], a[5], b[4], b[5]])
    assert log.read_origin("a") == a and log.read_origin("b") == b and log.read_origin("c") == c
    assert list(log.heads()) == ["a", "b", "c"]  # ordered by origin id
    appended = [a[0], b[0], a[1], c[0], b[1], b[2], c[1], a[2], a[3], b[3], c[2], c[3], a[4], a[5], b[4], b[5]]
    for p in range(PARTITIONS):
        assert [e for _, e in log.read_partition(p)] == [e for e in appended if e.partition == p]
    assert log.verify_integrity() == []


def test_reading_from_the_middle_and_limits(log: EventLog) -> None:
    events = chain("a", 10, partition=2)
    log.append(events)
    rows = log.read_partition(2)
    assert [s for s, _ in rows] == list(range(1, 11))
    assert log.read_partition(2, from_seq=4, limit=3) == rows[3:6]
    assert log.read_partition(2, from_seq=8) == rows[7:]
    assert log.read_partition(2, from_seq=11) == []
    assert log.read_partition(2, from_seq=0, limit=2) == rows[:2]  # from_seq below 1 reads from the start
    assert log.read_partition(2, limit=0) == []
    assert log.read_partition(2, from_seq=3, limit=100) == rows[2:]
    assert list(log.iter_partition(2, from_seq=2, batch=4)) == rows[1:]
    assert log.read_origin("a", from_seq=3, to_seq=5) == events[2:5]
    assert log.read_origin("a", from_seq=9, to_seq=50) == events[8:]
    assert log.read_origin("a", from_seq=6, to_seq=5) == []
    assert log.read_origin("a", from_seq=11) == []


def test_reading_a_partition_outside_the_range_is_a_caller_error(log: EventLog) -> None:
    for bad in (-1, PARTITIONS):
        with pytest.raises(ValueError):
            log.read_partition(bad)
        with pytest.raises(ValueError):
            log.last_seq(bad)


# --- the chain rules --------------------------------------------------------------


def test_a_batch_with_a_bad_link_in_the_middle_writes_nothing(log: EventLog) -> None:
    log.append(chain("z", 2))
    before = everything(log)
    a, b = chain("a", 4), chain("b", 2)
    broken = relinked(a[2], prev=bytes(32))
    with pytest.raises(ChainConflict) as caught:
        log.append([b[0], a[0], a[1], broken, a[3], b[1]])
    assert (caught.value.origin, caught.value.origin_seq) == ("a", 3)
    assert not isinstance(caught.value, ChainGap)
    assert everything(log) == before
    assert log.append(a + b).appended == 6  # the valid events still go in afterwards


def test_a_gap_is_refused_as_chain_gap_and_writes_nothing(log: EventLog) -> None:
    a = chain("a", 5)
    log.append(a[:2])
    before = everything(log)
    with pytest.raises(ChainGap) as caught:
        log.append([a[3], a[4]])
    assert (caught.value.origin, caught.value.origin_seq, caught.value.missing_from) == ("a", 4, 3)
    with pytest.raises(ChainGap):
        log.append(chain("new", 3)[1:])
    assert everything(log) == before


def test_first_event_must_link_to_genesis(log: EventLog) -> None:
    first = relinked(chain("a", 1)[0], prev=b"\x01" * 32)
    with pytest.raises(ChainConflict):
        log.append([first])
    with pytest.raises(ChainConflict):
        log.append([relinked(chain("a", 1)[0], origin_seq=0)])
    assert log.heads() == {}


def test_duplicates_are_skipped_idempotently(log: EventLog) -> None:
    a = chain("a", 6)
    first = log.append(a[:4])
    assert log.append(a[:4]).positions == (None,) * 4
    mixed = log.append([a[2], a[3], a[4], a[4], a[5]])  # replayed, new, repeated within the batch, new
    assert mixed.positions[:2] == (None, None) and mixed.positions[3] is None
    assert mixed.appended == 2 and None not in (mixed.positions[2], mixed.positions[4])
    assert log.read_origin("a") == a
    assert sum(log.last_seq(p) for p in range(PARTITIONS)) == 6
    assert first.appended == 4


def test_equivocation_is_a_chain_conflict_and_changes_nothing(log: EventLog) -> None:
    a = chain("a", 3)
    log.append(a)
    before = everything(log)
    twin = chain("a", 1, start=2, prev=digest(a[0]), tag=b"-other")[0]  # seq 2, same prev, different body
    assert twin.prev == a[1].prev and digest(twin) != digest(a[1])
    with pytest.raises(ChainConflict) as caught:
        log.append([twin])
    assert (caught.value.origin, caught.value.origin_seq) == ("a", 2)
    with pytest.raises(ChainConflict):  # equivocation inside one batch
        b = chain("b", 2)
        log.append(b + [chain("b", 1, start=2, prev=digest(b[0]), tag=b"-x")[0]])
    assert everything(log) == before


def test_the_sealers_digests_are_taken_and_their_links_still_checked(log: EventLog) -> None:
    a = chain("a", 6)
    digests = [digest(e) for e in a]
    assert log.append(a[:3], digests=digests[:3]).appended == 3
    before = everything(log)
    with pytest.raises(ChainConflict):  # a digest that is not its event's breaks the next link
        log.append(a[3:], digests=[bytes(32)] + digests[4:])
    with pytest.raises(AssertionError):  # the last one, which nothing in the batch links to, is recomputed
        log.append(a[3:], digests=digests[3:5] + [bytes(32)])
    with pytest.raises(AssertionError):  # shifted by one: caught by the last one
        log.append(a[3:], digests=digests[2:5])
    with pytest.raises(AssertionError):
        log.append(a[3:], digests=digests[3:5])
    assert everything(log) == before
    assert log.append(a[3:], digests=digests[3:]).appended == 3
    assert log.heads() == {"a": Head(6, digests[5])}
    assert log.read_origin("a") == a
    assert log.append(a[4:], digests=digests[4:]).positions == (None, None)  # duplicates, as without digests
    assert log.verify_integrity() == []


def test_an_event_outside_the_partitions_is_refused(log: EventLog) -> None:
    bad = relinked(chain("a", 1)[0], partition=PARTITIONS)
    with pytest.raises(StorageError) as caught:
        log.append([bad])
    assert not isinstance(caught.value, ChainConflict)
    assert log.heads() == {}


# --- snapshots ----------------------------------------------------------------------


def test_snapshots_write_read_replace(log: EventLog) -> None:
    log.append(chain("a", 12))
    n = log.last_seq(1)
    log.write_snapshot(Snapshot(partition=1, seq=1, state=b"state-1"))
    assert log.read_snapshot(1) == Snapshot(partition=1, seq=1, state=b"state-1")
    log.write_snapshot(Snapshot(partition=1, seq=n, state=b"state-n" * 100))
    assert log.read_snapshot(1) == Snapshot(partition=1, seq=n, state=b"state-n" * 100)
    assert log.read_snapshot(0) is None
    log.write_snapshot(Snapshot(partition=0, seq=0, state=b""))
    assert log.read_snapshot(0) == Snapshot(partition=0, seq=0, state=b"")


def test_a_snapshot_past_the_log_is_refused(log: EventLog) -> None:
    log.append(chain("a", 4))
    with pytest.raises(StorageError):
        log.write_snapshot(Snapshot(partition=2, seq=log.last_seq(2) + 1, state=b"x"))
    assert log.read_snapshot(2) is None


# --- lifecycle --------------------------------------------------------------------------


def test_close_then_use_raises_storage_error(log: EventLog) -> None:
    log.append(chain("a", 2))
    log.close()
    log.close()  # twice is harmless
    calls: list[Callable[[], object]] = [
        log.meta, log.heads, lambda: log.append(chain("b", 1)), lambda: log.read_partition(0),
        lambda: log.read_origin("a"), lambda: log.last_seq(0), lambda: log.read_snapshot(0),
        lambda: log.write_snapshot(Snapshot(partition=0, seq=0, state=b"")), log.verify_integrity,
    ]
    for call in calls:
        with pytest.raises(StorageError):
            call()


def test_reopen_keeps_everything(log: EventLog, reopen: Callable[[EventLog], EventLog]) -> None:
    a, b = chain("a", 7), chain("b", 3)
    log.append(a[:4] + b)
    log.append(a[4:])
    log.write_snapshot(Snapshot(partition=3, seq=1, state=b"s"))
    before = everything(log)
    again = reopen(log)
    try:
        assert everything(again) == before
        assert again.meta() == log_meta()
        assert again.append(chain("a", 1, start=8, prev=digest(a[-1]))).appended == 1
    finally:
        again.close()


def test_verify_integrity_passes_and_reports_progress(log: EventLog) -> None:
    log.append(chain("a", 20) + chain("b", 5))
    seen: list[tuple[int, int]] = []
    assert log.verify_integrity(progress=lambda done, total: seen.append((done, total))) == []
    assert seen and seen[-1][0] == seen[-1][1] > 0


# --- property: random interleavings -----------------------------------------------------

ORIGINS = ("a", "b", "c", "d")
CHAINS = {origin: chain(origin, 40) for origin in ORIGINS}


@st.composite
def interleavings(draw: st.DrawFn) -> list[list[Event]]:
    """Batches that take the next few events of random origins, with replays of earlier ones."""
    taken = dict.fromkeys(ORIGINS, 0)
    batches = []
    for _ in range(draw(st.integers(1, 8))):
        batch: list[Event] = []
        for _ in range(draw(st.integers(1, 5))):
            origin = draw(st.sampled_from(ORIGINS))
            if taken[origin] and draw(st.booleans()) and draw(st.booleans()):
                start = draw(st.integers(0, taken[origin] - 1))  # a replay: duplicates
                batch.extend(CHAINS[origin][start : taken[origin]])
            n = draw(st.integers(0, 6))
            batch.extend(CHAINS[origin][taken[origin] : taken[origin] + n])
            taken[origin] = min(taken[origin] + n, 40)
        batches.append(batch)
    return batches


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=interleavings())
def test_random_interleavings_read_back_as_appended(
    create_log: Callable[..., EventLog], batches: list[list[Event]]
) -> None:
    log = create_log()
    held: dict[str, int] = dict.fromkeys(ORIGINS, 0)
    order: list[Event] = []
    for batch in batches:
        result = log.append(batch)
        for event, position in zip(batch, result.positions):
            if position is None:
                assert event.origin_seq <= held[event.origin], f"{event.origin} {event.origin_seq}: not a duplicate"
            else:
                assert event.origin_seq == held[event.origin] + 1
                held[event.origin] = event.origin_seq
                order.append(event)
    for origin in ORIGINS:
        assert log.read_origin(origin) == CHAINS[origin][: held[origin]]
    assert log.heads() == {o: Head(n, digest(CHAINS[o][n - 1])) for o, n in sorted(held.items()) if n}
    for p in range(PARTITIONS):
        rows = log.read_partition(p)
        assert [s for s, _ in rows] == list(range(1, len(rows) + 1))
        assert [e for _, e in rows] == [e for e in order if e.partition == p]
    assert log.verify_integrity() == []
    log.close()
