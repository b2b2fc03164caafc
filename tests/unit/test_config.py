"""keyswarm.config: defaults, profiles, field-by-field overrides, every refusal, docs in sync.

Every refusal test asserts that the error names the file and the dotted field.
Pure: files only under `tmp_path`, no sockets, no sleeps.
"""

import dataclasses
import datetime
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyswarm.config import (
    MAX_CONFIG_BYTES,
    PROFILE_NAMES,
    GossipConfig,
    NodeConfig,
    NodeSection,
    PeerConfig,
    config_to_toml,
    load_config,
    load_config_mapping,
    load_config_text,
    node_config,
    profile_defaults,
    section_types,
)
from keyswarm.config.model import field_rule
from keyswarm.errors import ConfigError, KeyswarmError

ROOT = Path(__file__).resolve().parents[2]
NODE = '[node]\nid = "n1"\n'


def refused(text: str, field: str | None, *, source: str = "bad.toml") -> ConfigError:
    """Load `text`, expect a ConfigError naming `source` and `field`; return it."""
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source=source)
    return assert_names(info.value, source, field)


def assert_names(err: ConfigError, file: str, field: str | None) -> ConfigError:
    assert err.file == file, str(err)
    assert err.field == field, str(err)
    prefix = f"file {file}, field {field}: " if field else f"file {file}: "
    assert str(err).startswith(prefix), str(err)
    assert not str(err)[len(prefix) :].startswith(("file ", "field ")), str(err)  # scoped once, not twice
    return err


# --- defaults and profiles --------------------------------------------------

SEED_DEFAULTS = [
    # the seed's figures
    ("key_cache", "max_age_s", 3600.0),
    ("key_cache", "max_entries", 10_000),
    ("client", "retries", 3),
    ("client", "connection_timeout_s", 30.0),
    ("monitor", "cpu_warn_percent", 70.0),
    ("monitor", "cpu_critical_percent", 90.0),
    ("monitor", "response_time_ms", 1000.0),
    ("monitor", "error_rate_percent", 1.0),
    # the schema other modules build on
    ("limits", "max_frame_bytes", 16 * 1024 * 1024),
    ("limits", "max_depth", 16),
    ("limits", "max_container_len", 100_000),
    ("limits", "max_str_bytes", 1024 * 1024),
    ("limits", "max_bin_bytes", 16 * 1024 * 1024),
    ("limits", "max_batch_items", 1000),
    ("limits", "max_key_name_bytes", 256),
    ("limits", "client_inflight_max", 1024),
    ("limits", "mailbox_capacity", 10_000),
    ("transport", "sndhwm", 10_000),
    ("transport", "rcvhwm", 10_000),
    ("transport", "linger_ms", 0),
    ("transport", "connect_timeout_s", 30.0),
    ("transport", "reconnect_ivl_ms", 100),
    ("transport", "reconnect_ivl_max_ms", 5000),
    ("transport", "drain_batch", 1024),
    ("runtime", "supervisor_max_restarts", 5),
    ("runtime", "supervisor_window_s", 60.0),
    ("runtime", "restart_backoff_initial_s", 0.1),
    ("runtime", "restart_backoff_max_s", 10.0),
    ("runtime", "shutdown_grace_s", 5.0),
    ("runtime", "allow_insecure_entropy", False),
    ("gossip", "probe_interval_s", 1.0),
    ("gossip", "probe_timeout_s", 0.5),
    ("gossip", "indirect_probes", 3),
    ("gossip", "suspicion_mult", 4),
    ("gossip", "retransmit_mult", 4),
    ("client", "request_timeout_s", 5.0),
    ("client", "backoff_initial_s", 0.05),
    ("client", "backoff_max_s", 2.0),
    ("storage", "partitions", 64),
    ("storage", "group_commit_max_delay_ms", 2.0),
    ("storage", "group_commit_max_events", 1000),
    ("storage", "map_size_bytes", 1 << 30),
    ("node", "client_endpoint", "tcp://127.0.0.1:7001"),
    ("node", "peer_endpoint", "tcp://127.0.0.1:7101"),
    ("node", "data_dir", ""),
]


