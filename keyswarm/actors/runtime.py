"""The sans-IO actor runtime: actors, their context, mailboxes, timers, supervision.

This module owns everything about running a node's actors that does not
depend on how bytes move or how time passes. The real driver
(`keyswarm.node.driver`) and the simulator (`keyswarm.sim.driver`) both feed
the same `NodeRuntime` and give it the same `Environment` port; that is how one
actor set runs unchanged on ZeroMQ and in virtual time.

Rules this module keeps (DESIGN section 2):
- No I/O, no clock, no OS randomness. Time, entropy, randomness, remote
  delivery, client replies and blocking services all come through the
  `Environment` the driver hands in.
- Actors are synchronous: `on_message(ctx, msg)` runs to completion; anything
  slow is a service `ask`, whose result arrives later as a `ServiceResult`.
- Mailboxes are bounded. Overflow behaviour: a message sent to a full mailbox
  is dropped, counted in the actor's `dropped` statistic, and the send returns
  `False`; the driver turns a refused client request into a `BUSY` reply.
  Timers and service results are never dropped (their number is bounded by
  what the actor itself started).
- Scheduling is deterministic: a FIFO ready queue, a fixed number of messages
  per actor turn, timers ordered by (deadline, creation order). Nothing here
  iterates a set or a dict whose order depends on hashing of str/bytes.
- Supervision is one-for-one: an actor that raises is logged, the message that
  broke it is dropped, and it is rebuilt from its factory after an exponential
  backoff. Its timers die with it, and service results owed to the old
  incarnation are discarded. After `max_restarts` within `window_s` the actor
  stays stopped and the node reports `degraded`.
- Conditions: an actor may mark the node degraded for a reason it observes
  (`ctx.set_condition("token", degraded=True, detail=...)`) and clear it when
  the reason is gone. They are keyed by name, not by actor, and survive the
  restart of the actor that set one (its next incarnation clears it).
- Answers to opened in-session requests (`ClientRef.inner_id` set) go to the
  local `sessions` actor as `SessionReply`s, to be sealed, not to the driver;
  like service results they are never dropped for a full mailbox. Addresses,
  client references and these runtime-local messages are
  `keyswarm.actors.addresses`' (re-exported here).
"""

from __future__ import annotations

import abc
import enum
import heapq
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from keyswarm.actors.addresses import (
    SESSIONS,
    Address,
    ClientRef,
    RawFrame,
    Sender,
    ServiceResult,
    SessionReply,
)
from keyswarm.errors import Busy, KeyswarmError

log = logging.getLogger("keyswarm.runtime")

__all__ = [
    "SESSIONS", "Actor", "ActorSpec", "ActorState", "Address", "ClientRef", "Context", "Delivery", "Environment",
    "NodeRuntime", "RawFrame", "Sender", "ServiceResult", "SessionReply", "SupervisorPolicy",
]


@dataclass(frozen=True, slots=True)
class _Restart:
    """Internal timer payload: rebuild a crashed actor."""

    actor: str


# --- the environment port ------------------------------------------------------


class Environment(Protocol):
    """What a driver gives the runtime. Every method is called on the driver's thread."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (virtual in the simulator)."""

    def wall_time(self) -> float:
        """Seconds since the epoch; for certificates and logs only."""

    def entropy(self, n: int) -> bytes:
        """`n` random bytes: `os.urandom` for real, seeded in the simulator."""

    def send_remote(self, to: Address, sender: Address, msg: object) -> bool:
        """Send `msg` to an actor on another node; False when refused (busy, unknown peer)."""

    def reply_client(self, ref: ClientRef, msg: object) -> bool:
        """Answer a client request; False when the client is gone or its queue is full."""

    def submit(self, service: str, ticket: int, request: object) -> bool:
        """Hand `request` to a blocking service; the driver later calls
        `NodeRuntime.complete(ticket, value=..., error=...)`. False when the
        service is unknown or its queue is full."""

    def wake_at(self, deadline: float) -> None:
        """Call `NodeRuntime.fire_timers()` at or after monotonic `deadline`.
        Only the earliest requested deadline matters; earlier calls may be replaced."""


# --- actors --------------------------------------------------------------------


class Actor(abc.ABC):
    """A synchronous state machine. It acts only through its `Context`."""

    def on_start(self, ctx: Context) -> None:
        """Called once per incarnation, before its first message."""

    @abc.abstractmethod
    def on_message(self, ctx: Context, msg: object) -> None:
        """Handle one message. Raising restarts the actor (see module docstring)."""

    def on_stop(self, ctx: Context) -> None:
        """Called when the node stops; no more messages follow."""


