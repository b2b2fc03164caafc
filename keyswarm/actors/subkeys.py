"""The sub-keys actor: this node's short-lived, token-certified sub-keys.

Owns the node's current and previous sub-key (an Ed25519 signing key and an
X25519 agreement key, DESIGN section 1), their minting, their certification
by the node's token through the `hardware` actor, their rotation, and the
messages other actors use to read or use them (tags 0x0600-0x06FF).

Life of a sub-key:
1. Minted on start and at each rotation: both private keys come from
   `ctx.entropy(32)` (`from_private_bytes`), the certificate serial from
   `ctx.entropy(8)`, so a simulated run mints the same keys for one seed.
2. Certified: the public halves go to the local `hardware` actor in a
   `CertifySubkey`; its `SubkeyCertified` reply is checked (issued by this
   node's certificate, for exactly the keys minted, for this node) before
   the pair is installed as current. The one it replaces becomes previous.
3. Rotated when `rotate_at_fraction` of the certificate's lifetime has
   passed (half-life by default): a successor is minted and certified while
   the current key keeps serving.
4. The previous key stays usable (agreement, and in `ValidSubkeys` for peers
   verifying recent signatures) until its notAfter, then it is dropped.

Rules:
- Private keys never leave this actor: no message carries them, reprs hide
  them, `SubkeySign` and `SubkeyAgree` return only results.
- `SubkeySign` and `SubkeyAgree` are served to this node's own actors only
  (the sender must be a local actor address): they are registered messages,
  so a peer frame could carry one, and a peer must never get a signature or
  an ECDH oracle out of this node. `CurrentSubkey`, `ValidSubkeys` and
  `SubkeyStatus` answer anyone: certificates are public.
- Certification failures (token absent, busy, a refusal, no answer within
  `certify_timeout_s`) are retried with a doubling backoff from
  `retry_initial_s` to `retry_max_s`, while the current key keeps serving.
  The node never runs on an expired sub-key silently: when the current key
  expires with no successor it is dropped, the state becomes `expired`,
  the error is logged, the node condition `subkeys` is set (the node reports
  `degraded` until it is cleared), and every request is answered UNAVAILABLE
  until a certified key arrives (retries go on). `SubkeyStatus` reports the
  state, serials and last error for `health` and the monitor.
- Time: timers run on `ctx.now()` (monotonic); certificates speak wall time
  (`ctx.wall_time()`), converted to monotonic deadlines once, at install.
- One certification in flight at a time. A `SubkeyCertified` is matched to
  it by the keys and serial it certifies, so a late or duplicated answer to
  an abandoned request is ignored; a `Failure` from the hardware actor counts
  only while a request is in flight.
- A node may hold more than two valid sub-keys only if `rotate_at_fraction`
  is below 0.5; this actor keeps two (current and previous), so a third,
  older one is dropped when a new one is installed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from keyswarm.actors.hardware import CertifySubkey, HardwareActor, SubkeyCertified
from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Actor, ActorSpec, Address, Context
from keyswarm.config import SubkeysConfig
from keyswarm.crypto.certificates import agreement_public_key, certificate_identity
from keyswarm.errors import ErrorCode
from keyswarm.transport.codec import message

#: The actor's name on every node.
SUBKEYS = "subkeys"
#: The node condition set while this node has no valid sub-key (after one expired).
SUBKEY_CONDITION = "subkeys"

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- messages (tags 0x0600-0x06FF; fields are append-only) -----------------------


@message(tag=0x0601)
@dataclass(frozen=True, slots=True, kw_only=True)
class CurrentSubkey:
    """Which sub-key is this node using now? Answered with `SubkeyInfo` or `Failure`."""


@message(tag=0x0602)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubkeyInfo:
    """A certified sub-key: its certificate and raw public keys (32 bytes each)."""

    certificate_der: bytes
    signing_public_key: bytes
    agreement_public_key: bytes
    not_after_s: float  # the certificate's notAfter, seconds since the epoch
    serial: int = 0  # the certificate serial: names the key in signatures


@message(tag=0x0603)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubkeySign:
    """Sign `data` with the current sub-key (local actors only). Answered with `SubkeySignature`."""

    data: bytes
    request_id: int = 0  # echoed in the answer, so an asker with several in flight can match them


@message(tag=0x0604)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubkeySignature:
    """An Ed25519 signature over the request's data by the sub-key with certificate serial `serial`."""

    signature: bytes
    serial: int
    request_id: int = 0  # the request's


