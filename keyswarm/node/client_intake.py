"""Client intake: request frames from the client ROUTER in, replies out.

Owns: what the node does with each frame a client sends before the gateway
actor sees it (framing, the size limit, decoding, draining, in-flight caps,
delivery), every reply and refusal sent back, the table of requests in
flight with their deadlines, and the counters and rate-limited log lines
about all of it.

Rules (DESIGN sections 5 and 9):
- Every frame gets exactly one answer: a reply from the actors, an error
  naming what was wrong (BAD_REQUEST, TOO_LARGE, UNSUPPORTED_VERSION), BUSY,
  or UNAVAILABLE (draining, expired in the node, node stopping). Frames past
  2x the limit never get here: libzmq drops their connection (MAXMSGSIZE).
- In-session frames (`[1, "s", counter, [session_id, ciphertext]]`, told
  apart by their first four bytes) are parsed here and delivered to the
  `sessions` actor as a `SessionFrame`, with the counter in the request-id
  slot: the same in-flight table, caps and BUSY apply. Their slot is keyed
  by (identity, counter, session id), so a client's plain request ids and
  each session's counters never collide. Errors decided here (malformed,
  BUSY, UNAVAILABLE, expired) are plain error replies under the counter;
  answers the sessions actor sealed arrive as a `RawFrame`, sent as they are.
- Memory stays bounded whatever clients send: an admitted request stays in
  the table until answered, expired or abandoned, so the table holds at most
  `total_max` entries; a client (ZeroMQ identity) has at most
  `per_client_max` in flight, and a client with none has no entry at all,
  so a flood of distinct identities leaves nothing behind.
- Deadlines are admission time + one constant, so insertion order is
  deadline order and expiry looks only at the oldest entries.
- Replies go out with NOBLOCK. A full client queue or a vanished client is a
  counted drop, never a stall; nothing is dropped without a counter.
- Log lines about client input are rate-limited per kind: a flood of bad
  frames costs counters, not a log line each.
- Runs on the loop thread only. Deadlines use the `now` callers pass; only
  the log rate limit reads the clock itself.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator

import zmq

from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import SESSIONS, ClientRef, Delivery, NodeRuntime, RawFrame
from keyswarm.actors.session_messages import SessionFrame
from keyswarm.crypto.session_keys import parse_frame
from keyswarm.errors import RETRYABLE_CODES, Busy, ErrorCode, KeyswarmError, ProtocolError, Unavailable
from keyswarm.transport import frames, zmq_sockets
from keyswarm.transport.codec import Limits

log = logging.getLogger("keyswarm.node")

#: Seconds between two log lines about the same kind of bad input.
LOG_INTERVAL_S = 5.0

#: (identity, request_id) for a plain request; (identity, counter, session_id) for an in-session frame.
RequestKey = tuple[bytes, int] | tuple[bytes, int, bytes]
#: The first bytes of every version-1 in-session frame: array of 4, version 1, kind "s".
SESSION_FRAME_PREFIX = b"\x94\x01\xa1s"


def request_key(identity: bytes, request_id: int, session: bytes = b"") -> RequestKey:
    return (identity, request_id, session) if session else (identity, request_id)


class RateLimitedLog:
    """At most one line per `key` per interval; the next line says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S):
        self._logger = logger
        self._interval_s = interval_s
        self._state: dict[str, tuple[float, int]] = {}  # key -> (next allowed time, suppressed); keys are few

    def warning(self, key: str, fmt: str, *args: object) -> None:
        now = time.monotonic()
        next_at, suppressed = self._state.get(key, (0.0, 0))
        if now < next_at:
            self._state[key] = (next_at, suppressed + 1)
            return
        if suppressed:
            fmt, args = fmt + " (%d similar suppressed)", (*args, suppressed)
        self._logger.warning(fmt, *args)
        self._state[key] = (now + self._interval_s, 0)


