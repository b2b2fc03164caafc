"""The storage actor on a real `NodeRuntime` with a fake environment, and the event-log service over a MemoryLog.

The test plays the driver: it decides when the `event-log` service answers
(`serve`), when time passes (`env.now`) and when timers fire (`fire`). The
service is the real `EventLogService` over a `MemoryLog`, so every chain the
actor writes is checked with `verify_chain` on what the log holds. No
sockets, no threads, no sleeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Actor, ActorSpec, Address, ClientRef, Context, NodeRuntime
from keyswarm.actors.storage import (
    EVENT_LOG_SERVICE,
    STORAGE,
    AppendBatch,
    AppendEvents,
    EventDraft,
    EventsAppended,
    LoadHead,
    LoadPartitionState,
    PartitionLoaded,
    StorageActor,
)
from keyswarm.errors import ErrorCode, KeyswarmError, StorageError
from keyswarm.node.event_log_service import EventLogService, check_log_on_open
from keyswarm.storage.bodies import SIGNER_KEY_TYPE, KeyCreated, KeyDisabled, decode_body
from keyswarm.storage.chain import Signer, draft, verify_chain
from keyswarm.storage.events import digest
from keyswarm.storage.fold import fold
from keyswarm.storage.log import AppendResult
from keyswarm.storage.memory_log import MemoryLog
from keyswarm.storage.snapshot import encode_state

NODE = "n1"
PARTITIONS = 8
KEY = bytes(range(32))


class FakeEnv:
    """Records what the runtime asks of its driver; time moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 100.0
        self.submitted: list[tuple[str, int, object]] = []
        self.wakes: list[float] = []
        self.refuse: tuple[type, ...] = ()

    def monotonic(self) -> float:
        return self.now

    def wall_time(self) -> float:
        return 1_700_000_000.0 + self.now

    def entropy(self, n: int) -> bytes:
        return bytes(n)

    def send_remote(self, to: Address, sender: Address, msg: object) -> bool:
        return True

    def reply_client(self, ref: ClientRef, msg: object) -> bool:
        return True

    def submit(self, service: str, ticket: int, request: object) -> bool:
        if type(request) in self.refuse:
            return False  # a full queue: the runtime answers Busy at once
        self.submitted.append((service, ticket, request))
        return True

    def wake_at(self, deadline: float) -> None:
        self.wakes.append(deadline)


@dataclass(frozen=True)
class Send:
    """Test instruction: the requester sends this append to the storage actor."""

    append: AppendEvents


class Requester(Actor):
    """Sends the appends it is told to and records every answer."""

    def __init__(self) -> None:
        self.answers: list[object] = []

    def on_message(self, ctx: Context, msg: object) -> None:
        if type(msg) is Send:
            ctx.send(STORAGE, msg.append)
        else:
            self.answers.append(msg)


def disabled(name: str) -> EventDraft:
    return EventDraft.of(draft(KeyDisabled(name=name), subject=name, partitions=PARTITIONS))


def append(*names: str) -> AppendEvents:
    return AppendEvents(drafts=tuple(disabled(n) for n in names))


