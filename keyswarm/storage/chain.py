"""Origin chains: how an origin seals its events and how a reader verifies them.

Owns the signing rule of the log, `OriginChain` (the author's side: numbers,
chains, stamps and signs batches) and `ChainVerifier` (the reader's side:
walks one origin's events in order and reports the first broken link).

Rules (docs/storage.md, "Signing" and "Chains"):
- Signed checkpoints, not one signature per event. The origin signs the last
  event of every batch it seals; the other events carry `sig = b""` and are
  authenticated by the hash chain (`prev`) up to the next signed event, like
  a Certificate Transparency signed tree head. Ed25519 costs ~30 us to sign
  and ~90 us to verify here, against a budget of ~10 us per event.
- `sig` = Ed25519 over `SIG_CONTEXT + digest(event)`; the context string
  keeps an event signature from ever being valid for anything else.
- The keys live in the chain. origin_seq 1 is a `SignerKey` event signed by
  its own key. A later `SignerKey` rotates: it must be a signed checkpoint
  whose signature verifies under the previous key; events after it verify
  under the new key. A key a checkpoint cannot vouch for is never trusted.
  A later `SignerKey` naming the key already in force is a rotation to the
  same key: it obeys the same rule, and only records the key's (new)
  certificate (`OriginChain.recertify`).
- HLCs strictly increase along an origin's chain, so `(hlc, origin)` names
  one event: the fold's last-writer-wins order needs no further tie-break.
- A chain whose newest events have no signature after them (an "unsigned
  tail") is not verified: `finish` reports it. A reader that must act before
  the end of a chain uses `verified_seq`, the last event a signature covers.
- Pure: keys and entropy come from the caller, time is an argument.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keyswarm.errors import DecodeError, StorageError
from keyswarm.storage import hlc as hlc_clock
from keyswarm.storage.bodies import SIGNER_KEY_TYPE, SignerKey, check_envelope, decode_body, tag_of_body
from keyswarm.storage.events import DIGEST_BYTES, GENESIS_PREV, Event, Head, digest, event_and_digest, partition_of
from keyswarm.transport import codec

#: Prefix of every signed message (domain separation).
SIG_CONTEXT = b"keyswarm.sig.v1"
SIG_BYTES = 64


class BreakReason(enum.StrEnum):
    """Why a chain failed to verify. Values are permanent (audit reports show them)."""

    WRONG_ORIGIN = "wrong_origin"  # the event belongs to another origin
    WRONG_SEQ = "wrong_seq"  # not the next origin_seq: dropped, duplicated or reordered events
    WRONG_PREV = "wrong_prev"  # prev is not the digest of the previous event: one of the two was altered
    DIGEST_MISMATCH = "digest_mismatch"  # the event's digest differs from what the index recorded
    HLC_NOT_INCREASING = "hlc_not_increasing"
    WRONG_PARTITION = "wrong_partition"  # the partition is not partition_of(subject)
    BAD_BODY = "bad_body"  # unknown type, undecodable body, or body and envelope disagree
    FIRST_NOT_SIGNER_KEY = "first_not_signer_key"  # origin_seq 1 must be SignerKey
    UNSIGNED_ROTATION = "unsigned_rotation"  # a SignerKey that is not a signed checkpoint
    ROTATION_NOT_BY_PREVIOUS_KEY = "rotation_not_by_previous_key"
    BAD_SIGNATURE = "bad_signature"
    UNSIGNED_TAIL = "unsigned_tail"  # the newest events have no signature after them


class ChainBreak(StorageError):
    """The first broken link of an origin's chain: where and why."""

    def __init__(
        self, origin: str, origin_seq: int, reason: BreakReason, detail: str = "", *, partition: int | None = None
    ):
        self.origin = origin
        self.origin_seq = origin_seq
        self.reason = reason
        self.detail = detail
        self.partition = partition
        where = f"origin {origin!r} seq {origin_seq}" + ("" if partition is None else f" (partition {partition})")
        super().__init__(f"{where}: {reason.value}" + (f": {detail}" if detail else ""))


