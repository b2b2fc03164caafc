"""Unwrapped named keys: the LRU that holds them and the ring that resolves a key version to one.

Owns `KeyCache`, a bounded LRU of ready keys keyed by (name, version_id) with
a maximum age and counters, and `KeyRing`, which turns "key `name`, primary
version" or "key `name`, version `version_id`" in a partition's folded state
into a `ReadyKey`, unwrapping the material under the domain key on a miss.

Rules:
- Pure: `now` (monotonic seconds) is an argument of every call that needs
  it; nothing here reads a clock. Defaults follow DESIGN section 4: at most
  10,000 keys, each at most 3,600 s after it was unwrapped.
- O(1) per operation: `get`, `put` and the eviction of the least recently
  used entry are dict operations; `invalidate(name)` costs the number of
  cached versions of that name; `expire(now)` costs the number of entries it
  drops (entries sit in a second dict in unwrap order, so the oldest are at
  its front).
- Age counts from the unwrap, not from the last use: unwrapped material stays
  in memory at most `max_age_s`, however hot the key is.
- The cache never decides whether a key may be used: `KeyRing` asks the
  folded state on every call (exists, not disabled, version still allowed to
  decrypt) before it looks in the cache, so a disable or a delete takes
  effect at the next request even if nobody invalidates. The keys actor
  still calls `invalidate(name)` after folding any event of `name`: a
  rotation can renumber versions, and memory should not hold deleted keys.
- No iteration over sets: every container here is an insertion-ordered dict,
  so two runs with the same inputs do the same evictions (simulator rule).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from keyswarm.crypto import named_keys
from keyswarm.crypto.ciphertext import ReadyKey
from keyswarm.crypto.sealing import DomainKey, UnsealFailed
from keyswarm.errors import ErrorCode, KeyNotFound, KeyswarmError
from keyswarm.storage.fold import KeyState, KeyVersion, PartitionState

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_AGE_S = 3_600.0

V = TypeVar("V")
CacheKey = tuple[str, bytes]


# --- errors the ring raises ------------------------------------------------------------


class KeyIsDisabled(KeyswarmError):
    """The key exists but is disabled: it refuses every operation until enabled."""

    code = ErrorCode.KEY_DISABLED


class VersionRetired(KeyIsDisabled):
    """The ciphertext's key version is older than the key's `min_decryption_version`."""


class VersionNotFound(KeyNotFound):
    """The key exists but this node has no such version (yet): retry, or pull it from a peer.

    `retryable` is True: replication may bring the version (DESIGN section 6).
    """

    retryable = True


class MaterialUnavailable(KeyswarmError):
    """Stored material does not unwrap under any domain key this node holds (wrong epoch, damage)."""

    code = ErrorCode.INTERNAL


# --- the cache -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made. `size` is the number of entries now."""

    hits: int
    misses: int
    evictions: int  # dropped to stay within max_entries
    expirations: int  # dropped for age (at a get, or by expire)
    invalidations: int  # dropped by invalidate
    size: int


class KeyCache(Generic[V]):
    """An LRU of values keyed by (key name, version id), bounded in size and in age."""

    __slots__ = ("max_entries", "max_age_s", "_lru", "_born", "_by_name",
                 "hits", "misses", "evictions", "expirations", "invalidations")

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_age_s: float = DEFAULT_MAX_AGE_S):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._lru: OrderedDict[CacheKey, tuple[V, float]] = OrderedDict()  # least recently used first
        self._born: dict[CacheKey, float] = {}  # in unwrap order: oldest first
        self._by_name: dict[str, dict[bytes, None]] = {}
        self.hits = self.misses = self.evictions = self.expirations = self.invalidations = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._lru

    def get(self, name: str, version_id: bytes, *, now: float) -> V | None:
        """The cached value, or None (a miss). An entry past its age is dropped and counts as a miss."""
        key = (name, version_id)
        entry = self._lru.get(key)
        if entry is None:
            self.misses += 1
            return None
        if now - entry[1] >= self.max_age_s:
            self._drop(key)
            self.expirations += 1
            self.misses += 1
            return None
        self._lru.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, name: str, version_id: bytes, value: V, *, now: float) -> None:
        """Cache `value` as unwrapped at `now`; evict the least recently used entry past max_entries."""
        key = (name, version_id)
        if key in self._lru:
            self._drop(key)
        self._lru[key] = (value, now)
        self._born[key] = now
        self._by_name.setdefault(name, {})[version_id] = None
        if len(self._lru) > self.max_entries:
            self._drop(next(iter(self._lru)))
            self.evictions += 1

    def invalidate(self, name: str) -> int:
        """Drop every cached version of key `name`; returns how many were dropped."""
        versions = self._by_name.get(name)
        if not versions:
            return 0
        dropped = list(versions)
        for version_id in dropped:
            self._drop((name, version_id))
        self.invalidations += len(dropped)
        return len(dropped)

    def expire(self, now: float) -> int:
        """Drop every entry unwrapped `max_age_s` or more before `now` (call it on a timer)."""
        expired = []
        for key, born in self._born.items():
            if now - born < self.max_age_s:
                break  # unwrap order: everything after is younger
            expired.append(key)
        for key in expired:
            self._drop(key)
        self.expirations += len(expired)
        return len(expired)

    def clear(self) -> None:
        """Forget everything (the domain key changed, the actor restarts); counters stay."""
        self._lru.clear()
        self._born.clear()
        self._by_name.clear()

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, self.evictions, self.expirations, self.invalidations, len(self._lru))

    def _drop(self, key: CacheKey) -> None:
        del self._lru[key]
        del self._born[key]
        name, version_id = key
        versions = self._by_name[name]
        del versions[version_id]
        if not versions:
            del self._by_name[name]