@dataclass(frozen=True, slots=True)
class ActorSpec:
    """How to build one actor: its name on the node and a factory for fresh incarnations."""

    name: str
    factory: Callable[[], Actor]
    mailbox_capacity: int | None = None  # None: the runtime's default


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorPolicy:
    max_restarts: int = 5  # restarts tolerated within window_s before giving up
    window_s: float = 60.0  # sliding window for max_restarts
    backoff_initial_s: float = 0.1  # delay before the first restart
    backoff_max_s: float = 10.0  # cap of the doubling delay


class ActorState(enum.Enum):
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"  # gave up after too many restarts, or the node stopped


class Delivery(enum.Enum):
    """What happened to a message handed to `NodeRuntime.deliver`."""

    QUEUED = "queued"
    FULL = "full"  # mailbox at capacity: the caller answers BUSY
    NO_SUCH_ACTOR = "no_such_actor"
    STOPPED = "stopped"  # the actor gave up or the node is stopping


class Context:
    """An actor's only window on the world. One per actor, reused across messages."""

    __slots__ = ("_runtime", "_cell", "me", "node", "sender", "rng")

    def __init__(self, runtime: NodeRuntime, cell: _Cell, rng: object):
        self._runtime = runtime
        self._cell = cell
        self.me = Address(runtime.node_id, cell.spec.name)
        self.node = runtime.node_id
        #: The sender of the message being handled (None for timers and service results).
        self.sender: Sender = None
        #: A `random.Random`-compatible generator seeded by the driver; per actor.
        self.rng = rng

    # time and entropy
    def now(self) -> float:
        """Monotonic seconds (virtual in the simulator)."""
        return self._runtime.env.monotonic()

    def wall_time(self) -> float:
        return self._runtime.env.wall_time()

    def entropy(self, n: int) -> bytes:
        return self._runtime.env.entropy(n)

    # messages
    def send(self, to: Address | str, msg: object) -> bool:
        """Send `msg` to `to` (an `Address`, or a local actor's name). False if refused."""
        return self._runtime._route(to, self.me, msg)

    def forward(self, to: Address | str, msg: object, *, sender: Sender = None) -> bool:
        """Send `msg` on, keeping the current sender (or `sender`), so `to` replies straight to it."""
        return self._runtime._route(to, self.sender if sender is None else sender, msg)

    def reply(self, msg: object) -> bool:
        """Answer the sender of the current message (actor or client)."""
        return self.reply_to(self.sender, msg)

    def reply_to(self, target: Sender, msg: object) -> bool:
        """Answer a sender remembered from an earlier message."""
        if target is None:
            return False
        if type(target) is ClientRef:
            if target.inner_id is not None:
                return self._runtime._session_reply(target, msg)
            return self._runtime.env.reply_client(target, msg)
        return self._runtime._route(target, self.me, msg)

    # timers
    def start_timer(self, delay_s: float, msg: object) -> int:
        """Deliver `msg` to this actor after `delay_s`; returns an id for `cancel_timer`."""
        return self._runtime._start_timer(self._cell, delay_s, msg)

    def cancel_timer(self, timer_id: int) -> bool:
        """Cancel a pending timer; False if it already fired or was cancelled."""
        return self._runtime._cancel_timer(timer_id)

    # blocking services
    def ask(self, service: str, request: object) -> int:
        """Ask a blocking service; its `ServiceResult` arrives later as a message.

        Returns the ticket that the result will carry. If the service refuses
        the request (unknown, queue full), the result arrives anyway, at once,
        carrying the error, so callers have one code path.
        """
        return self._runtime._ask(self._cell, service, request)

    # node
    def node_status(self) -> str:
        return self._runtime.status

    def set_condition(self, name: str, *, degraded: bool, detail: str = "") -> None:
        """Mark the node degraded because of `name` (a human `detail`), or clear it (`degraded=False`)."""
        self._runtime.set_condition(name, degraded=degraded, detail=detail)

    def conditions(self) -> tuple[tuple[str, str], ...]:
        """The conditions degrading the node now, as `(name, detail)` (health reports them)."""
        return self._runtime.conditions

    def stats(self) -> dict[str, dict[str, object]]:
        return self._runtime.stats()

    @property
    def log(self) -> logging.Logger:
        return self._cell.logger


