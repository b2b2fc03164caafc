"""The unwrapped-key cache (LRU, age, counters, invalidation) and the ring that resolves key versions."""

from __future__ import annotations

import random

import pytest

from keyswarm.crypto import ciphertext as ct
from keyswarm.crypto import named_keys
from keyswarm.crypto.key_cache import (
    CacheStats,
    KeyCache,
    KeyIsDisabled,
    KeyRing,
    MaterialUnavailable,
    VersionNotFound,
    VersionRetired,
)
from keyswarm.crypto.sealing import DomainKey
from keyswarm.errors import ErrorCode, KeyNotFound
from keyswarm.storage.bodies import KeyConfigSet, KeyCreated, KeyDeleted, KeyDisabled, KeyVersionAdded, tag_of_body
from keyswarm.storage.events import GENESIS_PREV, Event, partition_of
from keyswarm.storage.fold import PartitionState
from keyswarm.transport import codec


def entropy(seed: int = 1):
    return random.Random(seed).randbytes


# --- the cache -------------------------------------------------------------------------


def test_least_recently_used_entry_is_evicted_first() -> None:
    cache: KeyCache[str] = KeyCache(max_entries=3)
    for vid in (b"a", b"b", b"c"):
        cache.put("k", vid, vid.decode(), now=0)
    assert cache.get("k", b"a", now=1) == "a"  # a is now the most recently used
    cache.put("k", b"d", "d", now=2)
    assert ("k", b"b") not in cache and len(cache) == 3
    assert [cache.get("k", v, now=3) for v in (b"a", b"b", b"c", b"d")] == ["a", None, "c", "d"]
    assert cache.stats() == CacheStats(hits=4, misses=1, evictions=1, expirations=0, invalidations=0, size=3)


def test_entries_expire_at_max_age_counted_from_the_unwrap_not_the_last_use() -> None:
    cache: KeyCache[str] = KeyCache(max_age_s=3600)
    cache.put("k", b"v1", "ready", now=100.0)
    for t in (200.0, 1000.0, 3699.9):  # hot: used all the time
        assert cache.get("k", b"v1", now=t) == "ready"
    assert cache.get("k", b"v1", now=3700.0) is None
    assert ("k", b"v1") not in cache
    assert cache.stats() == CacheStats(hits=3, misses=1, evictions=0, expirations=1, invalidations=0, size=0)


def test_put_again_replaces_the_value_and_restarts_its_age() -> None:
    cache: KeyCache[str] = KeyCache(max_age_s=10)
    cache.put("k", b"v1", "old", now=0)
    cache.put("k", b"v1", "new", now=8)
    assert len(cache) == 1 and cache.get("k", b"v1", now=15) == "new"
    assert cache.expire(17.9) == 0 and cache.expire(18) == 1


def test_expire_sweeps_only_entries_past_their_age() -> None:
    cache: KeyCache[int] = KeyCache(max_age_s=10)
    for i in range(5):
        cache.put(f"k{i}", b"v", i, now=float(i))
    cache.get("k0", b"v", now=5)  # use does not make k0 younger
    assert cache.expire(11.5) == 2  # unwrapped at 0 and 1
    assert [f"k{i}" for i in range(5) if (f"k{i}", b"v") in cache] == ["k2", "k3", "k4"]
    assert cache.stats().expirations == 2


def test_invalidate_drops_every_version_of_one_name_only() -> None:
    cache: KeyCache[str] = KeyCache()
    for name, vid in (("app/a", b"1"), ("app/a", b"2"), ("app/ab", b"1"), ("app/b", b"1")):
        cache.put(name, vid, name, now=0)
    assert cache.invalidate("app/a") == 2
    assert cache.invalidate("app/a") == 0 and cache.invalidate("nope") == 0
    assert len(cache) == 2 and ("app/ab", b"1") in cache and ("app/b", b"1") in cache
    assert cache.stats().invalidations == 2
    cache.put("app/a", b"3", "again", now=1)  # the name's index is rebuilt after an invalidation
    assert cache.invalidate("app/a") == 1