class Harness:
    """A node with the storage actor and requesters r0..rN, the log and its service."""

    def __init__(self, requesters: int = 4, *, key: bytes | None = KEY, log: MemoryLog | None = None, **settings: object):
        self.env = FakeEnv()
        self._done: set[int] = set()
        self.log = log or MemoryLog(node_id=NODE, partitions=PARTITIONS)
        self.service = EventLogService(self.log, snapshot_every=settings.pop("snapshot_every", 10_000))
        self.settings = {"partitions": PARTITIONS, "max_events": 1000, "max_delay_s": 0.0, **settings}
        specs = [ActorSpec(STORAGE, lambda: StorageActor(signer_key=key, **self.settings))]
        specs += [ActorSpec(f"r{i}", Requester) for i in range(requesters)]
        self.runtime = NodeRuntime(NODE, specs, self.env, rng=random.Random(1))
        self.runtime.start()
        self.runtime.run()

    @property
    def actor(self) -> StorageActor:
        return self.runtime.actor(STORAGE)

    def answers(self, requester: int) -> list[object]:
        return self.runtime.actor(f"r{requester}").answers

    def send(self, requester: int, msg: AppendEvents) -> None:
        self.runtime.deliver(f"r{requester}", None, Send(msg))
        self.runtime.run()

    def serve(self, *, error: KeyswarmError | None = None) -> object:
        """Answer the oldest pending event-log request (with the real service, or with `error`)."""
        ticket, request = next((t, r) for s, t, r in self.env.submitted if s == EVENT_LOG_SERVICE and t not in self._done)
        self._done.add(ticket)
        if error is not None:
            self.runtime.complete(ticket, error=error)
        else:
            try:
                self.runtime.complete(ticket, value=self.service.handle(request))
            except KeyswarmError as exc:
                self.runtime.complete(ticket, error=exc)
        self.runtime.run()
        return request

    def outstanding(self) -> list[object]:
        """Requests submitted to the event log and not yet answered, oldest first."""
        return [r for s, t, r in self.env.submitted if s == EVENT_LOG_SERVICE and t not in self._done]

    def fire(self) -> None:
        """Fire every timer due now."""
        self.runtime.fire_timers()
        self.runtime.run()

    def batches(self) -> list[AppendBatch]:
        return [r for s, _, r in self.env.submitted if type(r) is AppendBatch]

    def chain(self) -> list:
        events = self.log.read_origin(NODE)
        verify_chain(NODE, events, partitions=PARTITIONS)
        return events


def started(requesters: int = 4, **settings: object) -> Harness:
    """A harness whose storage actor has loaded its (empty) head."""
    h = Harness(requesters, **settings)
    assert type(h.serve()) is LoadHead
    return h


# --- start ----------------------------------------------------------------------------


def test_appends_wait_until_the_head_is_loaded() -> None:
    h = Harness()
    assert [type(r) for r in h.outstanding()] == [LoadHead]
    h.send(0, append("a"))
    h.send(1, append("b"))
    h.fire()
    assert h.batches() == [], "nothing may be sealed before the durable head is known"
    h.serve()  # the head: an empty log
    h.fire()
    (batch,) = h.batches()
    assert [e.origin_seq for e in batch.events] == [1, 2, 3]  # genesis SignerKey, then both appends
    assert batch.events[0].type == SIGNER_KEY_TYPE


def test_an_idle_append_is_submitted_at_the_end_of_the_burst_without_delay() -> None:
    h = started()
    h.send(0, append("a"))
    assert h.env.wakes[-1] == h.env.now, "the flush is a zero-delay timer: no added latency"
    h.fire()
    (batch,) = h.batches()
    assert len(batch.events) == 2
    assert h.answers(0) == [], "nothing is acknowledged before its commit is durable"
    h.serve()
    (ack,) = h.answers(0)
    assert ack == EventsAppended(origin=NODE, first_seq=2, last_seq=2, local_seqs=(1,), events=batch.events[1:])
    h.chain()



def test_a_batch_carries_the_bodies_the_draft_check_decoded_and_folds_them() -> None:
    h = started()
    for version in (b"v1", b"v2"):  # the first commit loads the partitions' states, the second is folded onto them
        h.send(0, append("a", "b"))
        h.send(1, AppendEvents.of([draft(KeyCreated(name="c", algorithm="aes256-gcm", version_id=version, material=b"m"),
                                         subject="c", partitions=PARTITIONS)]))
        h.fire()
        batch = h.batches()[-1]
        h.serve()
    first = h.batches()[0]
    assert first.events[0].type == SIGNER_KEY_TYPE and first.bodies is not None
    assert first.bodies[0] is None, "the genesis SignerKey is the chain's, not a checked draft"
    assert list(first.bodies[1:]) == [decode_body(e) for e in first.events[1:]]
    assert batch.bodies is not None and list(batch.bodies) == [decode_body(e) for e in batch.events]
    for partition in {e.partition for e in batch.events}:  # folded as the log's own fold does
        assert h.service._folded[partition].state == fold(e for _, e in h.log.iter_partition(partition))

