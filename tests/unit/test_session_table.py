"""The session table (expiry, LRU, counters, memory at 100,000 sessions) and the
bound on half-open handshakes."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from keyswarm.crypto.session_keys import REPLAY_WINDOW
from keyswarm.crypto.session_table import (
    ClientIdentity,
    PendingHandshakes,
    Session,
    SessionExpired,
    SessionTable,
    SessionUnknown,
)
from keyswarm.errors import AuthError, ErrorCode

T0 = 1_772_366_400.0  # 2026-03-01T12:00:00Z


def identity(i: int = 0) -> ClientIdentity:
    return ClientIdentity(
        name=f"client-{i:06d}",
        fingerprint=i.to_bytes(4, "big") * 8,
        serial=(1 << 150) + i,
        issuer_fingerprint=b"\xee" * 32,
        not_after_s=T0 + 365 * 86400,
    )


def sid(i: int) -> bytes:
    return i.to_bytes(16, "big")


def session(i: int, expires_at_s: float = T0 + 3600, who: ClientIdentity | None = None) -> Session:
    key = i.to_bytes(4, "big") * 8
    return Session(sid(i), c2s=key, s2c=key[::-1], client=who or identity(i), expires_at_s=expires_at_s)


# --- lookups, expiry, counters -----------------------------------------------------


def test_get_finds_a_put_session_and_counts_a_hit() -> None:
    table = SessionTable(capacity=10, ttl_s=3600)
    s = session(1)
    table.put(s, T0)
    assert table.get(sid(1), T0 + 1) is s
    assert sid(1) in table and len(table) == 1
    assert (table.hits, table.misses) == (1, 0)


def test_an_unknown_session_is_a_miss_and_unauthenticated() -> None:
    table = SessionTable(capacity=10)
    with pytest.raises(SessionUnknown) as info:
        table.get(sid(9), T0)
    assert isinstance(info.value, AuthError) and info.value.code is ErrorCode.UNAUTHENTICATED
    assert table.misses == 1


def test_an_expired_session_is_dropped_counted_and_session_expired() -> None:
    table = SessionTable(capacity=10, ttl_s=3600)
    table.put(session(1, expires_at_s=T0 + 60), T0)
    table.get(sid(1), T0 + 59.9)
    with pytest.raises(SessionExpired) as info:
        table.get(sid(1), T0 + 60)
    assert info.value.code is ErrorCode.SESSION_EXPIRED and info.value.expired_at_s == T0 + 60
    assert table.expirations == 1 and len(table) == 0
    with pytest.raises(SessionUnknown):
        table.get(sid(1), T0 + 61)


def test_put_clamps_expiry_to_the_table_ttl() -> None:
    table = SessionTable(capacity=10, ttl_s=100)
    s = session(1, expires_at_s=T0 + 10_000)
    table.put(s, T0)
    assert s.expires_at_s == T0 + 100


def test_lru_eviction_at_capacity_spares_the_recently_used() -> None:
    table = SessionTable(capacity=3)
    for i in (1, 2, 3):
        table.put(session(i), T0)
    table.get(sid(1), T0)  # 2 is now the least recently used
    table.put(session(4), T0)
    assert sid(2) not in table and {sid(1), sid(3), sid(4)} <= set(table._sessions)
    assert table.evictions == 1
    table.put(session(3), T0)  # replacing a present session evicts nobody
    assert table.evictions == 1 and len(table) == 3


def test_sweep_drops_only_what_expired_and_counts_it() -> None:
    table = SessionTable(capacity=1000, ttl_s=3600)
    for i in range(100):
        table.put(session(i, expires_at_s=T0 + 10 * i), T0)
    dropped = table.sweep(T0 + 500)
    # Buckets are ttl/256 ~ 14 s wide: sweep reclaims whole buckets before now, never a live session.
    assert 30 <= dropped <= 50
    assert all(s.expires_at_s > T0 + 500 - 15 for s in table._sessions.values())
    assert all(table.peek(sid(i)) is not None for i in range(51, 100))
    assert table.expirations == dropped
    assert table.sweep(T0 + 10_000) == 100 - dropped and len(table) == 0


def test_a_session_replaced_with_a_later_expiry_survives_the_sweep_of_its_old_bucket() -> None:
    table = SessionTable(capacity=10, ttl_s=3600)
    table.put(session(1, expires_at_s=T0 + 10), T0)
    table.put(session(1, expires_at_s=T0 + 3000), T0)
    assert table.sweep(T0 + 100) == 0 and sid(1) in table


def test_stale_bucket_entries_stay_bounded_under_churn() -> None:
    table = SessionTable(capacity=10, ttl_s=3600)
    for i in range(20_000):
        table.put(session(i), T0)
    assert len(table) == 10 and table.evictions == 19_990
    assert table._bucketed <= 2 * 10 + 1024


def test_drop_where_closes_a_revoked_clients_sessions() -> None:
    table = SessionTable(capacity=10)
    mallory = identity(7)
    for i in range(5):
        table.put(session(i, who=mallory if i % 2 else None), T0)
    assert table.drop_where(lambda s: s.client.fingerprint == mallory.fingerprint) == 2
    assert len(table) == 3
    assert table.remove(sid(0)) and not table.remove(sid(0))


def test_stats_snapshot() -> None:
    table = SessionTable(capacity=2, ttl_s=10)
    for i in range(3):
        table.put(session(i, expires_at_s=T0 + 5), T0)
    table.get(sid(2), T0)
    with pytest.raises(SessionUnknown):
        table.get(sid(0), T0)
    with pytest.raises(SessionExpired):
        table.get(sid(1), T0 + 6)
    stats = table.stats()
    assert (stats.size, stats.capacity, stats.hits, stats.misses, stats.evictions, stats.expirations) == (
        1, 2, 1, 1, 1, 1,
    )


def test_bad_table_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        SessionTable(capacity=0)
    with pytest.raises(ValueError):
        SessionTable(ttl_s=0)
    with pytest.raises(ValueError):
        PendingHandshakes(per_peer=0)


# --- memory ------------------------------------------------------------------------

N = 100_000


def bytes_per_session(warm: bool) -> float:
    """tracemalloc bytes per session for N sessions of N distinct clients.

    `warm`: each session received frames past the window, so its bitmap is a
    full 1,024-bit int (the steady state of a busy session)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = SessionTable(capacity=N, ttl_s=3600)
        for i in range(N):
            s = session(i, expires_at_s=T0 + 1800 + (i % 3600) / 2)
            if warm:
                s.highest = 5000 + i
                s.bitmap = (1 << REPLAY_WINDOW) - 1
                s.next_counter = 5000 + i
            table.put(s, T0)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == N
    return used / N


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
def test_100k_sessions_fit_in_under_1_kib_each(warm: bool, capsys: pytest.CaptureFixture[str]) -> None:
    per_session = bytes_per_session(warm)
    with capsys.disabled():
        print(f"\n  session table: {per_session:.0f} B/session ({'warm' if warm else 'fresh'}, {N:,} sessions)")
    assert per_session < 1024


