"""Session keys: HKDF, in-session frames, and the replay window.

The window is checked against a set-based model with Hypothesis; frames are
checked against msgpack itself (the hand-written packer must write the same
bytes) and against every way a frame can be damaged or misdirected.
"""

from __future__ import annotations

import ast
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyswarm.crypto.session_keys import (
    C2S,
    REPLAY_WINDOW,
    S2C,
    FrameNotAuthentic,
    Replayed,
    ReplayWindow,
    SessionChannel,
    direction_keys,
    frame_header,
    hkdf_expand,
    hkdf_extract,
    nonce,
    open_frame,
    open_parsed,
    parse_frame,
    seal_frame,
)
from keyswarm.errors import DecodeError, DecryptFailed, ErrorCode, ProtocolError, UnsupportedVersion
from keyswarm.transport.codec import UINT_MAX
from keyswarm.transport.frames import decode_reply, error_for

SID_A = bytes(range(16))
SID_B = bytes(range(16, 32))
KEYS_A = (b"\x01" * 32, b"\x02" * 32)
KEYS_B = (b"\x03" * 32, b"\x04" * 32)


def pair(session_id: bytes = SID_A, keys: tuple[bytes, bytes] = KEYS_A) -> tuple[SessionChannel, SessionChannel]:
    """(client end, node end) of one session."""
    c2s, s2c = keys
    return (
        SessionChannel(session_id, c2s=c2s, s2c=s2c, client_side=True),
        SessionChannel(session_id, c2s=c2s, s2c=s2c, client_side=False),
    )


# --- HKDF ---------------------------------------------------------------------------


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    prk = hkdf_extract(salt, ikm)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    assert hkdf_expand(prk, info, 42).hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_matches_rfc5869_test_case_3_empty_salt() -> None:
    prk = hkdf_extract(b"", bytes.fromhex("0b" * 22))
    assert prk.hex() == "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04"
    assert hkdf_expand(prk, b"", 42).hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_direction_keys_differ_and_depend_on_the_prefix() -> None:
    prk = hkdf_extract(b"salt", b"ikm")
    c2s, s2c = direction_keys(prk)
    hs_c2s, hs_s2c = direction_keys(prk, "hs ")
    assert len({c2s, s2c, hs_c2s, hs_s2c}) == 4


def test_nonces_name_the_direction_then_the_counter() -> None:
    assert nonce(C2S, 1) == bytes.fromhex("00000001" "0000000000000001")
    assert nonce(S2C, 2**64 - 1) == bytes.fromhex("00000002" "ffffffffffffffff")
    assert frame_header(258, SID_A) == bytes.fromhex("0173" "0000000000000102") + SID_A


# --- frames: round trips and the wire form -----------------------------------------


def test_round_trip_both_directions() -> None:
    client, node = pair()
    for i in range(3):
        assert node.open(client.seal(b"request %d" % i)) == (i, b"request %d" % i)
        assert client.open(node.seal(b"reply %d" % i)) == (i, b"reply %d" % i)
    assert client.next_counter == node.next_counter == 3


def test_a_frame_is_the_envelope_with_the_counter_in_the_request_id_slot() -> None:
    client, _ = pair()
    client.next_counter = 300
    frame = client.seal(b"x")
    version, kind, counter, body = msgpack.unpackb(frame)
    assert (version, kind, counter) == (1, "s", 300)
    assert body[0] == SID_A and len(body[1]) == 1 + 16


def _pack_frame(counter: int, session_id: bytes, ciphertext: bytes) -> bytes:
    return msgpack.packb([1, "s", counter, [session_id, ciphertext]])


@pytest.mark.parametrize("counter", [0, 127, 128, 65536, 2**32, UINT_MAX])
@pytest.mark.parametrize("size", [0, 255, 65536])
def test_a_sealed_frame_is_the_plain_msgpack_of_its_parts(counter: int, size: int) -> None:
    client, _ = pair()
    frame = seal_frame(client, counter, b"\xab" * size)
    parsed = parse_frame(frame)
    assert parsed[:2] == (counter, SID_A) and len(parsed[2]) == size + 16
    assert frame == _pack_frame(*parsed)


@settings(max_examples=200, deadline=None)
@given(counter=st.integers(0, UINT_MAX), plaintext=st.binary(max_size=300))
def test_open_inverts_seal(counter: int, plaintext: bytes) -> None:
    client, node = pair()
    assert open_frame(node, seal_frame(client, counter, plaintext), window=node) == (counter, plaintext)


def test_seal_refuses_a_counter_outside_uint64() -> None:
    client, _ = pair()
    for bad in (-1, UINT_MAX + 1, True):
        with pytest.raises(ValueError, match="uint64"):
            seal_frame(client, bad, b"x")  # type: ignore[arg-type]


