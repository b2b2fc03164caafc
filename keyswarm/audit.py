"""`keyswarm audit verify`: the verification walk over a node's event log.

Owns `audit_log` (the walk, over any `EventLog`), what it reports (`Finding`,
`AuditReport`), `open_log_for_audit` (finding a node's log from its data
directory and opening it read-only) and the progress bar the command shows.
Argument parsing and printing live in `keyswarm.cli`.

The walk, in three parts (docs/storage.md, "Auditing"):
1. Records: `EventLog.verify_integrity` checks every record and every
   cross-reference (events <-> origins index <-> heads, snapshots); given
   `records_in_child`, in a child process beside the chain walk.
2. Chains: every origin's chain is read with `read_origin` in batches of
   `CHAIN_BATCH` and fed to a `ChainVerifier` (digest links, HLCs,
   partitions, bodies, signatures under the keys the chain itself carries,
   rotations, no unsigned tail). Origins are those named by the heads plus
   those seen in partition 0, where every origin's first event (its
   `SignerKey`) lives: a lost heads entry cannot hide a chain from the walk.
3. Heads: read again after the chains, each must name the end of its chain.

Given the network's root certificate (`root`), the chain walk also checks
the certificate every `SignerKey` carries (`keyswarm://<net>/node/<origin>/
signer`, with the node certificate that issued it): it must chain to that
root (`verify_chain`, kind `signer`, at the wall time of the SignerKey's
HLC), name the chain's origin and certify the SignerKey's own key
(`bad_certificate`, `certificate_wrong_node`, `certificate_key_mismatch`).
A signing key that no SignerKey of its chain certifies is `uncertified`: a
warning, or a finding with `require_certified`.

Rules:
- Read-only and safe beside the writer: `read_origin` and `read_partition`
  use short read transactions, a chain is read to the end it has when its
  last batch is read (a commit boundary, so an honest chain ends signed),
  and heads are read after the chains: a head past the end the walk saw
  means the writer appended meanwhile, and is checked against that event.
- Every problem is a `Finding` with as much of its location as can be known
  (partition, local seq, origin, origin_seq) and a permanent `reason`:
  a `BreakReason` value for chain breaks, `corrupt_record` for a record no
  read accepts, `head_*` for heads. A chain stops at its first break (what
  follows is unverifiable); the other chains and checks go on, up to
  `max_findings`.
- Where a read refuses an event, the walk reads that record through its
  partition and lets the verifier name the break, so a replaced event is
  `digest_mismatch` (or `bad_signature`, `wrong_prev`, ...) at that event,
  not a bare read error; a missing one is `wrong_seq` at the next event.
- No argparse and no result printing (the CLI's); the one thing drawn here
  is the progress bar, on the stream it is given. Time comes from `clock`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from keyswarm.crypto.certificates import network_id
from keyswarm.crypto.chain_verify import CertificateInvalid, verify_chain
from keyswarm.errors import CorruptRecord, StorageError
from keyswarm.storage import hlc as hlc_clock
from keyswarm.storage.bodies import SIGNER_KEY_TYPE, SignerKey, decode_body
from keyswarm.storage.chain import BreakReason, ChainBreak, ChainVerifier
from keyswarm.storage.events import Event, Head, digest
from keyswarm.storage.log import EventLog, IntegrityProblem

#: Events per `read_origin` call: bounded memory, short read transactions.
CHAIN_BATCH = 4096
#: `reason` of an event on a chain that no read accepts (checksum, decode, missing).
CORRUPT_RECORD = "corrupt_record"
#: `reason` of the records walk's findings, by the store the record is in.
RECORD_REASONS = {"events": "bad_event_record", "origins": "bad_index_entry", "heads": "bad_head",
                  "snapshots": "bad_snapshot", "meta": "bad_meta", "file": "bad_file"}
HEAD_MISMATCH = "head_mismatch"  # the head names another event than the chain's end
HEAD_MISSING = "head_missing"  # an origin with events has no head
HEAD_WITHOUT_CHAIN = "head_without_chain"  # a head for an origin the log holds no events of
#: Certificate findings (only with a root): why a SignerKey's certificate does not vouch for its key.
BAD_CERTIFICATE = "bad_certificate"  # does not verify up to the root (the detail gives verify_chain's reason)
CERTIFICATE_WRONG_NODE = "certificate_wrong_node"  # certifies the signer of another node than the chain's origin
CERTIFICATE_KEY_MISMATCH = "certificate_key_mismatch"  # certifies another key than the SignerKey's
UNCERTIFIED = "uncertified"  # a signing key no SignerKey of the chain certifies
#: Below this many events a child process for the records walk costs more than it saves.
PARALLEL_MIN_EVENTS = 200_000
#: `progress(phase, done, total)`: phase is "records", "chains" or "verify" (both at once).
AuditProgress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One problem and where it is (unknown coordinates are None); `check`
    is the part of the walk that found it: `records`, `chain` or `head`."""

    check: str
    reason: str
    detail: str = ""
    partition: int | None = None
    seq: int | None = None
    origin: str | None = None
    origin_seq: int | None = None

    def location(self) -> str:
        known = (("partition", self.partition), ("seq", self.seq), ("origin", self.origin), ("origin_seq", self.origin_seq))
        return ", ".join(f"{name} {value!r}" for name, value in known if value is not None) or "the log"

    def __str__(self) -> str:
        return f"{self.location()}: {self.reason}" + (f": {self.detail}" if self.detail else "")


