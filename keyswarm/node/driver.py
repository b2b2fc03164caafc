"""The real driver: one node in one process, on uvloop and pyzmq.

Owns: the node's sockets and the loop glue around them, the `Environment`
implementation the sans-IO `NodeRuntime` runs on (clocks, entropy, timers,
remote sends, client replies, blocking services), peer intake, start and
shutdown, and the node's transport statistics. What happens to each client
frame is `client_intake`'s; blocking services run in `service_threads`;
socket options and ZeroMQ error translation are `transport.zmq_sockets`'.

Rules (DESIGN sections 2, 5 and 9):
- Everything here runs on the loop thread except `request_stop` (thread-safe)
  and the service threads.
- Sockets are plain (non-asyncio) zmq sockets watched with `add_reader` on
  their notification FD. A wake-up drains with NOBLOCK reads up to
  `transport.drain_batch` messages, then the runtime runs until idle (a
  budget per callback; `call_soon` for the rest). No asyncio task per message.
- The FD is edge-triggered: after a drain and after sending on a socket that
  is also read, `has_input` is checked and a drain scheduled if a message is
  waiting. Forgetting this hangs the node with messages queued.
- Peer input is trusted no more than client input: a frame that does not
  decode, or names no local actor, is counted and dropped, never raised.
- Shutdown drains: new client requests get UNAVAILABLE, in-flight work gets
  `runtime.shutdown_grace_s` to finish, and whatever is left is answered
  UNAVAILABLE before the sockets close. A second stop request cuts it short.
- Nothing is dropped silently: every refusal, drop and failure has a counter
  in `stats()`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import signal
import threading
import time

import uvloop
import zmq

from keyswarm.actors.runtime import ActorSpec, Address, ClientRef, Delivery, NodeRuntime, SupervisorPolicy
from keyswarm.config import NodeConfig
from keyswarm.errors import ConfigError, KeyswarmError, ProtocolError
from keyswarm.node.assembly import GATEWAY, node_actors, node_services, open_node_storage
from keyswarm.node.client_intake import ClientIntake, InflightRequests, RateLimitedLog
from keyswarm.node.node_token import open_node_token
from keyswarm.node.service_threads import ServiceThreads
from keyswarm.node.services import BlockingService
from keyswarm.storage.chain import Signer
from keyswarm.transport import frames, zmq_sockets
from keyswarm.transport.codec import Limits
from keyswarm.transport.malloc_tuning import keep_large_buffers

log = logging.getLogger("keyswarm.node")

#: Client requests in flight on the whole node before new ones get BUSY. Bounds
#: the in-flight table when many distinct clients each stay under their own cap.
INFLIGHT_MAX = 65_536
#: Seconds between sweeps of the in-flight table for expired requests.
SWEEP_INTERVAL_S = 0.25
#: Messages the runtime handles per loop callback before yielding to sockets.
RUN_BUDGET = 4096
#: Seconds between checks while draining on shutdown.
DRAIN_POLL_S = 0.005


def codec_limits(config: NodeConfig) -> Limits:
    """The codec's limits from the `[limits]` section."""
    lim = config.limits
    return Limits(
        max_frame_bytes=lim.max_frame_bytes, max_depth=lim.max_depth, max_container_len=lim.max_container_len,
        max_str_bytes=lim.max_str_bytes, max_bin_bytes=lim.max_bin_bytes,
    )


