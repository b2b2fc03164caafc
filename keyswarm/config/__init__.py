"""Typed node configuration: frozen dataclasses, TOML loading, presets.

Owns: the public face of `keyswarm.config`; the package's rules are in the
docstrings of `model` (shape and checks), `profiles` (presets) and `loader`
(TOML adapter). Every failure is a `ConfigError` naming the file and the
dotted field. See docs/configuration.md for every field.
"""

from keyswarm.config.loader import (
    MAX_CONFIG_BYTES,
    config_to_toml,
    load_config,
    load_config_mapping,
    load_config_text,
    node_config,
)
from keyswarm.config.model import (
    DURABILITY_LEVELS,
    PROFILE_NAMES,
    ClientConfig,
    GossipConfig,
    KeyCacheConfig,
    LimitsConfig,
    MonitorConfig,
    NodeConfig,
    NodeSection,
    PeerConfig,
    ReplicationConfig,
    RuntimeConfig,
    SessionsConfig,
    StorageConfig,
    SubkeysConfig,
    TokenConfig,
    TransportConfig,
    section_types,
)
from keyswarm.config.profiles import PLACEHOLDER_NODE_ID, profile_defaults

__all__ = [
    "DURABILITY_LEVELS",
    "MAX_CONFIG_BYTES",
    "PLACEHOLDER_NODE_ID",
    "PROFILE_NAMES",
    "ClientConfig",
    "GossipConfig",
    "KeyCacheConfig",
    "LimitsConfig",
    "MonitorConfig",
    "NodeConfig",
    "NodeSection",
    "PeerConfig",
    "ReplicationConfig",
    "RuntimeConfig",
    "SessionsConfig",
    "StorageConfig",
    "SubkeysConfig",
    "TokenConfig",
    "TransportConfig",
    "config_to_toml",
    "load_config",
    "load_config_mapping",
    "load_config_text",
    "node_config",
    "profile_defaults",
    "section_types",
]
