"""Run every benchmark script, then write bench/results/summary.md.

    python bench/run.py [--quick] [--timeout S] [--only NAME ...] [--summary-only]

Each ``bench/<name>.py`` (except common.py, run.py, __init__.py and files
starting with "_") runs as its own process with this interpreter, one after
another (a 2-core machine: running them side by side would measure contention),
with ``--out DIR`` and, if given, ``--quick``. A script that fails or exceeds
its timeout is reported and the others still run; the exit status is 1 if any
failed. Then every ``*.json`` in the results folder is summarised: one table
per file (metric, value, unit, target, met), the machine named once. A file
that is not valid JSON, or records missing fields, are reported in the
summary instead of stopping it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (after the sys.path line on purpose)
    BENCH_DIR,
    RECORD_FIELDS,
    RESULTS_DIR,
    format_met,
    format_number,
    format_target,
    machine_line,
)

NOT_BENCHMARKS = frozenset({"common.py", "run.py", "__init__.py"})
DEFAULT_TIMEOUT_S = 900.0
QUICK_TIMEOUT_S = 180.0
SUMMARY_NAME = "summary.md"


@dataclass(frozen=True)
class ScriptRun:
    name: str
    status: str  # "ok", "failed (exit N)", "timed out after S s", "could not start: ..."
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------- running


def discover_scripts(bench_dir: Path = BENCH_DIR) -> list[Path]:
    """Benchmark scripts in bench_dir, sorted by name."""
    return sorted(
        p
        for p in bench_dir.glob("*.py")
        if p.is_file() and p.name not in NOT_BENCHMARKS and not p.name.startswith("_")
    )


def run_script(
    script: Path, *, out_dir: Path, quick: bool, timeout_s: float, cwd: Path | None = None
) -> ScriptRun:
    """Run one script in its own process group; kill the whole group on timeout."""
    cmd = [sys.executable, str(script), "--out", str(out_dir)]
    if quick:
        cmd.append("--quick")
    print(f"\n### {script.stem}: {' '.join(cmd[1:])}", flush=True)
    # A stale result must not survive a failed re-run.
    (out_dir / f"{script.stem}.json").unlink(missing_ok=True)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, cwd=cwd or script.parent.parent, start_new_session=True)
    except OSError as exc:
        return ScriptRun(script.stem, f"could not start: {exc}", 0.0)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        status = f"timed out after {timeout_s:g} s"
    except KeyboardInterrupt:
        _kill_group(proc)
        raise
    else:
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    elapsed = time.monotonic() - started
    if status != "ok":
        print(f"### {script.stem}: {status}", file=sys.stderr, flush=True)
    return ScriptRun(script.stem, status, elapsed)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue


def run_all(
    scripts: Sequence[Path], *, out_dir: Path, quick: bool, timeout_s: float
) -> list[ScriptRun]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [run_script(s, out_dir=out_dir, quick=quick, timeout_s=timeout_s) for s in scripts]


# --------------------------------------------------------------------------- summary


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _params_text(params: Any, limit: int = 60) -> str:
    if not params:
        return ""
    if isinstance(params, Mapping):
        text = ", ".join(f"{k}={_param_value(v)}" for k, v in params.items())
    else:
        text = _param_value(params)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_param_value(x) for x in v) + "]"
    if isinstance(v, float):
        return format_number(v)
    return str(v)


def _load(path: Path) -> tuple[list[Any] | None, str | None]:
    """(records, None) or (None, why the file cannot be read)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if not isinstance(data, list):
        return None, f"expected a JSON list of records, got {type(data).__name__}"
    return data, None


def _machine_key(machine: Mapping[str, Any]) -> str:
    return json.dumps(machine, sort_keys=True, default=str)


