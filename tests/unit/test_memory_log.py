"""MemoryLog's crash model: what the simulator's crashes lose, and what they never lose.

`stage` writes a batch that reads see at once but that is not durable;
`commit` makes everything staged durable; `crash` discards the staged rest
and says how many events that was. The rest of MemoryLog's behaviour is the
EventLog contract (tests/contract/test_event_log.py).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyswarm.errors import StorageError
from keyswarm.storage.events import GENESIS_PREV, Event, Head, digest
from keyswarm.storage.log import ChainConflict, Snapshot
from keyswarm.storage.memory_log import MemoryLog

PARTITIONS = 3


def chain(origin: str, n: int, *, start: int = 1, prev: bytes = GENESIS_PREV) -> list[Event]:
    events = []
    for seq in range(start, start + n):
        event = Event(
            partition=(seq + len(origin)) % PARTITIONS, origin=origin, origin_seq=seq, hlc=seq,
            type=1, subject="k", body=b"%s-%d" % (origin.encode(), seq), prev=prev, sig=b"",
        )
        prev = digest(event)
        events.append(event)
    return events


def contents(log: MemoryLog) -> tuple[object, ...]:
    return (
        tuple(tuple(log.read_partition(p)) for p in range(PARTITIONS)),
        log.heads(),
        {origin: tuple(log.read_origin(origin)) for origin in log.heads()},
    )


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog(node_id="n1", partitions=PARTITIONS, genesis=b"g")


def test_staged_events_are_visible_before_commit(log: MemoryLog) -> None:
    a = chain("a", 4)
    result = log.stage(a)
    assert result.appended == 4
    assert log.read_origin("a") == a
    assert log.heads() == {"a": Head(4, digest(a[-1]))}
    assert log.staged_count == 4


def test_crash_loses_exactly_the_uncommitted_events(log: MemoryLog) -> None:
    a, b = chain("a", 6), chain("b", 4)
    log.append(a[:3] + b[:1])
    durable = contents(log)
    log.stage(a[3:5])
    log.stage([b[1], a[5], b[2]])
    assert log.crash() == 5
    assert contents(log) == durable
    assert log.staged_count == 0
    assert log.crash() == 0  # a second crash has nothing left to lose


def test_commit_makes_staged_events_survive_a_crash(log: MemoryLog) -> None:
    a = chain("a", 5)
    log.stage(a[:2])
    log.stage(a[2:4])
    assert log.commit() == 4
    log.stage(a[4:])
    assert log.crash() == 1
    assert log.read_origin("a") == a[:4]


def test_heads_and_local_seqs_roll_back_so_chains_continue_after_a_crash(log: MemoryLog) -> None:
    a = chain("a", 8)
    log.append(a[:3])
    last = [log.last_seq(p) for p in range(PARTITIONS)]
    log.stage(a[3:6])
    log.crash()
    assert log.heads() == {"a": Head(3, digest(a[2]))}
    assert [log.last_seq(p) for p in range(PARTITIONS)] == last
    # The lost events are new again (a peer resends them), and the chain goes on.
    assert log.append(a[3:]).appended == 5
    assert log.read_origin("a") == a
    assert log.verify_integrity() == []


def test_an_origin_first_seen_in_a_lost_batch_disappears(log: MemoryLog) -> None:
    log.append(chain("a", 2))
    log.stage(chain("b", 2))
    log.crash()
    assert list(log.heads()) == ["a"]
    assert log.read_origin("b") == []
    assert log.append(chain("b", 2)).appended == 2


def test_a_refused_stage_stages_nothing(log: MemoryLog) -> None:
    a = chain("a", 3)
    log.stage(a[:1])
    with pytest.raises(ChainConflict):
        log.stage([a[1], Event(**{**_fields(a[2]), "prev": bytes(32)})])
    assert log.staged_count == 1
    assert log.crash() == 1
    assert log.heads() == {}


def test_duplicates_of_staged_events_are_skipped(log: MemoryLog) -> None:
    a = chain("a", 3)
    log.stage(a[:2])
    assert log.stage(a).positions[:2] == (None, None)
    assert log.crash() == 3


def test_a_snapshot_is_durable_and_makes_what_was_staged_before_it_durable(log: MemoryLog) -> None:
    a = chain("a", 6)
    log.stage(a)
    p = a[-1].partition
    log.write_snapshot(Snapshot(partition=p, seq=log.last_seq(p), state=b"folded"))
    assert log.crash() == 0  # fsync order: the snapshot's commit carried the staged events
    assert log.read_origin("a") == a
    assert log.read_snapshot(p) == Snapshot(partition=p, seq=log.last_seq(p), state=b"folded")


def test_a_crash_reaches_the_data_through_a_closed_handle_and_reopen_sees_the_rest(log: MemoryLog) -> None:
    a = chain("a", 4)
    log.append(a[:2])
    log.stage(a[2:])
    log.close()
    with pytest.raises(StorageError):
        log.heads()
    assert log.crash() == 2
    again = log.reopen()
    assert again.read_origin("a") == a[:2]
    with pytest.raises(StorageError):
        log.read_origin("a")  # the old handle stays closed


def _fields(event: Event) -> dict[str, object]:
    return {name: getattr(event, name) for name in Event.__dataclass_fields__}


# --- property: any schedule of stage / commit / crash keeps exactly the committed prefix ---

CHAINS = {origin: chain(origin, 30) for origin in ("a", "b", "c")}

operations = st.lists(
    st.one_of(
        st.tuples(st.just("stage"), st.sampled_from(sorted(CHAINS)), st.integers(1, 4)),
        st.tuples(st.just("commit")),
        st.tuples(st.just("crash")),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_any_schedule_keeps_every_committed_event_and_loses_every_uncommitted_one(ops: list[tuple]) -> None:
    log = MemoryLog(node_id="n1", partitions=PARTITIONS)
    durable = dict.fromkeys(CHAINS, 0)  # the model: per origin, how many events are durable
    visible = dict(durable)
    for op in ops:
        if op[0] == "stage":
            _, origin, n = op
            batch = CHAINS[origin][visible[origin] : visible[origin] + n]
            log.stage(batch)
            visible[origin] += len(batch)
        elif op[0] == "commit":
            log.commit()
            durable = dict(visible)
        else:
            lost = log.crash()
            assert lost == sum(visible.values()) - sum(durable.values())
            visible = dict(durable)
        for origin, events in CHAINS.items():
            assert log.read_origin(origin) == events[: visible[origin]]
    assert log.verify_integrity() == []
    total = sum(visible.values())
    assert sum(log.last_seq(p) for p in range(PARTITIONS)) == total
