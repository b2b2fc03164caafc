"""Events: canonical bytes, digests, partitions and the typed bodies.

The digest and partition vectors are pinned: changing them changes every
chain and every partition already on disk, so a failure here means "you
broke the log format", not "update the constant".
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyswarm.errors import DecodeError
from keyswarm.storage.bodies import (
    BODY_TAGS,
    KEY_BODIES,
    KeyConfigSet,
    KeyCreated,
    KeyDeleted,
    KeyVersionAdded,
    SignerKey,
    decode_body,
    tag_of_body,
)
from keyswarm.storage.events import GENESIS_PREV, Event, canonical_bytes, digest, event_and_digest, partition_of
from keyswarm.transport import codec

VECTOR = Event(
    partition=7, origin="node-a", origin_seq=42, hlc=(1_700_000_000_000 << 16) | 3, type=0x0410,
    subject="app1/payments", body=b"\x01\x02\x03", prev=bytes(range(32)),
)
VECTOR_CANONICAL_HEX = (
    "99cd030107a66e6f64652d612acf018bcfe568000003cd0410ad617070312f7061796d656e7473c403010203"
    "c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
)
VECTOR_DIGEST_HEX = "27d44047027d18dae3268e0bac48dab71f67d66794dbd936699203ff3ad99a75"

events = st.builds(
    Event,
    partition=st.integers(0, 2**16 - 1),
    origin=st.text(min_size=1, max_size=12),
    origin_seq=st.integers(1, 2**63),
    hlc=st.integers(0, 2**64 - 1),
    type=st.integers(0x0400, 0x04FF),
    subject=st.text(max_size=20),
    body=st.binary(max_size=40),
    prev=st.binary(min_size=32, max_size=32),
    sig=st.binary(max_size=64),
)


def test_digest_test_vector() -> None:
    assert canonical_bytes(VECTOR).hex() == VECTOR_CANONICAL_HEX
    assert digest(VECTOR).hex() == VECTOR_DIGEST_HEX
    # The same from first principles: msgpack of [tag, fields but sig], BLAKE2b-256 personalised.
    fields = [0x0301, 7, "node-a", 42, VECTOR.hlc, 0x0410, "app1/payments", b"\x01\x02\x03", bytes(range(32))]
    expected = hashlib.blake2b(msgpack.packb(fields), digest_size=32, person=b"keyswarm.ev.v1").digest()
    assert digest(VECTOR) == expected


def test_sig_is_not_part_of_the_canonical_bytes() -> None:
    signed = dataclasses.replace(VECTOR, sig=b"\x07" * 64)
    assert canonical_bytes(signed) == canonical_bytes(VECTOR)
    assert digest(signed) == digest(VECTOR)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Event) if f.name != "sig"])
def test_every_other_field_changes_the_digest(name: str) -> None:
    value = getattr(VECTOR, name)
    changed = {int: lambda: value + 1, str: lambda: value + "x", bytes: lambda: value[:-1] + b"\xff"}[type(value)]()
    assert digest(dataclasses.replace(VECTOR, **{name: changed})) != digest(VECTOR)


@settings(max_examples=100, deadline=None)
@given(event=events)
def test_events_round_trip_through_the_codec_and_keep_their_digest(event: Event) -> None:
    back = codec.decode(codec.encode(event), expect=Event)
    assert back == event
    assert digest(back) == digest(event)



@settings(max_examples=200, deadline=None)
@given(event=events)
def test_event_and_digest_is_the_event_and_its_digest(event: Event) -> None:
    # The sealer's fast constructor: the same object as Event(...), the same digest.
    unsigned = dataclasses.replace(event, sig=b"")
    built, built_digest = event_and_digest(*(getattr(event, f.name) for f in dataclasses.fields(Event) if f.name != "sig"))
    assert type(built) is Event
    assert built == unsigned and hash(built) == hash(unsigned) and repr(built) == repr(unsigned)
    assert codec.encode(built) == codec.encode(unsigned)
    assert built_digest == digest(unsigned)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.sig = b"x"  # type: ignore[misc]


def test_event_and_digest_matches_the_test_vector() -> None:
    fields = (VECTOR.partition, VECTOR.origin, VECTOR.origin_seq, VECTOR.hlc, VECTOR.type, VECTOR.subject, VECTOR.body, VECTOR.prev)
    assert event_and_digest(*fields) == (VECTOR, bytes.fromhex(VECTOR_DIGEST_HEX))

def test_genesis_prev_is_32_zero_bytes() -> None:
    assert GENESIS_PREV == bytes(32)


def test_partition_vectors_are_stable() -> None:
    assert [partition_of(s, 16) for s in ("app1/payments", "a", "key-0", "日本")] == [8, 4, 8, 14]
    assert [partition_of(s, 1024) for s in ("app1/payments", "a", "key-0", "日本")] == [680, 868, 968, 766]


def test_network_wide_events_live_in_partition_0() -> None:
    assert partition_of("", 16) == 0
    assert partition_of("", 1) == 0


def test_partitions_are_spread_evenly() -> None:
    partitions = 16
    counts = collections.Counter(partition_of(f"tenant-{i // 100}/key-{i}", partitions) for i in range(16_000))
    assert set(counts) == set(range(partitions))
    # 1000 expected per partition; +-15 % is more than 4 standard deviations.
    assert all(850 <= n <= 1150 for n in counts.values()), counts


@given(subject=st.text(min_size=1, max_size=30), partitions=st.integers(1, 4096))
def test_partition_is_in_range_and_deterministic(subject: str, partitions: int) -> None:
    p = partition_of(subject, partitions)
    assert 0 <= p < partitions
    assert partition_of(subject, partitions) == p


# --- typed bodies ---------------------------------------------------------------


def test_bodies_have_tags_in_their_block() -> None:
    for cls in (SignerKey, *KEY_BODIES):
        assert codec.tag_of(cls) in BODY_TAGS, cls


def test_tag_of_body_refuses_what_is_not_a_body() -> None:
    with pytest.raises(TypeError, match="not an event body"):
        tag_of_body(VECTOR)
    with pytest.raises(TypeError, match="not a registered message"):
        tag_of_body(object())


def _event(body: object, subject: str, partition: int = 3) -> Event:
    return dataclasses.replace(VECTOR, type=tag_of_body(body), subject=subject, body=codec.encode(body),
                               partition=partition)


@pytest.mark.parametrize(
    "body",
    [
        KeyCreated(name="k", algorithm="aes256-gcm", version_id=b"v1", material=b"wrapped"),
        KeyVersionAdded(name="k", version_id=b"v2", material=b"wrapped", algorithm="aes256-gcm"),
        KeyConfigSet(name="k", min_decryption_version=2, deletion_allowed=True, auto_rotate_period_s=3600.0),
        KeyDeleted(name="k"),
    ],
)
def test_decode_body_round_trips(body: object) -> None:
    assert decode_body(_event(body, "k")) == body


def test_signer_key_round_trips_in_partition_0() -> None:
    body = SignerKey(public_key=b"\x01" * 32)
    assert decode_body(_event(body, "", partition=0)) == body


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (_event(KeyDeleted(name="k"), "other"), "names key 'k' but the event's subject is 'other'"),
        (_event(KeyDeleted(name=""), ""), "empty key name"),
        (_event(KeyCreated(name="k", algorithm="a", version_id=b"", material=b""), "k"), "version_id of 0 bytes"),
        (_event(KeyConfigSet(name="k", min_decryption_version=0), "k"), "min_decryption_version 0 < 1"),
        (_event(SignerKey(public_key=b"\x01" * 32), "", partition=2), "partition 0"),
        (_event(SignerKey(public_key=b"\x01" * 31), "", partition=0), "32 bytes"),
        (_event(SignerKey(public_key=b"\x01" * 32, algorithm="rsa"), "", partition=0), "unsupported algorithm"),
        (dataclasses.replace(VECTOR, type=0x04FE), "unknown event type"),
        (dataclasses.replace(VECTOR, type=0x0301), "not an event body"),
        (dataclasses.replace(_event(KeyDeleted(name="k"), "k"), body=b"\xc1"), "invalid msgpack"),
        (dataclasses.replace(_event(KeyDeleted(name="k"), "k"), type=0x0410), "expected KeyCreated"),
    ],
)
def test_decode_body_refuses_bad_bodies(event: Event, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        decode_body(event)