@message(tag=0x0605)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubkeyAgree:
    """X25519 with `peer_public` (32 raw bytes) and a valid sub-key (local actors only).

    `serial` picks the current or the previous sub-key (a peer may have used
    either); 0 means the current one. Answered with `SubkeyAgreement`.
    """

    peer_public: bytes
    serial: int = 0


@message(tag=0x0606)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubkeyAgreement:
    shared_secret: bytes
    serial: int


@message(tag=0x0607)
@dataclass(frozen=True, slots=True, kw_only=True)
class ValidSubkeys:
    """Every sub-key certificate still valid here. Answered with `ValidSubkeysResult`."""


@message(tag=0x0608)
@dataclass(frozen=True, slots=True, kw_only=True)
class ValidSubkeysResult:
    """DER certificates, current first, then the previous one while it is valid."""

    certificates: tuple[bytes, ...]


@message(tag=0x0609)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubkeyStatus:
    """How are this node's sub-keys? Answered with `SubkeyStatusResult`."""


@message(tag=0x060A)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubkeyStatusResult:
    state: str  # a `SubkeyState` value
    current_serial: int  # 0: none
    current_not_after_s: float  # 0.0: none
    previous_serial: int
    failures: int  # consecutive certification failures since the last success
    rotations: int  # sub-keys installed by this incarnation
    last_error: str = ""


class SubkeyState(enum.StrEnum):
    STARTING = "starting"  # no sub-key certified yet
    OK = "ok"  # a valid current sub-key, and no certification failing
    RENEWING = "renewing"  # a valid current sub-key, but certifying its successor keeps failing
    EXPIRED = "expired"  # no valid sub-key: requests are refused until one is certified


# --- settings and timers (local only, never on the wire) ----------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SubkeySettings:
    """What the factory hands the actor: identity, lifetimes and retry policy."""

    node_name: str
    node_certificate_der: bytes
    lifetime_s: float = 3600.0  # a sub-key certificate's validity ([subkeys] lifetime_s)
    rotate_at_fraction: float = 0.5  # share of the lifetime after which a successor is minted
    retry_initial_s: float = 1.0  # first delay after a failed certification, doubling
    retry_max_s: float = 60.0  # cap of the doubling delay
    certify_timeout_s: float = 30.0  # no answer from the hardware actor within this counts as a failure
    hardware: str = HardwareActor.name  # the local actor that certifies

    def __post_init__(self) -> None:
        if not 60.0 <= self.lifetime_s <= 30 * 86400.0:
            raise ValueError(f"lifetime_s must be 60 s to 30 days, got {self.lifetime_s!r}")
        if not 0.0 < self.rotate_at_fraction < 1.0:
            raise ValueError(f"rotate_at_fraction must be in (0, 1), got {self.rotate_at_fraction!r}")
        if not 0.0 < self.retry_initial_s <= self.retry_max_s:
            raise ValueError("retry delays must satisfy 0 < retry_initial_s <= retry_max_s")
        if not self.certify_timeout_s > 0.0:
            raise ValueError(f"certify_timeout_s must be > 0, got {self.certify_timeout_s!r}")
        # Checked here, where the node is assembled, not in the factory: a bad
        # certificate must stop the node's start, not crash-loop the actor.
        try:
            identity = certificate_identity(x509.load_der_x509_certificate(self.node_certificate_der))
        except ValueError as exc:
            raise ValueError(f"node certificate is not a keyswarm certificate: {exc}") from exc
        if identity.kind != "node" or identity.name != self.node_name:
            raise ValueError(f"node certificate names {identity.uri}, not node {self.node_name!r}")

    @classmethod
    def from_config(cls, config: SubkeysConfig, *, node_name: str, node_certificate_der: bytes) -> SubkeySettings:
        """Settings from the node's `[subkeys]` section and its enrolled certificate."""
        return cls(
            node_name=node_name,
            node_certificate_der=node_certificate_der,
            lifetime_s=config.lifetime_s,
            rotate_at_fraction=config.rotate_at_fraction,
        )


def subkeys_spec(settings: SubkeySettings) -> ActorSpec:
    """The actor's spec for a node's assembly (beside the hardware actor it asks)."""
    return ActorSpec(SUBKEYS, lambda: SubkeysActor(settings))


