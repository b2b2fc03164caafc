"""The `keyswarm` command: argument parsing and the thin glue behind each subcommand.

Owns: the command line (subcommands, their options and checks), the mapping
of outcomes to exit codes, and how results are shown to a person.

Rules:
- Exit codes: 0 success; 1 an operation failed (every `KeyswarmError` becomes
  one line `error: ...` on stderr, never a traceback); 2 bad arguments
  (argparse's message names the argument); 130 interrupted.
  `keyswarm client`'s key and crypto operations have finer codes (3-7,
  `keyswarm.cli_client`, docs/cli.md).
- `main(argv)` returns the exit code instead of exiting, so tests call it
  in-process; `python -m keyswarm` and the `keyswarm` script exit with it.
- Heavy or optional modules (the driver, the client, local networks) are
  imported inside the handler that needs them, and the simulator only when
  `sim` is the command: a broken simulator must not break `keyswarm node`,
  and `keyswarm version` must not need ZeroMQ.
- Argument checks that need no I/O live here (ranges of `--nodes`,
  `--base-port`, ...); checks that need the world (free ports, config files)
  live with the code that does the work and raise `KeyswarmError`.

The enrolment subcommands (init, enroll-node, enroll-client, token) are
wired in `keyswarm.cli_enrol`. Still to come (DESIGN section 3): bench.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence

from keyswarm import __version__
from keyswarm.errors import KeyswarmError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

LOG_LEVELS = ("debug", "info", "warning", "error")

#: `keyswarm up` runs every node as a Python process on this machine; past a
#: few dozen it is no longer a demo (and the port layout base+i / base+100+i
#: needs N < 100 anyway).
MAX_LOCAL_NODES = 32
#: Ports below 1024 need privileges; `--base-port` plus 100 + N must stay a port.
MIN_BASE_PORT = 1024
MAX_BASE_PORT = 65535 - 100 - MAX_LOCAL_NODES


# --- argument types -------------------------------------------------------------


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not low < value <= high:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be more than {low:g} and at most {high:g} seconds, got {text}")
        return value

    return parse


# --- the parser -------------------------------------------------------------------


def build_parser(*, load_sim: bool = True) -> argparse.ArgumentParser:
    """The whole command line. `load_sim=False` puts a stand-in for `sim` (no import)."""
    # `--log-level` is accepted before or after the subcommand: the copy on the
    # subcommands defaults to SUPPRESS so it only overrides when given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help="logging threshold")

    parser = argparse.ArgumentParser(
        prog="keyswarm",
        description="A peer-to-peer network of nodes serving hardware-rooted key operations.",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="logging threshold (default: info for node, warning otherwise)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    node = commands.add_parser("node", parents=[common], help="run one node in the foreground")
    node.add_argument("--config", required=True, metavar="FILE", help="the node's TOML configuration")
    node.set_defaults(handler=run_node_command)

    up = commands.add_parser(
        "up",
        parents=[common],
        help="start a network of local nodes (one process each)",
        description="Plan N nodes on 127.0.0.1, write one config per node, start and supervise them. "
        "Client ports are BASE+1..BASE+N, peer ports BASE+101..BASE+100+N.",
    )
    up.add_argument("--nodes", type=_int_in(1, MAX_LOCAL_NODES, "--nodes"), default=3, help="how many nodes (default 3)")
    up.add_argument(
        "--base-port",
        type=_int_in(MIN_BASE_PORT, MAX_BASE_PORT, "--base-port"),
        default=7000,
        help="client port of node K is BASE+K, its peer port BASE+100+K (default 7000)",
    )
    up.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="where node configs, data and logs go (DIR/nK/); kept afterwards. "
        "Default: a temporary directory, removed when the nodes stop",
    )
    up.add_argument("--demo", action="store_true", help="run the demonstration, stop every node and exit")
    up.add_argument(
        "--no-tokens",
        action="store_true",
        help="run the nodes without tokens (no root, no enrolment, no hardware or sub-keys actors). "
        "Default: a root and one soft token per node, enrolled before the nodes start",
    )
    up.add_argument(
        "--status-interval",
        type=_seconds(0.0, 3600.0),
        default=5.0,
        metavar="S",
        help="seconds between health reports while running (default 5)",
    )
    up.add_argument(
        "--start-timeout", type=_seconds(0.0, 600.0), default=30.0, metavar="S", help="seconds to wait for every node to answer (default 30)"
    )
    up.add_argument(
        "--stop-timeout",
        type=_seconds(0.0, 600.0),
        default=15.0,
        metavar="S",
        help="seconds to wait for a node to exit after SIGTERM before SIGKILL (default 15)",
    )
    up.set_defaults(handler=run_up_command)

    _add_client_parser(commands, common)
    _add_audit_parser(commands, common)
    from keyswarm.cli_enrol import add_enrolment_parsers  # init, enroll-node, enroll-client, token

    add_enrolment_parsers(commands, common)
    if load_sim:
        sim_command = _import_sim_command()
        sim = sim_command.configure_parser(commands)  # adds the `sim` subparser itself
        sim.set_defaults(handler=sim_command.main)
    else:  # never run: main() builds the real one when `sim` is the command
        commands.add_parser("sim", help="run the deterministic simulator (see docs/simulator.md)", add_help=False)

    version = commands.add_parser("version", parents=[common], help="print the version")
    version.set_defaults(handler=run_version_command)
    return parser


def _add_client_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    # `--connect` and `--timeout` work before or after the operation, as `--log-level` does.
    connection = argparse.ArgumentParser(add_help=False, parents=[common])
    connection.add_argument("--connect", metavar="ENDPOINT", default=argparse.SUPPRESS, help="node client endpoint")
    connection.add_argument("--timeout", type=_seconds(0.0, 3600.0), metavar="S", default=argparse.SUPPRESS, help="seconds to wait for the reply")

    from keyswarm.cli_client import add_session_operations, add_session_options

    add_session_options(connection, suppress=True)
    client = commands.add_parser("client", parents=[common], help="talk to a node: key and crypto operations (in a session), health and echo (plaintext)")
    client.add_argument("--connect", metavar="ENDPOINT", default="tcp://127.0.0.1:7001", help="node client endpoint (default tcp://127.0.0.1:7001)")
    client.add_argument("--timeout", type=_seconds(0.0, 3600.0), metavar="S", default=5.0, help="seconds to wait for the reply (default 5)")
    add_session_options(client, suppress=False)
    ops = client.add_subparsers(dest="op", metavar="OPERATION", required=True)

    ops.add_parser("health", parents=[connection], help="the node's status and actors")
    echo = ops.add_parser("echo", parents=[connection], help="echo TEXT back")
    echo.add_argument("text", metavar="TEXT")
    ping = ops.add_parser("ping", parents=[connection], help="ask the node to ping NODE over the peer network")
    ping.add_argument("target", metavar="NODE")
    ping.add_argument("--ping-timeout", type=_seconds(0.0, 60.0), default=1.0, metavar="S", help="the node's wait for the peer (default 1)")
    count = ops.add_parser("count", parents=[connection], help="increment the counter NAME on the node")
    count.add_argument("name", metavar="NAME")
    count.add_argument("--by", type=_int_in(-(2**62), 2**62, "--by"), default=1, help="amount to add (default 1)")
    add_session_operations(ops, connection)
    client.set_defaults(handler=run_client_command)


def _add_audit_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    audit = commands.add_parser("audit", parents=[common], help="check a node's event log")
    checks = audit.add_subparsers(dest="check", metavar="CHECK", required=True)
    verify = checks.add_parser(
        "verify",
        parents=[common],
        help="verify every record, chain, signature and head of an event log (read-only; safe while the node runs)",
        description="Walk every record and cross-reference, every origin's hash chain and signatures, and the heads. "
        "Exit 0 when everything verifies, 1 on any problem (the first is printed).",
    )
    verify.add_argument("--data", required=True, metavar="DIR", help="the node's data directory (its log is DIR/log), or the log directory itself (holding data.mdb)")
    verify.add_argument("--all", action="store_true", help="list every problem found (up to --max-problems), not only the first")
    verify.add_argument(
        "--max-problems", type=_int_in(1, 1_000_000, "--max-problems"), default=100, metavar="N",
        help="stop looking after N problems (default 100)",
    )
    verify.add_argument(
        "--jobs", type=_int_in(1, 2, "--jobs"), default=None, metavar="N",
        help="1: one process; 2: the records walk in a second process beside the chain walk "
        "(default: 2 on a large log with two or more cores)",
    )
    verify.add_argument(
        "--root", metavar="ROOT.PEM", default=None,
        help="the network's root certificate: check every SignerKey's certificate against it "
        "and warn about uncertified signing keys",
    )
    verify.add_argument(
        "--require-certified", action="store_true",
        help="with --root: an uncertified signing key is a problem (exit 1), not a warning",
    )
    verify.add_argument("--quiet", action="store_true", help="print nothing when the log verifies; only the problem otherwise")
    verify.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    verify.set_defaults(handler=run_audit_verify_command)


def _import_sim_command() -> object:
    """`keyswarm.sim.command`, or a `KeyswarmError` saying why it cannot be loaded."""
    try:
        command = importlib.import_module("keyswarm.sim.command")
    except Exception as exc:  # noqa: BLE001 -- at this boundary any import failure only disables `sim`
        raise KeyswarmError(f"the simulator cannot be loaded ({type(exc).__name__}: {exc})") from exc
    return command


# --- entry point --------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(load_sim=_selected_command(argv) == "sim")
    except KeyswarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2, message already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    level = args.log_level or ("info" if args.command == "node" else "warning")
    configure_logging(level)
    args.log_level = level
    try:
        return args.handler(args)
    except KeyswarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _selected_command(argv: list[str]) -> str | None:
    """The subcommand `argv` names, found without parsing (to import only what it needs)."""
    tokens = iter(argv)
    for token in tokens:
        if token == "--log-level":
            next(tokens, None)
        elif not token.startswith("-"):
            return token
    return None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,  # main() may run more than once in a process (tests)
    )


# --- handlers ------------------------------------------------------------------------


def run_node_command(args: argparse.Namespace) -> int:
    from keyswarm.config import load_config

    config = load_config(args.config)  # a bad file is reported before the driver is even imported
    from keyswarm.node.driver import run_node

    return run_node(config)


def run_up_command(args: argparse.Namespace) -> int:
    from keyswarm.node.local_network import run_up

    return run_up(
        nodes=args.nodes,
        base_port=args.base_port,
        data_dir=args.data,
        demo=args.demo,
        tokens=not args.no_tokens,
        log_level=args.log_level,
        status_interval_s=args.status_interval,
        start_timeout_s=args.start_timeout,
        stop_timeout_s=args.stop_timeout,
        out=lambda line: print(line, flush=True),  # progress shows at once, even through a pipe
    )


def run_client_command(args: argparse.Namespace) -> int:
    from keyswarm.cli_client import SESSION_OPERATIONS, run_session_command

    if args.op in SESSION_OPERATIONS:
        return run_session_command(args)
    from keyswarm.actors.messages import Echo, Health, Increment, PingPeer
    from keyswarm.client.plain import PlainClient

    match args.op:
        case "health":
            request: object = Health()
        case "echo":
            request = Echo(payload=args.text.encode("utf-8"))
        case "ping":
            request = PingPeer(target=args.target, timeout_s=args.ping_timeout)
        case "count":
            request = Increment(name=args.name, by=args.by)
        case _:  # argparse only lets the operations above through
            raise AssertionError(f"unknown client operation {args.op!r}")
    with PlainClient(args.connect, timeout_s=args.timeout) as client:
        reply = client.request(request)
    if reply.error is not None:
        code, message = describe_failure(reply.error)
        print(f"error: {code}: {message}", file=sys.stderr)
        return EXIT_FAILED
    print(render_value(reply.value))
    return EXIT_OK


def run_audit_verify_command(args: argparse.Namespace) -> int:
    from keyswarm.audit import ProgressBar, audit_log, open_log_for_audit, parallel_worth_it
    from keyswarm.crypto.certificates import network_id
    from keyswarm.enrolment import EnrolmentError, read_certificate_pem

    if args.require_certified and args.root is None:
        print("error: --require-certified needs --root ROOT.PEM (the certificates are checked against it)",
              file=sys.stderr)
        return EXIT_USAGE
    root = None
    if args.root is not None:
        try:
            root = read_certificate_pem(args.root, "root certificate", kinds=("root",))
        except EnrolmentError as exc:  # a bad argument: nothing was checked yet
            print(f"error: --root: {exc}", file=sys.stderr)
            return EXIT_USAGE
    log, where = open_log_for_audit(args.data)
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    bar = ProgressBar(sys.stderr) if show_progress else None
    try:
        parallel = parallel_worth_it(log) if args.jobs is None else args.jobs == 2
        report = audit_log(log, max_findings=args.max_problems, progress=bar, records_in_child=where if parallel else None,
                           root=root, require_certified=args.require_certified)
    finally:
        if bar is not None:
            bar.close()
        log.close()
    meta_line = f"event log {where}"
    if report.ok:
        if not args.quiet:
            what = "record, chain, signature and head" if root is None else "record, chain, signature, head and signer certificate"
            print(f"ok: {meta_line}: every {what} verifies" + ("" if root is None else f" (root of network {network_id(root)})"))
            for warning in report.warnings:
                print(f"warning: {warning}")
            print(f"checked {report.summary()}")
        return EXIT_OK
    shown = report.findings if args.all else report.findings[:1]
    if not args.quiet:
        print(f"FAILED: {meta_line}")
    for i, finding in enumerate(shown):
        label = "first broken link" if i == 0 else "also"
        print(f"{label}: {finding}")
    if not args.quiet:
        for warning in report.warnings:
            print(f"warning: {warning}")
    more = len(report.findings) - len(shown)
    if not args.quiet:
        if more or report.truncated:
            count = f"{more:,}" + (" or more" if report.truncated else "")
            hint = "" if args.all else " (--all lists them)"
            print(f"{count} more problem(s){hint}" if more else f"stopped after {len(report.findings):,} problems (--max-problems)")
        print(f"checked {report.summary()}")
    return EXIT_FAILED


def run_version_command(args: argparse.Namespace) -> int:
    print(f"keyswarm {__version__} (Python {sys.version.split()[0]})")
    return EXIT_OK


# --- showing results --------------------------------------------------------------------


def describe_failure(error: object) -> tuple[str, str]:
    """`(code, message)` of an error reply, whatever shape the client gives it."""
    if isinstance(error, dict):
        return str(error.get("code", "INTERNAL")), str(error.get("message", ""))
    code = getattr(error, "code", None)
    message = getattr(error, "message", None)
    return str(code if code is not None else type(error).__name__), str(message if message is not None else error)


def render_value(value: object) -> str:
    """One JSON line for a result message: its operation name, then its fields."""
    return json.dumps(jsonable(value), ensure_ascii=False)


def jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        shown: dict[str, object] = {}
        op = _op_of(type(value))
        if op is not None:
            shown["op"] = op
        for field in dataclasses.fields(value):
            shown[field.name] = jsonable(getattr(value, field.name))
        return shown
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 3)
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _op_of(cls: type) -> str | None:
    from keyswarm.transport.codec import op_of

    try:
        return op_of(cls)
    except KeyError:  # not a registered message
        return None
