"""The `event-log` blocking service: the node's `EventLog` behind `ctx.ask`.

Owns: what the storage actor's requests do to the log (`AppendBatch`,
`LoadHead`, `LoadPartitionState`, and the sessions actor's `LoadPolicy`),
when partition snapshots are written,
how a node opens its log (`open_node_log`: LMDB under `data_dir`, or a
loudly non-durable `MemoryLog`), and the cheap integrity check a node runs
before it starts on a log (`check_log_on_open`).

Rules:
- `handle` runs on the service's own thread in the real driver (one
  request at a time, in order) and inline at completion time in the
  simulator. Failures the asking actor should see are `KeyswarmError`s:
  `StorageError`, `ChainConflict`, `CorruptRecord`.
- `AppendBatch` returns only when the batch is durable (`EventLog.append`).
  In the simulator, `on_submit` stages the batch when it is submitted and
  `handle` commits it when the modelled latency is over, so a crash in
  between loses exactly the staged events (`MemoryLog`'s crash model).
- Snapshots are a cache, written from state folded as the log grows: the
  service keeps each touched partition's `PartitionState` in memory and
  folds every committed event into it (O(batch) per commit). When a
  partition's events since its snapshot reach `snapshot_every`, that state
  is encoded and written: no re-read, no re-fold of the tail. A partition is
  folded from the log (snapshot + tail) only when a commit first touches it
  in this process, or after its in-memory state was dropped (an event that
  did not fold, an append the service did not see). A snapshot that fails
  is logged and retried after another `snapshot_every` events; it never
  fails the append, which is already durable.
- A record that does not decode is never skipped: reads raise
  `CorruptRecord` naming where it is, and a node refuses to start on it.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from keyswarm.actors.storage import (
    AppendBatch,
    HeadLoaded,
    LoadHead,
    LoadPartitionState,
    PartitionLoaded,
)
from keyswarm.actors.session_messages import POLICY_PARTITION, LoadPolicy, PolicyLoaded
from keyswarm.config import NodeConfig
from keyswarm.errors import CorruptRecord, DecodeError, KeyswarmError, ServiceError, StorageError
from keyswarm.storage.bodies import SIGNER_KEY_TYPE, SignerKey, decode_body
from keyswarm.storage.events import Event, digest
from keyswarm.storage.fold import PartitionState
from keyswarm.storage.lmdb_log import LmdbLog
from keyswarm.storage.log import AppendResult, EventLog, IntegrityProblem, Snapshot, corrupt_record
from keyswarm.storage.memory_log import MemoryLog
from keyswarm.storage.policy_bodies import POLICY_BODY_BY_TAG
from keyswarm.storage.snapshot import decode_state, encode_state

log = logging.getLogger("keyswarm.storage")

#: The service's name (the storage actor asks it by this name).
EVENT_LOG = "event-log"
#: Events of a partition after its snapshot before a new snapshot is written.
SNAPSHOT_EVERY_EVENTS = 1_000
#: Events of partition 0 read per step when looking for an origin's newest SignerKey.
SIGNER_SCAN_BATCH = 1024
#: The log's directory under `node.data_dir`.
LOG_DIR = "log"


class EventLogService:
    """`handle(request)` for the storage actor's requests, over one `EventLog`."""

    name = EVENT_LOG

    def __init__(self, event_log: EventLog, *, snapshot_every: int = SNAPSHOT_EVERY_EVENTS):
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.log = event_log
        self.snapshot_every = snapshot_every
        self.snapshots_written = 0
        self.snapshot_failures = 0
        self._snapshot_seq: dict[int, int] = {}  # partition -> local seq its snapshot stands at (lazy)
        self._folded: dict[int, _Folded] = {}  # partition -> its state, folded up to a local seq
        self._load_after: dict[int, int] = {}  # partition -> local seq before which a failed fold is not retried
        self.partition_loads = 0  # partitions folded from the log (snapshot + tail) for the in-memory state
        self._signer_certificates: dict[str, bytes] = {}  # origin -> certificate of its newest SignerKey (lazy)
        # Simulator only: batches staged at submit, committed by `handle` in order.
        self._staged: deque[tuple[AppendBatch, AppendResult | None, KeyswarmError | None]] = deque()

    # --- the BlockingService protocol ------------------------------------------------

    def handle(self, request: object) -> object:
        kind = type(request)
        if kind is AppendBatch:
            return self._append(request)
        if kind is LoadHead:
            return self.load_head(request.origin, with_certificate=request.with_certificate)
        if kind is LoadPartitionState:
            return self.load_partition_state(request.partition)
        if kind is LoadPolicy:
            return self.load_policy(request.after_seq)
        raise ServiceError(f"the event log cannot handle {kind.__name__}")

    def on_submit(self, request: object) -> None:
        """Simulator hook, called when `request` is submitted: stage an
        `AppendBatch` in the `MemoryLog` (the write reaches the page cache);
        `handle` commits it when its modelled latency is over (the fsync)."""
        if type(request) is not AppendBatch or not isinstance(self.log, MemoryLog):
            return
        try:
            self._staged.append((request, self.log.stage(request.events, digests=request.digests), None))
        except KeyswarmError as exc:
            self._staged.append((request, None, exc))

    def close(self) -> None:
        self.log.close()

    # --- requests ------------------------------------------------------------------------

    def _append(self, request: AppendBatch) -> AppendResult:
        if self._staged and self._staged[0][0] is request:
            _, result, error = self._staged.popleft()
            if error is not None:
                raise error
            assert isinstance(self.log, MemoryLog) and result is not None
            self.log.commit()
        else:
            result = self.log.append(request.events, digests=request.digests)
        self._fold_committed(request.events, result, request.bodies)
        return result

    def load_head(self, origin: str, *, with_certificate: bool = False) -> HeadLoaded:
        """`origin`'s durable head, the HLC of that event and its genesis key;
        `with_certificate`: also the certificate its newest SignerKey carries."""
        head = self.log.heads().get(origin)
        if head is None:
            return HeadLoaded(origin=origin, head=None, last_hlc=0, genesis_public_key=None)
        newest = self.log.read_origin(origin, head.origin_seq, head.origin_seq)
        first = self.log.read_origin(origin, 1, 1)
        if len(newest) != 1 or len(first) != 1 or digest(newest[0]) != head.digest:
            raise corrupt_record(IntegrityProblem(
                db="heads", origin=origin, origin_seq=head.origin_seq,
                reason="the head names an event the log does not hold",
            ))
        try:
            genesis = decode_body(first[0])
        except DecodeError as exc:
            raise corrupt_record(IntegrityProblem(
                db="events", origin=origin, origin_seq=1, partition=first[0].partition,
                reason=f"the chain's first event does not decode: {exc}",
            )) from exc
        key = genesis.public_key if type(genesis) is SignerKey else None
        certificate = self.signer_certificate(origin) if with_certificate else b""
        return HeadLoaded(origin=origin, head=head, last_hlc=newest[0].hlc, genesis_public_key=key,
                          signer_certificate=certificate)

    def signer_certificate(self, origin: str) -> bytes:
        """The certificate carried by `origin`'s newest SignerKey (b"": none, or no chain).

        SignerKeys live in partition 0, so it is read backwards from its end
        to the newest SignerKey of `origin`: once per origin and process (a
        node's start), then kept up to date by the commits this service
        makes. Partition 0 holds 1/P of the key events, so this is ~0.1 s on
        a million-event log of 64 partitions.
        """
        cached = self._signer_certificates.get(origin)
        if cached is not None:
            return cached
        found = b""
        end = self.log.last_seq(0)
        while end >= 1:
            start = max(1, end - SIGNER_SCAN_BATCH + 1)
            for at, event in reversed(self.log.read_partition(0, start, end - start + 1)):
                if event.origin == origin and event.type == SIGNER_KEY_TYPE:
                    found, end = self._certificate_of(event, at), 0  # the newest: done
                    break
            else:
                end = start - 1
        self._signer_certificates[origin] = found
        return found

    @staticmethod
    def _certificate_of(event: Event, at: int) -> bytes:
        try:
            body = decode_body(event)
        except DecodeError as exc:
            raise corrupt_record(IntegrityProblem(
                db="events", origin=event.origin, origin_seq=event.origin_seq, partition=0, seq=at,
                reason=f"a SignerKey event does not decode: {exc}",
            )) from exc
        assert type(body) is SignerKey
        return body.certificate

    def load_partition_state(self, partition: int, *, to_seq: int | None = None) -> PartitionLoaded:
        """The partition's snapshot (if it decodes) plus the fold of the events after it
        (up to local sequence `to_seq`, when given).

        A snapshot that does not decode is discarded with a warning and the
        partition folded from its start (snapshots are a cache of the log);
        an event that does not fold is a `CorruptRecord` naming it.
        """
        snapshot = self.log.read_snapshot(partition)
        state, base = PartitionState(), 0
        if snapshot is not None:
            try:
                state, base = decode_state(snapshot.state), snapshot.seq
            except DecodeError as exc:
                log.warning("snapshot of partition %d does not decode (%s); folding the partition from its start", partition, exc)
        seq = base
        apply = state.apply
        for at, event in self.log.iter_partition(partition, base + 1):
            if to_seq is not None and at > to_seq:
                break
            try:
                apply(event)
            except DecodeError as exc:
                raise corrupt_record(IntegrityProblem(
                    db="events", partition=partition, seq=at, reason=f"the body does not fold: {exc}",
                )) from exc
            seq = at
        return PartitionLoaded(partition=partition, seq=seq, snapshot_seq=base, state=state)

    def load_policy(self, after_seq: int) -> PolicyLoaded:
        """Partition 0's policy events after local sequence `after_seq` (the sessions actor folds them)."""
        seq, events = after_seq, []
        for at, event in self.log.iter_partition(POLICY_PARTITION, after_seq + 1):
            seq = at
            if event.type in POLICY_BODY_BY_TAG:
                events.append(event)
        return PolicyLoaded(events=tuple(events), seq=seq)

    # --- snapshots -------------------------------------------------------------------

    def _fold_committed(self, events: tuple[Event, ...], result: AppendResult, bodies: tuple[object, ...] | None = None) -> None:
        """Fold a durable batch into the in-memory states; write the snapshots now due.
        `bodies`: the events' typed bodies as the storage actor's draft check
        decoded them (`AppendBatch.bodies`), so the fold does not decode them again."""
        folded = self._folded
        last: dict[int, int] = {}
        if bodies is None:
            bodies = (None,) * len(events)
        assert len(bodies) == len(events), "an AppendBatch carries one body (or None) per event"
        for event, position, body in zip(events, result.positions, bodies):
            if position is None:
                continue  # a duplicate: folded when it was first appended
            partition, seq = position
            if event.type == SIGNER_KEY_TYPE and event.origin in self._signer_certificates:
                try:
                    self._signer_certificates[event.origin] = self._certificate_of(event, seq)
                except CorruptRecord:  # the append is durable regardless; the next load reads the log
                    del self._signer_certificates[event.origin]
            last[partition] = seq  # local seqs grow within a batch
            state = folded.get(partition)
            if state is None:
                continue
            if seq != state.seq + 1:  # the log grew without this service: fold from the log again
                del folded[partition]
                continue
            try:
                state.state.apply(event, body)
            except DecodeError as exc:  # left unchanged by apply; the snapshot path names the record
                log.error("partition %d seq %d does not fold (%s); its snapshot will fold it from the log", partition, seq, exc)
                del folded[partition]
                continue
            state.seq = seq
        every = self.snapshot_every
        for partition, seq in last.items():
            state = folded.get(partition)
            if state is None:
                if seq < self._load_after.get(partition, 0):
                    continue
                state = self._load_folded(partition, seq)
                if state is None:
                    continue
            base = self._snapshot_seq.get(partition)
            if base is None:
                base = self._snapshot_seq[partition] = self._read_snapshot_seq(partition)
            if seq - base >= every:
                self._write_snapshot(partition, state)

    def _load_folded(self, partition: int, seq: int) -> _Folded | None:
        """The partition's state up to `seq`, folded from the log (snapshot + tail)."""
        try:
            loaded = self.load_partition_state(partition, to_seq=seq)
        except KeyswarmError as exc:
            loaded, problem = None, str(exc)
        else:
            problem = None if loaded.seq == seq else f"the log ends at seq {loaded.seq}, the append reported {seq}"
        if problem is not None:
            self.snapshot_failures += 1
            self._load_after[partition] = seq + self.snapshot_every
            log.error("partition %d cannot be folded (next try in %d events): %s", partition, self.snapshot_every, problem)
            return None
        self.partition_loads += 1
        self._load_after.pop(partition, None)
        state = self._folded[partition] = _Folded(seq, loaded.state)  # type: ignore[union-attr]
        return state

    def _read_snapshot_seq(self, partition: int) -> int:
        try:
            snapshot = self.log.read_snapshot(partition)
        except KeyswarmError as exc:
            log.error("cannot read the snapshot of partition %d: %s", partition, exc)
            return 0
        return 0 if snapshot is None else snapshot.seq

    def _write_snapshot(self, partition: int, state: _Folded) -> None:
        try:
            self.log.write_snapshot(Snapshot(partition=partition, seq=state.seq, state=encode_state(state.state)))
        except KeyswarmError as exc:
            self.snapshot_failures += 1
            log.error("snapshot of partition %d at seq %d failed (next try in %d events): %s",
                      partition, state.seq, self.snapshot_every, exc)
        else:
            self.snapshots_written += 1
        self._snapshot_seq[partition] = state.seq


