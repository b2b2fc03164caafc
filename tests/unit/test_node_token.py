"""`keyswarm.node.node_token`: a node's `[token]` opened and checked at start, without a node process.

The PKI is made under `tmp_path` with `keyswarm.enrolment` (soft tokens).
Checks: a good section gives the hardware and sub-keys actors and the token
service, with one loud WARNING for a soft token; every refusal is a
`ConfigError` naming the `[token]` field; a refused token is closed; a
YubiKey that is absent at start gives a degraded start whose reconnect
repeats the key check; no spec, no token.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from keyswarm.actors.hardware import Reconnect
from keyswarm.config import node_config
from keyswarm.enrolment import TokenAccess, create_network, enrol_node
from keyswarm.errors import ConfigError, TokenAbsent, TokenError
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.node import node_token
from keyswarm.node.assembly import node_actors, node_services
from keyswarm.node.node_token import open_node_token


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    base = tmp_path_factory.mktemp("pki")
    (base / "root").mkdir()
    root = TokenAccess(spec=f"soft:{base / 'root' / 'root.token'}")
    create_network(root, network_name="unit", out_dir=base / "root")
    sections = {}
    for label, name in (("n1", "n1"), ("n1-other-token", "n1")):
        (base / label).mkdir()
        spec = f"soft:{base / label / 'node.token'}"
        enrol_node(root, base / "root" / "root.pem", TokenAccess(spec=spec), name=name, out_dir=base / label)
        sections[label] = {
            "spec": spec, "node_certificate": str(base / label / "node.pem"), "root_certificate": str(base / label / "root.pem"),
        }
    return sections


def config(token: dict[str, str] | None = None, node_id: str = "n1"):
    return node_config(node={"id": node_id}, **({"token": token} if token is not None else {}))


def test_no_spec_no_token(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="keyswarm.node"):
        assert open_node_token(config()) is None
    assert "runs without a token" in caplog.text


def test_a_soft_token_gives_both_actors_and_one_loud_warning(pki, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="keyswarm.node"):
        parts = open_node_token(config(pki["n1"]))
    try:
        assert [spec.name for spec in parts.actors] == ["hardware", "subkeys", "sessions"]
        assert isinstance(parts.service.token, SoftToken)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "SOFT TOKEN" in warnings[0].getMessage(), caplog.text
        assert "NOT hardware-protected" in warnings[0].getMessage()
        # The assembly puts them last, and the service under its name.
        assert [s.name for s in node_actors(token=parts)][-3:] == ["hardware", "subkeys", "sessions"]
        assert node_services(None, token=parts)["token"] is parts.service
        # Reconnecting reopens the file and checks the key again.
        info = parts.service.handle(Reconnect())
        assert info.kind == "soft"
    finally:
        parts.service.close()


def test_refusals_name_the_token_field(pki, tmp_path: Path) -> None:
    cases = [
        ({**pki["n1"], "spec": pki["n1-other-token"]["spec"]}, "n1", "token.node_certificate", "another token"),
        (pki["n1"], "n2", "token.node_certificate", "this node's id is 'n2'"),
        ({**pki["n1"], "root_certificate": pki["n1"]["node_certificate"]}, "n1", "token.root_certificate", "node certificate"),
        ({**pki["n1"], "node_certificate": str(tmp_path / "none.pem")}, "n1", "token.node_certificate", "no such file"),
        ({**pki["n1"], "spec": f"soft:{tmp_path / 'none.token'}"}, "n1", "token.spec", "no such key file"),
        ({**pki["n1"], "passphrase_env": "KEYSWARM_TEST_UNSET_VARIABLE"}, "n1", "token.spec", "not set"),
    ]
    for token, node_id, field, needle in cases:
        with pytest.raises(ConfigError) as info:
            open_node_token(config(token, node_id))
        assert info.value.field == field, (token, str(info.value))
        assert needle in str(info.value), str(info.value)


def test_a_refused_token_is_closed(pki, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[SoftToken] = []
    real = node_token.open_access

    def spy(*args, **kwargs):
        token = real(*args, **kwargs)
        opened.append(token)
        return token

    closed: list[object] = []
    monkeypatch.setattr(node_token, "open_access", spy)
    monkeypatch.setattr(SoftToken, "close", lambda self: closed.append(self))
    with pytest.raises(ConfigError):
        open_node_token(config({**pki["n1"], "spec": pki["n1-other-token"]["spec"]}))
    assert len(opened) == 1 and closed == opened


def test_an_absent_yubikey_starts_degraded_and_reconnects_with_the_key_check(pki, monkeypatch) -> None:
    section = {**pki["n1"], "spec": "yubikey:12345678"}
    plugged: list[object] = []

    def fake_open(access, *, create, environ):
        assert access.spec == "yubikey:12345678" and not create
        if not plugged:
            raise TokenAbsent("YubiKey 12345678 is not connected")
        return plugged[0]

    monkeypatch.setattr(node_token, "open_access", fake_open)
    parts = open_node_token(config(section))
    assert parts.service.token is None  # the node starts with its token absent
    with pytest.raises(TokenAbsent):
        parts.service.handle(Reconnect())
    plugged.append(SoftToken.open(Path(pki["n1-other-token"]["spec"].removeprefix("soft:"))))  # another identity
    with pytest.raises(ConfigError, match="another token"):
        parts.service.handle(Reconnect())
    assert parts.service.token is None
    plugged[0] = SoftToken.open(Path(pki["n1"]["spec"].removeprefix("soft:")))  # the enrolled key
    assert parts.service.handle(Reconnect()).kind == "soft"
    assert parts.service.token is plugged[0]
    parts.service.close()


def test_a_soft_or_virtual_token_file_that_is_missing_is_a_refusal_not_a_degraded_start(pki, tmp_path: Path) -> None:
    for spec in (f"soft:{tmp_path / 'absent.token'}", f"virtual:{tmp_path / 'absent.vyk'}"):
        with pytest.raises(ConfigError) as info:
            open_node_token(config({**pki["n1"], "spec": spec}))
        assert info.value.field == "token.spec", str(info.value)
        assert isinstance(info.value.__cause__, (TokenAbsent, TokenError)), repr(info.value.__cause__)


def test_a_domain_key_adds_the_key_service_last_and_keys_the_tickets(pki) -> None:
    section = pki["n1"]
    sealed = str(Path(section["node_certificate"]).parent / "domain-key.sealed")
    parts = open_node_token(config({**section, "domain_key": sealed}))
    try:
        names = [spec.name for spec in parts.actors]
        assert names[:5] == ["hardware", "subkeys", "sessions", "keys", "admin"], names
        assert names[5:] == [f"keys.{p}" for p in range(len(names) - 5)] and len(names) > 5
        # Before the key service: every other actor keeps its place (and its seed).
        assert [s.name for s in node_actors(token=parts)][:len(node_actors())] == [s.name for s in node_actors()]
    finally:
        parts.service.close()


def test_a_domain_key_of_another_token_refuses_the_start(pki) -> None:
    section = pki["n1"]
    other = str(Path(pki["n1-other-token"]["node_certificate"]).parent / "domain-key.sealed")
    with pytest.raises(ConfigError) as caught:
        open_node_token(config({**section, "domain_key": other}))
    assert caught.value.field == "token.domain_key" and other in str(caught.value), str(caught.value)


def test_a_domain_key_without_a_spec_is_refused_by_the_loader() -> None:
    with pytest.raises(ConfigError) as caught:
        config({"domain_key": "/srv/n1/domain-key.sealed"})
    assert "token.domain_key" in str(caught.value)