@dataclass(frozen=True, slots=True)
class _Rotate:
    """Timer: time to mint a successor."""


@dataclass(frozen=True, slots=True)
class _Retry:
    """Timer: try certifying again after a failure."""


@dataclass(frozen=True, slots=True)
class _CertifyTimeout:
    request_id: int


@dataclass(frozen=True, slots=True)
class _Expire:
    serial: int


class _Stale(Exception):
    """A certificate for keys this actor is no longer waiting for."""


@dataclass(slots=True, eq=False)
class _Subkey:
    """One minted pair. The private keys stay in here (and out of every repr)."""

    serial: int
    signing: Ed25519PrivateKey = field(repr=False)
    agreement: X25519PrivateKey = field(repr=False)
    signing_public: bytes
    agreement_public: bytes
    requested_s: float = 0.0  # wall clock: the issue time asked of the hardware actor
    certificate_der: bytes = b""
    not_after_s: float = 0.0  # wall clock
    expires_at: float = 0.0  # monotonic deadline of not_after_s
    expiry_timer: int | None = None

    def info(self) -> SubkeyInfo:
        return SubkeyInfo(
            certificate_der=self.certificate_der,
            signing_public_key=self.signing_public,
            agreement_public_key=self.agreement_public,
            not_after_s=self.not_after_s,
            serial=self.serial,
        )


# --- the actor ----------------------------------------------------------------------


