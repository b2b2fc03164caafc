"""One seed, one run: byte-identical traces, whatever PYTHONHASHSEED says.

The scenario has everything that could leak nondeterminism: three nodes,
loss, duplication and reordering, a partition that heals, clock skew and
drift, a mixed workload, health replies (a dict of str keyed by actor name)
and counters under many str names (a dict of str in the service). Every
node runs the hardware and sub-keys actors on a virtual YubiKey, so the
certificates they mint (seeded keys, simulated wall time) are in the trace too.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from keyswarm.actors.messages import Echo, Health, Increment, PingPeer
from keyswarm.sim import LinkProfile, Simulation
from keyswarm.sim.command import add_arguments, run_simulation

REPO = Path(__file__).resolve().parents[2]
NAMES = ("alpha", "beta", "gamma", "delta", "épsilon", "zeta/1", "η", "theta", "iota", "kappa")
CLI_ARGS = [
    "--nodes", "3", "--duration", "2", "--rate", "150", "--loss", "0.05", "--dup", "0.05", "--reorder", "0.1",
    "--partition", "n1:n2@0.5-1.2", "--skew", "n2:3.5", "--skew", "n3:-1:0.002", "--crash", "n3@1.0-1.5",
    # n3 reboots with its YubiKey out: it starts with its token absent and reconnects once it is back.
    "--unplug", "n3@0.8-1.7",
]


def scenario(seed: int, trace: str = "full") -> Simulation:
    sim = Simulation(
        seed,
        3,
        link=LinkProfile(loss=0.08, duplicate=0.08, reorder=0.1),
        # Fixed client latency: a burst reaches every node in one batch, so
        # the order the simulator runs nodes in is part of the trace too.
        client_link=LinkProfile(latency_s=0.0005, jitter_s=0.0),
        skew={"n2": 3.5},
        drift={"n3": 0.002},
        trace=trace,
    )
    sim.at(0.2, lambda: sim.network.partition("n1", "n2"), "partition n1:n2")
    sim.at(0.6, sim.network.heal, "heal")
    rng = random.Random(seed)
    nodes = list(sim.nodes)
    for _ in range(150):
        node = rng.choice(nodes)
        pick = rng.random()
        if pick < 0.3:
            msg: object = Echo(payload=rng.randbytes(rng.randrange(32)))
        elif pick < 0.6:
            msg = Increment(name=rng.choice(NAMES))
        elif pick < 0.9:
            msg = PingPeer(target=rng.choice(nodes), timeout_s=0.3)
        else:
            msg = Health()
        sim.submit(node, msg, timeout_s=1.0)
        if rng.random() < 0.1:
            for other in nodes:  # a burst to every node at once
                sim.submit(other, PingPeer(target=node, timeout_s=0.3), timeout_s=1.0)
        sim.run_for(rng.expovariate(150.0))
    sim.run_for(2.0)
    assert sim.pending() == (), f"seed={seed}: {sim.pending()}"
    return sim


def cli_digest(seed: int) -> str:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    report = run_simulation(parser.parse_args([*CLI_ARGS, "--seed", str(seed)]))
    assert report.ok, f"seed={seed}: {report.failure}"
    return report.sim.trace_digest()


def test_same_seed_gives_byte_identical_traces(sim_seed: int) -> None:
    first = scenario(sim_seed)
    second = scenario(sim_seed)
    lines = first.trace_lines()
    assert lines == second.trace_lines(), f"seed={sim_seed}"
    assert first.trace_digest() == second.trace_digest(), f"seed={sim_seed}"
    # The scenario really exercised the faults it claims to.
    kinds = " ".join(lines)
    for needle in ("dropped:loss", "dropped:partition", "dup ", "reordered ", "timer fired=", "service counter-store"):
        assert needle in kinds, f"seed={sim_seed}: no {needle!r} in the trace"
    assert scenario(sim_seed, trace="digest").trace_digest() == first.trace_digest(), f"seed={sim_seed}"


def test_different_seeds_give_different_runs(sim_seed: int) -> None:
    assert scenario(sim_seed).trace_digest() != scenario(sim_seed + 1).trace_digest(), f"seed={sim_seed}"


def test_hash_seed_does_not_change_the_run(sim_seed: int) -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import test_sim_determinism as t;"
        "print(t.scenario(int(sys.argv[2]), trace='digest').trace_digest());"
        "print(t.cli_digest(int(sys.argv[2])))"
    )
    expected = [scenario(sim_seed, trace="digest").trace_digest(), cli_digest(sim_seed)]
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).parent), str(sim_seed)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, f"seed={sim_seed} PYTHONHASHSEED={hash_seed}: {done.stderr[-2000:]}"
        assert done.stdout.split() == expected, f"seed={sim_seed} PYTHONHASHSEED={hash_seed}"
