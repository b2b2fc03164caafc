"""The wire envelope: requests, replies, actor frames, versions, hostile input,
and the hex test vectors of docs/protocol.md (parsed out of the page, so the
page cannot drift from the code). Test messages use tags 0xF1xx.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyswarm.errors import Busy, DecodeError, ErrorCode, TooLarge, UnsupportedVersion
from keyswarm.transport.codec import INT_MIN, UINT_MAX, Limits, message
from test_codec import any_msgpack  # one strategy for arbitrary msgpack values (as test_codec_schema does)
from keyswarm.transport.frames import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    ActorFrame,
    ErrorInfo,
    Frame,
    Kind,
    Reply,
    decode_actor_frame,
    decode_frame,
    decode_reply,
    decode_request,
    encode_actor_frame,
    encode_error,
    encode_frame,
    encode_reply,
    encode_request,
    error_for,
    is_actor_name,
)


@message(tag=0xF101, op="test.greet")
@dataclass(frozen=True, slots=True, kw_only=True)
class Greet:
    text: str
    count: int = 0


@message(tag=0xF102, op="test.greet.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class GreetResult:
    text: str


@message(tag=0xF103)
@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    nonce: int
    sender: str


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=200, deadline=None)
request_ids = st.integers(0, UINT_MAX)
actor_names = st.from_regex(r"[a-z0-9_.:-]{1,64}", fullmatch=True)


# --- the test vectors of docs/protocol.md -------------------------------------

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
VECTOR_BLOCK = re.compile(r"```vector\n(.*?)```", re.DOTALL)


def doc_vectors() -> dict[str, tuple[object, bytes]]:
    vectors = {}
    for block in VECTOR_BLOCK.findall(PROTOCOL_MD.read_text(encoding="utf-8")):
        name = re.search(r"^name:\s*(\S+)$", block, re.MULTILINE)
        value = re.search(r"^value:\s*(.+)$", block, re.MULTILINE)
        hex_text = block.split("hex:", 1)[1] if "hex:" in block else None
        assert name and value and hex_text, f"malformed vector block:\n{block}"
        vectors[name[1]] = (json.loads(value[1]), bytes.fromhex(hex_text))
    return vectors


def check_refused_version(data: bytes) -> None:
    with pytest.raises(UnsupportedVersion) as caught:
        decode_frame(data)
    assert caught.value.request_id == 7 and caught.value.version == 2


# name -> (what our encoder writes, or None for frames we only refuse; a check on the bytes)
EXPECTED: dict[str, tuple[bytes | None, Callable[[bytes], None]]] = {
    "envelope": (
        encode_frame(Kind.REQUEST, 7, None),
        lambda data: assert_equal(decode_frame(data), Frame(1, Kind.REQUEST, 7, None)),
    ),
    "request": (
        encode_request(42, Greet(text="hi", count=2)),
        lambda data: assert_equal(decode_request(data), (42, Greet(text="hi", count=2))),
    ),
    "reply-ok": (
        encode_reply(42, GreetResult(text="hi")),
        lambda data: assert_equal(decode_reply(data), Reply(42, GreetResult(text="hi"), None)),
    ),
    "reply-error": (
        encode_error(42, ErrorCode.BUSY, "queue full", redirect="n2"),
        lambda data: assert_equal(
            decode_reply(data),
            Reply(42, None, ErrorInfo(code=ErrorCode.BUSY, message="queue full", retryable=True, redirect="n2")),
        ),
    ),
    "refused-version-2": (None, check_refused_version),
    "reply-unsupported-version": (
        error_for(UnsupportedVersion(2, SUPPORTED_VERSIONS), 7),
        lambda data: assert_equal(decode_reply(data).error, ErrorInfo(
            code=ErrorCode.UNSUPPORTED_VERSION,
            message="protocol version 2 is not supported; this node speaks 1",
            retryable=False,
        )),
    ),
    "actor": (
        encode_actor_frame("echo", "gateway", Probe(nonce=3, sender="n1"), correlation=5),
        lambda data: assert_equal(
            decode_actor_frame(data), ActorFrame("echo", "gateway", 5, Probe(nonce=3, sender="n1"))
        ),
    ),
}


def assert_equal(actual: object, expected: object) -> None:
    assert actual == expected


def test_the_doc_has_exactly_the_vectors_this_test_checks() -> None:
    assert sorted(doc_vectors()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_doc_vector(name: str) -> None:
    value, data = doc_vectors()[name]
    assert msgpack.unpackb(data) == value, "the hex and the JSON value in docs/protocol.md disagree"
    encoded, check = EXPECTED[name]
    if encoded is not None:
        assert encoded.hex(" ") == data.hex(" "), "docs/protocol.md no longer matches what the encoder writes"
    check(data)


# --- round trips ---------------------------------------------------------------


@ROUND_TRIP
@given(rid=request_ids, text=st.text(max_size=30), count=st.integers(INT_MIN, UINT_MAX))
def test_requests_round_trip(rid: int, text: str, count: int) -> None:
    assert decode_request(encode_request(rid, Greet(text=text, count=count))) == (rid, Greet(text=text, count=count))


@ROUND_TRIP
@given(rid=request_ids, text=st.text(max_size=30))
def test_replies_round_trip(rid: int, text: str) -> None:
    reply = decode_reply(encode_reply(rid, GreetResult(text=text)))
    assert reply == Reply(rid, GreetResult(text=text), None) and reply.ok


@ROUND_TRIP
@given(rid=request_ids, code=st.sampled_from(ErrorCode), text=st.text(max_size=30),
       retryable=st.none() | st.booleans(), redirect=st.none() | st.text(max_size=10))
def test_error_replies_round_trip(
    rid: int, code: ErrorCode, text: str, retryable: bool | None, redirect: str | None
) -> None:
    reply = decode_reply(encode_error(rid, code, text, retryable=retryable, redirect=redirect))
    default = code in (ErrorCode.BUSY, ErrorCode.UNAVAILABLE)
    info = ErrorInfo(code=code, message=text, retryable=default if retryable is None else retryable, redirect=redirect)
    assert reply == Reply(rid, None, info)
    assert not reply.ok


@ROUND_TRIP
@given(to=actor_names, sender=actor_names, correlation=request_ids, nonce=st.integers(INT_MIN, UINT_MAX))
def test_actor_frames_round_trip(to: str, sender: str, correlation: int, nonce: int) -> None:
    msg = Probe(nonce=nonce, sender="n1")
    data = encode_actor_frame(to, sender, msg, correlation)
    assert decode_actor_frame(data) == ActorFrame(to, sender, correlation, msg)


def test_decode_frame_returns_any_kind_with_a_checked_body() -> None:
    for kind in Kind:
        assert decode_frame(encode_frame(kind, 3, [1, "x", {"k": b"v"}])) == Frame(1, kind, 3, (1, "x", {"k": b"v"}))
    with pytest.raises(TooLarge) as caught:
        decode_frame(encode_frame("s", 9, [[[[1]]]]), limits=Limits(max_depth=3))
    assert caught.value.request_id == 9


def test_kind_values_are_permanent() -> None:
    assert {k.name: k.value for k in Kind} == {"REQUEST": "q", "REPLY": "r", "ACTOR": "a", "SESSION": "s"}
    assert PROTOCOL_VERSION == 1 and SUPPORTED_VERSIONS == (1,)


# --- versions ------------------------------------------------------------------


@pytest.mark.parametrize("decoder", [decode_frame, decode_request, decode_reply, decode_actor_frame])
def test_unsupported_version_names_the_versions_spoken_and_keeps_the_request_id(
    decoder: Callable[[bytes], object],
) -> None:
    for frame in ([2, "q", 77, None], [2, "q", 77, None, "a future field"], [0, "x", 77]):
        with pytest.raises(UnsupportedVersion, match="this node speaks 1") as caught:
            decoder(msgpack.packb(frame))
        assert caught.value.request_id == 77
        assert caught.value.code is ErrorCode.UNSUPPORTED_VERSION
    with pytest.raises(UnsupportedVersion) as caught:
        decoder(msgpack.packb([2]))
    assert caught.value.request_id is None


@pytest.mark.parametrize("version", ["1", True, 1.0, None])
def test_a_version_that_is_not_an_int_is_a_decode_error(version: object) -> None:
    with pytest.raises(DecodeError, match="frame version") as caught:
        decode_request(msgpack.packb([version, "q", 5, {"op": "test.greet", "text": ""}]))
    assert not isinstance(caught.value, UnsupportedVersion) and caught.value.request_id == 5


# --- malformed envelopes and bodies ---------------------------------------------


@pytest.mark.parametrize(
    ("frame", "error", "request_id"),
    [
        (None, "a frame is an array", None),
        ([], "a frame is an array", None),
        ({"op": "test.greet"}, "a frame is an array", None),
        ([1, "q", 5], "has 4 elements, got 3", 5),
        ([1, "q", 5, {}, None], "has 4 elements, got 5", 5),
        ([1, "x", 5, {}], "unknown frame kind 'x'", 5),
        ([1, b"q", 5, {}], "unknown frame kind b'q'", 5),
        ([1, "q", -1, {}], "request_id: expected a uint64, got -1", None),
        ([1, "q", True, {}], "request_id: expected a uint64, got True", None),
        ([1, "q", "5", {}], "request_id: expected a uint64, got '5'", None),
        ([1, "r", 5, {}], "expected a request frame \\(kind 'q'\\), got kind 'r'", 5),
        ([1, "q", 5, None], "expected a map with an 'op' key, got nil", 5),
        ([1, "q", 5, {"op": "test.nope"}], "unknown operation 'test.nope'", 5),
        ([1, "q", 5, {"op": "test.greet", "txt": "x"}], "unknown field 'txt' for operation 'test.greet'", 5),
        ([1, "q", 5, {"op": "test.greet", "text": b"x"}], "field 'text': expected str, got bytes", 5),
        ([1, "q", 5, {"op": "test.greet"}], "missing required field 'text'", 5),
    ],
)
def test_bad_requests_are_decode_errors_with_the_request_id(frame: object, error: str, request_id: int | None) -> None:
    with pytest.raises(DecodeError, match=error) as caught:
        decode_request(msgpack.packb(frame))
    assert caught.value.request_id == request_id


def test_too_large_request_keeps_its_request_id_when_it_was_read() -> None:
    data = encode_request(8, Greet(text="x" * 100))
    with pytest.raises(TooLarge) as caught:
        decode_request(data, limits=Limits(max_frame_bytes=50))
    assert caught.value.request_id is None  # refused before a byte of it was read
    with pytest.raises(TooLarge, match="max_str_bytes") as caught:
        decode_request(data, limits=Limits(max_str_bytes=50))
    assert caught.value.request_id is None  # msgpack refused the whole frame


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (None, "reply body: expected map, got nil"),
        ({}, "reply 'ok': expected true or false, got nil"),
        ({"ok": 1}, "reply 'ok': expected true or false, got 1"),
        ({"ok": True}, "missing 'op'"),
        ({"ok": True, "op": "test.greet.result"}, "missing required field 'text'"),
        ({"ok": True, "op": "test.greet.result", "text": "x", "extra": 1}, "unknown field 'extra'"),
        ({"ok": False}, "reply 'error': expected map, got nil"),
        ({"ok": False, "error": {"code": "BUSY", "message": "m"}}, "'retryable': expected bool, got nil"),
        ({"ok": False, "error": {"code": 1, "message": "m", "retryable": True}}, "'code': expected str, got int"),
        ({"ok": False, "error": {"code": "BUSY", "message": b"m", "retryable": True}}, "'message': expected str"),
        ({"ok": False, "error": {"code": "BUSY", "message": "m", "retryable": True, "redirect": 1}}, "'redirect'"),
    ],
)
def test_bad_replies_are_decode_errors_with_the_request_id(body: object, error: str) -> None:
    with pytest.raises(DecodeError, match=error) as caught:
        decode_reply(msgpack.packb([1, "r", 6, body]))
    assert caught.value.request_id == 6


def test_reply_error_tolerates_what_a_newer_node_may_send() -> None:
    body = {"ok": False, "error": {"code": "QUOTA_EXCEEDED", "message": "slow down", "retryable": True, "hint": 5}}
    reply = decode_reply(msgpack.packb([1, "r", 6, body]))
    assert reply.error == ErrorInfo(code=ErrorCode.INTERNAL, message="[QUOTA_EXCEEDED] slow down", retryable=True)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (None, "expected \\[to_actor, from_actor, message\\], got nil"),
        (("echo", "gateway"), "expected \\[to_actor, from_actor, message\\], got array"),
        (("Echo", "gateway", [0xF103, 1, "n"]), "to_actor: not an actor name"),
        (("echo", "", [0xF103, 1, "n"]), "from_actor: not an actor name"),
        (("echo", "a" * 65, [0xF103, 1, "n"]), "from_actor: not an actor name"),
        (("echo", b"gateway", [0xF103, 1, "n"]), "from_actor: not an actor name"),
        (("echo", "gateway", [0xF103, 1]), "missing required field 'sender'"),
        (("echo", "gateway", {"op": "x"}), "a message is an array"),
    ],
)
def test_bad_actor_frames_are_decode_errors_with_the_correlation(body: object, error: str) -> None:
    with pytest.raises(DecodeError, match=error) as caught:
        decode_actor_frame(msgpack.packb([1, "a", 4, body]))
    assert caught.value.request_id == 4


def test_actor_frames_ignore_extra_trailing_body_elements() -> None:
    data = msgpack.packb([1, "a", 4, ["echo", "gateway", [0xF103, 1, "n"], "from the future"]])
    assert decode_actor_frame(data) == ActorFrame("echo", "gateway", 4, Probe(nonce=1, sender="n"))


def test_actor_names() -> None:
    for good in ("gateway", "keys.17", "n3:replicator", "a-b_c", "x" * 64):
        assert is_actor_name(good)
    for bad in ("", "Gateway", "x" * 65, "a b", "é", None, b"gateway", 7):
        assert not is_actor_name(bad)


# --- encoding mistakes are programming errors ----------------------------------


def test_encoders_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="actor names"):
        encode_actor_frame("Echo", "gateway", Probe(nonce=1, sender="n"))
    for bad_id in (-1, 2**64, True, "1"):
        with pytest.raises(ValueError, match="uint64"):
            encode_request(bad_id, Greet(text="x"))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="uint64"):
            encode_actor_frame("echo", "gateway", Probe(nonce=1, sender="n"), bad_id)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frame kind"):
        encode_frame("x", 1, None)
    with pytest.raises(TypeError, match="no op"):
        encode_reply(1, Probe(nonce=1, sender="n"))
    with pytest.raises(TypeError, match="field 'nonce'"):
        encode_actor_frame("echo", "gateway", Probe(nonce=2**64, sender="n"))
    with pytest.raises(ValueError):
        encode_error(1, "NOT_A_CODE", "x")  # type: ignore[arg-type]


def test_error_for_uses_the_exception_code_text_and_request_id() -> None:
    reply = decode_reply(error_for(Busy("queue full"), 3))
    assert reply.request_id == 3
    assert reply.error == ErrorInfo(code=ErrorCode.BUSY, message="queue full", retryable=True)
    exc = DecodeError("bad bytes")
    exc.request_id = 12
    reply = decode_reply(error_for(exc))
    assert reply.request_id == 12 and reply.error.code is ErrorCode.BAD_REQUEST  # type: ignore[union-attr]
    assert decode_reply(error_for(TooLarge("big"))).request_id == 0
    assert decode_reply(error_for(TooLarge("big"))).error.retryable is False  # type: ignore[union-attr]


# --- hostile input: only DecodeError, ever --------------------------------------

DECODERS = (decode_frame, decode_request, decode_reply, decode_actor_frame)


def every_decoder(data: bytes) -> None:
    for decoder in DECODERS:
        try:
            decoder(data)
        except DecodeError as exc:
            assert "internal decoder error" not in str(exc), exc


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    every_decoder(data)


@FUZZ
@given(any_msgpack)
def test_arbitrary_msgpack_values_raise_only_decode_error(value: object) -> None:
    every_decoder(msgpack.packb(value))


ERROR_KEYS = ("code", "message", "retryable", "redirect")
ops = st.sampled_from(["test.greet", "test.greet.result", "test.nope"])
near_miss_bodies = st.one_of(
    any_msgpack,
    st.fixed_dictionaries({"op": ops}, optional={"text": any_msgpack, "count": any_msgpack, "ok": any_msgpack}),
    st.fixed_dictionaries({"ok": st.booleans()}, optional={"op": ops, "text": any_msgpack, "error": any_msgpack}),
    st.fixed_dictionaries(
        {"ok": st.just(False)},
        optional={"error": st.fixed_dictionaries({}, optional=dict.fromkeys(ERROR_KEYS, any_msgpack))},
    ),
    st.tuples(any_msgpack | actor_names, any_msgpack | actor_names,
              st.lists(any_msgpack, max_size=4).map(lambda v: [0xF103, *v])),
)


@FUZZ
@given(version=st.sampled_from([1, 1, 1, 2]), kind=st.sampled_from(["q", "r", "a", "s", "x"]),
       rid=st.one_of(request_ids, st.integers(INT_MIN, -1), any_msgpack), body=near_miss_bodies)
def test_near_miss_frames_raise_only_decode_error(version: int, kind: str, rid: object, body: object) -> None:
    every_decoder(msgpack.packb([version, kind, rid, body]))


def test_peek_request_id_reads_the_id_of_a_frame_too_large_to_decode() -> None:
    from keyswarm.transport.frames import peek_request_id

    for rid in (0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**64 - 1):
        assert peek_request_id(msgpack.packb([1, "q", rid, {"op": "x"}])) == rid
        assert peek_request_id(msgpack.packb([1, "s", rid, [bytes(16), bytes(16)]]) + bytes(100)) == rid
    for junk in (b"", b"\x94", b"\x94\x01\xa1q", b"\x94\x01\xa1r\x05", b"\x93\x01\xa1q\x05", b"\x94\x02\xa1q\x05",
                 b"\x94\x01\xa1q\xd0\x05", b"\x94\x01\xa1q\xcf\x00\x00", b"\x94\x01\xa1q\xc0", bytes(1000)):
        assert peek_request_id(junk) == 0, junk
