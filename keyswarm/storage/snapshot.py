"""Snapshot encoding: a `PartitionState` to bytes and back.

Owns the byte format of folded partition state, which the log stores per
partition (`Snapshot.state`) so that a restart is snapshot + tail.

Rules:
- Deterministic: equal states encode to equal bytes on every node (maps are
  written as lists sorted by their key, floats always as float64), so two
  nodes can compare snapshots by hash.
- Self-checking: the outer record is `[FORMAT, checksum, payload]`, the
  checksum a BLAKE2b-128 of the payload. LMDB keeps no checksums of its own;
  a flipped bit in a snapshot must fail here, not fold into wrong key state.
- Strict: every field is type-checked and the payload must be the canonical
  encoding of the state it decodes to (re-encoding gives the same bytes), so
  duplicates, unsorted entries and stray values are refused. Every failure
  is `DecodeError`; nothing else escapes `decode_state`.
- A snapshot is a cache of the log, never the truth: when it does not
  decode, the caller folds the partition from the start instead.
- `FORMAT` changes when the layout does; an unknown format is refused (and
  so rebuilt from the log), never guessed at.
"""

from __future__ import annotations

import hashlib
from typing import Any

from keyswarm.errors import DecodeError
from keyswarm.storage.fold import (
    REQUESTS_KEPT_PER_KEY,
    SETTING_DEFAULTS,
    AppliedRequest,
    KeyState,
    KeyVersion,
    PartitionState,
    Register,
    Tombstone,
)
from keyswarm.transport import codec

FORMAT = 1
_CHECKSUM_BYTES = 16
_PERSON = b"keyswarm.snap.v1"
# A snapshot holds a whole partition: far larger than any network frame.
_LIMITS = codec.Limits(
    max_frame_bytes=1 << 31, max_bin_bytes=1 << 31, max_str_bytes=1 << 20, max_container_len=1 << 24, max_depth=8
)
# What each setting holds; bool is checked before int (a bool is an int in Python).
_SETTING_TYPES: dict[str, type] = {
    "min_decryption_version": int, "deletion_allowed": bool, "auto_rotate_period_s": float,
}
assert _SETTING_TYPES.keys() == SETTING_DEFAULTS.keys()


def encode_state(state: PartitionState) -> bytes:
    """The snapshot bytes of `state`."""
    payload = _encode_payload(state)
    return codec.write_msgpack([FORMAT, _checksum(payload), payload])


def decode_state(data: bytes) -> PartitionState:
    """The state a snapshot holds; DecodeError when the bytes are not a valid snapshot."""
    outer = codec.read_msgpack(data, limits=_LIMITS)
    if type(outer) is not tuple or len(outer) != 3:
        raise DecodeError("snapshot: expected [format, checksum, payload]")
    fmt, checksum, payload = outer
    if fmt != FORMAT or type(fmt) is not int:
        raise DecodeError(f"snapshot: format {codec.short_repr(fmt)} is not {FORMAT}")
    if type(payload) is not bytes or type(checksum) is not bytes:
        raise DecodeError("snapshot: checksum and payload must be bytes")
    if checksum != _checksum(payload):
        raise DecodeError("snapshot: checksum mismatch (the stored bytes changed)")
    try:
        state = _state_from(codec.read_msgpack(payload, limits=_LIMITS))
    except _Bad as exc:
        raise DecodeError(f"snapshot: {exc}") from None
    if _encode_payload(state) != payload:
        raise DecodeError("snapshot: payload is not in canonical form")
    return state


# --- the payload: [covered, keys] -------------------------------------------
# covered: [[origin, seq], ...] by origin
# keys:    [[name, records, status, settings, deleted(, requests)], ...] by name
#   records:  [[version_id, hlc, origin, material, algorithm, created], ...] by version_id
#   status:   [hlc, origin, disabled] | nil
#   settings: [[setting, hlc, origin, value], ...] by setting name
#   deleted:  [hlc, origin] | nil
#   requests: [[hlc, origin, request, type, version_id], ...] ascending; written
#             only when the key has some (so snapshots of keys without any keep
#             the 5-element form of before, and stay canonical)


def _encode_payload(state: PartitionState) -> bytes:
    covered = [[origin, seq] for origin, seq in sorted(state.covered.items())]
    keys = [_key_tree(state.keys[name]) for name in sorted(state.keys)]
    return codec.write_msgpack([covered, keys])