class SubkeysActor(Actor):
    """Mints, certifies, rotates and serves this node's sub-keys."""

    name = SUBKEYS

    def __init__(self, settings: SubkeySettings):
        self.settings = settings
        self.node_certificate = x509.load_der_x509_certificate(settings.node_certificate_der)
        self.current: _Subkey | None = None
        self.previous: _Subkey | None = None
        self.pending: _Subkey | None = None  # minted, certification in flight
        self.state = SubkeyState.STARTING
        self.failures = 0  # consecutive
        self.rotations = 0
        self.last_error = ""
        self._request_id = 0
        self._timeout_timer: int | None = None
        self._rotate_timer: int | None = None
        self._retry_timer: int | None = None

    # --- lifecycle ----------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        self._mint_and_certify(ctx)

    def on_message(self, ctx: Context, msg: object) -> None:
        match msg:
            case CurrentSubkey():
                if self.current is None:
                    ctx.reply(self._no_subkey())
                else:
                    ctx.reply(self.current.info())
            case SubkeySign(data=data, request_id=request_id):
                if not self._from_local_actor(ctx, "SubkeySign"):
                    return
                if self.current is None:
                    ctx.reply(self._no_subkey())
                    return
                signature = self.current.signing.sign(data)
                ctx.reply(SubkeySignature(signature=signature, serial=self.current.serial, request_id=request_id))
            case SubkeyAgree(peer_public=peer, serial=serial):
                if self._from_local_actor(ctx, "SubkeyAgree"):
                    self._agree(ctx, peer, serial)
            case ValidSubkeys():
                valid = [key.certificate_der for key in (self.current, self.previous) if key is not None]
                ctx.reply(ValidSubkeysResult(certificates=tuple(valid)))
            case SubkeyStatus():
                ctx.reply(self.status())
            case SubkeyCertified():
                self._on_certified(ctx, msg)
            case Failure() if self._from_hardware(ctx) and self.pending is not None:
                self._on_certify_failed(ctx, f"{msg.code}: {msg.message}")
            case _CertifyTimeout(request_id=request_id):
                if self.pending is not None and request_id == self._request_id:
                    self._timeout_timer = None
                    self._on_certify_failed(
                        ctx, f"no answer from the hardware actor within {self.settings.certify_timeout_s:g} s"
                    )
            case _Rotate():
                self._rotate_timer = None
                if self.pending is None and self._retry_timer is None:
                    self._mint_and_certify(ctx)
            case _Retry():
                self._retry_timer = None
                if self.pending is None:
                    self._mint_and_certify(ctx)
            case _Expire(serial=serial):
                self._on_expire(ctx, serial)
            case _:
                ctx.log.debug("subkeys ignores %s", type(msg).__name__)

    def status(self) -> SubkeyStatusResult:
        """The state `health` and the monitor read."""
        current, previous = self.current, self.previous
        return SubkeyStatusResult(
            state=self.state.value,
            current_serial=current.serial if current else 0,
            current_not_after_s=current.not_after_s if current else 0.0,
            previous_serial=previous.serial if previous else 0,
            failures=self.failures,
            rotations=self.rotations,
            last_error=self.last_error,
        )

    # --- minting and certification ------------------------------------------------

    def _mint_and_certify(self, ctx: Context) -> None:
        signing = Ed25519PrivateKey.from_private_bytes(ctx.entropy(32))
        agreement = X25519PrivateKey.from_private_bytes(ctx.entropy(32))
        # A positive serial of at most 63 bits; the low bit set keeps it non-zero.
        serial = (int.from_bytes(ctx.entropy(8), "big") >> 1) | 1
        key = _Subkey(
            serial=serial,
            signing=signing,
            agreement=agreement,
            signing_public=signing.public_key().public_bytes(*_RAW),
            agreement_public=agreement.public_key().public_bytes(*_RAW),
            requested_s=ctx.wall_time(),
        )
        self._request_id += 1
        settings = self.settings
        request = CertifySubkey(
            signing_public_key=key.signing_public,
            agreement_public_key=key.agreement_public,
            node_certificate_der=settings.node_certificate_der,
            serial=serial,
            lifetime_s=settings.lifetime_s,
            now_s=key.requested_s,
        )
        if not ctx.send(settings.hardware, request):
            # Unknown or full mailbox: the same path as a refusal, retried later.
            self._on_certify_failed(ctx, f"the {settings.hardware!r} actor refused the request (busy or absent)")
            return
        self.pending = key
        self._timeout_timer = ctx.start_timer(settings.certify_timeout_s, _CertifyTimeout(self._request_id))

    def _on_certified(self, ctx: Context, msg: SubkeyCertified) -> None:
        key = self.pending
        if not self._from_hardware(ctx) or key is None:
            ctx.log.debug("ignoring a SubkeyCertified that answers no pending request")
            return
        try:
            certificate = self._check_certificate(msg.certificate_der, key)
        except _Stale:
            ctx.log.debug("ignoring a SubkeyCertified for an abandoned request")
            return
        except ValueError as exc:
            ctx.log.error("the hardware actor returned an unusable sub-key certificate: %s", exc)
            self._on_certify_failed(ctx, f"unusable certificate: {exc}")
            return
        self._clear_pending(ctx)
        key.certificate_der = msg.certificate_der
        key.not_after_s = certificate.not_valid_after_utc.timestamp()
        self._install(ctx, key)

    def _check_certificate(self, der: bytes, key: _Subkey) -> x509.Certificate:
        """The certificate, if it certifies exactly `key` for this node under the node certificate."""
        try:
            certificate = x509.load_der_x509_certificate(der)
            identity = certificate_identity(certificate)
            signing_public = certificate.public_key().public_bytes(*_RAW)
            agreement = agreement_public_key(certificate).public_bytes(*_RAW)
            certificate.verify_directly_issued_by(self.node_certificate)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ValueError(str(exc) or type(exc).__name__) from exc
        if identity.kind != "subkey" or identity.name != self.settings.node_name:
            raise ValueError(f"it names {identity.uri}, not this node's sub-key")
        if signing_public != key.signing_public:
            raise _Stale()  # the answer to an earlier, abandoned request
        if agreement != key.agreement_public:
            raise ValueError("it certifies another agreement key than the one minted")
        if certificate.serial_number != key.serial:
            raise ValueError(f"serial {certificate.serial_number:x} is not the one asked for ({key.serial:x})")
        return certificate

    def _install(self, ctx: Context, key: _Subkey) -> None:
        now_wall, now = ctx.wall_time(), ctx.now()
        remaining = key.not_after_s - now_wall
        if remaining <= 0:
            self._on_certify_failed(ctx, "the certificate was already expired when it arrived")
            return
        key.expires_at = now + remaining
        old = self.current
        if self.previous is not None and self.previous.expiry_timer is not None:
            ctx.cancel_timer(self.previous.expiry_timer)  # a successor replaces it before it expires
        self.previous = old
        self.current = key
        key.expiry_timer = ctx.start_timer(remaining, _Expire(key.serial))
        self.rotations += 1
        self.failures = 0
        self.last_error = ""
        if self.state is SubkeyState.EXPIRED:
            ctx.log.warning("sub-key %x installed: this node has a valid sub-key again", key.serial)
        self.state = SubkeyState.OK
        ctx.set_condition(SUBKEY_CONDITION, degraded=False)
        if self._rotate_timer is not None:
            ctx.cancel_timer(self._rotate_timer)
        # Rotation at `rotate_at_fraction` of the lifetime, counted from the
        # issue time this actor asked for (notBefore is backdated for skew,
        # and notAfter is truncated to whole seconds by X.509).
        rotate_wall = key.requested_s + self.settings.lifetime_s * self.settings.rotate_at_fraction
        self._rotate_timer = ctx.start_timer(max(0.0, rotate_wall - now_wall), _Rotate())
        ctx.log.info(
            "sub-key %x installed (valid until %s)%s", key.serial,
            datetime.fromtimestamp(key.not_after_s, timezone.utc).isoformat(),
            f"; previous {old.serial:x} kept until it expires" if old else "",
        )

    def _on_certify_failed(self, ctx: Context, why: str) -> None:
        self._clear_pending(ctx)
        self.failures += 1
        self.last_error = why
        if self.current is not None:
            self.state = SubkeyState.RENEWING
        delay = min(self.settings.retry_initial_s * 2 ** (self.failures - 1), self.settings.retry_max_s)
        log = ctx.log.error if self.current is None else ctx.log.warning
        log("sub-key certification failed (%d in a row): %s; retrying in %.3g s", self.failures, why, delay)
        if self._retry_timer is None:
            self._retry_timer = ctx.start_timer(delay, _Retry())

    def _clear_pending(self, ctx: Context) -> None:
        self.pending = None
        if self._timeout_timer is not None:
            ctx.cancel_timer(self._timeout_timer)
            self._timeout_timer = None

    def _on_expire(self, ctx: Context, serial: int) -> None:
        if self.previous is not None and self.previous.serial == serial:
            ctx.log.info("previous sub-key %x expired and is dropped", serial)
            self.previous = None
        elif self.current is not None and self.current.serial == serial:
            # No successor in time: refuse to serve rather than run on an expired key.
            self.current = None
            self.state = SubkeyState.EXPIRED
            why = self.last_error or "no successor certified yet"
            ctx.log.error("sub-key %x expired with no certified successor (%s); this node has no valid sub-key", serial, why)
            ctx.set_condition(SUBKEY_CONDITION, degraded=True, detail=f"sub-key expired with no successor: {why}")
            if self.pending is None and self._retry_timer is None:
                self._mint_and_certify(ctx)

    # --- serving ------------------------------------------------------------------

    def _agree(self, ctx: Context, peer: bytes, serial: int) -> None:
        key = self.current if serial == 0 else self._valid_by_serial(serial)
        if key is None:
            ctx.reply(self._no_subkey() if serial == 0 else Failure.of(
                ErrorCode.BAD_REQUEST, f"sub-key {serial:x} is unknown or no longer valid"
            ))
            return
        try:
            shared = key.agreement.exchange(X25519PublicKey.from_public_bytes(peer))
        except ValueError:  # not 32 bytes, or a low-order point giving the all-zero secret
            ctx.reply(Failure.of(ErrorCode.BAD_REQUEST, "peer public key is not a usable X25519 key"))
            return
        ctx.reply(SubkeyAgreement(shared_secret=shared, serial=key.serial))

    def _valid_by_serial(self, serial: int) -> _Subkey | None:
        for key in (self.current, self.previous):
            if key is not None and key.serial == serial:
                return key
        return None

    def _no_subkey(self) -> Failure:
        why = "no sub-key certified yet" if self.state is SubkeyState.STARTING else "the sub-key expired"
        detail = f" ({self.last_error})" if self.last_error else ""
        return Failure.of(ErrorCode.UNAVAILABLE, f"this node has no valid sub-key: {why}{detail}")

    def _from_local_actor(self, ctx: Context, what: str) -> bool:
        sender = ctx.sender
        if type(sender) is Address and sender.node == ctx.node:
            return True
        ctx.log.warning("refused %s from %s: only this node's actors may use its sub-keys", what, sender)
        ctx.reply(Failure.of(ErrorCode.FORBIDDEN, f"{what} is served to this node's own actors only"))
        return False

    def _from_hardware(self, ctx: Context) -> bool:
        return ctx.sender == Address(ctx.node, self.settings.hardware)
