"""The minimal plaintext client: one DEALER, one request at a time, no session.

Owns: sending the foundation's unauthenticated operations (`health`, `echo`,
`ping.peer`, `counter.increment`) to one node and matching their replies. The
authenticated client (handshake, sessions, retries across nodes) comes with
the session layer and will not share this class.

Rules:
- Blocking and synchronous; every wait is bounded by a timeout, and a timeout
  is `Unavailable` (the node may be down, slow or unreachable: retry later or
  elsewhere).
- One request in flight at a time. Replies to earlier requests that timed out
  are read and discarded by request id. A node that cannot read a request's id
  (a frame past the size limit) answers with request id 0; with one request
  in flight, such an error answers the current request.
- Error replies: `request` returns them in the `Reply`; `call` raises
  `RequestFailed`, a `KeyswarmError` carrying the reply's code, message,
  retryable flag and redirect.
- The zmq context is passed in or owned: an owned one is terminated by `close`.
"""

from __future__ import annotations

import time

import zmq

from keyswarm.errors import ErrorCode, KeyswarmError, Unavailable
from keyswarm.transport import frames, zmq_sockets
from keyswarm.transport.codec import DEFAULT_LIMITS, Limits

#: Largest request id before wrapping back to 1 (ids are uint64; 0 means "unknown").
_MAX_REQUEST_ID = 2**63


class RequestFailed(KeyswarmError):
    """The node answered with an error. `code`, `retryable` and `redirect` are the reply's."""

    def __init__(self, info: frames.ErrorInfo):
        self.code: ErrorCode = info.code
        self.retryable = info.retryable
        self.redirect = info.redirect
        self.info = info
        super().__init__(f"{info.code}: {info.message}")


class PlainClient:
    """A blocking client of one node's client endpoint (no authentication)."""

    def __init__(
        self,
        endpoint: str,
        *,
        zmq_context: zmq.Context | None = None,
        limits: Limits = DEFAULT_LIMITS,
        timeout_s: float = 5.0,
    ):
        self.endpoint = endpoint
        self.limits = limits
        self.timeout_s = timeout_s
        self._owns_context = zmq_context is None
        self._context = zmq.Context() if zmq_context is None else zmq_context
        try:
            self._sock = zmq_sockets.client_dealer(self._context, endpoint, max_frame_bytes=limits.max_frame_bytes)
        except KeyswarmError:
            if self._owns_context:
                self._context.term()
            raise
        self._next_id = 1
        self._closed = False

    def request(self, msg: object, *, timeout_s: float | None = None) -> frames.Reply:
        """Send `msg`, wait for its reply (value or error). `Unavailable` on timeout."""
        if self._closed:
            raise Unavailable("the client is closed")
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        request_id = self._next_id
        self._next_id = request_id + 1 if request_id < _MAX_REQUEST_ID else 1
        data = frames.encode_request(request_id, msg)
        sock = self._sock
        try:
            # Without IMMEDIATE the DEALER queues while it connects; a full
            # queue means many requests already went unanswered.
            with zmq_sockets.zmq_errors(f"send to {self.endpoint}"):
                sock.send(data, zmq.NOBLOCK)
        except KeyswarmError as exc:
            raise Unavailable(f"cannot send to {self.endpoint}: {exc}") from exc
        while True:
            remaining_ms = (deadline - time.monotonic()) * 1000.0
            if remaining_ms <= 0 or not sock.poll(max(1, int(remaining_ms)), zmq.POLLIN):
                raise Unavailable(f"no reply from {self.endpoint} within {timeout_s:g} s")
            with zmq_sockets.zmq_errors(f"receive from {self.endpoint}"):
                raw = sock.recv(zmq.NOBLOCK)
            reply = frames.decode_reply(raw, limits=self.limits)
            if reply.request_id == request_id or (reply.request_id == 0 and reply.error is not None):
                return reply
            # A late reply to an earlier request that timed out: not ours.

    def call(self, msg: object, *, timeout_s: float | None = None) -> object:
        """The reply's value; raises `RequestFailed` for an error reply, `Unavailable` on timeout."""
        reply = self.request(msg, timeout_s=timeout_s)
        if reply.error is not None:
            raise RequestFailed(reply.error)
        return reply.value

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sock.close(linger=0)
        if self._owns_context:
            self._context.term()

    def __enter__(self) -> PlainClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
