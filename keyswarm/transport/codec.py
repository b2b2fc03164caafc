"""The message registry and the msgpack codec.

Owns: `@message(tag=..., op=...)` registration, the array form
(`pack`/`unpack`/`encode`/`decode`: `[tag, field1, field2, ...]`), the map form
for clients (`to_map`/`from_map`: `{"op": ..., "field": ...}`), decoding
limits, and the msgpack boundary (`read_msgpack`).

Rules:
- Messages are frozen dataclasses under a permanent tag (0 < tag < 2**31).
  Tags are never reused; fields are append-only and new fields have defaults,
  so an old decoder ignores extra trailing values and a new decoder fills
  missing trailing fields from their defaults.
- Tag ranges (docs/protocol.md): 0x0001-0x00FF runtime and system,
  0x0100-0x01FF client operations of the foundation, 0x0200-0x02FF peer
  messages of the foundation, 0xF000-0xFFFF reserved for tests (never on a
  real network; each test module takes its own 0x100 block so they never
  collide: test_codec 0xF0xx, test_frames 0xF1xx).
- Only client-visible messages have an `op`; it names them in the map form.
- Strict types: a bool is not an int, an int is not a bool, a str is not
  bytes. An int is accepted for a float field (clients in other languages
  write `1` for `1.0`). Non-finite floats (NaN, inf) are refused: they make
  load figures and latency averages compare false with everything.
- Every failure while decoding, whatever raised it (msgpack, UTF-8, a
  constructor's `__post_init__`, recursion), leaves as `DecodeError`, or
  `TooLarge` when a limit was passed, naming the field: `field 'payload':
  expected bytes, got str`. Nothing else escapes a decode function.
- Sizes (frame, str, bin, array, map) are enforced at the msgpack boundary;
  `unpack`/`from_map` enforce types, structure, depth and container lengths
  on whatever object they are given.
- Encoding trusts the message (our own code built it): it does not re-check
  types, which the receiver and the round-trip test over every registered
  message do. A message msgpack cannot encode raises `TypeError` naming the
  field: a programming error.
- Hot path: per-class encoders and decoders are compiled once; a decode does
  one exact-type test per field and one constructor call.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import re
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NewType

import msgpack

from keyswarm.errors import ConfigError, DecodeError, TooLarge

INT_MIN = -(2**63)
UINT_MAX = 2**64 - 1
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
    # pass any of them, so the fast path skips the size checks.
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

#: Annotation for "any plain msgpack value": None, bool, int, float, str,
#: bytes, tuples of values, dicts with str or bytes keys. Checked only for
#: types, depth and container lengths; lists are turned into tuples.
Value = NewType("Value", object)


# --- failures ----------------------------------------------------------------


class _Invalid(Exception):
    """A check failed. `path` collects field names, innermost first, as the
    exception passes outward, so the boundary can say where it happened."""

    def __init__(self, reason: str, *, too_large: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large
        self.path: list[str] = []

    def error(self) -> DecodeError:
        where = ""
        for segment in reversed(self.path):
            where += segment if segment.startswith("[") or not where else "." + segment
        text = f"field '{where}': {self.reason}" if where else self.reason
        return TooLarge(text) if self.too_large else DecodeError(text)


def short_repr(value: object) -> str:
    """A short description of an untrusted value, safe to put in an error
    message: never the repr of a deep structure or of a megabyte string."""
    t = type(value)
    if t is int and value.bit_length() > 64:  # type: ignore[union-attr]
        return f"an int of {value.bit_length()} bits"  # type: ignore[union-attr]
    if t is str or t is bytes:
        text = repr(value[:40])  # type: ignore[index]
        return text + "..." if len(value) > 40 else text  # type: ignore[arg-type]
    if t is bool or t is int or t is float:
        return repr(value)
    return wire_type_name(value)


def wire_type_name(value: object) -> str:
    """The msgpack name of a decoded value's type: nil, array, map, str, ..."""
    if value is None:
        return "nil"
    t = type(value)
    return "array" if t is tuple or t is list else "map" if t is dict else t.__name__


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {wire_type_name(value)}")


def _too_deep(limits: Limits) -> _Invalid:
    return _Invalid(f"nesting deeper than max_depth ({limits.max_depth})", too_large=True)


def _too_long(n: int, limits: Limits) -> _Invalid:
    return _Invalid(f"{n} items exceed max_container_len ({limits.max_container_len})", too_large=True)


