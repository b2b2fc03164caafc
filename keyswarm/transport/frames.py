"""The wire envelope: every frame is msgpack `[version, kind, request_id, body]`.

Owns: the envelope, client requests and replies (map form), error replies,
and peer actor frames (array form). docs/protocol.md documents all of it
with hex test vectors that tests/unit/test_frames.py checks.

Rules:
- The version is read before anything else, so a peer speaking a newer
  version gets UNSUPPORTED_VERSION naming the versions we speak, whatever
  shape the rest of its frame has.
- Kind values ("q", "r", "a", "s") are permanent.
- `request_id` is a uint64 chosen by the sender; a reply echoes it. For actor
  frames the same slot carries the correlation id (0: none).
- Decoding raises only `DecodeError` (and its subclasses `TooLarge`,
  `UnsupportedVersion`), with `request_id` set as soon as the envelope was
  read far enough to know it, so the node can answer instead of dropping.
- Hot paths (`decode_request`, `encode_reply`, `encode_actor_frame`,
  `decode_actor_frame`) do one msgpack call each: the whole nested structure
  is built first and packed once.
- Reply maps are `{"ok": true, "op": ..., fields...}` or
  `{"ok": false, "error": {"code", "message", "retryable", "redirect"?}}`;
  keys a decoder does not know inside "error" are ignored (a newer node may
  add some), and an error code it does not know reads as INTERNAL with the
  original code kept in the message.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from keyswarm.errors import RETRYABLE_CODES, DecodeError, ErrorCode, KeyswarmError, ProtocolError, UnsupportedVersion
from keyswarm.transport.codec import (
    DEFAULT_LIMITS,
    UINT_MAX,
    Limits,
    check_value,
    encode,
    from_map,
    pack,
    read_msgpack,
    short_repr,
    to_map,
    unpack,
    wire_type_name,
    write_msgpack,
)

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)


class Kind(enum.StrEnum):
    """What a frame's body is. Values are permanent."""

    REQUEST = "q"  # client -> node: {"op": ..., fields...}
    REPLY = "r"  # node -> client: {"ok": ..., ...}
    ACTOR = "a"  # node -> peer: [to_actor, from_actor, [tag, fields...]]
    SESSION = "s"  # in-session frames (owned by the session layer)


_KINDS = {kind.value: kind for kind in Kind}
_OK = frozenset({"ok"})
_CODES = {code.value: code for code in ErrorCode}


@dataclass(frozen=True, slots=True)
class Frame:
    version: int
    kind: str
    request_id: int
    body: object


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    code: ErrorCode
    message: str
    retryable: bool
    redirect: str | None = None  # a node to ask instead, when the error says where


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    value: object | None
    error: ErrorInfo | None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class ActorFrame:
    to_actor: str
    from_actor: str
    correlation: int
    message: object


# --- the envelope ------------------------------------------------------------


def _require_id(value: int, what: str) -> None:
    if type(value) is not int or not 0 <= value <= UINT_MAX:
        raise ValueError(f"{what} must be a uint64, got {value!r}")


def _with_id(exc: DecodeError, request_id: int | None) -> DecodeError:
    exc.request_id = request_id
    return exc


def _open(obj: Any) -> tuple[Kind, int, Any]:
    """Check a decoded envelope; returns (kind, request_id, body)."""
    if type(obj) is not tuple or not obj:
        raise DecodeError(f"a frame is an array [version, kind, request_id, body], got {wire_type_name(obj)}")
    rid = obj[2] if len(obj) > 2 else None
    if type(rid) is not int or not 0 <= rid <= UINT_MAX:
        rid = None
    version = obj[0]
    if type(version) is not int:
        raise _with_id(DecodeError(f"frame version: expected int, got {wire_type_name(version)}"), rid)
    if version not in SUPPORTED_VERSIONS:
        raise _with_id(UnsupportedVersion(version, SUPPORTED_VERSIONS), rid)
    if len(obj) != 4:
        raise _with_id(DecodeError(f"a version {version} frame has 4 elements, got {len(obj)}"), rid)
    kind = _KINDS.get(obj[1]) if type(obj[1]) is str else None
    if kind is None:
        raise _with_id(DecodeError(f"unknown frame kind {short_repr(obj[1])}"), rid)
    if rid is None:
        raise DecodeError(f"request_id: expected a uint64, got {short_repr(obj[2])}")
    return kind, rid, obj[3]


