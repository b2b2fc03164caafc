"""Origin chains: sealing, signed checkpoints, key rotation, and every kind of break.

Each planted break must be reported at the right origin_seq with the right
reason: `keyswarm audit verify` prints exactly these.
"""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from keyswarm.storage.bodies import KeyCreated, KeyDeleted, KeyDisabled, SignerKey, decode_body
from keyswarm.storage.chain import (
    SIG_CONTEXT,
    BreakReason,
    ChainBreak,
    ChainVerifier,
    Draft,
    OriginChain,
    Signer,
    draft,
    signature_valid,
    verify_chain,
)
from keyswarm.storage.events import GENESIS_PREV, Event, Head, digest, partition_of
from keyswarm.storage.hlc import pack_hlc, unpack_hlc
from keyswarm.transport import codec

P = 16
T = 1_700_000_000_000
KEY_A, KEY_B, KEY_C = Signer(b"\x01" * 32), Signer(b"\x02" * 32), Signer(b"\x03" * 32)


def drafts(n: int, start: int = 0) -> list[Draft]:
    return [
        draft(KeyCreated(name=f"k{i}", algorithm="aes256-gcm", version_id=i.to_bytes(8, "big"), material=b"m" * 8),
              subject=f"k{i}", partitions=P)
        for i in range(start, start + n)
    ]


def sealed(*batch_sizes: int, signer: Signer = KEY_A) -> list[Event]:
    """A chain of origin "n1": genesis, then one signed batch per size."""
    chain = OriginChain("n1", signer)
    events: list[Event] = []
    for i, n in enumerate(batch_sizes):
        events += chain.seal(drafts(n, start=len(events)), T + i)
    return events


def relink(events: list[Event], keys: dict[int, Signer]) -> list[Event]:
    """Re-chain events after a test changed them, re-signing each checkpoint
    (an event that had a sig) with keys[origin_seq] or the key in force, so
    the planted flaw is the chain's only one."""
    out, prev, key = [], GENESIS_PREV, keys.get(1, KEY_A)
    for event in events:
        event = dataclasses.replace(event, prev=prev, sig=b"")
        prev = digest(event)
        key = keys.get(event.origin_seq, key)
        signed_before = any(e.origin_seq == event.origin_seq and e.sig for e in events)
        out.append(dataclasses.replace(event, sig=key.sign_digest(prev)) if signed_before else event)
    return out


def break_of(events: list[Event], **kwargs: object) -> ChainBreak:
    with pytest.raises(ChainBreak) as info:
        verify_chain("n1", events, **kwargs)  # type: ignore[arg-type]
    return info.value


# --- sealing ------------------------------------------------------------------


def test_a_new_chain_starts_with_its_signed_signer_key() -> None:
    events = OriginChain("n1", KEY_A).seal(drafts(3), T)
    assert [e.origin_seq for e in events] == [1, 2, 3, 4]
    genesis = events[0]
    assert decode_body(genesis) == SignerKey(public_key=KEY_A.public_key)
    assert genesis.partition == 0 and genesis.subject == "" and genesis.prev == GENESIS_PREV
    assert signature_valid(KEY_A.public_key, digest(genesis), genesis.sig)
    # Only the last event of the batch is a checkpoint; the chain links the rest.
    assert [bool(e.sig) for e in events] == [True, False, False, True]
    assert all(b.prev == digest(a) for a, b in zip(events, events[1:], strict=False))


def test_sig_is_ed25519_over_context_and_digest() -> None:
    event = OriginChain("n1", KEY_A).seal([], T)[0]
    assert len(event.sig) == 64
    Ed25519PublicKey.from_public_bytes(KEY_A.public_key).verify(event.sig, SIG_CONTEXT + digest(event))


def test_hlcs_increase_even_when_the_wall_clock_goes_back() -> None:
    chain = OriginChain("n1", KEY_A)
    events = chain.seal(drafts(3), T) + chain.seal(drafts(3, 3), T - 10_000)
    hlcs = [e.hlc for e in events]
    assert hlcs == sorted(set(hlcs))
    assert unpack_hlc(events[-1].hlc) == (T, 6)
    assert chain.last_hlc == events[-1].hlc


def test_observe_moves_the_chain_clock_past_a_remote_event() -> None:
    chain = OriginChain("n1", KEY_A)
    chain.seal([], T)
    chain.observe(pack_hlc(T + 500, 7), T)
    assert chain.last_hlc == pack_hlc(T + 500, 8)
    assert chain.seal(drafts(1), T)[0].hlc == pack_hlc(T + 500, 9)