def build_summary(
    results_dir: Path = RESULTS_DIR,
    runs: Sequence[ScriptRun] = (),
    *,
    quick: bool = False,
    now: datetime | None = None,
) -> str:
    """Markdown for every *.json in results_dir, plus the script run table if given."""
    now = now or datetime.now(timezone.utc)
    files = sorted(p for p in results_dir.glob("*.json") if p.is_file())
    loaded = [(p, *_load(p)) for p in files]

    machines = Counter(
        _machine_key(r["machine"])
        for _, recs, _ in loaded
        for r in (recs or [])
        if isinstance(r, Mapping) and isinstance(r.get("machine"), Mapping)
    )
    main_machine = machines.most_common(1)[0][0] if machines else None

    out: list[str] = ["# keyswarm benchmark summary", ""]
    mode = " (quick mode: smoke-test numbers, not comparable)" if quick else ""
    out.append(f"Generated {now.strftime('%Y-%m-%d %H:%M UTC')} by `bench/run.py`{mode}.")
    out.append("")
    if main_machine is not None:
        out += [f"Machine: {machine_line(json.loads(main_machine))}", ""]

    if runs:
        out += ["| script | status | seconds |", "|---|---|---:|"]
        out += [
            f"| {_cell(r.name)} | {'✅ ok' if r.ok else '❌ ' + _cell(r.status)} | {r.seconds:.1f} |"
            for r in runs
        ]
        out.append("")

    if not files:
        out += ["No results: no `*.json` in the results folder.", ""]

    for path, recs, error in loaded:
        out += [f"## {path.stem}", ""]
        if error is not None:
            out += [f"⚠️ `{path.name}` could not be read: {_cell(error)}", ""]
            continue
        if not recs:
            out += [f"`{path.name}` holds no records.", ""]
            continue
        with_params = any(isinstance(r, Mapping) and r.get("params") for r in recs)
        header = "| metric | value | unit | target | met |" + (" params |" if with_params else "")
        align = "|---|---:|---|---:|:-:|" + ("---|" if with_params else "")
        out += [header, align]
        notes: list[str] = []
        other_machines: set[str] = set()
        for i, rec in enumerate(recs):
            if not isinstance(rec, Mapping):
                notes.append(f"record {i} is not an object: {_cell(repr(rec)[:80])}")
                continue
            missing = [f for f in RECORD_FIELDS if f not in rec]
            if missing:
                notes.append(f"record {i} ({_cell(rec.get('metric', '?'))}) lacks: {', '.join(missing)}")
            machine = rec.get("machine")
            if isinstance(machine, Mapping) and _machine_key(machine) != main_machine:
                other_machines.add(_machine_key(machine))
            row = (
                f"| {_cell(rec.get('metric', '?'))} | {_cell(format_number(rec.get('value')))} "
                f"| {_cell(rec.get('unit', ''))} | {_cell(format_target(rec))} | {format_met(rec)} |"
            )
            if with_params:
                row += f" {_cell(_params_text(rec.get('params')))} |"
            out.append(row)
        out.append("")
        for note in notes:
            out.append(f"⚠️ {note}")
        for key in sorted(other_machines):
            out.append(f"Measured on another machine: {machine_line(json.loads(key))}")
        if notes or other_machines:
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_summary(results_dir: Path, runs: Sequence[ScriptRun] = (), *, quick: bool = False) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / SUMMARY_NAME
    path.write_text(build_summary(results_dir, runs, quick=quick), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help=f"per-script timeout in seconds (default {DEFAULT_TIMEOUT_S:g}, {QUICK_TIMEOUT_S:g} with --quick)",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts (file stems)")
    parser.add_argument("--summary-only", action="store_true", help="run nothing; summarise existing results")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, metavar="DIR", help="results folder")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    timeout_s = args.timeout or (QUICK_TIMEOUT_S if args.quick else DEFAULT_TIMEOUT_S)
    out_dir: Path = args.out.resolve()
    runs: list[ScriptRun] = []
    unknown: list[str] = []
    if not args.summary_only:
        scripts = discover_scripts(args.bench_dir)
        if args.only:
            by_name = {s.stem: s for s in scripts}
            unknown = [n for n in args.only if n not in by_name]
            scripts = [by_name[n] for n in args.only if n in by_name]
        if unknown:
            print(f"unknown bench scripts: {', '.join(unknown)}", file=sys.stderr)
        if not scripts:
            print(f"no bench scripts to run in {args.bench_dir}", flush=True)
        runs = run_all(scripts, out_dir=out_dir, quick=args.quick, timeout_s=timeout_s)

    path = write_summary(out_dir, runs, quick=args.quick)
    print(f"\n{path.read_text(encoding='utf-8')}", end="")
    print(f"(written to {path})")
    failed = [r for r in runs if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(runs)} bench scripts failed: "
              + "; ".join(f"{r.name}: {r.status}" for r in failed), file=sys.stderr)
    return 1 if failed or unknown else 0


if __name__ == "__main__":
    sys.exit(main())
