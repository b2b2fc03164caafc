"""Automatic rotation of named keys: when each key of a partition is due, and the setting's bounds.

Owns `RotationSchedule` (the due keys of one `keys.<p>` actor, earliest
first), `rotation_due_ms` (when one key is due), `auto_request_id` (the
client request id of the rotation made for one due time) and
`check_auto_rotate_period` (the bounds `key.config` enforces). The keys
actor (keys.py) owns the timer and the writes; this module is pure.

Rules:
- A key is due when it exists, is not disabled, its `auto_rotate_period_s`
  is > 0, and its primary version was created at least that long ago by the
  version's stamp: due = physical ms of the primary's HLC + the period. The
  due time is derived from the folded state alone, never from when an actor
  started or last looked, so a restarted actor (state reloaded from the log)
  keeps the schedule, and every scan of one state agrees on it.
- A rotation changes the primary, so it moves its key's due time forward by
  a whole period from the new version's stamp. A manual `key.rotate` does
  the same (the schedule counts from the newest version, as Vault's
  `auto_rotate_period` does).
- One rotation per key and due time: the write carries
  `auto_request_id(name, due_ms)`, written by the reserved client
  `AUTO_ROTATE_CLIENT`, so the keys actor's client-request dedupe answers a
  repeated rotation for the same due time from the fold's applied-request
  records instead of writing again. The schedule also marks a key it handed
  out as in flight (`take`) until the actor gives it back (`release`), so a
  duplicated tick does not even queue a second write.
- Cheap with many keys: each key's due time is recomputed only when an event
  of that key is folded (`update`), and the earliest is read from a heap
  (entries made stale by an update are skipped and, past a bound, compacted
  away). Nothing scans the partition except `load`.
- Bounds: a period is 0 (off) or `MIN_AUTO_ROTATE_PERIOD_S` ..
  `MAX_AUTO_ROTATE_PERIOD_S`, finite. Events written before the bounds
  existed may hold other values; they are clamped into the bounds here, never
  refused (a durable event must fold).
- Determinism: the heap orders by `(ms, name)`; nothing iterates a set.
"""

from __future__ import annotations

import heapq
import math

from keyswarm.crypto.named_keys import KeyRequestError
from keyswarm.storage.fold import KeyState

#: Shortest automatic rotation period. Rotating more often buys nothing (a
#: version seals at most 2^32 messages, far beyond a minute of traffic) and
#: would grow each key by 1,440 versions a day.
MIN_AUTO_ROTATE_PERIOD_S = 60.0
#: Longest period: ten years (AWS KMS allows up to 2,560 days). Anything
#: longer is "never": use 0. The bound keeps due times far inside the HLC's
#: 48-bit millisecond range.
MAX_AUTO_ROTATE_PERIOD_S = 10 * 365 * 86_400.0
#: Who writes automatic rotations, for request fingerprints. The ':' keeps it
#: apart from every enrolled client's name (`[A-Za-z0-9][A-Za-z0-9._-]*`).
AUTO_ROTATE_CLIENT = "keyswarm:auto-rotate"
#: Default cap on automatic rotations a partition has outstanding at once
#: (queued or in flight to the storage actor).
MAX_AUTO_ROTATIONS_PER_TICK = 100
#: Seconds before a due key whose rotation failed (storage unavailable, timed out) is tried again.
AUTO_ROTATE_RETRY_S = 30.0


def check_auto_rotate_period(value: object) -> None:
    """KeyRequestError (BAD_REQUEST) unless `value` is 0 or a finite period within the bounds."""
    if type(value) is not int and type(value) is not float:  # bool is an int subclass: refused too
        raise KeyRequestError(f"auto_rotate_period_s must be a number of seconds, got {type(value).__name__}")
    if value == 0:
        return
    if not math.isfinite(value) or not MIN_AUTO_ROTATE_PERIOD_S <= value <= MAX_AUTO_ROTATE_PERIOD_S:
        raise KeyRequestError(
            f"auto_rotate_period_s must be 0 (off) or {MIN_AUTO_ROTATE_PERIOD_S:g}..{MAX_AUTO_ROTATE_PERIOD_S:g} "
            f"seconds, got {value!r}")


