"""The `keys.<p>` actors: one per partition, owning the named keys whose names hash to it.

Each actor holds its partition's folded state (storage/fold.py), answers
reads and crypto requests from it (`KeyRequests`), and turns key-changing
requests into events that it appends through the storage actor
(`EventWriter`). The `keys` router (key_router.py) sends it the requests of
its partition.

Rules:
- Loading: on start the actor asks the `event-log` service for its
  partition's state (snapshot + tail). Until it has it, requests wait in a
  bounded queue (BUSY past it); a failed load answers them UNAVAILABLE
  (retryable) and is retried with backoff.
- Durable before visible: a write's events join the state only when the
  storage actor says they are durable (`EventsAppended`, whose `events`
  are folded exactly as written: stamps included), and only then is the
  write answered. Every `EventsAppended` of this partition is folded, even
  one for a batch given up on: the fold is idempotent, and a durable event
  must never be missing from the state.
- One live batch (EventWriter): writes queue while one is in flight; when it
  is answered, every queued write for a distinct key name is checked against
  the state and sent as one batch (one commit). A second write to a name
  waits for the next batch, so each write is checked against a state that
  holds every earlier write of its key.
- Retried writes apply once. A write's `client_request_id`, with the
  client's name (the sender `ClientRef`'s `client`), becomes a fingerprint
  stored in the event body (`request`), and the fold remembers the newest
  ones per key (`KeyState.requests`), so a retry is recognised after a
  restart too. A retry of a write still queued or in flight joins it and
  gets its answer; a retry of one already applied gets the key as it is
  now (with the version that write made) and writes nothing. The same id
  reused for another kind of write of the key is BAD_REQUEST. A delete
  retried after the key is gone answers as the delete did.
- Names are checked before anything is written (key_messages.check_key_name),
  and a write for a name of another partition is refused: its event would
  land in the other partition and this state would never see it.
- Automatic rotation (auto_rotation.py has the schedule's rules): a key
  whose `auto_rotate_period_s` is set is rotated when its primary version
  is that old, by the wall clock (`ctx.wall_time()`, the clock HLC stamps
  come from). The actor keeps the partition's due times
  (`RotationSchedule`, recomputed per key when its events are folded) and
  one timer for the earliest. The rotation is an ordinary `RotateKey`
  write through `_queue`/`_pump`/`_plan`, with the deterministic request
  id of its due time, so it is checked, batched, made durable and
  deduplicated exactly as a client's. At most
  `max_auto_rotations_per_tick` are outstanding at once; the timer is
  re-armed when they have settled (at once if more keys are due). A failed
  one is tried again `AUTO_ROTATE_RETRY_S` later. Each is counted in
  `KeyServiceStats.auto_rotations` and logged at INFO.
  No replication yet: every node rotates the keys it holds. Once events
  replicate, only the partition's owner may auto-rotate: two nodes rotating
  one key for one due time would both write a version, and the convergent
  fold keeps both.
- Sans-IO: material and version ids come from `ctx.entropy`, time from
  `ctx.now()` (and `ctx.wall_time()` for due times, compared with HLC
  stamps). The domain key arrives through the factory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from keyswarm.actors.auto_rotation import (
    AUTO_ROTATE_CLIENT,
    AUTO_ROTATE_RETRY_S,
    MAX_AUTO_ROTATIONS_PER_TICK,
    RotationSchedule,
    auto_request_id,
    check_auto_rotate_period,
)
from keyswarm.actors.event_writer import WRITE_TIMEOUT_S, EventWriter, Outcome, WriteTimeout
from keyswarm.actors.key_messages import (
    MAX_CLIENT_REQUEST_ID_BYTES,
    ConfigureKey,
    CreateKey,
    DeleteKey,
    DeleteKeyResult,
    DisableKey,
    EnableKey,
    KeyInfo,
    RotateKey,
    check_key_name,
)
from keyswarm.actors.key_requests import KeyRequests, failure_of
from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Actor, Context, Sender, ServiceResult
from keyswarm.actors.storage import EVENT_LOG_SERVICE, LoadPartitionState, PartitionLoaded
from keyswarm.crypto import named_keys
from keyswarm.crypto.key_cache import KeyIsDisabled
from keyswarm.crypto.sealing import DomainKey
from keyswarm.errors import ErrorCode, KeyNotFound, KeyswarmError
from keyswarm.policy import Forbidden
from keyswarm.storage.bodies import (
    KeyConfigSet,
    KeyCreated,
    KeyDeleted,
    KeyDisabled,
    KeyEnabled,
    KeyVersionAdded,
    request_fingerprint,
)
from keyswarm.storage.chain import Draft, draft
from keyswarm.storage.events import partition_of
from keyswarm.storage.fold import KeyState, PartitionState
from keyswarm.transport import codec

#: Bytes of a fresh version id (coordination-free: random).
VERSION_ID_BYTES = 16
#: Retries that may wait for one write in flight (each is answered with it).
MAX_JOINED_RETRIES = 64
#: Drafts in one batch at most (the storage actor commits up to 1,000 events at once).
MAX_BATCH_DRAFTS = 256
LOAD_RETRY_INITIAL_S = 0.05
LOAD_RETRY_MAX_S = 2.0

#: The key-changing requests and the body each writes.
WRITES: dict[type, type] = {
    CreateKey: KeyCreated, RotateKey: KeyVersionAdded, DisableKey: KeyDisabled, EnableKey: KeyEnabled,
    DeleteKey: KeyDeleted, ConfigureKey: KeyConfigSet,
}
_BODY_TAGS: dict[type, int] = {request: codec.tag_of(body) for request, body in WRITES.items()}


def partition_actor(partition: int) -> str:
    """The name of the actor that owns `partition`."""
    return f"keys.{partition}"


def client_of(sender: Sender) -> str:
    """The client's name a request came from ("" when the sender names none)."""
    return getattr(sender, "client", None) or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySettings:
    """What every `keys.<p>` actor of a node shares."""

    partitions: int
    max_name_bytes: int = 256
    max_batch_items: int = 1000
    max_queued: int = 10_000  # requests waiting for the load, and writes waiting for their batch
    write_timeout_s: float = WRITE_TIMEOUT_S
    max_auto_rotations_per_tick: int = MAX_AUTO_ROTATIONS_PER_TICK  # outstanding per partition at once


