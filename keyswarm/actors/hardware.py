"""The hardware actor: the only way other actors reach the node's token.

A YubiKey answers one APDU at a time and takes tens of milliseconds per
signature, so every token operation goes through this actor, which hands them
one at a time to the `token` blocking service (`keyswarm.node.token_service`,
which owns the `Token` on its own thread) and watches each result.

Messages (local actor-to-actor only; plain frozen dataclasses, not on the
wire: tags 0x0500-0x05FF are reserved for them should they ever travel):

    request                                   reply on success
    TokenSign(data)                           TokenSignature(signature)
    CertifySubkey(signing_public_key, agreement_public_key,
                  node_certificate_der, serial, lifetime_s, now_s)
                                              SubkeyCertified(certificate_der)
    SealSecret(plaintext, context, method)    SecretSealed(envelope)
    UnsealSecret(envelope, context)           SecretUnsealed(plaintext)
    TokenStatus()                             TokenStatusResult(state, kind, serial,
                                                  firmware, queue_depth, detail)

Every failure is a `Failure` (keyswarm.actors.messages). The service
requests the actor builds (`Sign`, `Certify`, `SealToToken`, `Unseal`,
`ReadInfo`, `Reconnect`) are defined here too, because actors may not import
keyswarm.node.

Rules:
- Requests are accepted from local actors only (sender an `Address` on this
  node). A client or a peer never reaches the token: FORBIDDEN.
- At most one service request is in flight; the rest wait in a bounded FIFO
  (`max_queue`, counting the one in flight). Past the bound: `Failure(BUSY)`
  at once (the `TokenBusy` case).
- States (`TokenStatusResult.state`):
    starting     probing the token (`ReadInfo`); requests queue
    ready        serving
    absent       the token was removed: node condition "token" degraded,
                 queued and new requests fail fast with UNAVAILABLE
                 (retryable), `Reconnect` asked with exponential backoff
                 (`reconnect_initial_s` doubling up to `reconnect_max_s`) until
                 it succeeds; then the condition is cleared and state is ready
    pin_blocked  the PIN is blocked: node degraded, every request fails with
                 a non-retryable UNAVAILABLE naming the PUK unblock path.
                 Nothing is retried: only an operator (unblock, restart) ends it
    pin_rejected the configured PIN is wrong (or the last try was refused):
                 as pin_blocked, never retried (retrying burns PIN tries)
- While ready and idle, a `ReadInfo` probe every `probe_interval_s` notices a
  token pulled out while nobody was using it.
- Sans-IO: time is `ctx.now()` / timers, entropy for sealing is
  `ctx.entropy`, wall time for certificates is `ctx.wall_time()`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Actor, Address, Context, Sender, ServiceResult
from keyswarm.errors import AuthError, ErrorCode, KeyswarmError, PinBlocked, TokenAbsent

#: Name of the blocking service that owns the token.
TOKEN_SERVICE = "token"
#: Name of the node condition set while the token is absent or its PIN unusable.
TOKEN_CONDITION = "token"
#: Requests waiting or in flight before new ones are answered BUSY.
DEFAULT_MAX_QUEUE = 256
DEFAULT_RECONNECT_INITIAL_S = 0.5  # s before the first reconnect attempt
DEFAULT_RECONNECT_MAX_S = 30.0  # s cap of the doubling reconnect delay
DEFAULT_PROBE_INTERVAL_S = 30.0  # s between idle probes of a ready token
#: Entropy bytes handed to the service per seal (ephemeral key or challenge, with room to resample).
SEAL_ENTROPY_BYTES = 64

# States, as TokenStatusResult reports them.
STARTING, READY, ABSENT, PIN_BLOCKED, PIN_REJECTED = "starting", "ready", "absent", "pin_blocked", "pin_rejected"


# --- requests from other actors ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSign:
    """Sign `data` with the token's identity key (Ed25519 raw, or DER ECDSA over SHA-256 for P-256)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CertifySubkey:
    """Have the token certify a sub-key pair under the node certificate.

    `signing_public_key` is the raw 32-byte Ed25519 key, `agreement_public_key`
    the raw 32-byte X25519 key. `now_s` is the wall time (seconds since the
    epoch) the certificate starts from; None: the actor's `ctx.wall_time()`.
    """

    signing_public_key: bytes
    agreement_public_key: bytes
    node_certificate_der: bytes
    serial: int
    lifetime_s: float = 3600.0
    now_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SealSecret:
    """Seal `plaintext` to the token (`method` "ecdh": PIV slot 82; "hmac": OTP slot 2)."""

    plaintext: bytes = field(repr=False)
    context: bytes
    method: str = "ecdh"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsealSecret:
    """Open an envelope made by `SealSecret` with the same `context`."""

    envelope: bytes
    context: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenStatus:
    """How is the token? Answered by the actor itself; never touches the device."""