def rotation_due_ms(key: KeyState | None) -> int | None:
    """Unix ms at which `key` is due for an automatic rotation, or None (never: see the rules)."""
    if key is None or not key.exists or key.disabled:
        return None
    period = key.setting("auto_rotate_period_s")
    if not period > 0 or not math.isfinite(period):  # `not >` also takes NaN
        return None
    primary = key.primary
    if primary is None:
        return None
    period = min(max(period, MIN_AUTO_ROTATE_PERIOD_S), MAX_AUTO_ROTATE_PERIOD_S)
    return (primary.hlc >> 16) + math.ceil(period * 1000)


def auto_request_id(name: str, due_ms: int) -> bytes:
    """The client request id of the automatic rotation of `name` due at `due_ms`.

    Longer than a client's ids may be (it is never checked as one: the keys
    actor hashes it into the request fingerprint directly).
    """
    return b"auto:" + name.encode("utf-8") + b"@" + str(due_ms).encode("ascii")


class RotationSchedule:
    """The keys of one partition that rotate automatically, by when to look at them next.

    Each key with rotation on has a due time (`rotation_due_ms`) and, unless
    its rotation is in flight, a wake time: the due time, or later after a
    failed attempt (`release`).
    """

    __slots__ = ("_due", "_wake", "_heap")

    def __init__(self) -> None:
        self._due: dict[str, int] = {}  # name -> due ms, every key with rotation on
        self._wake: dict[str, int] = {}  # name -> ms to look at it; absent while its rotation is in flight
        self._heap: list[tuple[int, str]] = []  # (wake ms, name); stale when _wake disagrees

    def __len__(self) -> int:
        """Keys with automatic rotation on."""
        return len(self._due)

    def due_of(self, name: str) -> int | None:
        return self._due.get(name)

    def load(self, keys: dict[str, KeyState]) -> None:
        """Start over from a whole partition's keys (after a load)."""
        self._due.clear()
        self._wake.clear()
        self._heap.clear()
        for name in sorted(keys):
            due = rotation_due_ms(keys[name])
            if due is not None:
                self._due[name] = self._wake[name] = due
        self._heap = sorted((wake, name) for name, wake in self._wake.items())  # a sorted list is a heap

    def update(self, name: str, key: KeyState | None) -> None:
        """An event of `name` was folded: recompute its due time.

        An unchanged due time leaves the key as it was (in flight, or waiting
        for a retry); a new one makes it wake at that time.
        """
        due = rotation_due_ms(key)
        if due is None:
            self._due.pop(name, None)
            self._wake.pop(name, None)
            return
        if self._due.get(name) == due:
            return
        self._due[name] = due
        self._set_wake(name, due)

    def next_wake(self) -> int | None:
        """The earliest wake time of a key not in flight, or None."""
        heap, wake = self._heap, self._wake
        while heap and wake.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def take(self, now_ms: int, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` keys whose wake time has come, earliest first, as `(name, due ms)`;
        each is in flight until `release`d or updated to a new due time."""
        taken: list[tuple[str, int]] = []
        heap, wake = self._heap, self._wake
        while heap and len(taken) < limit:
            at, name = heap[0]
            if wake.get(name) != at:
                heapq.heappop(heap)  # stale
                continue
            if at > now_ms:
                break
            heapq.heappop(heap)
            del wake[name]
            taken.append((name, self._due[name]))
        return taken

    def release(self, name: str, due_ms: int, wake_ms: int) -> None:
        """The rotation of `name` for `due_ms` ended without moving its due time
        (it failed): look at it again at `wake_ms`. A key whose due time moved
        meanwhile, or whose rotation was turned off, is left as `update` set it."""
        if self._due.get(name) == due_ms and name not in self._wake:
            self._set_wake(name, max(due_ms, wake_ms))

    def _set_wake(self, name: str, wake_ms: int) -> None:
        self._wake[name] = wake_ms
        heapq.heappush(self._heap, (wake_ms, name))
        if len(self._heap) > 2 * len(self._wake) + 64:  # mostly stale entries: rebuild
            self._heap = sorted((at, n) for n, at in self._wake.items())