@dataclass(slots=True, kw_only=True)
class AuditReport:
    """What the walk found and how much it checked."""

    findings: list[Finding] = field(default_factory=list)
    truncated: bool = False  # more problems than `max_findings`
    origins: int = 0
    events: int = 0  # events verified on chains
    records: int = 0  # records the integrity walk checked
    partitions: int = 0  # the log's partition count
    partitions_with_events: int = 0
    signatures: int = 0  # signatures verified
    certificates: int = 0  # signer certificates verified up to the root (only with a root)
    warnings: list[Finding] = field(default_factory=list)  # `uncertified` chains, when not required
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        per_event = f" ({self.seconds / self.events * 1e6:.1f} us/event)" if self.events else ""
        certificates = f"{self.certificates:,} signer certificates, " if self.certificates else ""
        return (f"{self.origins:,} origins, {self.events:,} events in {self.partitions_with_events:,} of "
                f"{self.partitions:,} partitions, {self.signatures:,} signatures, {certificates}"
                f"{self.records:,} records; {self.seconds:.2f} s{per_event}")


def open_log_for_audit(data: str | Path) -> tuple[EventLog, Path]:
    """Open the event log in `data` read-only: a node's data directory
    (the log is `data/log`) or the log directory itself. StorageError, with a
    message that says what was found instead, when there is no log there."""
    from keyswarm.storage.lmdb_log import LmdbLog  # the only LMDB-backed log; imported when needed

    path = Path(data)
    if not path.exists():
        raise StorageError(f"{path} does not exist")
    if not path.is_dir():
        raise StorageError(f"{path} is a file; give a node's data directory or its event log directory")
    for candidate in (path, path / "log"):
        if (candidate / "data.mdb").is_file():
            return LmdbLog.open_existing(candidate, readonly=True), candidate
    raise StorageError(f"no keyswarm event log in {path} (looked for {path}/data.mdb and {path}/log/data.mdb)")


def audit_log(log: EventLog, *, max_findings: int = 100, progress: AuditProgress | None = None,
              records_in_child: Path | None = None, clock: Callable[[], float] = time.perf_counter,
              root: x509.Certificate | None = None, require_certified: bool = False) -> AuditReport:
    """Walk `log` (records, chains, heads) and report every problem found, up to `max_findings`.

    `records_in_child`: the log's directory, to run the records walk in a
    child process on its own read-only handle while this one walks the
    chains (two cores: about twice as fast on a large log).
    `root`: the network's root certificate; every SignerKey's certificate is
    checked against it, and uncertified signing keys are warnings (findings
    with `require_certified`). The caller checks that `root` is a root.
    """
    started = clock()
    walk = _Walk(log, max(max_findings, 1), progress, root=root, require_certified=require_certified)
    walk.run(records_in_child)
    report = walk.report
    findings = _ordered(walk.chain_findings, walk.head_findings, walk.record_findings)
    report.findings = findings[: walk.max_findings]
    report.truncated = walk.truncated or len(findings) > walk.max_findings
    report.seconds = clock() - started
    return report


