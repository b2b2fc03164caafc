"""The hybrid logical clock (HLC): the order every event of the log carries.

Owns the packed HLC value and its two transitions, `tick` (a local event)
and `observe` (a remote event arrived), after Kulkarni et al., "Logical
Physical Clocks and Consistent Snapshots in Globally Distributed Databases"
(2014).

Rules:
- An HLC is one unsigned 64-bit int: `(physical_ms << 16) | logical`. The
  upper 48 bits are Unix milliseconds (good until the year 10889), the lower
  16 a counter of events within one millisecond. Packed, plain int order is
  the HLC order, and a value fits a msgpack uint64 and an LMDB key.
- Pure: the wall clock is an argument (`physical_ms`), read by the caller
  (`ctx` in an actor), never here.
- `tick` and `observe` never return a value at or below `last`: the clock is
  monotonic even when the wall clock steps backwards.
- Logical overflow carries into the millisecond: after logical 0xFFFF comes
  `(physical_ms + 1, 0)`. This is exactly `hlc + 1` on the packed value, so
  the carry needs no code of its own; the clock then runs at most a few ms
  ahead of the wall clock until the wall clock catches up.
- A remote HLC more than `max_drift_ms` ahead of our wall clock is refused
  (`HlcDriftError`) and changes nothing: one peer with a broken or hostile
  clock must not drag every node's clock into the future, where every later
  last-writer-wins comparison would favour it.

Why the packed formulas below equal the paper's rules: with
`l = max(l_last, l_remote, pt)`, the paper keeps the counter of whichever
inputs have physical part `l` and adds one, or resets it to 0 when only the
wall clock reached `l`. On packed values that is `max(last, remote) + 1`
when that maximum already has physical part >= pt, else `pt << 16`.
"""

from __future__ import annotations

from keyswarm.errors import KeyswarmError

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
PHYSICAL_MAX_MS = (1 << (64 - LOGICAL_BITS)) - 1
HLC_MAX = (1 << 64) - 1
#: Default refusal threshold for remote clocks ahead of ours.
DEFAULT_MAX_DRIFT_MS = 60_000


class HlcDriftError(KeyswarmError, ValueError):
    """A remote HLC is further ahead of our wall clock than `max_drift_ms`.

    The remote event is not observed (our clock is unchanged). A caller
    receiving peer traffic rejects or parks the event and reports the peer;
    the peer's own clock is what needs fixing.
    """

    def __init__(self, remote: int, physical_ms: int, max_drift_ms: int):
        self.remote = remote
        self.physical_ms = physical_ms
        self.max_drift_ms = max_drift_ms
        self.drift_ms = (remote >> LOGICAL_BITS) - physical_ms
        super().__init__(
            f"remote HLC {format_hlc(remote)} is {self.drift_ms} ms ahead of the local clock "
            f"({physical_ms} ms); at most {max_drift_ms} ms is accepted"
        )


def pack_hlc(physical_ms: int, logical: int) -> int:
    """The HLC of `(physical_ms, logical)`."""
    if not 0 <= physical_ms <= PHYSICAL_MAX_MS:
        raise ValueError(f"physical_ms must be in 0..{PHYSICAL_MAX_MS}, got {physical_ms}")
    if not 0 <= logical <= LOGICAL_MASK:
        raise ValueError(f"logical must be in 0..{LOGICAL_MASK}, got {logical}")
    return (physical_ms << LOGICAL_BITS) | logical


def unpack_hlc(hlc: int) -> tuple[int, int]:
    """`(physical_ms, logical)` of an HLC."""
    _check_hlc(hlc, "hlc")
    return hlc >> LOGICAL_BITS, hlc & LOGICAL_MASK


def format_hlc(hlc: int) -> str:
    """`1700000000000.5`: physical ms and logical, for logs and errors."""
    return f"{hlc >> LOGICAL_BITS}.{hlc & LOGICAL_MASK}"


def tick(last: int, physical_ms: int) -> int:
    """The HLC of a new local event, given the previous one and the wall clock."""
    _check_hlc(last, "last")
    now = _wall(physical_ms)
    new = last + 1 if last >= now else now
    return _bounded(new)


def observe(last: int, remote: int, physical_ms: int, *, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS) -> int:
    """The HLC after receiving an event stamped `remote`: above both clocks.

    Raises `HlcDriftError` (a `ValueError`) when `remote` is more than
    `max_drift_ms` ahead of `physical_ms`; `last` is then still valid.
    """
    _check_hlc(last, "last")
    _check_hlc(remote, "remote")
    now = _wall(physical_ms)
    if max_drift_ms < 0:
        raise ValueError(f"max_drift_ms must be >= 0, got {max_drift_ms}")
    if (remote >> LOGICAL_BITS) - physical_ms > max_drift_ms:
        raise HlcDriftError(remote, physical_ms, max_drift_ms)
    top = last if last >= remote else remote
    new = top + 1 if top >= now else now
    return _bounded(new)


def _check_hlc(value: int, name: str) -> None:
    if type(value) is not int or not 0 <= value <= HLC_MAX:
        raise ValueError(f"{name} must be an int in 0..2**64-1, got {value!r}")


def _wall(physical_ms: int) -> int:
    if type(physical_ms) is not int or not 0 <= physical_ms <= PHYSICAL_MAX_MS:
        raise ValueError(f"physical_ms must be an int in 0..{PHYSICAL_MAX_MS}, got {physical_ms!r}")
    return physical_ms << LOGICAL_BITS


def _bounded(new: int) -> int:
    # Only reachable by a clock already at the end of time (year 10889).
    if new > HLC_MAX:
        raise ValueError("HLC overflow: the clock is at its maximum value")
    return new