class NodeDriver:
    """Runs one node's `NodeRuntime` on ZeroMQ. `await run()` serves until `request_stop()`."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        actors: list[ActorSpec] | None = None,
        services: dict[str, BlockingService] | None = None,
        zmq_context: zmq.Context | None = None,
        inflight_max: int = INFLIGHT_MAX,
        request_deadline_s: float | None = None,
    ):
        """`services` are closed by the driver when it stops. `request_deadline_s`
        (default `client.request_timeout_s`) is how long a client request may
        stay unanswered in the node before it is answered UNAVAILABLE."""
        if config.runtime.allow_insecure_entropy and config.profile != "sim":
            # The config refuses this too; a driver built from a hand-made
            # config must not run on seeded randomness either.
            raise ConfigError(
                f'insecure entropy is allowed only under profile "sim", not {config.profile!r}',
                field="runtime.allow_insecure_entropy",
            )
        self.config = config
        self.node_id = config.node.id
        self.limits = codec_limits(config)
        self.client_endpoint = config.node.client_endpoint
        self.peer_endpoint = config.node.peer_endpoint
        self._given_context = zmq_context
        self._context: zmq.Context | None = None
        # The event log and signing key (KeyswarmError when either is damaged:
        # the node refuses to start). The log is closed with the services.
        # The token (`[token]`: ConfigError when its certificates or key do not
        # check out) joins only a node assembled here: given actors or services
        # mean the caller assembles the node, token included.
        # The log and key first: the token certifies the signing key (check 6 of node_token).
        storage = open_node_storage(config) if actors is None or services is None else None
        try:
            signer_public_key = Signer(storage.signer_key).public_key if storage is not None else None
            token = (
                open_node_token(config, signer_public_key=signer_public_key)
                if actors is None and services is None else None
            )  # fmt: skip
        except BaseException:
            if storage is not None:
                storage.event_log.close()
            raise
        if services is None:
            services = node_services(config.node.data_dir or None, event_log=storage.event_log, token=token)
        elif storage is not None:
            storage.event_log.close()  # opened for the key check only: the given services bring their own
        rt = config.runtime
        self.runtime = NodeRuntime(
            self.node_id,
            node_actors(config.storage, signer_key=storage.signer_key, token=token) if actors is None else actors,
            self,
            rng=random.Random(int.from_bytes(os.urandom(8))),
            mailbox_capacity=config.limits.mailbox_capacity,
            supervisor=SupervisorPolicy(
                max_restarts=rt.supervisor_max_restarts,
                window_s=rt.supervisor_window_s,
                backoff_initial_s=rt.restart_backoff_initial_s,
                backoff_max_s=rt.restart_backoff_max_s,
            ),
        )
        self._services = ServiceThreads(
            services,
            queue_capacity=config.limits.mailbox_capacity,
            complete=self._complete,
            after_batch=self._pump,
        )
        #: Set (from the loop thread) once the sockets are bound and actors started.
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client_sock: zmq.Socket | None = None
        self._peer_sock: zmq.Socket | None = None
        self._dealers: dict[str, zmq.Socket] = {}
        self._readers: list[int] = []
        self._wake_handle: asyncio.TimerHandle | None = None
        self._wake_deadline = math.inf
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        self._client_drain_scheduled = False
        self._peer_drain_scheduled = False
        self._closed = False
        self._runtime_started = False
        self._ratelog = RateLimitedLog(log)
        self._intake = ClientIntake(
            runtime=self.runtime,
            gateway=GATEWAY,
            limits=self.limits,
            inflight=InflightRequests(
                per_client_max=config.limits.client_inflight_max,
                total_max=inflight_max,
                deadline_s=config.client.request_timeout_s if request_deadline_s is None else request_deadline_s,
            ),
            ratelog=self._ratelog,
        )
        self._drain_batch = config.transport.drain_batch
        self._stop_requests = 0
        self._accepting_stops = False  # under _stop_lock: True once `run` takes requests through the loop
        self._stop_lock = threading.Lock()
        self._stop_event: asyncio.Event | None = None
        self._force_event: asyncio.Event | None = None
        self._counters = dict.fromkeys(
            (
                "peer_frames_in", "peer_frames_out", "peer_bad_frames", "peer_undeliverable",
                "peer_send_failures", "peer_unknown", "recv_errors", "internal_errors",
            ),
            0,
        )

    # --- lifecycle -----------------------------------------------------------

    async def run(self) -> int:
        """Bind, connect peers, serve until a stop is requested, drain, close.

        Returns 0 when every in-flight request was answered before stopping, 1
        when some were abandoned (grace period over, or a second stop request).
        Raises `TransportError` if a socket cannot be bound or connected.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        self._force_event = asyncio.Event()
        try:
            self._open_sockets()
            self._services.start(loop)
            self.runtime.start()
            self._runtime_started = True
            for sock, callback in ((self._client_sock, self._on_client_readable), (self._peer_sock, self._on_peer_readable)):
                fd = sock.getsockopt(zmq.FD)
                loop.add_reader(fd, callback)
                self._readers.append(fd)
            self._sweep_handle = loop.call_later(SWEEP_INTERVAL_S, self._sweep)
            log.info(
                "node %s started (profile %s): clients on %s, peers on %s, %d configured peer(s)",
                self.node_id, self.config.profile, self.client_endpoint, self.peer_endpoint, len(self._dealers),
            )
            self.ready.set()
            with self._stop_lock:
                self._accepting_stops = True
                early_requests = self._stop_requests
            for _ in range(early_requests):
                self._on_stop_request()
            # Messages may have queued before the readers were registered; the edge is gone.
            self._on_client_readable()
            self._on_peer_readable()
            self._pump()
            await self._stop_event.wait()
            code = await self._drain()
        finally:
            self._close()
        log.info("node %s stopped with exit code %d; %s", self.node_id, code, self._summary())
        return code

    def request_stop(self) -> None:
        """Stop gracefully (drain, then close); a second call stops at once. Thread-safe."""
        with self._stop_lock:
            self._stop_requests += 1
            loop = self._loop if self._accepting_stops else None
        if loop is None:
            return  # not up yet: `run` replays the requests counted so far once it is
        try:
            loop.call_soon_threadsafe(self._on_stop_request)
        except RuntimeError:
            pass  # the loop already closed: the node has stopped

    @property
    def stop_requested(self) -> bool:
        return self._stop_requests > 0

    def _on_stop_request(self) -> None:
        if self._stop_event.is_set():
            log.warning("node %s: second stop request; abandoning in-flight work", self.node_id)
            self._force_event.set()
            return
        self._intake.draining = True
        self.runtime.set_draining()
        self._stop_event.set()

    async def _drain(self) -> int:
        runtime = self.runtime
        log.info(
            "node %s draining: %d client request(s) in flight, %d service request(s) pending",
            self.node_id, len(self._intake.inflight), runtime.pending_asks(),
        )
        deadline = time.monotonic() + self.config.runtime.shutdown_grace_s
        inflight = self._intake.inflight
        while inflight or runtime.pending_asks() or runtime.has_work():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._force_event.is_set():
                break
            try:
                await asyncio.wait_for(self._force_event.wait(), min(DRAIN_POLL_S, remaining))
            except TimeoutError:
                pass
        if inflight or runtime.pending_asks():
            log.warning(
                "node %s stops with %d client request(s) unanswered and %d service request(s) pending",
                self.node_id, len(inflight), runtime.pending_asks(),
            )
            self._intake.abandon_all()
            return 1
        return 0

    def _open_sockets(self) -> None:
        self._context = self._given_context or zmq.Context()
        transport, limits = self.config.transport, self.config.limits
        self._client_sock, self.client_endpoint = zmq_sockets.client_router(
            self._context, self.config.node.client_endpoint, transport=transport, limits=limits
        )
        self._intake.attach(self._client_sock)
        self._peer_sock, self.peer_endpoint = zmq_sockets.peer_router(
            self._context, self.config.node.peer_endpoint, transport=transport, limits=limits
        )
        for peer in self.config.peers:
            self._dealers[peer.id] = zmq_sockets.peer_dealer(self._context, self.node_id, peer.endpoint, transport=transport)

    def _close(self) -> None:
        """Stop actors and services, close sockets, term our context. Safe to call on a half-open node."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        for fd in self._readers:
            loop.remove_reader(fd)
        self._readers.clear()
        for handle in (self._wake_handle, self._sweep_handle):
            if handle is not None:
                handle.cancel()
        if self._runtime_started:
            self.runtime.stop()
        # A forced stop does not wait long for a service stuck in `handle`
        # (its thread is a daemon and dies with the process).
        forced = self._force_event is not None and self._force_event.is_set()
        self._services.close(timeout_s=0.5 if forced else self.config.runtime.shutdown_grace_s)
        linger = self.config.transport.linger_ms
        for sock in (self._client_sock, self._peer_sock, *self._dealers.values()):
            if sock is not None:
                sock.close(linger=linger)
        if self._given_context is None and self._context is not None:
            self._context.term()

    # --- Environment (the runtime's port) -----------------------------------

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_time(self) -> float:
        return time.time()

    def entropy(self, n: int) -> bytes:
        return os.urandom(n)

    def wake_at(self, deadline: float) -> None:
        # One timer handle: replaced only by an earlier deadline (the runtime
        # re-arms after each `fire_timers`). Delays come from time.monotonic(),
        # not loop.time(), whose resolution under uvloop is a millisecond;
        # rounding up keeps a timer from firing just before its deadline.
        if self._loop is None or self._closed:
            return
        if self._wake_handle is not None:
            if deadline >= self._wake_deadline:
                return
            self._wake_handle.cancel()
        delay = max(0.0, deadline - time.monotonic())
        self._wake_deadline = deadline
        self._wake_handle = self._loop.call_later(math.ceil(delay * 1000.0) / 1000.0, self._on_wake)

    def _on_wake(self) -> None:
        self._wake_handle = None
        self._wake_deadline = math.inf
        self.runtime.fire_timers()
        self._pump()

    def submit(self, service: str, ticket: int, request: object) -> bool:
        return self._services.submit(service, ticket, request)

    def _complete(self, ticket: int, value: object, error: KeyswarmError | None) -> None:
        self.runtime.complete(ticket, value=value, error=error)

    def reply_client(self, ref: ClientRef, msg: object) -> bool:
        return self._intake.reply(ref, msg)

    def send_remote(self, to: Address, sender: Address, msg: object) -> bool:
        sock = self._dealers.get(to.node)
        if sock is None:
            self._counters["peer_unknown"] += 1
            return False
        try:
            data = frames.encode_actor_frame(to.actor, sender.actor, msg)
            zmq_sockets.send_nowait(sock, [data], f"send to peer {to.node}")
        except KeyswarmError as exc:  # Busy: not connected (IMMEDIATE) or queue full
            self._counters["peer_send_failures"] += 1
            self._ratelog.warning(
                f"peer-send-{to.node}", "node %s: cannot send to %s (not connected or queue full): %s",
                self.node_id, to, exc,
            )
            return False
        self._counters["peer_frames_out"] += 1
        return True

    # --- the loop glue ----------------------------------------------------------

    def _pump(self) -> None:
        """Run the actors until idle (or the budget is spent), then look for input."""
        self._pump_scheduled = False
        if self._closed:
            return
        runtime = self.runtime
        runtime.run(RUN_BUDGET)
        if runtime.has_work() and not self._pump_scheduled:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)
        # Replies were sent on the client socket, which may have eaten the FD's edge.
        if not self._client_drain_scheduled and zmq_sockets.has_input(self._client_sock):
            self._client_drain_scheduled = True
            self._loop.call_soon(self._drain_client)

    def _on_client_readable(self) -> None:
        if not self._client_drain_scheduled:
            self._client_drain_scheduled = True
            self._drain_client()

    def _on_peer_readable(self) -> None:
        if not self._peer_drain_scheduled:
            self._peer_drain_scheduled = True
            self._drain_peer()

    def _drain_client(self) -> None:
        self._client_drain_scheduled = False
        if self._closed:
            return
        now = time.monotonic()  # one clock read per batch: admission times need no more precision
        sock = self._client_sock
        recv = zmq_sockets.recv_parts
        handle = self._intake.on_message
        # Frames arrive as bytes copies: for the small frames of the hot path a
        # copy is cheaper than a zmq.Frame object; large frames are rare.
        try:
            for _ in range(self._drain_batch):
                handle(recv(sock), now)
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            self._counters["recv_errors"] += 1
            self._ratelog.warning("recv-client", "node %s: client receive failed: %s", self.node_id, exc)
        except Exception:  # a bug on one frame must not stop reading: the FD's edge is already spent
            self._counters["internal_errors"] += 1
            log.exception("node %s: failed handling a client frame", self.node_id)
        self._pump()  # runs the actors, then re-checks the socket (reschedules this if more is waiting)

    def _drain_peer(self) -> None:
        self._peer_drain_scheduled = False
        if self._closed:
            return
        sock = self._peer_sock
        recv = zmq_sockets.recv_parts
        handle = self._peer_message
        try:
            for _ in range(self._drain_batch):
                handle(recv(sock))
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            self._counters["recv_errors"] += 1
            self._ratelog.warning("recv-peer", "node %s: peer receive failed: %s", self.node_id, exc)
        except Exception:  # as in _drain_client
            self._counters["internal_errors"] += 1
            log.exception("node %s: failed handling a peer frame", self.node_id)
        if zmq_sockets.has_input(self._peer_sock):
            self._peer_drain_scheduled = True
            self._loop.call_soon(self._drain_peer)
        self._pump()

    def _sweep(self) -> None:
        """Answer requests that outlived their deadline, so the in-flight table stays bounded."""
        self._sweep_handle = self._loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        if self._intake.expire(time.monotonic()):
            self._pump()  # replies were sent: re-check the client socket's edge

    # --- peer intake ----------------------------------------------------------------

    def _peer_message(self, parts: list[bytes]) -> None:
        self._counters["peer_frames_in"] += 1
        try:
            if len(parts) != 2:
                raise ProtocolError("expected exactly one frame per peer message")
            try:
                node = parts[0].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"peer identity {parts[0]!r} is not a node id") from exc
            frame = frames.decode_actor_frame(parts[1], limits=self.limits)
        except ProtocolError as exc:
            self._counters["peer_bad_frames"] += 1
            self._ratelog.warning("peer-bad", "node %s: bad peer frame from %r: %s", self.node_id, parts[0], exc)
            return
        outcome = self.runtime.deliver(frame.to_actor, Address(node, frame.from_actor), frame.message)
        if outcome is not Delivery.QUEUED:
            self._counters["peer_undeliverable"] += 1
            self._ratelog.warning(
                f"peer-{outcome.value}", "node %s: peer message from %s to %s dropped: %s",
                self.node_id, node, frame.to_actor, outcome.value,
            )

    # --- statistics -------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """Transport counters, in-flight state, actors and services (for the monitor; loop thread)."""
        return {
            "node": self.node_id,
            "status": self.runtime.status,
            **self._intake.stats(),
            **self._counters,
            "actors": self.runtime.stats(),
            "services": self._services.stats(),
        }

    def _summary(self) -> str:
        c = {**self._intake.counters, **self._counters, "bad_frames": sum(self._intake.bad_frames.values())}
        shown = ("client_frames_in", "replies_out", "bad_frames", "busy_replies", "reply_drops_busy",
                 "reply_drops_gone", "expired", "peer_frames_in", "peer_send_failures", "internal_errors")
        return ", ".join(f"{name}={c[name]}" for name in shown)


def run_node(config: NodeConfig) -> int:
    """Run a node in this process until SIGTERM / SIGINT; the exit code of `keyswarm node`.

    The first signal drains (in-flight work finishes within
    `runtime.shutdown_grace_s`); a second one stops at once. Returns 0 after a
    clean drain, 1 when work was abandoned, 2 when the node could not start.
    """
    keep_large_buffers()  # large frames reuse heap pages (transport/malloc_tuning.py)
    try:
        driver = NodeDriver(config)  # opens the event log and the signing key
    except KeyswarmError as exc:
        log.error("node %s could not start: %s", config.node.id, exc)
        return 2

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if driver._stop_requests:
            log.warning("node %s: %s again; stopping now", config.node.id, name)
        else:
            log.info("node %s: %s received; draining (send it again to stop at once)", config.node.id, name)
        driver.request_stop()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await driver.run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    except KeyswarmError as exc:
        log.error("node %s could not start: %s", config.node.id, exc)
        return 2


def __getattr__(name: str) -> object:
    # `NodeThread` lives in `keyswarm.node.node_thread` (it imports this module);
    # `from keyswarm.node.driver import NodeThread` keeps working.
    if name == "NodeThread":
        from keyswarm.node.node_thread import NodeThread

        return NodeThread
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
