"""The named-key fold and its snapshots.

The two properties the log rests on: any order of the same events folds to
the same state, and snapshot + tail equals a full replay at every split.
"""

from __future__ import annotations

import dataclasses
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyswarm.errors import DecodeError
from keyswarm.storage.bodies import (
    KeyConfigSet,
    KeyCreated,
    KeyDeleted,
    KeyDisabled,
    KeyEnabled,
    KeyVersionAdded,
    SignerKey,
    decode_body,
    tag_of_body,
)
from keyswarm.storage.events import GENESIS_PREV, Event
from keyswarm.storage import fold as fold_module
from keyswarm.storage.fold import PartitionState, fold
from keyswarm.storage.snapshot import decode_state, encode_state
from keyswarm.transport import codec

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_seqs: dict[str, int] = {}


def ev(origin: str, hlc: int, body: object, *, seq: int | None = None) -> Event:
    """An event as the fold sees it (chains are the verifier's business, not the fold's)."""
    if seq is None:
        seq = _seqs[origin] = _seqs.get(origin, 0) + 1
    subject = getattr(body, "name", "")
    return Event(partition=0, origin=origin, origin_seq=seq, hlc=hlc, type=tag_of_body(body), subject=subject,
                 body=codec.encode(body), prev=GENESIS_PREV)


def created(name: str, vid: bytes, algorithm: str = "aes256-gcm") -> KeyCreated:
    return KeyCreated(name=name, algorithm=algorithm, version_id=vid, material=b"wrapped-" + vid)


# --- random histories ------------------------------------------------------------

NAMES = ("app/a", "app/b", "app/c")
ORIGINS = ("n1", "n2", "n3")
ALGORITHMS = ("aes256-gcm", "chacha20-poly1305")
REQUESTS = tuple(bytes([i]) * 16 for i in range(1, 6))


@st.composite
def bodies(draw: st.DrawFn) -> object:
    name = draw(st.sampled_from(NAMES))
    vid = draw(st.sampled_from([b"v1", b"v2", b"v3", b"v4", b"v5", b"v6", b"v7", b"v8"]))
    kind = draw(st.sampled_from(["create", "create", "add", "add", "disable", "enable", "config", "config", "delete"]))
    # A few request fingerprints, so records collide (retries, reused ids) and the per-key bound is reached.
    request = draw(st.sampled_from([b"", b"", *REQUESTS]))
    if kind == "create":
        return KeyCreated(name=name, algorithm=draw(st.sampled_from(ALGORITHMS)), version_id=vid,
                          material=draw(st.binary(max_size=4)), request=request)
    if kind == "add":
        return KeyVersionAdded(name=name, version_id=vid, material=draw(st.binary(max_size=4)),
                               algorithm=draw(st.sampled_from(("", *ALGORITHMS))), request=request)
    if kind == "disable":
        return KeyDisabled(name=name, request=request)
    if kind == "enable":
        return KeyEnabled(name=name, request=request)
    if kind == "delete":
        return KeyDeleted(name=name, request=request)
    return KeyConfigSet(
        name=name,
        min_decryption_version=draw(st.none() | st.integers(1, 4)),
        deletion_allowed=draw(st.none() | st.booleans()),
        auto_rotate_period_s=draw(st.none() | st.sampled_from([0.0, 60.0, 3600.0])),
        request=request,
    )


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """Events of a few origins: per origin, seqs 1.. and strictly increasing HLCs;
    across origins HLCs collide often (small gaps), so ties by origin are exercised."""
    steps = draw(st.lists(st.tuples(st.sampled_from(ORIGINS), st.integers(0, 2), bodies()), max_size=40))
    seq: dict[str, int] = {}
    hlc: dict[str, int] = {}
    events = []
    for origin, gap, body in steps:
        seq[origin] = seq.get(origin, 0) + 1
        hlc[origin] = hlc.get(origin, 100) + 1 + gap
        events.append(ev(origin, hlc[origin], body, seq=seq[origin]))
    if draw(st.booleans()) and events:  # the network delivers some events twice
        events += draw(st.lists(st.sampled_from(events), max_size=5))
    return events


@PROPERTY
@given(events=histories(), seed=st.integers(0, 2**32))
def test_any_order_of_the_same_events_folds_to_the_same_state(events: list[Event], seed: int) -> None:
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    a, b = fold(events), fold(shuffled)
    assert a == b
    assert encode_state(a) == encode_state(b)  # and so do the snapshot bytes, on every node
    for name in NAMES:  # derived views agree too
        ka, kb = a.keys.get(name), b.keys.get(name)
        assert (ka and (ka.versions, ka.conflicts, ka.primary, ka.disabled)) == (
            kb and (kb.versions, kb.conflicts, kb.primary, kb.disabled))


