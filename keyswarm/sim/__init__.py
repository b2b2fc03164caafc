"""The deterministic simulator: real node actors, virtual time, injected faults.

- `network`: the network model (latency, loss, duplication, reordering,
  partitions, delay spikes).
- `node`: `SimNode`, one simulated node: the `Environment` of a real
  `NodeRuntime` (skewed clock, seeded entropy, modelled blocking services).
- `driver`: `Simulation`, the event heap in virtual time, the cluster, the
  bytes between nodes, clients, crash/restart, token unplug/plug.
- `records`: client outcomes, counters and the trace.
- `tokens`: the simulation's root, one virtual YubiKey per node, node
  certificates issued at sim start.
- `command`: the `keyswarm sim` subcommand (workload, checkers, report).

The simulator's entropy is seeded and therefore INSECURE BY DESIGN: it exists
so that one seed replays one run byte for byte. See docs/simulator.md.
"""

from keyswarm.sim.driver import ClientOutcome, RequestTimeout, Simulation
from keyswarm.sim.network import CLIENT, LinkProfile, Network
from keyswarm.sim.node import WALL_EPOCH_S, ServiceLatency, SimNode

__all__ = [
    "CLIENT",
    "ClientOutcome",
    "LinkProfile",
    "Network",
    "RequestTimeout",
    "ServiceLatency",
    "SimNode",
    "Simulation",
    "WALL_EPOCH_S",
]
