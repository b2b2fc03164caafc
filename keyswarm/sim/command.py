"""`keyswarm sim`: run the demo workload on a simulated cluster and report.

Owns the subcommand's options, the fault schedule they describe, the demo
client workload, the invariant checkers of the foundation and the report.
The CLI owner wires `configure_parser` and `main` into `keyswarm/cli.py`;
`python -m keyswarm.sim.command ...` runs it standalone.

Rules:
- Everything that happens in the run comes from `--seed`: the workload's
  generator is drawn from the simulation's generator after the nodes are
  built. The same command line prints the same report, trace digest included
  (only the wall-clock line differs).
- Invariants are assertions checked while the run goes (a checker observes
  every client reply) and at its end. A violation prints the seed and the
  command that replays it, and the exit status is 1. Exit 0 means they held.
- Invariants of the foundation: every client request gets exactly one reply
  or a recorded timeout; counter values per name strictly increase in the
  order a node replies (per node incarnation: a crash loses the in-memory
  counters); no actor is left STOPPED (this command injects no actor faults).
"""

from __future__ import annotations

import argparse
import random
import re
import shlex
import sys
import time
from dataclasses import dataclass

from keyswarm.actors.messages import CounterValue, Echo, Health, Increment, PingPeer
from keyswarm.actors.runtime import ActorState, ClientRef
from keyswarm.sim.driver import Simulation
from keyswarm.sim.node import ServiceLatency, SimNode
from keyswarm.sim.network import LinkProfile

WORKLOADS = ("echo", "ping", "counter", "mixed")
#: Counter names the workload draws from (str keys in actors' and services' dicts, on purpose).
COUNTER_NAMES = ("alpha", "beta", "gamma", "delta", "épsilon", "zeta/1", "eta-2", "theta")
#: mixed: relative weights of echo, counter, ping, health.
MIXED_WEIGHTS = (35, 35, 20, 10)
PING_TIMEOUT_S = 0.5

_TIME = r"(\d+(?:\.\d+)?)"
_PARTITION_RE = re.compile(rf"^([\w.-]+)(?:([:>])([\w.-]+))?@{_TIME}-{_TIME}$")
_CRASH_RE = re.compile(rf"^([\w.-]+)@{_TIME}(?:-{_TIME})?$")
_SPIKE_RE = re.compile(rf"^(\*|[\w.-]+:[\w.-]+)@{_TIME}-{_TIME}\*{_TIME}$")
_SKEW_RE = re.compile(r"^([\w.-]+):(-?\d+(?:\.\d+)?)(?::(-?\d+(?:\.\d+)?(?:e-?\d+)?))?$")


def configure_parser(
    subparsers: argparse._SubParsersAction, *, parents: list[argparse.ArgumentParser] | tuple = ()
) -> argparse.ArgumentParser:
    """Add the `sim` subcommand to a `keyswarm` parser (`parents`: shared options such as --log-level)."""
    parser = subparsers.add_parser(
        "sim",
        parents=list(parents),
        help="run a deterministic simulated cluster with injected faults",
        description="Run N real nodes in virtual time with injected faults and a client "
        "workload; report latency, load and invariants. The same --seed replays byte for byte. "
        "Seeded entropy is insecure by design: the simulator is for testing only.",
    )
    add_arguments(parser)
    parser.set_defaults(func=main)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("--nodes", type=int, default=3, help="number of nodes, named n1..nN (default 3)")
    p("--seed", type=int, default=None, help="seed of the whole run (default: a fresh one, printed)")
    p("--duration", type=float, default=10.0, help="virtual seconds of workload (default 10)")
    p("--workload", choices=WORKLOADS, default="mixed", help="client operations to send (default mixed)")
    p("--rate", type=float, default=100.0, help="client requests per virtual second, Poisson (default 100)")
    p("--timeout-s", type=float, default=5.0, help="client request timeout, virtual s (default 5)")
    p("--loss", type=float, default=0.0, help="peer message loss probability")
    p("--dup", type=float, default=0.0, help="peer message duplication probability")
    p("--reorder", type=float, default=0.0, help="probability a peer message is delayed out of order")
    p("--latency-ms", type=float, default=0.5, help="base one-way peer latency, ms (default 0.5)")
    p("--jitter-ms", type=float, default=0.2, help="mean of the latency's exponential tail, ms (default 0.2)")
    p("--service-latency-ms", type=float, default=1.0, help="mean blocking-service latency, ms (default 1)")
    p("--partition", action="append", default=[], metavar="A:B@T1-T2",
      help="cut A<->B from T1 to T2 s; A>B cuts one way; a bare node name isolates it (repeatable)")
    p("--spike", action="append", default=[], metavar="A:B@T1-T2*F",
      help="multiply A->B and B->A latency by F from T1 to T2 s; '*' for every link (repeatable)")
    p("--crash", action="append", default=[], metavar="NODE@T1[-T2]",
      help="crash NODE at T1 s and restart it at T2 s (repeatable)")
    p("--skew", action="append", default=[], metavar="NODE:OFFSET_S[:DRIFT]",
      help="NODE's clock reads virtual time + OFFSET_S, running 1+DRIFT times as fast (repeatable)")
    p("--unplug", action="append", default=[], metavar="NODE@T1[-T2]",
      help="pull NODE's YubiKey out at T1 s and plug it back at T2 s (repeatable)")
    p("--token-latency-ms", type=float, default=90.0,
      help="modelled time of one token operation (the virtual YubiKey's PIN verify + signature), ms (default 90)")
    p("--trace", metavar="FILE", default=None, help="write every traced event to FILE")


