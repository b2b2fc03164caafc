"""Session suites (docs/protocol.md 12.6): negotiation, transcript binding, AES-256-GCM frames,
and the large-frame fast paths (in-place sealing, copy-free parsing) that must give the same bytes."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from test_handshake import Net, Pair, net, refused  # noqa: F401 (net: the fixture)

from keyswarm.crypto.handshake import ClientCredentials, ClientHandshake, PeerAuthFailed, VersionMismatch
from keyswarm.crypto.resumption import ClientResumption, accept_resume
from keyswarm.crypto.session_keys import (
    IN_PLACE_FROM_BYTES,
    FrameNotAuthentic,
    Replayed,
    SUITE_AES256_GCM,
    SUITE_CHACHA20_POLY1305,
    SessionChannel,
    cpu_has_aes,
    frame_header,
    open_frame,
    parse_frame,
    preferred_suites,
)
from keyswarm.errors import DecodeError
from keyswarm.transport.codec import Limits

T = 1_772_366_400.0
SID = bytes(range(16))
C2S_KEY, S2C_KEY = bytes(range(32)), bytes(range(32, 64))


def pair_with(net: Net, suites: tuple[int, ...], node_suites: tuple[int, ...] | None = None) -> Pair:
    pair = Pair(net, "ed25519", settings=dataclasses.replace(net.settings, suites=node_suites)
                if node_suites else None)
    pair.client = ClientHandshake(ClientCredentials(root_certificate=net.root, certificate=pair.who.certificate,
                                                    intermediates=pair.who.intermediates), suites=suites)
    return pair


# --- negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize("offered, node_speaks, chosen", [
    ((), (2, 1), SUITE_CHACHA20_POLY1305),  # an older client: ChaCha20, nothing mixed
    ((2, 1), (2, 1), SUITE_AES256_GCM),
    ((1, 2), (2, 1), SUITE_CHACHA20_POLY1305),  # the client's order wins
    ((2, 1), (1,), SUITE_CHACHA20_POLY1305),
    ((9, 2), (2, 1), SUITE_AES256_GCM),  # unknown suites are skipped
])
def test_the_node_takes_the_clients_first_suite_it_speaks(net: Net, offered, node_speaks, chosen) -> None:
    pair = pair_with(net, offered, node_speaks)
    seen: dict[str, object] = {}
    pair.hooks["Challenge"] = lambda challenge: seen.setdefault("challenge", challenge)
    mine, theirs = pair.run()
    assert mine.channel.suite == theirs.suite == chosen
    assert seen["challenge"].suite == (chosen if offered else 0)  # type: ignore[attr-defined]
    assert pair.sent["Hello"].suites == offered  # type: ignore[attr-defined]
    frame = mine.channel.seal(b"ping")
    assert theirs.open(frame) == (0, b"ping") and mine.channel.open(theirs.seal(b"pong")) == (0, b"pong")


def test_no_common_suite_is_a_version_mismatch(net: Net) -> None:
    pair = pair_with(net, (2,), (1,))
    with pytest.raises(VersionMismatch, match="suites"):
        pair.challenge()


@pytest.mark.parametrize("suites", [tuple(range(1, 18)), (0,), (70_000,)])
def test_malformed_suite_lists_are_refused(net: Net, suites: tuple[int, ...]) -> None:
    pair = pair_with(net, (2, 1))
    hello = dataclasses.replace(pair.hello(), suites=suites)
    refused(lambda: pair.challenge(hello), "malformed")


def test_a_suite_list_stripped_in_transit_is_refused(net: Net) -> None:
    """An active attacker who removes the client's offer (to force ChaCha20): the node answers suite 0,
    which the client refuses before anything else; forging that too would break the signature (below)."""
    pair = pair_with(net, (2, 1))
    pair.hooks["Hello"] = lambda hello: dataclasses.replace(hello, suites=())
    refused(lambda: pair.auth(), "version")  # "node chose session suite 0, we offered (2, 1)"
    pair = pair_with(net, (2, 1))
    pair.hooks["Hello"] = lambda hello: dataclasses.replace(hello, suites=())
    pair.hooks["Challenge"] = lambda challenge: dataclasses.replace(challenge, suite=1)
    refused(lambda: pair.auth(), "signature")


def test_a_suite_list_reordered_in_transit_breaks_the_node_signature(net: Net) -> None:
    pair = pair_with(net, (2, 1))
    pair.hooks["Hello"] = lambda hello: dataclasses.replace(hello, suites=(1, 2))
    refused(lambda: pair.auth(), "signature")


def test_a_chosen_suite_changed_in_transit_breaks_the_node_signature(net: Net) -> None:
    pair = pair_with(net, (2, 1))
    pair.hooks["Challenge"] = lambda challenge: dataclasses.replace(challenge, suite=1)
    refused(lambda: pair.auth(), "signature")


def test_the_client_refuses_a_suite_it_did_not_offer(net: Net) -> None:
    pair = pair_with(net, (2,))
    pair.hooks["Challenge"] = lambda challenge: dataclasses.replace(challenge, suite=1)
    with pytest.raises(VersionMismatch, match="we offered"):
        pair.auth()


def test_resumption_negotiates_its_own_suite(net: Net) -> None:
    held, _ = pair_with(net, (1, 2)).run()
    assert held.channel.suite == SUITE_CHACHA20_POLY1305
    for offered, chosen in (((2, 1), SUITE_AES256_GCM), ((), SUITE_CHACHA20_POLY1305)):
        client = ClientResumption.from_session(held, suites=offered)
        msg = client.resume(lambda n: bytes(n))
        reply, theirs = accept_resume(msg, settings=net.settings, tickets=net.tickets, now=T + 5,
                                      entropy=lambda n: b"\x07" * n)
        assert reply.suite == (chosen if offered else 0)
        mine = client.receive_resumed(reply)
        assert mine.channel.suite == theirs.suite == chosen
        assert theirs.open(mine.channel.seal(b"x")) == (0, b"x")


def test_cpu_detection_reads_the_aes_flag_of_x86_and_arm() -> None:
    assert cpu_has_aes("flags\t\t: fpu vme sse2 aes avx2\n")
    assert cpu_has_aes("Features\t: fp asimd evtstrm aes pmull sha1\n")
    assert not cpu_has_aes("flags\t\t: fpu vme sse2 avx2 vaes_missing\n")
    assert not cpu_has_aes("")
    assert preferred_suites("flags : aes\n") == (SUITE_AES256_GCM, SUITE_CHACHA20_POLY1305)
    assert preferred_suites("flags : sse2\n") == (SUITE_CHACHA20_POLY1305, SUITE_AES256_GCM)


def test_an_unknown_suite_cannot_make_a_channel() -> None:
    with pytest.raises(ValueError, match="unknown session suite"):
        SessionChannel(SID, c2s=C2S_KEY, s2c=S2C_KEY, client_side=True, suite=3)


# --- frames: the suite's AEAD, and the large-frame paths ------------------------------------


def channels(suite: int, counter: int = 0) -> tuple[SessionChannel, SessionChannel]:
    client = SessionChannel(SID, c2s=C2S_KEY, s2c=S2C_KEY, client_side=True, suite=suite, next_counter=counter)
    node = SessionChannel(SID, c2s=C2S_KEY, s2c=S2C_KEY, client_side=False, suite=suite)
    return client, node


@pytest.mark.parametrize("suite, aead", [(1, ChaCha20Poly1305), (2, AESGCM)])
def test_a_frame_is_sealed_with_its_suites_aead(suite: int, aead: type) -> None:
    client, _ = channels(suite, counter=5)
    frame = client.seal(b"hello")
    nonce = (1).to_bytes(4, "big") + (5).to_bytes(8, "big")
    expected = aead(C2S_KEY).encrypt(nonce, b"hello", frame_header(5, SID))
    assert frame == msgpack.packb([1, "s", 5, [SID, expected]])


COUNTERS = [0, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**64 - 2]
SIZES = [IN_PLACE_FROM_BYTES - 1, IN_PLACE_FROM_BYTES, IN_PLACE_FROM_BYTES + 1, 1 << 20]


@pytest.mark.parametrize("suite", [1, 2])
@pytest.mark.parametrize("size", SIZES)
def test_large_frames_are_the_same_bytes_msgpack_gives_and_parse_to_the_same_parts(suite: int, size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for counter in COUNTERS:
        client, node = channels(suite, counter)
        frame = client.seal(plaintext)
        nonce = (1).to_bytes(4, "big") + counter.to_bytes(8, "big")
        ciphertext = client.aead(C2S_KEY).encrypt(nonce, plaintext, frame_header(counter, SID))
        assert bytes(frame) == msgpack.packb([1, "s", counter, [SID, ciphertext]]), (size, counter)
        got_counter, got_sid, got_ct = parse_frame(bytes(frame))
        assert (got_counter, got_sid, bytes(got_ct)) == (counter, SID, ciphertext)
        assert node.open(bytes(frame)) == (counter, plaintext)


@pytest.mark.parametrize("damage", ["short", "long", "bin16", "counter-tag", "sid-length"])
def test_hostile_large_frames_fall_back_to_the_strict_parser(damage: str) -> None:
    client, node = channels(2)
    frame = bytearray(client.seal(bytes(IN_PLACE_FROM_BYTES + 10)))
    if damage == "short":
        frame = frame[:-1]
    elif damage == "long":
        frame += b"\x00"
    elif damage == "bin16":
        frame[22] = 0xC5  # the ciphertext's bin32 tag as bin16: the lengths no longer add up
    elif damage == "counter-tag":
        frame[4] = 0xC1  # never used in msgpack
    elif damage == "sid-length":
        frame[7] = 0x11
    with pytest.raises((DecodeError, PeerAuthFailed, Exception)) as info:
        node.open(bytes(frame))
    assert not isinstance(info.value, (AssertionError, IndexError, TypeError)), repr(info.value)


def test_a_large_frame_in_another_valid_msgpack_form_reads_as_the_strict_parser_reads_it() -> None:
    client, node = channels(2)
    frame = bytes(client.seal(bytes(IN_PLACE_FROM_BYTES + 10)))
    wide = b"\x94\x01\xa1s\xcc\x00" + frame[5:]  # counter 0 as a uint8: valid msgpack, not the smallest form
    assert node.open(wide) == (0, bytes(IN_PLACE_FROM_BYTES + 10))


def test_a_large_frame_over_the_bin_limit_is_refused() -> None:
    client, _ = channels(2)
    frame = bytes(client.seal(bytes(IN_PLACE_FROM_BYTES * 2)))
    with pytest.raises(DecodeError):
        parse_frame(frame, limits=Limits(max_bin_bytes=IN_PLACE_FROM_BYTES))
    assert open_frame(channels(2)[1], frame, window=None)[0] == 0


_LARGE_FRAME = bytes(channels(2)[0].seal(bytes(range(256)) * 300))  # 76,800 B of plaintext: the in-place path


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_LARGE_FRAME) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(-40, 40))
def test_mutated_large_frames_never_escape_as_anything_but_decode_or_auth_errors(edits, resize) -> None:
    """Hostile bytes on the copy-free parser: byte edits in the head or body and truncation or padding
    give DecodeError or an authentication failure (never another exception, never a plaintext)."""
    frame = bytearray(_LARGE_FRAME)
    for at, value in edits:
        frame[at] = value
    frame = frame[:len(frame) + resize] if resize < 0 else frame + bytes(resize)
    if bytes(frame) == _LARGE_FRAME:
        return
    node = channels(2)[1]
    try:
        node.open(bytes(frame))
    except (DecodeError, FrameNotAuthentic, Replayed):
        return
    raise AssertionError("a mutated frame opened")