@pytest.mark.parametrize(("section", "field", "value"), SEED_DEFAULTS)
def test_lan_defaults_carry_the_seed_figures(section: str, field: str, value: object) -> None:
    config = load_config_text(NODE)
    got = getattr(getattr(config, section), field)
    assert got == value and type(got) is type(value)
    assert config.profile == "lan" and config.peers == ()


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_each_profile_loads_and_equals_its_preset(profile: str) -> None:
    config = load_config_text(f'profile = "{profile}"\n{NODE}')
    assert config == profile_defaults(profile)
    assert config.profile == profile


def test_wan_waits_longer_than_lan() -> None:
    lan, wan = profile_defaults("lan"), profile_defaults("wan")
    assert wan.gossip.probe_interval_s > lan.gossip.probe_interval_s
    assert wan.gossip.probe_timeout_s > lan.gossip.probe_timeout_s
    assert wan.gossip.suspicion_mult > lan.gossip.suspicion_mult
    assert wan.gossip.suspicion_max_timeout_mult > lan.gossip.suspicion_max_timeout_mult
    assert wan.transport.connect_timeout_s > lan.transport.connect_timeout_s
    assert wan.client.connection_timeout_s > lan.client.connection_timeout_s
    assert wan.key_cache == lan.key_cache and wan.limits == lan.limits


def test_only_the_sim_profile_enables_insecure_entropy() -> None:
    assert [profile_defaults(p).runtime.allow_insecure_entropy for p in PROFILE_NAMES] == [False, False, True]
    config = load_config_text(f'profile = "sim"\n{NODE}[runtime]\nallow_insecure_entropy = true\n')
    assert config.runtime.allow_insecure_entropy


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        profile_defaults("moon")
    assert info.value.field == "profile"
    refused(f'profile = "moon"\n{NODE}', "profile")
    refused(f"profile = 1\n{NODE}", "profile")


def test_sections_override_their_profile_field_by_field() -> None:
    text = f'profile = "wan"\n{NODE}[gossip]\nprobe_interval_s = 10\n[monitor]\ncpu_warn_percent = 50\n'
    config = load_config_text(text)
    wan = profile_defaults("wan")
    assert config.gossip == dataclasses.replace(wan.gossip, probe_interval_s=10.0)
    assert config.monitor == dataclasses.replace(wan.monitor, cpu_warn_percent=50.0)
    assert config.transport == wan.transport


def test_an_int_is_accepted_for_a_float_field_and_stored_as_float() -> None:
    config = load_config_text(f"{NODE}[key_cache]\nmax_age_s = 60\n")
    assert config.key_cache.max_age_s == 60.0 and type(config.key_cache.max_age_s) is float


def test_peers_and_endpoint_forms_load() -> None:
    text = (
        '[node]\nid = "a.b_c-1"\nclient_endpoint = "tcp://*:7001"\npeer_endpoint = "ipc:///tmp/ks/peer"\n'
        'data_dir = "/var/lib/keyswarm"\n'
        '[[peers]]\nid = "n2"\nendpoint = "tcp://[::1]:7102"\n'
        '[[peers]]\nid = "n3"\nendpoint = "tcp://node-3.example.com:7103"\n'
        '[[peers]]\nid = "n4"\nendpoint = "tcp://10.0.0.4:7104"\n'
    )
    config = load_config_text(text)
    assert config.node.id == "a.b_c-1"
    assert [p.id for p in config.peers] == ["n2", "n3", "n4"]
    assert config.peers[0] == PeerConfig(id="n2", endpoint="tcp://[::1]:7102")


# --- example files ----------------------------------------------------------

EXAMPLES = sorted((ROOT / "config").glob("*.toml"))