def test_the_cache_stays_bounded_and_evicts_in_a_repeatable_order() -> None:
    def run() -> tuple[list[tuple[str, bytes]], CacheStats]:
        cache: KeyCache[int] = KeyCache(max_entries=100)
        rng = random.Random(4)
        for step in range(2000):
            name = f"k{rng.randrange(300)}"
            if cache.get(name, b"v", now=step) is None:
                cache.put(name, b"v", step, now=step)
            assert len(cache) <= 100
        return list(cache._lru), cache.stats()

    first, stats = run()
    assert run() == (first, stats)
    assert stats.hits + stats.misses == 2000 and stats.evictions == stats.misses - 100


def test_clear_keeps_the_counters() -> None:
    cache: KeyCache[str] = KeyCache()
    cache.put("k", b"v", "x", now=0)
    cache.get("k", b"v", now=0)
    cache.clear()
    assert len(cache) == 0 and cache.stats().hits == 1 and cache.get("k", b"v", now=0) is None


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"max_age_s": 0}, {"max_age_s": -1.0}])
def test_bad_limits_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        KeyCache(**kwargs)


# --- the ring ----------------------------------------------------------------------------

DOMAIN = DomainKey.generate(entropy(100))
_seq: dict[str, int] = {}


def ev(body: object, *, origin: str = "n1", hlc: int | None = None) -> Event:
    seq = _seq[origin] = _seq.get(origin, 0) + 1
    return Event(partition=partition_of(body.name, 64), origin=origin, origin_seq=seq,  # type: ignore[attr-defined]
                 hlc=hlc if hlc is not None else seq * 10, type=tag_of_body(body),
                 subject=body.name, body=codec.encode(body), prev=GENESIS_PREV)  # type: ignore[attr-defined]


def create(name: str, vid: bytes, algorithm: str = "aes256-gcm", domain: DomainKey = DOMAIN,
           seed: int = 1) -> KeyCreated:
    material = named_keys.generate_material(algorithm, entropy(seed))
    wrapped = named_keys.wrap_material(domain, name, vid, material, entropy=entropy(seed + 1))
    return KeyCreated(name=name, algorithm=algorithm, version_id=vid, material=wrapped)


def rotate(name: str, vid: bytes, algorithm: str = "aes256-gcm", seed: int = 5) -> KeyVersionAdded:
    c = create(name, vid, algorithm, seed=seed)
    return KeyVersionAdded(name=name, version_id=vid, material=c.material, algorithm=algorithm)


def state_of(*bodies: object) -> PartitionState:
    state = PartitionState()
    for body in bodies:
        state.apply(ev(body))
    return state


def test_primary_resolves_unwraps_once_and_then_hits_the_cache() -> None:
    ring = KeyRing([DOMAIN])
    state = state_of(create("app/k", b"v1"))
    key = ring.primary(state, "app/k", now=0)
    assert (key.name, key.version_id, key.algorithm) == ("app/k", b"v1", "aes256-gcm")
    assert ring.primary(state, "app/k", now=1) is key
    assert ring.cache.stats().hits == 1 and ring.cache.stats().misses == 1
    blob = ct.encrypt(key, b"data", entropy=entropy())
    assert ct.decrypt(blob, ring.version(state, "app/k", b"v1", now=2)) == b"data"


def test_rotation_moves_the_primary_and_old_ciphertexts_still_open() -> None:
    ring = KeyRing([DOMAIN])
    state = state_of(create("app/k", b"v1"))
    old_blob = ct.encrypt(ring.primary(state, "app/k", now=0), b"old", entropy=entropy())
    state.apply(ev(rotate("app/k", b"v2")))
    ring.cache.invalidate("app/k")  # what the keys actor does after folding an event of the name
    primary = ring.primary(state, "app/k", now=1)
    assert primary.version_id == b"v2"
    parsed = ct.parse(old_blob)
    assert ct.decrypt(parsed, ring.version(state, parsed.name, parsed.version_id, now=1)) == b"old"
    new_blob = ct.rewrap(parsed, ring.version(state, "app/k", b"v1", now=1), primary, entropy=entropy())
    assert ct.parse(new_blob).version_id == b"v2"


