"""`LmdbLog`: a node's event log in one LMDB environment.

Owns the environment: opening and refusing, durability flags, transactions,
map growth, and the `EventLog` operations over the byte format of
`lmdb_layout` (docs/storage.md, "LMDB layout"). `lmdb` is imported here and
nowhere else in keyswarm; every `lmdb.Error` is translated at this boundary
(`_lmdb_errors`) into `StorageError` or `CorruptRecord`.

Rules:
- One write transaction per `append`: one durable commit (sync and metasync
  on, no writemap). Chain checks (`log.check_batch`) read heads inside that
  transaction, so nothing is cached that could go stale, survive an abort,
  or disagree with another process that opened the environment.
- Events and origins entries are put with overwrite off: a key that already
  exists means the indexes disagree, and the batch is refused as corrupt.
- Every read checks what it returns: `read_partition` each record's
  checksum, key, decode and partition, and that local seqs are dense;
  `read_origin` also the origins entry, the event's origin and sequence, the
  chain link and the digest. A failed check raises `CorruptRecord` naming
  db, partition and seq; nothing is skipped. `verify_integrity` walks all
  (`lmdb_audit`).
- Read transactions are short: at most `READ_BATCH` records each, none held
  across calls, so `open_existing(readonly=True)` runs beside the writer.
- `MapFullError` doubles the map and retries the batch; a reader whose map
  another process outgrew adopts the new size (`MapResizedError`).
- Opening refuses, with a message that says what is wrong: a missing or
  empty data file, a truncated one (checked before LMDB reads a page past
  the end, which would be SIGBUS), a file that is not LMDB, an environment
  that is not a keyswarm log, a newer schema, another node's or network's log.
- One lock per handle around every transaction: LMDB forbids `set_mapsize`
  while the process has a transaction open, and threads may share a handle.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from keyswarm.errors import StorageError
from keyswarm.storage.events import GENESIS_PREV, Event, Head, digest
from keyswarm.storage.lmdb_layout import (
    CHANGED, DB_NAMES, EVENT_KEY, INDEX_BYTES, MAX_EVENT_BYTES, META_KEYS, U16, U32, U64, check_identity, corrupt,
    decode_event, decode_head, decode_index, meta_values, origin_key, origin_prefix, parse_meta, seal, unseal,
)
from keyswarm.storage.log import (
    SCHEMA_VERSION, AppendResult, EventLog, IntegrityProblem, LogMeta, Progress, Snapshot, batch_digests, check_batch,
)
from keyswarm.transport import codec

#: Records read per read transaction (keeps each one short beside the writer).
READ_BATCH = 4096
#: The map never grows past this (the config's ceiling for map_size_bytes).
MAX_MAP_BYTES = 1 << 44
DEFAULT_MAP_BYTES = 1 << 30
# Six databases in schema 1; room for a later schema's without DbsFullError.
_MAX_DBS = 16
# A reader adopts a grown map and retries; the writer may grow it again in between.
_RESIZE_ATTEMPTS = 4
_LAST_KEY_SEQ = 2**64 - 1
_crc32 = zlib.crc32
_T = TypeVar("_T")


def _begin(env: Any, **kwargs: Any) -> Any:
    """`env.begin(**kwargs)` for reading, adopting the map size another process grew meanwhile
    (LMDB's MDB_MAP_RESIZED): a reader opened beside a writer, even on its very first transaction."""
    for attempt in range(_RESIZE_ATTEMPTS):
        try:
            return env.begin(**kwargs)
        except lmdb.MapResizedError:
            if attempt == _RESIZE_ATTEMPTS - 1:
                raise
            env.set_mapsize(0)  # another process grew the map: adopt its size
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _lmdb_errors(path: Path, doing: str) -> Iterator[None]:
    """The one place LMDB's exceptions become keyswarm's (httpcore's map_exceptions)."""
    data = path / "data.mdb"
    try:
        yield
    except (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError) as exc:
        raise corrupt("file", f"{doing}: LMDB reports {exc}") from exc
    except lmdb.InvalidError as exc:
        raise StorageError(f"{data} is not an LMDB file (or its header is damaged)") from exc
    except lmdb.VersionMismatchError as exc:
        raise StorageError(f"{data} was written by an incompatible LMDB version") from exc
    except lmdb.Error as exc:
        raise StorageError(f"event log at {path}: {doing} failed: {exc}") from exc


class LmdbLog(EventLog):
    """The durable `EventLog`. Build it with `open` (a node) or `open_existing` (readers)."""

    def __init__(self, *, env: Any, dbs: dict[str, Any], meta: LogMeta, path: Path, readonly: bool):
        self._env: Any = env
        self._events, self._origins, self._heads, self._snapshots = (
            dbs["events"], dbs["origins"], dbs["heads"], dbs["snapshots"]
        )
        self._meta, self._path, self._readonly = meta, path, readonly
        self._lock = threading.Lock()

    # --- opening ---------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | Path, *, node_id: str, partitions: int, genesis: bytes,
        map_size_bytes: int = DEFAULT_MAP_BYTES, readonly: bool = False,
    ) -> LmdbLog:
        """Create the log at `path` (a directory), or open it and check it is this node's."""
        if type(partitions) is not int or not 1 <= partitions <= 65536:
            raise ValueError(f"partitions must be 1..65536 (a u16 in the key), got {partitions!r}")
        expected = LogMeta(schema_version=SCHEMA_VERSION, node_id=node_id, partitions=partitions, genesis=genesis)
        return cls._open(Path(path), expected=expected, readonly=readonly, map_size=map_size_bytes)

    @classmethod
    def open_existing(cls, path: str | Path, readonly: bool = True) -> LmdbLog:
        """Open a log that must exist, whoever's it is (`keyswarm audit verify`); safe beside the writer."""
        return cls._open(Path(path), expected=None, readonly=readonly, map_size=0)  # 0: the file's own size

    @classmethod
    def _open(cls, path: Path, *, expected: LogMeta | None, readonly: bool, map_size: int) -> LmdbLog:
        data = path / "data.mdb"
        creating = expected is not None and not readonly
        try:
            if path.exists() and not path.is_dir():
                raise StorageError(f"event log path {path} is not a directory")
            if creating:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            elif not data.exists():
                raise StorageError(f"no keyswarm event log at {path} (no data.mdb)")
            # LMDB would start a new environment over an empty file: data lost silently.
            if data.exists() and data.stat().st_size == 0:
                raise StorageError(f"{data} is empty (truncated?); refusing to start a new log over it")
        except OSError as exc:
            raise StorageError(f"cannot open event log at {path}: {exc}") from exc
        with _lmdb_errors(path, "open"):
            env = lmdb.open(
                str(path), map_size=map_size, max_dbs=_MAX_DBS, readonly=readonly, create=creating,
                # Durable commits: data pages are fsynced, then the meta page is
                # written synchronously (metasync), so a commit that returned
                # survives power loss. No writemap: a stray write cannot reach the
                # map, and the file does not grow to the map size.
                sync=True, metasync=True, writemap=False, map_async=False,
                lock=True, subdir=True, mode=0o600, meminit=True, max_spare_txns=1,
            )
        try:
            with _lmdb_errors(path, "open"):
                cls._check_size(env, data)
                if not readonly:
                    env.reader_check()  # free the reader slots of processes that died
                for attempt in range(_RESIZE_ATTEMPTS):
                    try:
                        meta, dbs = cls._open_dbs(env, path, expected, creating)
                        break
                    except lmdb.MapResizedError:  # from any of its transactions, open_db's own included
                        if attempt == _RESIZE_ATTEMPTS - 1:
                            raise
                        env.set_mapsize(0)  # a writer grew the map while we opened: adopt its size
            return cls(env=env, dbs=dbs, meta=meta, path=path, readonly=readonly)
        except BaseException:
            env.close()
            raise

    @staticmethod
    def _check_size(env: Any, data: Path) -> None:
        """Refuse a file shorter than its last committed page, before any page is read:
        touching a page past the end of a mapped file kills the process (SIGBUS)."""
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        actual = data.stat().st_size
        if actual < needed:
            raise StorageError(f"{data} is truncated: {actual} bytes, but its last committed page ends at {needed}")

    @staticmethod
    def _open_dbs(env: Any, path: Path, expected: LogMeta | None, creating: bool) -> tuple[LogMeta, dict[str, Any]]:
        with _begin(env) as txn:
            names = {bytes(k) for k in txn.cursor().iternext(values=False)}
        if not names:
            if not creating or expected is None:
                raise StorageError(f"no keyswarm event log at {path} (the LMDB environment is empty)")
            # Every database and the meta record in one transaction: a crash
            # leaves nothing (opened as new next time) or a complete empty log.
            with env.begin(write=True) as txn:
                dbs = {name: env.open_db(name.encode(), txn=txn) for name in DB_NAMES}
                for key, value in meta_values(expected):
                    txn.put(key, value, db=dbs["meta"])
            return expected, dbs
        if b"meta" not in names:
            listed = ", ".join(sorted(n.decode("utf-8", "replace") for n in names))
            raise StorageError(f"{path} holds an LMDB environment, not a keyswarm event log (databases: {listed})")
        with _begin(env, db=env.open_db(b"meta", create=False)) as txn:
            meta = parse_meta({key: txn.get(key) for key in META_KEYS}, path)
        missing = [name for name in DB_NAMES if name.encode() not in names]
        if missing:
            raise StorageError(f"event log at {path} is damaged: database(s) {', '.join(missing)} missing")
        if expected is not None:
            check_identity(meta, expected, path)
        return meta, {name: env.open_db(name.encode(), create=False) for name in DB_NAMES}

    # --- transactions ------------------------------------------------------------

    def _env_open(self) -> Any:
        if self._env is None:
            raise StorageError(f"event log at {self._path} is closed")
        return self._env

    @contextlib.contextmanager
    def _read(self, doing: str) -> Iterator[Any]:
        """A short read transaction under the handle's lock; values are zero-copy views."""
        with self._lock, _lmdb_errors(self._path, doing):
            txn = _begin(self._env_open(), buffers=True)
            try:
                yield txn
            finally:
                txn.abort()

    def _write(self, doing: str, body: Callable[[Any], _T]) -> _T:
        """Run `body(txn)` in one write transaction and commit it durably,
        doubling the map and starting over while LMDB says it is full."""
        with self._lock, _lmdb_errors(self._path, doing):
            env = self._env_open()
            if self._readonly:
                raise StorageError(f"event log at {self._path} is open read-only")
            while True:
                txn = env.begin(write=True)
                try:
                    result = body(txn)
                    txn.commit()
                    return result
                except lmdb.MapFullError:
                    txn.abort()
                    size = env.info()["map_size"]
                    if size * 2 > MAX_MAP_BYTES:
                        raise StorageError(f"event log at {self._path} is full at a {size}-byte map") from None
                    env.set_mapsize(size * 2)
                except BaseException:
                    txn.abort()
                    raise

    @contextlib.contextmanager
    def _scan(self, db: Any, doing: str) -> Iterator[Iterator[tuple[Any, bytes, Any]]]:
        """`with log._scan(db, doing) as rows:` every record of `db` in key
        order as (txn, key, value), READ_BATCH per read transaction; `value`
        is valid until the next row. A context manager because rows are
        yielded under the lock: leaving the block (even by an exception whose
        traceback keeps the generator alive) must end the transaction."""
        rows = self._scan_rows(db, doing)
        try:
            yield rows
        finally:
            rows.close()

    def _scan_rows(self, db: Any, doing: str) -> Generator[tuple[Any, bytes, Any], None, None]:
        resume = b""
        while True:
            with self._read(doing) as txn:
                cursor = txn.cursor(db)
                more = cursor.set_range(resume)
                for _ in range(READ_BATCH):
                    if not more:
                        return
                    key = bytes(cursor.key())
                    yield txn, key, cursor.value()
                    resume = key + b"\x00"  # the first key after this one, whatever its length
                    more = cursor.next()

    # --- EventLog: writes ---------------------------------------------------------------

    def meta(self) -> LogMeta:
        self._env_open()
        return self._meta

    def append(self, events: Sequence[Event], *, digests: Sequence[bytes] | None = None) -> AppendResult:
        self._env_open()
        if not events:
            return AppendResult(positions=())
        # Pure work before the lock: the writer holds it only for LMDB.
        digests = batch_digests(events, digests)  # the sealer's, when it handed them (log.py, "Digests")
        encoded = [codec.encode(e) for e in events]
        for event, raw in zip(events, encoded):
            if len(raw) > MAX_EVENT_BYTES:
                raise StorageError(
                    f"event {event.origin!r} seq {event.origin_seq} is {len(raw)} bytes;"
                    f" the log stores at most {MAX_EVENT_BYTES}"
                )
        return self._write("append", lambda txn: self._append_in(txn, events, digests, encoded))

    def _append_in(self, txn: Any, events: Sequence[Event], digests: Sequence[bytes], encoded: list[bytes]) -> AppendResult:
        fresh = check_batch(
            events, digests, partitions=self._meta.partitions,
            head_of=lambda origin: self._head_in(txn, origin),
            digest_at=lambda origin, seq: self._digest_in(txn, origin, seq),
        )
        next_seq: dict[int, int] = {}
        prefixes: dict[str, bytes] = {}
        event_items, origin_items, positions = [], [], []
        new_heads: dict[str, tuple[int, bytes]] = {}
        # The writer's hot loop: struct and crc calls inlined (this is `seal`).
        pack_key, pack_seq, pack_crc, crc32 = EVENT_KEY.pack, U64.pack, U32.pack, _crc32
        for event, event_digest, raw, is_new in zip(events, digests, encoded, fresh):
            if not is_new:
                positions.append(None)
                continue
            partition, origin, origin_seq = event.partition, event.origin, event.origin_seq
            seq = next_seq.get(partition) or self._last_seq_in(txn, partition) + 1
            next_seq[partition] = seq + 1
            key = pack_key(partition, seq)
            event_items.append((key, pack_crc(crc32(raw, crc32(key))) + raw))
            prefix = prefixes.get(origin)
            if prefix is None:
                prefix = prefixes[origin] = origin_prefix(origin)
            okey = prefix + pack_seq(origin_seq)
            index = key + event_digest
            origin_items.append((okey, pack_crc(crc32(index, crc32(okey))) + index))
            new_heads[origin] = (origin_seq, event_digest)
            positions.append((partition, seq))
        # Not sorted first: measured, sorting costs more than the page locality gains.
        for name, db, items in (("events", self._events, event_items), ("origins", self._origins, origin_items)):
            if txn.cursor(db).putmulti(items, overwrite=False)[1] != len(items):
                raise corrupt(name, "a key this batch needs already exists: the indexes disagree")
        for origin, (origin_seq, event_digest) in new_heads.items():
            hkey = origin.encode("utf-8")
            txn.put(hkey, seal(hkey, U64.pack(origin_seq) + event_digest), db=self._heads)
        return AppendResult(positions=tuple(positions))

    def write_snapshot(self, snapshot: Snapshot) -> None:
        self._check_partition(snapshot.partition)

        def write(txn: Any) -> None:
            last = self._last_seq_in(txn, snapshot.partition)
            if not 0 <= snapshot.seq <= last:
                raise StorageError(
                    f"snapshot of partition {snapshot.partition} at seq {snapshot.seq} is outside the log"
                    f" (last seq {last})"
                )
            key = U16.pack(snapshot.partition)
            txn.put(key, seal(key, U64.pack(snapshot.seq) + snapshot.state), db=self._snapshots)

        self._write("write_snapshot", write)

    # --- EventLog: reads ------------------------------------------------------------------

    def read_partition(self, partition: int, from_seq: int = 1, limit: int | None = None) -> list[tuple[int, Event]]:
        self._check_partition(partition)
        rows: list[tuple[int, Event]] = []
        seq = max(from_seq, 1)
        want = None if limit is None else max(limit, 0)
        while want is None or len(rows) < want:
            n = READ_BATCH if want is None else min(READ_BATCH, want - len(rows))
            batch = self._read_partition_batch(partition, seq, n)
            rows.extend(batch)
            if len(batch) < n:
                break
            seq = batch[-1][0] + 1
        return rows

    def _read_partition_batch(self, partition: int, seq: int, n: int) -> list[tuple[int, Event]]:
        rows: list[tuple[int, Event]] = []
        prefix = U16.pack(partition)
        with self._read("read_partition") as txn:
            cursor = txn.cursor(self._events)
            if not cursor.set_range(EVENT_KEY.pack(partition, seq)):
                return rows
            for key, value in cursor:
                if key[:2] != prefix:
                    break
                rows.append((seq, decode_event(key, value, partition, seq)))  # checks seq is the next one
                seq += 1
                if len(rows) >= n:
                    break
        return rows

    def read_origin(self, origin: str, from_seq: int = 1, to_seq: int | None = None) -> list[Event]:
        self._env_open()
        raw = origin.encode("utf-8")
        if not raw or len(raw) > 255:
            return []
        out: list[Event] = []
        seq = max(from_seq, 1)
        prev = GENESIS_PREV if seq == 1 else None  # None: looked up from the index in the first batch
        while to_seq is None or seq <= to_seq:
            n = READ_BATCH if to_seq is None else min(READ_BATCH, to_seq - seq + 1)
            batch, prev = self._read_origin_batch(origin, seq, n, prev)
            out.extend(batch)
            if len(batch) < n:
                break
            seq += n
        return out

    def _read_origin_batch(self, origin: str, seq: int, n: int, prev: bytes | None) -> tuple[list[Event], bytes | None]:
        events: list[Event] = []
        prefix = origin_prefix(origin)
        with self._read("read_origin") as txn:
            if prev is None:  # the link into the range: the digest held for seq - 1, when it is readable
                before = prefix + U64.pack(seq - 1)
                value = txn.get(before, db=self._origins)
                payload = None if value is None else unseal(before, value)
                if payload is not None and len(payload) == INDEX_BYTES:
                    prev = bytes(payload[EVENT_KEY.size :])
            cursor = txn.cursor(self._origins)
            if not cursor.set_range(prefix + U64.pack(seq)):
                return events, prev
            for okey, value in cursor:
                if len(okey) != len(prefix) + 8 or okey[: len(prefix)] != prefix:
                    break
                if U64.unpack_from(okey, len(prefix))[0] != seq:
                    raise corrupt("origins", "missing from the chain index", origin=origin, origin_seq=seq)
                ekey, held = decode_index(bytes(okey), value, origin, seq)
                partition, lseq = EVENT_KEY.unpack(ekey)
                stored = txn.get(ekey, db=self._events)
                if stored is None:
                    raise corrupt("origins", f"points to partition {partition} seq {lseq}, which holds no event",
                                  origin=origin, origin_seq=seq)
                event = decode_event(ekey, stored, partition, lseq)
                at = {"partition": partition, "seq": lseq, "origin": origin, "origin_seq": seq}
                if event.origin != origin or event.origin_seq != seq:
                    raise corrupt("events", f"holds origin {event.origin!r} seq {event.origin_seq}", **at)
                if prev is not None and event.prev != prev:
                    raise corrupt("events", "prev does not match the digest of the previous event", **at)
                if digest(event) != held:
                    raise corrupt("events", "digest does not match the origins index", **at)
                events.append(event)
                prev, seq = held, seq + 1
                if len(events) >= n:
                    break
        return events, prev

    def heads(self) -> dict[str, Head]:
        # LMDB orders keys by bytes, and UTF-8 byte order is code point order.
        with self._scan(self._heads, "heads") as rows:
            return {origin: Head(seq, held) for origin, seq, held in (decode_head(k, v) for _, k, v in rows)}

    def last_seq(self, partition: int) -> int:
        self._check_partition(partition)
        with self._read("last_seq") as txn:
            return self._last_seq_in(txn, partition)

    def read_snapshot(self, partition: int) -> Snapshot | None:
        self._check_partition(partition)
        key = U16.pack(partition)
        with self._read("read_snapshot") as txn:
            value = txn.get(key, db=self._snapshots)
            if value is None:
                return None
            payload = unseal(key, value)
            if payload is None or len(payload) < 8:
                raise corrupt("snapshots", CHANGED, partition=partition)
            return Snapshot(partition=partition, seq=U64.unpack_from(payload)[0], state=bytes(payload[8:]))

    def close(self) -> None:
        with self._lock:
            if self._env is not None:
                self._env.close()
                self._env = None

    # --- integrity ----------------------------------------------------------------------

    def verify_integrity(self, progress: Progress | None = None, max_problems: int = 100) -> list[IntegrityProblem]:
        from keyswarm.storage.lmdb_audit import audit_log  # it walks this class's transactions

        return audit_log(self, progress=progress, max_problems=max_problems)

    @staticmethod
    def verify_file(path: str | Path) -> list[IntegrityProblem]:
        """LMDB's own structural check of `path`/data.mdb (page tree, free list),
        done by reading the file, not by mapping it: safe on any file, but only
        meaningful while no writer has it open. Needs py-lmdb >= 3."""
        try:
            from lmdb import verify as lmdb_verify
        except ImportError as exc:
            raise StorageError("the structural check needs py-lmdb >= 3") from exc
        try:
            found = lmdb_verify.verify(str(path), subdir=True)
        except (lmdb_verify.VerifyError, OSError) as exc:
            return [IntegrityProblem(db="file", reason=str(exc))]
        return [IntegrityProblem(db="file", reason=str(problem)) for problem in found]

    # --- helpers (the audit uses the ones taking a txn) ---------------------------------------

    def _check_partition(self, partition: int) -> None:
        self._env_open()
        n = self._meta.partitions
        if type(partition) is not int or not 0 <= partition < n:
            raise ValueError(f"partition {partition!r} is outside 0..{n - 1}")

    def _last_seq_in(self, txn: Any, partition: int) -> int:
        cursor = txn.cursor(self._events)
        # Step back from the first key past this partition.
        positioned = cursor.prev() if cursor.set_range(EVENT_KEY.pack(partition, _LAST_KEY_SEQ)) else cursor.last()
        if not positioned:
            return 0
        key = cursor.key()
        if len(key) != EVENT_KEY.size or key[:2] != U16.pack(partition):
            return 0
        return EVENT_KEY.unpack(key)[1]

    def _head_in(self, txn: Any, origin: str) -> Head | None:
        key = origin.encode("utf-8")
        value = txn.get(key, db=self._heads)
        if value is None:
            return None
        _, seq, held = decode_head(key, value)
        return Head(seq, held)

    def _digest_in(self, txn: Any, origin: str, seq: int) -> bytes:
        key = origin_key(origin, seq)
        value = txn.get(key, db=self._origins)
        if value is None:  # asked only at or below the head, where every seq is held
            raise corrupt("origins", "missing below the head", origin=origin, origin_seq=seq)
        return decode_index(key, value, origin, seq)[1]
