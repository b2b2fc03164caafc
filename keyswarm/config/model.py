"""The typed shape of a node's configuration: one frozen dataclass per TOML section.

Owns: every section and field, every default (the defaults ARE the `lan`
profile; `profiles.py` derives `wan` and `sim` from them), and every rule a
value must keep.

Rules:
- The unit is in the field name (`_s`, `_ms`, `_bytes`, `_percent`); a comment
  after every field says what it means (memberlist's DefaultLANConfig style).
- Every check runs in `__post_init__`, so a config built in code is checked
  exactly like one read from a file. No globals, no singletons.
- Types are strict: a bool is not an int; an int is accepted for a float field
  and stored as a float; a string is never a number; NaN and infinities are
  refused.
- A failed check raises `ConfigError` naming the field relative to the object
  that owns it (`probe_interval_s`). Whoever holds the object re-scopes the
  error with `rescope` (`gossip.probe_interval_s`, plus the file name).
- Bounds are data (`setting(..., minimum=..., maximum=...)`) so that the
  documentation test can read them; checks that span fields live in each
  class's `_check_across_fields`.
"""

import dataclasses
import ipaddress
import math
import re
import typing
from collections.abc import Callable
from typing import Any

from keyswarm.errors import ConfigError

#: Profiles a config may name; `profiles.py` holds their values.
PROFILE_NAMES = ("lan", "wan", "sim")

#: Durability levels a write request may ask for (DESIGN section 6).
DURABILITY_LEVELS = ("local", "one", "quorum")

_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_IPC_PATH_MAX_BYTES = 107  # sun_path is 108 bytes on Linux, one for the NUL
_MAX_PATH_BYTES = 4096


# --- errors -----------------------------------------------------------------


def config_error(field: str | None, message: str) -> ConfigError:
    """A `ConfigError` about `field` (relative to the object being checked)."""
    return ConfigError(message, field=field)


def rescope(exc: ConfigError, *, prefix: str | None = None, file: str | None = None) -> ConfigError:
    """`exc` again, its field put under `prefix` and its file set if it had none.

    `rescope(err("probe_interval_s"), prefix="gossip", file="node.toml")` names
    `gossip.probe_interval_s` in `node.toml`. Raise the result `from exc`.
    """
    where = ", ".join(part for part in (exc.file and f"file {exc.file}", exc.field and f"field {exc.field}") if part)
    text = str(exc)
    reason = text[len(where) + 2 :] if where and text.startswith(where + ": ") else text
    field = exc.field
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    return ConfigError(reason, file=exc.file or file, field=field)


def describe_value(value: object) -> str:
    """`str 'abc'`, `bool True`: the type and a short repr, for error messages."""
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{type(value).__name__} {shown}"


# --- field declarations -----------------------------------------------------


def setting(
    default: Any = dataclasses.MISSING,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: Callable[[str], str | None] | None = None,
) -> Any:
    """A dataclass field with its bounds recorded as metadata.

    `minimum`/`maximum` are inclusive, `above`/`below` exclusive. `check`
    returns None for a good string or the reason it is bad. No default means
    the field is required.
    """
    rules = {"minimum": minimum, "maximum": maximum, "above": above, "below": below, "choices": choices, "check": check}
    return dataclasses.field(default=default, metadata={k: v for k, v in rules.items() if v is not None})


def field_rule(field: dataclasses.Field) -> str:
    """The field's bounds as text (`> 0, <= 3600`), as the docs table shows them."""
    meta = field.metadata
    parts = []
    for key, relation in (("above", ">"), ("minimum", ">="), ("below", "<"), ("maximum", "<=")):
        if key in meta:
            parts.append(f"{relation} {format_bound(meta[key])}")
    if "choices" in meta:
        parts.append("one of " + ", ".join(f'"{c}"' for c in meta["choices"]))
    if "check" in meta:
        parts.append(meta["check"].__doc__.strip().rstrip("."))
    return ", ".join(parts)


def format_bound(number: float) -> str:
    """`4_294_967_295`, `0.5`: a bound as a reader (and TOML) writes it."""
    return f"{int(number):_}" if float(number).is_integer() else repr(float(number))


