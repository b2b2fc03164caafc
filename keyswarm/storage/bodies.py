"""Typed event bodies: what an event says, under permanent tags.

Owns the body messages of the event log and `decode_body`, which turns an
`Event` back into its typed body and checks that body against the event's
envelope.

Rules:
- Bodies are codec messages under permanent tags in 0x0400-0x04FF
  (`BODY_TAGS`); `Event.type` is the body's tag and `Event.body` its codec
  encoding. Tags are never reused, fields are append-only and new fields
  have defaults (codec rules), so an old event decodes forever.
- Other modules may add bodies in the same range (policies, revocations,
  enrolments); `decode_body` finds any registered tag in the range.
- Key bodies name their key twice, in the body (`name`) and in the envelope
  (`Event.subject`, which picks the partition). `decode_body` refuses an
  event where the two differ, so a fold can trust either. `SignerKey` is
  network-wide: its subject is "" and it lives in partition 0.
- No `__post_init__` checks here: a body that breaks a rule must still
  decode, so the chain verifier can report *which* event broke *which* rule
  (and old events stay readable when a rule tightens). Shape rules live in
  `decode_body` and in the verifier.
- `material` is opaque to the log: wrapped key bytes (wrapped by the domain
  key, DESIGN section 1). Nothing here unwraps or inspects it.
- `request` (every key body, appended field): the fingerprint of the client
  request that wrote the event (`request_fingerprint`: a hash of the
  client's name and its `client_request_id`), or b"" when the request
  carried no id. The fold remembers recent ones per key, so a retried write
  is recognised after a restart and applies once (keyswarm/actors/keys.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from keyswarm.errors import DecodeError
from keyswarm.storage.events import Event
from keyswarm.transport import codec

#: The tag block of event bodies (docs/protocol.md).
BODY_TAGS = range(0x0400, 0x0500)
#: The only signer algorithm so far (the event signer is Ed25519, like its certificate requires).
SIGNER_ALGORITHMS = ("ed25519",)
#: Version ids are coordination-free (random, from the caller's entropy).
MAX_VERSION_ID_BYTES = 64
#: A request fingerprint (`request_fingerprint`) is this long; b"" means "no request id".
REQUEST_FINGERPRINT_BYTES = 16


@codec.message(tag=0x0401)
@dataclass(frozen=True, slots=True, kw_only=True)
class SignerKey:
    """The origin's signing key from this event on.

    At origin_seq 1 it starts the chain and is signed by its own key; later
    it rotates the key and is signed by the previous one (keyswarm.storage.chain).
    A later SignerKey may name the same key again: it then only records a
    (new) certificate for it.

    `certificate` is the DER of the key's signer certificate
    (`keyswarm://<net>/node/<origin>/signer`, issued by the origin's node
    certificate through its token), b"" for an uncertified key.
    `intermediates` (appended field) holds the DER of the certificates
    between it and the network root: the issuing node certificate, so a
    reader needs only the root to check the key (`keyswarm audit verify
    --root`). Both are opaque to the log; the audit checks them.
    """

    public_key: bytes
    algorithm: str = "ed25519"
    certificate: bytes = b""
    intermediates: tuple[bytes, ...] = ()


@codec.message(tag=0x0410)
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyCreated:
    """A named key is created with its first version."""

    name: str
    algorithm: str
    version_id: bytes
    material: bytes
    request: bytes = b""


@codec.message(tag=0x0411)
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyVersionAdded:
    """A named key is rotated: a new version.

    `algorithm` is the key's algorithm as the writer saw it. It lets the fold
    keep a version minted under a concurrent create that lost (a different
    algorithm) out of the key's versions; "" means "the key's algorithm".
    """

    name: str
    version_id: bytes
    material: bytes
    algorithm: str = ""
    request: bytes = b""


@codec.message(tag=0x0412)
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyDisabled:
    """The key refuses operations until enabled (last writer wins with KeyEnabled)."""

    name: str
    request: bytes = b""


@codec.message(tag=0x0413)
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyEnabled:
    """The key serves operations again (last writer wins with KeyDisabled)."""

    name: str
    request: bytes = b""


@codec.message(tag=0x0414)
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyDeleted:
    """The key is gone for good: a tombstone that wins over every other event of the name."""

    name: str
    request: bytes = b""


@codec.message(tag=0x0415)
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyConfigSet:
    """Settings of a key; None leaves a setting as it is (each is its own register).

    `auto_rotate_period_s` 0 turns automatic rotation off.
    """

    name: str
    min_decryption_version: int | None = None
    deletion_allowed: bool | None = None
    auto_rotate_period_s: float | None = None
    request: bytes = b""


#: Bodies about one named key: `name` must equal the event's subject.
KEY_BODIES = (KeyCreated, KeyVersionAdded, KeyDisabled, KeyEnabled, KeyDeleted, KeyConfigSet)
_KEY_BODY_TYPES = frozenset(KEY_BODIES)
_VERSIONED = (KeyCreated, KeyVersionAdded)
SIGNER_KEY_TYPE = codec.tag_of(SignerKey)


def request_fingerprint(client: str, client_request_id: bytes) -> bytes:
    """The `request` field of a write by `client` carrying `client_request_id`
    (b"" when the id is empty: such writes are not deduplicated).

    A hash, so the log does not carry the client's raw ids; length-prefixed,
    so no (client, id) pair can pose as another.
    """
    if not client_request_id:
        return b""
    encoded = client.encode("utf-8")
    data = len(encoded).to_bytes(4, "big") + encoded + client_request_id
    return hashlib.blake2b(data, digest_size=REQUEST_FINGERPRINT_BYTES, person=b"keyswarm.request").digest()


def tag_of_body(body: object) -> int:
    """`Event.type` for a body; TypeError when it is not a registered event body."""
    try:
        tag = codec.tag_of(type(body))
    except KeyError:
        raise TypeError(f"{type(body).__qualname__} is not a registered message") from None
    if tag not in BODY_TAGS:
        raise TypeError(f"{type(body).__qualname__} (tag {tag:#06x}) is not an event body (0x0400-0x04FF)")
    return tag


def decode_body(event: Event) -> object:
    """The typed body of `event`, checked against its envelope.

    Raises `DecodeError` when the type is not a known event body, the body
    does not decode as that type, or the body disagrees with the envelope
    (key name vs subject, SignerKey outside partition 0, empty name, ...).
    Callers decide what that means: the chain verifier reports a break, a
    log reading its own disk reports a `CorruptRecord`.
    """
    if event.type not in BODY_TAGS:
        raise DecodeError(f"event type {event.type:#x} is not an event body (0x0400-0x04FF)")
    cls = codec.by_tag(event.type)
    if cls is None:
        raise DecodeError(f"unknown event type {event.type:#06x}")
    body = codec.decode(event.body, expect=cls)
    check_envelope(event, body)
    return body


class Envelope(Protocol):
    """What `check_envelope` reads: an `Event`, or a `Draft` before sealing."""

    @property
    def partition(self) -> int: ...

    @property
    def subject(self) -> str: ...


def check_envelope(event: Envelope, body: object) -> None:
    """DecodeError unless `body` may travel in `event`'s envelope."""
    if type(body) in _KEY_BODY_TYPES:
        name = body.name  # type: ignore[attr-defined]
        if not name:
            raise DecodeError(f"{type(body).__name__}: empty key name")
        if name != event.subject:
            raise DecodeError(
                f"{type(body).__name__} names key {codec.short_repr(name)} "
                f"but the event's subject is {codec.short_repr(event.subject)}"
            )
        if len(body.request) not in (0, REQUEST_FINGERPRINT_BYTES):
            raise DecodeError(f"{type(body).__name__}: request fingerprint of {len(body.request)} bytes "
                              f"(0 or {REQUEST_FINGERPRINT_BYTES})")
        if isinstance(body, _VERSIONED):
            n = len(body.version_id)
            if not 0 < n <= MAX_VERSION_ID_BYTES:
                raise DecodeError(f"{type(body).__name__}: version_id of {n} bytes (1..{MAX_VERSION_ID_BYTES})")
        if isinstance(body, KeyConfigSet):
            if body.min_decryption_version is not None and body.min_decryption_version < 1:
                raise DecodeError(f"KeyConfigSet: min_decryption_version {body.min_decryption_version} < 1")
            if body.auto_rotate_period_s is not None and body.auto_rotate_period_s < 0:
                raise DecodeError(f"KeyConfigSet: auto_rotate_period_s {body.auto_rotate_period_s} < 0")
    elif type(body) is SignerKey:
        if event.subject or event.partition != 0:
            raise DecodeError("SignerKey is network-wide: subject '' in partition 0")
        if body.algorithm not in SIGNER_ALGORITHMS:
            raise DecodeError(f"SignerKey: unsupported algorithm {codec.short_repr(body.algorithm)}")
        if len(body.public_key) != 32:
            raise DecodeError(f"SignerKey: an ed25519 public key is 32 bytes, got {len(body.public_key)}")
