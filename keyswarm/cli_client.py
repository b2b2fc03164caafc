"""`keyswarm client` key and crypto commands: in a session, with the exit codes scripts use.

Wired into `keyswarm.cli`'s `client` subcommand (`add_session_options`,
`add_session_operations`, `run_session_command`); the plaintext
operations (`health`, `echo`, `ping`, `count`) stay in `keyswarm.cli`.

Rules:
- Exit codes (docs/cli.md): 0 ok; 1 operation error; 2 usage; 3
  authentication or certificate failure; 4 not found; 5 forbidden; 6
  decrypt failed; 7 unavailable, busy or timeout. A failure prints one line
  `error: CODE: message` on stderr.
- `encrypt`, `decrypt`, `sign`, `verify`, `hmac` read their data from stdin;
  `encrypt` writes the text form `ks:v1:...` (one line) unless `--binary`;
  `decrypt` reads either form (text unless `--binary`) and writes the
  plaintext bytes as they are. With `--envelope` (large data), `encrypt`
  seals stdin in this process under a data key the node wraps and writes
  the binary envelope, and `decrypt --envelope` opens one.
- `--json` prints one JSON object per result (bytes as base64, version ids
  as hex).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import sys
from typing import Any

from keyswarm.errors import ErrorCode, KeyswarmError

ALGORITHMS = ("aes256-gcm", "chacha20-poly1305", "ed25519", "ecdsa-p256", "hmac-sha256")
SESSION_OPERATIONS = frozenset({"key", "encrypt", "decrypt", "rewrap", "sign", "verify", "hmac", "datakey", "policy",
                                "revoke", "revoke-node"})


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None,
                                validate=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not base64: {text[:40]!r}") from None


def _rule(text: str) -> tuple[str, tuple[str, ...]]:
    pattern, sep, ops = text.partition(":")
    if not sep or not pattern.strip():
        raise argparse.ArgumentTypeError(f"a rule is 'PATTERN: op, op, ...', got {text!r}")
    parsed = tuple(op.strip() for op in ops.replace(" ", ",").split(",") if op.strip())
    if not parsed:
        raise argparse.ArgumentTypeError(f"rule {text!r} names no operation")
    return pattern.strip(), parsed


def add_session_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The authentication and output options; `suppress` for the per-operation copies."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--root-cert", metavar="PEM", default=default(None), help="the network's root certificate (pinned)")
    parser.add_argument("--cert", metavar="PEM", default=default(None), help="this client's certificate")
    parser.add_argument("--key", metavar="FILE", default=default(None), help="this client's key file (PKCS#8)")
    parser.add_argument("--yubikey", metavar="SPEC", default=default(None),
                        help="sign with the key in PIV slot 9a of this YubiKey (yubikey:SERIAL or virtual:PATH)")
    parser.add_argument("--key-passphrase-env", metavar="VAR", default=default(None),
                        help="environment variable holding the key file's passphrase")
    parser.add_argument("--yubikey-pin-env", metavar="VAR", default=default(None),
                        help="environment variable holding the YubiKey's PIN")
    parser.add_argument("--revoked-certs", metavar="FILE", default=default(None),
                        help="refuse node / sub-key certificates with these SHA-256 fingerprints (one per line, "
                             "hex, colons allowed; # comments)")
    parser.add_argument("--json", action="store_true", default=default(False), help="print results as JSON")
    parser.add_argument("--retries", type=int, metavar="N", default=default(3),
                        help="retries of retryable errors and timeouts (default 3)")


def add_session_operations(ops: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    key = ops.add_parser("key", parents=[connection], help="manage named keys (in a session)")
    keys = key.add_subparsers(dest="key_op", metavar="KEY_OPERATION", required=True)
    create = keys.add_parser("create", parents=[connection], help="create key NAME")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--algorithm", required=True, choices=ALGORITHMS)
    for name, what in (("rotate", "add a new primary version"), ("get", "show the key"), ("disable", "disable it"),
                       ("enable", "enable it again"), ("delete", "delete it (if deletion is allowed)")):
        sub = keys.add_parser(name, parents=[connection], help=f"{what}")
        sub.add_argument("name", metavar="NAME")
    listing = keys.add_parser("list", parents=[connection], help="list key names")
    listing.add_argument("--prefix", default="", help="only names starting with this")
    config = keys.add_parser("config", parents=[connection], help="change a key's settings")
    config.add_argument("name", metavar="NAME")
    config.add_argument("--min-decryption-version", type=int, metavar="N", default=None)
    config.add_argument("--deletion-allowed", type=_bool, metavar="true|false", default=None)
    config.add_argument("--auto-rotate-period-s", type=float, metavar="S", default=None)

    encrypt = ops.add_parser("encrypt", parents=[connection], help="encrypt stdin under NAME (prints ks:v1:...)")
    encrypt.add_argument("name", metavar="NAME")
    decrypt = ops.add_parser("decrypt", parents=[connection], help="decrypt a ciphertext on stdin")
    decrypt.add_argument("--name", default="", help="the key the ciphertext must be under (default: the one it names)")
    rewrap = ops.add_parser("rewrap", parents=[connection], help="re-seal a ciphertext on stdin under its key's primary")
    rewrap.add_argument("--name", default="")
    for sub in (encrypt, decrypt, rewrap):
        sub.add_argument("--context", default="", help="associated context (UTF-8); decrypt needs the same")
        sub.add_argument("--binary", action="store_true", help="raw ciphertext bytes instead of the ks:v1: text form")
    encrypt.add_argument("--envelope", action="store_true",
                         help="for large data: seal stdin here under a data key NAME wraps and write the binary "
                              "envelope (policy: datakey); docs/protocol.md 11.6")
    decrypt.add_argument("--envelope", action="store_true",
                         help="stdin is a binary envelope from encrypt --envelope (policy: decrypt on its key)")
    sign = ops.add_parser("sign", parents=[connection], help="sign stdin with NAME (prints base64)")
    sign.add_argument("name", metavar="NAME")
    sign.add_argument("--prehashed", action="store_true", help="stdin is the SHA-256 digest (ecdsa-p256)")
    verify = ops.add_parser("verify", parents=[connection], help="verify a signature or MAC of stdin (exit 1 when invalid)")
    verify.add_argument("name", metavar="NAME")
    verify.add_argument("--signature", type=_base64, required=True, metavar="B64")
    verify.add_argument("--version-id", default="", metavar="HEX", help="the version that signed (default: the primary)")
    verify.add_argument("--prehashed", action="store_true")
    mac = ops.add_parser("hmac", parents=[connection], help="HMAC of stdin under NAME (prints base64)")
    mac.add_argument("name", metavar="NAME")
    datakey = ops.add_parser("datakey", parents=[connection], help="a fresh data key and its ciphertext under NAME")
    datakey.add_argument("name", metavar="NAME")
    datakey.add_argument("--bits", type=int, choices=(128, 192, 256, 512), default=256)
    datakey.add_argument("--context", default="")

    policy = ops.add_parser("policy", parents=[connection], help="admin: set a client's policy")
    policies = policy.add_subparsers(dest="policy_op", metavar="POLICY_OPERATION", required=True)
    set_policy = policies.add_parser("set", parents=[connection], help="replace CLIENT's rules")
    set_policy.add_argument("client", metavar="CLIENT")
    set_policy.add_argument("--rule", type=_rule, action="append", default=[], metavar="'PATTERN: op, op'",
                            help="one rule (repeatable); none: the client may do nothing")
    revoke = ops.add_parser("revoke", parents=[connection], help="admin: revoke CLIENT everywhere")
    revoke.add_argument("client", metavar="CLIENT")
    revoke.add_argument("--reason", default="")
    revoke_node = ops.add_parser("revoke-node", parents=[connection],
                                 help="admin: revoke NODE for good (it refuses new sessions, closes its own)")
    revoke_node.add_argument("node", metavar="NODE")
    revoke_node.add_argument("--reason", default="")


# --- running ------------------------------------------------------------------------------


class UsageError(Exception):
    """Arguments that parse but do not make sense together: exit 2."""


def run_session_command(args: argparse.Namespace) -> int:
    from keyswarm.client.errors import EXIT_USAGE, code_of, exit_code_for

    try:
        return _run(args)
    except UsageError as exc:
        print(f"keyswarm client: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyswarmError as exc:
        message = getattr(exc, "message", None) or str(exc)
        print(f"error: {code_of(exc)}: {message}", file=sys.stderr)
        return exit_code_for(exc)


def _connect(args: argparse.Namespace) -> Any:
    from keyswarm.client.sync import Client
    from keyswarm.transport.malloc_tuning import keep_large_buffers

    keep_large_buffers()  # stdin may be large: its frames reuse heap pages (docs/operations.md, "Memory")
    if not args.cert or not args.root_cert:
        raise UsageError("key and crypto operations need --cert PEM and --root-cert PEM (and --key or --yubikey)")
    if (args.key is None) == (args.yubikey is None):
        raise UsageError("give exactly one of --key FILE and --yubikey SPEC")
    if args.retries < 0:
        raise UsageError("--retries must be 0 or more")
    if args.key is not None:
        passphrase = _env(args.key_passphrase_env, "--key-passphrase-env") if args.key_passphrase_env else None
        key: object = args.key
    else:
        from keyswarm.client.session import slot_9a_signer

        pin = _env(args.yubikey_pin_env, "--yubikey-pin-env") if args.yubikey_pin_env else None
        key, passphrase = slot_9a_signer(args.yubikey, pin), None
    return Client.connect(args.connect, root_certificate=args.root_cert, client_certificate=args.cert, key=key,
                          passphrase=passphrase, timeout_s=args.timeout, retries=args.retries,
                          revoked_certificates=_revoked_list(args.revoked_certs))


#: A revocation list file larger than this is refused (a fingerprint line is ~100 bytes).
MAX_REVOKED_LIST_BYTES = 4 * 1024 * 1024


def _revoked_list(path: str | None) -> list[str]:
    """The fingerprints of a `--revoked-certs` file: one per line, blank lines and # comments skipped."""
    if not path:
        return []
    from keyswarm.client.session import CredentialsError

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_REVOKED_LIST_BYTES + 1)
    except OSError as exc:
        raise CredentialsError(f"--revoked-certs {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_REVOKED_LIST_BYTES:
        raise CredentialsError(f"--revoked-certs {path}: over {MAX_REVOKED_LIST_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CredentialsError(f"--revoked-certs {path}: not ASCII text") from None
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line.removeprefix("sha256 Fingerprint=").removeprefix("SHA256 Fingerprint=") for line in lines if line]


def _env(name: str, option: str) -> str:
    from keyswarm.client.session import CredentialsError

    value = os.environ.get(name)
    if value is None:
        raise CredentialsError(f"{option} {name}: the environment variable is not set")
    return value


def _stdin() -> bytes:
    return sys.stdin.buffer.read()


def _read_ciphertext(binary: bool) -> bytes:
    from keyswarm.crypto.ciphertext import from_text

    data = _stdin()
    if binary:
        return data
    try:
        return from_text(data.decode("ascii").strip())
    except UnicodeDecodeError:
        raise KeyswarmError("stdin is not a ks:v1: text ciphertext (use --binary for raw bytes)") from None


def _write(data: bytes) -> None:
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:  # a text stream without bytes (tests): the bytes as text
        sys.stdout.write(data.decode("utf-8", "replace"))
    else:
        out.write(data)
        out.flush()


def _print_json(value: object) -> None:
    print(json.dumps(_jsonable(value), ensure_ascii=False))


def _jsonable(value: object, field: str = "") -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex() if field.endswith("version_id") else base64.b64encode(value).decode("ascii")
    if isinstance(value, list | tuple):
        return [_jsonable(v, field) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, ErrorCode):
        return str(value)
    return value


def _show_key(info: Any, as_json: bool) -> None:
    if as_json:
        _print_json(info)
        return
    state = "disabled" if info.disabled else "enabled"
    print(f"{info.name} {info.algorithm} {state} primary=v{info.primary} ({info.primary_version_id.hex()}) "
          f"versions={len(info.versions)} min_decryption_version={info.min_decryption_version} "
          f"deletion_allowed={str(info.deletion_allowed).lower()} auto_rotate_period_s={info.auto_rotate_period_s:g}")


def _run(args: argparse.Namespace) -> int:
    from keyswarm.crypto.ciphertext import to_text

    as_json = args.json
    with _connect(args) as client:
        match args.op:
            case "key":
                match args.key_op:
                    case "create":
                        _show_key(client.create_key(args.name, args.algorithm), as_json)
                    case "rotate":
                        _show_key(client.rotate_key(args.name), as_json)
                    case "get":
                        _show_key(client.get_key(args.name), as_json)
                    case "disable":
                        _show_key(client.disable_key(args.name), as_json)
                    case "enable":
                        _show_key(client.enable_key(args.name), as_json)
                    case "config":
                        _show_key(client.configure_key(
                            args.name, min_decryption_version=args.min_decryption_version,
                            deletion_allowed=args.deletion_allowed, auto_rotate_period_s=args.auto_rotate_period_s,
                        ), as_json)
                    case "delete":
                        result = client.delete_key(args.name)
                        _print_json({"deleted": result.name}) if as_json else print(f"deleted {result.name}")
                    case "list":
                        names = client.list_keys(args.prefix)
                        if as_json:
                            _print_json({"names": names})
                        else:
                            for name in names:
                                print(name)
            case "encrypt" if args.envelope:
                sealed = client.encrypt_envelope(args.name, _stdin(), args.context.encode("utf-8"))
                _print_json({"envelope": base64.b64encode(sealed).decode("ascii")}) if as_json else _write(sealed)
            case "decrypt" if args.envelope:
                plaintext = client.decrypt_envelope(_stdin(), args.context.encode("utf-8"))
                _print_json({"plaintext": plaintext}) if as_json else _write(plaintext)
            case "encrypt" | "rewrap":
                if args.op == "encrypt":
                    ciphertext = client.encrypt(args.name, _stdin(), args.context.encode("utf-8"))
                else:
                    ciphertext = client.rewrap(_read_ciphertext(args.binary), args.context.encode("utf-8"),
                                               name=args.name)
                if as_json:
                    _print_json({"ciphertext": to_text(ciphertext)})
                elif args.binary:
                    _write(ciphertext)
                else:
                    print(to_text(ciphertext))
            case "decrypt":
                plaintext = client.decrypt(_read_ciphertext(args.binary), args.context.encode("utf-8"),
                                           name=args.name)
                _print_json({"plaintext": plaintext}) if as_json else _write(plaintext)
            case "sign":
                signature = client.sign(args.name, _stdin(), prehashed=args.prehashed)
                text = base64.b64encode(signature).decode("ascii")
                _print_json({"signature": text}) if as_json else print(text)
            case "verify":
                try:
                    version_id = bytes.fromhex(args.version_id)
                except ValueError:
                    raise UsageError(f"--version-id: not hex: {args.version_id!r}") from None
                valid = client.verify(args.name, _stdin(), args.signature, version_id=version_id,
                                      prehashed=args.prehashed)
                _print_json({"valid": valid}) if as_json else print("valid" if valid else "invalid")
                return 0 if valid else 1
            case "hmac":
                text = base64.b64encode(client.hmac(args.name, _stdin())).decode("ascii")
                _print_json({"mac": text}) if as_json else print(text)
            case "datakey":
                result = client.datakey(args.name, args.bits, args.context.encode("utf-8"))
                shown = {"plaintext": base64.b64encode(result.plaintext).decode("ascii"),
                         "ciphertext": to_text(result.ciphertext), "version_id": result.version_id.hex()}
                if as_json:
                    _print_json(shown)
                else:
                    print(f"plaintext: {shown['plaintext']}\nciphertext: {shown['ciphertext']}")
            case "policy":
                result = client.set_policy(args.client, args.rule)
                if as_json:
                    _print_json(result)
                else:
                    for rule in result.rules:
                        print(f"{result.client} {rule.pattern}: {', '.join(rule.ops)}")
            case "revoke":
                result = client.revoke_client(args.client, reason=args.reason)
                _print_json({"revoked": result.client}) if as_json else print(f"revoked {result.client}")
            case "revoke-node":
                node = client.revoke_node(args.node, reason=args.reason)
                _print_json({"revoked_node": node.node}) if as_json else print(f"revoked node {node.node}")
            case _:
                raise AssertionError(f"unknown client operation {args.op!r}")
    return 0
