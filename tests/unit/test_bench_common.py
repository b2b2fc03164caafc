"""bench/common.py and bench/run.py: record shape, results files, summary, runner."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# run.py puts bench/ on sys.path and imports `common`; load it the same way so
# both see one `common` module.
bench_run = _load_module("keyswarm_bench_run", BENCH_DIR / "run.py")
common = sys.modules["common"]

FIXED_NOW = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- records


def test_record_has_exactly_the_documented_fields():
    rec = common.record("echo_rate", 12_345.6, "msg/s", target=10_000, params={"payload_bytes": 100})
    assert tuple(rec) == common.RECORD_FIELDS
    assert rec["metric"] == "echo_rate"
    assert rec["value"] == 12_345.6
    assert rec["unit"] == "msg/s"
    assert rec["target"] == 10_000
    assert rec["higher_is_better"] is True
    assert rec["params"] == {"payload_bytes": 100}
    json.dumps(rec)  # serialisable as is


def test_record_defaults_and_machine_info():
    rec = common.record("x", 1, "s", higher_is_better=False)
    assert rec["target"] is None
    assert rec["params"] == {}
    machine = rec["machine"]
    for key in ("cpu_model", "logical_cores", "memory_gib", "python", "platform", "pyzmq", "libzmq", "msgpack"):
        assert key in machine
    assert machine["logical_cores"] >= 1
    assert machine == common.machine_info()


def test_machine_info_is_a_fresh_copy():
    common.machine_info()["cpu_model"] = "tampered"
    assert common.machine_info()["cpu_model"] != "tampered"


def test_record_rejects_non_numbers_and_empty_metric():
    with pytest.raises(TypeError):
        common.record("x", "fast", "msg/s")
    with pytest.raises(ValueError):
        common.record("", 1, "s")


@pytest.mark.parametrize(
    ("value", "target", "higher", "expected"),
    [
        (10, 5, True, True),
        (5, 5, True, True),
        (4, 5, True, False),
        (0.5, 1.0, False, True),
        (2.0, 1.0, False, False),
        (1, None, True, None),
        (None, 1, True, None),
    ],
)
def test_met(value, target, higher, expected):
    assert common.met({"value": value, "target": target, "higher_is_better": higher}) is expected


@pytest.mark.parametrize(
    ("x", "text"),
    [(None, "—"), (74123.456, "74,123"), (123456, "123,456"), (812.34, "812.3"), (12.345, "12.35"),
     (0.012345, "0.0123"), (0, "0"), (7, "7")],
)
def test_format_number(x, text):
    assert common.format_number(x) == text


# --------------------------------------------------------------------------- results files


def test_write_results_round_trip(tmp_path, capsys):
    recs = [
        common.record("rate", 1500.0, "op/s", target=1000),
        common.Record(metric="p99", value=0.004, unit="s", target=0.002, higher_is_better=False),
    ]
    path = common.write_results("demo", recs, out_dir=tmp_path)
    assert path == tmp_path / "demo.json"
    data = json.loads(path.read_text())
    assert isinstance(data, list) and len(data) == 2
    assert data[0] == recs[0]
    assert data[1]["metric"] == "p99" and data[1]["higher_is_better"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]  # no temp file left
    out = capsys.readouterr().out
    assert "rate" in out and "1,500" in out and "yes" in out and "NO" in out
    assert "machine:" in out


def test_write_results_creates_dir_and_rejects_bad_names(tmp_path):
    common.write_results("x", [], out_dir=tmp_path / "a" / "b", quiet=True)
    assert json.loads((tmp_path / "a" / "b" / "x.json").read_text()) == []
    for bad in ("../evil", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            common.write_results(bad, [], out_dir=tmp_path, quiet=True)


def test_median_of():
    values = iter([5.0, 1.0, 3.0])
    median, runs = common.median_of(3, lambda: next(values))
    assert median == 3.0 and runs == [5.0, 1.0, 3.0]
    values = iter([1.0, 2.0, 3.0, 10.0])
    assert common.median_of(4, lambda: next(values))[0] == 2.5
    with pytest.raises(ValueError):
        common.median_of(0, lambda: 1.0)


def test_bench_args(tmp_path):
    args = common.bench_args("d", [])
    assert args.quick is False and args.out == common.RESULTS_DIR
    args = common.bench_args("d", ["--quick", "--out", str(tmp_path)])
    assert args.quick is True and args.out == tmp_path


# --------------------------------------------------------------------------- summary


def _write(path: Path, data) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_summary_tables_machine_once_and_bad_input_reported(tmp_path):
    machine = common.machine_info()
    _write(tmp_path / "alpha.json", [
        common.record("rate", 20000.4, "msg/s", target=10000),
        common.record("p99", 0.0031, "s", target=0.002, higher_is_better=False),
        common.record("count", 42, "ops"),
    ])
    _write(tmp_path / "beta.json", [
        {"metric": "partial", "value": 3.14159, "machine": machine},  # lacks unit, target, ...
        "not a record",
    ])
    _write(tmp_path / "broken.json", "{not json")
    _write(tmp_path / "dict.json", {"metric": "x"})
    _write(tmp_path / "empty.json", [])
    (tmp_path / "notes.txt").write_text("ignored")

    md = bench_run.build_summary(tmp_path, now=FIXED_NOW)

    assert md.count("Machine: ") == 1
    assert common.machine_line(machine) in md
    for section in ("## alpha", "## beta", "## broken", "## dict", "## empty"):
        assert section in md
    assert "notes" not in md
    assert "| rate | 20,000 | msg/s | ≥ 10,000 | ✅ |" in md
    assert "| p99 | 0.0031 | s | ≤ 0.002 | ❌ |" in md
    assert "| count | 42 | ops | — | — |" in md
    assert "| partial | 3.14 |  | — | — |" in md
    assert "lacks: unit, target, higher_is_better, params" in md
    assert "record 1 is not an object" in md
    assert "`broken.json` could not be read: JSONDecodeError" in md
    assert "expected a JSON list of records, got dict" in md
    assert "`empty.json` holds no records." in md
    assert "2026-01-02 03:04 UTC" in md


def test_summary_with_no_results_and_run_table(tmp_path):
    runs = [bench_run.ScriptRun("a", "ok", 1.25), bench_run.ScriptRun("b", "failed (exit 2)", 0.5)]
    md = bench_run.build_summary(tmp_path, runs, quick=True, now=FIXED_NOW)
    assert "No results" in md
    assert "| a | ✅ ok | 1.2 |" in md or "| a | ✅ ok | 1.3 |" in md
    assert "| b | ❌ failed (exit 2) | 0.5 |" in md
    assert "quick mode" in md


def test_summary_names_a_second_machine(tmp_path):
    other = dict(common.machine_info(), cpu_model="Other CPU 9000")
    _write(tmp_path / "a.json", [common.record("m", 1, "s"), common.record("n", 2, "s")])
    _write(tmp_path / "b.json", [dict(common.record("m", 1, "s"), machine=other)])
    md = bench_run.build_summary(tmp_path, now=FIXED_NOW)
    assert md.count("Machine: ") == 1
    assert "Measured on another machine: Other CPU 9000" in md


# --------------------------------------------------------------------------- runner


def test_discover_skips_helpers(tmp_path):
    for name in ("common.py", "run.py", "__init__.py", "_private.py", "zeta.py", "alpha.py", "notes.md"):
        (tmp_path / name).write_text("")
    assert [p.name for p in bench_run.discover_scripts(tmp_path)] == ["alpha.py", "zeta.py"]


def test_run_continues_after_failure_and_exits_nonzero(tmp_path, capsys):
    bench = tmp_path / "bench"
    out = tmp_path / "results"
    bench.mkdir()
    (bench / "common.py").write_text((BENCH_DIR / "common.py").read_text())
    (bench / "a_fails.py").write_text("import sys; sys.exit(3)\n")
    (bench / "b_ok.py").write_text(textwrap.dedent("""
        from common import bench_args, record, write_results
        args = bench_args()
        write_results("b_ok", [record("quick_flag", int(args.quick), "bool")], out_dir=args.out)
    """))
    (bench / "c_hangs.py").write_text("import time; time.sleep(60)\n")
    out.mkdir()
    (out / "a_fails.json").write_text("[]")  # stale result from an earlier run

    rc = bench_run.main(["--bench-dir", str(bench), "--out", str(out), "--quick", "--timeout", "2"])

    assert rc == 1
    assert not (out / "a_fails.json").exists(), "a failed re-run must not leave the old result"
    assert json.loads((out / "b_ok.json").read_text())[0]["value"] == 1
    summary = (out / "summary.md").read_text()
    assert "| a_fails | ❌ failed (exit 3) |" in summary
    assert "| b_ok | ✅ ok |" in summary
    assert "| c_hangs | ❌ timed out after 2 s |" in summary
    assert "| quick_flag | 1 | bool |" in summary
    captured = capsys.readouterr()
    assert "2 of 3 bench scripts failed" in captured.err


def test_summary_only_and_unknown_script(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    _write(out / "x.json", [common.record("m", 1.5, "s")])
    assert bench_run.main(["--summary-only", "--out", str(out)]) == 0
    assert "| m | 1.50 | s |" in (out / "summary.md").read_text()
    assert bench_run.main(["--bench-dir", str(tmp_path), "--out", str(out), "--only", "nope"]) == 1