@PROPERTY
@given(events=histories())
def test_snapshot_plus_tail_equals_a_full_replay_at_every_split(events: list[Event]) -> None:
    full = fold(events)
    for split in range(len(events) + 1):
        restored = decode_state(encode_state(fold(events[:split])))
        assert fold(events[split:], restored) == full, f"split at {split}"


@PROPERTY
@given(events=histories())
def test_folding_an_event_twice_changes_nothing(events: list[Event]) -> None:
    assert fold(events + events) == fold(events)


@PROPERTY
@given(events=histories(), seed=st.integers(0, 2**32))
def test_the_bound_on_request_records_keeps_the_fold_convergent(events: list[Event], seed: int) -> None:
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fold_module, "REQUESTS_KEPT_PER_KEY", 2)  # small, so histories pass it often
        a, b = fold(events), fold(shuffled)
    assert a == b
    assert all(len(k.requests) <= 2 for k in a.keys.values())


def test_a_write_with_a_request_id_is_remembered_per_key() -> None:
    state = fold([
        ev("n1", 10, KeyCreated(name="k", algorithm="aes256-gcm", version_id=b"v1", material=b"m", request=REQUESTS[0])),
        ev("n1", 11, KeyVersionAdded(name="k", version_id=b"v2", material=b"m", request=REQUESTS[1])),
        ev("n1", 12, KeyDisabled(name="k", request=REQUESTS[2])),
        ev("n1", 13, KeyEnabled(name="k")),  # no request id: nothing to remember
    ])
    key = state.keys["k"]
    assert key.applied(REQUESTS[0]) == (10, "n1", REQUESTS[0], tag_of_body(KeyCreated(
        name="k", algorithm="", version_id=b"x", material=b"")), b"v1")
    assert key.applied(REQUESTS[1]).version_id == b"v2"
    assert key.applied(REQUESTS[2]).version_id == b""
    assert key.applied(REQUESTS[3]) is None and len(key.requests) == 3
    assert decode_state(encode_state(state)) == state
    gone = fold([ev("n1", 14, KeyDeleted(name="k", request=REQUESTS[3]))], state)
    assert gone.keys["k"].requests == [] and decode_state(encode_state(gone)) == gone


def test_a_key_keeps_only_its_newest_request_records() -> None:
    events = [ev("n1", 100 + i, KeyDisabled(name="k", request=i.to_bytes(16, "big")))
              for i in range(fold_module.REQUESTS_KEPT_PER_KEY + 5)]
    key = fold(events).keys["k"]
    assert len(key.requests) == fold_module.REQUESTS_KEPT_PER_KEY
    assert key.applied((4).to_bytes(16, "big")) is None and key.applied((5).to_bytes(16, "big")) is not None


def test_a_request_fingerprint_of_the_wrong_length_does_not_decode() -> None:
    with pytest.raises(DecodeError, match="request fingerprint"):
        fold([ev("n1", 1, KeyDisabled(name="k", request=b"short"))])


def test_fold_does_not_change_the_state_it_starts_from() -> None:
    start = fold([ev("n1", 1, created("k", b"v1"))])
    before = encode_state(start)
    after = fold([ev("n1", 2, KeyDeleted(name="k")), ev("n2", 3, created("j", b"v9"))], start)
    assert encode_state(start) == before
    assert after.key("k") is None and start.key("k") is not None


# --- the rules -------------------------------------------------------------------


def test_concurrent_creates_keep_both_versions() -> None:
    a = ev("n1", 10, created("k", b"va"))
    b = ev("n2", 10, created("k", b"vb"))  # same HLC: origin breaks the tie
    state = fold([b, a])
    key = state.key("k")
    assert key is not None
    assert [v.version_id for v in key.versions] == [b"va", b"vb"]
    assert key.primary is not None and key.primary.version_id == b"vb"
    assert key.number_of(b"va") == 1 and key.version(2) == key.primary
    assert fold([a, b]) == state


def test_the_earliest_create_picks_the_algorithm_and_the_other_is_a_conflict() -> None:
    early = ev("n2", 5, created("k", b"v-ed", algorithm="ed25519"))
    late = ev("n1", 9, created("k", b"v-aes"))
    rotate_loser = ev("n1", 12, KeyVersionAdded(name="k", version_id=b"v-aes2", material=b"m", algorithm="aes256-gcm"))
    rotate_any = ev("n3", 13, KeyVersionAdded(name="k", version_id=b"v-3", material=b"m"))
    key = fold([late, rotate_loser, rotate_any, early]).key("k")
    assert key is not None and key.algorithm == "ed25519"
    assert [v.version_id for v in key.versions] == [b"v-ed", b"v-3"]
    assert [v.version_id for v in key.conflicts] == [b"v-aes", b"v-aes2"]  # kept, never used