def _boundary(exc: BaseException) -> DecodeError:
    """Translate anything raised while decoding into the one error decoders raise."""
    if isinstance(exc, DecodeError):
        return exc
    if isinstance(exc, _Invalid):
        return exc.error()
    if isinstance(exc, RecursionError):
        return TooLarge("nesting too deep to decode")
    # Not reachable by any input the fuzz tests found; kept so that a bug here
    # answers one request with BAD_REQUEST instead of killing the gateway.
    return DecodeError(f"internal decoder error: {type(exc).__name__}: {str(exc)[:200]}")


# --- plain values ------------------------------------------------------------


def _walk_value(v: Any, depth: int, limits: Limits) -> Any:
    """Check a plain value; `depth` is the depth `v` has if it is a container."""
    t = type(v)
    if t is str or t is bytes or t is bool or v is None:
        return v
    if t is int:
        if INT_MIN <= v <= UINT_MAX:
            return v
        raise _Invalid(f"int out of range (int64/uint64): {short_repr(v)}")
    if t is float:
        if v - v == 0.0:  # false for NaN and +-inf
            return v
        raise _Invalid(f"float must be finite, got {v!r}")
    if t is tuple or t is list:
        if depth > limits.max_depth:
            raise _too_deep(limits)
        if len(v) > limits.max_container_len:
            raise _too_long(len(v), limits)
        out = []
        try:
            for x in v:
                out.append(_walk_value(x, depth + 1, limits))
        except _Invalid as exc:
            exc.path.append(f"[{len(out)}]")
            raise
        return tuple(out)
    if t is dict:
        if depth > limits.max_depth:
            raise _too_deep(limits)
        if len(v) > limits.max_container_len:
            raise _too_long(len(v), limits)
        result = {}
        for k, x in v.items():
            if type(k) is not str and type(k) is not bytes:
                raise _Invalid(f"map key: expected str or bytes, got {wire_type_name(k)}")
            try:
                result[k] = _walk_value(x, depth + 1, limits)
            except _Invalid as exc:
                exc.path.append(f"[{short_repr(k)}]")
                raise
        return result
    raise _expected("a plain value (nil, bool, int, float, str, bytes, array, map)", v)


