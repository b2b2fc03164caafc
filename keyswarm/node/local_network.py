"""A network of local node processes: what `keyswarm up` plans, starts, shows and stops.

Owns: the plan of an N-node network on one host (ids, ports, directories),
the TOML file each node reads, the node processes and their lifecycle.
The soft-token root and enrolments are `local_pki`'s; the demonstration
`keyswarm up --demo` runs is `local_demo`'s.

Rules:
- Layout: node `nK` (K = 1..N) listens for clients on BASE+K and for peers on
  BASE+100+K; its config, data, log, token and certificates live in
  `ROOT/nK/`, the network's root in `ROOT/root/`; every node lists every
  other node as a `[[peers]]` seed.
- Tokens by default: before any node starts, a root (network "local") and
  one soft token per node are made with `keyswarm init` / `enroll-node`'s
  code, and each node's `[token]` names them, so every node runs the
  hardware and sub-keys actors. `tokens=False` (`--no-tokens`) writes no
  `[token]` section: nodes as they were before tokens.
- Ports are checked before anything starts; a busy port is a `TransportError`
  naming the port and the node that needed it.
- Every node runs as `python -m keyswarm node --config ROOT/nK/node.toml`
  with this interpreter, in its own session (so its own process group):
  Ctrl-C at the terminal reaches only `keyswarm up`, which stops the nodes
  itself, in order. On Linux each node also gets SIGKILL if `keyswarm up`
  dies without stopping it (PR_SET_PDEATHSIG).
- Every wait is bounded. Stopping is SIGTERM to the group, a bounded wait for
  exit code 0, then SIGKILL to the group; `LocalNetwork` is a context manager
  whose exit always stops what it started, on errors and on Ctrl-C too.
- Children get this process's environment plus the directory holding the
  `keyswarm` package on PYTHONPATH, so a source checkout works without an
  install and an editable install works unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from keyswarm.config import load_config_text
from keyswarm.errors import KeyswarmError, TransportError
from keyswarm.node.local_pki import LocalPki, enrol_local_network, node_token_files

HOST = "127.0.0.1"
#: Peer ports sit this far above client ports.
PEER_PORT_OFFSET = 100
#: Lines of a node's log shown when it fails to start.
LOG_TAIL_LINES = 20


# --- the plan --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedNode:
    """One node of a local network: identity, ports and files."""

    id: str
    host: str
    client_port: int
    peer_port: int
    directory: str  # ROOT/nK: config, data and log

    @property
    def client_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.client_port}"

    @property
    def peer_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.peer_port}"

    @property
    def config_path(self) -> str:
        return os.path.join(self.directory, "node.toml")

    @property
    def data_dir(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "node.log")


def plan_network(count: int, *, base_port: int, root: str, host: str = HOST) -> tuple[PlannedNode, ...]:
    """Nodes n1..n`count`: client port base+K, peer port base+100+K, directory root/nK."""
    if not 1 <= count < PEER_PORT_OFFSET:
        raise ValueError(f"a local network has 1 to {PEER_PORT_OFFSET - 1} nodes, not {count}")
    if not 1 <= base_port or base_port + PEER_PORT_OFFSET + count > 65535:
        raise ValueError(f"base port {base_port} leaves no room for {count} nodes")
    root = os.path.abspath(root)
    return tuple(
        PlannedNode(f"n{k}", host, base_port + k, base_port + PEER_PORT_OFFSET + k, os.path.join(root, f"n{k}"))
        for k in range(1, count + 1)
    )


def node_config_text(plan: tuple[PlannedNode, ...], node: PlannedNode, *, tokens: bool = True) -> str:
    """The TOML file of `node`: its identity and endpoints, every other node as a peer, and (`tokens`) its `[token]`."""
    quote = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        f"# keyswarm: node {node.id} of a {len(plan)}-node local network, written by `keyswarm up`.",
        "# Run it alone with: keyswarm node --config " + node.config_path,
        "",
        'profile = "lan"',
        "",
        "[node]",
        f"id = {quote(node.id)}",
        f"client_endpoint = {quote(node.client_endpoint)}",
        f"peer_endpoint = {quote(node.peer_endpoint)}",
        f"data_dir = {quote(node.data_dir)}",
    ]
    for peer in plan:
        if peer.id != node.id:
            lines += ["", "[[peers]]", f"id = {quote(peer.id)}", f"endpoint = {quote(peer.peer_endpoint)}"]
    if tokens:
        files = node_token_files(node.directory)
        lines += [
            "",
            "# A soft token: keys NOT hardware-protected (development only). keyswarm up enrolled it.",
            "[token]",
            f"spec = {quote(files.spec)}",
            f"node_certificate = {quote(files.node_certificate)}",
            f"root_certificate = {quote(files.root_certificate)}",
            f"domain_key = {quote(files.domain_key)}",
        ]
    return "\n".join(lines) + "\n"


def write_configs(plan: tuple[PlannedNode, ...], *, tokens: bool = True) -> list[str]:
    """Create each node's directory and write its `node.toml`; returns the paths.

    Each file is checked with the config loader before it is written, so a
    node never starts on a file its own loader would refuse.
    """
    paths = []
    for node in plan:
        text = node_config_text(plan, node, tokens=tokens)
        load_config_text(text, source=node.config_path)
        try:
            os.makedirs(node.data_dir, exist_ok=True)
            with open(node.config_path, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise KeyswarmError(f"cannot write {node.config_path}: {exc.strerror or exc}") from exc
        paths.append(node.config_path)
    return paths


# --- ports -----------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    """True if a listener could bind `host:port` now.

    SO_REUSEADDR as ZeroMQ sets it, so a port in TIME_WAIT after the last run
    counts as free (it is, for ZeroMQ) and only a live listener counts as busy.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(plan: tuple[PlannedNode, ...]) -> None:
    """Raise `TransportError` naming the first busy port and who needed it."""
    for node in plan:
        for port, role in ((node.client_port, "client"), (node.peer_port, "peer")):
            if not port_is_free(node.host, port):
                raise TransportError(
                    f"port {port} on {node.host} ({node.id}'s {role} port) is already in use; "
                    "stop whatever holds it or pick another --base-port"
                )