def _ordered(chain: list[Finding], heads: list[Finding], records: list[Finding]) -> list[Finding]:
    """Chain and head findings first (they locate a problem fully), then the
    records walk's, less those that repeat one of them (same place, same words)."""
    said: dict[tuple[object, ...], list[str]] = {}
    for f in (*chain, *heads):
        said.setdefault(("p", f.partition, f.seq), []).append(f.detail)
        said.setdefault(("o", f.origin, f.origin_seq), []).append(f.detail)

    def repeated(f: Finding) -> bool:
        places = [("p", f.partition, f.seq)] if f.seq is not None else []
        places += [("o", f.origin, f.origin_seq)] if f.origin_seq is not None else []
        return any(f.detail in detail for place in places for detail in said.get(place, ()))

    return [*chain, *heads, *(f for f in records if not repeated(f))]


def _from_problem(problem: IntegrityProblem) -> Finding:
    return Finding(
        check="records", reason=RECORD_REASONS.get(problem.db, f"bad_{problem.db}"), detail=problem.reason,
        partition=problem.partition, seq=problem.seq, origin=problem.origin, origin_seq=problem.origin_seq,
    )


def _problem_of(exc: CorruptRecord) -> IntegrityProblem:
    problem = getattr(exc, "problem", None)
    return problem if isinstance(problem, IntegrityProblem) else IntegrityProblem(db="file", reason=str(exc))