def _expect_kind(kind: Kind, expected: Kind) -> None:
    if kind is not expected:
        raise DecodeError(f"expected a {expected.name.lower()} frame (kind '{expected}'), got kind '{kind}'")


def _write(frame: list[Any], msg: object) -> bytes:
    try:
        return write_msgpack(frame)
    except TypeError:
        encode(msg)  # raises a TypeError naming the field msgpack refused
        raise


def encode_frame(kind: Kind | str, request_id: int, body: Any) -> bytes:
    """A bare envelope around an already plain `body`."""
    known = _KINDS.get(kind)
    if known is None:
        raise ValueError(f"unknown frame kind {kind!r}")
    _require_id(request_id, "request_id")
    return write_msgpack([PROTOCOL_VERSION, known.value, request_id, body])


def decode_frame(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Any frame; the body comes back as a checked plain value (depth counted
    from the body, lists as tuples)."""
    kind, rid, body = _open(read_msgpack(data, limits=limits))
    try:
        return Frame(PROTOCOL_VERSION, kind, rid, check_value(body, limits=limits))
    except DecodeError as exc:
        raise _with_id(exc, rid) from None


# --- client requests and replies ---------------------------------------------


def encode_request(request_id: int, msg: object) -> bytes:
    """`[1, "q", request_id, {"op": ..., fields...}]`."""
    _require_id(request_id, "request_id")
    return _write([PROTOCOL_VERSION, "q", request_id, to_map(msg)], msg)


#: msgpack's uint tags and their widths in bytes (uint8 .. uint64).
UINT_WIDTHS = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


def peek_request_id(data: bytes | bytearray | memoryview) -> int:
    """The request id (a session frame's counter) of a frame too large to decode, read from its
    first bytes alone; 0 when they are not `[1, "q" or "s", uint, ...]`.

    So that a refusal of an oversized frame (TOO_LARGE) reaches the request
    that sent it instead of leaving it to time out. Reads at most 13 bytes.
    """
    head = bytes(data[:13])
    if len(head) < 5 or head[:3] != b"\x94\x01\xa1" or head[3] not in b"qs":
        return 0
    tag = head[4]
    if tag < 0x80:
        return tag
    width = UINT_WIDTHS.get(tag)
    if width is None or len(head) < 5 + width:
        return 0
    return int.from_bytes(head[5 : 5 + width], "big")


def decode_request(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> tuple[int, Any]:
    """(request_id, message) from a client request frame."""
    rid = None
    try:
        kind, rid, body = _open(read_msgpack(data, limits=limits))
        _expect_kind(kind, Kind.REQUEST)
        return rid, from_map(body, limits=limits)
    except DecodeError as exc:
        if exc.request_id is None:
            exc.request_id = rid
        raise


def encode_reply(request_id: int, msg: object) -> bytes:
    """`[1, "r", request_id, {"ok": true, "op": ..., fields...}]`."""
    _require_id(request_id, "request_id")
    return _write([PROTOCOL_VERSION, "r", request_id, to_map(msg, head={"ok": True})], msg)


def encode_error(
    request_id: int,
    code: ErrorCode,
    message: str,
    *,
    retryable: bool | None = None,
    redirect: str | None = None,
) -> bytes:
    """`[1, "r", request_id, {"ok": false, "error": {...}}]`; `retryable`
    defaults to whether `code` is one a client may retry as it is."""
    _require_id(request_id, "request_id")
    code = ErrorCode(code)
    if type(message) is not str:
        raise TypeError(f"error message must be a str, got {type(message).__name__}")
    error: dict[str, Any] = {
        "code": code.value,
        "message": message,
        "retryable": code in RETRYABLE_CODES if retryable is None else bool(retryable),
    }
    if redirect is not None:
        error["redirect"] = str(redirect)
    return write_msgpack([PROTOCOL_VERSION, "r", request_id, {"ok": False, "error": error}])


def error_for(exc: KeyswarmError, request_id: int | None = None) -> bytes:
    """The error reply for `exc`: its code, its text, its redirect if it has
    one. Without a `request_id`, the one the exception carries; 0 when the
    request could not be identified."""
    if request_id is None:
        request_id = exc.request_id if isinstance(exc, ProtocolError) else None
    redirect = getattr(exc, "redirect", None)
    return encode_error(
        0 if request_id is None else request_id,
        exc.code,
        str(exc),
        redirect=redirect if type(redirect) is str else None,
    )


def decode_reply(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Reply:
    rid = None
    try:
        kind, rid, body = _open(read_msgpack(data, limits=limits))
        _expect_kind(kind, Kind.REPLY)
        if type(body) is not dict:
            raise DecodeError(f"reply body: expected map, got {wire_type_name(body)}")
        ok = body.get("ok")
        if ok is True:
            return Reply(rid, from_map(body, limits=limits, ignore=_OK), None)
        if ok is False:
            return Reply(rid, None, _error_info(body.get("error")))
        raise DecodeError(f"reply 'ok': expected true or false, got {short_repr(ok)}")
    except DecodeError as exc:
        if exc.request_id is None:
            exc.request_id = rid
        raise


def _error_info(obj: Any) -> ErrorInfo:
    if type(obj) is not dict:
        raise DecodeError(f"reply 'error': expected map, got {wire_type_name(obj)}")
    code, message = obj.get("code"), obj.get("message")
    retryable, redirect = obj.get("retryable"), obj.get("redirect")
    for name, value, wanted in (("code", code, str), ("message", message, str), ("retryable", retryable, bool)):
        if type(value) is not wanted:
            raise DecodeError(f"reply error '{name}': expected {wanted.__name__}, got {wire_type_name(value)}")
    if redirect is not None and type(redirect) is not str:
        raise DecodeError(f"reply error 'redirect': expected str, got {wire_type_name(redirect)}")
    known = _CODES.get(code)
    if known is None:  # a newer node's code: keep it readable, treat it as INTERNAL
        known, message = ErrorCode.INTERNAL, f"[{code[:64]}] {message}"
    return ErrorInfo(code=known, message=message, retryable=retryable, redirect=redirect)


# --- peer actor frames -------------------------------------------------------

_ACTOR_NAME = re.compile(r"[a-z0-9_.:-]{1,64}")
# Names already seen valid skip the regex. Bounded, so a peer sending endless
# new names cannot grow it; past the bound names are simply re-checked.
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 4096


def is_actor_name(name: object) -> bool:
    """`[a-z0-9_.:-]{1,64}`: e.g. `gateway`, `keys.17`, `n3:replicator`."""
    if type(name) is not str:
        return False
    if name in _VALID_NAMES:
        return True
    if _ACTOR_NAME.fullmatch(name) is None:
        return False
    if len(_VALID_NAMES) < _VALID_NAMES_MAX:
        _VALID_NAMES.add(name)
    return True


def encode_actor_frame(to_actor: str, from_actor: str, msg: object, correlation: int = 0) -> bytes:
    """`[1, "a", correlation, [to_actor, from_actor, [tag, fields...]]]`."""
    if not is_actor_name(to_actor) or not is_actor_name(from_actor):
        raise ValueError(f"actor names must match [a-z0-9_.:-]{{1,64}}, got {to_actor!r} and {from_actor!r}")
    _require_id(correlation, "correlation")
    return _write([PROTOCOL_VERSION, "a", correlation, [to_actor, from_actor, pack(msg)]], msg)


def decode_actor_frame(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> ActorFrame:
    rid = None
    try:
        kind, rid, body = _open(read_msgpack(data, limits=limits))
        _expect_kind(kind, Kind.ACTOR)
        # Extra trailing elements are ignored, as for message fields.
        if type(body) is not tuple or len(body) < 3:
            raise DecodeError(f"actor frame body: expected [to_actor, from_actor, message], got {wire_type_name(body)}")
        to_actor, from_actor = body[0], body[1]
        if not (is_actor_name(to_actor) and is_actor_name(from_actor)):
            bad = ("to_actor", to_actor) if not is_actor_name(to_actor) else ("from_actor", from_actor)
            raise DecodeError(f"{bad[0]}: not an actor name ([a-z0-9_.:-]{{1,64}}): {short_repr(bad[1])}")
        return ActorFrame(to_actor, from_actor, rid, unpack(body[2], limits=limits))
    except DecodeError as exc:
        if exc.request_id is None:
            exc.request_id = rid
        raise
