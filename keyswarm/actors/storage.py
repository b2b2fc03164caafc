"""The storage actor: the node's only event author, with group commit.

Owns the node's `OriginChain` (origin_seq, prev digest, HLC, signer), the
queue of appends waiting for a commit, the commits in flight, the draft
check, and the
messages other actors use to append (`AppendEvents` -> `EventsAppended` or
`Failure`) and the requests it hands the `event-log` blocking service
(`AppendBatch`, `LoadHead`, `LoadPartitionState`). docs/storage.md, "The
storage actor", explains the design; the rules it keeps:

- Nothing is acknowledged before it is durable. A requester hears back only
  when the `ServiceResult` of the commit holding its events arrives: success
  (`EventsAppended`) or failure (`Failure`, UNAVAILABLE, retryable).
- Natural batching: appends that arrive while a commit is in flight queue;
  when it completes, everything queued (whole requests, up to `max_events`
  events) is sealed into ONE batch with ONE signature and submitted as one
  `AppendBatch`: one durable transaction.
- A pipeline of two: when a full batch (`max_events` events) is queued
  behind the commit in flight, it is sealed and submitted at once, so the
  service writes it as soon as the disk is free (LMDB has one writer: the
  service writes batches in order). A batch that would not be full waits
  for the commit in flight and grows instead: sealing it early costs a
  commit (an fsync, a signature) for a few events. `max_inflight=1` turns
  the pipeline off.
- A flush happens at the end of the current burst (a zero-delay timer), so
  a burst of appends that arrive together (the requesters of the last batch
  answering their acks) forms one batch instead of "1, then the rest". It
  adds no wait: the timer fires as soon as the messages already delivered
  have been handled. `max_delay_s` bounds how long an append should wait:
  appends that waited longer before their commit was submitted are counted
  (`late_appends`), and, when it is > 0 and the node is under load, it is a
  gathering window (see `_gather_delay`).
- Only this node's own actors may append (the sender is a local actor
  address): `AppendEvents` is a registered message, so a peer frame could
  carry one, and the node must never sign what a peer or client wrote.
- An `AppendEvents` is atomic: all its events land in one commit, so it may
  carry at most `max_events` drafts. Drafts are checked before they are
  sealed (partition, body, size): a bad event sealed into the chain would
  make the origin's chain fail verification forever, and a batch the log
  refuses fails every requester in it.
- A failed commit wrote nothing: every requester of that batch gets
  UNAVAILABLE, nothing more is sealed, and once no commit is in flight the
  chain is reloaded from the log's durable head, so the chain never has a
  gap or a fork. A batch sealed behind the failed one is chained to it, so
  the log refuses it too (its first `prev` names an event the log does not
  hold) and its requesters get UNAVAILABLE as well. Each requester hears
  the truth about its own batch: acked only when the log says it is durable.
- On start (and after a failure) the actor asks for its origin's durable
  head and queues appends until it has it. A node whose log holds no event
  of its origin starts a fresh chain (`OriginChain` writes the SignerKey
  genesis event itself). A log whose chain was started by another key is
  refused: signing on would break the chain.
- The signer's certificate (`signer_certificate`, issued at node start by
  the node's token; b"" on a node without one) rides in the genesis
  SignerKey. When the chain already exists and its newest SignerKey carries
  another certificate (none, or an older one), the actor commits, as soon
  as the head is loaded, a SignerKey naming the same key with the new
  certificate, signed by that key (`OriginChain.recertify`): a commit with
  no requester, retried through the usual resync if it fails.
- Sans-IO: time comes from `ctx.now()` / `ctx.wall_time()`; the signing key
  is handed to the factory by the assembly (a key file on a real node,
  seeded bytes in the simulator).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Actor, Address, Context, Sender, ServiceResult
from keyswarm.errors import DecodeError, ErrorCode
from keyswarm.storage.bodies import BODY_TAGS, SIGNER_KEY_TYPE, check_envelope, decode_body
from keyswarm.storage.chain import Draft, OriginChain, Signer
from keyswarm.storage.events import Event, Head, partition_of
from keyswarm.storage.fold import PartitionState
from keyswarm.storage.log import AppendResult
from keyswarm.transport import codec
from keyswarm.transport.codec import message

#: The actor's name on every node.
STORAGE = "storage"
#: The blocking service that owns the node's `EventLog`.
EVENT_LOG_SERVICE = "event-log"
#: Largest body one draft may carry (the log stores events of up to 64 MiB;
#: key events are a few hundred bytes).
MAX_BODY_BYTES = 1 << 20
#: Appends queued beyond this many events are refused with BUSY.
MAX_QUEUED_BATCHES = 64
#: Commits in flight at most: one being written, one sealed behind it.
MAX_INFLIGHT_COMMITS = 2
#: Subjects whose partition the draft check remembers (a pure function of
#: the subject; key names recur: every rotation, setting and status change).
PARTITION_MEMO_SUBJECTS = 65_536
#: Retry of a failed head load: first delay, doubling up to the cap.
LOAD_RETRY_INITIAL_S = 0.05
LOAD_RETRY_MAX_S = 2.0


# --- messages other actors exchange with the storage actor ----------------------


@message(tag=0x0302)
@dataclass(frozen=True, slots=True, kw_only=True)
class EventDraft:
    """An event before the storage actor numbers, chains, stamps and signs it.

    Build it from `keyswarm.storage.chain.draft(body, subject=, partitions=)`
    with `EventDraft.of`, which checks body and envelope. Fields are append-only.
    """

    partition: int
    type: int  # tag of the typed body
    subject: str
    body: bytes  # codec encoding of the typed body

    @classmethod
    def of(cls, d: Draft) -> EventDraft:
        return cls(partition=d.partition, type=d.type, subject=d.subject, body=d.body)


@message(tag=0x0303)
@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEvents:
    """Append these events, all in one durable commit; answered with
    `EventsAppended` once durable, or `Failure`. Fields are append-only."""

    drafts: tuple[EventDraft, ...]

    @classmethod
    def of(cls, drafts: list[Draft] | tuple[Draft, ...]) -> AppendEvents:
        return cls(drafts=tuple(EventDraft.of(d) for d in drafts))


@message(tag=0x0304)
@dataclass(frozen=True, slots=True, kw_only=True)
class EventsAppended:
    """The events of an `AppendEvents` are durable: they are `origin`'s
    `first_seq..last_seq`, in draft order; `local_seqs[i]` is draft i's local
    sequence in its partition, and `events[i]` the event draft i became
    (numbered, stamped, signed), so the requester folds exactly what is
    durable (the keys actors do). Fields are append-only."""

    origin: str
    first_seq: int
    last_seq: int
    local_seqs: tuple[int, ...]
    events: tuple[Event, ...] = ()


# --- requests to the event-log service (never on the wire) ------------------------


@dataclass(frozen=True, slots=True)
class AppendBatch:
    """Append `events` in one durable transaction; the answer is the log's `AppendResult`.

    `digests[i]` is `digest(events[i])` as the sealer computed it (None: the
    log computes them); the log trusts them only because they come from this
    process's sealer (docs/storage.md, "Performance of the append path").
    `bodies[i]` is `events[i]`'s typed body as the draft check decoded it
    from those bytes and checked it against that envelope, or None (None for
    all: not known); the fold then does not decode it again, on the same
    trust: only the storage actor's own check produces them.
    """

    events: tuple[Event, ...]
    digests: tuple[bytes, ...] | None = None
    bodies: tuple[object, ...] | None = None

    def __repr__(self) -> str:  # the simulator's trace shows requests; a batch can hold 1,000 events
        if not self.events:
            return "AppendBatch(0 events)"
        first, last = self.events[0], self.events[-1]
        return (
            f"AppendBatch({len(self.events)} events of {first.origin} seq {first.origin_seq}..{last.origin_seq}"
            f" sig={last.sig[:8].hex()})"
        )


@dataclass(frozen=True, slots=True)
class LoadHead:
    """`origin`'s durable head; the answer is `HeadLoaded`. `with_certificate`:
    also the certificate of its newest SignerKey (a scan of partition 0)."""

    origin: str
    with_certificate: bool = False


@dataclass(frozen=True, slots=True)
class HeadLoaded:
    """An origin's newest durable event (None: no chain yet), its HLC, and
    the public key of its genesis SignerKey (None: no chain yet)."""

    origin: str
    head: Head | None
    last_hlc: int
    genesis_public_key: bytes | None
    signer_certificate: bytes = b""  # the newest SignerKey's certificate (asked `with_certificate`)


@dataclass(frozen=True, slots=True)
class LoadPartitionState:
    """A partition's state: its snapshot plus the fold of its tail; the answer is `PartitionLoaded`."""

    partition: int