@dataclass(slots=True)
class KeyServiceStats:
    """Counters shared by a node's key actors (`keys.stats` reports them with the cache's)."""

    writes: int = 0
    deduplicated: int = 0
    partitions_loaded: int = 0
    auto_rotations: int = 0  # automatic rotations applied (durable); also counted in `writes`
    auto_rotation_failures: int = 0  # automatic rotations that failed and wait for a retry


# --- node-local messages between the router and the partition actors ------------------------


@dataclass(frozen=True, slots=True)
class PartRequest:
    """Router -> `keys.<p>`: answer `request` (a part of a scattered request) with a `PartAnswer`."""

    gather: int
    request: object


@dataclass(frozen=True, slots=True)
class PartAnswer:
    gather: int
    partition: int
    answer: object


@dataclass(frozen=True, slots=True)
class ListPartition:
    """The live names of one partition with `prefix`, after `after`, that `allows` accepts
    (None: all), at most `limit`; answered `PartitionNames`."""

    prefix: str
    after: str
    limit: int
    allows: Callable[[str], bool] | None = None


@dataclass(frozen=True, slots=True)
class PartitionNames:
    names: tuple[str, ...]
    more: bool  # names past `limit` exist


@dataclass(frozen=True, slots=True)
class _RetryLoad:
    """Timer: ask the event-log service for the partition state again."""


@dataclass(frozen=True, slots=True)
class _RotateDueKeys:
    """Timer: start the automatic rotations that are due (`serial`: which arming it is)."""

    serial: int = 0


@dataclass(slots=True)
class _Write:
    msg: object
    name: str
    request: bytes  # fingerprint (b"": no client request id)
    senders: list[Sender]
    version_id: bytes = b""
    deletes: bool = False
    drafts: list[Draft] = field(default_factory=list)
    auto_due_ms: int | None = None  # an automatic rotation: the due time it was made for