def test_the_examples_are_there() -> None:
    assert {p.name for p in EXAMPLES} >= {"node.toml", "local-3-nodes.toml", "sim.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_file_loads(path: Path) -> None:
    config = load_config(path)
    assert load_config_text(config_to_toml(config)) == config


def test_the_three_node_example_is_n1_of_three() -> None:
    config = load_config(ROOT / "config" / "local-3-nodes.toml")
    assert config.node.id == "n1"
    assert [(p.id, p.endpoint) for p in config.peers] == [
        ("n2", "tcp://127.0.0.1:7102"),
        ("n3", "tcp://127.0.0.1:7103"),
    ]


def test_a_token_section_loads_without_reading_its_files() -> None:
    text = (
        f'{NODE}[token]\nspec = "virtual:/nowhere/n1.vyk?fw=5.4.3"\nnode_certificate = "/nowhere/node.pem"\n'
        'root_certificate = "/nowhere/root.pem"\npin_env = "N1_PIN"\nmanagement_key_env = "N1_MGMT"\n'
    )
    config = load_config_text(text)
    assert config.token.spec == "virtual:/nowhere/n1.vyk?fw=5.4.3" and config.token.pin_env == "N1_PIN"
    assert load_config_text(config_to_toml(config)) == config
    assert load_config_text(NODE).token.spec == "", "no token by default"


def test_the_sim_example_uses_the_sim_profile() -> None:
    assert load_config(ROOT / "config" / "sim.toml").profile == "sim"


# --- refusals: keys, types, values --------------------------------------------

BAD_VALUES = [
    # unknown keys at every level
    pytest.param(f'profil = "lan"\n{NODE}', "profil", id="typo-top-level"),
    pytest.param(f"{NODE}[gossip]\nprobe_intervl_s = 1.0\n", "gossip.probe_intervl_s", id="typo-in-section"),
    pytest.param(f"{NODE}[gosip]\nprobe_interval_s = 1.0\n", "gosip", id="unknown-section"),
    pytest.param(f'{NODE}[[peers]]\nid = "n2"\nendpoint = "tcp://h:1"\nport = 1\n', "peers[0].port", id="typo-in-peer"),
    pytest.param('[node]\nid = "n1"\nname = "x"\n', "node.name", id="typo-in-node"),
    # wrong types
    pytest.param(f'{NODE}[gossip]\nindirect_probes = "3"\n', "gossip.indirect_probes", id="str-for-int"),
    pytest.param(f"{NODE}[limits]\nmax_depth = true\n", "limits.max_depth", id="bool-for-int"),
    pytest.param(f"{NODE}[storage]\npartitions = 64.0\n", "storage.partitions", id="float-for-int"),
    pytest.param(f'{NODE}[gossip]\nprobe_interval_s = "1.0"\n', "gossip.probe_interval_s", id="str-for-float"),
    pytest.param(f"{NODE}[gossip]\nprobe_interval_s = true\n", "gossip.probe_interval_s", id="bool-for-float"),
    pytest.param(f"gossip = [1, 2]\n{NODE}", "gossip", id="list-for-table"),
    pytest.param(f'limits = "big"\n{NODE}', "limits", id="str-for-table"),
    pytest.param(f"{NODE}[runtime]\nallow_insecure_entropy = 0\n", "runtime.allow_insecure_entropy", id="int-for-bool"),
    pytest.param('[node]\nid = 1\n', "node.id", id="int-for-str"),
    pytest.param(f"{NODE}[monitor]\ncpu_warn_percent = 1979-05-27\n", "monitor.cpu_warn_percent", id="date-for-float"),
    pytest.param(f'{NODE}[[peers]]\nid = "n2"\nendpoint = ["tcp://h:1"]\n', "peers[0].endpoint", id="list-for-str"),
    pytest.param(f'{NODE}[peers]\nid = "n2"\n', "peers", id="table-for-peers"),
    pytest.param(f"peers = [1]\n{NODE}", "peers[0]", id="int-for-peer"),
    # numbers out of range
    pytest.param(f"{NODE}[transport]\nconnect_timeout_s = -1.0\n", "transport.connect_timeout_s", id="negative-timeout"),
    pytest.param(f"{NODE}[client]\nrequest_timeout_s = 0\n", "client.request_timeout_s", id="zero-timeout"),
    pytest.param(f"{NODE}[runtime]\nshutdown_grace_s = 0.0\n", "runtime.shutdown_grace_s", id="zero-grace"),
    pytest.param(f"{NODE}[gossip]\nprobe_interval_s = nan\n", "gossip.probe_interval_s", id="nan"),
    pytest.param(f"{NODE}[key_cache]\nmax_age_s = inf\n", "key_cache.max_age_s", id="inf"),
    pytest.param(f"{NODE}[limits]\nmax_frame_bytes = 9223372036854775807\n", "limits.max_frame_bytes", id="huge-int"),
    pytest.param(f"{NODE}[client]\nretries = -1\n", "client.retries", id="negative-count"),
    pytest.param(f"{NODE}[monitor]\nerror_rate_percent = 0\n", "monitor.error_rate_percent", id="zero-percent"),
    pytest.param(f"{NODE}[monitor]\ncpu_critical_percent = 100.5\n", "monitor.cpu_critical_percent", id="percent-over-100"),
    pytest.param(f'{NODE}[replication]\ndefault_durability = "all"\n', "replication.default_durability", id="bad-choice"),
    # rules across fields
    pytest.param(f"{NODE}[gossip]\nprobe_timeout_s = 1.0\n", "gossip.probe_timeout_s", id="timeout-not-below-interval"),
    pytest.param(f"{NODE}[monitor]\ncpu_warn_percent = 95\n", "monitor.cpu_warn_percent", id="warn-above-critical"),
    pytest.param(
        f"{NODE}[runtime]\nrestart_backoff_initial_s = 20\n", "runtime.restart_backoff_initial_s", id="backoff-order"
    ),
    pytest.param(f"{NODE}[limits]\nmax_container_len = 10\n", "limits.max_batch_items", id="batch-over-container"),
    # endpoints
    pytest.param('[node]\nid = "n1"\nclient_endpoint = "tcp://127.0.0.1:0"\n', "node.client_endpoint", id="port-0"),
    pytest.param('[node]\nid = "n1"\npeer_endpoint = "tcp://127.0.0.1:70000"\n', "node.peer_endpoint", id="port-70000"),
    pytest.param(
        '[node]\nid = "n1"\npeer_endpoint = "tcp://127.0.0.1:7001"\n', "node.peer_endpoint", id="same-as-client-endpoint"
    ),
    pytest.param(
        '[node]\nid = "n1"\nclient_endpoint = "tcp://*:7101"\n', "node.peer_endpoint", id="wildcard-collides"
    ),
    # node ids
    pytest.param('[node]\nid = "n 1"\n', "node.id", id="id-with-space"),
    pytest.param('[node]\nid = ""\n', "node.id", id="id-empty"),
    pytest.param(f'[node]\nid = "{"x" * 65}"\n', "node.id", id="id-too-long"),
    pytest.param('[node]\nid = ".."\n', "node.id", id="id-dots"),
    pytest.param('[node]\nid = "nœud"\n', "node.id", id="id-non-ascii"),
    pytest.param('[node]\nid = "n1\\n"\n', "node.id", id="id-newline"),
    pytest.param('[node]\ndata_dir = "x"\n', "node.id", id="id-missing"),
    pytest.param('profile = "lan"\n', "node.id", id="node-missing"),
    pytest.param('[node]\nid = "n1"\ndata_dir = "a\\u0000b"\n', "node.data_dir", id="data-dir-nul"),
    # peers
    pytest.param(
        f'{NODE}[[peers]]\nid = "n2"\nendpoint = "tcp://h:1"\n[[peers]]\nid = "n2"\nendpoint = "tcp://h:2"\n',
        "peers[1].id",
        id="duplicate-peer-id",
    ),
    pytest.param(f'{NODE}[[peers]]\nid = "n1"\nendpoint = "tcp://h:1"\n', "peers[0].id", id="peer-is-self"),
    pytest.param(
        f'{NODE}[[peers]]\nid = "n2"\nendpoint = "tcp://h:1"\n[[peers]]\nid = "n3"\nendpoint = "tcp://h:1"\n',
        "peers[1].endpoint",
        id="duplicate-peer-endpoint",
    ),
    pytest.param(
        f'{NODE}[[peers]]\nid = "n2"\nendpoint = "tcp://127.0.0.1:7101"\n', "peers[0].endpoint", id="peer-at-own-endpoint"
    ),
    pytest.param(f'{NODE}[[peers]]\nid = "n2"\n', "peers[0].endpoint", id="peer-without-endpoint"),
    pytest.param(f'{NODE}[[peers]]\nid = "n2"\nendpoint = "tcp://*:7102"\n', "peers[0].endpoint", id="peer-wildcard"),
    # the token section: the shape is checked at load, the files at node start
    pytest.param(f'{NODE}[token]\nspec = "usb:1"\n', "token.spec", id="token-spec-scheme"),
    pytest.param(f'{NODE}[token]\nspec = "yubikey:abc"\n', "token.spec", id="token-spec-serial"),
    pytest.param(f'{NODE}[token]\nspec = "virtual:/x?fw=5.7.2&fw=5.4.3"\n', "token.spec", id="token-spec-repeat"),
    pytest.param(f'{NODE}[token]\nspec = "soft:/t"\nroot_certificate = "/r.pem"\n', "token.node_certificate",
                 id="token-without-node-certificate"),
    pytest.param(f'{NODE}[token]\nspec = "soft:/t"\nnode_certificate = "/n.pem"\n', "token.root_certificate",
                 id="token-without-root-certificate"),
    pytest.param(f'{NODE}[token]\nnode_certificate = "/n.pem"\n', "token.node_certificate", id="certificate-without-token"),
    pytest.param(f'{NODE}[token]\npin_env = "PIN"\n', "token.pin_env", id="pin-without-token"),
    pytest.param(
        f'{NODE}[token]\nspec = "soft:/t"\nnode_certificate = "/n"\nroot_certificate = "/r"\npin_env = "PIN"\n',
        "token.pin_env", id="pin-for-a-soft-token",
    ),
    pytest.param(
        f'{NODE}[token]\nspec = "yubikey:"\nnode_certificate = "/n"\nroot_certificate = "/r"\npassphrase_env = "P"\n',
        "token.passphrase_env", id="passphrase-for-a-yubikey",
    ),
    pytest.param(
        f'{NODE}[token]\nspec = "yubikey:"\nnode_certificate = "/n"\nroot_certificate = "/r"\npin_env = "MY-PIN"\n',
        "token.pin_env", id="env-name-with-dash",
    ),
    pytest.param(f'{NODE}[token]\nspec = 12345678\n', "token.spec", id="token-spec-int"),
    # the entropy rule
    pytest.param(f"{NODE}[runtime]\nallow_insecure_entropy = true\n", "runtime.allow_insecure_entropy", id="entropy-lan"),
    pytest.param(
        f'profile = "wan"\n{NODE}[runtime]\nallow_insecure_entropy = true\n',
        "runtime.allow_insecure_entropy",
        id="entropy-wan",
    ),
]


@pytest.mark.parametrize(("text", "field"), BAD_VALUES)
def test_bad_values_are_refused_naming_file_and_field(text: str, field: str) -> None:
    refused(text, field)


MALFORMED_ENDPOINTS = [
    "",
    "127.0.0.1:7001",
    "http://127.0.0.1:7001",
    "tcp://127.0.0.1",
    "tcp://127.0.0.1:",
    "tcp://:7001",
    "tcp://127.0.0.1:+7001",
    "tcp://127.0.0.1:7001 ",
    "tcp://127.0.0.1:7_001",
    "tcp://127.0.0.1:*",
    "tcp://ho st:7001",
    "tcp://host-:7001",
    "tcp://host..x:7001",
    "tcp://256.1.1.1:7001",
    "tcp://1.2.3:7001",
    "tcp://::1:7001",
    "tcp://[::g]:7001",
    "tcp://eth0;10.0.0.1:7001",
    "TCP://127.0.0.1:7001",
    "ipc://",
    "ipc://" + "p" * 200,
    "inproc://x",
]


@pytest.mark.parametrize("endpoint", MALFORMED_ENDPOINTS)
def test_malformed_endpoints_are_refused(endpoint: str) -> None:
    err = refused(f'[node]\nid = "n1"\nclient_endpoint = "{endpoint}"\n', "node.client_endpoint")
    assert repr(endpoint) in str(err)
    refused(f'{NODE}[[peers]]\nid = "n2"\nendpoint = "{endpoint}"\n', "peers[0].endpoint")


def test_a_typo_gets_a_suggestion() -> None:
    err = refused(f"{NODE}[gossip]\nprobe_intervl_s = 1.0\n", "gossip.probe_intervl_s")
    assert "probe_interval_s" in str(err)


# --- refusals: files and text -------------------------------------------------


def load_file_refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return assert_names(info.value, str(path), None)


def test_invalid_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[node]\nid = "n1\n')
    err = load_file_refused(path)
    assert "invalid TOML" in str(err) and "line 2" in str(err)
    assert err.__cause__ is not None


def test_repeated_key_is_invalid_toml() -> None:
    refused('[node]\nid = "n1"\nid = "n2"\n', None)


def test_non_utf8_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[node]\nid = "n\xe9ud"\n')
    err = load_file_refused(path)
    assert "UTF-8" in str(err) and isinstance(err.__cause__, UnicodeDecodeError)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    err = load_file_refused(tmp_path / "absent.toml")
    assert isinstance(err.__cause__, FileNotFoundError)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    load_file_refused(tmp_path)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_text(NODE + "# " + "x" * MAX_CONFIG_BYTES + "\n")
    assert "limit" in str(load_file_refused(path))


def test_oversized_text_is_refused() -> None:
    refused(NODE + "#" * (MAX_CONFIG_BYTES + 1), None)


def test_deeply_nested_toml_is_refused_not_crashed() -> None:
    refused(NODE + "x = " + "[" * 100_000, None)


def test_path_objects_and_strings_both_load(tmp_path: Path) -> None:
    path = tmp_path / "n1.toml"
    path.write_text(NODE)
    assert load_config(path) == load_config(str(path))


def test_config_error_is_a_keyswarm_error() -> None:
    assert issubclass(ConfigError, KeyswarmError)


# --- configs built in code ----------------------------------------------------


def test_node_config_builds_with_the_file_rules() -> None:
    config = node_config(
        node={"id": "n2", "client_endpoint": "tcp://127.0.0.1:7002", "peer_endpoint": "tcp://127.0.0.1:7102"},
        peers=[{"id": "n1", "endpoint": "tcp://127.0.0.1:7101"}],
        gossip={"probe_interval_s": 2},
        profile="sim",
    )
    assert config.gossip.probe_interval_s == 2.0 and config.runtime.allow_insecure_entropy
    with pytest.raises(ConfigError) as info:
        node_config(node={"id": "n1"}, gossip={"probe_interval_s": 0})
    assert_names(info.value, "<node_config>", "gossip.probe_interval_s")


def test_dataclasses_are_frozen_and_checked_on_replace() -> None:
    config = profile_defaults("lan")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gossip.probe_interval_s = 2.0  # type: ignore[misc]
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(config.gossip, probe_timeout_s=-1.0)
    assert info.value.field == "probe_timeout_s"
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, allow_insecure_entropy=True))
    assert info.value.field == "runtime.allow_insecure_entropy"
    changed = dataclasses.replace(config, node=dataclasses.replace(config.node, id="n9"))
    assert changed.node.id == "n9"


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ConfigError):
        GossipConfig(indirect_probes=True)
    with pytest.raises(ConfigError):
        NodeConfig(node=NodeSection(id="n1"), peers=("not a peer",))  # type: ignore[arg-type]
    assert NodeConfig(node=NodeSection(id="n1"), peers=[PeerConfig(id="n2", endpoint="tcp://h:1")]).peers[0].id == "n2"


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_config_to_toml_round_trips(profile: str) -> None:
    config = node_config(
        profile=profile,
        node={"id": "n1", "data_dir": 'odd "dir"\\\t\x7f/é'},
        peers=[{"id": "n2", "endpoint": "ipc:///tmp/n2"}],
    )
    assert load_config_text(config_to_toml(config)) == config


