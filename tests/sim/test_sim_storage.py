"""The storage actor in the simulator: group commit, crash mid-commit, restart on the same disk.

Each node runs the real node actors plus appenders that keep a few appends
in flight and write every acknowledgement to a journal that outlives the
node (the test's notebook, not the node's memory). Nodes are crashed while
a commit is staged but not durable and restarted on the same MemoryLog.
Then, per node: the chain verifies, every acknowledged event is in the log
as it was acknowledged, and the staged events the crash lost were never
acknowledged. Same seed, same trace.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from keyswarm.actors.runtime import Actor, ActorSpec, Context
from keyswarm.actors.storage import STORAGE, AppendEvents, EventDraft, EventsAppended, StorageActor
from keyswarm.config import StorageConfig
from keyswarm.node.assembly import node_actors
from keyswarm.sim.driver import Simulation
from keyswarm.sim.node import ServiceLatency, simulated_signing_key
from keyswarm.storage.bodies import KeyCreated, KeyDisabled
from keyswarm.storage.chain import draft, verify_chain

NODES = ["n1", "n2", "n3"]
PARTITIONS = 16
STORAGE_CONFIG = StorageConfig(partitions=PARTITIONS, group_commit_max_events=50)
APPENDERS = 3
IN_FLIGHT = 4  # appends each appender keeps in flight


@dataclass
class Journal:
    """What the appenders were told, by node: acked (origin_seq -> subject) and failures."""

    acked: dict[str, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stop_at: float = 1e9


class Appender(Actor):
    """Keeps IN_FLIGHT appends of one or two events in flight; journals every answer."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self.waiting: dict[int, tuple[str, ...]] = {}  # nonce -> subjects (answers come in order per requester)
        self.order: list[tuple[str, ...]] = []

    def on_start(self, ctx: Context) -> None:
        for _ in range(IN_FLIGHT):
            self._append(ctx)

    def _append(self, ctx: Context) -> None:
        if ctx.now() >= self.journal.stop_at:
            return
        subjects = tuple(f"key-{ctx.rng.randrange(40)}" for _ in range(ctx.rng.choice((1, 1, 2))))
        drafts = []
        for name in subjects:
            if ctx.rng.random() < 0.5:
                body = KeyCreated(name=name, algorithm="aes256-gcm", version_id=ctx.entropy(8), material=b"m")
            else:
                body = KeyDisabled(name=name)
            drafts.append(EventDraft.of(draft(body, subject=name, partitions=PARTITIONS)))
        self.order.append(subjects)
        ctx.send(STORAGE, AppendEvents(drafts=tuple(drafts)))

    def on_message(self, ctx: Context, msg: object) -> None:
        subjects = self.order.pop(0)  # the storage actor answers one requester's appends in order
        if type(msg) is EventsAppended:
            acked = self.journal.acked[ctx.node]
            assert msg.last_seq - msg.first_seq + 1 == len(subjects)
            for seq, subject in zip(range(msg.first_seq, msg.last_seq + 1), subjects):
                assert seq not in acked, f"{ctx.node}: origin_seq {seq} acknowledged twice"
                acked[seq] = subject
        else:
            self.journal.failures[ctx.node] += 1
        self._append(ctx)


def simulation(seed: int, journal: Journal, *, trace: str = "digest") -> Simulation:
    def actors(node: str) -> list[ActorSpec]:
        specs = node_actors(STORAGE_CONFIG, signer_key=simulated_signing_key(seed, node))
        return specs + [ActorSpec(f"appender{i}", lambda: Appender(journal)) for i in range(APPENDERS)]

    return Simulation(
        seed, NODES, actors=actors, storage=STORAGE_CONFIG, trace=trace,
        service_latency={"event-log": ServiceLatency(mean_s=0.003, jitter_s=0.002)},
    )