class _Folded:
    """A partition's state with every event up to local sequence `seq` folded in."""

    __slots__ = ("seq", "state")

    def __init__(self, seq: int, state: PartitionState):
        self.seq = seq
        self.state = state


# --- opening a node's log -------------------------------------------------------------


def open_node_log(config: NodeConfig) -> EventLog:
    """The node's event log: LMDB in `data_dir/log`, checked before use, or a
    non-durable `MemoryLog` (with a loud warning) when `data_dir` is empty.

    Raises `StorageError` / `CorruptRecord` naming the location when the log
    cannot be opened or a record is damaged: the node must not start on it.
    """
    node_id, storage = config.node.id, config.storage
    if not config.node.data_dir:
        log.warning(
            "node %s has no node.data_dir: its event log is IN MEMORY and NOT DURABLE; "
            "every event it writes is lost when it stops. Set node.data_dir for a real node.", node_id,
        )
        return MemoryLog(node_id=node_id, partitions=storage.partitions)
    path = Path(config.node.data_dir) / LOG_DIR
    event_log = LmdbLog.open(
        path, node_id=node_id, partitions=storage.partitions, genesis=b"", map_size_bytes=storage.map_size_bytes,
    )
    try:
        check_log_on_open(event_log, str(path))
    except BaseException:
        event_log.close()
        raise
    return event_log


