"""The TOML adapter: files, text and plain mappings in; `NodeConfig` out (and back).

Owns: reading a config file, parsing TOML, the merge of a file over its
profile, and writing a config back as TOML (for `keyswarm up`).

Rules:
- Every failure is a `ConfigError` naming the file (`source`) and, where there
  is one, the dotted field (`gossip.probe_interval_s`, `peers[1].endpoint`).
  Foreign exceptions (OSError, UnicodeDecodeError, TOMLDecodeError,
  RecursionError) are translated here with `raise ... from exc`.
- Nothing unknown passes: an unknown key at any level is refused, with a
  "did you mean" when a field is close.
- A file picks `profile` (default `lan`); each section overrides that
  profile's values field by field; `[[peers]]` replaces the (empty) peer list.
  `node.id` is required in every file.
- Files past `MAX_CONFIG_BYTES`, and anything that is not a regular file, are
  refused before they are parsed.
"""

import dataclasses
import difflib
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from typing import Any

from keyswarm.config.model import NodeConfig, PeerConfig, rescope, section_types
from keyswarm.config.profiles import profile_defaults
from keyswarm.errors import ConfigError

#: Config files larger than this are refused unread (a config is a few KiB).
MAX_CONFIG_BYTES = 1024 * 1024

_TOP_LEVEL_KEYS = ("profile", "peers", *section_types())


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read, parse and check the TOML file at `path`."""
    name = os.fspath(path)
    try:
        info = os.stat(name)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("not a regular file", file=name)
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"too large: {info.st_size} bytes; the limit is {MAX_CONFIG_BYTES}", file=name)
        with open(name, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=name) from exc
    if len(data) > MAX_CONFIG_BYTES:  # grew between stat and read
        raise ConfigError(f"too large: over the limit of {MAX_CONFIG_BYTES} bytes", file=name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8: {exc.reason} at byte {exc.start}", file=name) from exc
    return load_config_text(text, source=name)


def load_config_text(text: str, *, source: str = "<string>") -> NodeConfig:
    """Parse and check TOML `text`; errors name `source` as the file."""
    if not isinstance(text, str):
        raise ConfigError(f"expected TOML text (str), got {type(text).__name__}", file=source)
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"text is {len(text)} characters; the limit is {MAX_CONFIG_BYTES}", file=source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=source) from exc
    except RecursionError as exc:  # tomllib recurses on nested arrays / inline tables
        raise ConfigError("invalid TOML: nested too deeply", file=source) from exc
    return load_config_mapping(data, source=source)


def load_config_mapping(data: Mapping[str, Any], *, source: str = "<mapping>") -> NodeConfig:
    """Check an already-parsed TOML document (nested dicts and lists) and merge it over its profile."""
    try:
        return _build(data)
    except ConfigError as exc:
        raise rescope(exc, file=source) from exc


def node_config(*, profile: str = "lan", **sections: Any) -> NodeConfig:
    """Build a config in code, with exactly the rules of a file.

    `node_config(node={"id": "n2"}, gossip={"probe_interval_s": 2.0},
    peers=[{"id": "n1", "endpoint": "tcp://127.0.0.1:7101"}])`. To change one
    field of an existing config use `dataclasses.replace`.
    """
    return load_config_mapping({"profile": profile, **sections}, source="<node_config>")


def config_to_toml(config: NodeConfig) -> str:
    """`config` as a complete TOML document that loads back to an equal config."""
    lines = [f"profile = {_toml_value(config.profile)}"]
    for section in section_types():
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in _as_dict(getattr(config, section)).items()]
        if section == "node":  # keep the peers next to the node they belong to
            for peer in config.peers:
                lines += ["", "[[peers]]"]
                lines += [f"{k} = {_toml_value(v)}" for k, v in _as_dict(peer).items()]
    return "\n".join(lines) + "\n"


# --- internals --------------------------------------------------------------


def _build(data: Mapping[str, Any]) -> NodeConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a TOML document (table), got {type(data).__name__}")
    _refuse_unknown_keys(data, _TOP_LEVEL_KEYS, prefix=None)
    profile = data.get("profile", "lan")
    if not isinstance(profile, str):
        raise ConfigError(f"expected a string, got {type(profile).__name__}", field="profile")
    base = profile_defaults(profile)

    sections: dict[str, Any] = {}
    for name, cls in section_types().items():
        raw = data.get(name, {})
        if not isinstance(raw, Mapping):
            raise ConfigError(f"expected a table [{name}], got {type(raw).__name__}", field=name)
        _refuse_unknown_keys(raw, [f.name for f in dataclasses.fields(cls)], prefix=name)
        if name == "node" and "id" not in raw:
            raise ConfigError("required: every node names its id", field="node.id")
        try:
            sections[name] = dataclasses.replace(getattr(base, name), **raw)
        except ConfigError as exc:
            raise rescope(exc, prefix=name) from exc

    return NodeConfig(profile=profile, peers=_build_peers(data.get("peers", [])), **sections)


def _build_peers(raw: object) -> tuple[PeerConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"expected an array of tables [[peers]], got {type(raw).__name__}", field="peers")
    names = [f.name for f in dataclasses.fields(PeerConfig)]
    peers = []
    for index, item in enumerate(raw):
        where = f"peers[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"expected a table, got {type(item).__name__}", field=where)
        _refuse_unknown_keys(item, names, prefix=where)
        for required in names:
            if required not in item:
                raise ConfigError("required", field=f"{where}.{required}")
        try:
            peers.append(PeerConfig(**item))
        except ConfigError as exc:
            raise rescope(exc, prefix=where) from exc
    return tuple(peers)


def _refuse_unknown_keys(table: Mapping[Any, Any], known: list[str] | tuple[str, ...], *, prefix: str | None) -> None:
    for key in table:
        if key in known:
            continue
        shown = key if isinstance(key, str) else repr(key)
        field = f"{prefix}.{shown}" if prefix else shown
        close = difflib.get_close_matches(shown, known, n=1) if isinstance(key, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
        raise ConfigError(f"unknown key{hint}", field=field)


def _as_dict(section: object) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}  # type: ignore[arg-type]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value), "configs hold finite floats only"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    raise AssertionError(f"no TOML form for {type(value).__name__}")


def _toml_string(text: str) -> str:
    """A TOML basic string; control characters (and DEL) escaped as TOML requires."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