def test_sealing_an_empty_batch_on_a_started_chain_writes_nothing() -> None:
    chain = OriginChain("n1", KEY_A)
    chain.seal([], T)
    assert chain.seal([], T) == []
    assert chain.head is not None and chain.head.origin_seq == 1


def test_a_chain_resumes_from_its_head() -> None:
    first = OriginChain("n1", KEY_A)
    events = first.seal(drafts(5), T)
    resumed = OriginChain("n1", KEY_A, head=first.head, last_hlc=first.last_hlc)
    events += resumed.seal(drafts(5, 5), T)
    assert verify_chain("n1", events) == Head(11, digest(events[-1]))


def test_sealing_is_deterministic() -> None:
    # Ed25519 is deterministic: one seed gives one log, byte for byte (simulator runs).
    assert [codec.encode(e) for e in sealed(4, 2)] == [codec.encode(e) for e in sealed(4, 2)]


def test_draft_refuses_a_body_for_another_subject_and_signer_keys() -> None:
    with pytest.raises(ValueError, match="subject is 'k2'"):
        draft(KeyDeleted(name="k1"), subject="k2", partitions=P)
    with pytest.raises(ValueError, match="OriginChain"):
        draft(SignerKey(public_key=KEY_B.public_key), subject="", partitions=P)
    assert draft(KeyDisabled(name="k1"), subject="k1", partitions=P).partition == partition_of("k1", P)


def test_seal_refuses_a_signer_key_draft() -> None:
    chain = OriginChain("n1", KEY_A)
    chain.seal([], T)
    smuggled = Draft(0, codec.tag_of(SignerKey), "", codec.encode(SignerKey(public_key=KEY_B.public_key)))
    with pytest.raises(ValueError, match="rotate"):
        chain.seal(drafts(2) + [smuggled], T)
    assert chain.head is not None and chain.head.origin_seq == 1  # nothing advanced


def test_signer_refuses_bad_lengths() -> None:
    with pytest.raises(ValueError):
        Signer(b"\x01" * 31)
    with pytest.raises(ValueError):
        KEY_A.sign_digest(b"\x00" * 31)


# --- verifying ------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(st.integers(0, 12), min_size=1, max_size=8))
def test_seal_then_verify_round_trips(batches: list[int]) -> None:
    events = sealed(*batches)
    verifier = ChainVerifier("n1", partitions=P)
    for event in events:
        verifier.feed(event)
        assert verifier.verified_seq == (event.origin_seq if event.sig else verifier.verified_seq)
    verifier.finish()
    assert verifier.verified_seq == len(events) == 1 + sum(batches)
    assert verifier.head == Head(len(events), digest(events[-1]))


def test_rotation_switches_the_key() -> None:
    chain = OriginChain("n1", KEY_A)
    events = chain.seal(drafts(3), T)
    rotation = chain.rotate(KEY_B, T + 1)
    events += [rotation] + chain.seal(drafts(3, 3), T + 2)
    assert decode_body(rotation) == SignerKey(public_key=KEY_B.public_key)
    assert signature_valid(KEY_A.public_key, digest(rotation), rotation.sig)
    assert signature_valid(KEY_B.public_key, digest(events[-1]), events[-1].sig)
    verifier = ChainVerifier("n1")
    for event in events:
        verifier.feed(event)
    verifier.finish()
    assert verifier.public_key == KEY_B.public_key
    # Twice more, to be sure a rotation chain of any length holds.
    events += [chain.rotate(KEY_C, T + 3)] + chain.seal(drafts(1, 6), T + 3) + [chain.rotate(KEY_A, T + 4)]
    assert verify_chain("n1", events) is not None


def test_rotate_needs_a_started_chain() -> None:
    with pytest.raises(ValueError, match="not started"):
        OriginChain("n1", KEY_A).rotate(KEY_B, T)


def test_resumed_verifier_checks_new_events_only() -> None:
    chain = OriginChain("n1", KEY_A)
    old = chain.seal(drafts(4), T)
    new = chain.seal(drafts(4, 4), T + 1)
    verifier = ChainVerifier.resume("n1", Head(5, digest(old[-1])), KEY_A.public_key, old[-1].hlc)
    for event in new:
        verifier.feed(event)
    verifier.finish()
    assert verifier.verified_seq == 9


# --- breaks: each at the right origin_seq, with the right reason ----------------