class Signer:
    """An origin's Ed25519 signing key. Callers build it from their entropy:
    `Signer(ctx.entropy(32))`, so a simulated run signs the same bytes every time."""

    __slots__ = ("_key", "public_key")

    def __init__(self, private_bytes: bytes):
        if len(private_bytes) != 32:
            raise ValueError(f"an Ed25519 private key is 32 bytes, got {len(private_bytes)}")
        self._key = Ed25519PrivateKey.from_private_bytes(bytes(private_bytes))
        self.public_key: bytes = self._key.public_key().public_bytes_raw()

    def sign_digest(self, event_digest: bytes) -> bytes:
        """The `sig` of the event whose digest this is."""
        if len(event_digest) != DIGEST_BYTES:
            raise ValueError(f"an event digest is {DIGEST_BYTES} bytes, got {len(event_digest)}")
        return self._key.sign(SIG_CONTEXT + event_digest)

    def __repr__(self) -> str:
        return f"Signer(public_key={self.public_key.hex()[:16]}...)"


def signature_valid(public_key: bytes, event_digest: bytes, sig: bytes) -> bool:
    """Whether `sig` is `public_key`'s signature over the event with `event_digest`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, SIG_CONTEXT + event_digest)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Draft:
    """An event before its origin numbers, chains, stamps and signs it."""

    partition: int
    type: int
    subject: str
    body: bytes


def draft(body_message: object, *, subject: str, partitions: int) -> Draft:
    """Encode a typed body into a Draft for `subject`'s partition.

    ValueError when the body could not travel under that subject (a key body
    naming another key) or is a SignerKey (`OriginChain` writes those).
    """
    if type(body_message) is SignerKey:
        raise ValueError("SignerKey events are written by OriginChain (seal starts a chain, rotate rotates)")
    tag = tag_of_body(body_message)
    d = Draft(partition_of(subject, partitions), tag, subject, codec.encode(body_message))
    try:
        check_envelope(d, body_message)
    except DecodeError as exc:
        raise ValueError(str(exc)) from None
    return d


class Sealed(NamedTuple):
    """A sealed batch: its events and `digests[i] == digest(events[i])`."""

    events: list[Event]
    digests: list[bytes]


class OriginChain:
    """The author's side of one origin's chain: the next origin_seq, the
    digest it chains to, the HLC of its last event, and the current signer.

    State advances when `seal` or `rotate` returns. If the caller then fails
    to append the events durably, it retries the same events (appends are
    idempotent) or rebuilds the chain from the log's head; it never seals
    new events over sequence numbers the log does not hold.
    """

    def __init__(
        self,
        origin: str,
        signer: Signer,
        *,
        head: Head | None = None,
        last_hlc: int = 0,
        certificate: bytes = b"",
        intermediates: tuple[bytes, ...] = (),
    ):
        """`certificate` / `intermediates`: what the genesis SignerKey carries
        (the signer's certificate and the node certificate that issued it)."""
        if not origin:
            raise ValueError("origin must be a non-empty node id")
        self.origin = origin
        self._signer = signer
        self.certificate = certificate
        self.intermediates = tuple(intermediates)
        self._recertify = False
        self._next_seq = 1 if head is None else head.origin_seq + 1
        self._prev = GENESIS_PREV if head is None else head.digest
        hlc_clock.unpack_hlc(last_hlc)  # range check
        self.last_hlc = last_hlc

    @property
    def head(self) -> Head | None:
        """The newest event sealed, or None for a chain not started."""
        return None if self._next_seq == 1 else Head(self._next_seq - 1, self._prev)

    @property
    def public_key(self) -> bytes:
        return self._signer.public_key

    @property
    def recertifying(self) -> bool:
        """Whether the next seal starts with a SignerKey recording a new certificate for the current key."""
        return self._recertify

    def recertify(self, certificate: bytes, intermediates: tuple[bytes, ...] = ()) -> None:
        """Record a new certificate for the current key: the next seal of a
        started chain begins with a SignerKey naming the same key and carrying
        it, signed by that key (a rotation to the same key, so the chain rule
        holds). On a chain not started, the genesis event carries it."""
        self.certificate, self.intermediates = certificate, tuple(intermediates)
        self._recertify = self._next_seq > 1

    def observe(self, remote_hlc: int, physical_ms: int, *, max_drift_ms: int = hlc_clock.DEFAULT_MAX_DRIFT_MS) -> None:
        """Move the clock past a remote event's HLC (HlcDriftError if it is too far ahead)."""
        self.last_hlc = hlc_clock.observe(self.last_hlc, remote_hlc, physical_ms, max_drift_ms=max_drift_ms)

    def seal(self, drafts: Sequence[Draft], physical_ms: int) -> list[Event]:
        """Number, chain, stamp and sign a batch; the last event carries the signature.

        A chain not yet started begins with its SignerKey genesis event (signed
        too, so a key is always vouched for by its own signature).
        """
        return self.seal_batch(drafts, physical_ms).events

    def seal_batch(self, drafts: Sequence[Draft], physical_ms: int) -> Sealed:
        """`seal`, with the digest of each event: the sealer computes them to
        chain the events, and a log that is handed them need not hash again."""
        events: list[Event] = []
        digests: list[bytes] = []
        seq, prev, last = self._next_seq, self._prev, self.last_hlc
        now = hlc_clock.pack_hlc(physical_ms, 0)
        if max(last, now) + len(drafts) + 1 > hlc_clock.HLC_MAX:  # only at the end of time (year 10889)
            raise ValueError("HLC overflow: the clock is at its maximum value")
        if seq == 1 or self._recertify:
            # The genesis SignerKey, or the same key again with its new certificate.
            genesis = self._signer_key_draft(self._signer, self.certificate, self.intermediates)
            last = last + 1 if last >= now else now
            unsigned = _link(genesis, self.origin, seq, last, prev)
            prev = digest(unsigned)
            events.append(dataclasses.replace(unsigned, sig=self._signer.sign_digest(prev)))
            digests.append(prev)
            seq += 1
        origin = self.origin
        for d in drafts:  # the hot loop: one constructor and one digest per event
            if d.type == SIGNER_KEY_TYPE:  # a key change must go through rotate(), or the chain stops verifying
                raise ValueError("SignerKey events are written by OriginChain.rotate, not sealed as drafts")
            last = last + 1 if last >= now else now
            event, prev = event_and_digest(d.partition, origin, seq, last, d.type, d.subject, d.body, prev)
            events.append(event)
            digests.append(prev)
            seq += 1
        if events and not events[-1].sig:  # `sig` is not hashed: the digest stays
            events[-1] = dataclasses.replace(events[-1], sig=self._signer.sign_digest(prev))
        self._next_seq, self._prev, self.last_hlc = seq, prev, last
        self._recertify = False
        return Sealed(events, digests)

    def rotate(
        self, new_signer: Signer, physical_ms: int, *, certificate: bytes = b"", intermediates: tuple[bytes, ...] = ()
    ) -> Event:
        """A SignerKey event naming `new_signer` (and its certificate), signed
        by the current key; later batches sign with the new one."""
        if self._next_seq == 1:
            raise ValueError("the chain has not started: its first seal writes the current signer's key")
        stamp = hlc_clock.tick(self.last_hlc, physical_ms)
        key_draft = self._signer_key_draft(new_signer, certificate, tuple(intermediates))
        unsigned = _link(key_draft, self.origin, self._next_seq, stamp, self._prev)
        d = digest(unsigned)
        event = dataclasses.replace(unsigned, sig=self._signer.sign_digest(d))
        self._next_seq, self._prev, self.last_hlc, self._signer = self._next_seq + 1, d, stamp, new_signer
        self.certificate, self.intermediates, self._recertify = certificate, tuple(intermediates), False
        return event

    @staticmethod
    def _signer_key_draft(signer: Signer, certificate: bytes, intermediates: tuple[bytes, ...]) -> Draft:
        body = SignerKey(public_key=signer.public_key, certificate=certificate, intermediates=intermediates)
        return Draft(0, SIGNER_KEY_TYPE, "", codec.encode(body))


def _link(d: Draft, origin: str, seq: int, stamp: int, prev: bytes) -> Event:
    return Event(partition=d.partition, origin=origin, origin_seq=seq, hlc=stamp, type=d.type,
                 subject=d.subject, body=d.body, prev=prev)


class ChainVerifier:
    """The reader's side of one origin's chain, fed its events in origin_seq order.

    `feed` raises `ChainBreak` at the first bad link and the verifier stays
    broken (every later call raises the same break). `finish` reports an
    unsigned tail. `resume` lets a node verify new events on top of a chain
    it already verified (its head and the origin's current public key).

    A changed event shows up where its link breaks: as BAD_BODY when its body
    no longer decodes, as BAD_SIGNATURE when it is a checkpoint, and
    otherwise as WRONG_PREV at the next event (whose `prev` no longer matches)
    or as DIGEST_MISMATCH when the caller passes the digest its index recorded.
    """

    def __init__(self, origin: str, *, partitions: int | None = None, check_bodies: bool = True):
        self.origin = origin
        self.partitions = partitions  # when given, every event's partition is checked against its subject
        self.check_bodies = check_bodies
        self.verified_seq = 0  # highest origin_seq covered by a verified signature
        self.public_key: bytes | None = None  # the key the next checkpoint must verify under
        self._next_seq = 1
        self._prev = GENESIS_PREV
        self._last_hlc = -1
        self._key: Ed25519PublicKey | None = None
        self._tail_partition: int | None = None  # partition of the first event after verified_seq
        self._broken: ChainBreak | None = None

    @classmethod
    def resume(cls, origin: str, head: Head, public_key: bytes, last_hlc: int, **kwargs: object) -> ChainVerifier:
        """A verifier continuing after `head`, already verified under `public_key`."""
        verifier = cls(origin, **kwargs)  # type: ignore[arg-type]
        verifier._next_seq, verifier._prev, verifier._last_hlc = head.origin_seq + 1, head.digest, last_hlc
        verifier.verified_seq = head.origin_seq
        verifier.public_key, verifier._key = public_key, Ed25519PublicKey.from_public_bytes(public_key)
        return verifier

    @property
    def head(self) -> Head | None:
        """The newest event fed (verified or still pending a signature)."""
        return None if self._next_seq == 1 else Head(self._next_seq - 1, self._prev)

    def feed(self, event: Event, expected_digest: bytes | None = None) -> None:
        """Check the next event; ChainBreak at the first bad link."""
        if self._broken is not None:
            raise self._broken
        seq = event.origin_seq
        if event.origin != self.origin:
            self._break(seq, BreakReason.WRONG_ORIGIN, f"event of origin {event.origin!r}", event)
        if seq != self._next_seq:
            self._break(seq, BreakReason.WRONG_SEQ, f"expected origin_seq {self._next_seq}, got {seq}", event)
        if event.prev != self._prev:
            self._break(seq, BreakReason.WRONG_PREV,
                        f"prev does not match the digest of origin_seq {seq - 1}: one of the two was altered", event)
        if type(event.hlc) is not int or not self._last_hlc < event.hlc <= hlc_clock.HLC_MAX:
            self._break(seq, BreakReason.HLC_NOT_INCREASING, f"hlc {event.hlc!r} after {self._last_hlc}", event)
        event_digest = digest(event)
        if expected_digest is not None and event_digest != expected_digest:
            self._break(seq, BreakReason.DIGEST_MISMATCH, "the event's digest differs from its index entry", event)
        if self.partitions is not None and event.partition != partition_of(event.subject, self.partitions):
            self._break(seq, BreakReason.WRONG_PARTITION,
                        f"subject {codec.short_repr(event.subject)} belongs in partition "
                        f"{partition_of(event.subject, self.partitions)}", event)
        is_signer_key = event.type == SIGNER_KEY_TYPE
        if seq == 1 and not is_signer_key:
            self._break(seq, BreakReason.FIRST_NOT_SIGNER_KEY, f"type {event.type:#06x}", event)
        body = None
        if self.check_bodies or is_signer_key:
            try:
                body = decode_body(event)
            except DecodeError as exc:
                self._break(seq, BreakReason.BAD_BODY, str(exc), event)
        if is_signer_key:
            self._check_signer_key(event, event_digest, body)  # type: ignore[arg-type]
        elif event.sig:
            assert self._key is not None, "a chain past origin_seq 1 always has a key (seq 1 is a SignerKey)"
            self._check_signature(event, event_digest, self._key)
        if event.sig:
            self.verified_seq = seq
            self._tail_partition = None
        elif self._tail_partition is None:
            self._tail_partition = event.partition
        self._next_seq, self._prev, self._last_hlc = seq + 1, event_digest, event.hlc

    def finish(self) -> None:
        """ChainBreak when the newest events fed have no signature after them."""
        if self._broken is not None:
            raise self._broken
        if self._next_seq - 1 > self.verified_seq:
            self._broken = ChainBreak(
                self.origin, self.verified_seq + 1, BreakReason.UNSIGNED_TAIL,
                f"origin_seq {self.verified_seq + 1}..{self._next_seq - 1} carry no signature after them",
                partition=self._tail_partition,
            )
            raise self._broken

    def _check_signer_key(self, event: Event, event_digest: bytes, body: SignerKey) -> None:
        seq = event.origin_seq
        if not event.sig:
            reason = BreakReason.BAD_SIGNATURE if seq == 1 else BreakReason.UNSIGNED_ROTATION
            self._break(seq, reason, "a SignerKey event must carry a signature", event)
        try:
            new_key = Ed25519PublicKey.from_public_bytes(body.public_key)
        except ValueError as exc:
            self._break(seq, BreakReason.BAD_BODY, f"SignerKey: {exc}", event)
        if seq == 1:
            self._check_signature(event, event_digest, new_key)  # self-signed: the key vouches for itself
        else:
            assert self._key is not None
            if len(event.sig) != SIG_BYTES:
                self._break(seq, BreakReason.BAD_SIGNATURE, f"sig of {len(event.sig)} bytes", event)
            if not _verifies(self._key, event.sig, event_digest):
                if _verifies(new_key, event.sig, event_digest):  # only on failure: name the mistake precisely
                    self._break(seq, BreakReason.ROTATION_NOT_BY_PREVIOUS_KEY,
                                "the rotation is signed by the new key, not the previous one", event)
                self._break(seq, BreakReason.BAD_SIGNATURE,
                            f"the rotation does not verify under the previous key {self._key_hint(self._key)}", event)
        self.public_key, self._key = body.public_key, new_key

    def _check_signature(self, event: Event, event_digest: bytes, key: Ed25519PublicKey) -> None:
        if len(event.sig) != SIG_BYTES:
            self._break(event.origin_seq, BreakReason.BAD_SIGNATURE, f"sig of {len(event.sig)} bytes", event)
        if not _verifies(key, event.sig, event_digest):
            self._break(event.origin_seq, BreakReason.BAD_SIGNATURE,
                        f"does not verify under key {self._key_hint(key)}", event)

    @staticmethod
    def _key_hint(key: Ed25519PublicKey) -> str:
        return key.public_bytes_raw().hex()[:16] + "..."

    def _break(self, seq: int, reason: BreakReason, detail: str, event: Event) -> NoReturn:
        self._broken = ChainBreak(self.origin, seq, reason, detail, partition=event.partition)
        raise self._broken


def _verifies(key: Ed25519PublicKey, sig: bytes, event_digest: bytes) -> bool:
    try:
        key.verify(sig, SIG_CONTEXT + event_digest)
    except InvalidSignature:
        return False
    return True


def verify_chain(origin: str, events: Sequence[Event], *, partitions: int | None = None) -> Head | None:
    """Verify one origin's whole chain from origin_seq 1; its head, or ChainBreak."""
    verifier = ChainVerifier(origin, partitions=partitions)
    for event in events:
        verifier.feed(event)
    verifier.finish()
    return verifier.head
