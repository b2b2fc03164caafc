"""`keyswarm sim`: options, workloads, the report, exit codes, replay."""

from __future__ import annotations

import argparse
import hashlib
import shlex

import pytest

from keyswarm.actors.messages import CounterValue
from keyswarm.actors.runtime import ClientRef
from keyswarm.sim import command
from keyswarm.sim.command import CounterOrder, configure_parser, main, percentile, run_simulation


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="keyswarm")
    configure_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sim", *argv])


def digest_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("trace digest:"))


def test_subcommand_wires_into_a_parser() -> None:
    args = parse("--nodes", "2", "--seed", "5")
    assert args.func is main and args.nodes == 2 and args.seed == 5 and args.workload == "mixed"


@pytest.mark.parametrize("workload", command.WORKLOADS)
def test_each_workload_runs_and_holds_its_invariants(sim_seed: int, workload: str, capsys) -> None:
    args = parse("--seed", str(sim_seed), "--duration", "1", "--rate", "200", "--workload", workload)
    assert main(args) == 0, f"seed={sim_seed}: {capsys.readouterr()}"
    out = capsys.readouterr().out
    assert "invariants: held" in out and f"--seed {sim_seed}" in out, f"seed={sim_seed}: {out}"
    report = run_simulation(args)
    codes = {o.code for o in report.sim.replies.values()}
    assert codes == {"OK"}, f"seed={sim_seed}: {workload} without faults gave {codes}"
    assert report.sim.stats.client_sent > 100, f"seed={sim_seed}"


def test_faults_run_and_the_report_names_them(sim_seed: int, capsys) -> None:
    args = parse(
        "--seed", str(sim_seed), "--nodes", "4", "--duration", "3", "--rate", "300",
        "--loss", "0.05", "--dup", "0.05", "--reorder", "0.1",
        "--partition", "n1:n2@0.5-1.5", "--partition", "n3>n4@0.2-2", "--partition", "n4@2.2-2.6",
        "--spike", "*@1-1.5*20", "--spike", "n1:n3@0-3*5",
        "--crash", "n2@1-2", "--skew", "n3:10:0.001",
    )
    assert main(args) == 0, f"seed={sim_seed}: {capsys.readouterr()}"
    out = capsys.readouterr().out
    for needle in ("latency (virtual ms): p50", "per node (sent/ok): n1 ", "TIMEOUT", "UNAVAILABLE", "lost ", "duplicated "):
        assert needle in out, f"seed={sim_seed}: no {needle!r} in\n{out}"
    assert "dropped at crashed nodes 0" not in out, f"seed={sim_seed}: the crash dropped nothing?\n{out}"


def test_the_replay_command_replays_the_run(sim_seed: int, capsys) -> None:
    args = parse("--seed", str(sim_seed), "--duration", "1", "--loss", "0.1", "--partition", "n1:n3@0.2-0.6",
                 "--crash", "n2@0.3-0.5")
    assert main(args) == 0
    out = capsys.readouterr().out
    replay = next(line for line in out.splitlines() if line.startswith("replay: ")).removeprefix("replay: ")
    argv = shlex.split(replay)
    assert argv[:2] == ["keyswarm", "sim"], replay
    assert main(parse(*argv[2:])) == 0
    assert digest_line(capsys.readouterr().out) == digest_line(out), f"seed={sim_seed}: {replay}"


def test_trace_file_matches_the_digest(sim_seed: int, tmp_path) -> None:
    path = tmp_path / "trace.txt"
    report = run_simulation(parse("--seed", str(sim_seed), "--duration", "0.5", "--trace", str(path)))
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == report.sim.trace_digest(), f"seed={sim_seed}"
    assert data.count(b"\n") == len(report.sim.trace_lines()), f"seed={sim_seed}"


def test_a_fresh_seed_is_chosen_and_reported_when_none_is_given(capsys) -> None:
    assert main(parse("--duration", "0.2")) == 0
    out = capsys.readouterr().out
    assert "--seed " in out.split("replay: ")[1]


@pytest.mark.parametrize(
    "bad",
    [
        ["--partition", "n1:n9@1-2"],
        ["--partition", "n1-n2"],
        ["--crash", "n7@1"],
        ["--spike", "n1:n2@1-2*0.5"],
        ["--skew", "nx:1"],
        ["--loss", "1.5"],
        ["--nodes", "0"],
    ],
)
def test_bad_options_exit_2(bad: list[str], capsys) -> None:
    assert main(parse("--seed", "1", "--duration", "0.1", *bad)) == 2
    assert "keyswarm sim:" in capsys.readouterr().err


def test_a_broken_invariant_exits_1_with_the_seed_and_replay(monkeypatch, capsys) -> None:
    def broken(self, node, ref, msg) -> None:
        assert type(msg) is not CounterValue, "counter went backwards (planted)"

    monkeypatch.setattr(CounterOrder, "__call__", broken)
    assert main(parse("--seed", "9", "--duration", "1", "--workload", "counter")) == 1
    captured = capsys.readouterr()
    assert "INVARIANT VIOLATED: counter went backwards (planted)" in captured.out
    assert "seed 9 broke an invariant; reproduce with: keyswarm sim" in captured.err
    assert "--seed 9" in captured.err


def test_counter_order_checker() -> None:
    class Node:
        name = "n1"
        epoch = 1

    check = CounterOrder()
    ref = ClientRef("n1", b"c", 1)
    check(Node(), ref, CounterValue(name="a", value=1))
    check(Node(), ref, CounterValue(name="b", value=1))
    check(Node(), ref, CounterValue(name="a", value=2))
    with pytest.raises(AssertionError, match="went from 2 to 2"):
        check(Node(), ref, CounterValue(name="a", value=2))
    Node.epoch = 2  # a restarted node starts its counters over
    check(Node(), ref, CounterValue(name="a", value=1))


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (50.0, 90.0, 99.0)
    assert percentile([], 50) == 0.0 and percentile([3.0], 99) == 3.0
