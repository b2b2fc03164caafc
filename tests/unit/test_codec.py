"""The message codec: registration, both forms, limits, and hostile input.

What each field annotation accepts is tested in test_codec_schema.py, on the
messages defined here.

Test-only messages live under tags 0xF000-0xFFFF (0xF0xx here, 0xF1xx in
test_frames.py). The round-trip properties run over `registered()`, after
importing every module of the packages that define messages, so a message
another engineer adds is covered without touching this file; a message type
`strategy_for` cannot build fails loudly here.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import pkgutil
import types
import typing
from dataclasses import dataclass
from typing import NewType, Optional

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyswarm.errors import ConfigError, DecodeError, TooLarge
from keyswarm.transport import codec
from keyswarm.transport.codec import (
    INT_MIN,
    UINT_MAX,
    Limits,
    Value,
    by_op,
    by_tag,
    decode,
    encode,
    from_map,
    message,
    pack,
    read_msgpack,
    registered,
    to_map,
    unpack,
    write_msgpack,
)

# Packages whose modules may define messages. Add yours when it gets some.
MESSAGE_PACKAGES = (
    "keyswarm.transport",
    "keyswarm.actors",
    "keyswarm.crypto",
    "keyswarm.storage",
    "keyswarm.client",
    "keyswarm.sim",
)


def import_message_modules() -> None:
    for package_name in MESSAGE_PACKAGES:
        if importlib.util.find_spec(package_name) is None:
            continue  # not written yet
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            importlib.import_module(info.name)  # an import error fails the suite, on purpose


import_message_modules()


# --- test messages -----------------------------------------------------------

NodeId = NewType("NodeId", str)


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@message(tag=0xF001)
@dataclass(frozen=True, slots=True, kw_only=True)
class Inner:
    name: str
    weight: int = 0


@message(tag=0xF002, op="test.everything")
@dataclass(frozen=True, slots=True, kw_only=True)
class Everything:
    flag: bool
    count: int
    ratio: float
    text: str
    blob: bytes
    nothing: None
    maybe: int | None
    old_optional: Optional[str]  # noqa: UP007 - the typing spelling must work too
    inner: Inner
    opt_inner: Inner | None
    ints: tuple[int, ...]
    inners: tuple[Inner, ...]
    labels: dict[str, str]
    by_key: dict[bytes, Inner]
    color: Color
    level: Level
    extra: Value
    node: NodeId
    note: str = ""
    tags: tuple[str, ...] = ()


@message(tag=0xF003, op="test.tree")
@dataclass(frozen=True, slots=True, kw_only=True)
class Tree:
    label: str
    children: tuple[Tree, ...] = ()  # names itself: compiled on first use


@message(tag=0xF004, op="test.small")
@dataclass(frozen=True, slots=True, kw_only=True)
class Small:
    key: str
    version: int
    payload: bytes


@message(tag=0xF005)
@dataclass(frozen=True, slots=True, kw_only=True)
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must not be negative")


@message(tag=0xF006)
@dataclass(frozen=True, slots=True, kw_only=True)
class Earlier:
    later: Later | None = None  # defined below: compiled on first use


@message(tag=0xF007)
@dataclass(frozen=True, slots=True, kw_only=True)
class Later:
    x: float


@message(tag=0xF008, op="test.grown")
@dataclass(frozen=True, slots=True, kw_only=True)
class Grown:
    a: int
    b: str = "b"
    c: tuple[int, ...] = ()


# --- strategies built from annotations ---------------------------------------

MAX_NESTING = 3  # keeps generated messages well inside DEFAULT_LIMITS.max_depth

ints = st.integers(INT_MIN, UINT_MAX)
floats = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=12)
blobs = st.binary(max_size=12)


def plain_values(depth: int = MAX_NESTING) -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | ints | floats | texts | blobs
    if depth == 0:
        return scalars
    inner = plain_values(depth - 1)
    return scalars | st.lists(inner, max_size=3).map(tuple) | st.dictionaries(texts | blobs, inner, max_size=3)


def strategy_for_type(tp: object, depth: int) -> st.SearchStrategy[object]:
    if tp is Value:
        return plain_values()
    if isinstance(tp, typing.NewType):
        return strategy_for_type(tp.__supertype__, depth)
    simple = {bool: st.booleans(), int: ints, float: floats, str: texts, bytes: blobs, type(None): st.none()}
    if tp in simple:
        return simple[tp]  # type: ignore[index]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return strategy_for(tp, depth + 1)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    # Containers stop growing past MAX_NESTING so recursive messages end.
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return st.none() if depth >= MAX_NESTING else st.none() | strategy_for_type(inner, depth)
    if origin is tuple:
        if depth >= MAX_NESTING:
            return st.just(())
        return st.lists(strategy_for_type(args[0], depth), max_size=3).map(tuple)
    if origin is dict:
        keys = texts if args[0] is str else blobs
        if depth >= MAX_NESTING:
            return st.just({})
        return st.dictionaries(keys, strategy_for_type(args[1], depth), max_size=3)
    raise TypeError(f"strategy_for: teach me {tp!r}")


def strategy_for(cls: type, depth: int = 0) -> st.SearchStrategy[object]:
    """Any valid instance of a registered message, from its annotations."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for_type(hints[f.name], depth) for f in dataclasses.fields(cls)}

    def build(kwargs: dict[str, object]) -> object:
        try:
            return cls(**kwargs)
        except (ValueError, TypeError):  # a __post_init__ invariant the strategy does not know
            return None

    return st.fixed_dictionaries(fields).map(build).filter(lambda m: m is not None)