def find_free_base_port(count: int, *, low: int = 20_000, high: int = 32_000, attempts: int = 200) -> int:
    """A base port whose 2 * `count` ports are free now (for tests and benches); below Linux's
    ephemeral range (32768-60999), so no outgoing connection takes one before the nodes bind."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(low, high)
        plan = plan_network(count, base_port=base, root=".")
        if all(port_is_free(n.host, p) for n in plan for p in (n.client_port, n.peer_port)):
            return base
    raise TransportError(f"no base port in [{low}, {high}) has {2 * count} free ports")


# --- processes -------------------------------------------------------------------


def node_command(config_path: str, *, log_level: str = "info") -> list[str]:
    """The command line that runs one node with this interpreter."""
    return [sys.executable, "-m", "keyswarm", "--log-level", log_level, "node", "--config", config_path]


def child_environment() -> dict[str, str]:
    """This environment, plus the directory holding `keyswarm` on PYTHONPATH."""
    import keyswarm

    source_root = os.path.dirname(os.path.dirname(os.path.abspath(keyswarm.__file__)))
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if source_root not in parts:
        parts.insert(0, source_root)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _death_signal_setter() -> Callable[[], None] | None:
    """A pre-exec hook that has the child SIGKILLed if its parent dies (Linux), else None.

    libc and `prctl` are looked up here, in the parent: the hook runs between
    fork and exec, where importing or loading anything could deadlock on a
    lock another thread held at the fork.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def spawn_node(config_path: str, log_path: str, *, log_level: str = "info") -> subprocess.Popen:
    """Start one node in its own session; its stdout and stderr go to `log_path`."""
    with open(log_path, "ab") as log:
        try:
            return subprocess.Popen(
                node_command(config_path, log_level=log_level),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(),
                start_new_session=True,
                preexec_fn=_death_signal_setter(),
            )
        except OSError as exc:
            raise KeyswarmError(f"cannot start a node for {config_path}: {exc}") from exc


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send `signum` to the process group `process` leads (no-op once it is reaped)."""
    if process.returncode is not None:
        return  # reaped: its pid, and so its group id, may belong to someone else now
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


@dataclasses.dataclass(frozen=True, slots=True)
class StopReport:
    """How one node stopped: its exit code and whether it needed SIGKILL."""

    id: str
    pid: int
    returncode: int | None
    killed: bool
    seconds: float

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and not self.killed


def stop_processes(
    processes: dict[str, subprocess.Popen], *, timeout_s: float, kill_timeout_s: float = 5.0
) -> list[StopReport]:
    """SIGTERM every group, wait up to `timeout_s` in all, SIGKILL the groups still there."""
    started = time.monotonic()
    for process in processes.values():
        signal_group(process, signal.SIGTERM)
    deadline = started + timeout_s
    finished: dict[str, float] = {}
    while len(finished) < len(processes) and time.monotonic() < deadline:
        for node_id, process in processes.items():
            if node_id not in finished and process.poll() is not None:
                finished[node_id] = time.monotonic() - started
        time.sleep(0.02)
    reports = []
    for node_id, process in processes.items():
        killed = False
        if process.poll() is None:
            killed = True
            signal_group(process, signal.SIGKILL)
            try:
                process.wait(timeout=kill_timeout_s)
            except subprocess.TimeoutExpired:
                pass  # unkillable (D state); reported as not stopped
        seconds = finished.get(node_id, time.monotonic() - started)
        reports.append(StopReport(node_id, process.pid, process.returncode, killed, seconds))
    return reports


def read_log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- the network -----------------------------------------------------------------


class LocalNetwork:
    """The processes of a planned network. Use as a context manager: exit stops them all."""

    def __init__(
        self, plan: tuple[PlannedNode, ...], *, log_level: str = "info", stop_timeout_s: float = 15.0, tokens: bool = True
    ):
        self.plan = plan
        self.log_level = log_level
        self.stop_timeout_s = stop_timeout_s
        self.tokens = tokens
        self.processes: dict[str, subprocess.Popen] = {}
        self.stop_reports: list[StopReport] | None = None
        #: The root and enrolments (`tokens`), once `start` made or reused them.
        self.pki: LocalPki | None = None

    def __enter__(self) -> LocalNetwork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Check ports, enrol the tokens, write configs, spawn every node (does not wait for them)."""
        assert not self.processes, "network started twice"
        check_ports_free(self.plan)
        if self.tokens:
            root = os.path.dirname(self.plan[0].directory)
            self.pki = enrol_local_network(root, [(node.id, node.directory) for node in self.plan])
        write_configs(self.plan, tokens=self.tokens)
        for node in self.plan:
            self.processes[node.id] = spawn_node(node.config_path, node.log_path, log_level=self.log_level)

    def wait_healthy(self, timeout_s: float) -> dict[str, object]:
        """Wait until every node answers `health`; returns each node's `HealthResult`.

        Raises `KeyswarmError` naming the node (and showing its log) if one
        exits first or the time runs out.
        """
        from keyswarm.actors.messages import Health

        deadline = time.monotonic() + timeout_s
        healthy: dict[str, object] = {}
        while len(healthy) < len(self.plan):
            for node in self.plan:
                if node.id in healthy:
                    continue
                self._raise_if_exited(node)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise KeyswarmError(f"node {node.id} did not answer health within {timeout_s:g} s" + self._log_excerpt(node))
                try:
                    reply = request(node.client_endpoint, Health(), timeout_s=min(0.5, remaining))
                except KeyswarmError:
                    continue  # not listening yet; try again until the deadline
                if reply.error is None:
                    healthy[node.id] = reply.value
        return {node.id: healthy[node.id] for node in self.plan}

    def exited(self) -> dict[str, int]:
        """Nodes whose process has ended, with their exit codes."""
        return {node_id: p.returncode for node_id, p in self.processes.items() if p.poll() is not None}

    def stop(self) -> list[StopReport]:
        """Stop every node (idempotent); the reports are kept in `stop_reports`."""
        if self.stop_reports is None:
            self.stop_reports = stop_processes(self.processes, timeout_s=self.stop_timeout_s)
        return self.stop_reports

    def _raise_if_exited(self, node: PlannedNode) -> None:
        process = self.processes[node.id]
        if process.poll() is not None:
            raise KeyswarmError(f"node {node.id} {describe_exit(process.returncode)} while starting" + self._log_excerpt(node))

    def _log_excerpt(self, node: PlannedNode) -> str:
        tail = read_log_tail(node.log_path)
        return f"; last lines of {node.log_path}:\n{tail}" if tail else f"; its log is {node.log_path}"


