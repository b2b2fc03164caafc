"""A simulated node: the `Environment` a real `NodeRuntime` runs on inside the simulator.

Owns one node's view of the world in a simulation: its clock (virtual time
plus a per-node offset and drift), its seeded entropy, its blocking services
and their modelled latency, its timer wake-ups, and its life (boot, crash).
Everything that crosses between nodes (messages, replies, the heap) belongs
to `keyswarm.sim.driver.Simulation`, which this module calls back into.

Rules:
- A monotonic clock never goes back: a skew change on a running node may
  only jump it forward (set skews freely at construction or while down).
- Timer wake-ups are deduplicated: only the earliest armed deadline has a
  live heap event (`_arm_seq`); a superseded or stale one is ignored, and a
  spurious wake is harmless because `NodeRuntime.fire_timers` checks the clock.
- A wake-up is scheduled at the first virtual time when the node's clock
  reads at least the deadline, rounding included, so a due timer really fires.
- Services run one request at a time per service, in FIFO order, each taking
  its modelled latency (the real driver has one thread per service). A
  service may define `on_submit(request)`, called when a request is
  submitted; `handle` runs when its latency is over. The event log uses it
  to model write-then-fsync: staged at submit, committed at completion.
- The node's disk is its `event_log` (a `MemoryLog`): it outlives crashes
  and restarts. A crash loses exactly what was staged and not committed;
  each boot opens a new handle on the same data.
- The node's signing key is derived from the run's seed and the node's name
  (`simulated_signing_key`), so it is the same key at every boot, as a key
  file on disk would be.
- A node with a token (`Simulation.tokens`) boots with a fresh token service
  on its virtual YubiKey, which, like its disk, outlives crashes; a device
  unplugged at boot gives a node whose token is absent until plugged.
- Seeded entropy is INSECURE BY DESIGN (replayable runs); tests only.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keyswarm.actors.runtime import Address, ClientRef, NodeRuntime
from keyswarm.storage.memory_log import MemoryLog

if TYPE_CHECKING:
    from keyswarm.sim.driver import Simulation

#: A node's wall clock reads this plus its monotonic clock (2023-11-14, fixed so traces replay).
WALL_EPOCH_S = 1_700_000_000.0


def simulated_signing_key(seed: int, node: str) -> bytes:
    """The signing key of simulated node `node` in the run of `seed` (INSECURE: anyone knowing the seed has it).

    Derived, not drawn from the run's `Random`, so adding it changed no other seed."""
    material = seed.to_bytes(16, "big", signed=True) + node.encode("utf-8")
    return hashlib.blake2b(material, digest_size=32, person=b"keyswarm.simkey").digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceLatency:
    """How long a blocking service takes: `mean_s` plus uniform jitter in +-`jitter_s`."""

    mean_s: float = 0.001
    jitter_s: float = 0.0002

    def __post_init__(self) -> None:
        if not (0 <= self.jitter_s <= self.mean_s and math.isfinite(self.mean_s)):
            raise ValueError(f"ServiceLatency needs 0 <= jitter_s <= mean_s, got {self}")