def test_a_full_batch_is_sealed_behind_the_commit_in_flight_and_a_partial_one_waits() -> None:
    h = started(requesters=5, max_events=4)
    h.send(0, append("first"))
    h.fire()
    h.send(1, append("k1", "k1x"))
    h.fire()
    assert len(h.batches()) == 1, "a batch that would not be full waits for the commit in flight (and grows)"
    h.send(2, append("k2", "k2x"))
    first, second = h.batches()
    assert len(second.events) == 4, "a full batch is sealed at once, behind the commit in flight (the pipeline)"
    assert [bool(e.sig) for e in second.events] == [False] * 3 + [True], "one signature, on the last event"
    assert second.events[0].prev == first.digests[-1], "chained on the batch in flight"
    assert second.digests == tuple(digest(e) for e in second.events), "the sealer's digests travel with the batch"
    assert all(h.answers(i) == [] for i in range(3)), "nothing is acknowledged before its commit is durable"
    h.send(3, append("k3", "k3x"))
    h.send(4, append("k4", "k4x"))
    assert len(h.batches()) == 2, "two commits in flight at most: the rest queues"
    h.serve()
    assert len(h.answers(0)) == 1 and all(h.answers(i) == [] for i in range(1, 5))
    h.fire()
    (third,) = h.batches()[2:]
    assert len(third.events) == 4, "a slot freed and a full batch was queued: sealed behind the second"
    h.serve()
    h.serve()
    seqs = [(a.first_seq, a.last_seq) for i in range(1, 5) for a in h.answers(i)]
    assert seqs == [(3, 4), (5, 6), (7, 8), (9, 10)]
    stats = h.actor.stats
    assert stats.commits == 3 and stats.requests_acked == 5 and stats.pipelined_commits == 2
    assert len(h.chain()) == 10


