"""The node's session table and its table of half-open handshakes.

Owns: `ClientIdentity` (who a session or ticket belongs to), `Session` (a
node-side `SessionChannel` with its owner and expiry), `SessionTable`
(session id -> Session: O(1) get and put, expiry, LRU eviction, counters),
`PendingHandshakes` (handshake id -> half-open handshake, bounded per peer
and overall), and the two lookup errors `SessionUnknown` / `SessionExpired`.

Rules:
- Pure: `now` is always an argument. `SessionTable` speaks the wall clock
  (seconds since the epoch), because a session's expiry is told to the
  client and carried in tickets; `PendingHandshakes` takes any clock, used
  consistently (the sessions actor uses its monotonic one).
- Expiry is exact at lookup: `get` never returns a session past its
  `expires_at_s`. `sweep(now)` reclaims expired sessions nobody asks for;
  it walks coarse time buckets (bucket_s wide), so its cost is the number
  of sessions that expired, not the table size. The buckets hold only
  session ids (8 bytes per entry; the bytes object is shared with the
  table); ids of sessions evicted or replaced before they expired stay in
  their bucket until it is swept, and when those stale entries pass twice
  the capacity the buckets are rebuilt, so memory stays bounded under churn.
- Eviction at capacity is least-recently-used (an OrderedDict: `get` moves
  to the end, `put` pops from the front). An evicted client gets
  UNAUTHENTICATED on its next frame and resumes with its ticket.
- `put` clamps a session's expiry to now + ttl_s: the handshake computes
  expiry from the same configured ttl, and the clamp is the backstop that
  no session outlives it whoever built it.
- Half-open handshakes are bounded twice: `per_peer` (the gateway's name
  for the sender: a ZeroMQ routing id) drops that peer's oldest, so one
  client opening 20,000 handshakes holds at most `per_peer` entries and
  evicts nobody else; `capacity` drops the oldest overall. Both evictions
  are counted, and an evicted handshake's auth gets UNAUTHENTICATED.
- Counters are plain ints on the table (hits, misses, evictions,
  expirations); `stats()` snapshots them for `stats` and the monitor.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from keyswarm.crypto.session_keys import DEFAULT_SUITE, SessionChannel
from keyswarm.errors import AuthError, ErrorCode

DEFAULT_CAPACITY = 100_000
DEFAULT_TTL_S = 3600.0
DEFAULT_PENDING_CAPACITY = 10_000
DEFAULT_PENDING_PER_PEER = 8
DEFAULT_PENDING_TTL_S = 30.0  # a client YubiKey with touch policy may take a while to sign
#: Expiry buckets per ttl: sweep granularity is ttl_s / this (at least one second).
_BUCKETS_PER_TTL = 256


class SessionUnknown(AuthError):
    """No such session here: never opened, evicted, or closed. Open or resume one."""

    def __init__(self, session_id: bytes):
        self.session_id = session_id
        super().__init__(f"unknown session {session_id.hex()}: open a new session or resume one with a ticket")


class SessionExpired(AuthError):
    """The session is past its expiry. Resume it with its ticket, or open a new one."""

    code = ErrorCode.SESSION_EXPIRED

    def __init__(self, session_id: bytes, expired_at_s: float):
        self.session_id = session_id
        self.expired_at_s = expired_at_s
        super().__init__(f"session {session_id.hex()} expired at {expired_at_s:.3f}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientIdentity:
    """A verified client: from its certificate chain, or from a ticket that carried it."""

    name: str
    fingerprint: bytes  # SHA-256 of the client certificate's DER
    serial: int  # the certificate serial (revocations may name it)
    issuer_fingerprint: bytes  # SHA-256 of the issuing certificate (root or admin) DER
    not_after_s: float  # the certificate's notAfter: no session or ticket outlives it


class Session(SessionChannel):
    """A node-side session: the channel (node end), its client, its expiry."""

    __slots__ = ("client", "expires_at_s")

    def __init__(self, session_id: bytes, *, c2s: bytes, s2c: bytes, client: ClientIdentity, expires_at_s: float,
                 suite: int = DEFAULT_SUITE):
        super().__init__(session_id, c2s=c2s, s2c=s2c, client_side=False, suite=suite)
        self.client = client
        self.expires_at_s = expires_at_s

    def __repr__(self) -> str:
        return f"Session({self.session_id.hex()}, client={self.client.name!r}, expires_at_s={self.expires_at_s})"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionTableStats:
    size: int
    capacity: int
    hits: int
    misses: int
    evictions: int
    expirations: int


class SessionTable:
    """session id -> Session, at most `capacity`, none past its expiry."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, ttl_s: float = DEFAULT_TTL_S):
        if type(capacity) is not int or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
        self.capacity = capacity
        self.ttl_s = float(ttl_s)
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()
        self._bucket_s = max(1.0, self.ttl_s / _BUCKETS_PER_TTL)
        self._buckets: dict[int, list[bytes]] = {}
        self._bucket_keys: list[int] = []  # a heap of the keys of _buckets
        self._bucketed = 0  # entries across all buckets, live or stale
        self.hits = self.misses = self.evictions = self.expirations = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def put(self, session: Session, now: float) -> None:
        """Add (or replace) `session` as the most recently used; evicts the least if full."""
        limit = now + self.ttl_s
        if session.expires_at_s > limit:
            session.expires_at_s = limit
        sessions = self._sessions
        sid = session.session_id
        if sid in sessions:
            sessions.move_to_end(sid)
        elif len(sessions) >= self.capacity:
            sessions.popitem(last=False)
            self.evictions += 1
        sessions[sid] = session
        self._bucket_add(sid, session.expires_at_s)

    def get(self, session_id: bytes, now: float) -> Session:
        """The live session `session_id`, now the most recently used.

        `SessionUnknown` (a miss) or `SessionExpired` (counted, and dropped).
        """
        session = self._sessions.get(session_id)
        if session is None:
            self.misses += 1
            raise SessionUnknown(session_id)
        if session.expires_at_s <= now:
            del self._sessions[session_id]
            self.expirations += 1
            raise SessionExpired(session_id, session.expires_at_s)
        self._sessions.move_to_end(session_id)
        self.hits += 1
        return session

    def peek(self, session_id: bytes) -> Session | None:
        """The session if present (expired or not), without touching order or counters."""
        return self._sessions.get(session_id)

    def remove(self, session_id: bytes) -> bool:
        """Close a session; False if it was not here."""
        return self._sessions.pop(session_id, None) is not None

    def drop_where(self, predicate: Callable[[Session], bool]) -> int:
        """Close every session `predicate` picks (a revoked client's): O(size), for rare events."""
        doomed = [sid for sid, session in self._sessions.items() if predicate(session)]
        for sid in doomed:
            del self._sessions[sid]
        return len(doomed)

    def sweep(self, now: float) -> int:
        """Drop sessions that expired in buckets wholly before `now`; returns how many."""
        current = int(now // self._bucket_s)
        keys, buckets, sessions = self._bucket_keys, self._buckets, self._sessions
        dropped = 0
        while keys and keys[0] < current:
            ids = buckets.pop(heapq.heappop(keys))
            self._bucketed -= len(ids)
            for sid in ids:
                session = sessions.get(sid)
                # A replaced session under the same id sits in its own, later bucket too.
                if session is not None and session.expires_at_s <= now:
                    del sessions[sid]
                    dropped += 1
        self.expirations += dropped
        return dropped

    def stats(self) -> SessionTableStats:
        return SessionTableStats(
            size=len(self._sessions),
            capacity=self.capacity,
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
            expirations=self.expirations,
        )

    def _bucket_add(self, sid: bytes, expires_at_s: float) -> None:
        key = int(expires_at_s // self._bucket_s)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            heapq.heappush(self._bucket_keys, key)
        bucket.append(sid)
        self._bucketed += 1
        if self._bucketed > 2 * self.capacity + 1024:
            self._rebuild_buckets()

    def _rebuild_buckets(self) -> None:
        # Stale ids (evicted, removed, replaced) piled up: keep one entry per live session.
        self._buckets, self._bucket_keys, self._bucketed = {}, [], 0
        for sid, session in self._sessions.items():
            key = int(session.expires_at_s // self._bucket_s)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = []
            bucket.append(sid)
            self._bucketed += 1
        self._bucket_keys = list(self._buckets)
        heapq.heapify(self._bucket_keys)


# --- half-open handshakes -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingStats:
    size: int
    peers: int
    started: int
    taken: int
    expired: int
    evicted_per_peer: int
    evicted_capacity: int
    unknown: int


class PendingHandshakes:
    """handshake id -> a half-open handshake, bounded per peer and overall, each for ttl_s."""

    def __init__(
        self,
        capacity: int = DEFAULT_PENDING_CAPACITY,
        per_peer: int = DEFAULT_PENDING_PER_PEER,
        ttl_s: float = DEFAULT_PENDING_TTL_S,
    ):
        if type(capacity) is not int or capacity < 1 or type(per_peer) is not int or per_peer < 1:
            raise ValueError(f"capacity and per_peer must be positive ints, got {capacity!r}, {per_peer!r}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
        self.capacity, self.per_peer, self.ttl_s = capacity, per_peer, float(ttl_s)
        # Insertion order is deadline order (one ttl, a clock that does not go back),
        # so the front of _by_id is always the next to expire and the oldest to evict.
        self._by_id: OrderedDict[bytes, tuple[object, float, object]] = OrderedDict()
        self._by_peer: dict[object, deque[bytes]] = {}
        self.started = self.taken = self.expired = self.unknown = 0
        self.evicted_per_peer = self.evicted_capacity = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, peer: object, handshake_id: bytes, handshake: object, now: float) -> None:
        """Hold `handshake` until its auth arrives (or ttl_s passes, or it is evicted)."""
        self._expire_front(now)
        if handshake_id in self._by_id:
            raise ValueError("handshake id already pending (entropy repeated?)")
        queue = self._by_peer.get(peer)
        if queue is None:
            queue = self._by_peer[peer] = deque()
        elif len(queue) >= self.per_peer:
            del self._by_id[queue.popleft()]
            self.evicted_per_peer += 1
        if len(self._by_id) >= self.capacity:
            oldest, (oldest_peer, _, _) = self._by_id.popitem(last=False)
            self._forget(oldest_peer, oldest)
            self.evicted_capacity += 1
            if oldest_peer == peer and peer not in self._by_peer:
                queue = self._by_peer[peer] = deque()
        self._by_id[handshake_id] = (peer, now + self.ttl_s, handshake)
        queue.append(handshake_id)
        self.started += 1

    def take(self, handshake_id: bytes, now: float) -> object | None:
        """Remove and return the handshake, or None if unknown, evicted or expired."""
        entry = self._by_id.pop(handshake_id, None)
        if entry is None:
            self.unknown += 1
            return None
        peer, deadline, handshake = entry
        self._forget(peer, handshake_id)
        if deadline <= now:
            self.expired += 1
            return None
        self.taken += 1
        return handshake

    def expire(self, now: float) -> int:
        """Drop every handshake past its deadline; returns how many."""
        before = self.expired
        self._expire_front(now)
        return self.expired - before

    def stats(self) -> PendingStats:
        return PendingStats(
            size=len(self._by_id),
            peers=len(self._by_peer),
            started=self.started,
            taken=self.taken,
            expired=self.expired,
            evicted_per_peer=self.evicted_per_peer,
            evicted_capacity=self.evicted_capacity,
            unknown=self.unknown,
        )

    def _expire_front(self, now: float) -> None:
        by_id = self._by_id
        while by_id:
            hid, (peer, deadline, _) = next(iter(by_id.items()))
            if deadline > now:
                return
            del by_id[hid]
            self._forget(peer, hid)
            self.expired += 1

    def _forget(self, peer: object, handshake_id: bytes) -> None:
        queue = self._by_peer.get(peer)
        if queue is None:
            return
        try:
            queue.remove(handshake_id)  # at most per_peer long
        except ValueError:
            pass
        if not queue:
            del self._by_peer[peer]
