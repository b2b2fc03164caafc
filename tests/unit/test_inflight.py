"""The node's table of client requests in flight (pure: callers pass `now`)."""

from __future__ import annotations

import logging

import pytest

from keyswarm.errors import ErrorCode
from keyswarm.node.client_intake import InflightRequests, RateLimitedLog


def table(per_client: int = 2, total: int = 4, deadline_s: float = 1.0) -> InflightRequests:
    return InflightRequests(per_client_max=per_client, total_max=total, deadline_s=deadline_s)


def test_admits_until_the_per_client_cap_then_busy() -> None:
    t = table()
    for rid in (1, 2):
        assert t.refusal(b"a", rid) is None
        t.add(b"a", rid, now=0.0)
    code, message = t.refusal(b"a", 3)
    assert code is ErrorCode.BUSY and "from this client" in message
    assert t.refusal(b"b", 1) is None  # another client is unaffected


def test_total_cap_applies_across_clients() -> None:
    t = table(per_client=10, total=3)
    for identity in (b"a", b"b", b"c"):
        t.add(identity, 1, now=0.0)
    code, message = t.refusal(b"d", 1)
    assert code is ErrorCode.BUSY and "too many" in message


def test_duplicate_request_id_in_flight_is_a_bad_request() -> None:
    t = table()
    t.add(b"a", 7, now=0.0)
    code, _ = t.refusal(b"a", 7)
    assert code is ErrorCode.BAD_REQUEST


def test_finish_frees_the_slot_and_forgets_idle_clients() -> None:
    t = table()
    t.add(b"a", 1, now=0.0)
    assert t.clients == 1
    assert t.finish(b"a", 1)
    assert not t.finish(b"a", 1), "a second answer must not free a slot twice"
    assert len(t) == 0 and t.clients == 0


def test_expire_yields_oldest_first_and_only_past_deadline() -> None:
    t = table(per_client=10, total=10, deadline_s=1.0)
    t.add(b"a", 1, now=0.0)
    t.add(b"b", 1, now=0.5)
    t.add(b"a", 2, now=0.9)
    t.finish(b"b", 1)
    assert list(t.expire(now=0.95)) == []
    assert list(t.expire(now=1.6)) == [(b"a", 1)]
    assert list(t.expire(now=5.0)) == [(b"a", 2)]
    assert len(t) == 0 and t.clients == 0


def test_take_all_empties_the_table() -> None:
    t = table()
    t.add(b"a", 1, now=0.0)
    t.add(b"b", 2, now=0.0)
    assert sorted(t.take_all()) == [(b"a", 1), (b"b", 2)]
    assert len(t) == 0 and t.clients == 0


@pytest.mark.parametrize("bad", [dict(per_client_max=0), dict(total_max=0), dict(deadline_s=0.0)])
def test_nonsense_bounds_are_refused(bad: dict) -> None:
    kwargs = dict(per_client_max=1, total_max=1, deadline_s=1.0) | bad
    with pytest.raises(AssertionError):
        InflightRequests(**kwargs)


def test_rate_limited_log_suppresses_repeats_and_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("keyswarm.test.ratelog")
    ratelog = RateLimitedLog(logger, interval_s=3600.0)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for i in range(100):
            ratelog.warning("bad", "bad frame %d", i)
        ratelog.warning("other", "other kind")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad frame 0", "other kind"]


def test_session_counters_and_plain_request_ids_never_collide() -> None:
    t = InflightRequests(per_client_max=3, total_max=10, deadline_s=1.0)
    session_a, session_b = b"a" * 16, b"b" * 16
    t.add(b"c", 5, now=0.0)  # a plain request (a handshake, say)
    assert t.refusal(b"c", 5, session_a) is None, "counter 5 of a session is another slot"
    t.add(b"c", 5, now=0.0, session=session_a)
    assert t.refusal(b"c", 5, session_b) is None, "and so is counter 5 of another session"
    code, message = t.refusal(b"c", 5, session_a)
    assert code is ErrorCode.BAD_REQUEST and "counter 5" in message
    t.add(b"c", 6, now=0.0, session=session_b)
    code, _ = t.refusal(b"c", 7, session_a)
    assert code is ErrorCode.BUSY, "the per-client cap counts every kind"
    assert t.finish(b"c", 5, session_a) and t.finish(b"c", 5) and not t.finish(b"c", 5, session_b)
    assert list(t.expire(now=5.0)) == [(b"c", 6, session_b)]