# --- replay ----------------------------------------------------------------------


def test_a_replayed_frame_is_refused_and_answers_with_its_counter() -> None:
    client, node = pair()
    frame = client.seal(b"once")
    node.open(frame)
    with pytest.raises(Replayed) as info:
        node.open(frame)
    assert not info.value.too_old and info.value.code is ErrorCode.REPLAYED
    reply = decode_reply(error_for(info.value))
    assert reply.request_id == 0 and reply.error is not None and reply.error.code is ErrorCode.REPLAYED


def test_reordered_frames_within_the_window_are_accepted_once() -> None:
    client, node = pair()
    frames = [client.seal(b"%d" % i) for i in range(REPLAY_WINDOW)]
    for frame in reversed(frames):  # the newest first, then every older one still inside the window
        node.open(frame)
    for frame in frames:
        with pytest.raises(Replayed):
            node.open(frame)


def test_a_frame_a_whole_window_behind_is_too_old() -> None:
    client, node = pair()
    old = seal_frame(client, 5, b"late")
    node.open(seal_frame(client, 5 + REPLAY_WINDOW, b"new"))
    with pytest.raises(Replayed, match="outside the window") as info:
        node.open(old)
    assert info.value.too_old and info.value.request_id == 5
    node.open(seal_frame(client, 6, b"just inside"))


def test_a_huge_jump_forward_resets_the_window_in_constant_space() -> None:
    client, node = pair()
    node.open(seal_frame(client, 3, b"a"))
    node.open(seal_frame(client, 2**63, b"b"))
    assert node.bitmap == 1 and node.highest == 2**63
    with pytest.raises(Replayed):
        node.open(seal_frame(client, 3, b"a"))


def test_a_forged_frame_does_not_move_the_window() -> None:
    client, node = pair()
    forged = bytearray(seal_frame(client, 5000, b"x"))
    forged[-1] ^= 1
    with pytest.raises(FrameNotAuthentic):
        node.open(bytes(forged))
    assert node.highest == -1
    node.open(seal_frame(client, 1, b"real"))  # would be too old had the forgery counted