# --- resolving a key version -------------------------------------------------------------


class KeyRing:
    """Ready keys of named keys, resolved against a partition's folded state through a `KeyCache`.

    `domain_keys` are every domain key this node holds (one per epoch); wrapped
    material names its domain key by `DomainKey.key_id`, so material wrapped
    under an older epoch still unwraps.
    """

    __slots__ = ("cache", "_domain_keys")

    def __init__(self, domain_keys: Iterable[DomainKey], cache: KeyCache[ReadyKey] | None = None):
        self._domain_keys = {k.key_id: k for k in domain_keys}
        if not self._domain_keys:
            raise ValueError("a key ring needs at least one domain key")
        self.cache: KeyCache[ReadyKey] = KeyCache() if cache is None else cache

    def primary(self, state: PartitionState, name: str, *, now: float) -> ReadyKey:
        """The version new ciphertexts, signatures and MACs use.

        KeyNotFound (no such key, or deleted), KeyIsDisabled.
        """
        return self.primary_of(self._usable(state, name), now=now)

    def primary_of(self, key: KeyState, *, now: float) -> ReadyKey:
        """`primary` for a key the caller already looked up (one lookup less on the hot path)."""
        if key.disabled:
            raise KeyIsDisabled(f"key {key.name!r} is disabled")
        version = key.primary
        if version is None:  # a created key always has a version; only a broken log gets here
            raise KeyNotFound(f"key {key.name!r} has no usable version")
        return self._ready(key, version, now)

    def version(self, state: PartitionState, name: str, version_id: bytes, *, now: float,
                decrypting: bool = True) -> ReadyKey:
        """Version `version_id` of key `name` (the one a ciphertext or a signature names).

        `decrypting`: the version must be at least the key's `min_decryption_version`
        (VersionRetired). KeyNotFound when the id belongs to a losing concurrent
        create (a conflict: never usable), VersionNotFound (retryable) when this
        node has not seen it.
        """
        key = self._usable(state, name)
        number = key.number_of(version_id)
        if number is None:
            if version_id in key.records:
                raise KeyNotFound(f"version {version_id.hex()} of key {name!r} was written for another "
                                  f"algorithm by a concurrent create and is not usable")
            raise VersionNotFound(f"key {name!r} has no version {version_id.hex()} on this node (yet)")
        if decrypting:
            minimum = key.setting("min_decryption_version")
            if number < minimum:
                raise VersionRetired(f"version {number} of key {name!r} is below its "
                                     f"min_decryption_version {minimum}: rewrap needs a newer ciphertext")
        return self._ready(key, key.versions[number - 1], now)

    def _usable(self, state: PartitionState, name: str) -> KeyState:
        key = state.key(name)
        if key is None:
            raise KeyNotFound(f"no key named {name!r}")
        if key.disabled:
            raise KeyIsDisabled(f"key {name!r} is disabled")
        return key

    def _ready(self, key: KeyState, version: KeyVersion, now: float) -> ReadyKey:
        cached = self.cache.get(key.name, version.version_id, now=now)
        if cached is not None:
            return cached
        ready = ReadyKey(key.name, version.version_id, named_keys.load_key(key.algorithm, self._unwrap(key, version)))
        self.cache.put(key.name, version.version_id, ready, now=now)
        return ready

    def _unwrap(self, key: KeyState, version: KeyVersion) -> bytes:
        domain_key = self._domain_keys.get(version.material[:8])
        if domain_key is None:
            raise MaterialUnavailable(f"key {key.name!r} version {version.version_id.hex()} is wrapped under "
                                      f"domain key {version.material[:8].hex()}, which this node does not hold")
        try:
            return named_keys.unwrap_material(domain_key, key.name, version.version_id, version.material)
        except UnsealFailed as exc:
            raise MaterialUnavailable(f"key {key.name!r} version {version.version_id.hex()}: stored material "
                                      f"does not unwrap ({exc})") from exc
