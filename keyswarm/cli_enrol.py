"""The enrolment subcommands of `keyswarm`: init, enroll-node, enroll-client, token list / info.

Owns their command lines and how their results are shown; the work is
`keyswarm.enrolment`'s (and `keyswarm.hardware.specs`' for listing). The
rules of `keyswarm.cli` hold: exit 0 on success, 1 with one `error: ...` line
for any `KeyswarmError`, 2 for bad arguments (argparse names the argument).

Argument checks that need no I/O happen here, at parse time: names
(`[A-Za-z0-9][A-Za-z0-9._-]{0,47}`), token specs (`soft:PATH`,
`virtual:PATH[?fw=..&serial=..&latency=..]`, `yubikey:SERIAL`), environment
variable names, lifetimes. Secrets are never arguments: options ending in
`-env` name the environment variable that holds one (argv shows in `ps`).

Only argparse is imported at module level: the enrolment code (cryptography,
yubikit) is imported by the handler that runs, so `keyswarm version` and
`keyswarm node` never pay for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable

EXIT_OK = 0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_LIFETIME_DAYS = 36500


# --- argument types ----------------------------------------------------------------


def _name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a name is 1-48 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


def _env_name(text: str) -> str:
    if not _ENV_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an environment variable name")
    return text


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, got {text!r}") from None
    if not 1 <= value <= MAX_LIFETIME_DAYS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_LIFETIME_DAYS} days, got {value}")
    return value


def _token_spec(text: str) -> str:
    from keyswarm.errors import ConfigError
    from keyswarm.hardware.specs import parse_token_spec

    try:
        parse_token_spec(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("field token: ")) from None
    return text


def _slot_9a_device(text: str) -> str:
    """`--yubikey-slot-9a`: a serial (a real YubiKey), `yubikey:SERIAL` or `virtual:PATH`."""
    if text.isdigit():
        text = f"yubikey:{text}"
    if not text.startswith(("yubikey:", "virtual:")):
        raise argparse.ArgumentTypeError(f"{text!r}: give a YubiKey serial, yubikey:SERIAL or virtual:PATH")
    return _token_spec(text)


# --- the parsers ----------------------------------------------------------------------


def add_enrolment_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `init`, `enroll-node`, `enroll-client` and `token` to the `keyswarm` subcommands."""
    init = commands.add_parser(
        "init", parents=[common], help="create a network root on a token",
        description="Create a network root: the root certificate (self-signed by the token's identity key, "
        "PIV slot 9c on a YubiKey) and a new domain key sealed to the token. Writes DIR/root.pem and "
        "DIR/domain-key.sealed; prints the network id.",
    )
    init.add_argument("--token", required=True, type=_token_spec, metavar="SPEC",
                      help="soft:PATH (created if absent), virtual:PATH[?fw=5.7.2&serial=N] (created if absent) "
                      "or yubikey:SERIAL")
    init.add_argument("--network-name", required=True, metavar="NAME", help="the network's name (in the root's subject)")
    init.add_argument("--out", required=True, metavar="DIR", help="where root.pem and domain-key.sealed go")
    init.add_argument("--lifetime-days", type=_days, metavar="N", help="root certificate lifetime (default 3650)")
    init.add_argument("--algorithm", choices=("ed25519", "p256"), default=None,
                      help="identity key algorithm of a new key (default: ed25519; P-256 on YubiKey firmware < 5.7)")
    _secret_options(init, "")
    init.add_argument("--force", action="store_true",
                      help="overwrite an existing root in DIR and generate new keys on a token already in use")
    init.set_defaults(handler=run_init_command)

    node = commands.add_parser(
        "enroll-node", parents=[common], help="issue a node certificate and hand the node the domain key",
        description="The root token issues a certificate for the node token's identity key; the domain key is "
        "unsealed with the root token and sealed again to the node's token. Writes NODEDIR/node.pem, "
        "NODEDIR/root.pem and NODEDIR/domain-key.sealed; prints the node's identity URI.",
    )
    node.add_argument("--root-token", required=True, type=_token_spec, metavar="SPEC", help="the network's root token")
    node.add_argument("--root-cert", required=True, metavar="PEM", help="the root certificate (DIR/root.pem from init)")
    node.add_argument("--node-token", required=True, type=_token_spec, metavar="SPEC",
                      help="the node's token (soft and virtual ones are created if absent)")
    node.add_argument("--name", required=True, type=_name, help="the node's name, e.g. n1")
    node.add_argument("--out", required=True, metavar="NODEDIR", help="the node's directory")
    node.add_argument("--domain-key", metavar="PATH", help="the sealed domain key (default: beside --root-cert)")
    node.add_argument("--lifetime-days", type=_days, metavar="N", help="node certificate lifetime (default 365)")
    _secret_options(node, "root-")
    _secret_options(node, "node-")
    node.add_argument("--force", action="store_true", help="overwrite NODEDIR's files; re-issue for an enrolled token")
    node.set_defaults(handler=run_enroll_node_command)

    client = commands.add_parser(
        "enroll-client", parents=[common], help="issue a client certificate (key file or YubiKey slot 9a)",
        description="Issue a client certificate from the root (or an admin client) for a new Ed25519 key file, "
        "or for the key in the client's own YubiKey PIV slot 9a (generated there if the slot is empty). "
        "Writes DIR/client.pem (and DIR/root.pem when the root issues).",
    )
    client.add_argument("--issuer-token", required=True, type=_token_spec, metavar="SPEC", help="the root's or an admin's token")
    client.add_argument("--issuer-cert", required=True, metavar="PEM", help="the issuer's certificate")
    client.add_argument("--name", required=True, type=_name, help="the client's name, e.g. app1")
    client.add_argument("--out", required=True, metavar="DIR", help="where client.pem goes")
    where = client.add_mutually_exclusive_group(required=True)
    where.add_argument("--key-file", metavar="PATH", help="create the client's Ed25519 key in this new file (0600)")
    where.add_argument("--yubikey-slot-9a", type=_slot_9a_device, metavar="SERIAL|virtual:PATH",
                       help="certify the key in this YubiKey's PIV slot 9a")
    client.add_argument("--key-passphrase-env", type=_env_name, metavar="VAR", help="encrypt the key file with $VAR")
    client.add_argument("--admin", action="store_true", help="an admin certificate: may issue client certificates")
    client.add_argument("--lifetime-days", type=_days, metavar="N", help="client certificate lifetime (default 365)")
    _secret_options(client, "issuer-")
    client.add_argument("--client-management-key-env", type=_env_name, metavar="VAR",
                        help="the client YubiKey's PIV management key, hex, in $VAR (default: the factory key)")
    client.add_argument("--force", action="store_true", help="overwrite an existing client.pem / key file")
    client.set_defaults(handler=run_enroll_client_command)

    token = commands.add_parser("token", parents=[common], help="list YubiKeys, describe a token")
    actions = token.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="list connected YubiKeys")
    listing.set_defaults(handler=run_token_list_command)
    info = actions.add_parser("info", parents=[common], help="what a token is and holds (no PIN needed)")
    info.add_argument("--token", required=True, type=_token_spec, metavar="SPEC")
    info.add_argument("--passphrase-env", type=_env_name, metavar="VAR", help="a soft token's passphrase is in $VAR")
    info.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    info.set_defaults(handler=run_token_info_command)


