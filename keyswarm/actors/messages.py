"""Messages of the foundation: failures, health, and the demonstration actor set.

Tags are permanent (STYLE habit 3): never reuse one, only append fields with
defaults. Ranges (see docs/protocol.md):
  0x0001-0x00FF  runtime and system messages
  0x0100-0x01FF  client operations of the foundation (health, echo, ping, counter)
  0x0200-0x02FF  peer messages of the foundation's actors
  0x0300-0x03FF  the event log (keyswarm/storage)
  0x0400-0x04FF  typed event bodies (keyswarm/storage/bodies.py)
  0xF000-0xFFFF  reserved for tests
Client-facing messages carry an `op`: requests name the operation
(`health`), results the answer (`health.result`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keyswarm.errors import RETRYABLE_CODES, ErrorCode
from keyswarm.transport.codec import message


@message(tag=0x0001)
@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """An error answer. To a client it becomes `{"ok": false, "error": {...}}`."""

    code: ErrorCode
    message: str
    retryable: bool = False
    redirect: str | None = None

    @classmethod
    def of(cls, code: ErrorCode, message: str, *, redirect: str | None = None) -> Failure:
        return cls(code=code, message=message, retryable=code in RETRYABLE_CODES, redirect=redirect)


# --- client operations ---------------------------------------------------------


@message(tag=0x0101, op="health")
@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """Is this node up, and how are its actors?"""


@message(tag=0x0102, op="health.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class HealthResult:
    node: str
    status: str  # "ok" | "degraded" | "draining"
    actors: dict[str, str]  # actor name -> "running" | "restarting" | "stopped"
    uptime_s: float
    # Appended with the token (fields are append-only; "" / 0: this node runs no token):
    token: str = ""  # the hardware actor's token state: starting | ready | absent | pin_blocked | pin_rejected | unknown
    token_kind: str = ""  # soft | virtual | yubikey ("" until the token answered a probe)
    subkey: str = ""  # the sub-keys actor's state: starting | ok | renewing | expired | unknown
    subkey_serial: int = 0  # the current sub-key certificate's serial (0: none)
    subkey_not_after_s: float = 0.0  # its notAfter, seconds since the epoch (0: none)
    # Appended with node revocation: why the node is degraded, condition name -> detail
    # (`revoked`, `node_certificate`, `subkeys`, `token`, ...; empty when nothing is wrong).
    conditions: dict[str, str] = field(default_factory=dict)


@message(tag=0x0103, op="echo")
@dataclass(frozen=True, slots=True, kw_only=True)
class Echo:
    payload: bytes


@message(tag=0x0104, op="echo.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class EchoResult:
    payload: bytes
    node: str


@message(tag=0x0105, op="ping.peer")
@dataclass(frozen=True, slots=True, kw_only=True)
class PingPeer:
    """Ask this node to ping `target`'s echo actor over the peer network."""

    target: str
    timeout_s: float = 1.0


@message(tag=0x0106, op="ping.peer.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class PingPeerResult:
    target: str
    rtt_ms: float


@message(tag=0x0107, op="counter.increment")
@dataclass(frozen=True, slots=True, kw_only=True)
class Increment:
    """Add `by` to the named counter (kept by a blocking service) and return it."""

    name: str
    by: int = 1


@message(tag=0x0108, op="counter.value")
@dataclass(frozen=True, slots=True, kw_only=True)
class CounterValue:
    name: str
    value: int


# --- peer messages -------------------------------------------------------------


@message(tag=0x0201)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """A probe; the nonce makes a stale ack queued across a reconnect useless."""

    nonce: bytes


@message(tag=0x0202)
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    nonce: bytes
    node: str