def test_version_numbers_follow_hlc_order() -> None:
    events = [
        ev("n1", 10, created("k", b"v1")),
        ev("n1", 20, KeyVersionAdded(name="k", version_id=b"v2", material=b"m")),
        ev("n1", 30, KeyVersionAdded(name="k", version_id=b"v3", material=b"m")),
    ]
    key = fold(events).key("k")
    assert key is not None
    assert [key.number_of(v) for v in (b"v1", b"v2", b"v3")] == [1, 2, 3]
    assert key.primary is not None and key.primary.version_id == b"v3"
    assert key.version(0) is None and key.version(4) is None
    # A concurrent rotation with an earlier stamp arrives late: it slots in, numbers shift.
    late = fold([ev("n2", 15, KeyVersionAdded(name="k", version_id=b"vx", material=b"m"))], fold(events)).key("k")
    assert late is not None and [v.version_id for v in late.versions] == [b"v1", b"vx", b"v2", b"v3"]


def test_rotations_before_their_create_wait_for_it() -> None:
    add = ev("n2", 20, KeyVersionAdded(name="k", version_id=b"v2", material=b"m"))
    state = fold([add])
    assert state.key("k") is None and state.keys["k"].versions == ()
    key = fold([ev("n1", 10, created("k", b"v1"))], state).key("k")
    assert key is not None and [v.version_id for v in key.versions] == [b"v1", b"v2"]


def test_delete_wins_over_everything_forever() -> None:
    events = [
        ev("n1", 10, created("k", b"v1")),
        ev("n1", 20, KeyDeleted(name="k")),
        ev("n2", 30, KeyEnabled(name="k")),  # later by HLC: still deleted
        ev("n2", 31, KeyVersionAdded(name="k", version_id=b"v2", material=b"m")),
        ev("n2", 32, created("k", b"v3")),  # the name is never reused
        ev("n3", 15, KeyDeleted(name="k")),
    ]
    for order in (events, events[::-1]):
        state = fold(order)
        assert state.key("k") is None
        key = state.keys["k"]
        assert key.deleted == (15, "n3")  # the earliest delete
        assert key.records == {} and key.versions == () and key.settings == {}  # material forgotten


def test_disable_enable_is_last_writer_wins() -> None:
    create = ev("n1", 1, created("k", b"v1"))
    disable = ev("n1", 10, KeyDisabled(name="k"))
    enable = ev("n2", 9, KeyEnabled(name="k"))
    for order in ([create, disable, enable], [create, enable, disable]):
        key = fold(order).key("k")
        assert key is not None and key.disabled
    tie = ev("n2", 10, KeyEnabled(name="k"))  # same HLC: the greater origin wins
    key = fold([create, tie, disable]).key("k")
    assert key is not None and not key.disabled


def test_settings_are_registers_of_their_own() -> None:
    events = [
        ev("n1", 1, created("k", b"v1")),
        ev("n1", 10, KeyConfigSet(name="k", min_decryption_version=2, deletion_allowed=True)),
        ev("n2", 11, KeyConfigSet(name="k", deletion_allowed=False)),  # only this setting changes
        ev("n3", 5, KeyConfigSet(name="k", min_decryption_version=3, auto_rotate_period_s=60)),  # int: a float field
    ]
    key = fold(events[::-1]).key("k")
    assert key is not None
    assert key.setting("min_decryption_version") == 2
    assert key.setting("deletion_allowed") is False
    assert key.setting("auto_rotate_period_s") == 60.0 and type(key.setting("auto_rotate_period_s")) is float
    fresh = fold([events[0]]).key("k")
    assert fresh is not None and fresh.setting("auto_rotate_period_s") == 0.0 and not fresh.disabled


def test_other_event_types_leave_keys_alone_but_are_covered() -> None:
    signer = Event(partition=0, origin="n9", origin_seq=1, hlc=1, type=tag_of_body(SignerKey(public_key=b"k" * 32)),
                   subject="", body=codec.encode(SignerKey(public_key=b"k" * 32)), prev=GENESIS_PREV)
    state = fold([signer, ev("n1", 2, created("k", b"v1"), seq=7)])
    assert list(state.keys) == ["k"]
    assert state.covered == {"n9": 1, "n1": 7}