def _secret_options(parser: argparse.ArgumentParser, prefix: str) -> None:
    who = f"the {prefix[:-1]} token's" if prefix else "the token's"
    parser.add_argument(f"--{prefix}passphrase-env", type=_env_name, metavar="VAR",
                        help=f"{who} passphrase (soft token) is in $VAR; a new soft token gets it")
    parser.add_argument(f"--{prefix}pin-env", type=_env_name, metavar="VAR",
                        help=f"{who} PIV PIN is in $VAR (default: $KEYSWARM_PIN, else a prompt on a terminal)")
    parser.add_argument(f"--{prefix}management-key-env", type=_env_name, metavar="VAR",
                        help=f"{who} PIV management key, hex, is in $VAR (default: the factory key)")


def _access(args: argparse.Namespace, spec: str, prefix: str = "") -> object:
    from keyswarm.enrolment import TokenAccess

    attr = prefix.replace("-", "_")
    return TokenAccess(
        spec=spec,
        pin_env=getattr(args, f"{attr}pin_env"),
        passphrase_env=getattr(args, f"{attr}passphrase_env"),
        management_key_env=getattr(args, f"{attr}management_key_env"),
    )


# --- handlers ---------------------------------------------------------------------------


def run_init_command(args: argparse.Namespace) -> int:
    from keyswarm.enrolment import create_network

    made = create_network(
        _access(args, args.token), network_name=args.network_name, out_dir=args.out,
        lifetime_days=args.lifetime_days, algorithm=args.algorithm, force=args.force,
    )
    _warn(made.warning)
    _show([
        ("network id", made.network_id),
        ("root", made.root_uri),
        ("root token", made.token),
        ("root certificate", str(made.root_cert_path)),
        ("domain key", f"{made.domain_key_path} (sealed to the root token)"),
    ])
    return EXIT_OK


