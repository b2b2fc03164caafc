"""Message schemas: field annotations compiled into checks and codecs.

Owns: what each supported field annotation accepts on the wire and how it is
checked, the check of plain `Value`s, the depth and container-length checks
on decoded objects, and `MessageCodec`, one message class's encoder and
decoders compiled from its annotations. The registry, the entry points of
both forms and the msgpack boundary belong to `codec.py`, which imports this
module and re-exports the names other modules use.

Rules:
- Supported annotations: bool, int, float, str, bytes, None, `X | None`,
  `tuple[X, ...]`, `dict[str|bytes, X]`, StrEnum, IntEnum, a NewType of any
  of these, registered messages, `Value`. Anything else is a `TypeError`
  when the class is registered (or first used, for a forward reference).
- Strict types: a bool is not an int, an int is not a bool, a str is not
  bytes. An int is accepted for a float field (clients in other languages
  write `1` for `1.0`). Non-finite floats (NaN, inf) are refused: they make
  load figures and latency averages compare false with everything. Ints must
  fit int64 or uint64.
- Depth: the message itself is depth 1; each container or nested message is
  one deeper. Passing `max_depth` or `max_container_len` is `too_large`.
- A failed check raises `Invalid`, which collects the path to the field as it
  passes outward (`children[1].label`). Only `codec.py`'s entry points catch
  it, through `as_decode_error`, so that callers see `DecodeError` or
  `TooLarge` and nothing else.
- Compatibility (fields are append-only, see `codec.py`): a decoder ignores
  extra trailing values and fills missing trailing fields from their
  defaults. A constructor that refuses the values (`__post_init__`) makes the
  message invalid, like any other bad value.
- Encoding trusts the message: `conv` only reshapes (nested messages, and
  containers of them); it never re-checks types.
- Hot path: each class compiles once per form; a value of a field's exact
  type is taken after one `type(v) is exact` test, and a decode ends in one
  constructor call.
- Nothing here imports `codec.py` at run time (it imports this module); the
  registry reaches `MessageCodec` as `known`.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NewType

from keyswarm.errors import DecodeError, TooLarge

if TYPE_CHECKING:
    from keyswarm.transport.codec import Limits

INT_MIN = -(2**63)
UINT_MAX = 2**64 - 1

#: Annotation for "any plain msgpack value": None, bool, int, float, str,
#: bytes, tuples of values, dicts with str or bytes keys. Checked only for
#: types, depth and container lengths; lists are turned into tuples.
Value = NewType("Value", object)


# --- failures ----------------------------------------------------------------


class Invalid(Exception):
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


def _expected(what: str, value: object) -> Invalid:
    return Invalid(f"expected {what}, got {wire_type_name(value)}")


def _too_deep(limits: Limits) -> Invalid:
    return Invalid(f"nesting deeper than max_depth ({limits.max_depth})", too_large=True)


def _too_long(n: int, limits: Limits) -> Invalid:
    return Invalid(f"{n} items exceed max_container_len ({limits.max_container_len})", too_large=True)


def as_decode_error(exc: BaseException) -> DecodeError:
    """Translate anything raised while decoding into the one error decoders raise."""
    if isinstance(exc, DecodeError):
        return exc
    if isinstance(exc, Invalid):
        return exc.error()
    if isinstance(exc, RecursionError):
        return TooLarge("nesting too deep to decode")
    # Not reachable by any input the fuzz tests found; kept so that a bug here
    # answers one request with BAD_REQUEST instead of killing the gateway.
    return DecodeError(f"internal decoder error: {type(exc).__name__}: {str(exc)[:200]}")


# --- plain values ------------------------------------------------------------


def walk_value(v: Any, depth: int, limits: Limits) -> Any:
    """Check a plain value; `depth` is the depth `v` has if it is a container."""
    t = type(v)
    if t is str or t is bytes or t is bool or v is None:
        return v
    if t is int:
        if INT_MIN <= v <= UINT_MAX:
            return v
        raise Invalid(f"int out of range (int64/uint64): {short_repr(v)}")
    if t is float:
        if v - v == 0.0:  # false for NaN and +-inf
            return v
        raise Invalid(f"float must be finite, got {v!r}")
    if t is tuple or t is list:
        if depth > limits.max_depth:
            raise _too_deep(limits)
        if len(v) > limits.max_container_len:
            raise _too_long(len(v), limits)
        out = []
        try:
            for x in v:
                out.append(walk_value(x, depth + 1, limits))
        except Invalid as exc:
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
                raise Invalid(f"map key: expected str or bytes, got {wire_type_name(k)}")
            try:
                result[k] = walk_value(x, depth + 1, limits)
            except Invalid as exc:
                exc.path.append(f"[{short_repr(k)}]")
                raise
        return result
    raise _expected("a plain value (nil, bool, int, float, str, bytes, array, map)", v)


# --- field types -------------------------------------------------------------
#
# Each annotation compiles, once per form (array or map; they differ only in
# how nested messages look), to a `_Field`: values of exactly type `exact` are
# taken as they are (the hot path is one `type(v) is exact`); anything else goes
# to `check(v, depth, limits)`, which converts or raises `Invalid`. `conv`
# turns a field value into its wire form on encode, or is None when msgpack
# packs the value as it is (the common case).

Check = Callable[[Any, int, "Limits"], Any]
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
        raise Invalid(f"int out of range (int64/uint64): {short_repr(v)}")
    raise _expected("int", v)


def _check_float(v: Any, depth: int, limits: Limits) -> Any:
    t = type(v)
    if t is float:
        if v - v == 0.0:  # false for NaN and +-inf
            return v
        raise Invalid(f"float must be finite, got {v!r}")
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
            raise Invalid(f"{short_repr(v)} is not a {cls.__name__} (one of {listed})")
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
        except Invalid as exc:
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
                raise Invalid(f"map key: expected {key_type.__name__}, got {wire_type_name(k)}")
            try:
                out[k] = x if type(x) is exact else check_item(x, item_depth, limits)
            except Invalid as exc:
                exc.path.append(f"[{short_repr(k)}]")
                raise
        return out

    return _Field(_Never, check, None if conv is None else (lambda v: {k: conv(x) for k, x in v.items()}))


def _message_field(codec: MessageCodec, mapform: bool) -> _Field:
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
            raise Invalid(f"expected {name} (tag {tag:#06x}), got tag {short_repr(v[0]) if v else 'none'}")
        return codec.unpack_array(v, depth, limits)

    def check_map(v: Any, depth: int, limits: Limits) -> Any:
        if type(v) is not dict:
            raise _expected(f"{name} map", v)
        if depth > limits.max_depth:
            raise _too_deep(limits)
        return codec.unpack_map(v, depth, limits, NO_SKIP)

    if mapform:
        return _Field(_Never, check_map, lambda v: codec.fill_map(v, {}))
    return _Field(_Never, check_array, lambda v: codec.pack(v))


def _field(tp: Any, where: str, mapform: bool, known: Mapping[type, MessageCodec]) -> _Field:
    """Compile one (already evaluated) annotation; TypeError if unsupported.
    `known` is the registry: an annotation naming a class in it is a nested message."""
    if tp is Value:
        return _Field(_Never, walk_value)
    if isinstance(tp, typing.NewType):  # NodeId = NewType("NodeId", str)
        return _field(tp.__supertype__, where, mapform, known)
    simple = _SIMPLE.get(type(None) if tp is None else tp)
    if simple is not None:
        return simple
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if issubclass(tp, (enum.StrEnum, enum.IntEnum)):
            return _enum_field(tp)
        raise TypeError(f"{where}: enum {tp.__name__} must be a StrEnum or an IntEnum")
    if isinstance(tp, type) and tp in known:
        return _message_field(known[tp], mapform)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(others) == 1:
            return _optional_field(_field(others[0], where, mapform, known))
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple_field(_field(args[0], where, mapform, known))
    elif origin is dict and len(args) == 2 and args[0] in (str, bytes):
        return _dict_field(args[0], _field(args[1], where, mapform, known))
    if dataclasses.is_dataclass(tp):
        raise TypeError(f"{where}: {tp!r} is not a registered message (missing @message?)")
    raise TypeError(
        f"{where}: unsupported field type {tp!r} (supported: bool, int, float, str, bytes, None, "
        "X | None, tuple[X, ...], dict[str|bytes, X], StrEnum, IntEnum, registered messages, Value)"
    )


# --- per-class codecs --------------------------------------------------------

NO_SKIP: frozenset[str] = frozenset()


class MessageCodec:
    """The compiled encoder and decoders of one message class.

    Until `compile` runs (deferred when an annotation names a class not yet
    defined), each entry point is a stub that compiles and retries.
    """

    def __init__(self, cls: type, tag: int, op: str | None, known: Mapping[type, MessageCodec]):
        self.cls, self.tag, self.op = cls, tag, op
        self.known = known  # the registry, read when compiling: nested messages may register later
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
        array_fields = [_field(hints[n], w, False, self.known) for n, w in zip(names, where)]
        map_fields = [_field(hints[n], w, True, self.known) for n, w in zip(names, where)]
        required = [i for i, f in enumerate(self.fields)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        min_len = 2 + required[-1] if required else 1  # the tag, then up to the last required field
        required_names = frozenset(names[i] for i in required)

        def missing(present: Callable[[int, str], bool]) -> Invalid:
            first = next(names[i] for i in required if not present(i, names[i]))
            return Invalid(f"missing required field '{first}' for {name}")

        def construct(kw: dict[str, Any]) -> Any:
            try:
                return cls(**kw)
            except Exception as exc:  # __post_init__ validates untrusted input here: any failure is "bad message"
                raise Invalid(f"invalid {cls.__name__}: {str(exc)[:200]}") from exc

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
            except Invalid as exc:
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
                    raise Invalid(f"unknown field {short_repr(k)} for {name}")
                exact, check = spec
                try:
                    kw[k] = v if type(v) is exact else check(v, inner_depth, limits)
                except Invalid as exc:
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