# sealed(3, 3): seq 1 genesis (signed), 2-4 batch (4 signed), 5-7 batch (7 signed).


def test_flipped_byte_in_an_unsigned_event_breaks_the_next_link() -> None:
    events = sealed(3, 3)
    body = bytearray(events[2].body)
    body[-3] ^= 0x01  # inside the material (the empty `request` field, c4 00, follows it): still decodes
    events[2] = dataclasses.replace(events[2], body=bytes(body))
    b = break_of(events)
    assert (b.origin_seq, b.reason) == (4, BreakReason.WRONG_PREV)


def test_flipped_byte_in_a_checkpoint_breaks_its_signature() -> None:
    events = sealed(3, 3)
    body = events[3].body  # the last byte of the material (the empty `request` field, c4 00, follows it)
    events[3] = dataclasses.replace(events[3], body=body[:-3] + b"X" + body[-2:])
    b = break_of(events)
    assert (b.origin_seq, b.reason, b.partition) == (4, BreakReason.BAD_SIGNATURE, events[3].partition)


def test_a_body_that_no_longer_decodes_is_reported_where_it_is() -> None:
    events = sealed(3, 3)
    events[2] = dataclasses.replace(events[2], body=b"\xc1" + events[2].body[1:])
    b = break_of(events)
    assert (b.origin_seq, b.reason) == (3, BreakReason.BAD_BODY)


def test_the_index_digest_pins_the_altered_event_itself() -> None:
    events = sealed(3, 3)
    expected = [digest(e) for e in events]
    events[2] = dataclasses.replace(events[2], body=events[2].body[:-1] + b"X")
    verifier = ChainVerifier("n1")
    with pytest.raises(ChainBreak) as info:
        for event, d in zip(events, expected, strict=True):
            verifier.feed(event, expected_digest=d)
    assert (info.value.origin_seq, info.value.reason) == (3, BreakReason.DIGEST_MISMATCH)


@pytest.mark.parametrize(
    ("plant", "seq"),
    [
        (lambda ev: ev[:2] + [ev[3], ev[2]] + ev[4:], 4),  # reordered
        (lambda ev: ev[:3] + ev[4:], 5),  # dropped
        (lambda ev: ev[:4] + [ev[3]] + ev[4:], 4),  # duplicated
        (lambda ev: ev[1:], 2),  # genesis missing
    ],
    ids=["reorder", "drop", "duplicate", "missing-genesis"],
)
def test_sequence_breaks(plant, seq: int) -> None:  # type: ignore[no-untyped-def]
    b = break_of(plant(sealed(3, 3)))
    assert (b.origin_seq, b.reason) == (seq, BreakReason.WRONG_SEQ)


def test_wrong_prev() -> None:
    events = sealed(3, 3)
    events[4] = dataclasses.replace(events[4], prev=b"\x09" * 32)
    b = break_of(events)
    assert (b.origin_seq, b.reason) == (5, BreakReason.WRONG_PREV)


def test_forged_signature() -> None:
    events = sealed(3, 3)
    events[6] = dataclasses.replace(events[6], sig=bytes(range(64)))
    b = break_of(events)
    assert (b.origin_seq, b.reason) == (7, BreakReason.BAD_SIGNATURE)


def test_signature_of_a_wrong_length() -> None:
    events = sealed(3, 3)
    events[3] = dataclasses.replace(events[3], sig=events[3].sig[:63])
    assert break_of(events).reason is BreakReason.BAD_SIGNATURE


def test_signature_by_the_wrong_key() -> None:
    events = relink(sealed(3, 3), {1: KEY_A, 5: KEY_B})
    b = break_of(events)
    assert (b.origin_seq, b.reason) == (7, BreakReason.BAD_SIGNATURE)


def test_rotation_signed_by_the_new_key_instead_of_the_old() -> None:
    chain = OriginChain("n1", KEY_A)
    events = chain.seal(drafts(2), T) + [chain.rotate(KEY_B, T)] + chain.seal(drafts(2, 2), T)
    rotation = events[3]
    assert rotation.origin_seq == 4
    events = relink(events, {1: KEY_A, 4: KEY_B})  # the rotation (seq 4) now signed by KEY_B itself
    b = break_of(events)
    assert (b.origin_seq, b.reason) == (4, BreakReason.ROTATION_NOT_BY_PREVIOUS_KEY)


