"""The named-key fold: a partition's events folded into the state of its keys.

Owns `KeyVersion`, `KeyState`, `PartitionState` and `fold`: the convergent
(CRDT-style) rules by which key events become key state.

Rules (docs/storage.md, "The fold"):
- Convergent: any order of the same set of events folds to an equal state,
  and folding an event twice changes nothing. Every piece of state is a
  grow-only set or a register merged by `max`/`min`, never "whatever came
  last": replication delivers partitions in different orders on different
  nodes, and all of them must agree.
- Stamps: an event's stamp is `(hlc, origin)`. HLCs strictly increase along
  an origin's chain (the chain verifier checks it), so a stamp names one
  event. Ties can only come from an origin that equivocated; they are broken
  by the value, so even then every order agrees.
- Versions are a grow-only set keyed by `version_id`, ordered by
  `(hlc, origin, version_id)`; a version's number is its rank 1..n in that
  order, and the primary is the greatest. Concurrent creates of one name
  both stay. The key's algorithm is that of its earliest create; a version
  minted for another algorithm (the other side of a concurrent create that
  lost) is kept aside as a conflict, never used, never dropped.
- `KeyDisabled`/`KeyEnabled` is one last-writer-wins register; each setting
  of `KeyConfigSet` is its own register, so concurrent changes of different
  settings both apply.
- `KeyDeleted` is a tombstone that wins over everything, forever: the state
  forgets the key's versions, registers and material, ignores every later
  event of the name, and the name is never reused (the key service refuses
  to create it again; whether deletion is allowed is its check too).
- Applied requests: a key body's `request` fingerprint (non-empty: the
  write carried a client request id) is remembered per key as an
  `AppliedRequest` (stamp, fingerprint, body type, version id). A key keeps
  the `REQUESTS_KEPT_PER_KEY` greatest records by `(hlc, origin, request,
  type, version_id)`: the top N of a set under a total order, so the bound
  keeps the fold convergent (a record that falls out can never come back
  above the ones that pushed it out). A tombstone forgets them with the rest.
- Pure: `fold` copies the state it starts from. `PartitionState.apply`
  mutates, for actors that fold one event at a time; it takes the decoded
  body from a caller that already decoded and checked it (the node's own
  commits), and decodes it otherwise.
- Events whose type is not a key body (SignerKey, later policies) leave the
  keys alone; `covered` still records them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from keyswarm.storage.bodies import (
    KeyConfigSet,
    KeyCreated,
    KeyDeleted,
    KeyDisabled,
    KeyEnabled,
    KeyVersionAdded,
    check_envelope,
)
from keyswarm.storage.events import Event
from keyswarm.transport import codec

#: Applied-request records a key keeps (the newest by stamp). A retry comes
#: seconds after its request; this many other writes to one key in between
#: is far beyond any client's retry window.
REQUESTS_KEPT_PER_KEY = 32

#: Settings of `KeyConfigSet` and their values before any is set.
SETTING_DEFAULTS: dict[str, Any] = {
    "min_decryption_version": 1,
    "deletion_allowed": False,
    "auto_rotate_period_s": 0.0,
}


class Register(NamedTuple):
    """A last-writer-wins value: the greatest `(hlc, origin, value)` wins."""

    hlc: int
    origin: str
    value: Any


class AppliedRequest(NamedTuple):
    """A write that carried a client request id: when, which request, what it wrote.

    Ordered as a tuple: the stamp first, so a key keeps its newest records.
    """

    hlc: int
    origin: str
    request: bytes  # the body's request fingerprint
    type: int  # the body's tag (KeyCreated, KeyVersionAdded, ...)
    version_id: bytes  # the version it created (KeyCreated / KeyVersionAdded), else b""


class Tombstone(NamedTuple):
    """When a key was deleted: the earliest delete's stamp."""

    hlc: int
    origin: str


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of a named key, as written by its create or rotate event."""

    version_id: bytes
    hlc: int
    origin: str
    material: bytes  # wrapped key bytes, opaque here
    algorithm: str  # "" when the rotate did not say (it inherits the key's)
    created: bool  # True for the KeyCreated version, False for a KeyVersionAdded one

    @property
    def order(self) -> tuple[int, str, bytes]:
        """Versions are numbered in this order."""
        return (self.hlc, self.origin, self.version_id)

    def _rank(self) -> tuple[Any, ...]:
        # Two records of one version_id only come from a broken writer; the
        # smallest by every field wins so that every order agrees.
        return (self.hlc, self.origin, self.version_id, not self.created, self.algorithm, self.material)


class _View(NamedTuple):
    algorithm: str
    versions: tuple[KeyVersion, ...]
    conflicts: tuple[KeyVersion, ...]
    created: bool  # a KeyCreated was folded


@dataclass(slots=True)
class KeyState:
    """One named key: every version written, its status, settings and tombstone.

    The stored fields are the merged facts; `algorithm`, `versions`,
    `conflicts` and `primary` are derived from them (and cached).
    """

    name: str
    records: dict[bytes, KeyVersion] = field(default_factory=dict)  # grow-only, by version_id
    status: Register | None = None  # value True = disabled
    settings: dict[str, Register] = field(default_factory=dict)
    deleted: Tombstone | None = None
    requests: list[AppliedRequest] = field(default_factory=list)  # ascending, at most REQUESTS_KEPT_PER_KEY
    _view: _View | None = field(default=None, compare=False, repr=False)

    # --- derived ------------------------------------------------------------

    @property
    def exists(self) -> bool:
        """Created (a KeyCreated was folded) and not deleted."""
        return self.deleted is None and self._derive().created  # derived once per change: it is on the hot path

    @property
    def algorithm(self) -> str:
        """The algorithm of the earliest create; "" before any create."""
        return self._derive().algorithm

    @property
    def versions(self) -> tuple[KeyVersion, ...]:
        """The usable versions in order: version number n is `versions[n - 1]`."""
        return self._derive().versions

    @property
    def conflicts(self) -> tuple[KeyVersion, ...]:
        """Versions written for another algorithm than the key's (a concurrent create that lost)."""
        return self._derive().conflicts

    @property
    def primary(self) -> KeyVersion | None:
        """The version new ciphertexts and signatures use: the greatest one."""
        versions = self._derive().versions
        return versions[-1] if versions else None

    def version(self, number: int) -> KeyVersion | None:
        versions = self._derive().versions
        return versions[number - 1] if 1 <= number <= len(versions) else None

    def number_of(self, version_id: bytes) -> int | None:
        """The current number of a version. Numbers can shift when a concurrent
        version with an earlier stamp arrives; ciphertexts name `version_id`."""
        for i, v in enumerate(self._derive().versions, 1):
            if v.version_id == version_id:
                return i
        return None

    @property
    def disabled(self) -> bool:
        return self.status is not None and self.status.value

    def applied(self, request: bytes) -> AppliedRequest | None:
        """The earliest kept record of the write that carried `request`, or None."""
        for record in self.requests:  # ascending: the first match is the earliest
            if record.request == request:
                return record
        return None

    def setting(self, name: str) -> Any:
        register = self.settings.get(name)
        return SETTING_DEFAULTS[name] if register is None else register.value

    def _derive(self) -> _View:
        view = self._view
        if view is None:
            view = self._view = _derive(self)
        return view

    # --- merging facts (each one commutative, associative, idempotent) -------

    def _add_record(self, record: KeyVersion) -> None:
        held = self.records.get(record.version_id)
        if held is None or record._rank() < held._rank():
            self.records[record.version_id] = record
            self._view = None

    def _set_status(self, register: Register) -> None:
        if self.status is None or register > self.status:
            self.status = register

    def _set_setting(self, name: str, register: Register) -> None:
        held = self.settings.get(name)
        if held is None or register > held:
            self.settings[name] = register

    def _add_request(self, record: AppliedRequest) -> None:
        requests = self.requests
        at = bisect.bisect_left(requests, record)
        if at < len(requests) and requests[at] == record:
            return
        requests.insert(at, record)
        if len(requests) > REQUESTS_KEPT_PER_KEY:
            del requests[0]

    def _delete(self, tombstone: Tombstone) -> None:
        if self.deleted is None or tombstone < self.deleted:
            self.deleted = tombstone
        self.records.clear()
        self.settings.clear()
        self.requests.clear()
        self.status = None
        self._view = None

    def copy(self) -> KeyState:
        return KeyState(self.name, dict(self.records), self.status, dict(self.settings), self.deleted,
                        list(self.requests), self._view)