def request(endpoint: str, msg: object, *, timeout_s: float) -> object:
    """One request over a fresh plaintext client: its `Reply` (raises `KeyswarmError` on timeout)."""
    from keyswarm.client.plain import PlainClient

    with PlainClient(endpoint, timeout_s=timeout_s) as client:
        return client.request(msg)


def format_table(headers: list[str], rows: list[list[str]], *, out: Callable[[str], object], indent: str = "  ") -> None:
    """Print rows under headers, columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for cells in [headers, *rows]:
        out(indent + "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip())


# --- `keyswarm up` ---------------------------------------------------------------


def run_up(
    *,
    nodes: int,
    base_port: int,
    data_dir: str | None,
    demo: bool,
    tokens: bool = True,
    log_level: str = "info",
    status_interval_s: float = 5.0,
    start_timeout_s: float = 30.0,
    stop_timeout_s: float = 15.0,
    out: Callable[[str], object] = print,
) -> int:
    """Plan, start and show a local network; run the demo or watch until Ctrl-C / SIGTERM; stop it.

    Returns 0 when everything asked for worked and every node exited 0 after
    SIGTERM. Without `data_dir` the files live in a temporary directory that
    is removed at the end. `tokens`: each node on its own soft token,
    enrolled under a root made for the network (see `local_pki`).
    """
    from keyswarm.node.local_demo import run_demo

    import shutil
    import tempfile

    root = data_dir if data_dir is not None else tempfile.mkdtemp(prefix="keyswarm-up-")
    plan = plan_network(nodes, base_port=base_port, root=root)
    network = LocalNetwork(plan, log_level=log_level, stop_timeout_s=stop_timeout_s, tokens=tokens)
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    ok = False
    try:
        check_ports_free(plan)
        where = os.path.abspath(root) + ("  (temporary, removed at the end)" if data_dir is None else "")
        out(f"starting {nodes} node{'s' if nodes > 1 else ''} on {HOST}; configs, data and logs in {where}")
        network.start()
        if network.pki is not None:
            show_pki(network.pki, len(plan), out=out)
        health = network.wait_healthy(start_timeout_s)
        out("")
        show_network(network, health, out=out)
        out("")
        ok = run_demo(network, out=out) if demo else watch(network, interval_s=status_interval_s, out=out)
    except KeyboardInterrupt:
        out("\ninterrupted")
        ok = not demo  # Ctrl-C is how a watched network ends; it cuts a demo short
    finally:
        # A second Ctrl-C or SIGTERM must not cut the shutdown short (and leave nodes running).
        previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if network.processes:
                try:
                    out(f"\nstopping {len(network.processes)} nodes (SIGTERM; SIGKILL after {stop_timeout_s:g} s)")
                finally:  # stop even if the output is gone (a closed pipe)
                    reports = network.stop()
                ok = report_stop(reports, out=out) and ok
        finally:
            signal.signal(signal.SIGINT, previous_sigint)
            signal.signal(signal.SIGTERM, previous_sigterm)
            if data_dir is None:
                shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def describe_exit(returncode: int | None) -> str:
    """`exited 0`, `exited 2`, `killed by SIGKILL`."""
    if returncode is not None and returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"  # Popen's way of saying "by a signal"
    return f"exited {returncode}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def show_pki(pki: LocalPki, count: int, *, out: Callable[[str], object]) -> None:
    """Where the network's root and tokens are, and the warning that soft tokens deserve."""
    if pki.made:
        made = ", ".join(pki.made)
        out(f"network {pki.network_id} ('local'): made {made}; root certificate in {pki.root_directory}")
    else:
        out(f"network {pki.network_id} ('local'): root and {count} enrolled node(s) reused from {pki.root_directory}")
    out("warning: every node runs on a SOFT TOKEN (a key file): keys are NOT hardware-protected; development only")


