"""The `token` blocking service: the one owner of a node's `Token`, and the hardware actor's factory.

`TokenService.handle` runs on the service's own thread (the real driver's
`ServiceThreads` gives each service one thread and one FIFO queue; the
simulator calls it inline), so token operations are serialised by
construction; the hardware actor additionally keeps only one in flight.

Requests (defined in `keyswarm.actors.hardware`, since actors may not import
keyswarm.node) and their values:

    Sign(data)                      -> bytes: the token's signature over data
    Certify(signing_public_key, agreement_public_key, node_certificate_der,
            serial, lifetime_s, now_s)
                                    -> bytes: DER of
                                       crypto.certificates.subkey_certificate(token, node_cert, ...)
    SealToToken(plaintext, context, method, entropy)
                                    -> bytes: crypto.sealing.seal_to_token envelope
    Unseal(envelope, context)       -> bytes: crypto.sealing.unseal_with_token plaintext
    ReadInfo()                      -> TokenInfo, read from the device
    Reconnect()                     -> TokenInfo, after reopening the connection

Rules:
- The token's private keys never leave it: certificates are signed through
  `sign_with_token`, sealing uses the token's ECDH or HMAC.
- Failures are `KeyswarmError`s: token errors pass through as the token
  raised them (`TokenAbsent`, `PinBlocked`, `AuthError` ...), malformed
  request fields are `BadTokenRequest` / `BadCertificateRequest` /
  `UnsealFailed` (never a bare ValueError that would read as a bug).
- `Reconnect` uses the token's own `reconnect()` when it has one (a
  `YubiKeyToken` reopens its device), else the `reopen` factory given here
  (a `SoftToken` reopens its file), else it only probes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.actors.hardware import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_PROBE_INTERVAL_S,
    DEFAULT_RECONNECT_INITIAL_S,
    DEFAULT_RECONNECT_MAX_S,
    TOKEN_SERVICE,
    Certify,
    HardwareActor,
    ReadInfo,
    Reconnect,
    SealToToken,
    Sign,
    Unseal,
)
from keyswarm.actors.runtime import ActorSpec
from keyswarm.crypto.certificates import BadCertificateRequest, certificate_identity, subkey_certificate
from keyswarm.crypto.sealing import UnsealFailed, seal_to_token, unseal_with_token
from keyswarm.errors import ErrorCode, KeyswarmError, ServiceError, TokenAbsent, TokenError
from keyswarm.hardware.token import Token, TokenInfo

log = logging.getLogger("keyswarm.token")

#: Largest node certificate accepted in a Certify request.
MAX_CERTIFICATE_BYTES = 16 * 1024
#: Largest data accepted in a Sign request (certificates and transcripts are far smaller).
MAX_SIGN_BYTES = 64 * 1024
#: Sub-key lifetimes accepted: one minute to thirty days.
SUBKEY_LIFETIME_RANGE_S = (60.0, 30 * 86400.0)


class BadTokenRequest(KeyswarmError):
    """A request to the token service with malformed fields (wrong types, sizes past the limits)."""

    code = ErrorCode.BAD_REQUEST


class TokenService:
    """Owns one `Token`; serves the hardware actor's requests on its own thread."""

    name = TOKEN_SERVICE

    def __init__(self, token: Token | None, *, reopen: Callable[[], Token] | None = None):
        """`reopen` builds a fresh token for `Reconnect` when the token cannot reconnect itself.

        `token` may be None when the device could not be opened at start (a
        YubiKey not plugged in yet): every request is then `TokenAbsent` until
        a `Reconnect` opens it through `reopen`, so the node starts degraded
        instead of not at all.
        """
        if token is None and reopen is None:
            raise ValueError("a token service needs a token or a way to open one")
        self.token = token
        self._reopen = reopen

    def handle(self, request: object) -> object:
        if self.token is None and type(request) is not Reconnect:
            raise TokenAbsent("the token has not been opened yet; reconnecting")
        match request:
            case Sign(data=data):
                if not isinstance(data, bytes) or len(data) > MAX_SIGN_BYTES:
                    raise BadTokenRequest(f"data to sign must be bytes of at most {MAX_SIGN_BYTES}")
                return self.token.sign(data)
            case Certify():
                return self._certify(request)
            case SealToToken(plaintext=plaintext, context=context, method=method, entropy=entropy):
                if not isinstance(plaintext, bytes) or not isinstance(context, bytes):
                    raise BadTokenRequest("plaintext and context must be bytes")
                if method not in ("ecdh", "hmac"):
                    raise BadTokenRequest(f"sealing method must be 'ecdh' or 'hmac', not {method!r}")
                try:
                    return seal_to_token(
                        self.token, plaintext, context=context, method=method, entropy=_stream(entropy)
                    )
                except ValueError as exc:  # sizes past the sealing limits
                    raise BadTokenRequest(str(exc)) from exc
            case Unseal(envelope=envelope, context=context):
                if not isinstance(envelope, bytes) or not isinstance(context, bytes):
                    raise UnsealFailed("envelope and context must be bytes")
                try:
                    return unseal_with_token(self.token, envelope, context=context)
                except ValueError as exc:  # a context past the limit
                    raise BadTokenRequest(str(exc)) from exc
            case ReadInfo():
                return self.token.info()
            case Reconnect():
                return self._reconnect()
        raise ServiceError(f"token service cannot handle {type(request).__name__}")

    def close(self) -> None:
        if self.token is None:
            return
        try:
            self.token.close()
        except KeyswarmError as exc:  # closing a token that is gone is not worth failing shutdown for
            log.warning("closing the token failed: %s", exc)

    def _certify(self, request: Certify) -> bytes:
        der = request.node_certificate_der
        if not isinstance(der, bytes) or len(der) > MAX_CERTIFICATE_BYTES:
            raise BadCertificateRequest(f"node certificate must be DER of at most {MAX_CERTIFICATE_BYTES} bytes")
        low, high = SUBKEY_LIFETIME_RANGE_S
        if not low <= request.lifetime_s <= high:
            raise BadCertificateRequest(f"sub-key lifetime must be {low:.0f}..{high:.0f} s, got {request.lifetime_s}")
        try:
            node_cert = x509.load_der_x509_certificate(der)
            node_name = certificate_identity(node_cert).name
            signing = Ed25519PublicKey.from_public_bytes(request.signing_public_key)
            agreement = X25519PublicKey.from_public_bytes(request.agreement_public_key)
            now = datetime.fromtimestamp(request.now_s, tz=timezone.utc)
        except (ValueError, TypeError, OverflowError, OSError) as exc:
            raise BadCertificateRequest(f"cannot certify this sub-key: {exc}") from exc
        if node_name is None:
            raise BadCertificateRequest("the issuing certificate names no node")
        cert = subkey_certificate(
            self.token, node_cert, signing, agreement,
            node_name=node_name, serial=request.serial, now=now, lifetime=timedelta(seconds=request.lifetime_s),
        )
        return cert.public_bytes(Encoding.DER)

    def _reconnect(self) -> TokenInfo:
        reconnect = getattr(self.token, "reconnect", None)
        if callable(reconnect):
            reconnect()
        elif self._reopen is not None:
            fresh = self._reopen()
            old, self.token = self.token, fresh
            try:
                if old is not None:
                    old.close()
            except KeyswarmError:
                pass  # the old one is gone anyway
        info = self.token.info()
        self.token.identity_public_key()  # a token that answers info but not its key is not back
        return info


