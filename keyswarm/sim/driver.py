"""The simulated driver: many nodes, one process, one event heap in virtual time.

Owns the simulator's virtual time, its event heap, the seed, the cluster of
simulated nodes (`keyswarm.sim.node.SimNode`, each the `Environment` of a
real `NodeRuntime` running the real actors), the bytes between them, the
simulated clients, crash and restart, the "token unplugged" fault (the
tokens themselves are `keyswarm.sim.tokens`'), and what goes in the trace
(`keyswarm.sim.records` keeps it, with the outcomes and counters).

Rules (DESIGN section 2 "sim", STYLE on trio's MockClock and TigerBeetle's VOPR):
- One heap of `(time, seq, kind, payload)`; `seq` is a counter, so events at
  the same virtual time run in the order they were scheduled. Virtual time
  only moves when the next event is popped; nothing reads a wall clock.
- One `random.Random(seed)`. Everything random draws its own seed from it in
  a fixed order: the network first, then per node (in node order, and again
  at every restart) the runtime's generator (which seeds each actor), the
  node's entropy and its service latencies. Seeded entropy is INSECURE BY
  DESIGN: it exists so a run replays byte for byte. Never use it for real keys.
- Bytes cross the simulated network: peer messages are encoded with the real
  codec (`frames.encode_actor_frame`) by the sender and decoded by the
  receiver; client requests and replies likewise. A codec bug shows up here.
- Each event batch: all events at one virtual time are applied, then every
  node they touched runs its actors until idle, in first-touched order. That
  is what the real driver does (drain the sockets, then run), and it is what
  lets a burst of simultaneous requests fill a bounded mailbox.
- Invariants are assertions. `NodeRuntime` gets `propagate=(AssertionError,)`
  so an actor's assertion stops the run instead of being supervised; every
  assertion leaving the simulator carries the seed and the replay hint.
- Nothing iterates a set of str/bytes: nodes, pending requests and stats are
  dicts in insertion order, so PYTHONHASHSEED cannot change a trace.
"""

from __future__ import annotations

import heapq
import logging
import random
import zlib
from collections.abc import Callable, Mapping, Sequence

from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import ActorSpec, Address, ClientRef, Delivery, RawFrame, SupervisorPolicy
from keyswarm.actors.hardware import TOKEN_SERVICE
from keyswarm.config import StorageConfig, SubkeysConfig
from keyswarm.errors import DecodeError, ErrorCode, KeyswarmError, ServiceError
from keyswarm.node.assembly import GATEWAY, TokenParts, node_actors, node_services
from keyswarm.sim.network import CLIENT, DEFAULT_CLIENT_LINK, LinkProfile, Network
from keyswarm.sim.node import WALL_EPOCH_S, ServiceLatency, SimNode
from keyswarm.sim.raw_clients import RawClients
from keyswarm.sim.records import (
    TRACE_MODES,
    ClientOutcome,
    RequestTimeout,
    SimStats,
    Trace,
    describe_fate,
    describe_reply,
    show,
)
from keyswarm.sim.tokens import SimTokens
from keyswarm.transport import frames

log = logging.getLogger("keyswarm.sim")

#: The token service's modelled latency when the simulation runs its own tokens:
#: a YubiKey's PIN verify plus one signature (docs/hardware.md, keygen bench: ~86-97 ms).
DEFAULT_TOKEN_LATENCY = ServiceLatency(mean_s=0.090, jitter_s=0.010)

# Event kinds. Payloads are tuples; `seq` makes heap entries unique, so a
# payload is never compared.
_PEER, _CLIENT_REQUEST, _CLIENT_REPLY, _TIMER, _SERVICE, _CALL, _TIMEOUT = range(7)