def _derive(key: KeyState) -> _View:
    creates = [r for r in key.records.values() if r.created]
    if not creates:  # rotations seen before their create: held, not yet usable
        return _View("", (), (), False)
    algorithm = min(creates, key=KeyVersion._rank).algorithm
    ordered = sorted(key.records.values(), key=KeyVersion._rank)
    versions = tuple(r for r in ordered if r.algorithm in (algorithm, ""))
    conflicts = tuple(r for r in ordered if r.algorithm not in (algorithm, ""))
    return _View(algorithm, versions, conflicts, True)


@dataclass(slots=True)
class PartitionState:
    """The folded state of one partition: its named keys and what was folded.

    `covered` maps each origin to the highest origin_seq folded here (of any
    type); it tells a restarted actor where its snapshot stands.
    """

    keys: dict[str, KeyState] = field(default_factory=dict)
    covered: dict[str, int] = field(default_factory=dict)

    def key(self, name: str) -> KeyState | None:
        """The live key called `name` (created, not deleted), or None."""
        key = self.keys.get(name)
        return key if key is not None and key.exists else None

    def apply(self, event: Event, body: Any = None) -> None:
        """Fold one event in place. DecodeError when a key body does not
        decode or disagrees with its envelope (the caller names the record).

        `body`: the event's typed body when the caller already has it, i.e.
        `decode_body(event)`'s result, decoded from these very `event.body`
        bytes and checked against this envelope (the storage actor's draft
        check, for the node's own commits). Then it is not decoded again;
        one of another type than the event's is ignored, and the body decoded.
        """
        origin = event.origin
        cls = _KEY_BODY_BY_TAG.get(event.type)
        if cls is not None and type(body) is not cls:  # decode before changing anything: a bad event leaves the state as it was
            body = codec.decode(event.body, expect=cls)
            check_envelope(event, body)
        if event.origin_seq > self.covered.get(origin, 0):
            self.covered[origin] = event.origin_seq
        if cls is None:
            return
        key = self.keys.get(body.name)
        if key is None:
            key = self.keys[body.name] = KeyState(body.name)
        if key.deleted is not None and cls is not KeyDeleted:
            return  # the tombstone wins over everything
        stamp = event.hlc
        if body.request and cls is not KeyDeleted:
            version_id = body.version_id if cls is KeyCreated or cls is KeyVersionAdded else b""
            key._add_request(AppliedRequest(stamp, origin, body.request, event.type, version_id))
        if cls is KeyCreated:
            key._add_record(KeyVersion(body.version_id, stamp, origin, body.material, body.algorithm, True))
        elif cls is KeyVersionAdded:
            key._add_record(KeyVersion(body.version_id, stamp, origin, body.material, body.algorithm, False))
        elif cls is KeyDisabled or cls is KeyEnabled:
            key._set_status(Register(stamp, origin, cls is KeyDisabled))
        elif cls is KeyConfigSet:
            if body.min_decryption_version is not None:
                key._set_setting("min_decryption_version", Register(stamp, origin, body.min_decryption_version))
            if body.deletion_allowed is not None:
                key._set_setting("deletion_allowed", Register(stamp, origin, body.deletion_allowed))
            if body.auto_rotate_period_s is not None:  # the codec accepts an int here; one type keeps bytes equal
                key._set_setting("auto_rotate_period_s", Register(stamp, origin, float(body.auto_rotate_period_s)))
        else:
            key._delete(Tombstone(stamp, origin))

    def copy(self) -> PartitionState:
        return PartitionState({name: k.copy() for name, k in self.keys.items()}, dict(self.covered))


_KEY_BODY_BY_TAG: dict[int, type] = {
    codec.tag_of(cls): cls for cls in (KeyCreated, KeyVersionAdded, KeyDisabled, KeyEnabled, KeyDeleted, KeyConfigSet)
}


def fold(events: Iterable[Event], state: PartitionState | None = None) -> PartitionState:
    """The state after folding `events` onto `state` (or onto nothing); `state` is not changed."""
    result = PartitionState() if state is None else state.copy()
    apply = result.apply
    for event in events:
        apply(event)
    return result
