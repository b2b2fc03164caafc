"""The simulated network: what happens to bytes between two endpoints.

Owns the fate of every message the simulator moves: its latency, whether it
is lost, duplicated or reordered, whether a partition blocks it, and whether
a delay spike slows it. It knows nothing about nodes, actors or codecs; the
driver (`keyswarm.sim.driver`) asks `transit(src, dst, now)` and schedules
one delivery per arrival time it gets back.

Rules:
- Every random choice comes from the one `random.Random` handed in (the
  driver seeds it from the simulation's seed), drawn in a fixed order per
  message: loss, duplication, reordering (a lost message stops here), the
  first copy's latency tail, its reorder delay, the duplicate's latency
  tail. Same seed, same sends -> same fates.
- Links are FIFO by default, like the TCP connection ZeroMQ runs on: a copy
  never arrives before an earlier normal copy on the same link. Only the
  faults break that: a reordered copy (extra delay, not held in line) and a
  duplicate (its own latency draw) may overtake or be overtaken.
- State is kept in dicts keyed by `(src, dst)` tuples and in lists, used for
  lookup or iterated in insertion order; nothing iterates a set of str, so
  PYTHONHASHSEED cannot change a run.
- Endpoints are plain names. Clients use the endpoint `CLIENT`, so a
  client<->node link is configured, partitioned and spiked like any other.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

#: The endpoint name of every simulated client (clients share one link per node).
CLIENT = "client"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkProfile:
    """How one direction of a link behaves. Latency = base + capped exponential tail.

    An exponential tail keeps the common case near `latency_s` with a few slow
    messages, which is what a LAN under light load looks like; the cap keeps
    the support bounded, so tests can assert on it and timeouts stay meaningful.
    """

    latency_s: float = 0.0005  # base one-way delay, s
    jitter_s: float = 0.0002  # mean of the exponential tail added to the base, s
    jitter_cap_s: float = 0.005  # the tail never exceeds this, s
    loss: float = 0.0  # probability a message vanishes
    duplicate: float = 0.0  # probability a second copy is delivered too
    reorder: float = 0.0  # probability a message gets an extra delay and leaves the FIFO line
    reorder_delay_max_s: float = 0.01  # the extra delay is uniform in [0, this], s

    def __post_init__(self) -> None:
        for name in ("latency_s", "jitter_s", "jitter_cap_s", "reorder_delay_max_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"LinkProfile.{name} must be a finite number >= 0, got {value!r}")
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"LinkProfile.{name} is a probability in [0, 1], got {value!r}")

    def latency_bounds(self) -> tuple[float, float]:
        """The support of one copy's latency before spikes and reordering."""
        return (self.latency_s, self.latency_s + self.jitter_cap_s)


#: Client links model latency only by default: the client protocol runs over
#: ZeroMQ/TCP, which neither loses nor duplicates a message on a live connection.
DEFAULT_CLIENT_LINK = LinkProfile(latency_s=0.0002, jitter_s=0.00005, jitter_cap_s=0.001)


@dataclass(frozen=True, slots=True)
class Transit:
    """What the network did with one message."""

    arrivals: tuple[float, ...]  # absolute virtual arrival time of each copy; empty if dropped
    dropped: str | None = None  # "loss" | "partition" when nothing arrives
    duplicated: bool = False
    reordered: bool = False


@dataclass(frozen=True, slots=True)
class DelaySpike:
    """Between `start_s` and `end_s` (virtual), latency on matching links is multiplied."""

    src: str | None  # None matches any source
    dst: str | None  # None matches any destination
    start_s: float
    end_s: float
    factor: float

    def applies(self, src: str, dst: str, now: float) -> bool:
        return (
            self.start_s <= now < self.end_s
            and (self.src is None or self.src == src)
            and (self.dst is None or self.dst == dst)
        )


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0  # messages handed to transit
    delivered_copies: int = 0  # arrival times handed back (duplicates count twice)
    lost: int = 0
    blocked: int = 0  # dropped by a partition
    duplicated: int = 0
    reordered: int = 0
    spiked: int = 0


