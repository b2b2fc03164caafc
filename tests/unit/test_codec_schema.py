"""Message schemas: what each field annotation accepts, append-only
compatibility, depth, and the annotations refused at registration.

The twin of `keyswarm/transport/schema.py`, driven through the codec's entry
points (`unpack`, `from_map`, `decode`, `check_value`), which are the only way
in. It registers no messages of its own: it uses test_codec.py's (tags
0xF0xx), which pytest imports as the module `test_codec`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import msgpack
import pytest
from test_codec import Color, Earlier, Grown, Later, Level, Tree

from keyswarm.errors import DecodeError, TooLarge
from keyswarm.transport import codec
from keyswarm.transport.codec import Limits, by_tag, decode, encode, from_map, message, read_msgpack, unpack


# --- enums ------------------------------------------------------------------


def test_enums_travel_as_their_values() -> None:
    msg = unpack([0xF002, True, 1, 1.0, "t", b"b", None, None, None, [0xF001, "n"], None, (), (), {}, {},
                  "green", 2, None, "n1"])
    assert msg.color is Color.GREEN and msg.level is Level.HIGH
    assert msgpack.unpackb(encode(msg))[15:17] == ["green", 2]


# --- compatibility: fields are append-only -----------------------------------


def test_missing_trailing_fields_take_their_defaults() -> None:
    assert unpack([0xF008, 1]) == Grown(a=1)
    assert from_map({"op": "test.grown", "a": 1}) == Grown(a=1)


def test_extra_trailing_values_from_a_newer_sender_are_ignored() -> None:
    assert unpack([0xF008, 1, "x", (2,), "a field from the future", {"and": "more"}]) == Grown(a=1, b="x", c=(2,))


def test_missing_required_field_is_named() -> None:
    with pytest.raises(DecodeError, match="missing required field 'version'"):
        unpack([0xF004, "k"])
    with pytest.raises(DecodeError, match="missing required field 'payload' for operation 'test.small'"):
        from_map({"op": "test.small", "key": "k", "version": 1})


# --- strictness --------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "error"),
    [
        (["k", True, b"p"], "field 'version': expected int, got bool"),
        (["k", 1.0, b"p"], "field 'version': expected int, got float"),
        (["k", 1, "p"], "field 'payload': expected bytes, got str"),
        ([b"k", 1, b"p"], "field 'key': expected str, got bytes"),
        (["k", 2**64, b"p"], "field 'version': int out of range"),
        (["k", -(2**63) - 1, b"p"], "field 'version': int out of range"),
        ([None, 1, b"p"], "field 'key': expected str, got nil"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(values: list[object], error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        unpack([0xF004, *values])


def test_int_is_not_a_bool() -> None:
    row = [0xF002, 1, 1, 1.0, "t", b"b", None, None, None, [0xF001, "n"], None, (), (), {}, {}, "red", 1, None, "n"]
    with pytest.raises(DecodeError, match="field 'flag': expected bool, got int"):
        unpack(row)


def test_an_int_is_accepted_for_a_float_and_converted() -> None:
    msg = unpack([0xF007, 3])
    assert msg.x == 3.0 and type(msg.x) is float


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(bad: float) -> None:
    with pytest.raises(DecodeError, match="field 'x': float must be finite"):
        decode(msgpack.packb([0xF007, bad]))
    with pytest.raises(DecodeError, match="float must be finite"):
        codec.check_value((1, bad))


def test_errors_name_the_path_into_nested_values() -> None:
    with pytest.raises(DecodeError, match=r"field 'children\[1\]\.label': expected str, got int"):
        from_map({"op": "test.tree", "label": "r", "children": [{"label": "a"}, {"label": 5}]})
    with pytest.raises(DecodeError, match=r"field 'c\[2\]': expected int, got str"):
        unpack([0xF008, 1, "b", (1, 2, "3")])
    with pytest.raises(DecodeError, match=r"field 'later': expected Later \(tag 0xf007\), got tag 61441"):
        unpack([0xF006, [0xF001, "n"]])


def test_dict_keys_are_checked() -> None:
    row = [0xF002, True, 1, 1.0, "t", b"b", None, None, None, [0xF001, "n"], None, (), (), {"k": 1}, {}, "red", 1]
    with pytest.raises(DecodeError, match="field 'labels\\['k'\\]': expected str, got int"):
        unpack([*row, None, "n"])
    row[13] = {b"k": "v"}
    with pytest.raises(DecodeError, match="field 'labels': map key: expected str, got bytes"):
        unpack([*row, None, "n"])


def test_unknown_enum_value_is_refused() -> None:
    row = [0xF002, True, 1, 1.0, "t", b"b", None, None, None, [0xF001, "n"], None, (), (), {}, {}, "blue", 1]
    with pytest.raises(DecodeError, match="field 'color': 'blue' is not a Color"):
        unpack([*row, None, "n"])


def test_constructor_failures_become_decode_errors() -> None:
    with pytest.raises(DecodeError, match="invalid Positive: n must not be negative"):
        decode(msgpack.packb([0xF005, -1]))


# --- depth ------------------------------------------------------------------


def test_deep_nesting_is_a_decode_error_not_a_crash() -> None:
    for depth in (17, 500, 10_000):
        data = b"\x91" * depth + b"\xc0"
        with pytest.raises(DecodeError):
            codec.check_value(read_msgpack(data))
        with pytest.raises(DecodeError):
            decode(data)
    deep: object = "leaf"
    for _ in range(10_000):
        deep = (deep,)
    with pytest.raises(TooLarge, match="max_depth"):
        codec.check_value(deep)


def test_typed_depth_is_limited_for_recursive_messages() -> None:
    tree: object = [0xF003, "leaf"]
    for _ in range(40):
        tree = [0xF003, "node", [tree]]
    with pytest.raises(TooLarge, match="max_depth"):
        unpack(tree)
    shallow = [0xF003, "a", [[0xF003, "b"]]]
    assert unpack(shallow, limits=Limits(max_depth=3)) == Tree(label="a", children=(Tree(label="b"),))
    with pytest.raises(TooLarge):
        unpack(shallow, limits=Limits(max_depth=2))


# --- annotations ------------------------------------------------------------


class PlainEnum(enum.Enum):
    A = 1


@pytest.mark.parametrize("annotation", ["list[int]", "set[str]", "object", "int | str", "PlainEnum",
                                        "tuple[int, str]", "dict[int, str]", "Color | Level | None"])
def test_unsupported_annotations_are_type_errors(annotation: str) -> None:
    cls = dataclass(frozen=True, slots=True, kw_only=True)(type("Bad", (), {"__annotations__": {"x": annotation},
                                                                          "__module__": __name__}))
    with pytest.raises(TypeError, match="Bad.x"):
        message(tag=0xF0F5)(cls)
    assert by_tag(0xF0F5) is None


def test_unregistered_dataclass_field_is_a_type_error() -> None:
    plain = dataclass(frozen=True)(type("Unregistered", (), {"__annotations__": {"x": int}}))
    outer = dataclass(frozen=True)(type("Outer", (), {"__annotations__": {"p": plain}}))
    with pytest.raises(TypeError, match="not a registered message"):
        message(tag=0xF0F6)(outer)


def test_forward_references_compile_on_first_use() -> None:
    assert unpack([0xF006, [0xF007, 2.5]]) == Earlier(later=Later(x=2.5))