class _Walk:
    """One audit: the three parts of the walk and what each found."""

    def __init__(self, log: EventLog, max_findings: int, progress: AuditProgress | None, *,
                 root: x509.Certificate | None = None, require_certified: bool = False):
        self.log = log
        self.root = root
        self.network = network_id(root) if root is not None else ""
        self.require_certified = require_certified
        # Per chain walked: signing keys certified, and where each uncertified key first appeared.
        self._certified: set[bytes] = set()
        self._uncertified: dict[bytes, Event] = {}
        self.max_findings = max_findings
        self.progress = progress
        self.partitions = log.meta().partitions
        self.report = AuditReport(partitions=self.partitions)  # filled in as the walk goes
        self.record_findings: list[Finding] = []
        self.chain_findings: list[Finding] = []
        self.head_findings: list[Finding] = []
        self.truncated = False  # a part of the walk stopped at max_findings
        self.ends: dict[str, Head | None] = {}  # origin -> end of its verified chain (None: empty)
        self._partitions_seen: set[int] = set()
        self._positions: dict[int, dict[tuple[str, int], int]] = {}  # partition -> (origin, origin_seq) -> seq
        self._expected_events = 0
        self._child: _RecordsChild | None = None
        self._records_progress = (0, 0)

    @property
    def full(self) -> bool:
        return len(self.chain_findings) + len(self.head_findings) >= self.max_findings

    def run(self, records_in_child: Path | None) -> None:
        child = _RecordsChild(records_in_child, self.max_findings) if records_in_child is not None else None
        try:
            if child is None:
                self.check_records()
            bounds = self.discover_origins()
            self.report.origins = len(bounds)
            self._expected_events = sum(b for b in bounds.values() if b is not None)
            self._child = child
            for origin, bound in sorted(bounds.items()):
                if self.full:
                    self.truncated = True
                    break
                self.check_chain(origin, bound)
            self.check_heads()
            if child is not None:
                problems = child.result(self._child_progress)
                self._records_found(problems)
        finally:
            if child is not None:
                child.stop()
        self.report.partitions_with_events = len(self._partitions_seen)

    # --- 1. records -------------------------------------------------------------

    def check_records(self) -> None:
        def on_progress(done: int, total: int) -> None:
            self.report.records = max(self.report.records, done)
            if self.progress is not None:
                self.progress("records", done, total)

        try:
            problems = self.log.verify_integrity(progress=on_progress, max_problems=self.max_findings)
        except CorruptRecord as exc:  # the container itself: the walk could not go on
            problems = [_problem_of(exc)]
        self._records_found(problems)

    def _records_found(self, problems: list[IntegrityProblem]) -> None:
        self.truncated = self.truncated or len(problems) >= self.max_findings
        self.record_findings = [_from_problem(p) for p in problems]

    def _child_progress(self, done: int, total: int) -> None:
        self.report.records = max(self.report.records, done)
        self._records_progress = (done, total)
        self._show_chain_progress()

    def _show_chain_progress(self) -> None:
        if self.progress is None:
            return
        events, expected = self.report.events, max(self._expected_events, self.report.events)
        if self._child is None:
            self.progress("chains", events, expected)
        else:  # both walks at once: one bar over records and events
            done, total = self._records_progress
            self.progress("verify", done + events, total + expected)

    # --- 2. chains --------------------------------------------------------------

    def discover_origins(self) -> dict[str, int | None]:
        """Every origin to walk, with the head it had when the walk began (None: no head).

        Partition 0 first, then the heads: an origin seen in partition 0 has
        a head by the time the heads are read, so the two sets agree on a
        sound log even while the writer appends.
        """
        bounds: dict[str, int | None] = {event.origin: None for _, event in self._scan_partition(0)}
        try:
            heads = self.log.heads()
        except CorruptRecord:  # reported by the records walk; partition 0 still names the origins
            heads = {}
        for origin, head in heads.items():
            bounds[origin] = head.origin_seq
        return bounds

    def check_chain(self, origin: str, bound: int | None) -> None:
        """Verify `origin`'s chain up to `bound` (`_check_chain`), then, with a
        root, report the signing keys of what was walked that nothing certified."""
        self._certified, self._uncertified = set(), {}
        self._check_chain(origin, bound)
        for key, event in self._uncertified.items():
            if key in self._certified:
                continue
            seq = self._locate(event.partition, event.origin, event.origin_seq)
            finding = Finding(check="certificate", reason=UNCERTIFIED, partition=event.partition, seq=seq,
                              origin=event.origin, origin_seq=event.origin_seq,
                              detail=f"signing key {key.hex()[:16]}... carries no certificate in the chain")
            (self.chain_findings if self.require_certified else self.report.warnings).append(finding)

    def _check_chain(self, origin: str, bound: int | None) -> None:
        """Verify `origin`'s chain up to `bound`, its head when the walk began.

        Beside a writer a chain grows while it is read, possibly faster than
        it is verified, so the walk stops at the first checkpoint at or past
        `bound`: on a sound log `bound` itself (a commit ends signed). Past
        an unsigned `bound` (a head that lies) it goes on to the next
        checkpoint or the chain's end, so the heads check can say so.
        """
        verifier = ChainVerifier(origin, partitions=self.partitions)
        next_seq = 1
        while True:
            to_seq = next_seq + CHAIN_BATCH - 1
            if bound is not None and next_seq <= bound:
                to_seq = min(to_seq, bound)
            try:
                events = self.log.read_origin(origin, next_seq, to_seq)
                damage = None
            except CorruptRecord as exc:
                events, damage = self._read_until_damage(origin, next_seq, to_seq, exc)
            reached = False
            for event in events:
                if not self._feed(verifier, event):
                    return
                if bound is not None and event.origin_seq >= bound and event.sig:
                    reached = True  # what follows was appended after the walk began
                    break
            if self._child is not None:
                self._child.poll(self._child_progress)
            self._show_chain_progress()
            if damage is not None:
                self._damaged(verifier, origin, next_seq + len(events), damage)
                return
            if reached or len(events) < to_seq - next_seq + 1:
                break
            next_seq += len(events)
        try:
            verifier.finish()
        except ChainBreak as brk:
            self._chain_break(brk)
            return
        self.ends[origin] = verifier.head

    def _feed(self, verifier: ChainVerifier, event: Event, *, seq: int | None = None, detail: str = "") -> bool:
        """Feed one event; False (and a finding) when the chain breaks there."""
        try:
            verifier.feed(event)
        except ChainBreak as brk:
            self._chain_break(brk, seq=seq, detail=detail)
            return False
        self.report.events += 1
        self._partitions_seen.add(event.partition)
        if event.sig:
            self.report.signatures += 1
        if self.root is not None and event.type == SIGNER_KEY_TYPE:
            self._check_certificate(event, seq)
        return True

    def _check_certificate(self, event: Event, seq: int | None) -> None:
        """A SignerKey the verifier accepted: does its certificate vouch for its key, up to the root?"""
        body = decode_body(event)  # the verifier decoded it already: it decodes
        assert type(body) is SignerKey
        key = body.public_key
        if not body.certificate:
            self._uncertified.setdefault(key, event)
            return
        physical_ms, _ = hlc_clock.unpack_hlc(event.hlc)
        reason, detail = "", ""
        try:
            when = datetime.fromtimestamp(physical_ms / 1000, tz=timezone.utc)
            verified = verify_chain(body.certificate, list(body.intermediates), self.root,  # type: ignore[arg-type]
                                    now=when, network_id=self.network, expected_kind="signer")
        except (ValueError, OverflowError, OSError):  # a time past datetime's year 9999
            reason, detail = BAD_CERTIFICATE, f"the SignerKey's time ({physical_ms} ms) is past any certificate"
        except CertificateInvalid as exc:
            reason = BAD_CERTIFICATE
            detail = f"{exc} (against the root of network {self.network}, at the SignerKey's time {when.isoformat()})"
        else:
            certified = verified.public_key.public_bytes_raw()  # type: ignore[union-attr]  # signer: Ed25519
            if verified.name != event.origin:
                reason = CERTIFICATE_WRONG_NODE
                detail = f"the certificate ({verified.uri}) certifies the signer of node {verified.name!r}, not {event.origin!r}"
            elif certified != key:
                reason = CERTIFICATE_KEY_MISMATCH
                detail = (f"the certificate certifies key {certified.hex()[:16]}..., the SignerKey names "
                          f"{key.hex()[:16]}...")
        if reason:
            self._uncertified.pop(key, None)  # said: a key with a bad certificate is not also "uncertified"
            self._certified.add(key)
            if seq is None:
                seq = self._locate(event.partition, event.origin, event.origin_seq)
            self.chain_findings.append(Finding(check="certificate", reason=reason, detail=detail,
                                               partition=event.partition, seq=seq, origin=event.origin,
                                               origin_seq=event.origin_seq))
            return
        self._certified.add(key)
        self.report.certificates += 1

    def _read_until_damage(self, origin: str, from_seq: int, to_seq: int, exc: CorruptRecord) -> tuple[list[Event], CorruptRecord]:
        """A batch failed: re-read it one event at a time to find the first
        event no read accepts. Returns the events before it and its error."""
        good: list[Event] = []
        for seq in range(from_seq, to_seq + 1):
            try:
                one = self.log.read_origin(origin, seq, seq)
            except CorruptRecord as damage:
                return good, damage
            if not one:  # the batch's error was past the chain's end as read now
                break
            good.extend(one)
        return good, exc

    def _damaged(self, verifier: ChainVerifier, origin: str, origin_seq: int, exc: CorruptRecord) -> None:
        """`origin_seq` of `origin` could not be read through the chain index: say why, as precisely as the log allows."""
        problem = _problem_of(exc)
        said = f"{problem.db}: {problem.reason}"
        reason = CORRUPT_RECORD
        if problem.db == "events" and problem.partition is not None and problem.seq is not None:
            # The index found the record: read it through its partition and let the verifier judge it.
            try:
                rows = self.log.read_partition(problem.partition, problem.seq, 1)
            except CorruptRecord:
                rows = []  # the record itself is damaged
            if rows and rows[0][0] == problem.seq:
                if not self._feed(verifier, rows[0][1], seq=problem.seq):
                    return
                # Intact, and the link holds: what differs is the digest the index recorded.
                reason = BreakReason.DIGEST_MISMATCH.value
        else:
            # The index cannot say where the event is (entry missing, damaged,
            # or pointing nowhere): the next event tells the verifier what is missing.
            try:
                following = self.log.read_origin(origin, origin_seq + 1, origin_seq + 1)
            except CorruptRecord:
                following = []
            if following and not self._feed(verifier, following[0], detail=f"origin_seq {origin_seq}: {said}"):
                return
        self.chain_findings.append(Finding(check="chain", reason=reason, detail=said, partition=problem.partition,
                                           seq=problem.seq, origin=origin, origin_seq=origin_seq))

    def _chain_break(self, brk: ChainBreak, *, seq: int | None = None, detail: str = "") -> None:
        if seq is None and brk.partition is not None:
            seq = self._locate(brk.partition, brk.origin, brk.origin_seq)
        text = brk.detail + (f" ({detail})" if detail else "")
        self.chain_findings.append(Finding(check="chain", reason=brk.reason.value, detail=text, partition=brk.partition,
                                           seq=seq, origin=brk.origin, origin_seq=brk.origin_seq))

    # --- 3. heads ---------------------------------------------------------------

    def check_heads(self) -> None:
        try:
            heads = self.log.heads()
        except CorruptRecord:
            return  # the records walk reported the damaged head
        for origin, end in self.ends.items():
            head = heads.get(origin)
            if head is None:
                if end is not None:
                    self._add_head(HEAD_MISSING, f"the chain ends at origin_seq {end.origin_seq} but the origin has no head",
                                   origin, end.origin_seq)
            elif end is None:
                self._add_head(HEAD_WITHOUT_CHAIN, f"the head names origin_seq {head.origin_seq}, the log holds no event of it",
                               origin, head.origin_seq)
            elif head.origin_seq < end.origin_seq:
                self._add_head(HEAD_MISMATCH, f"the head says origin_seq {head.origin_seq}, the chain goes on to {end.origin_seq}",
                               origin, end.origin_seq)
            elif head.origin_seq == end.origin_seq:
                if head.digest != end.digest:
                    self._add_head(HEAD_MISMATCH, "the head's digest is not the digest of the chain's last event", origin, end.origin_seq)
            else:  # past the end the walk verified: the writer appended since, or the head lies
                named = self._read_one(origin, head.origin_seq)
                if named is None or digest(named) != head.digest:
                    self._add_head(HEAD_MISMATCH, f"the head names origin_seq {head.origin_seq}, which the chain does not hold with "
                                   f"that digest (the walk verified it to {end.origin_seq})", origin, head.origin_seq)

    def _add_head(self, reason: str, detail: str, origin: str, origin_seq: int) -> None:
        named = self._read_one(origin, origin_seq)
        partition = None if named is None else named.partition
        seq = None if partition is None else self._locate(partition, origin, origin_seq)
        self.head_findings.append(Finding(check="head", reason=reason, detail=detail, partition=partition, seq=seq,
                                          origin=origin, origin_seq=origin_seq))

    def _read_one(self, origin: str, origin_seq: int) -> Event | None:
        try:
            named = self.log.read_origin(origin, origin_seq, origin_seq)
        except CorruptRecord:
            return None  # the records walk reports the damaged record
        return named[0] if named else None

    # --- locating events --------------------------------------------------------

    def _locate(self, partition: int, origin: str, origin_seq: int) -> int | None:
        """The local seq of (origin, origin_seq) in `partition` (one scan per partition, only on failures)."""
        positions = self._positions.get(partition)
        if positions is None:
            positions = self._positions[partition] = {
                (event.origin, event.origin_seq): seq for seq, event in self._scan_partition(partition)
            }
        return positions.get((origin, origin_seq))

    def _scan_partition(self, partition: int) -> Iterator[tuple[int, Event]]:
        """Every readable event of `partition`, stepping over damaged records (the records walk reports them)."""
        from_seq = 1
        while True:
            try:
                rows = self.log.read_partition(partition, from_seq, CHAIN_BATCH)
            except CorruptRecord as exc:
                problem = _problem_of(exc)
                if problem.partition != partition or problem.seq is None or problem.seq < from_seq:
                    return
                for seq in range(from_seq, problem.seq):  # the good records before the damaged one
                    try:
                        yield from self.log.read_partition(partition, seq, 1)
                    except CorruptRecord:
                        continue
                from_seq = problem.seq + 1
                continue
            yield from rows
            if len(rows) < CHAIN_BATCH:
                return
            from_seq = rows[-1][0] + 1