# --- the fault schedule -------------------------------------------------------------


class _BadOption(ValueError):
    pass


def _schedule_faults(sim: Simulation, args: argparse.Namespace) -> list[str]:
    """Put every fault option on the simulation's schedule; returns the nodes faults touch."""
    net = sim.network
    faulted: list[str] = []

    def known(name: str) -> str:
        if name not in sim.nodes:
            raise _BadOption(f"no node {name!r} (nodes are {', '.join(sim.nodes)})")
        return name

    for spec in args.partition:
        m = _PARTITION_RE.match(spec)
        if not m:
            raise _BadOption(f"--partition {spec!r}: expected A:B@T1-T2, A>B@T1-T2 or A@T1-T2")
        a, how, b, t1, t2 = m.group(1), m.group(2), m.group(3), float(m.group(4)), float(m.group(5))
        known(a)
        if how is None:
            sim.at(t1, lambda a=a: net.isolate(a), f"isolate {a}")
            sim.at(t2, lambda a=a: net.rejoin(a), f"rejoin {a}")
        elif how == ":":
            known(b)
            sim.at(t1, lambda a=a, b=b: net.partition(a, b), f"partition {a}:{b}")
            sim.at(t2, lambda a=a, b=b: net.reconnect(a, b), f"reconnect {a}:{b}")
        else:
            known(b)
            sim.at(t1, lambda a=a, b=b: net.partition_oneway(a, b), f"partition {a}>{b}")
            sim.at(t2, lambda a=a, b=b: net.reconnect(a, b), f"reconnect {a}>{b}")
    for spec in args.spike:
        m = _SPIKE_RE.match(spec)
        if not m:
            raise _BadOption(f"--spike {spec!r}: expected A:B@T1-T2*F or *@T1-T2*F")
        link, t1, t2, factor = m.group(1), float(m.group(2)), float(m.group(3)), float(m.group(4))
        try:
            if link == "*":
                net.spike(t1, t2, factor)
            else:
                a, b = (known(x) for x in link.split(":"))
                net.spike(t1, t2, factor, src=a, dst=b)
                net.spike(t1, t2, factor, src=b, dst=a)
        except ValueError as exc:
            raise _BadOption(f"--spike {spec!r}: {exc}") from None
    for spec in args.crash:
        m = _CRASH_RE.match(spec)
        if not m:
            raise _BadOption(f"--crash {spec!r}: expected NODE@T1 or NODE@T1-T2")
        node = known(m.group(1))
        faulted.append(node)
        sim.at(float(m.group(2)), lambda n=node: sim.crash(n), f"crash {node}")
        if m.group(3) is not None:
            # Overlapping windows may ask to restart a node that is up again: no-op.
            sim.at(float(m.group(3)), lambda n=node: sim.node(n).up or sim.restart(n), f"restart {node}")
    for spec in args.unplug:
        m = _CRASH_RE.match(spec)
        if not m:
            raise _BadOption(f"--unplug {spec!r}: expected NODE@T1 or NODE@T1-T2")
        node = known(m.group(1))
        faulted.append(node)
        sim.at(float(m.group(2)), lambda n=node: sim.unplug_token(n), f"unplug {node}")
        if m.group(3) is not None:
            sim.at(float(m.group(3)), lambda n=node: sim.plug_token(n), f"plug {node}")
    return faulted


