"""`MemoryLog`: the event log in dicts and lists, with a crash model.

Owns the in-memory `EventLog` used by unit tests and by the simulator, and
the simulator's model of what a crash loses.

Rules:
- Same contract as `LmdbLog` (`tests/contract/test_event_log.py` runs both):
  the chain rules are `log.check_batch`, so the two cannot disagree on them.
- Crash model. `stage(events)` writes a batch that reads see at once but
  that is not yet durable (the page cache before fsync); `commit()` makes
  everything staged durable; `crash()` discards whatever is staged and not
  committed and returns how many events were lost. `append` is stage +
  commit, the way LmdbLog's one fsynced transaction is. Staged events are
  always the tails of their partition and origin lists (appends only), so a
  crash truncates tails and every head rolls back with them.
- Durability is ordered, as fsync is: `write_snapshot` is a durable write,
  so it commits what was staged before it (a real disk cannot make the
  later write durable and lose the earlier one under LMDB's single writer).
- The data outlives a handle: `close()` ends this handle, `reopen()` gives a
  new one on the same data, as a restarted node reopens its directory.
"""

from __future__ import annotations

from collections.abc import Sequence

from keyswarm.errors import StorageError
from keyswarm.storage.events import GENESIS_PREV, Event, Head, digest
from keyswarm.storage.log import (
    SCHEMA_VERSION,
    AppendResult,
    EventLog,
    IntegrityProblem,
    LogMeta,
    Progress,
    Snapshot,
    batch_digests,
    check_batch,
)


class _Store:
    """What a simulated disk holds; shared by every handle `reopen` makes."""

    def __init__(self, meta: LogMeta):
        self.meta = meta
        self.partitions: list[list[Event]] = [[] for _ in range(meta.partitions)]
        # origin -> [(partition, local seq, digest)], index = origin_seq - 1
        self.origins: dict[str, list[tuple[int, int, bytes]]] = {}
        self.snapshots: dict[int, Snapshot] = {}
        # (partition, origin) of every staged, not yet committed event, oldest first
        self.staged: list[tuple[int, str]] = []