# --- replies ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSignature:
    signature: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SubkeyCertified:
    certificate_der: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretSealed:
    envelope: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretUnsealed:
    plaintext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenStatusResult:
    """`state`: starting | ready | absent | pin_blocked | pin_rejected (see module docstring).

    `kind`, `serial`, `firmware` are from the last successful probe (None
    before one); `queue_depth` counts requests waiting or in flight.
    """

    state: str
    kind: str | None
    serial: int | None
    firmware: str | None
    queue_depth: int
    detail: str = ""


# --- requests to the token service (keyswarm.node.token_service) -------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Sign:
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Certify:
    """`subkey_certificate(token, node_cert, ...)`; the value is the certificate's DER."""

    signing_public_key: bytes
    agreement_public_key: bytes
    node_certificate_der: bytes
    serial: int
    lifetime_s: float
    now_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SealToToken:
    """`seal_to_token`; `entropy` seeds the ephemeral key or challenge (from `ctx.entropy`)."""

    plaintext: bytes = field(repr=False)
    context: bytes
    method: str
    entropy: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unseal:
    envelope: bytes
    context: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadInfo:
    """Probe: the value is the token's `TokenInfo` (read from the device)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnect:
    """Reopen the token's connection (after an unplug); the value is its `TokenInfo`."""


# --- the actor --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ReconnectDue:
    attempt: int


@dataclass(frozen=True, slots=True)
class _ProbeDue:
    """Timer: time to check the idle token is still there."""


@dataclass(slots=True)
class _Pending:
    requester: Sender
    request: object  # the service request to ask
    reply: object  # value -> reply message, for a successful result