@dataclass(frozen=True, slots=True)
class PartitionLoaded:
    partition: int
    seq: int  # the last local sequence folded into `state`
    snapshot_seq: int  # where the snapshot it started from stood (0: none)
    state: PartitionState


# --- the actor -------------------------------------------------------------------------


@dataclass(slots=True)
class StorageStats:
    """What the storage actor has done (read by tests, the bench and, later, the monitor)."""

    commits: int = 0  # durable batches
    events: int = 0  # durable events (including SignerKey genesis events)
    requests_acked: int = 0
    requests_failed: int = 0  # answered UNAVAILABLE / BUSY / INTERNAL after being accepted
    requests_refused: int = 0  # bad drafts (BAD_REQUEST)
    failed_commits: int = 0
    head_loads: int = 0
    max_batch_events: int = 0
    max_batch_requests: int = 0
    late_appends: int = 0  # appends submitted more than max_delay_s after they arrived
    max_wait_s: float = 0.0  # longest an append waited for its commit to be submitted
    gathers: int = 0  # times a flush waited for company (the gathering window)
    pipelined_commits: int = 0  # batches sealed while another commit was in flight
    recertifications: int = 0  # SignerKeys committed to record a new certificate for the same key


class _Request:
    __slots__ = ("sender", "drafts", "bodies", "queued_at")

    def __init__(self, sender: Sender, drafts: tuple[EventDraft, ...], bodies: list[object], queued_at: float):
        self.sender = sender
        self.drafts = drafts
        self.bodies = bodies  # the drafts' typed bodies, as the draft check decoded them
        self.queued_at = queued_at