class SimNode:
    """One simulated node: its clock, entropy and services, and the `Environment` of its runtime.

    `epoch` changes at every crash and restart; events addressed to an older
    epoch (in-flight messages, timers, service results) are dropped.
    """

    def __init__(self, sim: Simulation, name: str):
        self.sim = sim
        self.name = name
        self.epoch = 0
        self.up = False
        self.incarnations = 0
        self.runtime: NodeRuntime | None = None
        self.services: dict[str, object] = {}
        #: The node's disk: survives crashes; a new handle at every boot (and after a crash, for checkers).
        self.event_log = MemoryLog(node_id=name, partitions=sim.storage.partitions)
        self.signing_key = simulated_signing_key(sim.seed, name)
        self.lost_events = 0  # staged events lost by crashes, in total
        self._entropy = random.Random(0)
        self._service_rng = random.Random(0)
        self._busy_until: dict[str, float] = {}  # service -> virtual time it is free (FIFO, one at a time)
        self._outstanding: dict[str, int] = {}
        # clock(t) = anchor_clock + (t - anchor_t) * rate
        self._anchor_t = 0.0
        self._anchor_clock = 0.0
        self._rate = 1.0
        self._armed: float | None = None  # earliest deadline handed to the heap (node clock)
        self._arm_seq = 0  # only the latest arm's event is live

    def __repr__(self) -> str:
        return f"SimNode({self.name!r}, up={self.up}, epoch={self.epoch})"

    # --- Environment -------------------------------------------------------------

    def monotonic(self) -> float:
        return self._anchor_clock + (self.sim.now - self._anchor_t) * self._rate

    def wall_time(self) -> float:
        return WALL_EPOCH_S + self.monotonic()

    def entropy(self, n: int) -> bytes:
        return self._entropy.randbytes(n)

    def send_remote(self, to: Address, sender: Address, msg: object) -> bool:
        return self.sim._send_peer(self, to, sender, msg)

    def reply_client(self, ref: ClientRef, msg: object) -> bool:
        return self.sim._reply_client(self, ref, msg)

    def submit(self, service: str, ticket: int, request: object) -> bool:
        sim = self.sim
        if service not in self.services:
            return False
        outstanding = self._outstanding.get(service, 0)
        if outstanding >= sim.service_queue_capacity:
            return False
        self._outstanding[service] = outstanding + 1
        on_submit = getattr(self.services[service], "on_submit", None)
        if on_submit is not None:
            on_submit(request)
        model = sim.service_latency_of(service)
        latency = max(0.0, model.mean_s + self._service_rng.uniform(-model.jitter_s, model.jitter_s))
        done = max(sim.now, self._busy_until.get(service, 0.0)) + latency
        self._busy_until[service] = done
        sim.stats.service_calls += 1
        sim._schedule_service(self, done, service, ticket, request)
        return True

    def wake_at(self, deadline: float) -> None:
        if self._armed is not None and self._armed <= deadline:
            return  # an earlier wake is armed; the runtime re-arms after it fires
        self._armed = deadline
        self._arm_seq += 1
        self.sim._schedule_wake(self, self.global_time_of(deadline), self._arm_seq)

    # --- clock ---------------------------------------------------------------------

    def global_time_of(self, deadline: float) -> float:
        """The earliest virtual time, not before now, at which this node's clock reads >= `deadline`."""
        sim = self.sim
        t = max(sim.now, self._anchor_t + (deadline - self._anchor_clock) / self._rate)
        # Rounding may leave the clock a hair short at t; step to the next
        # float so the timer really is due when it fires (else a wake loop).
        for _ in range(64):
            if self._anchor_clock + (t - self._anchor_t) * self._rate >= deadline:
                return t
            t = math.nextafter(t, math.inf)
        return t + 1e-9

    def set_clock(self, offset_s: float, drift: float = 0.0) -> None:
        """From now on the clock reads virtual time + `offset_s`, advancing at `1 + drift` per s."""
        if not (drift > -1.0 and math.isfinite(drift) and math.isfinite(offset_s)):
            raise ValueError(f"clock drift must be finite and > -1, offset finite; got {drift!r}, {offset_s!r}")
        now = self.sim.now
        reading = now + offset_s
        if self.up and reading < self.monotonic():
            raise ValueError(
                f"node {self.name}: a monotonic clock never goes back "
                f"({self.monotonic():.9f} -> {reading:.9f}); skew it while it is down"
            )
        self._anchor_t, self._anchor_clock, self._rate = now, reading, 1.0 + drift
        if self.up:
            # Armed deadlines now fall at other virtual times: arm afresh.
            self._armed = None
            deadline = self.runtime.next_deadline()
            if deadline is not None:
                self.wake_at(deadline)

    # --- lifecycle -----------------------------------------------------------------

    def _boot(self) -> None:
        sim = self.sim
        # Seed order is fixed: runtime (actors), entropy, service latency.
        runtime_rng = random.Random(sim.rng.getrandbits(64))
        self._entropy = random.Random(sim.rng.getrandbits(64))
        self._service_rng = random.Random(sim.rng.getrandbits(64))
        self.epoch += 1
        self.incarnations += 1
        self.event_log = self.event_log.reopen()  # the disk outlives the process; the handle does not
        token = sim._token_parts_for(self.name)
        self.services = dict(sim._services_for(self.name, token))
        self._busy_until = {}
        self._outstanding = {}
        self._armed = None
        self.runtime = NodeRuntime(
            self.name,
            sim._actors_for(self.name, token),
            self,
            rng=runtime_rng,
            mailbox_capacity=sim.mailbox_capacity,
            supervisor=sim.supervisor,
            propagate=(AssertionError,),
        )
        self.up = True
        self.runtime.start()

    def _crash(self) -> int:
        """Kill the node; returns how many staged (not yet durable) events its disk lost."""
        self.epoch += 1
        self.up = False
        self.runtime = None  # no on_stop: a crash gives nobody a chance to clean up
        self.services = {}
        self._armed = None
        lost = self.event_log.crash()
        self.lost_events += lost
        self.event_log = self.event_log.reopen()  # checkers read the disk while the node is down
        return lost

    def drain(self) -> int:
        """Run this node's actors until idle; returns messages handled."""
        if not self.up:
            return 0
        total = 0
        run = self.runtime.run
        while True:
            done = run()
            if not done:
                return total
            total += done
            assert total < 10_000_000, f"node {self.name}: actors never go idle (message loop?)"
