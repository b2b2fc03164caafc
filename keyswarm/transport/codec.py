"""The message registry and the msgpack codec.

Owns: `@message(tag=..., op=...)` registration, the array form
(`pack`/`unpack`/`encode`/`decode`: `[tag, field1, field2, ...]`), the map form
for clients (`to_map`/`from_map`: `{"op": ..., "field": ...}`), decoding
`Limits`, and the msgpack boundary (`read_msgpack`/`write_msgpack`). What a
field annotation accepts and how it is checked, and the compiled per-class
codecs, are `schema.py`'s; the names of it that other modules import from
here (`INT_MIN`, `UINT_MAX`, `Value`, `short_repr`, `wire_type_name`) are
re-exported.

Rules:
- Messages are frozen dataclasses under a permanent tag (0 < tag < 2**31).
  Tags are never reused; fields are append-only and new fields have defaults,
  so an old decoder ignores extra trailing values and a new decoder fills
  missing trailing fields from their defaults.
- Tag ranges (docs/protocol.md): 0x0001-0x00FF runtime and system,
  0x0100-0x01FF client operations of the foundation, 0x0200-0x02FF peer
  messages of the foundation, 0x0300-0x03FF the event log, 0x0400-0x04FF
  typed event bodies, 0xF000-0xFFFF reserved for tests (never on a
  real network; each test module takes its own 0x100 block so they never
  collide: test_codec 0xF0xx, test_frames 0xF1xx).
- Only client-visible messages have an `op`; it names them in the map form.
- Field types are strict (a bool is not an int, a str is not bytes, floats
  are finite): the rules are in `schema.py`.
- Every failure while decoding, whatever raised it (msgpack, UTF-8, a
  constructor's `__post_init__`, recursion), leaves as `DecodeError`, or
  `TooLarge` when a limit was passed, naming the field: `field 'payload':
  expected bytes, got str`. Nothing else escapes a decode function: the
  entry points here (`unpack`, `from_map`, `check_value`, `read_msgpack`)
  are the only places that catch and translate.
- Sizes (frame, str, bin, array, map) are enforced at the msgpack boundary;
  `unpack`/`from_map` enforce types, structure, depth and container lengths
  on whatever object they are given.
- Encoding trusts the message (our own code built it): it does not re-check
  types, which the receiver and the round-trip test over every registered
  message do. A message msgpack cannot encode raises `TypeError` naming the
  field: a programming error.
- Hot path: per-class encoders and decoders are compiled once; a decode does
  one exact-type test per field and one constructor call; an encode reuses
  one msgpack Packer per thread.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from keyswarm.errors import ConfigError, DecodeError, TooLarge
from keyswarm.transport.schema import (
    INT_MIN,
    NO_SKIP,
    UINT_MAX,
    Invalid,
    MessageCodec,
    Value,
    as_decode_error,
    short_repr,
    walk_value,
    wire_type_name,
)

__all__ = [
    "DEFAULT_LIMITS", "INT_MIN", "MAX_TAG", "TEST_TAGS", "UINT_MAX", "Limits", "Value", "by_op", "by_tag",
    "check_value", "decode", "encode", "from_map", "message", "op_of", "pack", "read_msgpack", "registered",
    "short_repr", "tag_of", "to_map", "unpack", "wire_type_name", "write_msgpack",
]

MAX_TAG = 2**31 - 1
#: Tags reserved for messages defined by tests.
TEST_TAGS = range(0xF000, 0x10000)
# Our own walks recurse once per level; keep them far inside Python's stack.
_MAX_DEPTH_CAP = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Caps applied to every decoded frame; passing one is `TooLarge`."""

    max_frame_bytes: int = 16 * 1024 * 1024  # whole frame, checked before msgpack sees it
    max_depth: int = 16  # container nesting inside one message; the message itself is depth 1
    max_container_len: int = 100_000  # items in one array or map
    max_str_bytes: int = 1024 * 1024  # UTF-8 bytes of one string
    max_bin_bytes: int = 16 * 1024 * 1024  # bytes of one binary
    # The smallest cap, computed once: a frame no longer than this cannot
    # pass any of them, so the fast path skips the size checks. A field, not
    # a cached_property (a slots class has no __dict__ to cache in), and not
    # computed per frame (four loads and compares on every decode).
    _floor: int = dataclasses.field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if not field.init:
                continue
            value = getattr(self, field.name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"must be a positive int, got {value!r}", field=field.name)
        if self.max_depth > _MAX_DEPTH_CAP:
            raise ConfigError(f"must be at most {_MAX_DEPTH_CAP}, got {self.max_depth}", field="max_depth")
        floor = min(self.max_frame_bytes, self.max_str_bytes, self.max_bin_bytes, self.max_container_len)
        object.__setattr__(self, "_floor", floor)