def parallel_worth_it(log: EventLog, *, min_events: int = PARALLEL_MIN_EVENTS) -> bool:
    """Whether a child process for the records walk pays for its start (~0.3 s): a large log and two cores."""
    cores = os.cpu_count() or 1
    return cores >= 2 and sum(log.last_seq(p) for p in range(log.meta().partitions)) >= min_events


class _RecordsChild:
    """`verify_integrity` in a new interpreter on its own read-only handle: not
    a fork (an LMDB environment must not cross one; py-lmdb opens a path once
    per process), nor `multiprocessing` (its spawn re-runs the caller's main
    module). The child writes JSON lines: progress, then problems or an error."""

    def __init__(self, log_dir: Path, max_problems: int):
        self._errors = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # import this keyswarm
        code = "import sys, keyswarm.audit as a; a._records_child_main(sys.argv[1], int(sys.argv[2]))"
        self._process = subprocess.Popen([sys.executable, "-c", code, str(log_dir), str(max_problems)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._errors)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, name="keyswarm-audit-records", daemon=True).start()
        self._result: list[IntegrityProblem] | None = None

    def _read(self) -> None:
        for line in self._process.stdout:  # type: ignore[union-attr]
            self._lines.put(line)
        self._lines.put(None)

    def poll(self, on_progress: Callable[[int, int], None], timeout_s: float = 0.0) -> None:
        """Take what the child sent so far (waiting up to `timeout_s` for the first message)."""
        while self._result is None:
            try:
                line = self._lines.get(timeout=timeout_s) if timeout_s > 0 else self._lines.get_nowait()
            except queue.Empty:
                return
            timeout_s = 0.0
            if line is None:
                self._errors.seek(0)
                said = self._errors.read()[-400:].decode("utf-8", "replace").strip()
                raise StorageError(f"the records walk stopped (exit code {self._process.wait()}){': ' + said if said else ''}")
            message = json.loads(line)
            if "progress" in message:
                on_progress(*message["progress"])
            elif "problems" in message:
                self._result = [IntegrityProblem(**p) for p in message["problems"]]
            else:
                raise StorageError(f"the records walk failed: {message.get('error')}")

    def result(self, on_progress: Callable[[int, int], None]) -> list[IntegrityProblem]:
        while self._result is None:
            self.poll(on_progress, timeout_s=0.5)
        return self._result

    def stop(self) -> None:
        """SIGINT first, so the child ends its read transaction (a killed reader pins its LMDB slot)."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process.wait()
        self._errors.close()


def _records_child_main(log_dir: str, max_problems: int) -> None:
    """The child's side: open the log read-only, walk its records, write progress and the problems."""
    from keyswarm.storage.lmdb_log import LmdbLog

    last_sent = 0.0

    def send(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def progress(done: int, total: int) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if now - last_sent >= 0.1 or done >= total:
            last_sent = now
            send({"progress": [done, total]})

    try:
        with LmdbLog.open_existing(log_dir, readonly=True) as log:
            try:
                problems = log.verify_integrity(progress=progress, max_problems=max_problems)
            except CorruptRecord as exc:
                problems = [_problem_of(exc)]
        send({"problems": [dataclasses.asdict(p) for p in problems]})
    except StorageError as exc:
        send({"error": str(exc)})
    except (KeyboardInterrupt, BrokenPipeError):
        return  # the parent stopped listening: nothing left to report to


class ProgressBar:
    """A one-line progress bar: phase, bar, done/total, rate, ETA, redrawn at
    most every `interval_s` with a carriage return (no dependency needed)."""

    WIDTH = 28

    def __init__(self, stream: TextIO, *, interval_s: float = 0.2, clock: Callable[[], float] = time.monotonic):
        self.stream, self.interval_s, self.clock = stream, interval_s, clock
        self._phase, self._phase_start, self._last_draw = "", 0.0, float("-inf")
        self._shown = False  # a line is on screen and not yet ended
        self._last, self._drawn = (0, 0), (-1, -1)

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.clock()
        if phase != self._phase:
            self.close()
            self._phase, self._phase_start, self._last_draw = phase, now, float("-inf")
        self._last = (done, total)
        if now - self._last_draw >= self.interval_s or done >= total:
            self._draw(phase, done, total, now)

    def _draw(self, phase: str, done: int, total: int, now: float) -> None:
        self._last_draw, self._shown, self._drawn = now, True, (done, total)
        filled = int((min(done / total, 1.0) if total else 1.0) * self.WIDTH)
        elapsed = now - self._phase_start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {(total - done) / rate:4.0f} s" if rate > 0 and done < total else "         "
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{phase:<8} [{bar}] {done:>11,}/{total:<11,} {rate:>10,.0f}/s {eta}")
        self.stream.flush()

    def close(self) -> None:
        """End the current line (after drawing the last values, if they were not shown)."""
        if self._shown:
            if self._drawn != self._last:
                self._draw(self._phase, *self._last, self.clock())
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
