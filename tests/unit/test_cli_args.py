"""The `keyswarm` command line: argument checks, exit codes, messages, and the plan of `up`.

Everything here runs `keyswarm.cli.main(argv)` in-process or calls pure
planning functions: no sockets, no processes. Exit codes: 2 for bad
arguments (argparse names the argument), 1 for a failed operation (one line
`error: ...`, never a traceback).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keyswarm import __version__
from keyswarm.cli import MAX_LOCAL_NODES, build_parser, jsonable, main, render_value
from keyswarm.config import load_config_text
from keyswarm.node.local_network import node_config_text, plan_network


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "error:" in err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


# --- bad arguments: exit 2 ---------------------------------------------------------


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert_usage_error(code, err, "COMMAND")


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["frobnicate"], capsys)
    assert_usage_error(code, err, "frobnicate", "invalid choice")


@pytest.mark.parametrize("nodes", ["0", "-1", "1000", str(MAX_LOCAL_NODES + 1), "three", "2.5"])
def test_up_refuses_a_bad_node_count(nodes: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["up", "--nodes", nodes], capsys)
    assert_usage_error(code, err, "--nodes")


@pytest.mark.parametrize("port", ["70000", "0", "80", "65535", "-7000", "x"])
def test_up_refuses_a_bad_base_port(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["up", "--base-port", port], capsys)
    assert_usage_error(code, err, "--base-port")


@pytest.mark.parametrize("option", ["--stop-timeout", "--start-timeout", "--status-interval"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_up_refuses_bad_durations(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["up", option, value], capsys)
    assert_usage_error(code, err, option)


def test_node_requires_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["node"], capsys)
    assert_usage_error(code, err, "--config")


def test_bad_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--log-level", "loud", "version"], capsys)
    assert_usage_error(code, err, "--log-level")


def test_client_requires_an_operation(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["client", "--connect", "tcp://127.0.0.1:1"], capsys)
    assert_usage_error(code, err, "OPERATION")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["client", "echo"], "TEXT"),
        (["client", "ping"], "NODE"),
        (["client", "count", "c", "--by", "many"], "--by"),
        (["client", "--timeout", "0", "health"], "--timeout"),
        (["client", "health", "--timeout", "-3"], "--timeout"),
        (["client", "ping", "n2", "--ping-timeout", "61"], "--ping-timeout"),
    ],
)
def test_client_refuses_bad_arguments(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, needle)


# --- failed operations: exit 1, one line -------------------------------------------


def test_node_with_a_missing_config_file_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "node.toml"
    code, out, err = run(["node", "--config", str(missing)], capsys)
    assert code == 1
    assert err.startswith("error: ") and str(missing) in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert out == ""


def test_node_with_a_typo_in_its_config_names_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nid = "n1"\n\n[gossip]\nprobe_intervl_s = 2.0\n', encoding="utf-8")
    code, _, err = run(["node", "--config", str(path)], capsys)
    assert code == 1
    assert err.startswith("error: ")
    assert str(path) in err
    assert "gossip.probe_intervl_s" in err
    assert "probe_interval_s" in err  # the "did you mean"
    assert "Traceback" not in err


def test_node_with_a_value_out_of_range_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nid = "n1"\n\n[gossip]\nprobe_interval_s = -1.0\n', encoding="utf-8")
    code, _, err = run(["node", "--config", str(path)], capsys)
    assert code == 1 and str(path) in err and "gossip.probe_interval_s" in err


# --- things that work without a network ----------------------------------------------


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["version"], capsys)
    assert code == 0 and __version__ in out


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("node", "up", "client", "sim", "version"):
        assert command in out


def test_log_level_is_accepted_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["--log-level", "debug", "version"]).log_level == "debug"
    assert parser.parse_args(["version", "--log-level", "error"]).log_level == "error"
    assert parser.parse_args(["version"]).log_level is None


def test_client_options_are_accepted_before_or_after_the_operation() -> None:
    parser = build_parser()
    before = parser.parse_args(["client", "--connect", "tcp://h:1", "--timeout", "2", "health"])
    after = parser.parse_args(["client", "health", "--connect", "tcp://h:1", "--timeout", "2"])
    default = parser.parse_args(["client", "count", "c", "--by", "-4"])
    assert (before.connect, before.timeout) == (after.connect, after.timeout) == ("tcp://h:1", 2.0)
    assert (default.connect, default.timeout, default.by) == ("tcp://127.0.0.1:7001", 5.0, -4)


def test_up_defaults() -> None:
    args = build_parser().parse_args(["up"])
    assert (args.nodes, args.base_port, args.data, args.demo) == (3, 7000, None, False)


def test_results_render_as_one_json_line() -> None:
    from keyswarm.actors.messages import EchoResult, HealthResult

    health = HealthResult(node="n1", status="ok", actors={"gateway": "running"}, uptime_s=1.23456)
    assert jsonable(health) == {"op": "health.result", "node": "n1", "status": "ok", "actors": {"gateway": "running"}, "uptime_s": 1.235,
                              "token": "", "token_kind": "", "subkey": "", "subkey_serial": 0, "subkey_not_after_s": 0.0,
                              "conditions": {}}
    assert render_value(EchoResult(payload=b"hi", node="n2")) == '{"op": "echo.result", "payload": "hi", "node": "n2"}'
    assert jsonable(b"\xff\x00") == "base64:/wA="


# --- the plan of `keyswarm up` -------------------------------------------------------


def test_plan_lays_out_ports_and_directories(tmp_path: Path) -> None:
    plan = plan_network(3, base_port=7000, root=str(tmp_path))
    assert [n.id for n in plan] == ["n1", "n2", "n3"]
    assert [n.client_endpoint for n in plan] == [f"tcp://127.0.0.1:{7000 + k}" for k in (1, 2, 3)]
    assert [n.peer_endpoint for n in plan] == [f"tcp://127.0.0.1:{7100 + k}" for k in (1, 2, 3)]
    assert plan[1].config_path == str(tmp_path / "n2" / "node.toml")


@pytest.mark.parametrize("count", [1, 3, 7])
def test_each_planned_config_loads_and_lists_every_other_node(tmp_path: Path, count: int) -> None:
    plan = plan_network(count, base_port=30000, root=str(tmp_path / 'a "quoted" dir'))
    for node in plan:
        config = load_config_text(node_config_text(plan, node), source=node.config_path)
        assert config.node.id == node.id
        assert (config.node.client_endpoint, config.node.peer_endpoint) == (node.client_endpoint, node.peer_endpoint)
        assert config.node.data_dir == node.data_dir
        assert [(p.id, p.endpoint) for p in config.peers] == [(o.id, o.peer_endpoint) for o in plan if o.id != node.id]


@pytest.mark.parametrize("count, base", [(0, 7000), (100, 7000), (3, 65450)])
def test_plan_refuses_impossible_layouts(count: int, base: int) -> None:
    with pytest.raises(ValueError):
        plan_network(count, base_port=base, root=".")


# --- the simulator is loaded only for `keyswarm sim` ---------------------------------


def test_a_broken_simulator_disables_only_sim(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "keyswarm.sim.command", None)  # importing it now fails
    code, _, err = run(["sim", "--nodes", "3"], capsys)
    assert code == 1 and err.startswith("error: the simulator cannot be loaded") and "Traceback" not in err
    code, _, err = run(["node", "--config", str(tmp_path / "missing.toml")], capsys)
    assert code == 1 and "missing.toml" in err
    code, out, _ = run(["--log-level", "error", "version"], capsys)
    assert code == 0 and __version__ in out


def test_sim_options_reach_the_simulator_parser() -> None:
    args = build_parser().parse_args(["sim", "--nodes", "4", "--seed", "7"])
    assert (args.command, args.nodes, args.seed) == ("sim", 4, 7)