def crash_mid_commit(sim: Simulation, node: str) -> int:
    """Run until `node` has a batch staged and not yet durable, crash it, restart it; returns the events lost."""
    disk = sim.node(node)
    assert sim.run_until(lambda: disk.event_log.staged_count > 0, max_s=1.0), f"no commit in flight; {sim.replay_hint()}"
    staged = disk.event_log.staged_count
    head = disk.event_log.heads()[node].origin_seq
    sim.crash(node)
    durable = disk.event_log.heads()[node].origin_seq
    assert durable == head - staged, f"the crash lost {head - durable}, {staged} were staged; {sim.replay_hint()}"
    sim.run_for(0.05)
    sim.restart(node)
    return staged


def scenario(seed: int, *, trace: str = "digest") -> tuple[Simulation, Journal, dict[str, int]]:
    journal = Journal()
    sim = simulation(seed, journal, trace=trace)
    lost: dict[str, int] = defaultdict(int)
    sim.run_for(0.2)
    for round_ in range(3):
        node = NODES[(seed + round_) % len(NODES)]
        lost[node] += crash_mid_commit(sim, node)
        sim.run_for(0.1)
    journal.stop_at = sim.now
    sim.run_for(1.0)  # everything in flight is answered
    return sim, journal, lost


def test_acknowledged_events_survive_crashes_mid_commit_and_chains_continue(sim_seed: int) -> None:
    sim, journal, lost = scenario(sim_seed)
    hint = f"seed={sim_seed}: {sim.replay_hint()}"
    assert sum(lost.values()) > 0, f"no crash hit a staged batch; {hint}"
    for node in NODES:
        disk = sim.node(node).event_log
        assert disk.staged_count == 0, hint
        events = disk.read_origin(node)
        head = verify_chain(node, events, partitions=PARTITIONS)  # no gap, no fork, no unsigned tail
        assert head is not None and head.origin_seq == len(events), hint
        acked = journal.acked[node]
        assert len(acked) > 100, f"{node} acknowledged only {len(acked)} events; {hint}"
        for seq, subject in acked.items():
            assert seq <= len(events), f"{node}: acknowledged seq {seq} is gone (log ends at {len(events)}); {hint}"
            assert events[seq - 1].subject == subject, f"{node}: seq {seq} is not the acknowledged event; {hint}"
        # Every event but the SignerKey genesis was acknowledged: nothing durable is unaccounted for.
        assert sorted(acked) == list(range(2, len(events) + 1)), f"{node}: {hint}"
        assert sim.node(node).lost_events == lost.get(node, 0), hint
        storage: StorageActor = sim.node(node).runtime.actor(STORAGE)
        assert storage.stats.failed_commits == 0 and storage.queued == 0 and not storage.committing, hint
        assert storage.stats.max_batch_events > 1, f"{node}: no group commit happened; {hint}"
    assert sum(journal.failures.values()) == 0, f"appends failed: {dict(journal.failures)}; {hint}"


def test_a_restarted_node_resumes_its_chain_from_the_durable_head(sim_seed: int) -> None:
    journal = Journal()
    sim = simulation(sim_seed, journal, trace="full")
    sim.run_for(0.1)
    lost = crash_mid_commit(sim, "n2")
    disk = sim.node("n2").event_log
    durable = disk.heads()["n2"].origin_seq
    sim.run_for(0.1)
    events = disk.read_origin("n2")
    assert len(events) > durable, f"seed={sim_seed}: n2 wrote nothing after its restart"
    verify_chain("n2", events, partitions=PARTITIONS)
    assert sum(1 for e in events if e.origin_seq == 1) == 1, "one genesis: the restart continued the chain"
    assert any(f"crash epoch=2 lost_staged_events={lost}" in line for line in sim.trace_lines()), f"seed={sim_seed}"


def test_the_same_seed_gives_the_same_trace(sim_seed: int) -> None:
    first = scenario(sim_seed)[0].trace_digest()
    assert scenario(sim_seed)[0].trace_digest() == first, f"seed={sim_seed}"
    assert scenario(sim_seed + 100)[0].trace_digest() != first, f"seed={sim_seed}"