@dataclass(slots=True)
class Network:
    """Link profiles, partitions and spikes; decides each message's fate."""

    rng: random.Random
    default: LinkProfile = field(default_factory=LinkProfile)
    client: LinkProfile = DEFAULT_CLIENT_LINK
    stats: NetworkStats = field(default_factory=NetworkStats)
    _links: dict[tuple[str, str], LinkProfile] = field(default_factory=dict)
    _blocked: dict[tuple[str, str], None] = field(default_factory=dict)  # one-way (src, dst) pairs
    _isolated: dict[str, None] = field(default_factory=dict)
    _spikes: list[DelaySpike] = field(default_factory=list)
    _last_arrival: dict[tuple[str, str], float] = field(default_factory=dict)  # FIFO line per link

    # --- configuration ---------------------------------------------------------

    def set_link(self, src: str, dst: str, profile: LinkProfile, *, both_ways: bool = True) -> None:
        """Give the link `src -> dst` (and `dst -> src` unless `both_ways=False`) its own profile."""
        self._links[(src, dst)] = profile
        if both_ways:
            self._links[(dst, src)] = profile

    def link(self, src: str, dst: str) -> LinkProfile:
        """The profile in force for `src -> dst`."""
        profile = self._links.get((src, dst))
        if profile is not None:
            return profile
        return self.client if CLIENT in (src, dst) else self.default

    # --- partitions --------------------------------------------------------------

    def partition(self, a: str, b: str) -> None:
        """Cut the link between `a` and `b` in both directions."""
        self._blocked[(a, b)] = None
        self._blocked[(b, a)] = None

    def partition_oneway(self, src: str, dst: str) -> None:
        """Drop everything `src` sends to `dst`; `dst -> src` still flows."""
        self._blocked[(src, dst)] = None

    def reconnect(self, a: str, b: str) -> None:
        """Undo `partition(a, b)` (and any one-way cut between them)."""
        self._blocked.pop((a, b), None)
        self._blocked.pop((b, a), None)

    def isolate(self, node: str) -> None:
        """Cut `node` off from every other endpoint, clients included (its cable is out)."""
        self._isolated[node] = None

    def rejoin(self, node: str) -> None:
        """Undo `isolate(node)`; pairwise partitions stay."""
        self._isolated.pop(node, None)

    def heal(self) -> None:
        """Remove every partition and isolation. Spikes and link profiles stay."""
        self._blocked.clear()
        self._isolated.clear()

    def is_blocked(self, src: str, dst: str) -> bool:
        return src in self._isolated or dst in self._isolated or (src, dst) in self._blocked

    def partitions(self) -> tuple[tuple[str, str], ...]:
        """The one-way cuts in force, in the order they were made (for reports)."""
        return tuple(self._blocked)

    def isolated(self) -> tuple[str, ...]:
        return tuple(self._isolated)

    # --- delay spikes ----------------------------------------------------------

    def spike(
        self, start_s: float, end_s: float, factor: float, *, src: str | None = None, dst: str | None = None
    ) -> DelaySpike:
        """Multiply latency by `factor` on matching links for messages sent in [start_s, end_s)."""
        if not (factor >= 1.0 and math.isfinite(factor)):
            raise ValueError(f"spike factor must be a finite number >= 1, got {factor!r}")
        if not end_s > start_s:
            raise ValueError(f"spike window must end after it starts, got [{start_s}, {end_s})")
        spike = DelaySpike(src, dst, start_s, end_s, factor)
        self._spikes.append(spike)
        return spike

    def _spike_factor(self, src: str, dst: str, now: float) -> float:
        factor = 1.0
        for spike in self._spikes:
            if spike.applies(src, dst, now):
                factor = max(factor, spike.factor)
        return factor

    # --- the fate of one message -------------------------------------------------

    def transit(self, src: str, dst: str, now: float, *, allow_duplicate: bool = True) -> Transit:
        """Decide what happens to one message `src -> dst` sent at virtual time `now`."""
        stats = self.stats
        stats.sent += 1
        if self.is_blocked(src, dst):
            # No draws: a partition is decided by state, not chance, so healing
            # it later does not shift the random stream of unrelated links.
            stats.blocked += 1
            return Transit((), dropped="partition")
        profile = self.link(src, dst)
        rng = self.rng
        lost = rng.random() < profile.loss
        duplicated = rng.random() < profile.duplicate and allow_duplicate
        reordered = rng.random() < profile.reorder
        if lost:
            stats.lost += 1
            return Transit((), dropped="loss")
        factor = self._spike_factor(src, dst, now)
        if factor > 1.0:
            stats.spiked += 1
        latency = self._latency(profile) * factor
        key = (src, dst)
        if reordered:
            # Out of the FIFO line: later messages do not wait for this one.
            stats.reordered += 1
            first = now + latency + rng.uniform(0.0, profile.reorder_delay_max_s)
        else:
            first = max(now + latency, self._last_arrival.get(key, 0.0))
            self._last_arrival[key] = first
        arrivals: tuple[float, ...] = (first,)
        if duplicated:
            stats.duplicated += 1
            arrivals = (first, now + self._latency(profile) * factor)
        stats.delivered_copies += len(arrivals)
        return Transit(arrivals, duplicated=duplicated, reordered=reordered)

    def _latency(self, profile: LinkProfile) -> float:
        # Inverse-CDF exponential from one uniform draw: a fixed number of
        # draws per copy whatever the profile (jitter 0 included).
        u = self.rng.random()
        tail = -profile.jitter_s * math.log1p(-u) if profile.jitter_s > 0 else 0.0
        return profile.latency_s + min(tail, profile.jitter_cap_s)