class Simulation:
    """A cluster of simulated nodes, their clients and the network between them.

    `nodes` is a count (names n1..nN) or a list of names. `actors(node)` and
    `services(node)` build a node's actor specs and blocking services (default:
    `node_actors(storage, signer_key=...)` and `node_services(None,
    event_log=...)`, as a real node); services are rebuilt at every restart,
    so in-memory state dies with a crash, except each node's event log, its
    disk (`SimNode.event_log`), which loses only what was not yet committed.
    `storage` sets the partitions and group commit of every node.

    With `tokens` (the default) and the default assembly (neither `actors`
    nor `services` given), every node also runs the hardware and sub-keys
    actors on a virtual YubiKey of its own (`keyswarm.sim.tokens`), enrolled
    under one root made for this simulation; `subkeys` sets their lifetimes.
    `token_latency` is the token service's modelled latency (default
    `DEFAULT_TOKEN_LATENCY` with the simulation's own tokens, else the
    `service_latency` model). `unplug_token` / `plug_token` pull a node's
    key out and put it back.
    """

    def __init__(
        self,
        seed: int,
        nodes: int | Sequence[str] = 3,
        *,
        link: LinkProfile | None = None,
        client_link: LinkProfile = DEFAULT_CLIENT_LINK,
        service_latency: ServiceLatency | Mapping[str, ServiceLatency] = ServiceLatency(),
        actors: Sequence[ActorSpec] | Callable[[str], Sequence[ActorSpec]] | None = None,
        services: Callable[[str], Mapping[str, object]] | None = None,
        skew: Mapping[str, float] | None = None,
        drift: Mapping[str, float] | None = None,
        mailbox_capacity: int = 10_000,
        service_queue_capacity: int = 10_000,
        supervisor: SupervisorPolicy = SupervisorPolicy(),
        gateway: str = GATEWAY,
        request_timeout_s: float = 5.0,
        trace: str = "full",
        replay_hint: str | None = None,
        storage: StorageConfig | None = None,
        tokens: bool = True,
        token_latency: ServiceLatency | None = None,
        subkeys: SubkeysConfig | None = None,
    ):
        if trace not in TRACE_MODES:
            raise ValueError(f"trace must be one of {TRACE_MODES}, got {trace!r}")
        names = [f"n{i}" for i in range(1, nodes + 1)] if isinstance(nodes, int) else list(nodes)
        if not names or len(dict.fromkeys(names)) != len(names) or CLIENT in names:
            raise ValueError(f"node names must be unique, non-empty and not {CLIENT!r}: {names!r}")
        self.seed = seed
        self.storage = storage or StorageConfig()
        self.rng = random.Random(seed)
        self.now = 0.0
        self.stats = SimStats()
        self.mailbox_capacity = mailbox_capacity
        self.service_queue_capacity = service_queue_capacity
        self.supervisor = supervisor
        self.gateway = gateway
        self.request_timeout_s = request_timeout_s
        self._service_latency = service_latency
        self._actors = actors
        self._services = services
        self._replay_hint = replay_hint
        self._heap: list[tuple] = []
        self._seq = 0
        self._trace_log = Trace(trace)
        self._tracing = trace != "off"
        #: Called as `observer(node, ref, msg)` for every reply a node sends a client (checkers).
        self.reply_observers: list[Callable[[SimNode, ClientRef, object], None]] = []
        #: Outcome of every finished client request, by handle (pending ones are absent).
        self.replies: dict[int, ClientOutcome] = {}
        self._pending: dict[int, ClientOutcome] = {}
        self._raw_clients = RawClients(gateway)
        self._next_handle = 1
        self.network = Network(random.Random(self.rng.getrandbits(64)), default=link or LinkProfile(), client=client_link)
        self.subkeys = subkeys or SubkeysConfig()
        #: The simulation's root, devices and node certificates; None: nodes run without tokens.
        self.tokens = SimTokens(seed, names, wall_time_s=WALL_EPOCH_S) if tokens and actors is None and services is None else None
        self._token_latency = token_latency or (DEFAULT_TOKEN_LATENCY if self.tokens is not None else None)
        self.nodes: dict[str, SimNode] = {name: SimNode(self, name) for name in names}
        for name in [*(skew or {}), *(drift or {})]:
            self.node(name)  # refuse clock settings for nodes that do not exist
        for name, node in self.nodes.items():
            node.set_clock((skew or {}).get(name, 0.0), (drift or {}).get(name, 0.0))
        self._guard(self._boot_all)

    # --- building nodes ------------------------------------------------------------

    def _token_parts_for(self, node: str) -> TokenParts | None:
        """The token's share of `node` at this boot (a fresh token service on the same device)."""
        return None if self.tokens is None else self.tokens.parts(node, self.subkeys, self.storage)

    def _actors_for(self, node: str, token: TokenParts | None) -> list[ActorSpec]:
        if self._actors is None:
            return node_actors(self.storage, signer_key=self.nodes[node].signing_key, token=token)
        return list(self._actors(node) if callable(self._actors) else self._actors)

    def _services_for(self, node: str, token: TokenParts | None) -> Mapping[str, object]:
        if self._services is None:
            return node_services(None, event_log=self.nodes[node].event_log, token=token)
        return self._services(node)

    def service_latency_of(self, service: str) -> ServiceLatency:
        if service == TOKEN_SERVICE and self._token_latency is not None:
            return self._token_latency
        model = self._service_latency
        if isinstance(model, ServiceLatency):
            return model
        return model.get(service) or ServiceLatency()

    def _boot_all(self) -> None:
        for node in self.nodes.values():
            node._boot()
            self._trace(node.name, "boot", f"incarnation={node.incarnations}")
            node.drain()

    # --- looking at the cluster ----------------------------------------------------

    def node(self, name: str) -> SimNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise ValueError(f"no node {name!r} in this simulation (nodes: {', '.join(self.nodes)})") from None

    def live_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.up]

    def pending(self) -> tuple[int, ...]:
        """Handles of client requests neither answered nor timed out yet."""
        return tuple(self._pending)

    def replay_hint(self) -> str:
        return self._replay_hint or (
            f"reproduce with seed={self.seed}: pytest --sim-seed={self.seed} <the failing test>, "
            f"or keyswarm sim --seed {self.seed} <the same options>"
        )

    # --- faults --------------------------------------------------------------------

    def crash(self, name: str) -> None:
        """Kill a node: its runtime, services, timers and every message in flight to it are gone."""
        node = self.node(name)
        if node.up:
            lost = node._crash()
            self._trace(name, "crash", f"epoch={node.epoch} lost_staged_events={lost}")

    def restart(self, name: str) -> None:
        """Boot a crashed node afresh: new runtime, new services, new seeds."""
        node = self.node(name)
        if node.up:
            raise ValueError(f"node {name} is up; crash it first")
        self._guard(self._restart, node)

    def _restart(self, node: SimNode) -> None:
        node._boot()
        self._trace(node.name, "boot", f"incarnation={node.incarnations}")
        node.drain()

    def unplug_token(self, name: str) -> None:
        """Pull `name`'s YubiKey out: token requests fail, the node goes `degraded` once its hardware actor notices."""
        self._require_tokens(name).unplug(name)
        self._trace(name, "unplug", "token")

    def plug_token(self, name: str) -> None:
        """Put `name`'s YubiKey back; its hardware actor reconnects on its next attempt (backoff)."""
        self._require_tokens(name).plug(name)
        self._trace(name, "plug", "token")

    def _require_tokens(self, name: str) -> SimTokens:
        self.node(name)
        if self.tokens is None:
            raise ValueError("this simulation runs no tokens (tokens=False, or a custom actors / services assembly)")
        return self.tokens

    def set_skew(self, name: str, offset_s: float, *, drift: float = 0.0) -> None:
        """Make `name`'s clock read virtual time + `offset_s` (drifting by `drift` s/s) from now on."""
        node = self.node(name)
        node.set_clock(offset_s, drift)
        self._trace(name, "skew", f"offset={offset_s!r} drift={drift!r}")

    def at(self, time_s: float, action: Callable[[], None], label: str) -> None:
        """Run `action` at virtual `time_s` (faults on a schedule); `label` goes in the trace."""
        self._push(max(time_s, self.now), _CALL, (action, label))

    # --- clients -----------------------------------------------------------------------

    def submit(self, node: str, msg: object, *, timeout_s: float | None = None, client: bytes = b"client") -> int:
        """Send a client request to `node`'s gateway; returns its handle (see `replies`)."""
        target = self.node(node)
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        if not 0 < timeout < float("inf"):
            raise ValueError(f"a request timeout must be a positive finite number of seconds, got {timeout!r}")
        handle = self._next_handle
        self._next_handle += 1
        frame = frames.encode_request(handle, msg)
        self._pending[handle] = ClientOutcome(handle=handle, node=node, request=msg, sent_at=self.now, timeout_s=timeout)
        self.stats.client_sent += 1
        fate = self.network.transit(CLIENT, node, self.now, allow_duplicate=False)
        if self._tracing:
            self._trace(CLIENT, "request", f"#{handle} {client!r}->{node} {show(msg)} {describe_fate(fate)}")
        if not fate.arrivals:
            self.stats.client_lost += 1
        for arrival in fate.arrivals:
            self._push(arrival, _CLIENT_REQUEST, (target, target.epoch, client, frame))
        self._push(self.now + timeout, _TIMEOUT, (handle,))
        return handle

    def send_frame(self, node: str, frame: bytes, *, client: bytes) -> list[bytes]:
        """Send raw bytes to `node` as client `client` (a ZeroMQ identity); returns its inbox.

        For tests that play a real client (sessions, malformed frames): the
        bytes go through the node's intake as the real driver's would
        (`keyswarm.sim.raw_clients`), and every frame the node sends back to
        `client` is appended to the inbox, undecoded. No handle, no timeout.
        """
        target = self.node(node)
        inbox = self._raw_clients.register(client)
        self.stats.client_sent += 1
        fate = self.network.transit(CLIENT, node, self.now, allow_duplicate=False)
        if self._tracing:
            self._trace(CLIENT, "frame", f"{client!r}->{node} {len(frame)}B {describe_fate(fate)}")
        if not fate.arrivals:
            self.stats.client_lost += 1
        for arrival in fate.arrivals:
            self._push(arrival, _CLIENT_REQUEST, (target, target.epoch, client, frame, True))
        return inbox

    def inbox(self, client: bytes) -> list[bytes]:
        """The frames nodes sent raw-frame client `client` so far (see `send_frame`)."""
        return self._raw_clients.register(client)

    def request(self, node: str, msg: object, *, timeout_s: float = 5.0) -> frames.Reply:
        """Send one request and run virtual time until its reply.

        Returns the decoded `Reply` (an error reply is a `Reply` too, `ok` false).
        Raises `RequestTimeout` when no reply came within `timeout_s` of
        virtual time; the outcome is recorded in `replies` either way.
        """
        handle = self.submit(node, msg, timeout_s=timeout_s)
        self.run_until(lambda: handle in self.replies, max_s=timeout_s)
        outcome = self.replies[handle]
        if outcome.timed_out:
            raise RequestTimeout(outcome, self.replay_hint())
        return outcome.reply

    # --- running -----------------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        """Process every event up to `now + seconds`; virtual time ends there."""
        deadline = self.now + seconds
        self._guard(self._run, deadline, None)
        self.now = max(self.now, deadline)

    def run_until(self, predicate: Callable[[], bool], *, max_s: float) -> bool:
        """Process events until `predicate()` holds (checked after each batch) or `max_s` passes.

        Returns whether the predicate held; on False virtual time is `now + max_s`.
        """
        deadline = self.now + max_s
        if predicate():
            return True
        if self._guard(self._run, deadline, predicate):
            return True
        self.now = max(self.now, deadline)
        return False

    def _run(self, deadline: float, predicate: Callable[[], bool] | None) -> bool:
        heap = self._heap
        while heap and heap[0][0] <= deadline:
            self._step()
            if predicate is not None and predicate():
                return True
        return False

    def _guard(self, fn: Callable, *args: object) -> object:
        """Run `fn`, stamping any invariant violation with the seed and replay hint."""
        try:
            return fn(*args)
        except AssertionError as exc:
            note = f"[sim seed={self.seed} t={self.now:.9f}] {self.replay_hint()}"
            if note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
            raise

    def _schedule_service(self, node: SimNode, done: float, service: str, ticket: int, request: object) -> None:
        if self._tracing:
            self._trace(node.name, "ask", f"{service} #{ticket} {show(request)} done@{done:.9f}")
        self._push(done, _SERVICE, (node, node.epoch, service, ticket, request))

    def _schedule_wake(self, node: SimNode, at: float, arm_seq: int) -> None:
        self._push(at, _TIMER, (node, node.epoch, arm_seq))

    def _push(self, time: float, kind: int, payload: tuple) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, kind, payload))

    def _step(self) -> None:
        heap = self._heap
        now = heap[0][0]
        assert now >= self.now, f"virtual time went back: {self.now} -> {now}"
        self.now = now
        touched: dict[str, SimNode] = {}
        handlers = self._handlers
        while heap and heap[0][0] == now:
            _, _, kind, payload = heapq.heappop(heap)
            self.stats.events += 1
            node = handlers[kind](self, *payload)
            if node is not None:
                touched[node.name] = node
        for node in touched.values():
            node.drain()

    # --- event handlers (each returns the node it touched, or None) --------------------

    def _on_peer(self, dst: SimNode, epoch: int, src: str, frame: bytes) -> SimNode | None:
        if not dst.up or dst.epoch != epoch:
            self.stats.dropped_crashed += 1
            if self._tracing:
                self._trace(dst.name, "drop", f"from {src}: node crashed ({len(frame)}B)")
            return None
        try:
            decoded = frames.decode_actor_frame(frame)
        except DecodeError as exc:
            raise AssertionError(f"a frame the simulator encoded does not decode: {exc}") from exc
        sender = Address(src, decoded.from_actor)
        result = dst.runtime.deliver(decoded.to_actor, sender, decoded.message)
        if result is Delivery.QUEUED:
            self.stats.peer_delivered += 1
        elif result is Delivery.FULL:
            self.stats.mailbox_full += 1
        else:
            self.stats.undeliverable += 1
        if self._tracing:
            self._trace(dst.name, "deliver", f"{sender}->{decoded.to_actor} {show(decoded.message)} {result.value}")
        return dst

    def _on_client_request(
        self, node: SimNode, epoch: int, identity: bytes, frame: bytes, raw: bool = False
    ) -> SimNode | None:
        if not node.up or node.epoch != epoch:
            self.stats.dropped_crashed += 1
            if self._tracing:
                self._trace(node.name, "drop", f"client request from {identity!r}: node crashed")
            return None
        if raw:
            outcome = self._raw_clients.deliver(node, identity, frame)
            self._trace(node.name, "accept", outcome)
            return node
        try:
            request_id, msg = frames.decode_request(frame)
        except DecodeError as exc:
            raise AssertionError(f"a request the simulator encoded does not decode: {exc}") from exc
        ref = ClientRef(node.name, identity, request_id)
        result = node.runtime.deliver(self.gateway, ref, msg)
        if self._tracing:
            self._trace(node.name, "accept", f"#{request_id} {show(msg)} {result.value}")
        # As the real driver does: a refused request is answered, never dropped.
        if result is Delivery.FULL:
            self.stats.mailbox_full += 1
            node.reply_client(ref, Failure.of(ErrorCode.BUSY, "the gateway is over its queue bound"))
        elif result is not Delivery.QUEUED:
            node.reply_client(ref, Failure.of(ErrorCode.UNAVAILABLE, f"the gateway is {result.value}"))
        return node

    def _on_client_reply(self, node: str, identity: bytes, frame: bytes) -> None:
        if self._raw_clients.take(identity, frame):
            self.stats.client_answered += 1
            self._trace(CLIENT, "frame-in", f"{identity!r}<-{node} {len(frame)}B crc={zlib.crc32(frame):08x}")
            return None
        try:
            reply = frames.decode_reply(frame)
        except DecodeError as exc:
            raise AssertionError(f"a reply the simulator encoded does not decode: {exc}") from exc
        handle = reply.request_id
        outcome = self._pending.pop(handle, None)
        if outcome is None:
            done = self.replies.get(handle)
            assert done is not None, f"reply from {node} for request #{handle}, which nobody sent"
            assert done.timed_out, f"request #{handle} answered twice: {done.reply!r} then {reply!r}"
            self.stats.client_late += 1
            if self._tracing:
                self._trace(CLIENT, "late-reply", f"#{handle} from {node} {describe_reply(reply)}")
            return None
        assert outcome.node == node, f"request #{handle} went to {outcome.node} but {node} answered"
        outcome.answered_at = self.now
        outcome.reply = reply
        self.replies[handle] = outcome
        self.stats.client_answered += 1
        if self._tracing:
            self._trace(CLIENT, "reply", f"#{handle} from {node} {describe_reply(reply)}")
        return None

    def _on_timer(self, node: SimNode, epoch: int, arm_seq: int) -> SimNode | None:
        if not node.up or node.epoch != epoch or node._arm_seq != arm_seq:
            return None  # stale: crashed since, or superseded by an earlier wake
        node._armed = None
        fired = node.runtime.fire_timers()
        self.stats.timers += fired
        if self._tracing:
            self._trace(node.name, "timer", f"fired={fired} clock={node.monotonic():.9f}")
        return node

    def _on_service(self, node: SimNode, epoch: int, service: str, ticket: int, request: object) -> SimNode | None:
        if not node.up or node.epoch != epoch:
            self.stats.dropped_crashed += 1
            if self._tracing:
                self._trace(node.name, "drop", f"{service} #{ticket}: node crashed")
            return None
        node._outstanding[service] -= 1
        value: object = None
        error: KeyswarmError | None = None
        try:
            value = node.services[service].handle(request)
        except KeyswarmError as exc:
            error = exc
        except AssertionError:
            raise
        except Exception as exc:  # a bug in the service: the asking actor sees ServiceError
            log.exception("service %s on %s failed on %s", service, node.name, type(request).__name__)
            error = ServiceError(f"service {service} failed: {type(exc).__name__}: {exc}")
        if self._tracing:
            outcome = f"error={type(error).__name__}({error})" if error is not None else f"value={show(value)}"
            self._trace(node.name, "service", f"{service} #{ticket} {outcome}")
        node.runtime.complete(ticket, value=value, error=error)
        return node

    def _on_call(self, action: Callable[[], None], label: str) -> None:
        self._trace("-", "call", label)
        action()
        return None

    def _on_timeout(self, handle: int) -> None:
        outcome = self._pending.pop(handle, None)
        if outcome is None:
            return None  # answered in time
        outcome.timed_out = True
        self.replies[handle] = outcome
        self.stats.client_timeouts += 1
        self._trace(CLIENT, "timeout", f"#{handle} to {outcome.node} after {outcome.timeout_s!r} s")
        return None

    _handlers = (_on_peer, _on_client_request, _on_client_reply, _on_timer, _on_service, _on_call, _on_timeout)

    # --- what nodes send ------------------------------------------------------------

    def _send_peer(self, src: SimNode, to: Address, sender: Address, msg: object) -> bool:
        dst = self.nodes.get(to.node)
        if dst is None:
            return False  # unknown peer: refused at once, as the real driver does
        frame = frames.encode_actor_frame(to.actor, sender.actor, msg)
        fate = self.network.transit(src.name, dst.name, self.now)
        stats = self.stats
        stats.peer_sent += 1
        if fate.dropped == "loss":
            stats.peer_lost += 1
        elif fate.dropped == "partition":
            stats.peer_blocked += 1
        if fate.duplicated:
            stats.peer_duplicated += 1
        if self._tracing:
            self._trace(
                src.name, "send",
                f"{sender.actor}->{to} {show(msg)} {len(frame)}B crc={zlib.crc32(frame):08x} {describe_fate(fate)}",
            )
        for arrival in fate.arrivals:
            self._push(arrival, _PEER, (dst, dst.epoch, src.name, frame))
        # True even when the network drops it: a sender cannot see loss.
        return True

    def _reply_client(self, node: SimNode, ref: ClientRef, msg: object) -> bool:
        assert ref.node == node.name, f"{node.name} answers a request made to {ref.node}: {ref!r}"
        if type(msg) is RawFrame:  # sealed by the sessions actor
            frame = msg.data
        elif type(msg) is Failure:
            frame = frames.encode_error(
                ref.request_id, msg.code, msg.message, retryable=msg.retryable, redirect=msg.redirect
            )
        else:
            frame = frames.encode_reply(ref.request_id, msg)
        for observer in self.reply_observers:
            observer(node, ref, msg)
        fate = self.network.transit(node.name, CLIENT, self.now, allow_duplicate=False)
        if self._tracing:
            self._trace(node.name, "answer", f"#{ref.request_id} {show(msg)} {describe_fate(fate)}")
        if not fate.arrivals:
            self.stats.client_lost += 1
        for arrival in fate.arrivals:
            self._push(arrival, _CLIENT_REPLY, (node.name, ref.identity, frame))
        return True

    # --- trace ---------------------------------------------------------------------

    def _trace(self, node: str, kind: str, text: str) -> None:
        if self._tracing:
            self._trace_log.add(f"{self.now:.9f} {node} {kind} {text}")

    def trace_lines(self) -> list[str]:
        """Every traced event so far (needs `trace="full"`)."""
        return self._trace_log.lines()

    def trace_digest(self) -> str:
        """SHA-256 (hex) of the trace so far: equal digests, equal runs."""
        return self._trace_log.digest()
