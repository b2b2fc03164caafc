"""The `EventLog` port: what every event log offers, whatever holds the bytes.

`MemoryLog` (tests, simulator) and `LmdbLog` (nodes) implement it and pass
one contract suite (`tests/contract/test_event_log.py`), the way
pyeventsourcing's recorders do.

Rules:
- `append` is atomic and durable: when it returns, every event of the batch
  is on stable storage and visible to reads; when it raises, none is.
- Chains are checked on append: per origin, `origin_seq` is the head's + 1
  and `prev` is the head's digest. An event the log already holds (same
  origin, sequence and digest) is skipped, so replays and retries are
  idempotent. The same origin and sequence with a different digest is
  equivocation: `ChainConflict`, and nothing of the batch is written.
- Each partition numbers its events 1, 2, 3 ... in append order (the local
  sequence); reads return `(local_seq, Event)` pairs in that order.
- Reads are short: an implementation never holds a read transaction across
  a call, so a reader (`keyswarm audit verify`) can run beside the writer.
- A record that does not decode, or whose digest does not match its index,
  raises `CorruptRecord` naming where it is; it is never skipped.
- A log written by a newer schema is refused (`StorageError`), not misread.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from keyswarm.errors import StorageError
from keyswarm.storage.events import Event, Head

#: The layout version this code writes and reads.
SCHEMA_VERSION = 1


class ChainConflict(StorageError):
    """An origin signed two different events under one sequence number, or broke its chain."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LogMeta:
    """What a log records once, at creation."""

    schema_version: int
    node_id: str
    partitions: int
    genesis: bytes  # opaque to the log: the network's genesis record (root certificate digest, ...)


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """A partition's folded state as of local sequence `seq` (state bytes are the fold's)."""

    partition: int
    seq: int
    state: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResult:
    """Where each event of a batch landed: `(partition, local_seq)`, or None when it was a duplicate."""

    positions: tuple[tuple[int, int] | None, ...]

    @property
    def appended(self) -> int:
        return sum(1 for p in self.positions if p is not None)


class EventLog(abc.ABC):
    """One node's event log."""

    @abc.abstractmethod
    def meta(self) -> LogMeta:
        """The log's meta record."""

    @abc.abstractmethod
    def append(self, events: Sequence[Event]) -> AppendResult:
        """Append a batch atomically and durably (see module rules)."""

    @abc.abstractmethod
    def read_partition(self, partition: int, from_seq: int = 1, limit: int | None = None) -> list[tuple[int, Event]]:
        """Events of `partition` with local sequence >= `from_seq`, in order, at most `limit`."""

    @abc.abstractmethod
    def read_origin(self, origin: str, from_seq: int = 1, to_seq: int | None = None) -> list[Event]:
        """`origin`'s events with origin sequence in [from_seq, to_seq], in chain order."""

    @abc.abstractmethod
    def heads(self) -> dict[str, Head]:
        """The version vector: each origin's newest event held, ordered by origin id."""

    @abc.abstractmethod
    def last_seq(self, partition: int) -> int:
        """The highest local sequence in `partition` (0 when empty)."""

    @abc.abstractmethod
    def write_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the partition's snapshot (durably)."""

    @abc.abstractmethod
    def read_snapshot(self, partition: int) -> Snapshot | None:
        """The partition's latest snapshot, if any."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files and handles; later calls raise `StorageError`."""

    def iter_partition(self, partition: int, from_seq: int = 1, batch: int = 1024) -> Iterator[tuple[int, Event]]:
        """All events of a partition from `from_seq`, read in short batches."""
        while True:
            rows = self.read_partition(partition, from_seq, batch)
            yield from rows
            if len(rows) < batch:
                return
            from_seq = rows[-1][0] + 1

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