@dataclass(slots=True)
class _Commit:
    ticket: int
    requests: list[_Request]
    events: list[Event]
    offset: int  # index of the first requested event (1 when a SignerKey genesis event leads)


@dataclass(frozen=True, slots=True)
class _EndOfBurst:
    """Timer: the messages delivered so far are handled; submit what is queued."""


@dataclass(frozen=True, slots=True)
class _GatherDone:
    """Timer: the gathering window is over; submit what is queued."""


@dataclass(frozen=True, slots=True)
class _RetryLoad:
    """Timer: ask for the durable head again."""


_END_OF_BURST, _GATHER_DONE, _RETRY_LOAD = _EndOfBurst(), _GatherDone(), _RetryLoad()


@dataclass(slots=True)
class _Flow:
    """Flush scheduling state: the armed timer and what the last commit looked like."""

    timer: int | None = None
    gathering: bool = False
    last_done_at: float | None = None
    last_batch_requests: int = 0
    load_retry_s: float = LOAD_RETRY_INITIAL_S
    load_ticket: int | None = None
    queue: deque = field(default_factory=deque)
    queued_events: int = 0


class StorageActor(Actor):
    """The node's event author: queues appends, seals batches, commits them through `event-log`."""

    name = STORAGE

    def __init__(
        self,
        *,
        signer_key: bytes | None,
        partitions: int,
        max_events: int = 1000,
        max_delay_s: float = 0.002,
        max_inflight: int = MAX_INFLIGHT_COMMITS,
        signer_certificate: bytes = b"",
        signer_intermediates: tuple[bytes, ...] = (),
    ):
        """`signer_key` is the node's Ed25519 private key (32 bytes); None makes
        an actor that refuses every append (assemblies for tests that never write).
        `max_inflight` 1 turns the pipeline off (one commit at a time).
        `signer_certificate`: the key's signer certificate (DER) and
        `signer_intermediates` the node certificate that issued it, recorded
        in the chain's SignerKey; b"" leaves the key uncertified."""
        if not 1 <= partitions <= 65536 or max_events < 1 or not max_delay_s >= 0 or max_inflight not in (1, 2):
            raise ValueError(f"bad storage settings: {partitions=} {max_events=} {max_delay_s=} {max_inflight=}")
        self.signer = Signer(signer_key) if signer_key is not None else None
        self.signer_certificate = signer_certificate
        self.signer_intermediates = tuple(signer_intermediates)
        self.partitions = partitions
        self.max_events = max_events
        self.max_delay_s = max_delay_s
        self.max_inflight = max_inflight
        self.max_queued_events = max_events * MAX_QUEUED_BATCHES
        self.stats = StorageStats()
        #: The chain, once the durable head is known; None while loading.
        self.chain: OriginChain | None = None
        #: Why every append is refused (no key, or the log's chain is another key's); None when serving.
        self.refusal: str | None = None if signer_key is not None else "this node has no signing key"
        #: Commits submitted and not answered, in seal order (at most max_inflight).
        self._inflight: list[_Commit] = []
        #: A commit failed: seal nothing more; reload the chain once nothing is in flight.
        self._resync = False
        self._flow = _Flow()
        self._partition_memo: dict[str, int] = {}
        self._body_classes: dict[int, type] = {}  # body tag -> class, for the draft check's fast path

    # --- lifecycle -----------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        if self.refusal is None:
            self._load_head(ctx)

    def on_stop(self, ctx: Context) -> None:
        # Best effort: the node is stopping and these were never submitted.
        self._fail_queued(ctx, Failure.of(ErrorCode.UNAVAILABLE, "the node is stopping; the append was not written"))

    @property
    def queued(self) -> int:
        """Appends waiting for a commit."""
        return len(self._flow.queue)

    @property
    def committing(self) -> bool:
        return bool(self._inflight)

    @property
    def inflight(self) -> int:
        """Commits submitted and not yet answered."""
        return len(self._inflight)

    # --- messages ----------------------------------------------------------------------

    def on_message(self, ctx: Context, msg: object) -> None:
        kind = type(msg)
        if kind is AppendEvents:
            self._on_append(ctx, msg)
        elif kind is ServiceResult:
            ticket = msg.ticket
            for commit in self._inflight:  # at most two; the oldest answers first (a refused one at once)
                if commit.ticket == ticket:
                    self._on_committed(ctx, commit, msg)
                    return
            if ticket == self._flow.load_ticket:
                self._on_head(ctx, msg)
            else:
                ctx.log.debug("storage ignores a result for ticket %d", msg.ticket)
        elif kind is _EndOfBurst:
            self._flow.timer = None
            self._on_end_of_burst(ctx)
        elif kind is _GatherDone:
            flow = self._flow
            flow.timer, flow.gathering = None, False
            if self._ready():
                self._flush(ctx)
        elif kind is _RetryLoad:
            if self.chain is None and self.refusal is None and self._flow.load_ticket is None and not self._inflight:
                self._load_head(ctx)
        else:
            ctx.log.debug("storage ignores %s", kind.__name__)

    def _on_append(self, ctx: Context, msg: AppendEvents) -> None:
        sender = ctx.sender
        if type(sender) is not Address or sender.node != ctx.node:
            # Only this node's actors author its events: a peer or a client
            # that could reach this actor must never get the node to sign.
            self.stats.requests_refused += 1
            ctx.reply(Failure.of(ErrorCode.FORBIDDEN, "only this node's actors may append to its event log"))
            return
        if self.refusal is not None:
            self.stats.requests_failed += 1
            ctx.reply(Failure.of(ErrorCode.UNAVAILABLE if self.signer is None else ErrorCode.INTERNAL, self.refusal))
            return
        drafts = msg.drafts
        bodies: list[object] = []
        problem = self._check(drafts, bodies)
        if problem is not None:
            self.stats.requests_refused += 1
            ctx.reply(Failure.of(ErrorCode.BAD_REQUEST, problem))
            return
        flow = self._flow
        if flow.queued_events + len(drafts) > self.max_queued_events:
            self.stats.requests_failed += 1
            ctx.reply(Failure.of(ErrorCode.BUSY, f"the storage queue holds {flow.queued_events} events; retry later"))
            return
        flow.queue.append(_Request(ctx.sender, drafts, bodies, ctx.now()))
        flow.queued_events += len(drafts)
        if self.chain is None:
            return  # the head load flushes
        if self._inflight:
            if self._ready():  # a full batch, and a slot behind the commit in flight
                self._cancel_timer(ctx)
                self._flush(ctx)
            return  # natural batching: the completion of the commit in flight flushes
        if flow.queued_events >= self.max_events or (
            flow.gathering and len(flow.queue) >= flow.last_batch_requests
        ):
            self._cancel_timer(ctx)
            self._flush(ctx)
        elif flow.timer is None:
            flow.timer = ctx.start_timer(0.0, _END_OF_BURST)

    def _check(self, drafts: tuple[EventDraft, ...], bodies: list[object]) -> str | None:
        """Why these drafts cannot be sealed, or None. Checked before sealing:
        an event the verifier would reject must never enter the chain.
        Appends each draft's decoded body to `bodies` (the fold reuses them).

        The checks are `decode_body`'s and `partition_of`'s, with two memos
        that change no outcome: the partition of a subject (a pure function
        of the subject) and the class of a body tag (registrations only add).
        """
        if type(drafts) is not tuple or not drafts:
            return "an append carries at least one draft"
        if len(drafts) > self.max_events:
            return f"an append carries at most {self.max_events} drafts (it is committed atomically)"
        memo, classes = self._partition_memo, self._body_classes
        decode = codec.decode
        for d in drafts:
            if type(d) is not EventDraft:
                return f"a draft is an EventDraft, not {type(d).__name__}"
            kind = d.type
            if kind == SIGNER_KEY_TYPE:
                return "SignerKey events are written by the storage actor itself"
            body = d.body
            if type(body) is not bytes or len(body) > MAX_BODY_BYTES:
                return f"a draft body is bytes of at most {MAX_BODY_BYTES}"
            subject = d.subject
            if type(subject) is not str or type(d.partition) is not int:
                return f"draft partition {d.partition!r} is not the partition of its subject"
            partition = memo.get(subject)
            if partition is None:
                partition = partition_of(subject, self.partitions)
                if len(memo) >= PARTITION_MEMO_SUBJECTS:
                    memo.clear()
                memo[subject] = partition
            if d.partition != partition:
                return f"draft partition {d.partition!r} is not the partition of its subject"
            cls = classes.get(kind) if type(kind) is int else None
            try:
                if cls is None:  # the first draft of its type (or not a body at all): the general path
                    typed = decode_body(d)  # type: ignore[arg-type]  # a Draft is an envelope with type and body
                    if type(kind) is int and kind in BODY_TAGS:
                        classes[kind] = codec.by_tag(kind)  # type: ignore[assignment]
                else:  # what decode_body does once the type is known to be a body
                    typed = decode(body, expect=cls)
                    check_envelope(d, typed)
            except DecodeError as exc:
                return f"draft body does not decode: {exc}"
            bodies.append(typed)
        return None

    # --- the durable head ------------------------------------------------------------

    def _load_head(self, ctx: Context) -> None:
        assert not self._inflight, "the head is loaded only when no commit is in flight"
        self.chain = None
        self._resync = False
        self._cancel_timer(ctx)
        load = LoadHead(origin=ctx.node, with_certificate=bool(self.signer_certificate))
        self._flow.load_ticket = ctx.ask(EVENT_LOG_SERVICE, load)

    def _on_head(self, ctx: Context, result: ServiceResult) -> None:
        flow = self._flow
        flow.load_ticket = None
        if not result.ok or type(result.value) is not HeadLoaded:
            reason = result.error if result.error is not None else f"unexpected answer {type(result.value).__name__}"
            ctx.log.warning("storage cannot load the head of %s (retry in %.2f s): %s", ctx.node, flow.load_retry_s, reason)
            self._fail_queued(ctx, Failure.of(ErrorCode.UNAVAILABLE, f"the event log is unavailable: {reason}"))
            ctx.start_timer(flow.load_retry_s, _RETRY_LOAD)
            flow.load_retry_s = min(flow.load_retry_s * 2, LOAD_RETRY_MAX_S)
            return
        flow.load_retry_s = LOAD_RETRY_INITIAL_S
        loaded: HeadLoaded = result.value
        assert self.signer is not None
        if loaded.head is not None and loaded.genesis_public_key != self.signer.public_key:
            # Signing on with another key would write events no verifier accepts.
            self.refusal = (
                f"the event log's chain of {ctx.node} was started by another signing key "
                f"({(loaded.genesis_public_key or b'').hex()[:16]}...); this node cannot append to it"
            )
            ctx.log.error("storage refuses every append: %s", self.refusal)
            self._fail_queued(ctx, Failure.of(ErrorCode.INTERNAL, self.refusal))
            return
        self.stats.head_loads += 1
        self.chain = OriginChain(ctx.node, self.signer, head=loaded.head, last_hlc=loaded.last_hlc,
                                 certificate=self.signer_certificate, intermediates=self.signer_intermediates)
        if loaded.head is not None and self.signer_certificate and loaded.signer_certificate != self.signer_certificate:
            self._commit_recertification(ctx, uncertified=not loaded.signer_certificate)
        self._schedule(ctx)

    def _commit_recertification(self, ctx: Context, *, uncertified: bool) -> None:
        """Record the signer's new certificate in the chain now: a SignerKey
        naming the same key, in a commit of its own with no requester."""
        chain = self.chain
        assert chain is not None and not self._inflight, "a recertification is the first commit after a head load"
        ctx.log.info("storage records the signer certificate in %s's chain (%s)", ctx.node,
                     "the chain's key was uncertified" if uncertified else "it replaces an older certificate")
        chain.recertify(self.signer_certificate, self.signer_intermediates)
        events, digests = chain.seal_batch([], int(ctx.wall_time() * 1000))
        ticket = ctx.ask(EVENT_LOG_SERVICE, AppendBatch(tuple(events), tuple(digests)))
        self._inflight.append(_Commit(ticket, [], events, len(events)))
        self.stats.recertifications += 1

    # --- group commit ------------------------------------------------------------------

    def _ready(self) -> bool:
        """Whether a batch can be sealed now: with nothing in flight, whatever is
        queued; behind a commit in flight, only a full batch (`max_events`
        events queued). A batch that would not be full waits for the commit in
        flight and grows meanwhile (natural batching); sealing it early would
        cost a commit (an fsync, a signature) for a few events, and under one
        GIL that costs more than the overlap gains. A full batch gains nothing
        by waiting, and is written as soon as the disk is free."""
        flow, n = self._flow, len(self._inflight)
        if self.chain is None or not flow.queue:
            return False
        return n == 0 or (n < self.max_inflight and flow.queued_events >= self.max_events)

    def _schedule(self, ctx: Context) -> None:
        """Arrange a flush at the end of the current burst, if there is something to flush."""
        if self._ready() and self._flow.timer is None:
            self._flow.timer = ctx.start_timer(0.0, _END_OF_BURST)

    def _on_end_of_burst(self, ctx: Context) -> None:
        if not self._ready():
            return
        delay = 0.0 if self._inflight else self._gather_delay(ctx.now())
        if delay > 0:
            flow = self._flow
            flow.gathering = True
            flow.timer = ctx.start_timer(delay, _GATHER_DONE)
            self.stats.gathers += 1
            return
        self._flush(ctx)

    def _gather_delay(self, now: float) -> float:
        """How long to wait for more appends before submitting (0: submit now).

        The gathering window: only when nothing is in flight (a commit in
        flight already gathers for the next batch), `max_delay_s` > 0 and the
        node is under load, meaning a commit completed less than `max_delay_s`
        ago (an idle node submits at once), and fewer requests are queued than
        the last batch carried (a burst that already matches the last batch
        goes at once, so closed-loop requesters never wait). It then waits
        until as many requests as the last batch are queued, `max_events`
        events are, or the oldest queued append has waited `max_delay_s`.
        """
        flow = self._flow
        if self.max_delay_s <= 0 or flow.last_done_at is None or now - flow.last_done_at >= self.max_delay_s:
            return 0.0
        if len(flow.queue) >= flow.last_batch_requests or flow.queued_events >= self.max_events:
            return 0.0
        return max(0.0, flow.queue[0].queued_at + self.max_delay_s - now)

    def _flush(self, ctx: Context) -> None:
        """Seal what is queued (whole requests, up to max_events) into one batch and submit it."""
        flow, chain = self._flow, self.chain
        assert len(self._inflight) < self.max_inflight and chain is not None and flow.queue, "flush without work or a free slot"
        queue, limit = flow.queue, self.max_events
        requests: list[_Request] = []
        drafts: list[EventDraft] = []
        bodies: list[object] = []
        now = ctx.now()
        stats = self.stats
        max_delay = self.max_delay_s
        while queue and (not drafts or len(drafts) + len(queue[0].drafts) <= limit):
            request = queue.popleft()
            requests.append(request)
            drafts.extend(request.drafts)
            bodies.extend(request.bodies)
            waited = now - request.queued_at
            if waited > max_delay:
                stats.late_appends += 1
            if waited > stats.max_wait_s:
                stats.max_wait_s = waited
        flow.queued_events -= len(drafts)
        # Sealed on top of the commits in flight: if one of them fails, this
        # batch's first `prev` names an event the log never got, and the log
        # refuses it (no gap, no fork); `_on_committed` then resyncs.
        events, digests = chain.seal_batch(drafts, int(ctx.wall_time() * 1000))  # type: ignore[arg-type]  # EventDraft is a Draft
        if self._inflight:
            stats.pipelined_commits += 1
        offset = len(events) - len(drafts)  # a SignerKey may lead: its body is not known here
        ticket = ctx.ask(EVENT_LOG_SERVICE, AppendBatch(tuple(events), tuple(digests), (None,) * offset + tuple(bodies)))
        self._inflight.append(_Commit(ticket, requests, events, offset))
        if self._ready():  # a second full batch queued: seal it behind this one
            self._flush(ctx)

    def _on_committed(self, ctx: Context, commit: _Commit, result: ServiceResult) -> None:
        self._inflight.remove(commit)
        flow, stats = self._flow, self.stats
        flow.last_done_at = ctx.now()
        flow.last_batch_requests = len(commit.requests)
        if result.ok and type(result.value) is AppendResult:
            # Durable. (Also after an earlier batch of the pipeline failed: the
            # log accepted this one on top of it, so that one was written too.)
            positions = result.value.positions
            events = commit.events
            assert len(positions) == len(events), "the log answered for another batch"
            origin = events[0].origin
            offset = commit.offset
            reply_to = ctx.reply_to
            for request in commit.requests:
                n = len(request.drafts)
                if n == 1:  # the common request: no slices
                    position, event = positions[offset], events[offset]
                    assert position is not None, "a freshly sealed event was already in the log: the chain forked"
                    first = event.origin_seq
                    reply_to(request.sender, EventsAppended(
                        origin=origin, first_seq=first, last_seq=first, local_seqs=(position[1],), events=(event,),
                    ))
                    offset += 1
                    continue
                end = offset + n
                placed = positions[offset:end]
                assert None not in placed, "a freshly sealed event was already in the log: the chain forked"
                first = events[offset].origin_seq
                reply_to(request.sender, EventsAppended(
                    origin=origin, first_seq=first, last_seq=first + n - 1, local_seqs=tuple([p[1] for p in placed]),
                    events=tuple(events[offset:end]),
                ))
                offset = end
            stats.commits += 1
            stats.events += len(events)
            stats.requests_acked += len(commit.requests)
            stats.max_batch_events = max(stats.max_batch_events, len(events))
            stats.max_batch_requests = max(stats.max_batch_requests, len(commit.requests))
        else:
            # Nothing of the batch was written (the log's append is atomic). The
            # chain advanced when it was sealed, and a batch sealed behind it is
            # chained to it: seal nothing more, and reload the chain from the
            # durable head once the batch behind (refused by the log) is answered.
            reason = result.error if result.error is not None else f"unexpected answer {type(result.value).__name__}"
            ctx.log.warning("storage: a commit of %d event(s) failed: %s", len(commit.events), reason)
            stats.failed_commits += 1
            stats.requests_failed += len(commit.requests)
            failure = Failure.of(ErrorCode.UNAVAILABLE, f"the event log did not commit the batch: {reason}")
            for request in commit.requests:
                ctx.reply_to(request.sender, failure)
            self.chain = None
            self._resync = True
            self._cancel_timer(ctx)
        if self._resync:
            if not self._inflight:
                self._load_head(ctx)
            return
        self._schedule(ctx)

    # --- helpers ---------------------------------------------------------------------

    def _cancel_timer(self, ctx: Context) -> None:
        flow = self._flow
        if flow.timer is not None:
            ctx.cancel_timer(flow.timer)
            flow.timer = None
        flow.gathering = False

    def _fail_queued(self, ctx: Context, failure: Failure) -> None:
        flow = self._flow
        self.stats.requests_failed += len(flow.queue)
        while flow.queue:
            ctx.reply_to(flow.queue.popleft().sender, failure)
        flow.queued_events = 0
