"""The integrity walk of an `LmdbLog`: every record, every cross-reference.

Owns `audit_log`, which backs `LmdbLog.verify_integrity` (and so
`keyswarm audit verify` and a node's refusal to start on a damaged log). It
checks records against the format of `lmdb_layout` and walks the databases
through the log's own short read transactions (`LmdbLog._scan`), so it
imports no `lmdb` and can run beside the writer.

Rules:
- Four passes, each in key order and in batches of `READ_BATCH` records per
  read transaction: events, origins, heads, snapshots. Every record is
  checked where it lies (checksum, key shape, decode) and against the
  records it names:
  events  -> dense local seqs per partition; the event's partition is its
             key's; an origins entry for (origin, origin_seq) points back
             here with this event's digest.
  origins -> dense origin seqs from 1 per origin; the event it points to
             exists and is that origin's event at that seq; its prev is the
             digest the entry before holds (the chain link).
  heads   -> names an origins entry with the same digest and nothing after
             it; every origin with events has a head.
  snapshots -> within its partition's log.
- A problem is reported with its location and the walk goes on to the next
  record (never over the same one twice); it stops at `max_problems`.
- Safe beside a writer: the log only grows, so a record seen in one batch
  is still there in the next; cross-references are checked inside the
  transaction that read the record, where the writer's commits are atomic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keyswarm.errors import DecodeError
from keyswarm.storage.events import GENESIS_PREV, Event, digest
from keyswarm.storage.lmdb_layout import (
    CHANGED, EVENT_KEY, HEAD_BYTES, INDEX_BYTES, RECORD_LIMITS, U64, origin_key, unseal,
)
from keyswarm.storage.log import IntegrityProblem, Progress
from keyswarm.transport import codec

if TYPE_CHECKING:
    from keyswarm.storage.lmdb_log import LmdbLog

class _Audit:
    """Problems found so far, and the progress count."""

    def __init__(self, progress: Progress | None, max_problems: int, total: int):
        self.problems: list[IntegrityProblem] = []
        self.max_problems = max_problems
        self.progress = progress
        self.total = total
        self.done = 0

    def found(self, **where: Any) -> None:
        if len(self.problems) < self.max_problems:
            self.problems.append(IntegrityProblem(**where))

    @property
    def full(self) -> bool:
        return len(self.problems) >= self.max_problems

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None and (self.done % 1024 == 0 or self.done == self.total):
            self.progress(self.done, max(self.total, self.done))


def audit_log(log: LmdbLog, *, progress: Progress | None, max_problems: int) -> list[IntegrityProblem]:
    """Walk `log` and return what is wrong with it (empty when it is sound)."""
    with log._read("verify_integrity") as txn:
        total = sum(txn.stat(db)["entries"] for db in (log._events, log._origins, log._heads, log._snapshots))
    audit = _Audit(progress, max(max_problems, 1), total)
    chain_tops: dict[str, int] = {}  # origin -> highest origin seq the origins pass saw
    for walk in (_audit_events, _audit_origins, _audit_heads, _audit_snapshots):
        walk(log, audit, chain_tops)
        if audit.full:
            break
    if progress is not None:
        progress(audit.done, max(audit.total, audit.done))
    return audit.problems


def _audit_events(log: LmdbLog, audit: _Audit, chain_tops: dict[str, int]) -> None:
    last: dict[int, int] = {}  # partition -> last local seq seen
    partitions = log._meta.partitions
    with log._scan(log._events, "verify_integrity") as rows:
        for txn, key, value in rows:
            audit.tick()
            if len(key) != 10:
                audit.found(db="events", reason=f"malformed key {key.hex()}")
                continue
            partition, seq = EVENT_KEY.unpack(key)
            where = {"db": "events", "partition": partition, "seq": seq}
            if partition >= partitions:
                audit.found(**where, reason=f"partition outside 0..{partitions - 1}")
            before = last.get(partition, 0)
            last[partition] = seq
            if seq != before + 1:
                audit.found(**where, reason=f"local seqs {before + 1}..{seq - 1} are missing")
            payload = unseal(key, value)
            if payload is None:
                audit.found(**where, reason=CHANGED)
                continue
            try:
                event = codec.decode(payload, limits=RECORD_LIMITS, expect=Event)
            except DecodeError as exc:
                audit.found(**where, reason=f"does not decode: {exc}")
                continue
            where.update(origin=event.origin, origin_seq=event.origin_seq)
            if event.partition != partition:
                audit.found(**where, reason=f"the event says partition {event.partition}")
            try:
                okey = origin_key(event.origin, event.origin_seq)
            except (UnicodeEncodeError, ValueError, OverflowError):
                audit.found(**where, reason="origin or origin_seq cannot be indexed")
                continue
            entry = txn.get(okey, db=log._origins)
            index = None if entry is None else unseal(okey, entry)
            if entry is None:
                audit.found(**where, reason="no origins entry for this event")
            elif index is None or len(index) != INDEX_BYTES:
                pass  # the origins pass reports the damaged entry itself
            elif bytes(index[:10]) != key:
                p, s = EVENT_KEY.unpack(index[:10])
                audit.found(**where, reason=f"the origins entry points to partition {p} seq {s}, not here")
            elif bytes(index[10:]) != digest(event):
                audit.found(**where, reason="digest does not match the origins entry (the event was altered)")
            if audit.full:
                return


def _audit_origins(log: LmdbLog, audit: _Audit, chain_tops: dict[str, int]) -> None:
    # The entry before the current one; `held` is None when its digest is unknown.
    origin: str | None = None
    seq = 0
    held: bytes | None = None
    with log._scan(log._origins, "verify_integrity") as rows:
        for txn, key, value in rows:
            audit.tick()
            if len(key) < 10 or len(key) != key[0] + 9:
                audit.found(db="origins", reason=f"malformed key {key.hex()}")
                origin = None
                continue
            try:
                this_origin = key[1:-8].decode("utf-8")
            except UnicodeDecodeError:
                audit.found(db="origins", reason=f"key {key.hex()} does not name an origin")
                origin = None
                continue
            this_seq = U64.unpack_from(key, len(key) - 8)[0]
            where = {"db": "origins", "origin": this_origin, "origin_seq": this_seq}
            expected_prev: bytes | None = held
            if this_origin != origin:
                origin, seq, expected_prev = this_origin, 0, GENESIS_PREV
            if this_seq != seq + 1:
                audit.found(**where, reason=f"origin seqs {seq + 1}..{this_seq - 1} are missing")
                expected_prev = None
            seq, held, chain_tops[this_origin] = this_seq, None, this_seq
            payload = unseal(key, value)
            if payload is None or len(payload) != INDEX_BYTES:
                audit.found(**where, reason=CHANGED)
                continue
            ekey, held = bytes(payload[:10]), bytes(payload[10:])
            partition, lseq = EVENT_KEY.unpack(ekey)
            stored = txn.get(ekey, db=log._events)
            if stored is None:
                audit.found(**where, reason=f"points to partition {partition} seq {lseq}, which holds no event")
                continue
            raw = unseal(ekey, stored)
            try:
                event = None if raw is None else codec.decode(raw, limits=RECORD_LIMITS, expect=Event)
            except DecodeError:
                event = None  # the events pass reported it
            if event is None:
                continue
            if event.origin != this_origin or event.origin_seq != this_seq:
                holds = f"origin {event.origin!r} seq {event.origin_seq}"
                audit.found(**where, reason=f"points to partition {partition} seq {lseq}, which holds {holds}")
            elif expected_prev is not None and event.prev != expected_prev:
                audit.found(db="events", partition=partition, seq=lseq, origin=this_origin, origin_seq=this_seq,
                            reason="chain broken: prev does not match the digest of the previous event")
            if audit.full:
                return


def _audit_heads(log: LmdbLog, audit: _Audit, chain_tops: dict[str, int]) -> None:
    seen: set[str] = set()
    with log._scan(log._heads, "verify_integrity") as rows:
        for txn, key, value in rows:
            audit.tick()
            try:
                origin = key.decode("utf-8")
            except UnicodeDecodeError:
                audit.found(db="heads", reason=f"key {key.hex()} does not name an origin")
                continue
            seen.add(origin)
            payload = unseal(key, value)
            if payload is None or len(payload) != HEAD_BYTES:
                audit.found(db="heads", origin=origin, reason=CHANGED)
                continue
            seq, held = U64.unpack_from(payload)[0], bytes(payload[8:])
            where = {"db": "heads", "origin": origin, "origin_seq": seq}
            okey = origin_key(origin, seq)
            entry = txn.get(okey, db=log._origins)
            index = None if entry is None else unseal(okey, entry)
            if entry is None:
                audit.found(**where, reason="the head names an event the origins index does not hold")
            elif index is not None and bytes(index[10:]) != held:
                audit.found(**where, reason="the head's digest does not match the origins entry")
            if txn.get(origin_key(origin, seq + 1), db=log._origins) is not None:
                audit.found(**where, reason=f"the head is behind: origin seq {seq + 1} is held")
            if audit.full:
                return
    for origin in sorted(chain_tops.keys() - seen):
        audit.found(db="heads", origin=origin, reason="the origin has events but no head")


def _audit_snapshots(log: LmdbLog, audit: _Audit, chain_tops: dict[str, int]) -> None:
    partitions = log._meta.partitions
    with log._scan(log._snapshots, "verify_integrity") as rows:
        for txn, key, value in rows:
            audit.tick()
            if len(key) != 2 or int.from_bytes(key, "big") >= partitions:
                audit.found(db="snapshots", reason=f"malformed key {key.hex()}")
                continue
            partition = int.from_bytes(key, "big")
            payload = unseal(key, value)
            if payload is None or len(payload) < 8:
                audit.found(db="snapshots", partition=partition, reason=CHANGED)
                continue
            seq, last = U64.unpack_from(payload)[0], log._last_seq_in(txn, partition)
            if seq > last:
                reason = f"past the partition's last seq {last}"
                audit.found(db="snapshots", partition=partition, seq=seq, reason=reason)