def test_a_disabled_or_deleted_key_is_refused_even_while_cached() -> None:
    ring = KeyRing([DOMAIN])
    state = state_of(create("app/k", b"v1"))
    ring.primary(state, "app/k", now=0)
    state.apply(ev(KeyDisabled(name="app/k")))
    with pytest.raises(KeyIsDisabled, match="key 'app/k' is disabled") as caught:
        ring.primary(state, "app/k", now=1)
    assert caught.value.code is ErrorCode.KEY_DISABLED
    with pytest.raises(KeyIsDisabled):
        ring.version(state, "app/k", b"v1", now=1)
    state.apply(ev(KeyDeleted(name="app/k")))
    with pytest.raises(KeyNotFound, match="no key named 'app/k'"):
        ring.primary(state, "app/k", now=2)
    with pytest.raises(KeyNotFound):
        ring.primary(state, "app/never", now=2)


def test_versions_below_min_decryption_version_are_retired_for_decrypt_only() -> None:
    ring = KeyRing([DOMAIN])
    state = state_of(create("app/k", b"v1"), rotate("app/k", b"v2"),
                     KeyConfigSet(name="app/k", min_decryption_version=2))
    with pytest.raises(VersionRetired, match="version 1 of key 'app/k' is below its min_decryption_version 2") as c:
        ring.version(state, "app/k", b"v1", now=0)
    assert c.value.code is ErrorCode.KEY_DISABLED
    assert ring.version(state, "app/k", b"v1", now=0, decrypting=False).version_id == b"v1"
    assert ring.version(state, "app/k", b"v2", now=0).version_id == b"v2"


def test_an_unknown_version_is_retryable_and_a_conflicting_one_is_not_usable() -> None:
    ring = KeyRing([DOMAIN])
    state = state_of(create("app/k", b"v1"))
    with pytest.raises(VersionNotFound, match="no version 7639 on this node") as caught:
        ring.version(state, "app/k", b"v9", now=0)
    assert caught.value.code is ErrorCode.KEY_NOT_FOUND and caught.value.retryable is True
    state.apply(ev(create("app/k", b"vx", algorithm="ed25519"), origin="n2", hlc=10**6))  # loses: later create
    assert state.key("app/k").conflicts  # type: ignore[union-attr]
    with pytest.raises(KeyNotFound, match="another algorithm") as caught_conflict:
        ring.version(state, "app/k", b"vx", now=0)
    assert not isinstance(caught_conflict.value, VersionNotFound)


def test_material_under_an_older_domain_key_unwraps_and_an_unknown_one_is_reported() -> None:
    older = DomainKey.generate(entropy(200), epoch=0)
    newer = DomainKey.generate(entropy(201), epoch=1)
    state = state_of(create("app/old", b"v1", domain=older), create("app/new", b"v1", domain=newer))
    ring = KeyRing([newer, older])
    assert ring.primary(state, "app/old", now=0).name == "app/old"
    assert ring.primary(state, "app/new", now=0).name == "app/new"
    with pytest.raises(MaterialUnavailable, match="which this node does not hold") as caught:
        KeyRing([newer]).primary(state, "app/old", now=0)
    assert caught.value.code is ErrorCode.INTERNAL


def test_material_copied_to_another_name_does_not_unwrap() -> None:
    stolen = create("app/a", b"v1")
    forged = KeyCreated(name="app/b", algorithm="aes256-gcm", version_id=b"v1", material=stolen.material)
    with pytest.raises(MaterialUnavailable, match="does not unwrap"):
        KeyRing([DOMAIN]).primary(state_of(forged), "app/b", now=0)


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256", "hmac-sha256"])
def test_signing_and_mac_keys_resolve_to_their_loaded_objects(algorithm: str) -> None:
    ring = KeyRing([DOMAIN])
    state = state_of(create("app/s", b"v1", algorithm=algorithm))
    key = ring.primary(state, "app/s", now=0)
    out = named_keys.hmac(key.key, b"m") if algorithm == "hmac-sha256" else named_keys.sign(key.key, b"m")
    assert named_keys.verify(ring.version(state, "app/s", b"v1", now=0, decrypting=False).key, b"m", out)


def test_a_ring_needs_a_domain_key() -> None:
    with pytest.raises(ValueError):
        KeyRing([])