DEFAULT_LIMITS = Limits()


def check_value(obj: Any, *, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Check a plain value as a `Value` field is checked (types, depth from
    1, container lengths); lists become tuples. DecodeError otherwise."""
    try:
        return walk_value(obj, 1, limits)
    except Exception as exc:  # the decode boundary: see as_decode_error
        raise as_decode_error(exc) from exc


# --- the registry ------------------------------------------------------------

_CODECS: dict[type, MessageCodec] = {}
_BY_TAG: dict[int, MessageCodec] = {}
_BY_OP: dict[str, MessageCodec] = {}
_OP_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*")
# Field names that would collide with the keys the map form and replies add.
_RESERVED_MAP_FIELDS = frozenset({"op", "ok"})
# `from_map` skips the "op" key it dispatched on.
_SKIP_OP: frozenset[str] = frozenset({"op"})


def message(*, tag: int, op: str | None = None) -> Callable[[type], type]:
    """Register a frozen dataclass as a message under a permanent `tag`.

    Goes above `@dataclass(frozen=True, slots=True, kw_only=True)`. `op` is
    the client-facing name (only client-visible messages have one). Mistakes
    (duplicate tag or op, mutable class, unsupported annotation) are
    programming errors and raise `TypeError` at import time.
    """
    if type(tag) is not int or not 0 < tag <= MAX_TAG:
        raise TypeError(f"message tag must be an int in 1..{MAX_TAG}, got {tag!r}")
    if op is not None and (type(op) is not str or len(op) > 64 or not _OP_RE.fullmatch(op)):
        raise TypeError(f"op must look like 'key.create' (lowercase, dotted), got {op!r}")

    def register(cls: type) -> type:
        if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
            raise TypeError(f"@message goes above @dataclass(frozen=True, slots=True, kw_only=True); got {cls!r}")
        if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__qualname__}: a message must be a frozen dataclass")
        if tag in _BY_TAG:
            raise TypeError(f"{cls.__qualname__}: tag {tag:#06x} is already {_BY_TAG[tag].cls.__qualname__}'s")
        if op is not None and op in _BY_OP:
            raise TypeError(f"{cls.__qualname__}: op {op!r} is already {_BY_OP[op].cls.__qualname__}'s")
        codec = MessageCodec(cls, tag, op, _CODECS)
        for field in codec.fields:
            if not field.init:
                raise TypeError(f"{cls.__qualname__}.{field.name}: message fields must be init fields")
            if op is not None and field.name in _RESERVED_MAP_FIELDS:
                raise TypeError(f"{cls.__qualname__}.{field.name}: the map form reserves this name")
        try:
            hints = typing.get_type_hints(cls)
        except NameError:
            hints = None  # names a class defined later (or itself): compile on first use
        except Exception as exc:
            raise TypeError(f"{cls.__qualname__}: cannot resolve field annotations: {exc}") from exc
        if hints is not None:
            codec.compile(hints)  # TypeError here leaves nothing registered
        _CODECS[cls], _BY_TAG[tag] = codec, codec
        if op is not None:
            _BY_OP[op] = codec
        return cls

    return register


def registered() -> tuple[type, ...]:
    """Every registered message class, by tag. Compiles any deferred codec,
    so a bad forward reference surfaces here as `TypeError`."""
    codecs = sorted(_BY_TAG.values(), key=lambda c: c.tag)
    for codec in codecs:
        codec.compile()
    return tuple(c.cls for c in codecs)


def by_tag(tag: int) -> type | None:
    codec = _BY_TAG.get(tag)
    return None if codec is None else codec.cls


def by_op(op: str) -> type | None:
    codec = _BY_OP.get(op)
    return None if codec is None else codec.cls


def tag_of(cls: type) -> int:
    return _CODECS[cls].tag


def op_of(cls: type) -> str | None:
    return _CODECS[cls].op


def _codec_of(msg: object) -> MessageCodec:
    codec = _CODECS.get(type(msg))
    if codec is None:
        raise TypeError(f"{type(msg).__qualname__} is not a registered message")
    return codec


# --- the array form ----------------------------------------------------------


def pack(msg: object) -> list[Any]:
    """`[tag, field1, ...]`, nested messages in the same form."""
    return _codec_of(msg).pack(msg)


def unpack(obj: Any, *, limits: Limits = DEFAULT_LIMITS, expect: type | None = None) -> Any:
    """Validate `[tag, field1, ...]` and build the message; DecodeError otherwise."""
    try:
        t = type(obj)
        if t is not tuple and t is not list:
            raise Invalid(f"a message is an array [tag, fields...], got {wire_type_name(obj)}")
        if not obj or type(obj[0]) is not int:
            raise Invalid(f"message tag: expected int, got {wire_type_name(obj[0]) if obj else 'nothing'}")
        codec = _BY_TAG.get(obj[0])
        if codec is None:
            raise Invalid(f"unknown message tag {short_repr(obj[0])}")
        if expect is not None and codec.cls is not expect:
            raise Invalid(f"expected {expect.__name__}, got {codec.cls.__name__} (tag {codec.tag:#06x})")
        return codec.unpack_array(obj, 1, limits)
    except Exception as exc:  # the decode boundary: see as_decode_error
        raise as_decode_error(exc) from exc


def encode(msg: object) -> bytes:
    """msgpack of `pack(msg)`."""
    codec = _codec_of(msg)
    try:
        return _packb(codec.pack(msg))
    except (TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise _encode_failure(codec, msg, exc) from exc


def decode(data: bytes, *, limits: Limits = DEFAULT_LIMITS, expect: type | None = None) -> Any:
    return unpack(read_msgpack(data, limits=limits), limits=limits, expect=expect)


def _encode_failure(codec: MessageCodec, msg: object, exc: BaseException) -> TypeError:
    """Find the field msgpack refused, so the programmer sees its name."""
    for name, conv in codec.pack_specs:
        try:
            v = getattr(msg, name)
            _packb(v if conv is None else conv(v))
        except Exception as field_exc:
            return TypeError(f"cannot encode {codec.cls.__name__}: field '{name}': {field_exc}")
    return TypeError(f"cannot encode {codec.cls.__name__}: {exc}")


# --- the map form ------------------------------------------------------------


def to_map(msg: object, *, head: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{"op": op, field: value, ...}` for a client-facing message; nested
    messages become maps of their fields. `head` (frames use `{"ok": True}`)
    is filled in place and its keys come first."""
    codec = _codec_of(msg)
    if codec.op is None:
        raise TypeError(f"{codec.cls.__name__} has no op: only client-facing messages have a map form")
    into = {} if head is None else head
    into["op"] = codec.op
    return codec.fill_map(msg, into)


def from_map(obj: Any, *, limits: Limits = DEFAULT_LIMITS, ignore: frozenset[str] = NO_SKIP) -> Any:
    """Build the message named by `obj["op"]`. Unknown fields are refused by
    name (clients hear about their typos), except the keys in `ignore`."""
    try:
        if type(obj) is not dict:
            raise Invalid(f"expected a map with an 'op' key, got {wire_type_name(obj)}")
        op = obj.get("op")
        if type(op) is not str:
            raise Invalid("missing 'op'" if op is None else f"'op': expected str, got {wire_type_name(op)}")
        codec = _BY_OP.get(op)
        if codec is None:
            raise Invalid(f"unknown operation {short_repr(op)}")
        return codec.unpack_map(obj, 1, limits, _SKIP_OP | ignore if ignore else _SKIP_OP)
    except Exception as exc:  # the decode boundary: see as_decode_error
        raise as_decode_error(exc) from exc


# --- the msgpack boundary ----------------------------------------------------

_unpackb = msgpack.unpackb
# One Packer per thread: `packb` builds (and allocates a buffer for) a new
# Packer on every call, which costs a third of a small encode. Per thread
# because blocking services encode on their own threads.
_packers = threading.local()


def write_msgpack(obj: Any) -> bytes:
    """msgpack of a plain value; TypeError if msgpack refuses it."""
    try:
        return _packb(obj)
    except (ValueError, OverflowError) as exc:
        raise TypeError(f"cannot encode: {exc}") from exc


def _packb(obj: Any) -> bytes:
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(autoreset=True)
    return packer.pack(obj)


class _ExtRefused(ValueError):
    pass


def _refuse_ext(code: int, data: bytes) -> Any:
    raise _ExtRefused(code)


_LIMIT_RE = re.compile(r"(\d+) exceeds max_(str|bin|array|map|ext)_len\(\d+\)")


def read_msgpack(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Any:
    """One msgpack value from `data` under `limits`: arrays come back as
    tuples, map keys are str or bytes, ext types and timestamps are refused."""
    if type(data) is not bytes and not isinstance(data, (bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    n = len(data)
    # Every declared length is also capped by what the data could hold (one
    # byte per item at least), so a header that declares 4 billion items in a
    # 6-byte frame fails before anything is allocated. A frame no longer than
    # the smallest cap needs no other check (the common, small, case).
    if n <= limits._floor:
        str_cap = bin_cap = array_cap = n
        map_cap = n >> 1  # a map entry takes two bytes at least
    elif n > limits.max_frame_bytes:
        raise TooLarge(f"frame of {n} bytes exceeds max_frame_bytes ({limits.max_frame_bytes})")
    else:
        str_cap, bin_cap = min(limits.max_str_bytes, n), min(limits.max_bin_bytes, n)
        array_cap, map_cap = min(limits.max_container_len, n), min(limits.max_container_len, n >> 1)
    try:
        return _unpackb(
            data, raw=False, use_list=False, strict_map_key=True, timestamp=0,
            max_str_len=str_cap, max_bin_len=bin_cap, max_array_len=array_cap, max_map_len=map_cap,
            max_ext_len=0, ext_hook=_refuse_ext,
        )
    except Exception as exc:  # the msgpack boundary: every failure is bad bytes
        raise _msgpack_failure(exc, n, limits) from exc


def _msgpack_failure(exc: Exception, n: int, limits: Limits) -> DecodeError:
    if isinstance(exc, msgpack.StackError) or isinstance(exc, RecursionError):
        return TooLarge(f"nesting too deep for msgpack (max_depth is {limits.max_depth})")
    if isinstance(exc, msgpack.ExtraData):
        return DecodeError("trailing bytes after the msgpack value")
    if isinstance(exc, UnicodeDecodeError):
        return DecodeError(f"invalid UTF-8 in a string at byte {exc.start}: {exc.reason}")
    if isinstance(exc, _ExtRefused):
        return DecodeError("msgpack ext types (and timestamps) are not allowed")
    if isinstance(exc, msgpack.FormatError):
        return DecodeError("invalid msgpack (reserved type byte 0xc1)")
    text = str(exc)
    match = _LIMIT_RE.fullmatch(text)
    if match:
        declared, kind = int(match[1]), match[2]
        if kind == "ext":
            return DecodeError("msgpack ext types (and timestamps) are not allowed")
        limit_name, limit = {
            "str": ("max_str_bytes", limits.max_str_bytes),
            "bin": ("max_bin_bytes", limits.max_bin_bytes),
            "array": ("max_container_len", limits.max_container_len),
            "map": ("max_container_len", limits.max_container_len),
        }[kind]
        if declared > limit:
            return TooLarge(f"{kind} of length {declared} exceeds {limit_name} ({limit})")
        return DecodeError(f"truncated: a {kind} declares length {declared} in a frame of {n} bytes")
    if "incomplete input" in text:
        return DecodeError("truncated msgpack data")
    if "strict_map_key" in text:
        return DecodeError("map keys must be str or bytes")
    if "timestamp" in text:
        return DecodeError("msgpack ext types (and timestamps) are not allowed")
    return DecodeError(f"invalid msgpack: {type(exc).__name__}: {text[:200]}")
