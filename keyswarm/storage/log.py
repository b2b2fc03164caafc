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
- Both implementations check a batch with `check_batch` below, so they agree
  on every chain rule by construction; they differ only in where bytes live.
- Digests: `append(events, digests=...)` takes the digests the node's own
  sealer computed (`OriginChain.seal_batch`) instead of hashing every event
  again. The trust boundary is the process: only the storage actor passes
  them, straight from the sealer. The log still checks every chain link
  against them (event i+1's `prev` must equal `digests[i]`, so a list that
  is shifted, short or another batch's is refused) and recomputes the
  batch's last digest (`batch_digests`), which catches a sealer that hashes
  differently. Events from anywhere else (replication from peers, tools)
  are appended without digests, and the log computes every one.
- `verify_integrity` walks every record and cross-reference and reports
  problems with their location (`IntegrityProblem`); it backs
  `keyswarm audit verify` and a node's refusal to start on a damaged log.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from keyswarm.errors import CorruptRecord, StorageError
from keyswarm.storage.events import GENESIS_PREV, Event, Head, digest

#: The layout version this code writes and reads.
SCHEMA_VERSION = 1
#: Longest origin id a log stores (UTF-8 bytes; node ids are at most 64 characters).
MAX_ORIGIN_BYTES = 255


class ChainConflict(StorageError):
    """An origin signed two different events under one sequence number, or broke its chain."""

    def __init__(self, message: str, *, origin: str | None = None, origin_seq: int | None = None):
        super().__init__(message)
        self.origin = origin
        self.origin_seq = origin_seq


class ChainGap(ChainConflict):
    """An event arrived before its predecessors: pull the missing range, then retry.

    A `ChainConflict` so that callers that only care whether the batch was
    refused need one `except`; replication catches this one to pull instead
    of raising an alarm. `missing_from` is the first origin sequence the log lacks.
    """

    def __init__(self, message: str, *, origin: str, origin_seq: int, missing_from: int):
        super().__init__(message, origin=origin, origin_seq=origin_seq)
        self.missing_from = missing_from


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegrityProblem:
    """One damaged record or broken cross-reference, and where it is.

    `db` names the store (`events`, `origins`, `heads`, `snapshots`, `meta`,
    or `file` for the container itself); `partition`/`seq` locate an event by
    its local position, `origin`/`origin_seq` by its chain position.
    """

    db: str
    reason: str
    partition: int | None = None
    seq: int | None = None
    origin: str | None = None
    origin_seq: int | None = None

    def __str__(self) -> str:
        where = [self.db]
        if self.partition is not None:
            where.append(f"partition {self.partition}")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        if self.origin is not None:
            where.append(f"origin {self.origin!r}")
        if self.origin_seq is not None:
            where.append(f"origin seq {self.origin_seq}")
        return f"{' '.join(where)}: {self.reason}"


def corrupt_record(problem: IntegrityProblem) -> CorruptRecord:
    """The error a read raises on a damaged record; `.problem` holds the location."""
    exc = CorruptRecord(f"corrupt record in {problem}")
    exc.problem = problem  # type: ignore[attr-defined]
    return exc


#: `verify_integrity(progress=...)` is called with (records checked, records in the log).
Progress = Callable[[int, int], None]


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
    def append(self, events: Sequence[Event], *, digests: Sequence[bytes] | None = None) -> AppendResult:
        """Append a batch atomically and durably (see module rules). `digests`:
        the in-process sealer's `digest(events[i])`, trusted (see "Digests")."""

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
        """Release files and handles; later calls raise `StorageError`. Closing twice is harmless."""

    @abc.abstractmethod
    def verify_integrity(self, progress: Progress | None = None, max_problems: int = 100) -> list[IntegrityProblem]:
        """Walk every record and cross-reference (events <-> origins <-> heads,
        chain links, digests, snapshots); return the problems found, in walk
        order, at most `max_problems`. An empty list means the log is sound.
        Signatures are not checked here (see `keyswarm.storage.chain`)."""

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


# --- the chain rules of append, shared by every implementation ---------------


def batch_digests(events: Sequence[Event], digests: Sequence[bytes] | None) -> Sequence[bytes]:
    """The digest of each event of a batch: computed here, or the sealer's.

    The sealer's are trusted (module rules, "Digests"): `check_batch` checks
    each against the next event's `prev`, and the last one, which nothing in
    the batch links to and which becomes the head, is recomputed here, so a
    sealer that hashed differently from `digest` is caught on its first batch.
    """
    if digests is None:
        return [digest(e) for e in events]
    if len(digests) != len(events):
        raise AssertionError(f"{len(digests)} digests handed for {len(events)} events")
    if events and digests[-1] != digest(events[-1]):
        raise AssertionError("the digest handed for the batch's last event is not its digest")
    return digests



class _Pending:
    """One origin's chain while a batch is checked: the stored head plus the batch's new digests."""

    __slots__ = ("base_seq", "base_digest", "new")

    def __init__(self, head: Head | None):
        self.base_seq = 0 if head is None else head.origin_seq
        self.base_digest = GENESIS_PREV if head is None else head.digest
        self.new: list[bytes] = []


def check_batch(
    events: Sequence[Event],
    digests: Sequence[bytes],
    *,
    partitions: int,
    head_of: Callable[[str], Head | None],
    digest_at: Callable[[str, int], bytes | None],
) -> list[bool]:
    """Decide, for each event of a batch, whether it is new (True) or a
    duplicate the log already holds (False); raise if the batch must be refused.

    `digests[i]` is `digest(events[i])`; `head_of(origin)` is the stored head;
    `digest_at(origin, seq)` the stored digest of that event (only asked for
    sequences at or below the stored head). Events of the batch are checked
    against the ones before them in the same batch, so a batch may carry a
    whole chain segment, and a batch may repeat an event (the copy is a
    duplicate). Pure: nothing is written, so a refused batch leaves no trace.
    """
    pending: dict[str, _Pending] = {}
    fresh: list[bool] = []
    for event, event_digest in zip(events, digests, strict=True):
        partition = event.partition
        if type(partition) is not int or not 0 <= partition < partitions:
            raise StorageError(f"event partition {partition!r} is outside 0..{partitions - 1}")
        origin = event.origin
        state = pending.get(origin)
        if state is None:
            if not origin or len(origin.encode("utf-8")) > MAX_ORIGIN_BYTES:
                raise StorageError(f"event origin {origin!r} must be 1..{MAX_ORIGIN_BYTES} UTF-8 bytes")
            state = pending[origin] = _Pending(head_of(origin))
        seq = event.origin_seq
        top = state.base_seq + len(state.new)
        if seq == top + 1:
            expected = state.new[-1] if state.new else state.base_digest
            if event.prev != expected:
                raise ChainConflict(
                    f"origin {origin!r} seq {seq}: prev does not match the digest of seq {top}"
                    + (" (the genesis prev)" if top == 0 else ""),
                    origin=origin, origin_seq=seq,
                )
            state.new.append(event_digest)
            fresh.append(True)
        elif 1 <= seq <= top:
            held = state.new[seq - state.base_seq - 1] if seq > state.base_seq else digest_at(origin, seq)
            if held != event_digest:
                raise ChainConflict(
                    f"origin {origin!r} seq {seq}: a different event is held under this sequence (equivocation)",
                    origin=origin, origin_seq=seq,
                )
            fresh.append(False)
        elif seq > top:
            raise ChainGap(
                f"origin {origin!r} seq {seq}: the log holds this origin only up to seq {top}",
                origin=origin, origin_seq=seq, missing_from=top + 1,
            )
        else:
            raise ChainConflict(f"origin {origin!r}: origin_seq {seq!r} must be >= 1", origin=origin, origin_seq=seq)
    return fresh