class InflightRequests:
    """Client requests admitted and not yet answered (pure bookkeeping: callers pass `now`)."""

    def __init__(self, *, per_client_max: int, total_max: int, deadline_s: float):
        assert per_client_max >= 1 and total_max >= 1 and deadline_s > 0
        self.per_client_max = per_client_max
        self.total_max = total_max
        self.deadline_s = deadline_s
        # OrderedDict, not dict: popping the oldest entry stays O(1) however
        # many entries were deleted from the middle (a dict scans past them).
        self._deadlines: OrderedDict[RequestKey, float] = OrderedDict()
        self._per_client: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._deadlines)

    @property
    def clients(self) -> int:
        """Clients with at least one request in flight."""
        return len(self._per_client)

    def refusal(self, identity: bytes, request_id: int, session: bytes = b"") -> tuple[ErrorCode, str] | None:
        """Why a new request (of `session`, b"": a plain one) may not be admitted now, or None if it may."""
        if request_key(identity, request_id, session) in self._deadlines:
            what = "counter" if session else "request id"
            return ErrorCode.BAD_REQUEST, f"{what} {request_id} is already in flight"
        if self._per_client.get(identity, 0) >= self.per_client_max:
            return ErrorCode.BUSY, f"over {self.per_client_max} requests in flight from this client"
        if len(self._deadlines) >= self.total_max:
            return ErrorCode.BUSY, "the node has too many requests in flight"
        return None

    def add(self, identity: bytes, request_id: int, now: float, session: bytes = b"") -> None:
        """Record a request that `refusal` let through and that was delivered."""
        self._deadlines[request_key(identity, request_id, session)] = now + self.deadline_s
        self._per_client[identity] = self._per_client.get(identity, 0) + 1

    def finish(self, identity: bytes, request_id: int, session: bytes = b"") -> bool:
        """Remove an answered request; False if it was not in flight (expired, or answered twice)."""
        if self._deadlines.pop(request_key(identity, request_id, session), None) is None:
            return False
        self._release(identity)
        return True

    def expire(self, now: float) -> Iterator[RequestKey]:
        """Remove and yield every request whose deadline has passed, oldest first."""
        deadlines = self._deadlines
        while deadlines:
            key, deadline = next(iter(deadlines.items()))
            if deadline > now:
                return
            del deadlines[key]
            self._release(key[0])
            yield key

    def take_all(self) -> list[RequestKey]:
        """Remove and return every request still in flight (the node is stopping)."""
        keys = list(self._deadlines)
        self._deadlines.clear()
        self._per_client.clear()
        return keys

    def _release(self, identity: bytes) -> None:
        count = self._per_client[identity] - 1
        if count:
            self._per_client[identity] = count
        else:
            del self._per_client[identity]


