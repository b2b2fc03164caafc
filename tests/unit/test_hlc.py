"""The hybrid logical clock: packing, the tick and observe rules, overflow and drift refusal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyswarm.errors import KeyswarmError
from keyswarm.storage.hlc import (
    HLC_MAX,
    LOGICAL_MASK,
    PHYSICAL_MAX_MS,
    HlcDriftError,
    format_hlc,
    observe,
    pack_hlc,
    tick,
    unpack_hlc,
)

T = 1_700_000_000_000  # a wall clock in ms
physical = st.integers(T - 100_000, T + 100_000)
logical = st.integers(0, LOGICAL_MASK)
clocks = st.builds(pack_hlc, physical, logical)


def test_pack_layout() -> None:
    assert pack_hlc(T, 5) == (T << 16) | 5
    assert unpack_hlc(pack_hlc(T, 5)) == (T, 5)
    assert format_hlc(pack_hlc(T, 5)) == f"{T}.5"
    assert pack_hlc(PHYSICAL_MAX_MS, LOGICAL_MASK) == HLC_MAX == 2**64 - 1


@pytest.mark.parametrize(("ms", "lg"), [(-1, 0), (PHYSICAL_MAX_MS + 1, 0), (0, -1), (0, LOGICAL_MASK + 1)])
def test_pack_refuses_out_of_range(ms: int, lg: int) -> None:
    with pytest.raises(ValueError):
        pack_hlc(ms, lg)


def test_tick_follows_the_wall_clock_when_it_is_ahead() -> None:
    assert tick(pack_hlc(T, 7), T + 1) == pack_hlc(T + 1, 0)


def test_tick_counts_within_a_millisecond() -> None:
    assert tick(pack_hlc(T, 7), T) == pack_hlc(T, 8)


def test_tick_stays_monotonic_when_the_wall_clock_goes_backwards() -> None:
    last = pack_hlc(T, 3)
    assert tick(last, T - 5_000) == pack_hlc(T, 4)


def test_logical_overflow_carries_into_the_millisecond() -> None:
    assert tick(pack_hlc(T, LOGICAL_MASK), T) == pack_hlc(T + 1, 0)
    assert observe(pack_hlc(T, LOGICAL_MASK), pack_hlc(T, 2), T) == pack_hlc(T + 1, 0)


def test_observe_rules() -> None:
    # Wall clock ahead of both: reset the counter.
    assert observe(pack_hlc(T, 4), pack_hlc(T, 9), T + 1) == pack_hlc(T + 1, 0)
    # Same millisecond everywhere: max counter + 1.
    assert observe(pack_hlc(T, 4), pack_hlc(T, 9), T) == pack_hlc(T, 10)
    assert observe(pack_hlc(T, 9), pack_hlc(T, 4), T) == pack_hlc(T, 10)
    # Remote ahead (within the drift bound): take its millisecond, its counter + 1.
    assert observe(pack_hlc(T, 4), pack_hlc(T + 10, 2), T) == pack_hlc(T + 10, 3)
    # Our own clock ahead of the remote and the wall: our counter + 1.
    assert observe(pack_hlc(T + 10, 4), pack_hlc(T, 9), T) == pack_hlc(T + 10, 5)


def test_observe_refuses_a_remote_clock_too_far_ahead() -> None:
    last = pack_hlc(T, 1)
    with pytest.raises(HlcDriftError) as info:
        observe(last, pack_hlc(T + 60_001, 0), T)
    assert info.value.drift_ms == 60_001 and info.value.max_drift_ms == 60_000
    assert "60001 ms ahead" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyswarmError)
    # Exactly at the bound is accepted; the bound is a parameter.
    assert observe(last, pack_hlc(T + 60_000, 0), T) == pack_hlc(T + 60_000, 1)
    with pytest.raises(HlcDriftError):
        observe(last, pack_hlc(T + 11, 0), T, max_drift_ms=10)


def test_a_remote_clock_far_behind_is_fine() -> None:
    assert observe(pack_hlc(T, 1), pack_hlc(T - 3_600_000, 0), T) == pack_hlc(T, 2)


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, True])
def test_bad_inputs_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        tick(bad, T)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        observe(0, bad, T)  # type: ignore[arg-type]


def test_the_end_of_time_is_an_error_not_a_wrap() -> None:
    with pytest.raises(ValueError, match="overflow"):
        tick(HLC_MAX, PHYSICAL_MAX_MS)


@given(last=clocks, wall=st.lists(physical, min_size=1, max_size=50))
def test_tick_is_strictly_monotonic_whatever_the_wall_clock_does(last: int, wall: list[int]) -> None:
    for ms in wall:
        new = tick(last, ms)
        assert new > last
        assert unpack_hlc(new)[0] >= ms  # never behind the wall clock
        last = new


@given(last=clocks, remote=clocks, ms=physical)
def test_observe_is_above_both_clocks_and_not_behind_the_wall(last: int, remote: int, ms: int) -> None:
    try:
        new = observe(last, remote, ms)
    except HlcDriftError:
        assert unpack_hlc(remote)[0] - ms > 60_000
        return
    assert new > last and new > remote
    assert unpack_hlc(new)[0] >= ms
    # No further ahead than needed: the greatest input, plus one step.
    assert new <= max(last + 1, remote + 1, pack_hlc(ms, 0))


@given(last=clocks, remote=clocks, ms=physical)
def test_observe_is_symmetric_in_its_two_clocks(last: int, remote: int, ms: int) -> None:
    assert observe(last, remote, ms, max_drift_ms=10**9) == observe(remote, last, ms, max_drift_ms=10**9)


@given(last=clocks, ms=physical)
def test_tick_is_observe_of_nothing_newer(last: int, ms: int) -> None:
    assert tick(last, ms) == observe(last, 0, ms)