ALL_MESSAGES = registered()
OP_MESSAGES = tuple(cls for cls in ALL_MESSAGES if codec.op_of(cls) is not None)
ROUND_TRIP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- round trips -------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__qualname__)
@ROUND_TRIP
@given(data=st.data())
def test_every_message_round_trips_through_bytes(cls: type, data: st.DataObject) -> None:
    msg = data.draw(strategy_for(cls))
    assert decode(encode(msg), expect=cls) == msg
    assert unpack(pack(msg)) == msg


@pytest.mark.parametrize("cls", OP_MESSAGES, ids=lambda c: c.__qualname__)
@ROUND_TRIP
@given(data=st.data())
def test_every_client_message_round_trips_through_the_map_form(cls: type, data: st.DataObject) -> None:
    msg = data.draw(strategy_for(cls))
    as_map = to_map(msg)
    assert as_map["op"] == codec.op_of(cls)
    assert from_map(as_map) == msg
    assert from_map(read_msgpack(write_msgpack(as_map))) == msg


def test_the_test_messages_are_registered_in_tag_order() -> None:
    tags = [codec.tag_of(cls) for cls in ALL_MESSAGES]
    assert tags == sorted(tags)
    assert {Inner, Everything, Tree, Small, Positive, Earlier, Later, Grown} <= set(ALL_MESSAGES)
    assert by_tag(0xF004) is Small and by_op("test.small") is Small
    assert by_tag(0xFFFE) is None and by_op("no.such") is None


def test_only_test_messages_use_the_test_tag_range() -> None:
    for cls in ALL_MESSAGES:
        in_test_module = cls.__module__.rpartition(".")[2].startswith("test_")
        in_test_range = codec.tag_of(cls) in codec.TEST_TAGS
        assert in_test_range == in_test_module, f"{cls.__qualname__}: tags 0xF000-0xFFFF are for tests only"


def test_array_form_is_tag_then_fields_in_declaration_order() -> None:
    msg = Earlier(later=Later(x=1.5))
    assert pack(msg) == [0xF006, [0xF007, 1.5]]
    assert msgpack.unpackb(encode(Small(key="k", version=3, payload=b"p"))) == [0xF004, "k", 3, b"p"]


def test_map_form_nests_messages_as_maps_without_op() -> None:
    msg = Tree(label="root", children=(Tree(label="leaf"),))
    assert to_map(msg) == {"op": "test.tree", "label": "root", "children": [{"label": "leaf", "children": []}]}
    assert from_map({"op": "test.tree", "label": "root", "children": [{"label": "leaf"}]}) == msg


# --- what the entry points refuse --------------------------------------------