class ClientIntake:
    """The client side of a node: `on_message` for each frame in, `reply` for each answer out."""

    def __init__(
        self,
        *,
        runtime: NodeRuntime,
        gateway: str,
        limits: Limits,
        inflight: InflightRequests,
        ratelog: RateLimitedLog,
        sessions: str = SESSIONS,
    ):
        self.runtime = runtime
        self.node_id = runtime.node_id
        self.gateway = gateway
        self.sessions = sessions
        self.limits = limits
        self.inflight = inflight
        self.draining = False
        self._max_frame = limits.max_frame_bytes
        self._sock: zmq.Socket | None = None
        self._ratelog = ratelog
        self.counters = dict.fromkeys(
            (
                "client_frames_in", "replies_out", "busy_replies", "reply_drops_busy", "reply_drops_gone",
                "reply_drops_error", "late_replies", "expired", "encode_failures", "oversized_replies",
            ),
            0,
        )
        self.bad_frames: dict[str, int] = {}  # wire error code -> frames refused with it

    def attach(self, sock: zmq.Socket) -> None:
        """The bound client ROUTER that replies go out on."""
        self._sock = sock

    # --- frames in ---------------------------------------------------------------

    def on_message(self, parts: list[bytes], now: float) -> None:
        """One multipart message from the ROUTER: `[identity, frame]` or something bad."""
        self.counters["client_frames_in"] += 1
        if len(parts) != 2:
            # A ROUTER always prepends the identity, so parts[0] exists.
            self._bad(parts[0], 0, ErrorCode.BAD_REQUEST, "expected exactly one frame per request")
            return
        identity, data = parts
        if len(data) > self._max_frame:  # answered under its id or counter, read from its first bytes
            self._bad(identity, frames.peek_request_id(data), ErrorCode.TOO_LARGE,
                      f"frame of {len(data)} bytes is over the limit of {self._max_frame}")
            return
        if data[:4] == SESSION_FRAME_PREFIX:
            self._on_session_frame(identity, data, now)
            return
        try:
            request_id, msg = frames.decode_request(data, limits=self.limits)
        except ProtocolError as exc:
            self._bad(identity, exc.request_id if exc.request_id is not None else 0, exc.code, str(exc))
            return
        if self.draining:
            self.refuse(identity, request_id, ErrorCode.UNAVAILABLE, "node is draining")
            return
        refusal = self.inflight.refusal(identity, request_id)
        if refusal is not None:
            code, message = refusal
            if code is ErrorCode.BUSY:
                self._busy(identity, request_id, message)
            else:
                self._bad(identity, request_id, code, message)
            return
        outcome = self.runtime.deliver(self.gateway, ClientRef(self.node_id, identity, request_id), msg)
        if outcome is Delivery.QUEUED:
            self.inflight.add(identity, request_id, now)
        elif outcome is Delivery.FULL:
            self._busy(identity, request_id, "the gateway is over its queue bound")
        elif outcome is Delivery.STOPPED:
            self.refuse(identity, request_id, ErrorCode.UNAVAILABLE, "the gateway is stopped")
        else:
            self.refuse(identity, request_id, ErrorCode.INTERNAL, f"no gateway actor on this node ({outcome.value})")

    def _on_session_frame(self, identity: bytes, data: bytes, now: float) -> None:
        try:
            counter, session_id, ciphertext = parse_frame(data, limits=self.limits)
        except ProtocolError as exc:
            self._bad(identity, exc.request_id if exc.request_id is not None else 0, exc.code, str(exc))
            return
        if self.draining:
            self.refuse(identity, counter, ErrorCode.UNAVAILABLE, "node is draining")
            return
        refusal = self.inflight.refusal(identity, counter, session_id)
        if refusal is not None:
            code, message = refusal
            if code is ErrorCode.BUSY:
                self._busy(identity, counter, message)
            else:
                self._bad(identity, counter, code, message)
            return
        ref = ClientRef(self.node_id, identity, counter, session_id)
        outcome = self.runtime.deliver(self.sessions, ref, SessionFrame(counter, session_id, ciphertext))
        if outcome is Delivery.QUEUED:
            self.inflight.add(identity, counter, now, session_id)
        elif outcome is Delivery.FULL:
            self._busy(identity, counter, "the sessions actor is over its queue bound")
        elif outcome is Delivery.STOPPED:
            self.refuse(identity, counter, ErrorCode.UNAVAILABLE, "the sessions actor is stopped")
        else:
            self.refuse(identity, counter, ErrorCode.UNAUTHENTICATED,
                        "this node holds no sessions (it runs no sessions actor)")

    # --- answers out -------------------------------------------------------------

    def reply(self, ref: ClientRef, msg: object) -> bool:
        """An actor's answer to a client request (the runtime's `reply_client`)."""
        if ref.node != self.node_id or not self.inflight.finish(ref.identity, ref.request_id, ref.session):
            self.counters["late_replies"] += 1  # expired and already answered, or answered twice
            return False
        if type(msg) is RawFrame:  # sealed by the sessions actor, which kept it under the frame limit
            return self._send(ref.identity, msg.data)
        try:
            if type(msg) is Failure:
                data = frames.encode_error(
                    ref.request_id, msg.code, msg.message, retryable=msg.retryable, redirect=msg.redirect
                )
            else:
                data = frames.encode_reply(ref.request_id, msg)
        except (TypeError, ValueError) as exc:
            # An actor replied with something that is not a client message: a
            # bug. The client still gets an answer, and its slot is freed.
            self.counters["encode_failures"] += 1
            self._ratelog.warning("encode", "node %s cannot encode reply %s: %s", self.node_id, type(msg).__name__, exc)
            data = frames.encode_error(ref.request_id, ErrorCode.INTERNAL, "the node could not encode its reply")
        if len(data) > self._max_frame:
            # The client would refuse it as TOO_LARGE anyway; say so in a frame it can read.
            self.counters["oversized_replies"] += 1
            data = frames.encode_error(
                ref.request_id, ErrorCode.TOO_LARGE, f"the reply of {len(data)} bytes is over the frame limit of {self._max_frame}"
            )
        return self._send(ref.identity, data)

    def expire(self, now: float) -> int:
        """Answer UNAVAILABLE to every request past its deadline; returns how many."""
        message = f"timed out in the node after {self.inflight.deadline_s:g} s"
        expired = 0
        for key in self.inflight.expire(now):
            expired += 1
            self.refuse(key[0], key[1], ErrorCode.UNAVAILABLE, message)
        if expired:
            self.counters["expired"] += expired
            self._ratelog.warning("expired", "node %s: %d request(s) expired unanswered", self.node_id, expired)
        return expired

    def abandon_all(self) -> int:
        """The node stops now: answer UNAVAILABLE to everything in flight; returns how many."""
        keys = self.inflight.take_all()
        for key in keys:
            self.refuse(key[0], key[1], ErrorCode.UNAVAILABLE, "the node stopped before answering")
        return len(keys)

    def refuse(self, identity: bytes, request_id: int, code: ErrorCode, message: str) -> None:
        self._send(identity, frames.encode_error(request_id, code, message, retryable=code in RETRYABLE_CODES))

    def _bad(self, identity: bytes, request_id: int, code: ErrorCode, message: str) -> None:
        self.bad_frames[code] = self.bad_frames.get(code, 0) + 1
        self._ratelog.warning(f"bad-{code}", "node %s: bad client frame (%s): %s", self.node_id, code, message)
        self.refuse(identity, request_id, code, message)

    def _busy(self, identity: bytes, request_id: int, message: str) -> None:
        self.counters["busy_replies"] += 1
        self.refuse(identity, request_id, ErrorCode.BUSY, message)

    def _send(self, identity: bytes, data: bytes) -> bool:
        try:
            zmq_sockets.send_nowait(self._sock, [identity, data], "reply to client")
        except Busy:
            self.counters["reply_drops_busy"] += 1  # the client is not reading; its queue is full
        except Unavailable:
            self.counters["reply_drops_gone"] += 1  # the client disconnected
        except KeyswarmError as exc:
            self.counters["reply_drops_error"] += 1
            self._ratelog.warning("reply", "node %s: reply failed: %s", self.node_id, exc)
        else:
            self.counters["replies_out"] += 1
            return True
        return False

    def stats(self) -> dict[str, object]:
        return {
            "inflight": len(self.inflight),
            "clients_inflight": self.inflight.clients,
            **self.counters,
            "bad_frames": dict(self.bad_frames),
        }