# --- properties ---------------------------------------------------------------

_ALL_FIELDS = sorted({f.name for cls in [*section_types().values(), PeerConfig] for f in dataclasses.fields(cls)})
_KEYS = st.one_of(st.sampled_from(["profile", "peers", *section_types(), *_ALL_FIELDS]), st.text(max_size=12))
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-5, max_value=70_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["lan", "wan", "sim", "n1", "n2", "tcp://127.0.0.1:7102", "tcp://*:7001", "ipc:///x"]),
    st.dates(),
    st.times(),
    st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)),
)
_TOMLISH = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _TOMLISH, max_size=8))
def test_any_tomlish_document_loads_or_raises_config_error(data: dict) -> None:
    try:
        config = load_config_mapping(data, source="prop.toml")
    except ConfigError as err:
        assert err.file == "prop.toml", str(err)
    else:
        assert isinstance(config, NodeConfig)


_SECTION_OVERRIDES = st.fixed_dictionaries(
    {},
    optional={
        name: st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(cls)]), _SCALARS, max_size=4)
        for name, cls in section_types().items()
        if name != "node"
    },
)


@settings(max_examples=300, deadline=None)
@given(_SECTION_OVERRIDES, st.sampled_from(PROFILE_NAMES))
def test_known_fields_with_any_values_load_or_raise_a_scoped_error(sections: dict, profile: str) -> None:
    data = {"profile": profile, "node": {"id": "n1"}, **sections}
    try:
        config = load_config_mapping(data, source="prop.toml")
    except ConfigError as err:
        assert err.file == "prop.toml" and err.field, str(err)
        assert err.field.split(".")[0] in data, str(err)
    else:
        assert load_config_text(config_to_toml(config)) == config
        for name, values in sections.items():
            for field, value in values.items():
                got = getattr(getattr(config, name), field)
                assert got == value or (isinstance(got, float) and math.isclose(got, value))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_loads_or_raises_config_error(text: str) -> None:
    try:
        load_config_text(NODE + text, source="text.toml")
    except ConfigError as err:
        assert err.file == "text.toml", str(err)