def _key_tree(key: KeyState) -> list[Any]:
    records = [
        [r.version_id, r.hlc, r.origin, r.material, r.algorithm, r.created]
        for _, r in sorted(key.records.items())
    ]
    status = None if key.status is None else list(key.status)
    settings = [[name, *key.settings[name]] for name in sorted(key.settings)]
    deleted = None if key.deleted is None else list(key.deleted)
    if key.requests:
        return [key.name, records, status, settings, deleted, [list(r) for r in key.requests]]
    return [key.name, records, status, settings, deleted]


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_CHECKSUM_BYTES, person=_PERSON).digest()


class _Bad(Exception):
    """A structural failure inside the payload; becomes DecodeError at the boundary."""


def _state_from(tree: Any) -> PartitionState:
    covered_tree, keys_tree = _array(tree, 2, "payload")
    covered: dict[str, int] = {}
    for item in _list(covered_tree, "covered"):
        origin, seq = _array(item, 2, "covered entry")
        covered[_str(origin, "origin")] = _uint(seq, "origin_seq")
    keys: dict[str, KeyState] = {}
    for item in _list(keys_tree, "keys"):
        key = _key_from(item)
        keys[key.name] = key
    return PartitionState(keys, covered)


def _key_from(tree: Any) -> KeyState:
    if type(tree) is tuple and len(tree) == 6:
        *fields, requests_tree = tree
        name, records_tree, status_tree, settings_tree, deleted_tree = fields
    else:
        name, records_tree, status_tree, settings_tree, deleted_tree = _array(tree, 5, "key")
        requests_tree = ()
    key = KeyState(_str(name, "key name"))
    for item in _list(requests_tree, "requests"):
        hlc, origin, request, kind, vid = _array(item, 5, "request")
        key.requests.append(AppliedRequest(_uint(hlc, "hlc"), _str(origin, "origin"), _bytes(request, "request"),
                                           _uint(kind, "type"), _bytes(vid, "version_id")))
    if key.requests != sorted(key.requests) or len(key.requests) > REQUESTS_KEPT_PER_KEY:
        raise _Bad(f"key {codec.short_repr(key.name)}: requests out of order or more than {REQUESTS_KEPT_PER_KEY}")
    for item in _list(records_tree, "records"):
        vid, hlc, origin, material, algorithm, created = _array(item, 6, "version")
        record = KeyVersion(_bytes(vid, "version_id"), _uint(hlc, "hlc"), _str(origin, "origin"),
                            _bytes(material, "material"), _str(algorithm, "algorithm"), _bool(created, "created"))
        key.records[record.version_id] = record
    if status_tree is not None:
        hlc, origin, disabled = _array(status_tree, 3, "status")
        key.status = Register(_uint(hlc, "hlc"), _str(origin, "origin"), _bool(disabled, "disabled"))
    for item in _list(settings_tree, "settings"):
        setting, hlc, origin, value = _array(item, 4, "setting")
        expected = _SETTING_TYPES.get(setting) if type(setting) is str else None
        if expected is None or type(value) is not expected:
            raise _Bad(f"setting {codec.short_repr(setting)} = {codec.short_repr(value)}")
        key.settings[setting] = Register(_uint(hlc, "hlc"), _str(origin, "origin"), value)
    if deleted_tree is not None:
        hlc, origin = _array(deleted_tree, 2, "deleted")
        key.deleted = Tombstone(_uint(hlc, "hlc"), _str(origin, "origin"))
        if key.records or key.status is not None or key.settings or key.requests:
            raise _Bad(f"key {codec.short_repr(key.name)}: a deleted key keeps nothing but its tombstone")
    return key


def _list(v: Any, what: str) -> tuple[Any, ...]:
    if type(v) is not tuple:
        raise _Bad(f"{what}: expected an array, got {codec.wire_type_name(v)}")
    return v


def _array(v: Any, n: int, what: str) -> tuple[Any, ...]:
    if type(v) is not tuple or len(v) != n:
        raise _Bad(f"{what}: expected an array of {n}, got {codec.short_repr(v)}")
    return v


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise _Bad(f"{what}: expected str, got {codec.wire_type_name(v)}")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if type(v) is not bytes:
        raise _Bad(f"{what}: expected bytes, got {codec.wire_type_name(v)}")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise _Bad(f"{what}: expected bool, got {codec.wire_type_name(v)}")
    return v


def _uint(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise _Bad(f"{what}: expected an unsigned int, got {codec.short_repr(v)}")
    return v