class KeysActor(Actor):
    """The named keys of one partition."""

    def __init__(self, partition: int, settings: KeySettings, requests: KeyRequests, domain_key: DomainKey,
                 stats: KeyServiceStats | None = None):
        if not 0 <= partition < settings.partitions:
            raise ValueError(f"partition {partition} is not in 0..{settings.partitions - 1}")
        self.partition = partition
        self.settings = settings
        self.requests = requests
        self.domain_key = domain_key
        self.stats = stats if stats is not None else KeyServiceStats()
        self.state: PartitionState | None = None
        self.writer = EventWriter(timeout_s=settings.write_timeout_s)
        self._waiting: deque[tuple[Sender, object]] = deque()  # until the state is loaded
        self._writes: deque[_Write] = deque()  # waiting for a batch
        self._pending: dict[bytes, _Write] = {}  # queued or live writes, by request fingerprint
        self._early: list = []  # durable events reported before the state was loaded
        self._load_ticket: int | None = None
        self._load_retry_s = LOAD_RETRY_INITIAL_S
        self.schedule = RotationSchedule()
        self._auto_running = 0  # automatic rotations queued or in flight
        self._auto_timer: int | None = None
        self._auto_timer_ms: int | None = None  # the wake time `_auto_timer` was armed for
        self._auto_serial = 0  # of the armed `_RotateDueKeys`

    # --- lifecycle ----------------------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        self._load(ctx)

    def _load(self, ctx: Context) -> None:
        self._load_ticket = ctx.ask(EVENT_LOG_SERVICE, LoadPartitionState(partition=self.partition))

    def _on_loaded(self, ctx: Context, result: ServiceResult) -> None:
        self._load_ticket = None
        if not result.ok or type(result.value) is not PartitionLoaded or result.value.partition != self.partition:
            reason = result.error if result.error is not None else f"unexpected answer {type(result.value).__name__}"
            ctx.log.warning("keys.%d cannot load its partition (retry in %.2f s): %s",
                            self.partition, self._load_retry_s, reason)
            failure = Failure.of(ErrorCode.UNAVAILABLE, f"the key partition is not loaded yet: {reason}")
            waiting, self._waiting = self._waiting, deque()
            for sender, _ in waiting:
                ctx.reply_to(sender, failure)
            ctx.start_timer(self._load_retry_s, _RetryLoad())
            self._load_retry_s = min(self._load_retry_s * 2, LOAD_RETRY_MAX_S)
            return
        self.state = result.value.state
        self.stats.partitions_loaded += 1
        self.schedule.load(self.state.keys)
        early, self._early = self._early, []
        if early:  # durable before the load answered: folding them again changes nothing if it held them
            self._settle(ctx, Outcome(None, tuple(early)))
        waiting, self._waiting = self._waiting, deque()
        for sender, msg in waiting:
            self._handle(ctx, sender, msg)
        self._arm(ctx)

    # --- messages -------------------------------------------------------------------------------

    def on_message(self, ctx: Context, msg: object) -> None:
        kind = type(msg)
        if kind is ServiceResult:
            if msg.ticket == self._load_ticket:
                self._on_loaded(ctx, msg)
        elif kind is WriteTimeout:
            self._settle(ctx, self.writer.on_timeout(ctx, msg))
        elif kind is _RotateDueKeys:
            self._rotate_due_keys(ctx, msg)
        elif kind is _RetryLoad:
            if self.state is None and self._load_ticket is None:
                self._load(ctx)
        elif self.writer.is_storage_answer(ctx, msg):
            self._settle(ctx, self.writer.on_answer(ctx, msg))
        elif self.state is None:
            if len(self._waiting) >= self.settings.max_queued:
                ctx.reply(Failure.of(ErrorCode.BUSY, f"key partition {self.partition} is loading; retry later"))
            else:
                self._waiting.append((ctx.sender, msg))
        else:
            self._handle(ctx, ctx.sender, msg)

    def _handle(self, ctx: Context, sender: Sender, msg: object) -> None:
        kind = type(msg)
        state = self.state
        assert state is not None
        if kind in WRITES:
            self._on_write(ctx, sender, msg)
        elif kind is PartRequest:
            inner = msg.request
            answer = self._names(inner) if type(inner) is ListPartition else self.requests.answer(
                state, inner, ctx.now(), ctx.entropy)
            ctx.reply_to(sender, PartAnswer(msg.gather, self.partition, answer))
        elif self.requests.handles(kind):
            ctx.reply_to(sender, self.requests.answer(state, msg, ctx.now(), ctx.entropy))
        else:
            ctx.reply_to(sender, Failure.of(ErrorCode.BAD_REQUEST, f"{kind.__name__} is not a key operation"))

    def _names(self, msg: ListPartition) -> PartitionNames:
        assert self.state is not None
        prefix, after, allows = msg.prefix, msg.after, msg.allows
        names = sorted(
            name for name, key in self.state.keys.items()
            if name.startswith(prefix) and name > after and key.exists and (allows is None or allows(name))
        )
        return PartitionNames(tuple(names[: msg.limit]), len(names) > msg.limit)

    # --- writes ---------------------------------------------------------------------------------

    def _on_write(self, ctx: Context, sender: Sender, msg: object) -> None:
        request_id = msg.client_request_id  # type: ignore[attr-defined]
        if len(request_id) > MAX_CLIENT_REQUEST_ID_BYTES:
            ctx.reply_to(sender, Failure.of(ErrorCode.BAD_REQUEST,
                                            f"client_request_id is at most {MAX_CLIENT_REQUEST_ID_BYTES} bytes"))
            return
        request = request_fingerprint(client_of(sender), request_id)
        if request:
            joined = self._pending.get(request)
            if joined is not None:  # a retry of a write still queued or in flight: it gets the same answer
                if type(joined.msg) is not type(msg) or joined.name != msg.name:  # type: ignore[attr-defined]
                    ctx.reply_to(sender, Failure.of(ErrorCode.BAD_REQUEST, "client_request_id is in use by "
                                                    "another write in flight; use a fresh id for each request"))
                elif len(joined.senders) >= MAX_JOINED_RETRIES:
                    ctx.reply_to(sender, Failure.of(ErrorCode.BUSY, "this write is still in flight; retry later"))
                else:
                    joined.senders.append(sender)
                    self.stats.deduplicated += 1
                return
        self._queue(ctx, _Write(msg, msg.name, request, [sender]))  # type: ignore[attr-defined]
        self._pump(ctx)

    def _queue(self, ctx: Context, write: _Write) -> None:
        """Queue `write` for the next batch (`_pump` sends it), or answer BUSY past the bound."""
        if len(self._writes) >= self.settings.max_queued:
            self._finish(ctx, write, Failure.of(ErrorCode.BUSY,
                                                f"key partition {self.partition} has too many writes queued"))
            return
        self._writes.append(write)
        if write.request:
            self._pending[write.request] = write

    def _pump(self, ctx: Context) -> None:
        """Send every queued write that can go now as one batch (see the module rules)."""
        if self.writer.busy or self.state is None:
            return
        batch: list[_Write] = []
        drafts: list[Draft] = []
        touched: dict[str, None] = {}
        queue = self._writes
        while queue and len(drafts) < MAX_BATCH_DRAFTS and queue[0].name not in touched:
            write = queue.popleft()
            try:
                answer = self._plan(ctx, write)
            except KeyswarmError as exc:
                answer = failure_of(exc)
            if answer is not None:
                self._finish(ctx, write, answer)
                continue
            touched[write.name] = None
            batch.append(write)
            drafts.extend(write.drafts)
        if batch and not self.writer.send(ctx, drafts, batch):
            busy = Failure.of(ErrorCode.BUSY, "the storage actor is over its queue bound; retry later")
            for write in batch:
                self._finish(ctx, write, busy)

    def _plan(self, ctx: Context, write: _Write) -> object | None:
        """Check `write` against the state and build its drafts (None), or answer it at once
        (a retry already applied: its answer). Raises KeyswarmError for a refusal."""
        msg, name = write.msg, write.name
        kind = type(msg)
        check_key_name(name, self.settings.max_name_bytes)
        if partition_of(name, self.settings.partitions) != self.partition:
            raise named_keys.KeyRequestError(f"key {name!r} does not belong to partition {self.partition}")
        state = self.state
        assert state is not None
        key = state.keys.get(name)
        if write.request and key is not None:
            done = self._replayed(write, key)
            if done is not None:
                return done
        if kind is CreateKey:
            named_keys.check_algorithm(msg.algorithm)
            if key is not None and key.deleted is not None:
                raise named_keys.KeyRequestError(f"key {name!r} was deleted; a deleted name is never reused")
            if key is not None and key.exists:
                raise named_keys.KeyRequestError(f"key {name!r} already exists")
            write.version_id, material = self._new_version(ctx, name, msg.algorithm)
            body: object = KeyCreated(name=name, algorithm=msg.algorithm, version_id=write.version_id,
                                      material=material, request=write.request)
        else:
            live = state.key(name)
            if live is None:
                raise KeyNotFound(f"no key named {name!r}")
            body = self._change(ctx, write, live)
        write.drafts = [draft(body, subject=name, partitions=self.settings.partitions)]
        return None

    def _change(self, ctx: Context, write: _Write, key: KeyState) -> object:
        msg, name, request = write.msg, write.name, write.request
        kind = type(msg)
        if kind is RotateKey:
            if key.disabled:
                raise KeyIsDisabled(f"key {name!r} is disabled; enable it before rotating")
            write.version_id, material = self._new_version(ctx, name, key.algorithm)
            return KeyVersionAdded(name=name, version_id=write.version_id, material=material,
                                   algorithm=key.algorithm, request=request)
        if kind is DisableKey:
            return KeyDisabled(name=name, request=request)
        if kind is EnableKey:
            return KeyEnabled(name=name, request=request)
        if kind is DeleteKey:
            if not key.setting("deletion_allowed"):
                raise Forbidden(f"key {name!r} may not be deleted: set deletion_allowed with key.config first")
            write.deletes = True
            return KeyDeleted(name=name, request=request)
        assert kind is ConfigureKey
        if msg.min_decryption_version is None and msg.deletion_allowed is None and msg.auto_rotate_period_s is None:
            raise named_keys.KeyRequestError("key.config changes nothing: give at least one setting")
        versions = len(key.versions)
        if msg.min_decryption_version is not None and not 1 <= msg.min_decryption_version <= versions:
            raise named_keys.KeyRequestError(
                f"min_decryption_version {msg.min_decryption_version} is not in 1..{versions} (the primary's number)")
        if msg.auto_rotate_period_s is not None:
            check_auto_rotate_period(msg.auto_rotate_period_s)
        return KeyConfigSet(name=name, min_decryption_version=msg.min_decryption_version,
                            deletion_allowed=msg.deletion_allowed, auto_rotate_period_s=msg.auto_rotate_period_s,
                            request=request)

    def _replayed(self, write: _Write, key: KeyState) -> object | None:
        """The answer for a retry of a write already applied, or None (not a retry)."""
        if key.deleted is not None:
            if type(write.msg) is DeleteKey:  # the tombstone forgot the records; a delete is a delete
                self.stats.deduplicated += 1
                return DeleteKeyResult(name=key.name)
            return None
        record = key.applied(write.request)
        if record is None:
            return None
        if record.type != _BODY_TAGS[type(write.msg)]:
            used = write.msg.client_request_id.hex()  # type: ignore[attr-defined]
            raise named_keys.KeyRequestError(f"client_request_id {used} was used for another kind of write "
                                             f"of key {key.name!r}; use a fresh id for each request")
        self.stats.deduplicated += 1
        return self.requests.info(key, version_id=record.version_id)

    def _new_version(self, ctx: Context, name: str, algorithm: str) -> tuple[bytes, bytes]:
        version_id = ctx.entropy(VERSION_ID_BYTES)
        material = named_keys.generate_material(algorithm, ctx.entropy)
        return version_id, named_keys.wrap_material(self.domain_key, name, version_id, material, entropy=ctx.entropy)

    def _settle(self, ctx: Context, outcome: Outcome) -> None:
        """Fold durable events, answer the batch they (or a failure, or a timeout) settle, send the next."""
        state = self.state
        if outcome.events and state is None:
            self._early.extend(outcome.events)
        elif outcome.events:
            changed: dict[str, None] = {}
            for event in outcome.events:
                if event.partition == self.partition:
                    state.apply(event)
                    changed[event.subject] = None
            for name in changed:
                self.requests.forget(name)
                self.schedule.update(name, state.keys.get(name))
        batch = outcome.token
        if batch is not None:
            for write in batch:  # type: ignore[attr-defined]
                if outcome.failure is not None:
                    self._finish(ctx, write, outcome.failure)
                else:
                    self.stats.writes += 1
                    self._finish(ctx, write, self._applied(write))
        self._pump(ctx)
        if outcome.events and state is not None:
            self._arm(ctx)

    def _applied(self, write: _Write) -> object:
        if write.deletes:
            return DeleteKeyResult(name=write.name)
        assert self.state is not None
        key = self.state.keys.get(write.name)
        if key is None or not key.exists:  # a concurrent delete won (only after replication)
            return Failure.of(ErrorCode.KEY_NOT_FOUND, f"key {write.name!r} was deleted meanwhile")
        return self.requests.info(key, version_id=write.version_id)

    def _finish(self, ctx: Context, write: _Write, answer: object) -> None:
        if write.request and self._pending.get(write.request) is write:
            del self._pending[write.request]
        for sender in write.senders:
            ctx.reply_to(sender, answer)
        if write.auto_due_ms is not None:
            self._auto_finished(ctx, write, answer)

    # --- automatic rotation ---------------------------------------------------------------------

    def _arm(self, ctx: Context) -> None:
        """Keep one timer at the schedule's earliest wake time; none while rotations are outstanding
        (the last one to settle calls this again)."""
        wake = self.schedule.next_wake() if self._auto_running == 0 and self.state is not None else None
        if wake == self._auto_timer_ms:
            return
        if self._auto_timer is not None:
            ctx.cancel_timer(self._auto_timer)
            self._auto_timer = None
        self._auto_timer_ms = wake
        if wake is not None:
            delay_s = max(0.0, (wake - _wall_ms(ctx)) / 1000)
            self._auto_serial += 1
            self._auto_timer = ctx.start_timer(delay_s, _RotateDueKeys(self._auto_serial))

    def _rotate_due_keys(self, ctx: Context, tick: _RotateDueKeys) -> None:
        """Queue a rotation for each due key, up to the outstanding bound, as one batch.

        Any tick scans (a duplicate or stale one finds nothing due that is not
        already in flight); only the armed one clears the timer."""
        if tick.serial == self._auto_serial:
            self._auto_timer = self._auto_timer_ms = None
        if self.state is None:
            return
        room = self.settings.max_auto_rotations_per_tick - self._auto_running
        for name, due_ms in self.schedule.take(_wall_ms(ctx), max(room, 0)):
            request_id = auto_request_id(name, due_ms)
            request = request_fingerprint(AUTO_ROTATE_CLIENT, request_id)
            if request in self._pending:  # cannot happen while the schedule marks it in flight; never twice
                continue
            self._auto_running += 1
            self._queue(ctx, _Write(RotateKey(name=name, client_request_id=request_id), name, request, [],
                                    auto_due_ms=due_ms))
        self._pump(ctx)
        self._arm(ctx)

    def _auto_finished(self, ctx: Context, write: _Write, answer: object) -> None:
        self._auto_running -= 1
        name, due_ms = write.name, write.auto_due_ms
        assert due_ms is not None and self._auto_running >= 0
        if type(answer) is KeyInfo and write.version_id:
            self.stats.auto_rotations += 1
            number = answer.primary
            for version in answer.versions:
                if version.version_id == write.version_id:
                    number = version.number
            ctx.log.info("keys.%d rotated key %r automatically (due at %d ms): version %d, id %s",
                         self.partition, name, due_ms, number, write.version_id.hex())
        elif type(answer) is KeyInfo:  # a repeat of a rotation already applied for this due time
            ctx.log.info("keys.%d: the automatic rotation of %r due at %d ms had already applied",
                         self.partition, name, due_ms)
        elif self.schedule.due_of(name) == due_ms:  # failed, and still due: try again later
            self.stats.auto_rotation_failures += 1
            ctx.log.warning("keys.%d could not rotate key %r automatically (retry in %.0f s): %s",
                            self.partition, name, AUTO_ROTATE_RETRY_S, getattr(answer, "message", answer))
        self.schedule.release(name, due_ms, _wall_ms(ctx) + int(AUTO_ROTATE_RETRY_S * 1000))
        self._arm(ctx)


def _wall_ms(ctx: Context) -> int:
    """The wall clock in the unit of HLC stamps (Unix ms)."""
    return int(ctx.wall_time() * 1000)

