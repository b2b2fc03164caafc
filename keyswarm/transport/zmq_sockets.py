"""ZeroMQ sockets as keyswarm uses them: construction, options, and error translation.

Owns: which socket types a node and a client open, every option set on them
(DESIGN section 5) and the one place where pyzmq exceptions become keyswarm
errors (the httpcore `map_exceptions` idea).

Rules:
- The `zmq.Context` is always passed in; nothing here creates or holds one.
- Options come from `TransportConfig` / `LimitsConfig`, never from literals,
  except where the option follows from the design (ROUTER_MANDATORY, IMMEDIATE).
- Outside this module and the driver's receive loop, nobody sees a
  `zmq.ZMQError`: `zmq_errors()` and `send_nowait()` raise `Busy` (queue full,
  retry later), `Unavailable` (peer absent or gone) or `TransportError`
  (anything else, e.g. a bind that failed), chained with `raise ... from`.
- Sends that may meet a slow reader use NOBLOCK: a full queue is an answer
  (BUSY, a counted drop), never a stalled loop.
"""

from __future__ import annotations

import errno

import zmq

from keyswarm.errors import Busy, KeyswarmError, TransportError, Unavailable

# errno values meaning "the other end is not there (any more)".
_GONE = frozenset({errno.EHOSTUNREACH, zmq.ETERM, zmq.ENOTSOCK, errno.ENOTCONN, errno.ECONNREFUSED})


def translate_zmq_error(exc: zmq.ZMQError, what: str) -> KeyswarmError:
    """The keyswarm error for a pyzmq error raised while doing `what`."""
    if isinstance(exc, zmq.Again) or exc.errno == errno.EAGAIN:
        return Busy(f"{what}: queue full")
    if exc.errno in _GONE:
        return Unavailable(f"{what}: {exc.strerror}")
    return TransportError(f"{what}: {exc.strerror} (errno {exc.errno})")


class zmq_errors:  # noqa: N801 - used like a function: `with zmq_errors("bind"):`
    """Context manager translating `zmq.ZMQError` raised inside it (see module rules).

    A class rather than `@contextmanager`: it is entered on send paths, and a
    generator-based manager costs several times more per use.
    """

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and isinstance(exc, zmq.ZMQError):
            raise translate_zmq_error(exc, self.what) from exc
        return False


# Plain ints: pyzmq's flag enums cost an `enum.__or__` per use, and
# `send_multipart`/`recv_multipart` add about 1.5 us per message on top of the
# frame sends themselves (measured with a ROUTER; the hot path does one each).
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
#: Parts at least this long are sent zero-copy (pyzmq's own copy threshold).
ZERO_COPY_FROM_BYTES = zmq.COPY_THRESHOLD


def send_nowait(sock: zmq.Socket, parts: list[bytes], what: str = "send") -> None:
    """Send a multipart message with NOBLOCK; raises `Busy` / `Unavailable` / `TransportError`.

    On a ROUTER a refusal (full queue, unknown identity) comes on the first
    frame, so nothing half-sent is left behind.
    """
    send = sock.send
    try:
        for part in parts[:-1]:
            send(part, _MORE_NOBLOCK)
        last = parts[-1]
        # A large part goes without a copy: ZeroMQ holds a reference until its I/O thread sent it.
        send(last, _NOBLOCK, copy=len(last) < ZERO_COPY_FROM_BYTES)
    except zmq.ZMQError as exc:
        raise translate_zmq_error(exc, what) from exc


def recv_parts(sock: zmq.Socket, keep: int = 3) -> list[bytes]:
    """One multipart message without blocking; raises `zmq.Again` when none waits.

    Only the first `keep` parts are kept (the rest are read and dropped): a
    message with a million parts is bad however it ends, and must not become
    a million-element list. Used only by receive loops, which stop on `Again`.
    """
    parts = [sock.recv(_NOBLOCK)]
    get = sock.get
    while get(_RCVMORE):
        part = sock.recv(_NOBLOCK)
        if len(parts) < keep:
            parts.append(part)
    return parts


def has_input(sock: zmq.Socket) -> bool:
    """True when a message is waiting on `sock`.

    ZeroMQ's notification FD is edge-triggered and is also reset by sends and
    by reading EVENTS: a reader that only waits for the FD after draining or
    sending can sleep forever with messages queued. Ask this after every drain
    and after every send on a socket that is also read.
    """
    return bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)


def bound_endpoint(sock: zmq.Socket) -> str:
    """The endpoint actually bound (a `:0` or `:*` port resolved), from LAST_ENDPOINT."""
    return sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def _bind(sock: zmq.Socket, endpoint: str, role: str) -> str:
    try:
        with zmq_errors(f"bind {role} socket to {endpoint}"):
            sock.bind(endpoint)
    except KeyswarmError:
        sock.close(linger=0)
        raise
    return bound_endpoint(sock)


def _common(sock: zmq.Socket, transport) -> None:
    sock.setsockopt(zmq.LINGER, transport.linger_ms)
    sock.setsockopt(zmq.SNDHWM, transport.sndhwm)
    sock.setsockopt(zmq.RCVHWM, transport.rcvhwm)


def client_router(context: zmq.Context, endpoint: str, *, transport, limits) -> tuple[zmq.Socket, str]:
    """The node's client-facing ROUTER, bound; returns `(socket, actual endpoint)`.

    MAXMSGSIZE is twice the frame limit: frames between the limit and 2x are
    read and answered TOO_LARGE (the client learns why); past 2x libzmq drops
    the connection before buffering the frame, which bounds the memory one
    client can pin.
    """
    sock = context.socket(zmq.ROUTER)
    _common(sock, transport)
    # A reply to a client whose queue is full or who disconnected raises
    # (EAGAIN / EHOSTUNREACH) instead of vanishing; the driver counts it.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * limits.max_frame_bytes)
    return sock, _bind(sock, endpoint, "client")


def peer_router(context: zmq.Context, endpoint: str, *, transport, limits) -> tuple[zmq.Socket, str]:
    """The node's peer ROUTER, bound; peers' DEALERs connect here with IDENTITY = node id."""
    sock = context.socket(zmq.ROUTER)
    _common(sock, transport)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A restarted peer reconnects under the same identity before the old
    # connection is noticed dead; without handover its frames would be refused.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * limits.max_frame_bytes)
    return sock, _bind(sock, endpoint, "peer")


def peer_dealer(context: zmq.Context, own_id: str, endpoint: str, *, transport) -> zmq.Socket:
    """A DEALER to one peer's peer ROUTER, identified by our node id.

    IMMEDIATE=1: messages are queued only on a completed connection, so a send
    to a peer that is down raises EAGAIN at once (the caller answers
    UNAVAILABLE) instead of piling up for a peer that may never come back.
    """
    sock = context.socket(zmq.DEALER)
    _common(sock, transport)
    sock.setsockopt(zmq.IDENTITY, own_id.encode())
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, transport.reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, transport.reconnect_ivl_max_ms)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, int(transport.connect_timeout_s * 1000))
    try:
        with zmq_errors(f"connect to peer at {endpoint}"):
            sock.connect(endpoint)
    except KeyswarmError:
        sock.close(linger=0)
        raise
    return sock


def client_dealer(context: zmq.Context, endpoint: str, *, max_frame_bytes: int) -> zmq.Socket:
    """A client's DEALER to a node's client ROUTER (LINGER 0: closing never blocks)."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_frame_bytes)
    try:
        with zmq_errors(f"connect to node at {endpoint}"):
            sock.connect(endpoint)
    except KeyswarmError:
        sock.close(linger=0)
        raise
    return sock