def show_network(network: LocalNetwork, health: dict[str, object], *, out: Callable[[str], object]) -> None:
    rows = []
    for n in network.plan:
        value = health[n.id]
        token = f"{value.token_kind or '?'} {value.token}" if value.token else "-"
        rows.append([n.id, n.client_endpoint, n.peer_endpoint, str(network.processes[n.id].pid), value.status, token])
    format_table(["node", "client endpoint", "peer endpoint", "pid", "status", "token"], rows, out=out)
    out(f"  logs: {os.path.join(os.path.dirname(network.plan[0].directory), 'nK', 'node.log')}")


def watch(network: LocalNetwork, *, interval_s: float, out: Callable[[str], object]) -> bool:
    """Print every node's health each `interval_s` until interrupted; False if every node died."""
    from keyswarm.actors.messages import Health

    out(f"running; health every {interval_s:g} s; Ctrl-C stops every node")
    reported: set[str] = set()
    while True:
        time.sleep(interval_s)
        cells = []
        exited = network.exited()
        for node in network.plan:
            if node.id in exited:
                cells.append(f"{node.id} EXITED")
                if node.id not in reported:
                    reported.add(node.id)
                    out(f"node {node.id} {describe_exit(exited[node.id])}{network._log_excerpt(node)}")
                continue
            try:
                reply = request(node.client_endpoint, Health(), timeout_s=min(2.0, interval_s))
            except KeyswarmError:
                cells.append(f"{node.id} no answer")
                continue
            if reply.error is not None:
                cells.append(f"{node.id} error {getattr(reply.error, 'code', reply.error)}")
            else:
                value = reply.value
                trouble = value.token not in ("", "ready") or value.subkey not in ("", "ok")
                why = f" (token {value.token}, sub-key {value.subkey})" if trouble else ""
                cells.append(f"{node.id} {value.status} up {value.uptime_s:.0f}s{why}")
        out(time.strftime("%H:%M:%S") + "  " + " | ".join(cells))
        if len(exited) == len(network.plan):
            out("every node has exited")
            return False


def report_stop(reports: list[StopReport], *, out: Callable[[str], object]) -> bool:
    rows = []
    for r in reports:
        if r.clean:
            how = "exited 0"
        elif r.killed:
            how = "KILLED (did not exit after SIGTERM)" if r.returncode is not None else "STILL RUNNING after SIGKILL"
        else:
            how = describe_exit(r.returncode)
        rows.append([r.id, str(r.pid), how, f"{r.seconds:.2f} s"])
    format_table(["node", "pid", "outcome", "time"], rows, out=out)
    clean = [r for r in reports if r.clean]
    if len(clean) == len(reports):
        out(f"all {len(reports)} nodes stopped cleanly")
        return True
    out(f"{len(reports) - len(clean)} of {len(reports)} nodes did not stop cleanly")
    return False
