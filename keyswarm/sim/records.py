"""What a simulation records: each client request's outcome, the run's counters, and the trace.

Owns `ClientOutcome` (one request: reply or timeout, virtual latency),
`RequestTimeout`, `SimStats`, and `Trace`: one line per event,
`<virtual time, 9 decimals> <node|client|-> <kind> <description>`, hashed
as it grows so two runs compare by digest.

Rules:
- Trace descriptions are `repr`s of frozen dataclasses, cut at
  `TRACE_REPR_MAX` characters plus a CRC of the whole repr, so the digest
  still covers every byte while a megabyte echo payload does not fill memory.
- The trace holds only what the run decided (virtual times, seeded draws,
  message contents): never a wall-clock reading, an id() or a hash of a str,
  so one seed gives one digest whatever PYTHONHASHSEED says.
- `trace="full"` keeps the lines and the digest, `"digest"` only the running
  SHA-256, `"off"` neither (long runs).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

from keyswarm.errors import Unavailable
from keyswarm.transport import frames

TRACE_MODES = ("full", "digest", "off")
#: Longer message reprs are cut in trace lines (echo payloads may be megabytes).
TRACE_REPR_MAX = 160


class RequestTimeout(Unavailable):
    """`Simulation.request` got no reply within its virtual timeout."""

    def __init__(self, outcome: ClientOutcome, hint: str):
        self.outcome = outcome
        super().__init__(
            f"request #{outcome.handle} {outcome.request!r} to {outcome.node} got no reply within "
            f"{outcome.timeout_s} s of virtual time ({hint})"
        )


@dataclass(slots=True)
class ClientOutcome:
    """What became of one simulated client request."""

    handle: int  # also the request id on the wire
    node: str
    request: object
    sent_at: float  # virtual s
    timeout_s: float
    answered_at: float | None = None
    reply: frames.Reply | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.reply is not None and self.reply.ok

    @property
    def code(self) -> str:
        """"OK", "TIMEOUT", or the wire error code."""
        if self.reply is None:
            return "TIMEOUT"
        return "OK" if self.reply.ok else str(self.reply.error.code)

    @property
    def latency_s(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.sent_at


@dataclass(slots=True)
class SimStats:
    events: int = 0
    peer_sent: int = 0
    peer_delivered: int = 0
    peer_lost: int = 0  # network loss
    peer_blocked: int = 0  # partitions
    peer_duplicated: int = 0
    dropped_crashed: int = 0  # in flight to a node that crashed (messages, requests, service results)
    mailbox_full: int = 0
    undeliverable: int = 0  # no such actor, or the actor stopped
    timers: int = 0
    service_calls: int = 0
    client_sent: int = 0
    client_answered: int = 0
    client_timeouts: int = 0
    client_late: int = 0  # replies that arrived after their request timed out
    client_lost: int = 0  # requests or replies lost or blocked on a client link


class Trace:
    """The running trace of one simulation: its lines (mode "full") and their SHA-256."""

    def __init__(self, mode: str):
        if mode not in TRACE_MODES:
            raise ValueError(f"trace must be one of {TRACE_MODES}, got {mode!r}")
        self.mode = mode
        self._lines: list[str] = []
        self._hash = hashlib.sha256()

    def add(self, line: str) -> None:
        if self.mode == "off":
            return
        self._hash.update(line.encode("utf-8", "backslashreplace") + b"\n")
        if self.mode == "full":
            self._lines.append(line)

    def lines(self) -> list[str]:
        if self.mode != "full":
            raise ValueError(f"trace lines are kept only with trace='full' (this run: {self.mode!r})")
        return list(self._lines)

    def digest(self) -> str:
        if self.mode == "off":
            raise ValueError("this simulation runs with trace='off'; there is no digest")
        return self._hash.hexdigest()


def show(obj: object) -> str:
    """A message's repr for the trace, capped; a crc of the full repr keeps the digest exact."""
    text = repr(obj)
    if len(text) <= TRACE_REPR_MAX:
        return text
    return f"{text[:TRACE_REPR_MAX]}...[{len(text)} chars crc={zlib.crc32(text.encode('utf-8', 'backslashreplace')):08x}]"


def describe_fate(fate) -> str:
    if not fate.arrivals:
        return f"dropped:{fate.dropped}"
    marks = ("dup " if fate.duplicated else "") + ("reordered " if fate.reordered else "")
    return marks + "at=" + ",".join(f"{t:.9f}" for t in fate.arrivals)


def describe_reply(reply: frames.Reply) -> str:
    return f"ok {show(reply.value)}" if reply.ok else f"error {show(reply.error)}"
