"""The client's typed exceptions: one class per wire error code, and the CLI exit code of each.

Rules:
- Every class derives from `ClientError`, a `keyswarm.errors.KeyswarmError`
  carrying `code`, `message`, `retryable` and `redirect` (the reply's).
- Where `keyswarm.errors` already names the condition, the class derives
  from that too (`UnauthenticatedError` is an `AuthError`,
  `KeyNotFoundError` a `KeyNotFound`, `DecryptFailedError` a
  `DecryptFailed`, `BusyError` a `Busy`, `UnavailableError` an
  `Unavailable`), so `except AuthError` catches a refused handshake whether
  the node or the client refused it.
- `retryable` is the node's word; only retryable errors are retried.
- `RequestTimeout` is the client's own: no answer in time (retryable, a
  write is retried with the same `client_request_id`).
"""

from __future__ import annotations

from keyswarm.errors import (
    AuthError,
    Busy,
    DecryptFailed,
    RETRYABLE_CODES,
    ErrorCode,
    KeyNotFound,
    TokenError,
    TransportError,
    Unavailable,
)
from keyswarm.errors import KeyswarmError as _Base


class ClientError(_Base):
    """The node answered an error (or the client gave up waiting). Subclassed per code."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, retryable: bool | None = None, redirect: str | None = None):
        self.message = message
        self.retryable = (self.code in RETRYABLE_CODES) if retryable is None else bool(retryable)
        self.redirect = redirect
        super().__init__(f"{self.code}: {message}")


class BadRequestError(ClientError):
    code = ErrorCode.BAD_REQUEST


class UnsupportedVersionError(ClientError):
    code = ErrorCode.UNSUPPORTED_VERSION


class TooLargeError(ClientError):
    code = ErrorCode.TOO_LARGE


class UnauthenticatedError(ClientError, AuthError):
    code = ErrorCode.UNAUTHENTICATED


class ForbiddenError(ClientError):
    code = ErrorCode.FORBIDDEN


class SessionExpiredError(ClientError, AuthError):
    code = ErrorCode.SESSION_EXPIRED


class ReplayedError(ClientError):
    code = ErrorCode.REPLAYED


class KeyNotFoundError(ClientError, KeyNotFound):
    code = ErrorCode.KEY_NOT_FOUND


class KeyDisabledError(ClientError):
    code = ErrorCode.KEY_DISABLED


class DecryptFailedError(ClientError, DecryptFailed):
    code = ErrorCode.DECRYPT_FAILED


class BusyError(ClientError, Busy):
    code = ErrorCode.BUSY


class UnavailableError(ClientError, Unavailable):
    code = ErrorCode.UNAVAILABLE


class InternalError(ClientError):
    code = ErrorCode.INTERNAL


class RequestTimeout(UnavailableError):
    """No answer within the request's timeout (the node may be down, slow or unreachable)."""


#: Wire code -> the exception raised for it.
ERROR_CLASSES: dict[ErrorCode, type[ClientError]] = {
    cls.code: cls
    for cls in (
        BadRequestError, UnsupportedVersionError, TooLargeError, UnauthenticatedError, ForbiddenError,
        SessionExpiredError, ReplayedError, KeyNotFoundError, KeyDisabledError, DecryptFailedError,
        BusyError, UnavailableError, InternalError,
    )
}
assert set(ERROR_CLASSES) == set(ErrorCode), "one exception class per error code"


def error_from(info: object) -> ClientError:
    """The typed exception for an error reply (`frames.ErrorInfo` or `Failure`); unknown codes are INTERNAL."""
    code = getattr(info, "code", ErrorCode.INTERNAL)
    cls = ERROR_CLASSES.get(code, InternalError)  # type: ignore[arg-type]
    return cls(str(getattr(info, "message", "")), retryable=getattr(info, "retryable", None),
               redirect=getattr(info, "redirect", None))


# --- exit codes of `keyswarm client` ---------------------------------------------------

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_FORBIDDEN = 5
EXIT_DECRYPT_FAILED = 6
EXIT_UNAVAILABLE = 7


def exit_code_for(exc: BaseException) -> int:
    """The exit code scripts see for `exc` (docs/cli.md, `keyswarm client` exit codes)."""
    if isinstance(exc, AuthError):
        return EXIT_AUTH
    if isinstance(exc, KeyNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, ForbiddenError):
        return EXIT_FORBIDDEN
    if isinstance(exc, DecryptFailed):
        return EXIT_DECRYPT_FAILED
    if isinstance(exc, (TransportError, TokenError)):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


def code_of(exc: BaseException) -> str:
    return str(getattr(exc, "code", ErrorCode.INTERNAL))
