"""The bytes of an `LmdbLog`: keys, checked values and the meta record.

Owns the on-disk format of schema 1 (docs/storage.md, "LMDB layout"), and
only the format: no `lmdb` import, no transactions. `lmdb_log` writes and
reads through it; `lmdb_audit` checks against it.

Databases (integers big-endian, so byte order is number order):
- `events`:    partition u16 + local seq u64      -> crc + Event (codec array form)
- `origins`:   u8 len + origin + origin seq u64   -> crc + partition u16 + local seq u64 + digest
- `heads`:     origin (UTF-8)                     -> crc + origin seq u64 + digest
- `snapshots`: partition u16                      -> crc + local seq u64 + state
- `meta`:      kind, schema_version, node_id, partitions, genesis (plain values)
- `secrets`:   reserved for sealed node secrets; empty in schema 1.

Rules:
- Every value but meta's is "sealed": a CRC-32 over key and payload comes
  first. A changed byte, or a record copied under another key, fails the
  check; an event's own digest cannot serve, because it is stored with its
  successor and the head, in other records, often other partitions.
- Origins keys carry the origin's length first, so one origin's keys are
  contiguous and never interleave with an origin whose id extends it.
- Meta values stay plain and keyed by name forever: a later keyswarm must
  be able to read `kind` and `schema_version` whatever else it changed.
- A record that fails a check becomes `CorruptRecord` (via `corrupt`),
  naming the database and the record's position.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keyswarm.errors import CorruptRecord, DecodeError, StorageError
from keyswarm.storage.events import DIGEST_BYTES, Event
from keyswarm.storage.log import SCHEMA_VERSION, IntegrityProblem, LogMeta, corrupt_record
from keyswarm.transport import codec

#: Largest encoded event stored; reads decode with limits this wide.
MAX_EVENT_BYTES = 64 * 1024 * 1024
RECORD_LIMITS = codec.Limits(
    max_frame_bytes=MAX_EVENT_BYTES, max_bin_bytes=MAX_EVENT_BYTES, max_str_bytes=MAX_EVENT_BYTES
)
DB_NAMES = ("events", "origins", "heads", "snapshots", "meta", "secrets")
KIND = b"keyswarm event log"
META_KEYS = (b"kind", b"schema_version", b"node_id", b"partitions", b"genesis")
CHANGED = "checksum mismatch (the stored bytes changed)"

EVENT_KEY = struct.Struct(">HQ")  # partition, local seq
U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")
U16 = struct.Struct(">H")
INDEX_BYTES = EVENT_KEY.size + DIGEST_BYTES  # an origins payload: event key + digest
HEAD_BYTES = U64.size + DIGEST_BYTES
_crc32 = zlib.crc32


def corrupt(db: str, reason: str, **where: Any) -> CorruptRecord:
    return corrupt_record(IntegrityProblem(db=db, reason=reason, **where))


def seal(key: bytes, payload: bytes) -> bytes:
    """crc32(key + payload) ahead of the payload: binds a record to its key."""
    return U32.pack(_crc32(payload, _crc32(key))) + payload


def unseal(key: Any, value: Any) -> memoryview | None:
    """The payload of a sealed value, or None when its checksum does not match."""
    view = memoryview(value)
    if len(view) < 4 or U32.unpack_from(view)[0] != _crc32(view[4:], _crc32(key)):
        return None
    return view[4:]


def origin_prefix(origin: str) -> bytes:
    """The part of an origins key before the sequence number."""
    raw = origin.encode("utf-8")
    return bytes((len(raw),)) + raw  # ValueError past 255 bytes (check_batch refuses those first)


def origin_key(origin: str, origin_seq: int) -> bytes:
    return origin_prefix(origin) + U64.pack(origin_seq)


def decode_event(key: Any, value: Any, partition: int, seq: int) -> Event:
    """Check and decode the `events` record under `key`, which should be (partition, seq)."""
    if len(key) != EVENT_KEY.size or EVENT_KEY.unpack(key) != (partition, seq):
        found = EVENT_KEY.unpack(key) if len(key) == EVENT_KEY.size else bytes(key).hex()
        raise corrupt("events", f"missing: the next key is {found}", partition=partition, seq=seq)
    payload = unseal(key, value)
    if payload is None:
        raise corrupt("events", CHANGED, partition=partition, seq=seq)
    try:
        event = codec.decode(payload, limits=RECORD_LIMITS, expect=Event)
    except DecodeError as exc:
        raise corrupt("events", f"does not decode: {exc}", partition=partition, seq=seq) from exc
    if event.partition != partition:
        raise corrupt("events", f"the event says partition {event.partition}", partition=partition, seq=seq)
    return event


def decode_index(key: bytes, value: Any, origin: str, origin_seq: int) -> tuple[bytes, bytes]:
    """The (event key, digest) an `origins` value holds."""
    payload = unseal(key, value)
    if payload is None or len(payload) != INDEX_BYTES:
        raise corrupt("origins", CHANGED, origin=origin, origin_seq=origin_seq)
    return bytes(payload[: EVENT_KEY.size]), bytes(payload[EVENT_KEY.size :])


def decode_head(key: bytes, value: Any) -> tuple[str, int, bytes]:
    """(origin, origin seq, digest) of a `heads` record."""
    try:
        origin = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise corrupt("heads", f"key {key.hex()} is not an origin id") from exc
    payload = unseal(key, value)
    if payload is None or len(payload) != HEAD_BYTES:
        raise corrupt("heads", CHANGED, origin=origin)
    return origin, U64.unpack_from(payload)[0], bytes(payload[U64.size :])


# --- the meta record ------------------------------------------------------------


def meta_values(meta: LogMeta) -> list[tuple[bytes, bytes]]:
    return [
        (b"kind", KIND), (b"schema_version", U32.pack(meta.schema_version)),
        (b"node_id", meta.node_id.encode("utf-8")), (b"partitions", U32.pack(meta.partitions)),
        (b"genesis", meta.genesis),
    ]


def parse_meta(raw: Mapping[bytes, bytes | None], path: Path) -> LogMeta:
    """The meta record from its values; refuses another kind of file and a newer schema."""
    if raw.get(b"kind") != KIND:
        kind = raw.get(b"kind")
        raise StorageError(f"{path} holds an LMDB environment that is not a keyswarm event log (meta kind {kind!r})")
    # The schema first: a newer schema may have changed everything else.
    version = raw.get(b"schema_version")
    if version is None or len(version) != U32.size:
        raise corrupt("meta", f"schema_version is {version!r}")
    schema = U32.unpack(version)[0]
    if schema > SCHEMA_VERSION:
        raise StorageError(
            f"event log at {path} was written by schema {schema}; this keyswarm reads up to {SCHEMA_VERSION}"
            " (upgrade keyswarm to open it)"
        )
    try:
        node_id = raw[b"node_id"].decode("utf-8")  # type: ignore[union-attr]
        partitions = U32.unpack(raw[b"partitions"])[0]  # type: ignore[arg-type]
        genesis = raw[b"genesis"]
        if schema < 1 or not 1 <= partitions <= 65536 or genesis is None:
            raise ValueError(f"schema {schema}, partitions {partitions}, genesis {genesis!r}")
    except (AttributeError, KeyError, UnicodeDecodeError, struct.error, TypeError, ValueError) as exc:
        raise corrupt("meta", f"unreadable meta record: {exc}") from exc
    return LogMeta(schema_version=schema, node_id=node_id, partitions=partitions, genesis=genesis)


def check_identity(meta: LogMeta, expected: LogMeta, path: Path) -> None:
    """Refuse to open another node's log, or one with other partitions or another genesis."""
    if meta.node_id != expected.node_id:
        raise StorageError(f"event log at {path} belongs to node {meta.node_id!r}, not {expected.node_id!r}")
    if meta.partitions != expected.partitions:
        raise StorageError(
            f"event log at {path} has {meta.partitions} partitions, the config says {expected.partitions}"
            " (partitions are fixed at genesis)"
        )
    if meta.genesis != expected.genesis:
        raise StorageError(f"event log at {path} belongs to another network (its genesis record differs)")