@dataclass(slots=True, eq=False)
class _Cell:
    """The runtime's record of one actor: its incarnation, mailbox and counters."""

    spec: ActorSpec
    capacity: int
    actor: Actor | None = None
    ctx: Context | None = None
    state: ActorState = ActorState.RUNNING
    incarnation: int = 0
    mailbox: deque = field(default_factory=deque)
    scheduled: bool = False
    restarts: deque = field(default_factory=deque)  # monotonic times of recent restarts
    processed: int = 0
    dropped: int = 0
    failures: int = 0
    logger: logging.Logger = log


# --- the runtime -----------------------------------------------------------------


class NodeRuntime:
    """Runs one node's actors. Drivers call `deliver`, `complete`, `fire_timers` and `run`."""

    #: Messages an actor handles per turn before the next ready actor runs.
    TURN = 64

    def __init__(
        self,
        node_id: str,
        specs: list[ActorSpec],
        env: Environment,
        *,
        rng: object,
        mailbox_capacity: int = 10_000,
        supervisor: SupervisorPolicy = SupervisorPolicy(),
        propagate: tuple[type[BaseException], ...] = (),
        on_dispatch: Callable[[str, Sender, object], None] | None = None,
    ):
        """`rng` is a seeded `random.Random`; each actor gets its own generator
        drawn from it in spec order. `propagate` lists exception types that are
        not supervised but raised to the driver (the simulator passes
        `AssertionError`, so an invariant violation stops the run)."""
        self.node_id = node_id
        self.env = env
        self.supervisor = supervisor
        self._propagate = propagate
        self._on_dispatch = on_dispatch
        self._rng_type = type(rng)
        self._cells: dict[str, _Cell] = {}
        for spec in specs:
            if spec.name in self._cells:
                raise ValueError(f"duplicate actor name {spec.name!r}")
            cell = _Cell(spec=spec, capacity=spec.mailbox_capacity or mailbox_capacity)
            cell.logger = logging.getLogger(f"keyswarm.actors.{spec.name}")
            cell.ctx = Context(self, cell, self._rng_type(rng.getrandbits(64)))
            self._cells[spec.name] = cell
        self._ready: deque[_Cell] = deque()
        self._timers: list[tuple[float, int]] = []  # heap of (deadline, timer id)
        self._timer_targets: dict[int, tuple[_Cell, int, object]] = {}  # id -> (cell, incarnation, msg)
        self._next_timer = 1
        self._armed: float | None = None  # earliest deadline handed to env.wake_at
        self._tickets: dict[int, tuple[_Cell, int, str]] = {}  # ticket -> (cell, incarnation, service)
        self._next_ticket = 1
        self._degraded_actors: list[str] = []
        self._conditions: dict[str, str] = {}  # name -> detail, in the order they were first set
        self._started = False
        self._stopped = False
        self._draining = False

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Build every actor and run its `on_start`, in spec order."""
        assert not self._started, "runtime started twice"
        self._started = True
        for cell in self._cells.values():
            self._incarnate(cell)

    def stop(self) -> None:
        """Stop every actor (`on_stop`), cancel timers; later deliveries are refused."""
        if self._stopped:
            return
        self._stopped = True
        for cell in self._cells.values():
            if cell.actor is not None and cell.state is ActorState.RUNNING:
                try:
                    cell.actor.on_stop(cell.ctx)
                except Exception:  # the supervisor's privilege: log and go on stopping
                    cell.logger.exception("on_stop of %s failed", cell.spec.name)
            cell.state = ActorState.STOPPED
            cell.mailbox.clear()
        self._timers.clear()
        self._timer_targets.clear()
        self._ready.clear()

    def set_draining(self) -> None:
        """The node is shutting down: it finishes in-flight work and takes no new work."""
        self._draining = True

    @property
    def status(self) -> str:
        """`draining`, `degraded` (an actor was given up on, or a condition is set), or `ok`."""
        if self._draining:
            return "draining"
        return "degraded" if self._degraded_actors or self._conditions else "ok"

    @property
    def degraded_actors(self) -> tuple[str, ...]:
        return tuple(self._degraded_actors)

    @property
    def conditions(self) -> tuple[tuple[str, str], ...]:
        """Conditions degrading the node, as `(name, detail)`, in the order first set."""
        return tuple(self._conditions.items())

    def set_condition(self, name: str, *, degraded: bool, detail: str = "") -> None:
        """Set (`degraded=True`) or clear a named condition; logged when it changes."""
        if not name:
            raise ValueError("a condition needs a name")
        if degraded:
            if self._conditions.get(name) != detail:
                log.warning("node %s degraded: %s: %s", self.node_id, name, detail or "(no detail)")
            self._conditions[name] = detail
        elif self._conditions.pop(name, None) is not None:
            log.info("node %s: condition %s cleared", self.node_id, name)

    def actor_names(self) -> tuple[str, ...]:
        return tuple(self._cells)

    def actor(self, name: str) -> Actor | None:
        """The live incarnation of an actor (tests and the simulator's checkers read state)."""
        cell = self._cells.get(name)
        return cell.actor if cell is not None else None

    # --- inputs from the driver ---------------------------------------------

    def deliver(self, actor: str, sender: Sender, msg: object) -> Delivery:
        """Queue `msg` for a local actor (from a client, a peer or another actor)."""
        cell = self._cells.get(actor)
        if cell is None:
            return Delivery.NO_SUCH_ACTOR
        if self._stopped or cell.state is ActorState.STOPPED:
            return Delivery.STOPPED
        if len(cell.mailbox) >= cell.capacity:
            cell.dropped += 1
            return Delivery.FULL
        self._enqueue(cell, sender, msg)
        return Delivery.QUEUED

    def complete(self, ticket: int, *, value: object = None, error: KeyswarmError | None = None) -> None:
        """A blocking service finished `ticket`; queue its result for the asking actor."""
        entry = self._tickets.pop(ticket, None)
        if entry is None:
            return  # already answered, or the runtime stopped
        cell, incarnation, service = entry
        if cell.incarnation != incarnation or cell.state is ActorState.STOPPED:
            return  # owed to an incarnation that crashed; the new one never asked
        self._enqueue(cell, None, ServiceResult(ticket=ticket, service=service, value=value, error=error))

    def fire_timers(self) -> int:
        """Deliver every timer due by now; returns how many fired. Re-arms the driver."""
        now = self.env.monotonic()
        fired = 0
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, timer_id = heapq.heappop(timers)
            target = self._timer_targets.pop(timer_id, None)
            if target is None:
                continue  # cancelled
            cell, incarnation, msg = target
            fired += 1
            if type(msg) is _Restart:
                self._incarnate(cell)
            elif cell.incarnation == incarnation and cell.state is ActorState.RUNNING:
                self._enqueue(cell, None, msg)
        self._armed = None
        self._arm()
        return fired

    def next_deadline(self) -> float | None:
        """The earliest pending timer's deadline (cancelled ones may linger)."""
        return self._timers[0][0] if self._timers else None

    def run(self, budget: int = 10_000) -> int:
        """Handle queued messages until idle or `budget` is spent; returns how many ran."""
        done = 0
        ready = self._ready
        while ready and done < budget:
            cell = ready.popleft()
            cell.scheduled = False
            turn = min(self.TURN, budget - done)
            mailbox = cell.mailbox
            while mailbox and turn > 0 and cell.state is ActorState.RUNNING:
                sender, msg = mailbox.popleft()
                turn -= 1
                done += 1
                self._dispatch(cell, sender, msg)
            if mailbox and cell.state is ActorState.RUNNING and not cell.scheduled:
                cell.scheduled = True
                ready.append(cell)
        return done

    def has_work(self) -> bool:
        return bool(self._ready)

    def pending_asks(self) -> int:
        """Service requests not yet answered (the driver waits for these on shutdown)."""
        return len(self._tickets)

    def stats(self) -> dict[str, dict[str, object]]:
        return {
            name: {
                "state": cell.state.value,
                "mailbox": len(cell.mailbox),
                "processed": cell.processed,
                "dropped": cell.dropped,
                "failures": cell.failures,
            }
            for name, cell in self._cells.items()
        }

    # --- internals ----------------------------------------------------------

    def _enqueue(self, cell: _Cell, sender: Sender, msg: object) -> None:
        cell.mailbox.append((sender, msg))
        if not cell.scheduled and cell.state is ActorState.RUNNING:
            cell.scheduled = True
            self._ready.append(cell)

    def _route(self, to: Address | str, sender: Sender, msg: object) -> bool:
        if type(to) is str:
            return self.deliver(to, sender, msg) is Delivery.QUEUED
        if to.node == self.node_id:
            return self.deliver(to.actor, sender, msg) is Delivery.QUEUED
        if type(sender) is not Address:
            # Only actors send across nodes; a forwarded client request is
            # answered by the local actor that owns the client reference.
            raise TypeError(f"cannot send to remote {to} on behalf of {sender!r}")
        return self.env.send_remote(to, sender, msg)

    def _session_reply(self, ref: ClientRef, msg: object) -> bool:
        """Queue an answer to an opened in-session request for the local `sessions` actor.

        Never refused for a full mailbox, like service results: their number
        is bounded by the requests `sessions` itself forwarded. False only
        when there is no running `sessions` actor to seal it (the in-flight
        request then expires in the driver, answered UNAVAILABLE).
        """
        cell = self._cells.get(SESSIONS)
        if cell is None or self._stopped or cell.state is ActorState.STOPPED:
            return False
        self._enqueue(cell, None, SessionReply(ref, msg))
        return True

    def _dispatch(self, cell: _Cell, sender: Sender, msg: object) -> None:
        ctx = cell.ctx
        ctx.sender = sender
        if self._on_dispatch is not None:
            self._on_dispatch(cell.spec.name, sender, msg)
        try:
            cell.actor.on_message(ctx, msg)
        except self._propagate:
            raise
        except Exception:  # the supervisor: log, drop the message, restart
            cell.logger.exception("actor %s@%s failed on %s", cell.spec.name, self.node_id, type(msg).__name__)
            self._crashed(cell)
        else:
            cell.processed += 1
        finally:
            ctx.sender = None

    def _incarnate(self, cell: _Cell) -> None:
        if self._stopped:
            return
        cell.incarnation += 1
        cell.state = ActorState.RUNNING
        try:
            cell.actor = cell.spec.factory()
            cell.actor.on_start(cell.ctx)
        except self._propagate:
            raise
        except Exception:
            cell.logger.exception("actor %s@%s failed to start", cell.spec.name, self.node_id)
            self._crashed(cell)
            return
        if cell.mailbox and not cell.scheduled:
            cell.scheduled = True
            self._ready.append(cell)

    def _crashed(self, cell: _Cell) -> None:
        cell.failures += 1
        now = self.env.monotonic()
        policy = self.supervisor
        recent = cell.restarts
        while recent and recent[0] <= now - policy.window_s:
            recent.popleft()
        if len(recent) >= policy.max_restarts:
            cell.state = ActorState.STOPPED
            cell.dropped += len(cell.mailbox)
            cell.mailbox.clear()
            cell.actor = None
            self._degraded_actors.append(cell.spec.name)
            cell.logger.error(
                "actor %s@%s failed %d times in %.0f s; giving up, node is degraded",
                cell.spec.name, self.node_id, len(recent) + 1, policy.window_s,
            )
            return
        recent.append(now)
        delay = min(policy.backoff_initial_s * (2 ** (len(recent) - 1)), policy.backoff_max_s)
        cell.state = ActorState.RESTARTING
        cell.incarnation += 1  # orphan the dead incarnation's timers and tickets
        cell.actor = None
        self._schedule(cell, delay, _Restart(cell.spec.name))

    def _start_timer(self, cell: _Cell, delay_s: float, msg: object) -> int:
        if not delay_s >= 0:  # also refuses NaN
            raise ValueError(f"timer delay must be >= 0, got {delay_s!r}")
        return self._schedule(cell, delay_s, msg)

    def _schedule(self, cell: _Cell, delay_s: float, msg: object) -> int:
        timer_id = self._next_timer
        self._next_timer += 1
        deadline = self.env.monotonic() + delay_s
        heapq.heappush(self._timers, (deadline, timer_id))
        self._timer_targets[timer_id] = (cell, cell.incarnation, msg)
        if self._armed is None or deadline < self._armed:
            self._armed = deadline
            self.env.wake_at(deadline)
        return timer_id

    def _cancel_timer(self, timer_id: int) -> bool:
        return self._timer_targets.pop(timer_id, None) is not None

    def _arm(self) -> None:
        timers = self._timers
        while timers and timers[0][1] not in self._timer_targets:
            heapq.heappop(timers)  # shed cancelled timers at the head
        if timers:
            self._armed = timers[0][0]
            self.env.wake_at(self._armed)

    def _ask(self, cell: _Cell, service: str, request: object) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tickets[ticket] = (cell, cell.incarnation, service)
        if not self.env.submit(service, ticket, request):
            self.complete(ticket, error=Busy(f"service {service!r} refused the request (unknown or full)"))
        return ticket