# --- half-open handshakes -------------------------------------------------------------


class Half:
    """Stands in for a NodeHandshake: the table never looks inside."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n


def test_take_returns_a_pending_handshake_once() -> None:
    pending = PendingHandshakes(capacity=10, per_peer=4, ttl_s=30)
    pending.put(b"peer", sid(1), Half(1), 0.0)
    got = pending.take(sid(1), 1.0)
    assert isinstance(got, Half) and got.n == 1
    assert pending.take(sid(1), 1.0) is None
    assert (pending.taken, pending.unknown, len(pending)) == (1, 1, 0)


def test_twenty_thousand_half_open_from_one_peer_hold_only_per_peer_and_spare_others() -> None:
    pending = PendingHandshakes(capacity=1000, per_peer=8, ttl_s=30)
    pending.put(b"honest", sid(0), Half(0), 0.0)
    for i in range(1, 20_001):
        pending.put(b"flood", sid(i), Half(i), 0.0)
    assert len(pending) == 1 + 8
    stats = pending.stats()
    assert stats.evicted_per_peer == 20_000 - 8 and stats.evicted_capacity == 0 and stats.peers == 2
    assert pending.take(sid(0), 1.0) is not None  # the other client's handshake survived the flood
    assert pending.take(sid(20_000), 1.0) is not None
    assert pending.take(sid(1), 1.0) is None


def test_the_overall_capacity_evicts_the_oldest_of_anyone() -> None:
    pending = PendingHandshakes(capacity=100, per_peer=8, ttl_s=30)
    for i in range(1000):
        pending.put(f"peer{i}".encode(), sid(i), Half(i), 0.0)
    assert len(pending) == 100 and pending.evicted_capacity == 900
    assert pending.take(sid(899), 0.0) is None and pending.take(sid(900), 0.0) is not None
    assert pending.stats().peers == 99


def test_capacity_eviction_of_the_same_peer_keeps_its_queue_consistent() -> None:
    pending = PendingHandshakes(capacity=2, per_peer=5, ttl_s=30)
    for i in range(10):
        pending.put(b"p", sid(i), Half(i), 0.0)
    assert len(pending) == 2 and len(pending._by_peer[b"p"]) == 2
    assert pending.take(sid(9), 0.0) is not None and pending.take(sid(8), 0.0) is not None
    assert not pending._by_peer


def test_half_open_handshakes_expire() -> None:
    pending = PendingHandshakes(capacity=10, per_peer=4, ttl_s=30)
    pending.put(b"a", sid(1), Half(1), 0.0)
    pending.put(b"a", sid(2), Half(2), 10.0)
    assert pending.take(sid(1), 30.0) is None and pending.expired == 1
    assert pending.expire(40.0) == 1 and len(pending) == 0 and not pending._by_peer
    pending.put(b"b", sid(3), Half(3), 100.0)
    pending.put(b"b", sid(4), Half(4), 131.0)  # the put itself expires the stale front
    assert len(pending) == 1 and pending.expired == 3


def test_a_repeated_handshake_id_is_a_local_bug() -> None:
    pending = PendingHandshakes()
    pending.put(b"a", sid(1), Half(1), 0.0)
    with pytest.raises(ValueError, match="already pending"):
        pending.put(b"b", sid(1), Half(2), 0.0)