def run_enroll_node_command(args: argparse.Namespace) -> int:
    from keyswarm.enrolment import enrol_node

    done = enrol_node(
        _access(args, args.root_token, "root-"), args.root_cert, _access(args, args.node_token, "node-"),
        name=args.name, out_dir=args.out, domain_key_path=args.domain_key,
        lifetime_days=args.lifetime_days, force=args.force,
    )
    _warn(done.warning)
    _show([
        ("node", done.uri),
        ("node token", done.token),
        ("node certificate", str(done.node_cert_path)),
        ("root certificate", str(done.root_cert_path)),
        ("domain key", f"{done.domain_key_path} (sealed to the node token)"),
    ])
    return EXIT_OK


def run_enroll_client_command(args: argparse.Namespace) -> int:
    from keyswarm.enrolment import TokenAccess, enrol_client

    slot = None
    if args.yubikey_slot_9a is not None:
        slot = TokenAccess(spec=args.yubikey_slot_9a, management_key_env=args.client_management_key_env)
    done = enrol_client(
        _access(args, args.issuer_token, "issuer-"), args.issuer_cert, name=args.name, out_dir=args.out,
        key_file=args.key_file, key_passphrase_env=args.key_passphrase_env, yubikey_slot_9a=slot,
        admin=args.admin, lifetime_days=args.lifetime_days, force=args.force,
    )
    rows = [("client", done.uri), ("key", done.key_location), ("client certificate", str(done.client_cert_path))]
    if done.root_cert_path is not None:
        rows.append(("root certificate", str(done.root_cert_path)))
    _show(rows)
    return EXIT_OK


def run_token_list_command(args: argparse.Namespace) -> int:
    from keyswarm.errors import TokenError
    from keyswarm.hardware.specs import list_yubikeys

    ykman_log = logging.getLogger("ykman")
    level = ykman_log.level
    ykman_log.setLevel(logging.CRITICAL)  # ykman logs a traceback when PC/SC is down; we say it in one line
    try:
        devices = list_yubikeys()
    except TokenError as exc:
        _warn(str(exc))
        devices = []
    finally:
        ykman_log.setLevel(level)
    if not devices:
        print("no YubiKey found")
    for device in devices:
        serial = "-" if device.serial is None else str(device.serial)
        print(f"{device.spec:<20} serial {serial:<10} firmware {device.firmware:<8} {device.name}")
    print("(soft and virtual tokens are files: they are not listed; see `keyswarm token info --token SPEC`)",
          file=sys.stderr)
    return EXIT_OK


def run_token_info_command(args: argparse.Namespace) -> int:
    from keyswarm.enrolment import TokenAccess, inspect_token

    report = inspect_token(TokenAccess(spec=args.token, passphrase_env=args.passphrase_env))
    if args.json:
        shown = {field: getattr(report, field) for field in report.__dataclass_fields__}
        shown["certificates"] = dict(report.certificates)
        print(json.dumps(shown))
        return EXIT_OK
    rows = [
        ("token", report.spec),
        ("kind", report.kind + ("" if report.hardware_protected else " (keys NOT hardware-protected)")),
        ("serial", _or_dash(report.serial)),
        ("firmware", _or_dash(report.firmware)),
        ("algorithms", f"identity {report.identity_algorithm}, sealing {report.sealing_algorithm}"),
        ("identity key", _or_dash(report.identity_fingerprint, "none (keyswarm init or enroll-node generates it)")),
        ("sealing key", _or_dash(report.sealing_fingerprint, "none")),
    ]
    if report.pin_tries_left is not None:
        rows.append(("PIN tries left", str(report.pin_tries_left)))
    for slot, description in report.certificates or (("certificates", "none"),):
        rows.append((f"{slot} certificate" if slot != "certificates" else slot, description))
    _show(rows)
    return EXIT_OK


# --- showing results -------------------------------------------------------------------


def _show(rows: list[tuple[str, str]], out: Callable[[str], None] = print) -> None:
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        out(f"{label + ':':<{width}} {value}")


def _or_dash(value: object, empty: str = "-") -> str:
    return empty if value is None else str(value)


def _warn(text: str | None) -> None:
    if text:
        print(f"warning: {text}", file=sys.stderr)