class HardwareActor(Actor):
    """Serialises token operations, bounds their queue, and reconnects after an unplug."""

    name = "hardware"

    def __init__(
        self,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        reconnect_initial_s: float = DEFAULT_RECONNECT_INITIAL_S,
        reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S,
        probe_interval_s: float | None = DEFAULT_PROBE_INTERVAL_S,
        service: str = TOKEN_SERVICE,
    ):
        if max_queue < 1 or not 0 < reconnect_initial_s <= reconnect_max_s:
            raise ValueError("max_queue must be >= 1 and 0 < reconnect_initial_s <= reconnect_max_s")
        if probe_interval_s is not None and not probe_interval_s > 0:
            raise ValueError("probe_interval_s must be > 0 or None")
        self.max_queue = max_queue
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.probe_interval_s = probe_interval_s
        self.service = service
        self.state = STARTING
        self.detail = ""
        self.info: object | None = None  # the last TokenInfo the service returned
        self.queue: deque[_Pending] = deque()
        self.in_flight: tuple[int, _Pending | None] | None = None  # (ticket, request or None for probes)
        self.reconnect_attempts = 0
        self._probe_timer: int | None = None
        #: Counters for tests and the monitor.
        self.completed = 0
        self.refused_busy = 0

    # --- lifecycle ---------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        self._ask(ctx, ReadInfo(), None)

    @property
    def queue_depth(self) -> int:
        return len(self.queue) + (1 if self.in_flight is not None else 0)

    def on_message(self, ctx: Context, msg: object) -> None:
        match msg:
            case ServiceResult():
                self._on_result(ctx, msg)
            case TokenStatus():
                ctx.reply(self._status())
            case TokenSign(data=data):
                self._request(ctx, Sign(data=data), lambda value: TokenSignature(signature=value))
            case CertifySubkey():
                now_s = ctx.wall_time() if msg.now_s is None else msg.now_s
                certify = Certify(
                    signing_public_key=msg.signing_public_key,
                    agreement_public_key=msg.agreement_public_key,
                    node_certificate_der=msg.node_certificate_der,
                    serial=msg.serial,
                    lifetime_s=msg.lifetime_s,
                    now_s=now_s,
                )
                self._request(ctx, certify, lambda value: SubkeyCertified(certificate_der=value))
            case SealSecret(plaintext=plaintext, context=context, method=method):
                seal = SealToToken(plaintext=plaintext, context=context, method=method, entropy=b"")
                self._request(ctx, seal, lambda value: SecretSealed(envelope=value))
            case UnsealSecret(envelope=envelope, context=context):
                unseal = Unseal(envelope=envelope, context=context)
                self._request(ctx, unseal, lambda value: SecretUnsealed(plaintext=value))
            case _ReconnectDue(attempt=attempt):
                if self.state == ABSENT and attempt == self.reconnect_attempts and self.in_flight is None:
                    self._ask(ctx, Reconnect(), None)
            case _ProbeDue():
                self._probe_timer = None
                if self.state != READY:
                    return  # re-armed when the token is ready again
                if self.in_flight is None and not self.queue:
                    self._ask(ctx, ReadInfo(), None)
                else:
                    self._arm_probe(ctx)  # busy: the traffic itself shows the token is there
            case _:
                ctx.log.debug("hardware actor ignores %s", type(msg).__name__)

    # --- requests ----------------------------------------------------------------

    def _request(self, ctx: Context, request: object, reply: object) -> None:
        sender = ctx.sender
        if type(sender) is not Address or sender.node != ctx.node:
            ctx.reply(Failure.of(ErrorCode.FORBIDDEN, "the token serves this node's own actors only"))
            return
        refusal = self._refusal()
        if refusal is not None:
            ctx.reply(refusal)
            return
        if self.queue_depth >= self.max_queue:
            self.refused_busy += 1
            ctx.reply(Failure.of(ErrorCode.BUSY, f"token queue is full ({self.max_queue} requests); retry later"))
            return
        if type(request) is SealToToken:
            # Entropy is an input: drawn here, so a simulated run seals the same bytes every time.
            request = SealToToken(
                plaintext=request.plaintext, context=request.context, method=request.method,
                entropy=ctx.entropy(SEAL_ENTROPY_BYTES),
            )
        self.queue.append(_Pending(requester=sender, request=request, reply=reply))
        self._pump(ctx)

    def _refusal(self) -> Failure | None:
        """The fast failure for a new request in the current state, or None to queue it."""
        if self.state == ABSENT:
            return Failure.of(ErrorCode.UNAVAILABLE, f"the token is not connected: {self.detail}")
        if self.state in (PIN_BLOCKED, PIN_REJECTED):
            # Not retryable here: only an operator can fix a PIN; another node may serve.
            return Failure(code=ErrorCode.UNAVAILABLE, message=self.detail, retryable=False)
        return None

    def _pump(self, ctx: Context) -> None:
        if self.in_flight is None and self.state == READY and self.queue:
            pending = self.queue.popleft()
            self._ask(ctx, pending.request, pending)

    def _ask(self, ctx: Context, request: object, pending: _Pending | None) -> None:
        # The one place a service request starts: one in flight, by construction.
        assert self.in_flight is None, "hardware actor: two token requests in flight"
        self.in_flight = (ctx.ask(self.service, request), pending)

    # --- results -----------------------------------------------------------------

    def _on_result(self, ctx: Context, result: ServiceResult) -> None:
        if self.in_flight is None or self.in_flight[0] != result.ticket:
            ctx.log.warning("hardware actor: result for unknown ticket %d ignored", result.ticket)
            return
        _, pending = self.in_flight
        self.in_flight = None
        error = result.error
        if pending is None:
            self._on_probe(ctx, result)
        elif error is None:
            self.completed += 1
            ctx.reply_to(pending.requester, pending.reply(result.value))  # type: ignore[operator]
        else:
            ctx.reply_to(pending.requester, self._failure_for(ctx, error))
            self._on_error(ctx, error)
        self._pump(ctx)
        if self.state == READY and self.in_flight is None and not self.queue and self._probe_timer is None:
            self._arm_probe(ctx)

    def _on_probe(self, ctx: Context, result: ServiceResult) -> None:
        """A `ReadInfo` (start, idle probe) or `Reconnect` came back."""
        if result.ok:
            self.info = result.value
            if self.state != READY:
                ctx.log.info("token ready: %s", result.value)
            self.state, self.detail, self.reconnect_attempts = READY, "", 0
            ctx.set_condition(TOKEN_CONDITION, degraded=False)
            return
        error = result.error
        if self.state == ABSENT and not isinstance(error, TokenAbsent):
            error = TokenAbsent(str(error))  # any failed reconnect: keep backing off
        self._on_error(ctx, error)
        if self.state in (STARTING, READY) and not isinstance(error, TokenAbsent):
            # A token that answers but errs (not absent, not a PIN problem) is
            # served anyway: each request will report its own error.
            ctx.log.error("token probe failed: %s", error)
            self.state = READY

    def _on_error(self, ctx: Context, error: KeyswarmError) -> None:
        """Move state on an error from the token (already reported to its requester)."""
        if isinstance(error, TokenAbsent):
            self.state = ABSENT
            self.detail = str(error) or "token removed"
            ctx.set_condition(TOKEN_CONDITION, degraded=True, detail=f"token absent: {self.detail}")
            self._fail_queue(ctx)
            self.reconnect_attempts += 1
            delay = min(self.reconnect_initial_s * 2 ** (self.reconnect_attempts - 1), self.reconnect_max_s)
            ctx.start_timer(delay, _ReconnectDue(self.reconnect_attempts))
            ctx.log.warning(
                "token absent (%s); reconnect attempt %d in %.2f s", self.detail, self.reconnect_attempts, delay
            )
        elif isinstance(error, PinBlocked):
            self._stop_for_pin(ctx, PIN_BLOCKED, str(error))
        elif isinstance(error, AuthError):
            self._stop_for_pin(ctx, PIN_REJECTED, str(error))

    def _stop_for_pin(self, ctx: Context, state: str, detail: str) -> None:
        self.state, self.detail = state, detail
        ctx.set_condition(TOKEN_CONDITION, degraded=True, detail=f"token {state.replace('_', ' ')}: {detail}")
        ctx.log.error("token unusable, not retrying: %s", detail)
        self._fail_queue(ctx)

    def _fail_queue(self, ctx: Context) -> None:
        failure = self._refusal()
        while self.queue:
            ctx.reply_to(self.queue.popleft().requester, failure)

    def _failure_for(self, ctx: Context, error: KeyswarmError) -> Failure:
        if isinstance(error, TokenAbsent):
            return Failure.of(ErrorCode.UNAVAILABLE, f"the token was removed: {error}")
        if isinstance(error, (PinBlocked, AuthError)):
            return Failure(code=ErrorCode.UNAVAILABLE, message=str(error), retryable=False)
        if error.code is ErrorCode.INTERNAL:
            # The text of an internal failure is for the operator's log, not the requester.
            ctx.log.error("token service failed: %s", error)
            return Failure.of(ErrorCode.INTERNAL, "the token service failed")
        return Failure.of(error.code, str(error))

    def _arm_probe(self, ctx: Context) -> None:
        if self.probe_interval_s is not None and self._probe_timer is None:
            self._probe_timer = ctx.start_timer(self.probe_interval_s, _ProbeDue())

    def _status(self) -> TokenStatusResult:
        info = self.info
        return TokenStatusResult(
            state=self.state,
            kind=getattr(info, "kind", None),
            serial=getattr(info, "serial", None),
            firmware=getattr(info, "firmware", None),
            queue_depth=self.queue_depth,
            detail=self.detail,
        )
