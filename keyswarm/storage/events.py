"""Events: the unit of every state change, their digests and their chains.

Owns the `Event` record, its canonical bytes, its digest, the per-origin hash
chain (`prev`), and the partition a subject belongs to.

Rules (DESIGN section 6):
- An event is immutable once signed. Its canonical bytes are the codec's
  array encoding of every field but `sig`; its digest is BLAKE2b-256 of
  those bytes under a personalisation string, so a digest can never be
  confused with any other hash keyswarm computes.
- `prev` is the digest of the same origin's previous event; the first event
  of an origin (origin_seq 1) has 32 zero bytes. `origin_seq` is contiguous
  from 1 per origin. An origin never reuses a sequence number (a node that
  lost its disk rejoins under a new origin id).
- Partition = BLAKE2b(subject) mod P; network-wide events (empty subject:
  policies, revocations, enrolments) live in partition 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from keyswarm.transport import codec

#: `prev` of an origin's first event.
GENESIS_PREV = bytes(32)
DIGEST_BYTES = 32
_PERSON = b"keyswarm.ev.v1"  # BLAKE2b personalisation, at most 16 bytes


@codec.message(tag=0x0301)
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One signed, chained state change. Fields are append-only."""

    partition: int  # 0 .. P-1
    origin: str  # node id of the author
    origin_seq: int  # 1, 2, 3 ... per origin
    hlc: int  # hybrid logical clock: (physical ms << 16) | logical
    type: int  # tag of the typed body (see keyswarm.storage.bodies)
    subject: str  # what it is about (a key name); "" for network-wide events
    body: bytes  # codec encoding of the typed body
    prev: bytes  # digest of this origin's previous event
    sig: bytes = b""  # Ed25519 signature by the origin (see signing rules in keyswarm.storage.chain)


# Position of `sig` in the packed array ([tag, field, ...]); fields appended
# after it later are part of the canonical bytes.
_SIG_INDEX = 1 + [f.name for f in dataclasses.fields(Event)].index("sig")


def canonical_bytes(event: Event) -> bytes:
    """The bytes that are hashed and signed: the array encoding without `sig`."""
    packed = codec.pack(event)
    del packed[_SIG_INDEX]
    return codec.write_msgpack(packed)


def digest(event: Event) -> bytes:
    """BLAKE2b-256 of the canonical bytes: what `prev` of the next event holds."""
    return hashlib.blake2b(canonical_bytes(event), digest_size=DIGEST_BYTES, person=_PERSON).digest()


# The sealer's hot loop builds ~1,000 events per batch: `event_and_digest`
# builds them without the frozen dataclass __init__ (one object.__setattr__
# per field, ~1.3 us for an Event) and hashes the canonical array without
# packing the Event back into it. It must stay exactly `Event(...)` and
# `digest`: this assertion fails the import when a field is added, and
# tests/unit/test_events.py compares both ways on random events.
_FIELDS = ("partition", "origin", "origin_seq", "hlc", "type", "subject", "body", "prev", "sig")
if tuple(f.name for f in dataclasses.fields(Event)) != _FIELDS:  # not an assert: `python -O` must not skip it
    raise ImportError("keyswarm.storage.events: Event's fields changed; update event_and_digest")
_TAG = codec.tag_of(Event)
_new = object.__new__
_SETTERS = tuple(Event.__dict__[name].__set__ for name in _FIELDS)  # slot descriptors: they bypass the frozen __setattr__


def event_and_digest(
    partition: int, origin: str, origin_seq: int, hlc: int, type: int, subject: str, body: bytes, prev: bytes
) -> tuple[Event, bytes]:
    """`Event(...)` with `sig=b""`, and its `digest`: the same object and bytes, built faster."""
    event = _new(Event)
    set_partition, set_origin, set_seq, set_hlc, set_type, set_subject, set_body, set_prev, set_sig = _SETTERS
    set_partition(event, partition)
    set_origin(event, origin)
    set_seq(event, origin_seq)
    set_hlc(event, hlc)
    set_type(event, type)
    set_subject(event, subject)
    set_body(event, body)
    set_prev(event, prev)
    set_sig(event, b"")
    canonical = codec.write_msgpack([_TAG, partition, origin, origin_seq, hlc, type, subject, body, prev])
    return event, hashlib.blake2b(canonical, digest_size=DIGEST_BYTES, person=_PERSON).digest()


def partition_of(subject: str, partitions: int) -> int:
    """The partition that owns `subject`; network-wide events (empty subject) live in 0."""
    if not subject:
        return 0
    h = hashlib.blake2b(subject.encode("utf-8"), digest_size=8, person=b"keyswarm.part").digest()
    return int.from_bytes(h, "big") % partitions


@dataclass(frozen=True, slots=True)
class Head:
    """The newest event of one origin that a log holds: one entry of the version vector."""

    origin_seq: int
    digest: bytes