def check_log_on_open(event_log: EventLog, where: str) -> None:
    """The cheap check before a node starts on a log: every origin's head
    event is held and matches its head digest, every partition's snapshot
    decodes, and every event after it decodes. (`keyswarm audit verify`
    walks everything, signatures included.) `CorruptRecord` names the record."""
    try:
        for origin, head in event_log.heads().items():
            newest = event_log.read_origin(origin, head.origin_seq, head.origin_seq)
            if len(newest) != 1 or digest(newest[0]) != head.digest:
                raise corrupt_record(IntegrityProblem(
                    db="heads", origin=origin, origin_seq=head.origin_seq,
                    reason="the head event is missing or does not match the head digest",
                ))
        for partition in range(event_log.meta().partitions):
            snapshot = event_log.read_snapshot(partition)
            base = 0
            if snapshot is not None:
                try:
                    decode_state(snapshot.state)
                except DecodeError as exc:
                    raise corrupt_record(IntegrityProblem(
                        db="snapshots", partition=partition, seq=snapshot.seq, reason=f"does not decode: {exc}",
                    )) from exc
                base = snapshot.seq
            for _ in event_log.iter_partition(partition, base + 1):
                pass  # each record's checksum and encoding are checked as it is read
    except CorruptRecord as exc:
        problem = getattr(exc, "problem", None)
        damaged = CorruptRecord(
            f"event log at {where} is damaged: {problem or exc}; refusing to start on it "
            f"(`keyswarm audit verify` reports every damaged record)"
        )
        damaged.problem = problem  # type: ignore[attr-defined]
        raise damaged from exc
    except StorageError as exc:
        raise StorageError(f"event log at {where} cannot be checked: {exc}") from exc