def test_wrong_tag_with_expect() -> None:
    with pytest.raises(DecodeError, match="expected Small, got Grown"):
        decode(encode(Grown(a=1)), expect=Small)


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ([0xFFFE], "unknown message tag 65534"),
        ([], "message tag: expected int, got nothing"),
        (["x"], "message tag: expected int, got str"),
        ({"op": "x"}, "a message is an array"),
        ([True, 1], "message tag: expected int, got bool"),
    ],
)
def test_malformed_message_arrays(obj: object, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        unpack(obj)


def test_unknown_op_and_unknown_fields_are_named() -> None:
    with pytest.raises(DecodeError, match="unknown operation 'test.nope'"):
        from_map({"op": "test.nope"})
    with pytest.raises(DecodeError, match="unknown field 'paylod' for operation 'test.small'"):
        from_map({"op": "test.small", "key": "k", "version": 1, "paylod": b""})
    with pytest.raises(DecodeError, match="field 'children\\[0\\]': unknown field 'op' for operation 'test.tree'"):
        from_map({"op": "test.tree", "label": "r", "children": [{"op": "test.tree", "label": "x"}]})
    with pytest.raises(DecodeError, match="missing 'op'"):
        from_map({"key": "k"})
    with pytest.raises(DecodeError, match="expected a map"):
        from_map(["test.small"])


# --- limits ------------------------------------------------------------------


def test_frame_one_byte_over_the_limit_is_too_large() -> None:
    data = encode(Small(key="k", version=1, payload=b"x" * 100))
    assert decode(data, limits=Limits(max_frame_bytes=len(data))) == Small(key="k", version=1, payload=b"x" * 100)
    with pytest.raises(TooLarge, match="max_frame_bytes"):
        decode(data, limits=Limits(max_frame_bytes=len(data) - 1))


@pytest.mark.parametrize(
    ("value", "limits", "name"),
    [
        ("x" * 11, Limits(max_str_bytes=10), "max_str_bytes"),
        ("é" * 6, Limits(max_str_bytes=10), "max_str_bytes"),  # 12 UTF-8 bytes
        (b"x" * 11, Limits(max_bin_bytes=10), "max_bin_bytes"),
        (list(range(11)), Limits(max_container_len=10), "max_container_len"),
        ({str(i): i for i in range(11)}, Limits(max_container_len=10), "max_container_len"),
    ],
)
def test_oversized_values_are_too_large(value: object, limits: Limits, name: str) -> None:
    with pytest.raises(TooLarge, match=name):
        read_msgpack(msgpack.packb(value), limits=limits)


def test_values_at_the_limit_pass() -> None:
    limits = Limits(max_container_len=10, max_str_bytes=10, max_bin_bytes=10)
    for value in ({str(i): "x" * 10 for i in range(10)}, [b"x" * 10] * 10, "é" * 5):
        assert read_msgpack(msgpack.packb(value), limits=limits) == (tuple(value) if type(value) is list else value)


def test_huge_declared_length_with_short_data_is_truncation_not_allocation() -> None:
    for data in (b"\xdd\xff\xff\xff\xff\x01", b"\xdf\xff\xff\xff\xff\x01", b"\xdb\xff\xff\xff\xff\x01",
                 b"\xc6\xff\xff\xff\xff\x01"):
        with pytest.raises(DecodeError) as caught:
            read_msgpack(data)
        assert "truncated" in str(caught.value) or isinstance(caught.value, TooLarge)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "truncated"),
        (b"\x93\xcd\xf0\x04\xa1k", "truncated"),
        (b"\xc0\x00", "trailing bytes"),
        (b"\xa2\xff\xfe", "invalid UTF-8"),
        (b"\xc1", "invalid msgpack"),
        (b"\xd6\xff\x00\x00\x00\x01", "ext types"),  # a timestamp
        (b"\xc7\x00\x05", "ext types"),  # a zero-length ext
        (b"\xd4\x05\x00", "ext types"),
        (b"\xc7\x00\xff", "ext types"),  # a zero-length timestamp
        (b"\x81\x01\x02", "map keys must be str or bytes"),
        (b"\x81\x91\x01\x02", "map keys must be str or bytes"),
    ],
)
def test_bad_bytes(data: bytes, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        decode(data)


def test_truncated_and_padded_messages() -> None:
    data = encode(Small(key="k", version=1, payload=b"abc"))
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:cut])
    with pytest.raises(DecodeError, match="trailing bytes"):
        decode(data + b"\x00")