def test_a_key_body_that_does_not_decode_is_a_decode_error() -> None:
    bad = dataclasses.replace(ev("n1", 1, created("k", b"v1")), body=b"\x93\x01")
    with pytest.raises(DecodeError):
        fold([bad])
    mismatch = dataclasses.replace(ev("n1", 1, created("k", b"v1")), subject="other")
    with pytest.raises(DecodeError, match="subject"):
        fold([mismatch])
    state = PartitionState()
    with pytest.raises(DecodeError):
        state.apply(bad)
    assert state == PartitionState()  # a bad event changes nothing, not even `covered`



@PROPERTY
@given(events=histories())
def test_apply_with_the_decoded_body_folds_exactly_what_apply_decoding_it_does(events: list[Event]) -> None:
    # The storage actor hands the fold the body its draft check decoded (AppendBatch.bodies).
    decoding, given_bodies = PartitionState(), PartitionState()
    for event in events:
        decoding.apply(event)
        given_bodies.apply(event, decode_body(event))
        assert given_bodies == decoding
    assert encode_state(given_bodies) == encode_state(decoding)


def test_apply_decodes_a_body_of_another_type_than_the_event_s() -> None:
    event = ev("n1", 1, created("k", b"v1"))
    state = PartitionState()
    state.apply(event, KeyDisabled(name="k"))  # not the event's body type: ignored, the body is decoded
    assert state == fold([event])
    bad = dataclasses.replace(event, body=b"\x93\x01")
    with pytest.raises(DecodeError):
        PartitionState().apply(bad, KeyDisabled(name="k"))
    signer_body = SignerKey(public_key=b"k" * 32)
    signer = Event(partition=0, origin="n9", origin_seq=1, hlc=1, type=tag_of_body(signer_body), subject="",
                   body=codec.encode(signer_body), prev=GENESIS_PREV)
    state = PartitionState()
    state.apply(signer, signer_body)  # not a key body: covered, keys untouched
    assert state == fold([signer])

# --- snapshots -------------------------------------------------------------------


def sample_state() -> PartitionState:
    return fold([
        ev("n1", 10, created("a", b"v1")),
        ev("n2", 11, created("a", b"v2", algorithm="ed25519")),
        ev("n1", 12, KeyDisabled(name="a")),
        ev("n1", 13, KeyConfigSet(name="a", min_decryption_version=1, deletion_allowed=True,
                                  auto_rotate_period_s=3600.0)),
        ev("n3", 14, created("b", b"v3")),
        ev("n3", 15, KeyDeleted(name="b")),
        ev("n2", 16, KeyVersionAdded(name="c", version_id=b"v9", material=b"m")),
    ])


def test_snapshot_round_trips() -> None:
    state = sample_state()
    assert decode_state(encode_state(state)) == state
    assert decode_state(encode_state(PartitionState())) == PartitionState()


def test_snapshot_bytes_do_not_depend_on_insertion_order() -> None:
    state = sample_state()
    reordered = PartitionState(dict(reversed(state.keys.items())), dict(reversed(state.covered.items())))
    assert reordered == state
    assert encode_state(reordered) == encode_state(state)


def test_every_truncation_and_every_flipped_byte_is_a_decode_error() -> None:
    data = encode_state(sample_state())
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode_state(data[:cut])
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x20
        try:
            state = decode_state(bytes(flipped))
        except DecodeError:
            continue
        raise AssertionError(f"flipping byte {i} decoded to {state}")


def _rewrap(payload_tree: object) -> bytes:
    """A snapshot with a correct checksum around any payload: tests the checks behind the checksum."""
    from keyswarm.storage import snapshot

    payload = msgpack.packb(payload_tree)
    return msgpack.packb([snapshot.FORMAT, snapshot._checksum(payload), payload])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "truncated"),
        (msgpack.packb([2, b"", b""]), "format 2"),
        (msgpack.packb([1, b"x" * 16, msgpack.packb([[], []])]), "checksum mismatch"),
        (_rewrap([[["n2", 1], ["n1", 1]], []]), "canonical"),  # unsorted
        (_rewrap([[["n1", 1], ["n1", 2]], []]), "canonical"),  # duplicate
        (_rewrap([[["n1", -1]], []]), "origin_seq"),
        (_rewrap([[], [["k", [], None, [["colour", 1, "n1", "red"]], None]]]), "setting 'colour'"),
        (_rewrap([[], [["k", [], None, [["deletion_allowed", 1, "n1", 1]], None]]]), "deletion_allowed"),
        (_rewrap([[], [["k", [], [1, "n1", True], [], [2, "n1"]]]]), "keeps nothing but its tombstone"),
        (_rewrap([[], [["k", [[b"v", 1, "n1", b"m", "x", 1]], None, [], None]]]), "created: expected bool"),
        (_rewrap([[]]), "payload: expected an array of 2"),
    ],
)
def test_bad_snapshots_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        decode_state(data)