_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _coerce(kind: Any, value: object, name: str) -> object:
    """`value` checked against the annotation `kind` (int to float widened)."""
    if kind is bool:
        ok = type(value) is bool
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                value = float(value)  # type: ignore[arg-type]
            except OverflowError:
                raise config_error(name, f"number out of range: {describe_value(value)}") from None
            if not math.isfinite(value):
                raise config_error(name, f"must be a finite number, got {value!r}")
    elif kind is str:
        ok = isinstance(value, str)
    elif typing.get_origin(kind) is tuple:
        (item_kind, _ellipsis) = typing.get_args(kind)
        ok = isinstance(value, (tuple, list)) and all(isinstance(item, item_kind) for item in value)
        if ok:
            return tuple(value)  # type: ignore[arg-type]
        raise config_error(name, f"expected a sequence of {item_kind.__name__}, got {describe_value(value)}")
    else:
        ok = isinstance(value, kind)
        if not ok:
            raise config_error(name, f"expected {kind.__name__}, got {describe_value(value)}")
    if not ok:
        raise config_error(name, f"expected {_KIND_NAMES[kind]}, got {describe_value(value)}")
    return value


def _check_bounds(field: dataclasses.Field, value: object) -> None:
    meta, name = field.metadata, field.name
    if isinstance(value, (int, float)):
        if "above" in meta and not value > meta["above"]:
            raise config_error(name, f"must be greater than {format_bound(meta['above'])}, got {value!r}")
        if "minimum" in meta and not value >= meta["minimum"]:
            raise config_error(name, f"must be at least {format_bound(meta['minimum'])}, got {value!r}")
        if "below" in meta and not value < meta["below"]:
            raise config_error(name, f"must be less than {format_bound(meta['below'])}, got {value!r}")
        if "maximum" in meta and not value <= meta["maximum"]:
            raise config_error(name, f"must be at most {format_bound(meta['maximum'])}, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise config_error(name, f"must be one of {', '.join(meta['choices'])}, got {value!r}")
    if "check" in meta:
        reason = meta["check"](value)
        if reason is not None:
            raise config_error(name, f"{reason}, got {value!r}")


class _Checked:
    """Base of every config dataclass: type and bound checks on construction."""

    __slots__ = ()

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            checked = _coerce(field.type, value, field.name)
            if checked is not value:
                object.__setattr__(self, field.name, checked)
            _check_bounds(field, checked)
        self._check_across_fields()

    def _check_across_fields(self) -> None:
        """Rules that span fields; raise `config_error(field, ...)`."""

    def _require_order(self, low: str, high: str, *, strict: bool) -> None:
        """`low < high` (or `<=`), reported against `low`."""
        a, b = getattr(self, low), getattr(self, high)
        if (a >= b) if strict else (a > b):
            relation = "less than" if strict else "at most"
            raise config_error(low, f"must be {relation} {high} ({b!r}), got {a!r}")


# --- string checks ----------------------------------------------------------


def check_node_id(value: str) -> str | None:
    """1-64 characters from A-Z a-z 0-9 _ . -, not only dots."""
    if not _NODE_ID.fullmatch(value) or set(value) == {"."}:
        return "node ids are 1-64 characters from A-Z a-z 0-9 _ . - (not only dots)"
    return None


def _check_endpoint(value: str, *, wildcard_host: bool) -> str | None:
    if value.startswith("ipc://"):
        path = value[len("ipc://") :]
        if not path or "\x00" in path or len(path.encode("utf-8", "surrogatepass")) > _IPC_PATH_MAX_BYTES:
            return f"an ipc:// endpoint needs a path of 1-{_IPC_PATH_MAX_BYTES} bytes without NUL"
        return None
    if not value.startswith("tcp://"):
        return "expected tcp://HOST:PORT or ipc://PATH"
    host, colon, port = value[len("tcp://") :].rpartition(":")
    if not colon or not _PORT.fullmatch(port):
        return "expected tcp://HOST:PORT with a decimal port"
    if not 1 <= int(port) <= 65535:
        return "port must be 1-65535"
    if host == "*":
        return None if wildcard_host else "a peer endpoint needs a real host, not *"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "malformed IPv6 address"
        return None
    if ":" in host:
        return "IPv6 addresses go in brackets: tcp://[::1]:PORT"
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return "malformed host name"
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "malformed IPv4 address"
    return None


def check_bind_endpoint(value: str) -> str | None:
    """tcp://HOST:PORT (HOST may be *), port 1-65535; or ipc://PATH."""
    return _check_endpoint(value, wildcard_host=True)


def check_peer_endpoint(value: str) -> str | None:
    """tcp://HOST:PORT, port 1-65535; or ipc://PATH."""
    return _check_endpoint(value, wildcard_host=False)


def check_path(value: str) -> str | None:
    """a path without NUL, at most 4096 bytes ("" = none)."""
    if "\x00" in value or len(value.encode("utf-8", "surrogatepass")) > _MAX_PATH_BYTES:
        return f"a path has no NUL and at most {_MAX_PATH_BYTES} bytes"
    return None


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_env_name(value: str) -> str | None:
    """the name of an environment variable: A-Z a-z 0-9 _, not starting with a digit ("" = none)."""
    if value and not _ENV_NAME.fullmatch(value):
        return "an environment variable name is 1-128 of A-Z a-z 0-9 _, not starting with a digit"
    return None


def check_token_spec(value: str) -> str | None:
    """soft:PATH, virtual:PATH[?fw=F&serial=N&latency=L] or yubikey:[SERIAL] ("" = no token)."""
    if not value:
        return None
    if "\x00" in value or len(value.encode("utf-8", "surrogatepass")) > _MAX_PATH_BYTES:
        return f"a token spec has no NUL and at most {_MAX_PATH_BYTES} bytes"
    # Imported here: only a config that names a token pays for the hardware layer.
    from keyswarm.hardware.specs import parse_token_spec

    try:
        parse_token_spec(value)
    except ConfigError as exc:
        return str(exc).removeprefix("field token: ").removeprefix(f"token spec {value!r}: ")
    return None


def endpoints_overlap(a: str, b: str) -> bool:
    """True when binding both would collide: same endpoint, or a wildcard host on the same port."""
    if a == b:
        return True
    if a.startswith("tcp://") and b.startswith("tcp://"):
        host_a, _, port_a = a[6:].rpartition(":")
        host_b, _, port_b = b[6:].rpartition(":")
        wildcards = ("*", "0.0.0.0", "[::]")
        return port_a == port_b and (host_a in wildcards or host_b in wildcards)
    return False


# --- sections ---------------------------------------------------------------

_HOUR_S = 3600.0
_DAY_S = 86400.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeSection(_Checked):
    """`[node]`: who this node is and where it listens."""

    id: str = setting(check=check_node_id)  # required; the node's name in the network
    client_endpoint: str = setting("tcp://127.0.0.1:7001", check=check_bind_endpoint)  # client ROUTER bind address
    peer_endpoint: str = setting("tcp://127.0.0.1:7101", check=check_bind_endpoint)  # peer ROUTER bind address
    data_dir: str = setting("", check=check_path)  # directory of the LMDB log and sealed secrets; "" = none yet

    def _check_across_fields(self) -> None:
        if endpoints_overlap(self.client_endpoint, self.peer_endpoint):
            raise config_error("peer_endpoint", f"collides with client_endpoint {self.client_endpoint!r}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig(_Checked):
    """`[[peers]]`: one static peer (a seed); any reachable seed suffices to join."""

    id: str = setting(check=check_node_id)  # required; the peer's node id
    endpoint: str = setting(check=check_peer_endpoint)  # required; the peer's peer_endpoint


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig(_Checked):
    """`[limits]`: caps on what a client or peer may send; past them: TOO_LARGE / BAD_REQUEST."""

    max_frame_bytes: int = setting(16 * 1024 * 1024, minimum=1024, maximum=1 << 30)  # bytes in one ZeroMQ frame
    max_depth: int = setting(16, minimum=1, maximum=256)  # msgpack nesting levels
    max_container_len: int = setting(100_000, minimum=1, maximum=(1 << 32) - 1)  # items in one msgpack array or map
    max_str_bytes: int = setting(1024 * 1024, minimum=1, maximum=(1 << 32) - 1)  # bytes in one msgpack str
    max_bin_bytes: int = setting(16 * 1024 * 1024, minimum=1, maximum=(1 << 32) - 1)  # bytes in one msgpack bin
    max_batch_items: int = setting(1000, minimum=1, maximum=1_000_000)  # items in one batch request
    max_key_name_bytes: int = setting(256, minimum=1, maximum=4096)  # UTF-8 bytes in a named key's name
    client_inflight_max: int = setting(1024, minimum=1, maximum=1_000_000)  # requests in flight per client before BUSY
    mailbox_capacity: int = setting(10_000, minimum=1, maximum=10_000_000)  # messages queued per actor before BUSY

    def _check_across_fields(self) -> None:
        # A batch is one msgpack array: a bigger batch limit could never be reached.
        self._require_order("max_batch_items", "max_container_len", strict=False)
        self._require_order("max_key_name_bytes", "max_str_bytes", strict=False)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TransportConfig(_Checked):
    """`[transport]`: ZeroMQ socket options and the receive loop."""

    sndhwm: int = setting(10_000, minimum=1, maximum=10_000_000)  # messages queued per outgoing pipe (0 = unbounded: refused)
    rcvhwm: int = setting(10_000, minimum=1, maximum=10_000_000)  # messages queued per incoming pipe
    linger_ms: int = setting(0, minimum=0, maximum=60_000)  # ms unsent messages survive close (0 = drop at once)
    connect_timeout_s: float = setting(30.0, above=0, maximum=_HOUR_S)  # s to establish a peer connection
    reconnect_ivl_ms: int = setting(100, minimum=1, maximum=3_600_000)  # ms before the first reconnect attempt
    reconnect_ivl_max_ms: int = setting(5000, minimum=1, maximum=3_600_000)  # ms cap of the reconnect backoff
    drain_batch: int = setting(1024, minimum=1, maximum=1_000_000)  # messages read per wake-up before yielding

    def _check_across_fields(self) -> None:
        self._require_order("reconnect_ivl_ms", "reconnect_ivl_max_ms", strict=False)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeConfig(_Checked):
    """`[runtime]`: supervision, shutdown and the entropy source."""

    supervisor_max_restarts: int = setting(5, minimum=0, maximum=1000)  # restarts of one actor per window before `degraded`
    supervisor_window_s: float = setting(60.0, above=0, maximum=_DAY_S)  # s over which restarts are counted
    restart_backoff_initial_s: float = setting(0.1, above=0, maximum=_HOUR_S)  # s before the first restart
    restart_backoff_max_s: float = setting(10.0, above=0, maximum=_HOUR_S)  # s cap of the doubling restart backoff
    shutdown_grace_s: float = setting(5.0, above=0, maximum=_HOUR_S)  # s to drain in-flight work on shutdown
    allow_insecure_entropy: bool = setting(False)  # accept seeded (simulator) randomness; only under profile "sim"

    def _check_across_fields(self) -> None:
        self._require_order("restart_backoff_initial_s", "restart_backoff_max_s", strict=False)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GossipConfig(_Checked):
    """`[gossip]`: SWIM + Lifeguard membership (figures from memberlist's DefaultLANConfig)."""

    probe_interval_s: float = setting(1.0, above=0, maximum=_HOUR_S)  # s between probes of one random member
    probe_timeout_s: float = setting(0.5, above=0, maximum=_HOUR_S)  # s to wait for a direct ack before indirect probes
    indirect_probes: int = setting(3, minimum=0, maximum=64)  # members asked to probe on our behalf after a missed ack
    suspicion_mult: int = setting(4, minimum=1, maximum=100)  # suspicion timeout = mult * log10(n) * probe interval
    suspicion_max_timeout_mult: int = setting(6, minimum=1, maximum=100)  # upper bound = this * minimum suspicion timeout
    retransmit_mult: int = setting(4, minimum=1, maximum=100)  # piggyback an update mult * log10(n+1) times
    gossip_interval_s: float = setting(0.2, above=0, maximum=_HOUR_S)  # s between gossip rounds
    gossip_nodes: int = setting(3, minimum=1, maximum=64)  # members gossiped to per round
    awareness_max_multiplier: int = setting(8, minimum=1, maximum=100)  # Lifeguard: max stretch of the probe interval when unhealthy

    def _check_across_fields(self) -> None:
        self._require_order("probe_timeout_s", "probe_interval_s", strict=True)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KeyCacheConfig(_Checked):
    """`[key_cache]`: the LRU of unwrapped named-key material on the hot path."""

    max_age_s: float = setting(3600.0, above=0, maximum=365 * _DAY_S)  # s an unwrapped key stays cached
    max_entries: int = setting(10_000, minimum=1, maximum=10_000_000)  # key versions cached at most


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig(_Checked):
    """`[client]`: the client library's retries and timeouts (also used by `keyswarm client`)."""

    retries: int = setting(3, minimum=0, maximum=100)  # retries after the first attempt of a retryable request
    connection_timeout_s: float = setting(30.0, above=0, maximum=_HOUR_S)  # s to connect and finish the handshake
    request_timeout_s: float = setting(5.0, above=0, maximum=_HOUR_S)  # s to wait for one reply
    backoff_initial_s: float = setting(0.05, above=0, maximum=_HOUR_S)  # s before the first retry (jittered)
    backoff_max_s: float = setting(2.0, above=0, maximum=_HOUR_S)  # s cap of the doubling retry backoff

    def _check_across_fields(self) -> None:
        self._require_order("backoff_initial_s", "backoff_max_s", strict=False)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig(_Checked):
    """`[monitor]`: alert thresholds on the node's own metrics."""

    cpu_warn_percent: float = setting(70.0, above=0, maximum=100)  # % CPU that raises a warning
    cpu_critical_percent: float = setting(90.0, above=0, maximum=100)  # % CPU that raises a critical alert
    response_time_ms: float = setting(1000.0, above=0, maximum=3_600_000)  # ms latency EWMA that raises an alert
    error_rate_percent: float = setting(1.0, above=0, maximum=100)  # % of requests failing that raises an alert

    def _check_across_fields(self) -> None:
        self._require_order("cpu_warn_percent", "cpu_critical_percent", strict=True)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig(_Checked):
    """`[storage]`: the LMDB event log and its group commit."""

    partitions: int = setting(64, minimum=1, maximum=65536)  # key partitions; fixed at genesis (u16 in the LMDB key)
    group_commit_max_delay_ms: float = setting(2.0, minimum=0, maximum=1000)  # ms an append waits for a batch (0 = none)
    group_commit_max_events: int = setting(1000, minimum=1, maximum=1_000_000)  # events per fsynced commit at most
    map_size_bytes: int = setting(1 << 30, minimum=1 << 20, maximum=1 << 44)  # initial LMDB map size; doubled when full


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionsConfig(_Checked):
    """`[sessions]`: client sessions, handshakes and replay windows."""

    max_sessions: int = setting(100_000, minimum=1, maximum=10_000_000)  # open sessions held at most (oldest evicted)
    session_ttl_s: float = setting(3600.0, above=0, maximum=30 * _DAY_S)  # s a session (and its ticket) stays valid
    handshake_timeout_s: float = setting(10.0, above=0, maximum=_HOUR_S)  # s a half-finished handshake is kept
    replay_window: int = setting(1024, minimum=64, maximum=65536)  # counters behind the highest still accepted once


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationConfig(_Checked):
    """`[replication]`: event push, write acks and anti-entropy."""

    default_durability: str = setting("one", choices=DURABILITY_LEVELS)  # durability of a write that names none
    ack_timeout_s: float = setting(2.0, above=0, maximum=_HOUR_S)  # s to wait for peer acks before UNAVAILABLE
    anti_entropy_interval_s: float = setting(5.0, above=0, maximum=_DAY_S)  # s between version-vector exchanges


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SubkeysConfig(_Checked):
    """`[subkeys]`: this node's short-lived, token-certified sub-keys."""

    lifetime_s: float = setting(3600.0, minimum=60, maximum=30 * _DAY_S)  # s a sub-key certificate is valid
    rotate_at_fraction: float = setting(0.5, above=0, below=1)  # share of the lifetime after which a successor is minted


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TokenConfig(_Checked):
    """`[token]`: the node's token and enrolled certificates; no `spec`: no hardware and sub-keys actors."""

    spec: str = setting("", check=check_token_spec)  # the node's token (keyswarm enroll-node --node-token); "" = none
    node_certificate: str = setting("", check=check_path)  # PEM file of this node's certificate (enroll-node's node.pem)
    root_certificate: str = setting("", check=check_path)  # PEM file of the network's root certificate (root.pem)
    domain_key: str = setting("", check=check_path)  # the domain key sealed to this token (enroll-node's domain-key.sealed); "" = no key service
    passphrase_env: str = setting("", check=check_env_name)  # variable holding a soft token's passphrase; "" = none
    pin_env: str = setting("", check=check_env_name)  # variable holding the PIV PIN; "" = KEYSWARM_PIN, else a prompt on a terminal
    management_key_env: str = setting("", check=check_env_name)  # variable holding the PIV management key, hex; "" = factory default

    def _check_across_fields(self) -> None:
        # The files themselves are read at node start (they belong to the node's
        # disk, like data_dir); here only what the file says must hold together.
        if not self.spec:
            for name in ("node_certificate", "root_certificate", "domain_key", "passphrase_env", "pin_env",
                         "management_key_env"):
                if getattr(self, name):
                    raise config_error(name, "set, but there is no token spec; set spec or remove this")
            return
        for name in ("node_certificate", "root_certificate"):
            if not getattr(self, name):
                raise config_error(name, f"required with a token spec ({self.spec!r}): the node runs on its enrolled certificates")
        soft = self.spec.startswith("soft:")
        if soft and (self.pin_env or self.management_key_env):
            raise config_error("pin_env" if self.pin_env else "management_key_env",
                               "a soft token has no PIN or management key; use passphrase_env")
        if not soft and self.passphrase_env:
            raise config_error("passphrase_env", "a passphrase is for soft tokens; this token takes a PIN (pin_env)")


# --- the whole -------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig(_Checked):
    """A node's whole configuration. Build with `load_config`, `profile_defaults`,
    `node_config` or `dataclasses.replace`; every path runs the same checks."""

    profile: str = setting("lan", choices=PROFILE_NAMES)  # preset the sections override field by field
    node: NodeSection  # required; identity and bind endpoints
    peers: tuple[PeerConfig, ...] = ()  # static peers (seeds)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    transport: TransportConfig = dataclasses.field(default_factory=TransportConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    gossip: GossipConfig = dataclasses.field(default_factory=GossipConfig)
    key_cache: KeyCacheConfig = dataclasses.field(default_factory=KeyCacheConfig)
    client: ClientConfig = dataclasses.field(default_factory=ClientConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    sessions: SessionsConfig = dataclasses.field(default_factory=SessionsConfig)
    replication: ReplicationConfig = dataclasses.field(default_factory=ReplicationConfig)
    subkeys: SubkeysConfig = dataclasses.field(default_factory=SubkeysConfig)
    token: TokenConfig = dataclasses.field(default_factory=TokenConfig)

    def _check_across_fields(self) -> None:
        if self.runtime.allow_insecure_entropy and self.profile != "sim":
            raise config_error(
                "runtime.allow_insecure_entropy",
                f'seeded entropy is insecure; it is allowed only under profile "sim", not {self.profile!r}',
            )
        own = {self.node.id}
        seen_ids: dict[str, int] = {}
        seen_endpoints: dict[str, int] = {}
        for index, peer in enumerate(self.peers):
            if peer.id in own:
                raise config_error(f"peers[{index}].id", f"{peer.id!r} is this node's own id")
            if peer.id in seen_ids:
                raise config_error(f"peers[{index}].id", f"{peer.id!r} repeats peers[{seen_ids[peer.id]}].id")
            if peer.endpoint in (self.node.client_endpoint, self.node.peer_endpoint):
                raise config_error(f"peers[{index}].endpoint", f"{peer.endpoint!r} is this node's own endpoint")
            if peer.endpoint in seen_endpoints:
                raise config_error(
                    f"peers[{index}].endpoint",
                    f"{peer.endpoint!r} repeats peers[{seen_endpoints[peer.endpoint]}].endpoint",
                )
            seen_ids[peer.id] = index
            seen_endpoints[peer.endpoint] = index


def section_types() -> dict[str, type]:
    """`{"limits": LimitsConfig, ...}`: the single-table sections of `NodeConfig`, in order."""
    return {
        f.name: f.type
        for f in dataclasses.fields(NodeConfig)
        if isinstance(f.type, type) and issubclass(f.type, _Checked)
    }