def _parse_skews(specs: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    skew: dict[str, float] = {}
    drift: dict[str, float] = {}
    for spec in specs:
        m = _SKEW_RE.match(spec)
        if not m:
            raise _BadOption(f"--skew {spec!r}: expected NODE:OFFSET_S or NODE:OFFSET_S:DRIFT")
        skew[m.group(1)] = float(m.group(2))
        if m.group(3) is not None:
            drift[m.group(1)] = float(m.group(3))
    return skew, drift


# --- the workload and its checkers ------------------------------------------------------


class Workload:
    """Poisson arrivals of demo requests to uniformly chosen nodes, in virtual time."""

    def __init__(self, sim: Simulation, kind: str, rate: float, until_s: float, rng: random.Random, timeout_s: float):
        self.sim, self.kind, self.rate, self.until_s, self.rng, self.timeout_s = sim, kind, rate, until_s, rng, timeout_s
        self.names = list(sim.nodes)

    def start(self) -> None:
        if self.rate > 0:
            self._next(self.sim.now)

    def _next(self, now: float) -> None:
        at = now + self.rng.expovariate(self.rate)
        if at < self.until_s:
            self.sim.at(at, self._arrive, "workload")

    def _arrive(self) -> None:
        rng = self.rng
        node = rng.choice(self.names)
        self.sim.submit(node, self._request(node), timeout_s=self.timeout_s)
        self._next(self.sim.now)

    def _request(self, node: str) -> object:
        rng = self.rng
        kind = self.kind
        if kind == "mixed":
            kind = rng.choices(("echo", "counter", "ping", "health"), weights=MIXED_WEIGHTS)[0]
        if kind == "echo":
            return Echo(payload=rng.randbytes(rng.randrange(0, 64)))
        if kind == "counter":
            return Increment(name=rng.choice(COUNTER_NAMES), by=1)
        if kind == "ping":
            others = [name for name in self.names if name != node] or [node]
            return PingPeer(target=rng.choice(others), timeout_s=PING_TIMEOUT_S)
        return Health()


class CounterOrder:
    """Checks counter values per name strictly increase in each node incarnation's reply order."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, int, str], int] = {}

    def __call__(self, node: SimNode, ref: ClientRef, msg: object) -> None:
        if type(msg) is not CounterValue:
            return
        key = (node.name, node.epoch, msg.name)
        previous = self.last.get(key)
        assert previous is None or msg.value > previous, (
            f"counter {msg.name!r} on {node.name} went from {previous} to {msg.value} (request #{ref.request_id})"
        )
        self.last[key] = msg.value


def check_end_state(sim: Simulation) -> None:
    """Invariants that hold once every request had time to finish."""
    pending = sim.pending()
    assert not pending, f"requests with neither a reply nor a timeout: {pending[:10]}"
    for node in sim.live_nodes():
        for actor, row in node.runtime.stats().items():
            assert row["state"] != ActorState.STOPPED.value, (
                f"actor {actor} on {node.name} is stopped with no fault injected on it: {row}"
            )


# --- running and reporting -------------------------------------------------------------


@dataclass(slots=True)
class SimReport:
    seed: int
    replay: str
    sim: Simulation
    wall_s: float
    failure: str | None = None  # the violated invariant, if any

    @property
    def ok(self) -> bool:
        return self.failure is None


def replay_command(args: argparse.Namespace, seed: int) -> str:
    """The command line that replays this run exactly."""
    parts = ["keyswarm", "sim", "--nodes", str(args.nodes), "--seed", str(seed), "--duration", repr(args.duration),
             "--workload", args.workload, "--rate", repr(args.rate), "--timeout-s", repr(args.timeout_s),
             "--loss", repr(args.loss), "--dup", repr(args.dup), "--reorder", repr(args.reorder),
             "--latency-ms", repr(args.latency_ms), "--jitter-ms", repr(args.jitter_ms),
             "--service-latency-ms", repr(args.service_latency_ms), "--token-latency-ms", repr(args.token_latency_ms)]
    for flag in ("partition", "spike", "crash", "skew", "unplug"):
        for spec in getattr(args, flag):
            parts += [f"--{flag}", spec]
    return shlex.join(parts)


def run_simulation(args: argparse.Namespace, *, trace: str = "digest") -> SimReport:
    """Build the cluster the options describe, run it, check invariants. Raises `ValueError` on bad options."""
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    replay = replay_command(args, seed)
    if args.nodes < 1 or args.duration < 0 or args.rate < 0 or args.timeout_s <= 0:
        raise _BadOption("--nodes must be >= 1, --duration and --rate >= 0, --timeout-s > 0")
    skew, drift = _parse_skews(args.skew)
    try:
        link = LinkProfile(
            latency_s=args.latency_ms / 1000, jitter_s=args.jitter_ms / 1000, jitter_cap_s=max(0.005, 25 * args.jitter_ms / 1000),
            loss=args.loss, duplicate=args.dup, reorder=args.reorder,
        )
        service = ServiceLatency(mean_s=args.service_latency_ms / 1000, jitter_s=args.service_latency_ms / 5000)
        token = ServiceLatency(mean_s=args.token_latency_ms / 1000, jitter_s=args.token_latency_ms / 9000)
    except ValueError as exc:
        raise _BadOption(str(exc)) from None
    started = time.perf_counter()
    try:
        sim = Simulation(
            seed, args.nodes, link=link, service_latency=service, token_latency=token, skew=skew, drift=drift,
            request_timeout_s=args.timeout_s, trace="full" if args.trace else trace, replay_hint=f"replay: {replay}",
        )
    except ValueError as exc:
        raise _BadOption(str(exc)) from None
    counter_order = CounterOrder()
    sim.reply_observers.append(counter_order)
    _schedule_faults(sim, args)
    workload = Workload(sim, args.workload, args.rate, args.duration, random.Random(sim.rng.getrandbits(64)), args.timeout_s)
    report = SimReport(seed=seed, replay=replay, sim=sim, wall_s=0.0)
    try:
        workload.start()
        sim.run_for(args.duration)
        # Drain: no new requests; every open one replies or times out by then.
        sim.run_for(args.timeout_s + 1.0)
        check_end_state(sim)
    except AssertionError as exc:
        report.failure = str(exc) or type(exc).__name__
    report.wall_s = time.perf_counter() - started
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in sim.trace_lines())
    return report


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def format_report(report: SimReport, args: argparse.Namespace) -> str:
    sim = report.sim
    st = sim.stats
    outcomes = list(sim.replies.values())
    codes: dict[str, int] = {}
    for outcome in outcomes:
        codes[outcome.code] = codes.get(outcome.code, 0) + 1
    latencies = sorted(o.latency_s * 1000 for o in outcomes if o.latency_s is not None)
    per_node = {name: [0, 0] for name in sim.nodes}
    for outcome in outcomes:
        per_node[outcome.node][0] += 1
        per_node[outcome.node][1] += outcome.ok
    net = sim.network.stats
    lines = [
        f"keyswarm sim: {len(sim.nodes)} nodes, seed {report.seed}, workload {args.workload} at {args.rate:g}/s "
        f"for {args.duration:g} s (+{args.timeout_s + 1:g} s drain), virtual time {sim.now:.3f} s, wall {report.wall_s:.2f} s",
        f"faults: loss {args.loss:g} dup {args.dup:g} reorder {args.reorder:g}; partitions {args.partition or '-'}; "
        f"spikes {args.spike or '-'}; crashes {args.crash or '-'}; skews {args.skew or '-'}; "
        f"unplugs {args.unplug or '-'}",
        f"requests: sent {st.client_sent}, answered {st.client_answered}, timed out {st.client_timeouts}, "
        f"late replies {st.client_late}",
        "  by code: " + (", ".join(f"{code} {n}" for code, n in sorted(codes.items())) or "-"),
        f"  latency (virtual ms): p50 {percentile(latencies, 50):.3f}  p90 {percentile(latencies, 90):.3f}  "
        f"p99 {percentile(latencies, 99):.3f}  max {latencies[-1] if latencies else 0:.3f}",
        "  per node (sent/ok): " + ", ".join(f"{name} {s}/{ok}" for name, (s, ok) in per_node.items()),
        f"peer messages: sent {st.peer_sent}, delivered {st.peer_delivered}, lost {st.peer_lost}, "
        f"blocked {st.peer_blocked}, duplicated {st.peer_duplicated}, reordered {net.reordered}; "
        f"dropped at crashed nodes {st.dropped_crashed}, mailbox full {st.mailbox_full}",
        f"events {st.events}, timers fired {st.timers}, service calls {st.service_calls}, "
        f"client messages lost {st.client_lost}",
        "tokens at the end: " + _token_states(sim),
        f"trace digest: {sim.trace_digest()}",
        "invariants: held" if report.ok else f"INVARIANT VIOLATED: {report.failure}",
        f"replay: {report.replay}",
    ]
    return "\n".join(lines)


def _token_states(sim: Simulation) -> str:
    """`n1 ready/ok, n2 absent/expired`: each live node's token and sub-key state."""
    if sim.tokens is None:
        return "-"
    cells = []
    for name, node in sim.nodes.items():
        if not node.up:
            cells.append(f"{name} down")
            continue
        hardware, subkeys = node.runtime.actor("hardware"), node.runtime.actor("subkeys")
        token = getattr(hardware, "state", "?")
        subkey = getattr(getattr(subkeys, "state", None), "value", "?")
        cells.append(f"{name} {token}/{subkey}" + ("" if sim.tokens.plugged(name) else " (unplugged)"))
    return ", ".join(cells)


def main(args: argparse.Namespace) -> int:
    """Run `keyswarm sim`; 0 if every invariant held, 1 if one broke, 2 on bad options."""
    try:
        report = run_simulation(args)
    except _BadOption as exc:
        print(f"keyswarm sim: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, args))
    if not report.ok:
        print(f"seed {report.seed} broke an invariant; reproduce with: {report.replay}", file=sys.stderr)
        return 1
    return 0


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyswarm sim")
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_standalone())