def test_rotation_signed_by_a_third_key() -> None:
    chain = OriginChain("n1", KEY_A)
    events = chain.seal(drafts(2), T) + [chain.rotate(KEY_B, T)]
    b = break_of(relink(events, {1: KEY_A, 4: KEY_C}))
    assert (b.origin_seq, b.reason) == (4, BreakReason.BAD_SIGNATURE)


def test_rotation_that_is_not_a_checkpoint() -> None:
    chain = OriginChain("n1", KEY_A)
    events = chain.seal(drafts(2), T) + [chain.rotate(KEY_B, T)] + chain.seal(drafts(2, 2), T)
    events[3] = dataclasses.replace(events[3], sig=b"")
    b = break_of(relink(events, {1: KEY_A, 4: KEY_A, 5: KEY_B}))
    assert (b.origin_seq, b.reason) == (4, BreakReason.UNSIGNED_ROTATION)


def test_old_key_after_rotation_is_refused() -> None:
    chain = OriginChain("n1", KEY_A)
    events = chain.seal(drafts(2), T) + [chain.rotate(KEY_B, T)] + chain.seal(drafts(2, 2), T)
    b = break_of(relink(events, {1: KEY_A, 5: KEY_A}))  # the batch after the rotation signed by the old key
    assert (b.origin_seq, b.reason) == (6, BreakReason.BAD_SIGNATURE)


def test_unsigned_tail() -> None:
    events = sealed(3, 3)
    events[6] = dataclasses.replace(events[6], sig=b"")
    verifier = ChainVerifier("n1")
    for event in events:
        verifier.feed(event)  # every link holds...
    assert verifier.verified_seq == 4
    with pytest.raises(ChainBreak) as info:
        verifier.finish()  # ...but nothing vouches for 5..7
    assert (info.value.origin_seq, info.value.reason) == (5, BreakReason.UNSIGNED_TAIL)
    assert info.value.partition == events[4].partition


def test_first_event_not_signer_key() -> None:
    events = sealed(3)
    first = dataclasses.replace(events[1], origin_seq=1, prev=GENESIS_PREV)
    b = break_of(relink([first], {}))
    assert (b.origin_seq, b.reason) == (1, BreakReason.FIRST_NOT_SIGNER_KEY)


def test_unsigned_genesis() -> None:
    events = sealed(2)
    events[0] = dataclasses.replace(events[0], sig=b"")
    b = break_of(relink(events, {}))
    assert (b.origin_seq, b.reason) == (1, BreakReason.BAD_SIGNATURE)


def test_hlc_must_increase_along_the_chain() -> None:
    events = sealed(3)
    events[2] = dataclasses.replace(events[2], hlc=events[1].hlc)
    b = break_of(relink(events, {}))
    assert (b.origin_seq, b.reason) == (3, BreakReason.HLC_NOT_INCREASING)


def test_event_in_the_wrong_partition() -> None:
    events = sealed(3)
    events[2] = dataclasses.replace(events[2], partition=(events[2].partition + 1) % P)
    events = relink(events, {})
    assert verify_chain("n1", events) is not None  # without P the verifier cannot tell
    b = break_of(events, partitions=P)
    assert (b.origin_seq, b.reason) == (3, BreakReason.WRONG_PARTITION)


def test_event_of_another_origin() -> None:
    events = sealed(2)
    events[1] = dataclasses.replace(events[1], origin="n2")
    b = break_of(events)
    assert (b.origin_seq, b.reason) == (2, BreakReason.WRONG_ORIGIN)


def test_unknown_body_type() -> None:
    events = sealed(2)
    events[2] = dataclasses.replace(events[2], type=0x04FE)
    b = break_of(relink(events, {}))
    assert (b.origin_seq, b.reason) == (3, BreakReason.BAD_BODY)
    assert "unknown event type" in b.detail


def test_a_broken_verifier_stays_broken() -> None:
    events = sealed(3)
    verifier = ChainVerifier("n1")
    verifier.feed(events[0])
    with pytest.raises(ChainBreak) as first:
        verifier.feed(events[2])
    with pytest.raises(ChainBreak) as again:
        verifier.feed(events[1])
    assert again.value is first.value
    with pytest.raises(ChainBreak):
        verifier.finish()


def test_break_message_names_origin_seq_partition_and_reason() -> None:
    events = sealed(3)
    events[3] = dataclasses.replace(events[3], sig=bytes(64))
    assert str(break_of(events)).startswith(f"origin 'n1' seq 4 (partition {events[3].partition}): bad_signature")