# --- docs/configuration.md stays true to the code -----------------------------


def _doc_tables() -> dict[str, dict[str, list[str]]]:
    """`{"gossip": {"probe_interval_s": [cells...]}}` from docs/configuration.md."""
    tables: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"### `\[\[?(\w+)\]\]?`", line)
        if heading:
            section = heading.group(1)
            tables[section] = {}
        elif section and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            tables[section][cells[0].strip("`")] = cells
    return tables


def _doc_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)


_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "string"}


def test_docs_list_every_field_with_its_type_defaults_and_rule() -> None:
    tables = _doc_tables()
    classes = {**section_types(), "peers": PeerConfig}
    assert set(tables) == set(classes)
    presets = {p: profile_defaults(p) for p in PROFILE_NAMES}
    for section, cls in classes.items():
        fields = dataclasses.fields(cls)
        assert list(tables[section]) == [f.name for f in fields], section
        for field in fields:
            cells = tables[section][field.name]
            where = f"docs row {section}.{field.name}: {cells}"
            assert cells[1] == _TYPE_NAMES[field.type], where
            assert cells[-2].startswith(field_rule(field)), where
            if section == "peers" or (section, field.name) == ("node", "id"):
                continue
            expected = [_doc_value(getattr(getattr(presets[p], section), field.name)) for p in PROFILE_NAMES]
            assert cells[3:6] == expected, where
