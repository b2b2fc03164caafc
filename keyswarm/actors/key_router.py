"""Routing key requests: the `keys` router actor, `KEY_ROUTES` for the gateway, and `keys_specs` for the assembly.

Owns which `keys.<p>` actor serves a request (`KeyRouting`: partition =
blake2b(name) mod P, DESIGN section 6), the `keys` actor that forwards
requests there and scatters the ones that span partitions (batches whose
items name keys of several partitions, `key.list`), the `keys.stats`
answer, and the set of actors a node runs for the key service.

Rules:
- A request for one key, or a batch whose items all live in one partition,
  is forwarded with the client as its sender: the partition actor answers
  the client directly. The router keeps nothing for it.
- A batch spanning partitions is split into one part per partition, in
  item order; the parts' answers are put back in item order. A part that
  fails (the partition is loading, its mailbox is full) fails its items
  only. `key.list` asks every partition for up to `limit` names after the
  cursor and merges them.
- Every scatter is bounded: at most `MAX_GATHERS` at once (BUSY past it),
  and each is answered after `GATHER_TIMEOUT_S` at the latest (items not
  answered by then are UNAVAILABLE, retryable).
- Part answers are accepted from this node's own actors only.
- Names that break the naming rule are not hashed (a long one would cost):
  they go to partition 0, whose actor answers BAD_REQUEST.
- The key cache is shared by the node's partition actors (one LRU of
  `[key_cache] max_entries` for the node, not one per partition); the router
  expires old entries every `CACHE_SWEEP_S`.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyswarm.actors.admin import ADMIN, AdminActor
from keyswarm.actors.key_messages import (
    BATCHES,
    AuthorizedListKeys,
    BadKeyName,
    ConfigureKey,
    CreateKey,
    DataKey,
    Decrypt,
    DeleteKey,
    DisableKey,
    EnableKey,
    Encrypt,
    GetKey,
    GetKeyStats,
    Hmac,
    KeyStatsResult,
    ListKeys,
    ListKeysResult,
    RevokeClient,
    RevokeNode,
    Rewrap,
    RotateKey,
    SetPolicy,
    Sign,
    Verify,
    check_key_name,
    key_names_of,
)
from keyswarm.actors.key_requests import KeyRequests
from keyswarm.actors.keys import (
    KeyServiceStats,
    KeySettings,
    KeysActor,
    ListPartition,
    PartAnswer,
    PartitionNames,
    PartRequest,
    partition_actor,
)
from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Actor, ActorSpec, Address, Context, Sender
from keyswarm.config import NodeConfig
from keyswarm.crypto.key_cache import KeyCache, KeyRing
from keyswarm.crypto.sealing import DomainKey
from keyswarm.errors import ErrorCode
from keyswarm.storage.events import partition_of

KEYS = "keys"
#: Scatters in progress at most.
MAX_GATHERS = 10_000
#: Seconds a scatter waits for its parts at most.
GATHER_TIMEOUT_S = 5.0
#: Seconds between sweeps of expired entries out of the key cache.
CACHE_SWEEP_S = 60.0
#: Names whose partition is remembered (a pure function of the name).
ROUTE_MEMO_NAMES = 65_536
MAX_LIST_LIMIT = 1000

_SINGLE = (CreateKey, RotateKey, GetKey, DisableKey, EnableKey, DeleteKey, ConfigureKey,
           Encrypt, Decrypt, Rewrap, DataKey, Sign, Verify, Hmac)

#: Which local actor serves each client operation of the key service. Client-visible
#: messages only: the node-local `AuthorizedListKeys` goes from sessions to `KEYS` directly.
KEY_ROUTES: dict[type, str] = {
    **{cls: KEYS for cls in _SINGLE},
    **{cls: KEYS for cls in BATCHES},
    ListKeys: KEYS,
    GetKeyStats: KEYS,
    SetPolicy: ADMIN,
    RevokeClient: ADMIN,
    RevokeNode: ADMIN,
}


class KeyRouting:
    """Which `keys.<p>` actor serves a request. Pure: the sessions actor may use it to skip the router hop."""

    def __init__(self, partitions: int, max_name_bytes: int = 256):
        self.partitions = partitions
        self.max_name_bytes = max_name_bytes
        self._memo: dict[str, int] = {}

    def partition_of(self, name: str) -> int:
        """The partition of key `name` (0 for a name that breaks the naming rule: its actor refuses it)."""
        partition = self._memo.get(name)
        if partition is not None:
            return partition
        try:
            check_key_name(name, self.max_name_bytes)
        except BadKeyName:
            return 0
        partition = partition_of(name, self.partitions)
        memo = self._memo
        if len(memo) >= ROUTE_MEMO_NAMES:
            memo.clear()
        memo[name] = partition
        return partition

    def actor_for(self, msg: object) -> str | None:
        """The one partition actor that serves `msg`, or None (the router must scatter it,
        or it is not a key request)."""
        kind = type(msg)
        if kind in BATCHES:
            parts = self.parts_of(msg)
            return partition_actor(next(iter(parts))) if len(parts) == 1 else None
        if kind not in _SINGLE:
            return None
        name = msg.name or key_names_of(msg, max_name_bytes=self.max_name_bytes)[0]  # type: ignore[attr-defined]
        return partition_actor(self.partition_of(name))

    def parts_of(self, batch: object) -> dict[int, list[int]]:
        """Item indexes of a batch by partition, partitions in order of first appearance."""
        parts: dict[int, list[int]] = {}
        names = key_names_of(batch, max_name_bytes=self.max_name_bytes)
        for index, name in enumerate(names):
            parts.setdefault(self.partition_of(name), []).append(index)
        return parts


@dataclass(frozen=True, slots=True)
class _GatherTimeout:
    gather: int


@dataclass(frozen=True, slots=True)
class _Sweep:
    """Timer: give up on split requests past their deadline."""


class _Gather:
    __slots__ = ("sender", "request", "parts", "answers", "timer")

    def __init__(self, sender: Sender, request: object, parts: dict[int, list[int]]):
        self.sender = sender
        self.request = request
        self.parts = parts  # partition -> item indexes (batches) or [] (lists), not yet answered
        self.answers: dict[int, object] = {}
        self.timer = 0


class KeyRouter(Actor):
    """Forwards key requests to their partition actors; scatters and gathers the ones that span partitions."""

    name = KEYS

    def __init__(self, routing: KeyRouting, *, cache: KeyCache | None = None, stats: KeyServiceStats | None = None,
                 max_batch_items: int = 1000, gather_timeout_s: float = GATHER_TIMEOUT_S):
        self.routing = routing
        self.cache = cache
        self.stats = stats if stats is not None else KeyServiceStats()
        self.max_batch_items = max_batch_items
        self.gather_timeout_s = gather_timeout_s
        self._gathers: dict[int, _Gather] = {}
        self._next = 0

    def on_start(self, ctx: Context) -> None:
        if self.cache is not None:
            ctx.start_timer(CACHE_SWEEP_S, _Sweep())

    def on_message(self, ctx: Context, msg: object) -> None:
        kind = type(msg)
        if kind is PartAnswer:
            sender = ctx.sender
            if type(sender) is Address and sender.node == ctx.node:
                self._on_part(ctx, msg)
        elif kind is _GatherTimeout:
            gather = self._gathers.get(msg.gather)
            if gather is not None:
                self._complete(ctx, msg.gather, gather)
        elif kind is _Sweep:
            if self.cache is not None:
                self.cache.expire(ctx.now())
            ctx.start_timer(CACHE_SWEEP_S, _Sweep())
        elif kind in BATCHES:
            self._on_batch(ctx, msg)
        elif kind is ListKeys or kind is AuthorizedListKeys:
            self._on_list(ctx, msg)
        elif kind is GetKeyStats:
            ctx.reply(self._stats())
        else:
            target = self.routing.actor_for(msg)
            if target is None:
                ctx.reply(Failure.of(ErrorCode.BAD_REQUEST, f"{kind.__name__} is not a key operation"))
            elif not ctx.forward(target, msg):
                ctx.reply(Failure.of(ErrorCode.BUSY, f"{target} is over its queue bound; retry later"))

    # --- scatter ---------------------------------------------------------------------------------

    def _on_batch(self, ctx: Context, msg: object) -> None:
        items = msg.items  # type: ignore[attr-defined]
        if len(items) > self.max_batch_items:
            ctx.reply(Failure.of(ErrorCode.BAD_REQUEST,
                                 f"a batch holds at most {self.max_batch_items} items, got {len(items)}"))
            return
        if not items:
            ctx.reply(BATCHES[type(msg)][0](items=()))
            return
        parts = self.routing.parts_of(msg)
        if len(parts) == 1:
            target = partition_actor(next(iter(parts)))
            if not ctx.forward(target, msg):
                ctx.reply(Failure.of(ErrorCode.BUSY, f"{target} is over its queue bound; retry later"))
            return
        self._scatter(ctx, msg, parts, lambda indexes: type(msg)(items=tuple(items[i] for i in indexes)))

    def _on_list(self, ctx: Context, msg: ListKeys | AuthorizedListKeys) -> None:
        request, allows = (msg.request, msg.allows) if type(msg) is AuthorizedListKeys else (msg, None)
        if not 1 <= request.limit <= MAX_LIST_LIMIT:
            ctx.reply(Failure.of(ErrorCode.BAD_REQUEST, f"limit must be in 1..{MAX_LIST_LIMIT}, got {request.limit}"))
            return
        part = ListPartition(request.prefix, request.cursor, request.limit, allows)
        parts: dict[int, list[int]] = {p: [] for p in range(self.routing.partitions)}
        self._scatter(ctx, request, parts, lambda _: part)

    def _scatter(self, ctx: Context, request: object, parts: dict[int, list[int]], part_of) -> None:  # noqa: ANN001
        if len(self._gathers) >= MAX_GATHERS:
            ctx.reply(Failure.of(ErrorCode.BUSY, "too many requests spanning partitions in flight; retry later"))
            return
        self._next += 1
        gather_id = self._next
        gather = _Gather(ctx.sender, request, parts)
        self._gathers[gather_id] = gather
        for partition in list(parts):
            target = partition_actor(partition)
            if not ctx.send(target, PartRequest(gather_id, part_of(parts[partition]))):
                gather.answers[partition] = Failure.of(ErrorCode.BUSY, f"{target} is over its queue bound; retry later")
        if len(gather.answers) == len(parts):
            self._complete(ctx, gather_id, gather)
        else:
            gather.timer = ctx.start_timer(self.gather_timeout_s, _GatherTimeout(gather_id))

    def _on_part(self, ctx: Context, msg: PartAnswer) -> None:
        gather = self._gathers.get(msg.gather)
        if gather is None or msg.partition not in gather.parts or msg.partition in gather.answers:
            return  # late (after the timeout), duplicated, or not ours
        gather.answers[msg.partition] = msg.answer
        if len(gather.answers) == len(gather.parts):
            ctx.cancel_timer(gather.timer)
            self._complete(ctx, msg.gather, gather)

    def _complete(self, ctx: Context, gather_id: int, gather: _Gather) -> None:
        del self._gathers[gather_id]
        missing = Failure.of(ErrorCode.UNAVAILABLE, "a key partition did not answer in time; retry")
        request = gather.request
        if type(request) is ListKeys:
            ctx.reply_to(gather.sender, self._merge_names(request, gather, missing))
            return
        result_cls, item_cls = BATCHES[type(request)]
        slots: list[object] = [None] * len(request.items)  # type: ignore[attr-defined]
        for partition, indexes in gather.parts.items():
            answer = gather.answers.get(partition, missing)
            if type(answer) is result_cls:
                for index, item in zip(indexes, answer.items):  # type: ignore[attr-defined]
                    slots[index] = item
            else:
                failure = answer if type(answer) is Failure else Failure.of(
                    ErrorCode.INTERNAL, f"unexpected answer {type(answer).__name__} from key partition {partition}")
                for index in indexes:
                    slots[index] = item_cls(ok=False, error=failure)
        ctx.reply_to(gather.sender, result_cls(items=tuple(slots)))

    def _merge_names(self, request: ListKeys, gather: _Gather, missing: Failure) -> object:
        names: list[str] = []
        more = False
        for partition in gather.parts:
            answer = gather.answers.get(partition, missing)
            if type(answer) is not PartitionNames:
                return answer if type(answer) is Failure else missing
            names.extend(answer.names)
            more = more or answer.more
        names.sort()
        more = more or len(names) > request.limit
        page = tuple(names[: request.limit])
        return ListKeysResult(names=page, cursor=page[-1] if more and page else "")

    def _stats(self) -> KeyStatsResult:
        cache = self.cache.stats() if self.cache is not None else None
        stats = self.stats
        return KeyStatsResult(
            cache_hits=cache.hits if cache else 0, cache_misses=cache.misses if cache else 0,
            cache_evictions=cache.evictions if cache else 0, cache_expirations=cache.expirations if cache else 0,
            cache_size=cache.size if cache else 0, writes=stats.writes, deduplicated=stats.deduplicated,
            partitions_loaded=stats.partitions_loaded, auto_rotations=stats.auto_rotations,
            auto_rotation_failures=stats.auto_rotation_failures,
        )


# --- the node's key service actors ---------------------------------------------------------------


def key_service_specs(settings: KeySettings, domain_keys: tuple[DomainKey, ...], *, cache_max_entries: int = 10_000,
                      cache_max_age_s: float = 3600.0) -> list[ActorSpec]:
    """The router, the admin actor and the P partition actors. `domain_keys[0]` wraps new
    material; all of them unwrap (older epochs). Each call builds a fresh shared cache."""
    if not domain_keys:
        raise ValueError("the key service needs the network's domain key")
    cache: KeyCache = KeyCache(max_entries=cache_max_entries, max_age_s=cache_max_age_s)
    ring = KeyRing(domain_keys, cache)
    requests = KeyRequests(ring, domain_keys, max_name_bytes=settings.max_name_bytes,
                           max_batch_items=settings.max_batch_items)
    stats = KeyServiceStats()
    routing = KeyRouting(settings.partitions, settings.max_name_bytes)

    def router() -> KeyRouter:
        return KeyRouter(routing, cache=cache, stats=stats, max_batch_items=settings.max_batch_items)

    def admin() -> AdminActor:
        return AdminActor(partitions=settings.partitions, write_timeout_s=settings.write_timeout_s)

    def partition(p: int):  # noqa: ANN202
        return lambda: KeysActor(p, settings, requests, domain_keys[0], stats)

    return [
        ActorSpec(KEYS, router),
        ActorSpec(ADMIN, admin),
        *(ActorSpec(partition_actor(p), partition(p)) for p in range(settings.partitions)),
    ]


def keys_specs(config: NodeConfig, domain_key: DomainKey, *older_domain_keys: DomainKey) -> list[ActorSpec]:
    """The key service's actors for a node of `config` (partitions, limits, `[key_cache]`)."""
    settings = KeySettings(
        partitions=config.storage.partitions,
        max_name_bytes=config.limits.max_key_name_bytes,
        max_batch_items=config.limits.max_batch_items,
    )
    return key_service_specs(settings, (domain_key, *older_domain_keys),
                             cache_max_entries=config.key_cache.max_entries,
                             cache_max_age_s=config.key_cache.max_age_s)
