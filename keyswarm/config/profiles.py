"""Presets: `lan`, `wan` and `sim`, each a complete `NodeConfig`.

Owns: which values each profile changes and why.

Rules:
- `lan` is the dataclass defaults, unchanged (memberlist's DefaultLANConfig
  plays the same part). `wan` and `sim` list only the fields they change, with
  the reason; everything else is the `lan` value.
- Only `sim` may (and does) set `runtime.allow_insecure_entropy`: the
  simulator draws every random byte from one seed, which is the point of a
  replayable run and the opposite of what a real node needs.
- A profile never sets the node's identity, its peers or its `[token]` (the
  token and the certificates enrolled on it): those belong to the file. `profile_defaults` fills the identity with the placeholder `n1` on the
  default endpoints so that the result is a valid config.
- Profiles are built on demand (no module-level config objects to mutate).
"""

import dataclasses
from typing import Any

from keyswarm.config.model import PROFILE_NAMES, NodeConfig, NodeSection, section_types
from keyswarm.errors import ConfigError

#: The node id `profile_defaults` puts in a config (a file must name its own).
PLACEHOLDER_NODE_ID = "n1"

# Per profile: section -> {field: value}, applied over the lan defaults.
_CHANGES: dict[str, dict[str, dict[str, Any]]] = {
    "lan": {},
    # Higher and more variable latency, more loss: probe less often, wait
    # longer, suspect longer before declaring death (memberlist DefaultWANConfig:
    # probe 5 s / timeout 3 s, suspicion multiplier 6, gossip every 0.5 s to 4).
    "wan": {
        "gossip": {
            "probe_interval_s": 5.0,
            "probe_timeout_s": 3.0,
            "suspicion_mult": 6,
            "suspicion_max_timeout_mult": 8,
            "gossip_interval_s": 0.5,
            "gossip_nodes": 4,
        },
        "transport": {
            "connect_timeout_s": 60.0,
            "reconnect_ivl_ms": 500,
            "reconnect_ivl_max_ms": 30_000,
        },
        "client": {
            "connection_timeout_s": 60.0,
            "request_timeout_s": 15.0,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 10.0,
        },
        "sessions": {"handshake_timeout_s": 30.0},
        "replication": {"ack_timeout_s": 10.0, "anti_entropy_interval_s": 30.0},
    },
    # The simulator runs the real actors in virtual time, so timings stay the
    # lan ones (what we want to test); only the entropy source differs.
    "sim": {
        "runtime": {"allow_insecure_entropy": True},
    },
}

assert tuple(_CHANGES) == PROFILE_NAMES, "every profile named in model.PROFILE_NAMES has a preset here"


def profile_defaults(name: str) -> NodeConfig:
    """The complete config of profile `name` for placeholder node `n1`.

    Raises `ConfigError` (field `profile`) for an unknown name.
    """
    if not isinstance(name, str) or name not in _CHANGES:
        raise ConfigError(f"unknown profile {name!r}; expected one of {', '.join(PROFILE_NAMES)}", field="profile")
    sections = {
        section: cls(**_CHANGES[name].get(section, {}))
        for section, cls in section_types().items()
        if section != "node"
    }
    return NodeConfig(profile=name, node=NodeSection(id=PLACEHOLDER_NODE_ID), **sections)


def _self_check() -> None:
    # Every change names a real section and field (a typo here would be silently ignored otherwise).
    types = section_types()
    for profile, sections in _CHANGES.items():
        for section, fields in sections.items():
            names = {f.name for f in dataclasses.fields(types[section])}
            assert set(fields) <= names, f"profile {profile}: unknown fields {set(fields) - names} in [{section}]"


_self_check()