class MemoryLog(EventLog):
    """An `EventLog` held in memory, with `stage` / `commit` / `crash` for the simulator."""

    def __init__(self, *, node_id: str, partitions: int, genesis: bytes = b""):
        if type(partitions) is not int or not 1 <= partitions <= 65536:
            raise ValueError(f"partitions must be 1..65536, got {partitions!r}")
        meta = LogMeta(schema_version=SCHEMA_VERSION, node_id=node_id, partitions=partitions, genesis=genesis)
        self._data = _Store(meta)
        self._closed = False

    def _open(self) -> _Store:
        if self._closed:
            raise StorageError("the event log is closed")
        return self._data

    # --- the crash model -----------------------------------------------------

    def stage(self, events: Sequence[Event], *, digests: Sequence[bytes] | None = None) -> AppendResult:
        """Write a batch visible to reads but not durable until `commit` (chain rules and `digests` as `append`)."""
        store = self._open()
        digests = batch_digests(events, digests)
        fresh = check_batch(
            events, digests, partitions=store.meta.partitions, head_of=self._head_of, digest_at=self._digest_at
        )
        positions: list[tuple[int, int] | None] = []
        for event, event_digest, is_new in zip(events, digests, fresh):
            if not is_new:
                positions.append(None)
                continue
            rows = store.partitions[event.partition]
            rows.append(event)
            store.origins.setdefault(event.origin, []).append((event.partition, len(rows), event_digest))
            store.staged.append((event.partition, event.origin))
            positions.append((event.partition, len(rows)))
        return AppendResult(positions=tuple(positions))

    def commit(self) -> int:
        """Make everything staged durable; returns how many events that was."""
        store = self._open()
        n = len(store.staged)
        store.staged.clear()
        return n

    def crash(self) -> int:
        """Lose whatever is staged and not committed; returns how many events were lost.

        Works on a closed handle too: the disk, not the process, decides what
        survives. Snapshots are durable writes and are never lost.
        """
        store = self._data
        lost = len(store.staged)
        for partition, origin in reversed(store.staged):
            store.partitions[partition].pop()
            chain = store.origins[origin]
            chain.pop()
            if not chain:
                del store.origins[origin]
        store.staged.clear()
        return lost

    @property
    def staged_count(self) -> int:
        """Events written but not yet durable."""
        return len(self._open().staged)

    def reopen(self) -> MemoryLog:
        """A new handle on the same data (after `close`, as a restarted node reopens its directory)."""
        self._closed = True  # one handle at a time, as LMDB allows one per path and process
        log = MemoryLog.__new__(MemoryLog)
        log._data, log._closed = self._data, False
        return log

    # --- EventLog --------------------------------------------------------------

    def meta(self) -> LogMeta:
        return self._open().meta

    def append(self, events: Sequence[Event], *, digests: Sequence[bytes] | None = None) -> AppendResult:
        result = self.stage(events, digests=digests)
        self.commit()
        return result

    def read_partition(self, partition: int, from_seq: int = 1, limit: int | None = None) -> list[tuple[int, Event]]:
        rows = self._open().partitions[self._check_partition(partition)]
        start = max(from_seq, 1) - 1
        stop = len(rows) if limit is None else min(len(rows), start + max(limit, 0))
        return [(i + 1, rows[i]) for i in range(start, stop)]

    def read_origin(self, origin: str, from_seq: int = 1, to_seq: int | None = None) -> list[Event]:
        store = self._open()
        chain = store.origins.get(origin, [])
        stop = len(chain) if to_seq is None else min(len(chain), to_seq)
        return [store.partitions[p][lseq - 1] for p, lseq, _ in chain[max(from_seq, 1) - 1 : stop]]

    def heads(self) -> dict[str, Head]:
        origins = self._open().origins
        return {origin: Head(len(origins[origin]), origins[origin][-1][2]) for origin in sorted(origins)}

    def last_seq(self, partition: int) -> int:
        return len(self._open().partitions[self._check_partition(partition)])

    def write_snapshot(self, snapshot: Snapshot) -> None:
        store = self._open()
        last = self.last_seq(snapshot.partition)
        if not 0 <= snapshot.seq <= last:
            raise StorageError(
                f"snapshot of partition {snapshot.partition} at seq {snapshot.seq} is outside the log (last seq {last})"
            )
        store.staged.clear()  # durability is ordered: this write makes the staged ones durable too
        store.snapshots[snapshot.partition] = snapshot

    def read_snapshot(self, partition: int) -> Snapshot | None:
        return self._open().snapshots.get(self._check_partition(partition))

    def close(self) -> None:
        self._closed = True  # the data stays, for `reopen` and `crash`

    def verify_integrity(self, progress: Progress | None = None, max_problems: int = 100) -> list[IntegrityProblem]:
        """Re-derive every index from the events (the data cannot rot in memory,
        but a caller that mutated it, or a bug here, would show)."""
        store = self._open()
        problems: list[IntegrityProblem] = []
        total = sum(len(rows) for rows in store.partitions)
        done = 0
        for origin, chain in store.origins.items():
            prev_digest = GENESIS_PREV
            for index, (partition, lseq, held) in enumerate(chain):
                event = store.partitions[partition][lseq - 1]
                if event.origin != origin or event.origin_seq != index + 1 or digest(event) != held:
                    problems.append(IntegrityProblem(
                        db="origins", reason="index does not match the event it points to",
                        partition=partition, seq=lseq, origin=origin, origin_seq=index + 1,
                    ))
                elif event.prev != prev_digest:
                    problems.append(IntegrityProblem(
                        db="events", reason="prev does not match the digest of the previous event",
                        partition=partition, seq=lseq, origin=origin, origin_seq=index + 1,
                    ))
                prev_digest = held
                done += 1
                if len(problems) >= max_problems:
                    return problems
            if progress is not None:
                progress(done, total)
        return problems

    def _check_partition(self, partition: int) -> int:
        n = self._open().meta.partitions
        if type(partition) is not int or not 0 <= partition < n:
            raise ValueError(f"partition {partition!r} is outside 0..{n - 1}")
        return partition

    def _head_of(self, origin: str) -> Head | None:
        chain = self._open().origins.get(origin)
        return None if not chain else Head(len(chain), chain[-1][2])

    def _digest_at(self, origin: str, seq: int) -> bytes | None:
        chain = self._open().origins.get(origin)
        return chain[seq - 1][2] if chain is not None and seq <= len(chain) else None