class WindowModel:
    """The obvious (unbounded) definition the bitmap must agree with."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.highest = -1

    def offer(self, counter: int) -> bool:
        if counter in self.seen or counter <= self.highest - REPLAY_WINDOW:
            return False
        self.seen.add(counter)
        self.highest = max(self.highest, counter)
        return True


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(0, 3000), st.integers(0, 2**64 - 1), st.integers(1020, 1030)),
        max_size=200,
    )
)
def test_the_window_agrees_with_a_set_based_model(counters: list[int]) -> None:
    window, model = ReplayWindow(), WindowModel()
    for counter in counters:
        expected = model.offer(counter)
        try:
            window.check(counter)
        except Replayed:
            accepted = False
        else:
            window.accept(counter)
            accepted = True
        assert accepted == expected, f"counter {counter} after {counters[: counters.index(counter)]}"
        assert window.bitmap.bit_length() <= REPLAY_WINDOW


# --- frames that must not open -----------------------------------------------------


def test_a_frame_from_another_session_fails_authentication() -> None:
    client_a, node_a = pair(SID_A, KEYS_A)
    client_b, node_b = pair(SID_B, KEYS_B)
    frame = client_a.seal(b"for a")
    with pytest.raises(FrameNotAuthentic, match="another session"):
        node_b.open(frame)
    # Relabelled with B's session id, it is B's id with A's ciphertext: the AEAD refuses it.
    counter, _, ciphertext = parse_frame(frame)
    relabelled = _pack_frame(counter, SID_B, ciphertext)
    with pytest.raises(FrameNotAuthentic, match="does not authenticate"):
        node_b.open(relabelled)
    assert node_b.highest == -1
    assert node_a.open(frame) == (0, b"for a")


def test_the_same_keys_under_another_session_id_do_not_open() -> None:
    client, _ = pair(SID_A, KEYS_A)
    _, node_same_keys = pair(SID_B, KEYS_A)
    counter, _, ciphertext = parse_frame(client.seal(b"x"))
    with pytest.raises(FrameNotAuthentic):
        open_parsed(node_same_keys, counter, SID_B, ciphertext, window=node_same_keys)


def test_a_frame_reflected_back_to_its_sender_does_not_open() -> None:
    client, _ = pair()
    with pytest.raises(FrameNotAuthentic):
        client.open(client.seal(b"mine"))


@pytest.mark.parametrize("where", ["counter", "ciphertext", "tag"])
def test_tampering_with_header_or_ciphertext_fails_authentication(where: str) -> None:
    client, node = pair()
    frame = client.seal(b"payload of some length")
    counter, sid, ciphertext = parse_frame(frame)
    if where == "counter":
        damaged = _pack_frame(counter + 1, sid, ciphertext)
    elif where == "ciphertext":
        damaged = _pack_frame(counter, sid, bytes([ciphertext[0] ^ 0x80]) + ciphertext[1:])
    else:
        damaged = _pack_frame(counter, sid, ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
    with pytest.raises(FrameNotAuthentic) as info:
        node.open(damaged)
    assert isinstance(info.value, DecryptFailed) and info.value.code is ErrorCode.UNAUTHENTICATED
    assert node.open(frame) == (0, b"payload of some length")


@pytest.mark.parametrize(
    ("data", "match", "request_id"),
    [
        (b"", "truncated", None),
        (b"\xc1", "invalid msgpack", None),
        (msgpack.packb({"a": 1}), "a frame is an array", None),
        (msgpack.packb([1, "q", 7, {"op": "x"}]), "expected a session frame", 7),
        (msgpack.packb([1, "s", -1, [SID_A, b"x" * 16]]), "counter", None),
        (msgpack.packb([1, "s", 7]), "4 elements", 7),
        (msgpack.packb([1, "s", 7, b"x"]), "session_id, ciphertext", 7),
        (msgpack.packb([1, "s", 7, [SID_A]]), "session_id, ciphertext", 7),
        (msgpack.packb([1, "s", 7, [b"short", b"x" * 16]]), "session id", 7),
        (msgpack.packb([1, "s", 7, ["0123456789abcdef", b"x" * 16]]), "session id", 7),
        (msgpack.packb([1, "s", 7, [SID_A, b"x" * 15]]), "ciphertext", 7),
        (msgpack.packb([1, "s", 7, [SID_A, "text" * 8]]), "ciphertext", 7),
        (msgpack.packb([1, "s", 7, [SID_A, b"x" * 16]]) + b"\x00", "trailing", None),
    ],
)
def test_garbage_is_a_decode_error_naming_the_counter_when_known(
    data: bytes, match: str, request_id: int | None
) -> None:
    _, node = pair()
    with pytest.raises(DecodeError, match=match) as info:
        node.open(data)
    assert info.value.request_id == request_id
    assert node.highest == -1


def test_a_future_version_is_unsupported_version() -> None:
    _, node = pair()
    with pytest.raises(UnsupportedVersion) as info:
        node.open(msgpack.packb([2, "s", 9, [SID_A, b"x" * 16]]))
    assert info.value.request_id == 9 and info.value.code is ErrorCode.UNSUPPORTED_VERSION


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_never_escape_as_anything_but_decode_or_auth_errors(data: bytes) -> None:
    _, node = pair()
    with pytest.raises((DecodeError, FrameNotAuthentic)):
        node.open(data)


def test_error_replies_for_refused_frames_carry_the_frame_counter() -> None:
    client, node = pair()
    frame = bytearray(seal_frame(client, 41, b"x"))
    frame[-1] ^= 1
    with pytest.raises(FrameNotAuthentic) as info:
        node.open(bytes(frame))
    assert isinstance(info.value, ProtocolError)
    reply = decode_reply(error_for(info.value))
    assert reply.request_id == 41 and reply.error is not None and reply.error.code is ErrorCode.UNAUTHENTICATED


def test_window_none_skips_the_replay_check_on_purpose() -> None:
    client, node = pair()
    frame = client.seal(b"x")
    assert open_frame(node, frame, window=None) == open_frame(node, frame, window=None)


def test_channels_check_their_key_and_id_sizes() -> None:
    with pytest.raises(ValueError, match="session id"):
        SessionChannel(b"short", c2s=KEYS_A[0], s2c=KEYS_A[1], client_side=True)
    with pytest.raises(ValueError, match="32 bytes"):
        SessionChannel(SID_A, c2s=b"k", s2c=KEYS_A[1], client_side=True)


# --- the sans-IO rule ------------------------------------------------------------

PURE_MODULES = ("session_keys", "session_table", "tickets", "handshake", "handshake_messages", "resumption")
BANNED = {"asyncio", "zmq", "lmdb", "time", "os", "random", "socket", "threading"}


@pytest.mark.parametrize("name", PURE_MODULES)
def test_session_modules_are_sans_io(name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "keyswarm" / "crypto" / f"{name}.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in BANNED]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in BANNED:
            found.append(node.module)
    assert not found, f"keyswarm/crypto/{name}.py imports {found}: it runs inside actors"