def hardware_components(
    token: Token | None,
    *,
    reopen: Callable[[], Token] | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    reconnect_initial_s: float = DEFAULT_RECONNECT_INITIAL_S,
    reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S,
    probe_interval_s: float | None = DEFAULT_PROBE_INTERVAL_S,
) -> tuple[ActorSpec, TokenService]:
    """The hardware actor's spec and the token service that owns `token`, for a node's assembly.

    Put the spec in the node's actor list and the service in its services
    (under `service.name`, "token"). The service closes the token when the
    node stops. With `token` None (the device could not be opened) and a
    `reopen` factory, the node starts with its token absent and degraded,
    and the actor reconnects with backoff until the device appears.
    """

    def build() -> HardwareActor:
        return HardwareActor(
            max_queue=max_queue,
            reconnect_initial_s=reconnect_initial_s,
            reconnect_max_s=reconnect_max_s,
            probe_interval_s=probe_interval_s,
        )

    return ActorSpec(HardwareActor.name, build), TokenService(token, reopen=reopen)


def _stream(seed: bytes) -> Callable[[int], bytes]:
    """An entropy function that expands `seed` (from the actor's `ctx.entropy`) deterministically.

    SHA-256 in counter mode: every call returns fresh bytes, so a P-256
    resample never sees the same scalar twice. An empty seed is refused:
    sealing must never run on no entropy.
    """
    if len(seed) < 32:
        raise TokenError("sealing needs at least 32 bytes of entropy from the hardware actor")
    counter = 0

    def entropy(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            counter += 1
        return out[:n]

    return entropy