def test_with_one_commit_in_flight_appends_wait_for_it() -> None:
    h = started(requesters=6, max_inflight=1)
    h.send(0, append("first"))
    h.fire()
    for i in range(1, 6):
        h.send(i, append(f"k{i}", f"k{i}x"))
    h.fire()
    assert len(h.batches()) == 1, "one commit in flight at a time"
    h.serve()
    assert len(h.answers(0)) == 1 and all(h.answers(i) == [] for i in range(1, 6))
    h.fire()
    second = h.batches()[1]
    assert len(second.events) == 10
    assert [bool(e.sig) for e in second.events] == [False] * 9 + [True], "one signature, on the last event"
    h.serve()
    seqs = [(a.first_seq, a.last_seq) for i in range(1, 6) for a in h.answers(i)]
    assert seqs == [(3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]
    assert h.actor.stats.commits == 2 and h.actor.stats.requests_acked == 6
    assert h.actor.stats.pipelined_commits == 0
    assert len(h.chain()) == 12


def test_the_burst_that_answers_acks_forms_one_batch() -> None:
    """Requesters that append again when acked (closed loop) make one batch, not 1 + the rest."""
    h = started(requesters=5)
    for i in range(5):
        h.send(i, append(f"k{i}"))
    h.fire()
    h.serve()
    for i in range(5):  # each requester's next append arrives in the same burst
        h.runtime.deliver(f"r{i}", None, Send(append(f"again{i}")))
    h.runtime.run()
    h.fire()
    assert [len(b.events) for b in h.batches()] == [6, 5]


def test_a_batch_holds_at_most_max_events_and_never_splits_a_request() -> None:
    h = started(requesters=5, max_events=4)
    h.send(0, append("a"))
    h.fire()
    h.send(1, append("b1", "b2", "b3"))
    h.send(2, append("c1", "c2"))
    h.send(3, append("d1", "d2"))
    h.send(4, append("e1"))
    while h.outstanding():
        h.serve()
        h.fire()
    sizes = [len(b.events) for b in h.batches()]
    assert sizes == [2, 3, 4, 1]  # genesis + a; b; c + d; e
    assert [len(h.answers(i)) for i in range(5)] == [1] * 5
    h.chain()


def test_an_append_over_max_events_or_with_bad_drafts_is_refused() -> None:
    h = started(requesters=1, max_events=3)
    bad = [
        append("a", "b", "c", "d"),
        AppendEvents(drafts=()),
        AppendEvents(drafts=(EventDraft(partition=(disabled("a").partition + 1) % PARTITIONS, type=disabled("a").type,
                                        subject="a", body=disabled("a").body),)),
        AppendEvents(drafts=(EventDraft(partition=disabled("a").partition, type=disabled("a").type, subject="a",
                                        body=b"\xc1"),)),
        AppendEvents(drafts=(EventDraft(partition=0, type=SIGNER_KEY_TYPE, subject="", body=b""),)),
        AppendEvents(drafts=(EventDraft(partition=disabled("b").partition, type=disabled("b").type, subject="b",
                                        body=disabled("a").body),)),  # body names key "a", subject "b"
    ]
    for msg in bad:
        h.send(0, msg)
    h.fire()
    assert [a.code for a in h.answers(0)] == [ErrorCode.BAD_REQUEST] * len(bad)
    assert h.batches() == [] and h.actor.stats.requests_refused == len(bad)


def test_a_failed_commit_fails_its_requesters_and_the_chain_resumes_from_the_durable_head() -> None:
    h = started(requesters=4)
    h.send(0, append("a"))
    h.fire()
    h.serve()  # durable: seq 1..2
    for i in (1, 2, 3):
        h.send(i, append(f"k{i}"))
    h.fire()
    h.serve(error=StorageError("disk on fire"))
    for i in (1, 2, 3):
        (failure,) = h.answers(i)
        assert type(failure) is Failure and failure.code is ErrorCode.UNAVAILABLE and failure.retryable
        assert "disk on fire" in failure.message
    assert [type(r) for r in h.outstanding()] == [LoadHead], "the chain is reloaded from the log"
    h.send(1, append("retry"))  # queued until the head is known
    h.fire()
    assert len(h.batches()) == 2
    h.serve()
    h.fire()
    h.serve()
    (_, ack) = h.answers(1)
    assert (ack.first_seq, ack.last_seq) == (3, 3), "no gap where the failed batch was sealed"
    events = h.chain()
    assert [e.origin_seq for e in events] == [1, 2, 3]
    assert h.actor.stats.failed_commits == 1 and h.actor.stats.requests_failed == 3


def test_a_refused_submission_is_a_failed_commit_too() -> None:
    h = started(requesters=1)
    h.env.refuse = (AppendBatch,)  # the service's queue is full
    h.send(0, append("a"))
    h.fire()
    (failure,) = h.answers(0)
    assert failure.code is ErrorCode.UNAVAILABLE
    h.env.refuse = ()
    h.serve()  # the head reload
    h.send(0, append("b"))
    h.fire()
    h.serve()
    assert h.answers(0)[1].first_seq == 2  # the refused batch's sequence numbers were taken back
    h.chain()


def two_in_flight(h: Harness) -> tuple[AppendBatch, AppendBatch]:
    """seq 1..2 durable; then k1 + k1x (seq 3..4) and k2 + k2x (seq 5..6) sealed, both in flight (max_events 2)."""
    h.send(0, append("a"))
    h.fire()
    h.serve()
    h.send(1, append("k1", "k1x"))
    h.send(2, append("k2", "k2x"))
    first, second = h.outstanding()
    assert type(first) is AppendBatch and type(second) is AppendBatch and h.actor.inflight == 2
    return first, second


def test_a_failure_of_the_first_of_two_batches_in_flight_fails_both_and_the_chain_resumes() -> None:
    h = started(requesters=4, max_events=2)
    first, second = two_in_flight(h)
    assert second.events[0].prev == first.digests[-1]
    h.serve(error=StorageError("disk on fire"))
    (failure,) = h.answers(1)
    assert failure.code is ErrorCode.UNAVAILABLE and "disk on fire" in failure.message
    assert h.answers(2) == [], "the batch behind is answered when the log answers it"
    assert h.outstanding() == [second], "no head load while a commit is in flight"
    h.send(3, append("m1", "m2"))
    h.fire()
    assert len(h.batches()) == 3, "nothing is sealed on a chain that broke"
    h.serve()  # the real log: the batch behind links to events it never got
    (failure,) = h.answers(2)
    assert failure.code is ErrorCode.UNAVAILABLE and failure.retryable
    assert h.log.heads()[NODE].origin_seq == 2, "nothing of either batch was written"
    assert [type(r) for r in h.outstanding()] == [LoadHead], "the chain is reloaded once nothing is in flight"
    h.serve()
    h.fire()
    h.serve()
    (ack,) = h.answers(3)
    assert (ack.first_seq, ack.last_seq) == (3, 4), "no gap where the failed batches were sealed"
    assert [e.origin_seq for e in h.chain()] == [1, 2, 3, 4]
    stats = h.actor.stats
    assert stats.failed_commits == 2 and stats.requests_failed == 2 and stats.head_loads == 2


def test_a_batch_behind_a_failed_one_that_the_log_took_is_acknowledged() -> None:
    """The first batch was written but its answer was lost (a service error
    after the write): the batch behind it is durable, and its requester hears so."""
    h = started(requesters=4, max_events=2)
    first, second = two_in_flight(h)
    ticket = next(t for s, t, r in h.env.submitted if r is first)
    h.service.handle(first)  # written...
    h._done.add(ticket)
    h.runtime.complete(ticket, error=StorageError("answer lost"))  # ...but reported as failed
    h.runtime.run()
    assert h.answers(1)[0].code is ErrorCode.UNAVAILABLE
    h.serve()
    (ack,) = h.answers(2)
    assert type(ack) is EventsAppended and (ack.first_seq, ack.last_seq) == (5, 6)
    h.serve()  # the head: seq 6
    h.send(3, append("next"))
    h.fire()
    h.serve()
    assert h.answers(3)[0].first_seq == 7
    assert [e.origin_seq for e in h.chain()] == [1, 2, 3, 4, 5, 6, 7]


def test_a_refused_submission_behind_a_commit_in_flight_waits_for_it_before_the_reload() -> None:
    h = started(requesters=3, max_events=1)
    h.send(0, append("a"))
    h.env.refuse = (AppendBatch,)
    h.send(1, append("b"))  # a full batch: sealed behind, and the service refuses it
    assert h.answers(1)[0].code is ErrorCode.UNAVAILABLE, "refused at once"
    h.env.refuse = ()
    assert [type(r) for r in h.outstanding()] == [AppendBatch], "the first commit is still in flight"
    h.serve()
    assert type(h.answers(0)[0]) is EventsAppended, "the commit in flight was durable"
    assert [type(r) for r in h.outstanding()] == [LoadHead]
    h.serve()
    h.send(2, append("c"))
    h.fire()
    h.serve()
    assert h.answers(2)[0].first_seq == 3, "the refused batch's sequence numbers were taken back"
    h.chain()


def test_a_failed_head_load_fails_queued_appends_and_retries_with_backoff() -> None:
    h = Harness(requesters=1)
    h.send(0, append("a"))
    h.serve(error=StorageError("log unreadable"))
    (failure,) = h.answers(0)
    assert failure.code is ErrorCode.UNAVAILABLE and "log unreadable" in failure.message
    assert h.outstanding() == []
    h.env.now += 0.05
    h.fire()
    assert [type(r) for r in h.outstanding()] == [LoadHead]
    h.serve(error=StorageError("still unreadable"))
    h.env.now += 0.05
    h.fire()
    assert h.outstanding() == [], "the second retry waits twice as long"
    h.env.now += 0.05
    h.fire()
    h.serve()
    h.send(0, append("b"))
    h.fire()
    h.serve()
    assert type(h.answers(0)[-1]) is EventsAppended


def test_a_restarted_actor_continues_the_durable_chain() -> None:
    h = started(requesters=1)
    h.send(0, append("a", "b"))
    h.fire()
    h.serve()
    again = Harness(requesters=1, log=h.log.reopen())
    again.serve()
    again.send(0, append("c"))
    again.fire()
    again.serve()
    assert again.answers(0)[0].first_seq == 4
    assert [e.origin_seq for e in again.chain()] == [1, 2, 3, 4]


def test_a_chain_started_by_another_key_is_refused() -> None:
    h = started(requesters=1)
    h.send(0, append("a"))
    h.fire()
    h.serve()
    other = Harness(requesters=1, key=bytes(32), log=h.log.reopen())
    other.serve()
    other.send(0, append("b"))
    other.fire()
    (failure,) = other.answers(0)
    assert failure.code is ErrorCode.INTERNAL and "another signing key" in failure.message
    assert other.batches() == []


def test_only_local_actors_may_append() -> None:
    h = started(requesters=0)
    for sender in (Address("n2", "r0"), ClientRef(NODE, b"client", 1)):
        h.runtime.deliver(STORAGE, sender, append("forged"))
        h.runtime.run()
    h.fire()
    assert h.batches() == [] and h.actor.stats.requests_refused == 2


def test_without_a_signing_key_every_append_is_refused() -> None:
    h = Harness(requesters=1, key=None)
    assert h.outstanding() == []
    h.send(0, append("a"))
    assert h.answers(0)[0].code is ErrorCode.UNAVAILABLE


def test_the_queue_is_bounded() -> None:
    h = started(requesters=1, max_events=2)
    h.send(0, append("a"))
    h.fire()
    h.send(0, append("b"))
    h.fire()  # two commits in flight; what follows queues
    for _ in range(64):
        h.send(0, append("x", "y"))
    h.send(0, append("z"))
    assert [a.code for a in h.answers(0)] == [ErrorCode.BUSY]


# --- the delay bound and the gathering window ------------------------------------------


def test_appends_that_waited_past_max_delay_are_counted() -> None:
    h = started(requesters=2, max_delay_s=0.002)
    h.send(0, append("a"))
    h.fire()
    h.send(1, append("b"))
    h.env.now += 0.010  # a slow commit
    h.serve()
    h.fire()
    assert h.actor.stats.late_appends == 1 and h.actor.stats.max_wait_s == pytest.approx(0.010)


def test_the_gathering_window_waits_for_as_many_requests_as_the_last_batch_under_load() -> None:
    h = started(requesters=4, max_delay_s=0.002)
    h.send(0, append("a"))
    h.fire()
    for i in (1, 2, 3):
        h.send(i, append(f"k{i}"))
    h.serve()  # commit 1 done; three requests queued
    h.fire()
    h.serve()  # commit 2 (three requests) done at `now`: the node is under load
    h.send(1, append("again1"))
    h.fire()
    assert h.actor.stats.gathers == 1 and len(h.batches()) == 2, "one request of the last three: wait for company"
    h.send(2, append("again2"))
    assert len(h.batches()) == 2
    h.send(3, append("again3"))
    assert len(h.batches()) == 3, "as many requests as the last batch: submitted at once"
    assert len(h.batches()[2].events) == 3


def test_the_gathering_window_ends_after_max_delay() -> None:
    h = started(requesters=4, max_delay_s=0.002)
    h.send(0, append("a"))
    h.fire()
    for i in (1, 2, 3):
        h.send(i, append(f"k{i}"))
    h.serve()
    h.fire()
    h.serve()
    h.send(1, append("lonely"))
    h.fire()
    assert len(h.batches()) == 2
    h.env.now += 0.002
    h.fire()
    assert len(h.batches()) == 3 and len(h.batches()[2].events) == 1


def test_an_idle_node_does_not_gather() -> None:
    h = started(requesters=4, max_delay_s=0.002)
    for i in range(3):
        h.send(i, append(f"k{i}"))
    h.fire()
    h.serve()
    h.env.now += 1.0  # long after the last commit: no load
    h.send(0, append("a"))
    h.fire()
    assert len(h.batches()) == 2 and h.actor.stats.gathers == 0


# --- the event-log service --------------------------------------------------------------


def sealed_batches(n_batches: int, per_batch: int, names: int = 5) -> list[list]:
    from keyswarm.storage.chain import OriginChain

    chain = OriginChain(NODE, Signer(KEY))
    batches = []
    for b in range(n_batches):
        drafts = []
        for i in range(per_batch):
            name = f"key-{(b * per_batch + i) % names}"
            body = KeyCreated(name=name, algorithm="aes256-gcm", version_id=b"v%d" % (b * per_batch + i), material=b"m")
            drafts.append(draft(body, subject=name, partitions=PARTITIONS))
        batches.append(chain.seal(drafts, 1_700_000_000_000 + b))
    return batches


def test_the_service_writes_snapshots_that_equal_the_full_fold() -> None:
    log = MemoryLog(node_id=NODE, partitions=PARTITIONS)
    service = EventLogService(log, snapshot_every=7)
    for events in sealed_batches(10, 5):
        service.handle(AppendBatch(tuple(events)))
    assert service.snapshots_written > 0
    for partition in range(PARTITIONS):
        everything = fold(e for _, e in log.iter_partition(partition))
        loaded = service.handle(LoadPartitionState(partition))
        assert type(loaded) is PartitionLoaded and loaded.seq == log.last_seq(partition)
        assert encode_state(loaded.state) == encode_state(everything)
        snapshot = log.read_snapshot(partition)
        if snapshot is not None:
            assert loaded.snapshot_seq == snapshot.seq > 0
    check_log_on_open(log, "memory")


def test_the_service_folds_a_partition_from_the_log_once_then_as_it_grows() -> None:
    log = MemoryLog(node_id=NODE, partitions=PARTITIONS)
    service = EventLogService(log, snapshot_every=7)
    reads: list[int] = []
    iter_partition = log.iter_partition
    log.iter_partition = lambda partition, *a, **k: (reads.append(partition), iter_partition(partition, *a, **k))[1]  # type: ignore[method-assign]
    batches = sealed_batches(12, 5, names=8)
    for events in batches[:6]:
        service.handle(AppendBatch(tuple(events)))
    touched = {e.partition for events in batches[:6] for e in events}
    assert sorted(reads) == sorted(touched), "each partition is folded from the log once, when first touched"
    assert service.partition_loads == len(touched)
    log.append(batches[6])  # an append the service did not see: its partitions are folded from the log again
    for events in batches[7:]:
        service.handle(AppendBatch(tuple(events)))
    assert service.snapshots_written > 0 and service.snapshot_failures == 0
    assert service.partition_loads == len(touched) + len({e.partition for e in batches[6]} & touched) + len(
        {e.partition for events in batches[6:] for e in events} - touched
    )
    for partition in range(PARTITIONS):
        snapshot = log.read_snapshot(partition)
        if snapshot is not None:
            upto = [e for seq, e in iter_partition(partition) if seq <= snapshot.seq]
            assert snapshot.state == encode_state(fold(upto)), f"partition {partition}"


def test_an_event_that_does_not_fold_never_fails_its_append_and_waits_a_snapshot_interval() -> None:
    from keyswarm.storage.chain import Draft, OriginChain

    log = MemoryLog(node_id=NODE, partitions=PARTITIONS)
    service = EventLogService(log, snapshot_every=4)
    chain = OriginChain(NODE, Signer(KEY))
    good = disabled("k")
    bad = Draft(good.partition, good.type, good.subject, b"\xc1")  # sealed by a buggy author: the log takes any body
    service.handle(AppendBatch(tuple(chain.seal([good], 1_700_000_000_000))))
    result = service.handle(AppendBatch(tuple(chain.seal([bad], 1_700_000_000_001))))
    assert type(result) is AppendResult and result.appended == 1
    assert service.snapshot_failures == 1 and good.partition not in service._folded
    loads = service.partition_loads
    for ms in range(2, 4):  # within snapshot_every of the failure: not folded again
        service.handle(AppendBatch(tuple(chain.seal([good], 1_700_000_000_000 + ms))))
    assert service.partition_loads == loads and service.snapshot_failures == 1
    service.handle(AppendBatch(tuple(chain.seal([good] * 3, 1_700_000_000_010))))
    assert service.snapshot_failures == 2, "retried after snapshot_every events, and the record is still bad"
    assert log.read_snapshot(good.partition) is None


def test_the_service_stages_at_submit_and_commits_at_completion() -> None:
    log = MemoryLog(node_id=NODE, partitions=PARTITIONS)
    service = EventLogService(log)
    first, second = sealed_batches(2, 3)
    request = AppendBatch(tuple(first))
    service.on_submit(request)
    assert log.staged_count == 4  # genesis + 3
    service.handle(request)
    assert log.staged_count == 0
    doomed = AppendBatch(tuple(second))
    service.on_submit(doomed)
    assert log.crash() == 3
    assert log.heads()[NODE].origin_seq == 4


def test_the_service_reports_a_head_with_its_hlc_and_genesis_key() -> None:
    log = MemoryLog(node_id=NODE, partitions=PARTITIONS)
    service = EventLogService(log)
    empty = service.handle(LoadHead(NODE))
    assert empty.head is None and empty.genesis_public_key is None
    (events,) = sealed_batches(1, 3)
    service.handle(AppendBatch(tuple(events)))
    loaded = service.handle(LoadHead(NODE))
    assert loaded.head.origin_seq == 4 and loaded.last_hlc == events[-1].hlc
    assert loaded.genesis_public_key == Signer(KEY).public_key


def test_the_service_refuses_what_it_does_not_know() -> None:
    service = EventLogService(MemoryLog(node_id=NODE, partitions=PARTITIONS))
    with pytest.raises(KeyswarmError, match="cannot handle"):
        service.handle("hello")