def test_non_bytes_input_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(None)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        decode("\x90")  # type: ignore[arg-type]


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_depth"):
        Limits(max_depth=0)
    with pytest.raises(ConfigError, match="max_depth"):
        Limits(max_depth=10_000)
    with pytest.raises(ConfigError, match="max_str_bytes"):
        Limits(max_str_bytes=True)  # type: ignore[arg-type]


# --- hostile input: only DecodeError, ever -----------------------------------


def decoders(data: bytes) -> None:
    for fn in (lambda: decode(data), lambda: decode(data, expect=Small),
               lambda: from_map(read_msgpack(data)), lambda: codec.check_value(read_msgpack(data))):
        try:
            fn()
        except DecodeError as exc:
            assert "internal decoder error" not in str(exc), exc


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    decoders(data)


any_msgpack = st.recursive(
    st.none() | st.booleans() | st.integers(INT_MIN, UINT_MAX) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(any_msgpack)
def test_arbitrary_msgpack_values_raise_only_decode_error(value: object) -> None:
    decoders(msgpack.packb(value))


@FUZZ
@given(cls=st.sampled_from(ALL_MESSAGES), values=st.lists(any_msgpack, max_size=25))
def test_near_miss_arrays_raise_only_decode_error(cls: type, values: list[object]) -> None:
    decoders(msgpack.packb([codec.tag_of(cls), *values]))


@FUZZ
@given(cls=st.sampled_from(OP_MESSAGES), data=st.data())
def test_near_miss_maps_raise_only_decode_error(cls: type, data: st.DataObject) -> None:
    names = [f.name for f in dataclasses.fields(cls)] + ["op", "bogus"]
    body = data.draw(st.dictionaries(st.sampled_from(names), any_msgpack, max_size=len(names)))
    body["op"] = codec.op_of(cls)
    decoders(msgpack.packb(body))


# --- registration ------------------------------------------------------------


def test_registration_mistakes_are_type_errors() -> None:
    def frozen(cls: type) -> type:
        return dataclass(frozen=True, slots=True, kw_only=True)(cls)

    class Mutable:
        x: int

    with pytest.raises(TypeError, match="frozen"):
        message(tag=0xF0F0)(dataclass(Mutable))
    with pytest.raises(TypeError, match="already"):
        message(tag=0xF004)(frozen(type("Dup", (), {"__annotations__": {"x": "int"}})))
    with pytest.raises(TypeError, match="already"):
        message(tag=0xF0F1, op="test.small")(frozen(type("DupOp", (), {"__annotations__": {"x": "int"}})))
    with pytest.raises(TypeError, match="@dataclass"):
        message(tag=0xF0F2)(type("Plain", (), {}))
    for bad_tag in (0, -1, 2**31, True, "1"):
        with pytest.raises(TypeError, match="tag"):
            message(tag=bad_tag)  # type: ignore[arg-type]
    for bad_op in ("Key.Create", "", ".x", "x..y", 7):
        with pytest.raises(TypeError, match="op"):
            message(tag=0xF0F3, op=bad_op)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reserves"):
        message(tag=0xF0F4, op="test.reserved")(frozen(type("R", (), {"__annotations__": {"ok": "bool"}})))
    assert by_tag(0xF0F0) is None and by_tag(0xF0F4) is None and by_op("test.reserved") is None


def test_encoding_a_bad_message_names_the_field() -> None:
    with pytest.raises(TypeError, match="field 'version'"):
        encode(Small(key="k", version=2**64, payload=b""))
    with pytest.raises(TypeError, match="field 'payload'"):
        encode(Small(key="k", version=1, payload=object()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a registered message"):
        encode(object())
    with pytest.raises(TypeError, match="no op"):
        to_map(Inner(name="n"))