def check_value(obj: Any, *, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Check a plain value as a `Value` field is checked (types, depth from
    1, container lengths); lists become tuples. DecodeError otherwise."""
    try:
        return _walk_value(obj, 1, limits)
    except Exception as exc:  # the decode boundary: see _boundary
        raise _boundary(exc) from exc


# --- field types -------------------------------------------------------------
#
# Each annotation compiles, once per form (array or map; they differ only in
# how nested messages look), to a `_Field`: values of exactly type `exact` are
# taken as they are (the hot path is one `type(v) is exact`); anything else goes
# to `check(v, depth, limits)`, which converts or raises `_Invalid`. `conv`
# turns a field value into its wire form on encode, or is None when msgpack
# packs the value as it is (the common case).

Check = Callable[[Any, int, Limits], Any]
Conv = Callable[[Any], Any]


class _Never:
    """No value has this exact type, so such a field always runs its check."""


class _Field(typing.NamedTuple):
    exact: type
    check: Check
    conv: Conv | None = None


def _scalar(name: str, exact: type) -> _Field:
    def check(v: Any, depth: int, limits: Limits) -> Any:
        raise _expected(name, v)

    return _Field(exact, check)


def _check_int(v: Any, depth: int, limits: Limits) -> Any:
    if type(v) is int:
        if INT_MIN <= v <= UINT_MAX:
            return v
        raise _Invalid(f"int out of range (int64/uint64): {short_repr(v)}")
    raise _expected("int", v)


def _check_float(v: Any, depth: int, limits: Limits) -> Any:
    t = type(v)
    if t is float:
        if v - v == 0.0:  # false for NaN and +-inf
            return v
        raise _Invalid(f"float must be finite, got {v!r}")
    if t is int and INT_MIN <= v <= UINT_MAX:
        return float(v)
    raise _expected("float", v)


_SIMPLE = {
    bool: _scalar("bool", bool), str: _scalar("str", str), bytes: _scalar("bytes", bytes),
    type(None): _scalar("nil", type(None)), int: _Field(_Never, _check_int),
    float: _Field(_Never, _check_float),
}


def _enum_field(cls: type[enum.Enum]) -> _Field:
    value_type = str if issubclass(cls, str) else int
    members = dict(cls._value2member_map_)
    listed = ", ".join(repr(m.value) for m in cls)[:200]

    def check(v: Any, depth: int, limits: Limits) -> Any:
        if type(v) is value_type:  # before the lookup: True == 1 would find member 1
            member = members.get(v)
            if member is not None:
                return member
            raise _Invalid(f"{short_repr(v)} is not a {cls.__name__} (one of {listed})")
        raise _expected(f"{cls.__name__} ({value_type.__name__})", v)

    return _Field(cls, check)  # members pack as their values: they are str / int


def _optional_field(inner: _Field) -> _Field:
    exact, check_inner, conv = inner

    def check(v: Any, depth: int, limits: Limits) -> Any:
        return None if v is None else check_inner(v, depth, limits)

    return _Field(exact, check, None if conv is None else (lambda v: None if v is None else conv(v)))


def _tuple_field(inner: _Field) -> _Field:
    exact, check_item, conv = inner

    def check(v: Any, depth: int, limits: Limits) -> Any:
        t = type(v)
        if t is not tuple and t is not list:
            raise _expected("array", v)
        if depth > limits.max_depth:
            raise _too_deep(limits)
        if len(v) > limits.max_container_len:
            raise _too_long(len(v), limits)
        item_depth = depth + 1
        out = []
        try:
            for x in v:
                out.append(x if type(x) is exact else check_item(x, item_depth, limits))
        except _Invalid as exc:
            exc.path.append(f"[{len(out)}]")
            raise
        return tuple(out)

    return _Field(_Never, check, None if conv is None else (lambda v: [conv(x) for x in v]))


def _dict_field(key_type: type, inner: _Field) -> _Field:
    exact, check_item, conv = inner

    def check(v: Any, depth: int, limits: Limits) -> Any:
        if type(v) is not dict:
            raise _expected("map", v)
        if depth > limits.max_depth:
            raise _too_deep(limits)
        if len(v) > limits.max_container_len:
            raise _too_long(len(v), limits)
        item_depth = depth + 1
        out = {}
        for k, x in v.items():
            if type(k) is not key_type:
                raise _Invalid(f"map key: expected {key_type.__name__}, got {wire_type_name(k)}")
            try:
                out[k] = x if type(x) is exact else check_item(x, item_depth, limits)
            except _Invalid as exc:
                exc.path.append(f"[{short_repr(k)}]")
                raise
        return out

    return _Field(_Never, check, None if conv is None else (lambda v: {k: conv(x) for k, x in v.items()}))


def _message_field(codec: _Codec, mapform: bool) -> _Field:
    # Calls go through `codec.<attr>` at run time, so a class whose own
    # compilation is deferred (a forward reference) compiles on first use.
    tag, name = codec.tag, codec.cls.__name__

    def check_array(v: Any, depth: int, limits: Limits) -> Any:
        t = type(v)
        if t is not tuple and t is not list:
            raise _expected(f"{name} array", v)
        if depth > limits.max_depth:
            raise _too_deep(limits)
        if not v or type(v[0]) is not int or v[0] != tag:
            raise _Invalid(f"expected {name} (tag {tag:#06x}), got tag {short_repr(v[0]) if v else 'none'}")
        return codec.unpack_array(v, depth, limits)

    def check_map(v: Any, depth: int, limits: Limits) -> Any:
        if type(v) is not dict:
            raise _expected(f"{name} map", v)
        if depth > limits.max_depth:
            raise _too_deep(limits)
        return codec.unpack_map(v, depth, limits, _NO_SKIP)

    if mapform:
        return _Field(_Never, check_map, lambda v: codec.fill_map(v, {}))
    return _Field(_Never, check_array, lambda v: codec.pack(v))


def _field(tp: Any, where: str, mapform: bool) -> _Field:
    """Compile one (already evaluated) annotation; TypeError if unsupported."""
    if tp is Value:
        return _Field(_Never, _walk_value)
    if isinstance(tp, typing.NewType):  # NodeId = NewType("NodeId", str)
        return _field(tp.__supertype__, where, mapform)
    simple = _SIMPLE.get(type(None) if tp is None else tp)
    if simple is not None:
        return simple
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if issubclass(tp, (enum.StrEnum, enum.IntEnum)):
            return _enum_field(tp)
        raise TypeError(f"{where}: enum {tp.__name__} must be a StrEnum or an IntEnum")
    if isinstance(tp, type) and tp in _CODECS:
        return _message_field(_CODECS[tp], mapform)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(others) == 1:
            return _optional_field(_field(others[0], where, mapform))
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple_field(_field(args[0], where, mapform))
    elif origin is dict and len(args) == 2 and args[0] in (str, bytes):
        return _dict_field(args[0], _field(args[1], where, mapform))
    if dataclasses.is_dataclass(tp):
        raise TypeError(f"{where}: {tp!r} is not a registered message (missing @message?)")
    raise TypeError(
        f"{where}: unsupported field type {tp!r} (supported: bool, int, float, str, bytes, None, "
        "X | None, tuple[X, ...], dict[str|bytes, X], StrEnum, IntEnum, registered messages, Value)"
    )


# --- per-class codecs --------------------------------------------------------

_NO_SKIP: frozenset[str] = frozenset()
_SKIP_OP: frozenset[str] = frozenset({"op"})


class _Codec:
    """The compiled encoder and decoders of one message class.

    Until `compile` runs (deferred when an annotation names a class not yet
    defined), each entry point is a stub that compiles and retries.
    """

    def __init__(self, cls: type, tag: int, op: str | None):
        self.cls, self.tag, self.op = cls, tag, op
        self.fields = dataclasses.fields(cls)
        self.compiled = False
        self.pack_specs: tuple[tuple[str, Conv | None], ...] = ()
        for attr in ("pack", "unpack_array", "unpack_map", "fill_map"):
            setattr(self, attr, self._deferred(attr))

    def _deferred(self, attr: str) -> Callable[..., Any]:
        def first_call(*args: Any) -> Any:
            self.compile()
            return getattr(self, attr)(*args)

        return first_call

    def describe(self) -> str:
        return f"operation '{self.op}'" if self.op else self.cls.__name__

    def compile(self, hints: dict[str, Any] | None = None) -> None:
        if self.compiled:
            return
        cls, tag, name = self.cls, self.tag, self.describe()
        if hints is None:
            try:
                hints = typing.get_type_hints(cls)
            except Exception as exc:
                raise TypeError(f"{cls.__qualname__}: cannot resolve field annotations: {exc}") from exc
        names = tuple(f.name for f in self.fields)
        where = [f"{cls.__qualname__}.{n}" for n in names]
        array_fields = [_field(hints[n], w, False) for n, w in zip(names, where)]
        map_fields = [_field(hints[n], w, True) for n, w in zip(names, where)]
        required = [i for i, f in enumerate(self.fields)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        min_len = 2 + required[-1] if required else 1  # the tag, then up to the last required field
        required_names = frozenset(names[i] for i in required)

        def missing(present: Callable[[int, str], bool]) -> _Invalid:
            first = next(names[i] for i in required if not present(i, names[i]))
            return _Invalid(f"missing required field '{first}' for {name}")

        def construct(kw: dict[str, Any]) -> Any:
            try:
                return cls(**kw)
            except Exception as exc:  # __post_init__ validates untrusted input here: any failure is "bad message"
                raise _Invalid(f"invalid {cls.__name__}: {str(exc)[:200]}") from exc

        array_specs = tuple((n, f.exact, f.check) for n, f in zip(names, array_fields))

        def unpack_array(obj: Any, depth: int, limits: Limits) -> Any:
            if len(obj) < min_len:
                raise missing(lambda i, n: i + 1 < len(obj))
            kw = {}
            inner_depth = depth + 1
            field = ""
            try:
                # zip stops at the shorter: extra trailing values (a newer
                # sender) are ignored, missing ones take their defaults.
                for (field, exact, check), v in zip(array_specs, obj[1:]):
                    kw[field] = v if type(v) is exact else check(v, inner_depth, limits)
            except _Invalid as exc:
                exc.path.append(field)
                raise
            return construct(kw)

        map_specs = {n: (f.exact, f.check) for n, f in zip(names, map_fields)}

        def unpack_map(obj: dict[Any, Any], depth: int, limits: Limits, skip: frozenset[str]) -> Any:
            kw = {}
            inner_depth = depth + 1
            for k, v in obj.items():
                spec = map_specs.get(k)
                if spec is None:
                    if k in skip:
                        continue
                    raise _Invalid(f"unknown field {short_repr(k)} for {name}")
                exact, check = spec
                try:
                    kw[k] = v if type(v) is exact else check(v, inner_depth, limits)
                except _Invalid as exc:
                    exc.path.append(k)
                    raise
            if not required_names <= kw.keys():
                raise missing(lambda i, n: n in kw)
            return construct(kw)

        self.pack_specs = tuple((n, f.conv) for n, f in zip(names, array_fields))
        self.pack = _array_packer(tag, names, self.pack_specs)
        self.fill_map = _map_filler(names, tuple((n, f.conv) for n, f in zip(names, map_fields)))
        self.unpack_array, self.unpack_map = unpack_array, unpack_map
        self.compiled = True


def _array_packer(tag: int, names: tuple[str, ...], specs: tuple[tuple[str, Conv | None], ...]) -> Conv:
    if len(names) >= 2 and all(conv is None for _, conv in specs):
        get_all = operator.attrgetter(*names)  # the common case: one C call
        return lambda msg: [tag, *get_all(msg)]

    def pack_each(msg: Any) -> list[Any]:
        out = [tag]
        for name, conv in specs:
            v = getattr(msg, name)
            out.append(v if conv is None else conv(v))
        return out

    return pack_each


def _map_filler(
    names: tuple[str, ...], specs: tuple[tuple[str, Conv | None], ...]
) -> Callable[[Any, dict[str, Any]], dict[str, Any]]:
    if len(names) >= 2 and all(conv is None for _, conv in specs):
        get_all = operator.attrgetter(*names)

        def fill_plain(msg: Any, into: dict[str, Any]) -> dict[str, Any]:
            into.update(zip(names, get_all(msg)))
            return into

        return fill_plain

    def fill_each(msg: Any, into: dict[str, Any]) -> dict[str, Any]:
        for name, conv in specs:
            v = getattr(msg, name)
            into[name] = v if conv is None else conv(v)
        return into

    return fill_each


# --- the registry ------------------------------------------------------------

_CODECS: dict[type, _Codec] = {}
_BY_TAG: dict[int, _Codec] = {}
_BY_OP: dict[str, _Codec] = {}
_OP_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*")
# Field names that would collide with the keys the map form and replies add.
_RESERVED_MAP_FIELDS = frozenset({"op", "ok"})


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
        codec = _Codec(cls, tag, op)
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


def _codec_of(msg: object) -> _Codec:
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
            raise _Invalid(f"a message is an array [tag, fields...], got {wire_type_name(obj)}")
        if not obj or type(obj[0]) is not int:
            raise _Invalid(f"message tag: expected int, got {wire_type_name(obj[0]) if obj else 'nothing'}")
        codec = _BY_TAG.get(obj[0])
        if codec is None:
            raise _Invalid(f"unknown message tag {short_repr(obj[0])}")
        if expect is not None and codec.cls is not expect:
            raise _Invalid(f"expected {expect.__name__}, got {codec.cls.__name__} (tag {codec.tag:#06x})")
        return codec.unpack_array(obj, 1, limits)
    except Exception as exc:  # the decode boundary: see _boundary
        raise _boundary(exc) from exc


def encode(msg: object) -> bytes:
    """msgpack of `pack(msg)`."""
    codec = _codec_of(msg)
    try:
        return _packb(codec.pack(msg))
    except (TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise _encode_failure(codec, msg, exc) from exc


def decode(data: bytes, *, limits: Limits = DEFAULT_LIMITS, expect: type | None = None) -> Any:
    return unpack(read_msgpack(data, limits=limits), limits=limits, expect=expect)


def _encode_failure(codec: _Codec, msg: object, exc: BaseException) -> TypeError:
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


def from_map(obj: Any, *, limits: Limits = DEFAULT_LIMITS, ignore: frozenset[str] = _NO_SKIP) -> Any:
    """Build the message named by `obj["op"]`. Unknown fields are refused by
    name (clients hear about their typos), except the keys in `ignore`."""
    try:
        if type(obj) is not dict:
            raise _Invalid(f"expected a map with an 'op' key, got {wire_type_name(obj)}")
        op = obj.get("op")
        if type(op) is not str:
            raise _Invalid("missing 'op'" if op is None else f"'op': expected str, got {wire_type_name(op)}")
        codec = _BY_OP.get(op)
        if codec is None:
            raise _Invalid(f"unknown operation {short_repr(op)}")
        return codec.unpack_map(obj, 1, limits, _SKIP_OP | ignore if ignore else _SKIP_OP)
    except Exception as exc:  # the decode boundary: see _boundary
        raise _boundary(exc) from exc


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
