"""The keyswarm exception tree and the wire error codes.

Rules:
- Every exception keyswarm raises on purpose derives from `KeyswarmError`.
- Adapters (codec, ZeroMQ, LMDB, tokens, TOML) translate foreign exceptions at
  their boundary with `raise ... from exc`; code inside the boundary never sees
  a `msgpack`, `zmq` or `lmdb` exception.
- Names tell the caller what to do: `TooLarge` means "send less", `Busy`
  means "retry later", `DecodeError` means "the bytes you sent are wrong".
- Every error that can reach a client carries a wire `ErrorCode`.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Wire error codes (DESIGN section 5). Values are permanent."""

    BAD_REQUEST = "BAD_REQUEST"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    TOO_LARGE = "TOO_LARGE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    REPLAYED = "REPLAYED"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    KEY_DISABLED = "KEY_DISABLED"
    DECRYPT_FAILED = "DECRYPT_FAILED"
    BUSY = "BUSY"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


#: Codes a client may retry as they are (possibly elsewhere).
RETRYABLE_CODES = frozenset({ErrorCode.BUSY, ErrorCode.UNAVAILABLE})


class KeyswarmError(Exception):
    """Root of every keyswarm exception."""

    code: ErrorCode = ErrorCode.INTERNAL


# --- configuration ---------------------------------------------------------


class ConfigError(KeyswarmError):
    """A configuration file or value is wrong. Names the file and the field."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.file = file
        self.field = field
        where = ", ".join(part for part in (file and f"file {file}", field and f"field {field}") if part)
        super().__init__(f"{where}: {message}" if where else message)


# --- protocol --------------------------------------------------------------


class ProtocolError(KeyswarmError):
    """The peer broke the protocol (bad bytes, wrong shape, unknown operation).

    `request_id` is set when the envelope was read far enough to know it, so
    the node can answer the request with an error instead of dropping it.
    """

    code = ErrorCode.BAD_REQUEST
    request_id: int | None = None


class DecodeError(ProtocolError):
    """Bytes that do not decode into a valid frame or message."""


class TooLarge(DecodeError):
    """A frame, container, string or binary past its configured limit."""

    code = ErrorCode.TOO_LARGE


class UnsupportedVersion(DecodeError):
    """An envelope version this node does not speak."""

    code = ErrorCode.UNSUPPORTED_VERSION

    def __init__(self, version: object, supported: tuple[int, ...]):
        self.version = version
        self.supported = supported
        spoken = ", ".join(str(v) for v in supported)
        super().__init__(f"protocol version {version!r} is not supported; this node speaks {spoken}")


# --- runtime and transport -------------------------------------------------


class TransportError(KeyswarmError):
    """A socket could not be bound, connected or written."""

    code = ErrorCode.UNAVAILABLE


class Busy(TransportError):
    """A queue is past its bound; retry later or elsewhere."""

    code = ErrorCode.BUSY


class Unavailable(TransportError):
    """The target is not reachable (shutting down, not connected, unknown)."""

    code = ErrorCode.UNAVAILABLE


class ServiceError(KeyswarmError):
    """A blocking service (storage, token) failed an operation."""


# --- later layers (declared here so the tree is one file) ------------------


class AuthError(KeyswarmError):
    code = ErrorCode.UNAUTHENTICATED


class KeyNotFound(KeyswarmError):
    code = ErrorCode.KEY_NOT_FOUND


class DecryptFailed(KeyswarmError):
    """Ciphertext or a sealed envelope did not authenticate: tampered, truncated, or for another key."""

    code = ErrorCode.DECRYPT_FAILED


class StorageError(KeyswarmError):
    pass


class CorruptRecord(StorageError):
    pass


class TokenError(KeyswarmError):
    code = ErrorCode.UNAVAILABLE


class TokenAbsent(TokenError):
    pass


class PinBlocked(TokenError):
    pass


class TokenBusy(TokenError):
    code = ErrorCode.BUSY
