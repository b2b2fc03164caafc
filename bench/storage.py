"""Storage KPIs: durable appends, replay, restart from snapshots, audit.

    python bench/storage.py [--quick] [--out DIR] [--only durable,commits,replay,restart,audit]

`--only` runs only the named parts (and writes only their records): `durable`
is both `durable_events_per_s` measurements, `commits` the two
`LmdbLog.append` ones; the big log is built only for replay, restart or audit.

Writes bench/results/storage.json (DESIGN section 11, issue 3):

- `storage.durable_events_per_s`: acknowledged (durable) appends per second
  through the storage actor: a `NodeThread` with its LMDB log in a temp dir
  and 64 appender actors, each keeping ONE append of one event in flight
  (`.pipelined`: 8 in flight each). Group commit turns them into batches.
- `storage.single_commit_per_s`: `LmdbLog.append` of one event per call
  (one fsynced commit per event), events sealed beforehand.
- `storage.batch_commit_events_per_s.b1000`: `LmdbLog.append` of sealed
  1,000-event batches: the log's ceiling.
- `storage.replay_1m_s`: every partition read from disk, decoded and folded
  (`fold`) into key state, for a log of 1,000,000 events (100,000 with
  --quick, and the target scales: see params) in 64 partitions over 1,000 key names, written by 3
  origins in `OriginChain` batches of 1,000.
- `storage.restart_from_snapshot_s`: open the log and fold every partition
  from its snapshot plus its tail through the node's own path
  (`EventLogService.load_partition_state`), with snapshots taken every
  10,000 events of the log, at their oldest (the last round is 10,000
  events back: the worst case of the policy). `.node_policy`: the same with
  the snapshots the node's `SNAPSHOT_EVERY_EVENTS` policy (per partition)
  leaves on this log, plus the node's check on open (`check_log_on_open`).
- `storage.audit_verify_us_per_event`: `keyswarm audit verify`'s walk on the
  same log as the CLI runs it (two processes on a large log); `.jobs1` in
  one process.

The log is built once per run of this script (sealed, appended, folded as it
goes to produce the snapshots) and every measurement is repeated: medians
are reported, every value is in the params. Temp dirs are removed. The
machine has 2 cores shared with other work: compare runs, not single values.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))  # a source checkout runs without an install

from common import add_bench_args, median_of, record, write_results  # noqa: E402

from keyswarm.storage.bodies import KeyConfigSet, KeyCreated, KeyDisabled, KeyEnabled, KeyVersionAdded  # noqa: E402
from keyswarm.storage.chain import Draft, OriginChain, Signer, draft  # noqa: E402
from keyswarm.storage.fold import PartitionState, fold  # noqa: E402
from keyswarm.storage.lmdb_log import LmdbLog  # noqa: E402
from keyswarm.storage.log import Snapshot  # noqa: E402
from keyswarm.storage.snapshot import encode_state  # noqa: E402

PARTITIONS = 64
KEY_NAMES = 1000
BATCH = 1000
ORIGINS = ("bench-a", "bench-b", "bench-c")
SNAPSHOT_ROUND_EVENTS = 10_000
#: Event mix after a key's create (the rest are KeyEnabled).
MIX = (("rotate", 0.10), ("config", 0.30), ("disable", 0.30))
T0_MS = 1_750_000_000_000
APPENDERS = 64
PIPELINE_DEPTH = 8
TARGETS = {"durable": 100_000, "replay_s": 10.0, "restart_s": 1.0}
#: What `--only` can select.
PARTS = ("durable", "commits", "replay", "restart", "audit")


# --- the workload -------------------------------------------------------------------------


class Workload:
    """Sealed batches of key events: 3 origins take turns, 1,000 drafts per batch."""

    def __init__(self, seed: int = 1):
        self.rng = random.Random(seed)
        self.names = [f"bench-key-{i:04d}" for i in range(KEY_NAMES)]
        self.created: set[str] = set()
        self.chains = [OriginChain(o, Signer(bytes([i + 1]) * 32)) for i, o in enumerate(ORIGINS)]
        self.now_ms = T0_MS

    def body(self, name: str) -> object:
        rng = self.rng
        if name not in self.created:
            self.created.add(name)
            return KeyCreated(name=name, algorithm="aes256-gcm", version_id=rng.randbytes(16), material=rng.randbytes(48))
        r = rng.random()
        if r < MIX[0][1]:
            return KeyVersionAdded(name=name, version_id=rng.randbytes(16), material=rng.randbytes(48))
        if r < MIX[0][1] + MIX[1][1]:
            return KeyConfigSet(name=name, min_decryption_version=1 + rng.randrange(3), auto_rotate_period_s=86400.0)
        if r < MIX[0][1] + MIX[1][1] + MIX[2][1]:
            return KeyDisabled(name=name)
        return KeyEnabled(name=name)

    def drafts(self, n: int) -> list[Draft]:
        names, rng = self.names, self.rng
        out = []
        for _ in range(n):
            name = names[rng.randrange(KEY_NAMES)]
            out.append(draft(self.body(name), subject=name, partitions=PARTITIONS))
        return out

    def batches(self, total_events: int) -> Iterator[list]:
        """Sealed batches until `total_events` drafts are sealed (genesis events come on top)."""
        turn = 0
        while total_events > 0:
            n = min(BATCH, total_events)
            self.now_ms += 1
            yield self.chains[turn % len(self.chains)].seal(self.drafts(n), self.now_ms)
            total_events -= n
            turn += 1


@dataclass
class BuiltLog:
    path: Path
    events: int
    seconds: float
    global_snapshots: dict[int, Snapshot] = field(default_factory=dict)  # taken SNAPSHOT_ROUND_EVENTS before the end
    node_snapshots: dict[int, Snapshot] = field(default_factory=dict)  # what the node's per-partition policy leaves


def build_log(path: Path, events: int, *, node_every: int) -> BuiltLog:
    """Write the bench log; fold as it goes to produce both snapshot sets."""
    started = time.perf_counter()
    workload = Workload()
    states = [PartitionState() for _ in range(PARTITIONS)]
    node_base = [0] * PARTITIONS
    built = BuiltLog(path, 0, 0.0)
    round_at = events - SNAPSHOT_ROUND_EVENTS
    log = LmdbLog.open(path, node_id=ORIGINS[0], partitions=PARTITIONS, genesis=b"bench", map_size_bytes=1 << 31)
    try:
        last = [0] * PARTITIONS
        for batch in workload.batches(events):
            result = log.append(batch)
            touched = set()
            for event, position in zip(batch, result.positions):
                partition, seq = position
                states[partition].apply(event)
                last[partition] = seq
                touched.add(partition)
            before = built.events
            built.events += len(batch)
            if before < round_at <= built.events:  # the last snapshot round of the global policy
                built.global_snapshots = {
                    p: Snapshot(partition=p, seq=last[p], state=encode_state(states[p])) for p in range(PARTITIONS)
                }
            for p in touched:  # the node's policy: per partition, every `node_every` events
                if last[p] - node_base[p] >= node_every:
                    built.node_snapshots[p] = Snapshot(partition=p, seq=last[p], state=encode_state(states[p]))
                    node_base[p] = last[p]
    finally:
        log.close()
    built.seconds = time.perf_counter() - started
    return built


def write_snapshots(path: Path, snapshots: dict[int, Snapshot]) -> None:
    log = LmdbLog.open(path, node_id=ORIGINS[0], partitions=PARTITIONS, genesis=b"bench")
    try:
        for p in range(PARTITIONS):  # a partition without one keeps none: clear by writing seq 0 state
            snapshot = snapshots.get(p) or Snapshot(partition=p, seq=0, state=encode_state(PartitionState()))
            log.write_snapshot(snapshot)
    finally:
        log.close()


# --- replay, restart, audit -------------------------------------------------------------------


def replay_once(path: Path) -> float:
    gc.collect()
    started = time.perf_counter()
    log = LmdbLog.open_existing(path, readonly=True)
    try:
        states = [fold(event for _, event in log.iter_partition(p, batch=4096)) for p in range(PARTITIONS)]
    finally:
        log.close()
    elapsed = time.perf_counter() - started
    assert sum(len(s.keys) for s in states) == KEY_NAMES, "the replay lost keys"
    return elapsed


def restart_once(path: Path, *, check_on_open: bool, check_times: list[float] | None = None) -> float:
    from keyswarm.node.event_log_service import EventLogService, check_log_on_open

    gc.collect()
    started = time.perf_counter()
    log = LmdbLog.open(path, node_id=ORIGINS[0], partitions=PARTITIONS, genesis=b"bench")
    try:
        if check_on_open:
            check_log_on_open(log, str(path))
            if check_times is not None:
                check_times.append(time.perf_counter() - started)
        service = EventLogService(log)
        loaded = [service.load_partition_state(p) for p in range(PARTITIONS)]
    finally:
        log.close()
    elapsed = time.perf_counter() - started
    assert sum(len(p.state.keys) for p in loaded) == KEY_NAMES, "the restart lost keys"
    return elapsed


def audit_once(path: Path, *, parallel: bool) -> tuple[float, int]:
    from keyswarm.audit import audit_log

    gc.collect()
    log = LmdbLog.open_existing(path, readonly=True)
    try:
        report = audit_log(log, records_in_child=path if parallel else None)
    finally:
        log.close()
    assert report.ok, f"the bench log does not verify: {report.findings[:3]}"
    return report.seconds / report.events * 1e6, report.events


# --- durable appends straight to the log --------------------------------------------------------


def direct_commits(root: Path, *, batch: int, batches: int) -> float:
    """Events per second of `LmdbLog.append` with `batch` sealed events per call."""
    path = Path(tempfile.mkdtemp(prefix="direct-", dir=root))
    try:
        workload = Workload(seed=batch)
        chain = workload.chains[0]
        sealed = []
        for _ in range(batches):
            workload.now_ms += 1
            sealed.append(chain.seal(workload.drafts(batch), workload.now_ms))
        log = LmdbLog.open(path, node_id=ORIGINS[0], partitions=PARTITIONS, genesis=b"bench")
        try:
            log.append(sealed[0])  # genesis and first commit outside the window
            started = time.perf_counter()
            for events in sealed[1:]:
                log.append(events)
            elapsed = time.perf_counter() - started
        finally:
            log.close()
        return batch * (batches - 1) / elapsed
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- durable appends through the storage actor ---------------------------------------------------


@dataclass
class Meter:
    acked: int = 0
    failed: int = 0
    stopping: bool = False


def actor_appends(root: Path, *, depth: int, duration_s: float, warmup_s: float) -> tuple[float, dict]:
    """Acked events/s with APPENDERS actors each keeping `depth` one-event appends in flight."""
    from keyswarm.actors.messages import Failure
    from keyswarm.actors.runtime import Actor, ActorSpec
    from keyswarm.actors.storage import STORAGE, AppendEvents, EventsAppended
    from keyswarm.config import node_config
    from keyswarm.node.assembly import node_actors, node_services, open_node_storage
    from keyswarm.node.driver import NodeThread

    meter = Meter()

    class Appender(Actor):
        def __init__(self, request: AppendEvents):
            self.request = request

        def on_start(self, ctx) -> None:  # type: ignore[no-untyped-def]
            for _ in range(depth):
                ctx.send(STORAGE, self.request)

        def on_message(self, ctx, msg: object) -> None:  # type: ignore[no-untyped-def]
            if type(msg) is EventsAppended:
                meter.acked += msg.last_seq - msg.first_seq + 1
            elif type(msg) is Failure:
                meter.failed += 1
            if not meter.stopping:
                ctx.send(STORAGE, self.request)

    def appender(i: int) -> ActorSpec:
        name = f"bench-key-{i:04d}"
        body = KeyConfigSet(name=name, min_decryption_version=1)
        request = AppendEvents.of([draft(body, subject=name, partitions=PARTITIONS)])
        return ActorSpec(f"appender-{i}", lambda: Appender(request))

    data = Path(tempfile.mkdtemp(prefix="node-", dir=root))
    try:
        config = node_config(node={
            "id": "bench", "data_dir": str(data),
            "client_endpoint": f"tcp://127.0.0.1:{free_port()}", "peer_endpoint": f"tcp://127.0.0.1:{free_port()}",
        }, storage={"partitions": PARTITIONS})
        storage = open_node_storage(config)
        actors = node_actors(config.storage, signer_key=storage.signer_key) + [appender(i) for i in range(APPENDERS)]
        services = node_services(str(data), event_log=storage.event_log)
        node = NodeThread(config, actors=actors, services=services).start()
        try:
            time.sleep(warmup_s)
            t0, c0, a0 = time.perf_counter(), time.process_time(), meter.acked
            time.sleep(duration_s)
            t1, c1, a1, failed = time.perf_counter(), time.process_time(), meter.acked, meter.failed
            stats = node.call(lambda: dict(vars_of(node.driver.runtime.actor(STORAGE).stats)))
            # CPU per acked event (every thread of the process): steadier than the rate on a shared machine.
            stats["cpu_us_per_event"] = (c1 - c0) / max(1, a1 - a0) * 1e6
        finally:
            meter.stopping = True
            node.stop()
        if failed:  # failures after the window are the node stopping under the appenders
            raise SystemExit(f"{failed} appends failed through the storage actor")
        return (a1 - a0) / (t1 - t0), stats
    finally:
        shutil.rmtree(data, ignore_errors=True)


def vars_of(obj: object) -> dict:
    return {name: getattr(obj, name) for name in getattr(obj, "__slots__", ())} or dict(vars(obj))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- main ----------------------------------------------------------------------------------------


def measure(label: str, runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    value, values = median_of(runs, fn)
    print(f"{label:<44} median {value:>14,.3f}  runs {[round(v, 3) for v in values]}", flush=True)
    return value, values


def main(argv: list[str] | None = None) -> int:
    parser = add_bench_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--only", default=",".join(PARTS), metavar="PARTS",
                        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if not only or only - set(PARTS):
        parser.error(f"--only takes parts among {', '.join(PARTS)}, not {args.only!r}")
    from keyswarm.node.event_log_service import SNAPSHOT_EVERY_EVENTS

    quick = args.quick
    events = 100_000 if quick else 1_000_000
    runs = 2 if quick else 5
    audit_runs = 1 if quick else 3
    timing = {"duration_s": 1.0, "warmup_s": 0.3} if quick else {"duration_s": 3.0, "warmup_s": 0.5}
    common = {"quick": quick, "partitions": PARTITIONS}
    records: list[dict] = []
    root = Path(tempfile.mkdtemp(prefix="keyswarm-bench-storage-"))
    try:
        # Durable appends: the actor first (the machine is at its quietest before the big log exists).
        if "durable" in only:
            actor_results = {}
            for depth in (1, PIPELINE_DEPTH):
                stats: list[dict] = []

                def once(depth: int = depth, stats: list[dict] = stats) -> float:
                    rate, s = actor_appends(root, depth=depth, **timing)
                    stats.append(s)
                    return rate

                rate, values = measure(f"durable via storage actor, depth {depth}", runs, once)
                print(f"{'':<44} CPU us/event {[round(s['cpu_us_per_event'], 1) for s in stats]}", flush=True)
                actor_results[depth] = (rate, values, stats[len(stats) // 2])
            for depth, metric in ((1, "storage.durable_events_per_s"), (PIPELINE_DEPTH, "storage.durable_events_per_s.pipelined")):
                rate, values, stats = actor_results[depth]
                records.append(record(metric, round(rate), "events/s", target=TARGETS["durable"], params={
                    **common, "appenders": APPENDERS, "in_flight_per_appender": depth, "events_per_append": 1,
                    "runs": runs, "values": [round(v) for v in values], **timing,
                    "storage_actor_stats": {k: stats.get(k) for k in ("commits", "events", "max_batch_events", "max_batch_requests", "late_appends", "cpu_us_per_event")},
                }))
        if "commits" in only:
            single_n = 300 if quick else 1000
            single, values = measure("LmdbLog.append, 1 event per commit", runs, lambda: direct_commits(root, batch=1, batches=single_n))
            records.append(record("storage.single_commit_per_s", round(single), "commits/s",
                                  params={**common, "events": single_n, "runs": runs, "values": [round(v) for v in values]}))
            b1000, values = measure("LmdbLog.append, 1,000 events per commit", runs,
                                    lambda: direct_commits(root, batch=1000, batches=20 if quick else 60))
            records.append(record("storage.batch_commit_events_per_s.b1000", round(b1000), "events/s",
                                  params={**common, "runs": runs, "values": [round(v) for v in values]}))

        if only & {"replay", "restart", "audit"}:
            # The big log.
            path = root / "log"
            built = build_log(path, events, node_every=SNAPSHOT_EVERY_EVENTS)
            print(f"built {built.events:,} events in {built.seconds:.1f} s", flush=True)
            log_params = {**common, "events": built.events, "key_names": KEY_NAMES, "origins": len(ORIGINS), "batch": BATCH,
                          "mix_after_create": dict(MIX, enable=0.30), "page_cache": "warm (the log was just written)"}
            if "replay" in only:
                replay, values = measure("replay: read + decode + fold every partition", runs, lambda: replay_once(path))
                # --quick replays 100,000 events: the target scales with the log (10 us per event).
                records.append(record("storage.replay_1m_s", round(replay, 3), "s", target=TARGETS["replay_s"] * events / 1_000_000,
                                      higher_is_better=False,
                                      params={**log_params, "runs": runs, "values": [round(v, 3) for v in values],
                                              "us_per_event": round(replay / built.events * 1e6, 2)}))
            if "restart" in only:
                write_snapshots(path, built.global_snapshots)
                tail = built.events - sum(s.seq for s in built.global_snapshots.values())
                restart, values = measure("restart: snapshot + tail, global 10k rounds", runs, lambda: restart_once(path, check_on_open=False))
                records.append(record("storage.restart_from_snapshot_s", round(restart, 3), "s", target=TARGETS["restart_s"], higher_is_better=False,
                                      params={**log_params, "runs": runs, "values": [round(v, 3) for v in values], "tail_events": tail,
                                              "snapshots": f"every {SNAPSHOT_ROUND_EVENTS:,} events of the log, the last round {SNAPSHOT_ROUND_EVENTS:,} events back"}))
                write_snapshots(path, built.node_snapshots)
                tail = built.events - sum(s.seq for s in built.node_snapshots.values())
                checks: list[float] = []
                restart, values = measure("restart: node policy + check on open", runs,
                                          lambda: restart_once(path, check_on_open=True, check_times=checks))
                records.append(record("storage.restart_from_snapshot_s.node_policy", round(restart, 3), "s", target=TARGETS["restart_s"],
                                      higher_is_better=False, params={**log_params, "runs": runs, "values": [round(v, 3) for v in values],
                                                                      "tail_events": tail, "snapshot_every_per_partition": SNAPSHOT_EVERY_EVENTS,
                                                                      "includes": "check_log_on_open + load_partition_state of every partition",
                                                                      "check_log_on_open_s": [round(v, 3) for v in checks]}))
            if "audit" in only:
                for parallel, metric in ((True, "storage.audit_verify_us_per_event"), (False, "storage.audit_verify_us_per_event.jobs1")):
                    per_event, values = measure(f"audit verify, {'2 processes' if parallel else '1 process'} (us/event)", audit_runs,
                                                lambda parallel=parallel: audit_once(path, parallel=parallel)[0])
                    records.append(record(metric, round(per_event, 2), "us/event", higher_is_better=False,
                                          params={**log_params, "runs": audit_runs, "values": [round(v, 2) for v in values],
                                                  "processes": 2 if parallel else 1,
                                                  "seconds": round(per_event * built.events / 1e6, 2)}))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_results("storage", records, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
