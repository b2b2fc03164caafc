"""What every benchmark script shares: records, results files, medians, flags.

A bench script measures one KPI family and ends with::

    from common import bench_args, median_of, record, write_results

    args = bench_args(__doc__)           # --quick, --out DIR
    rate, runs = median_of(3 if args.quick else 7, measure_once)
    write_results("transport", [
        record("echo_rtt_rate", rate, "msg/s", target=10_000,
               params={"runs": runs, "payload_bytes": 100}),
    ], out_dir=args.out)

Run it as ``python bench/<name>.py`` (the script's folder is then on
``sys.path``, so ``import common`` works); ``bench/run.py`` runs them all.

Rules kept here:
- a record is a plain dict with exactly ``RECORD_FIELDS``; ``machine`` is
  filled in by ``record()`` so every result says where it was measured;
- results go to ``<out_dir>/<name>.json`` as a JSON list of records, written
  atomically; ``name`` should be the script's file stem, because run.py
  deletes that file before re-running the script (no stale numbers);
- ``met`` is computed, never stored: value >= target, or <= when
  ``higher_is_better`` is false; no target means "—".
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

RECORD_FIELDS = ("metric", "value", "unit", "target", "higher_is_better", "params", "machine")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _module_version(module: str, attr: str = "__version__") -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    value = getattr(mod, attr, None)
    if callable(value):
        value = value()
    if isinstance(value, tuple):
        value = ".".join(str(part) for part in value)
    return None if value is None else str(value)


@functools.lru_cache(maxsize=1)
def _machine_info_cached() -> tuple[tuple[str, Any], ...]:
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_gib": None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "pyzmq": _module_version("zmq", "pyzmq_version"),
        "libzmq": _module_version("zmq", "zmq_version"),
        "msgpack": _module_version("msgpack", "version"),
    }
    try:
        import psutil

        info["logical_cores"] = psutil.cpu_count(logical=True) or info["logical_cores"]
        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return tuple(info.items())


def machine_info() -> dict[str, Any]:
    """Where a number was measured: CPU, cores, memory, Python, library versions.

    Cheap (computed once per process); versions are None when a library is absent.
    """
    return dict(_machine_info_cached())


def machine_line(machine: Mapping[str, Any]) -> str:
    """One human line for a machine_info() dict (tolerates missing keys)."""
    parts = [str(machine.get("cpu_model") or "unknown CPU")]
    if machine.get("logical_cores") is not None:
        parts.append(f"{machine['logical_cores']} logical cores")
    if machine.get("memory_gib") is not None:
        parts.append(f"{machine['memory_gib']} GiB")
    if machine.get("python"):
        parts.append(str(machine["python"]))
    if machine.get("platform"):
        parts.append(str(machine["platform"]))
    libs = [
        f"{label} {machine[key]}"
        for key, label in (("pyzmq", "pyzmq"), ("libzmq", "libzmq"), ("msgpack", "msgpack"))
        if machine.get(key)
    ]
    if libs:
        parts.append(", ".join(libs))
    return " · ".join(parts)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class Record:
    """One measured number, its unit, and the target it is judged against."""

    metric: str
    value: float | int | None
    unit: str
    target: float | int | None = None
    higher_is_better: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("metric must be a non-empty string")
        if self.value is not None and not isinstance(self.value, (int, float)):
            raise TypeError(f"{self.metric}: value must be a number, got {type(self.value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record(
    metric: str,
    value: float | int | None,
    unit: str,
    *,
    target: float | int | None = None,
    higher_is_better: bool = True,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A result record as a dict with exactly RECORD_FIELDS (machine filled in)."""
    return Record(
        metric=metric,
        value=value,
        unit=unit,
        target=target,
        higher_is_better=higher_is_better,
        params=dict(params or {}),
    ).to_dict()


def met(rec: Mapping[str, Any]) -> bool | None:
    """True/False against the record's target; None when there is no target or value."""
    target, value = rec.get("target"), rec.get("value")
    if not _is_number(target) or not _is_number(value):
        return None
    if rec.get("higher_is_better", True):
        return value >= target
    return value <= target


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not (
        isinstance(x, float) and math.isnan(x)
    )


# --------------------------------------------------------------------------- formatting


def format_number(x: Any) -> str:
    """Rounded for reading: 74,123 / 812.3 / 12.35 / 0.0123; '—' for None."""
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    if isinstance(x, int) or float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):,}"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    if ax == 0:
        return "0"
    return f"{x:.3g}"


def format_target(rec: Mapping[str, Any]) -> str:
    target = rec.get("target")
    if target is None:
        return "—"
    sign = "≥" if rec.get("higher_is_better", True) else "≤"
    return f"{sign} {format_number(target)}"


def format_met(rec: Mapping[str, Any], *, yes: str = "✅", no: str = "❌", none: str = "—") -> str:
    verdict = met(rec)
    return none if verdict is None else (yes if verdict else no)


def format_table(records: Iterable[Mapping[str, Any]]) -> str:
    """A plain-text table (metric, value, unit, target, met?) for a terminal."""
    header = ("metric", "value", "unit", "target", "met?")
    rows = [
        (
            str(r.get("metric", "?")),
            format_number(r.get("value")),
            str(r.get("unit", "")),
            format_target(r),
            format_met(r, yes="yes", no="NO", none="-"),
        )
        for r in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    right = {1, 3}  # numbers right-aligned

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()

    lines = [fmt(header), fmt(tuple("-" * w for w in widths))]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- results


def results_path(name: str, out_dir: str | os.PathLike[str] | None = None) -> Path:
    if not _NAME_RE.match(name):
        raise ValueError(f"bad results name {name!r}: use letters, digits, '_', '-', '.'")
    return Path(out_dir if out_dir is not None else RESULTS_DIR) / f"{name}.json"


def write_results(
    name: str,
    records: Iterable[Record | Mapping[str, Any]],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> Path:
    """Write ``<out_dir>/<name>.json`` (a JSON list of records) and print a table.

    ``out_dir`` defaults to bench/results. Returns the path written.
    """
    rows = [r.to_dict() if isinstance(r, Record) else dict(r) for r in records]
    path = results_path(name, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rows, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    if not quiet:
        print(f"\n== {name} ({path})")
        print(format_table(rows))
        if rows and rows[0].get("machine"):
            print(f"machine: {machine_line(rows[0]['machine'])}")
        sys.stdout.flush()
    return path


# --------------------------------------------------------------------------- runs


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    """Call ``fn()`` ``runs`` times; return (median, every value in call order)."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    values = [fn() for _ in range(runs)]
    return statistics.median(values), values


# --------------------------------------------------------------------------- flags


def add_bench_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags every bench script accepts: --quick and --out DIR."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer and shorter runs (smoke test / CI); numbers are not comparable",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help=f"where to write <name>.json (default: {RESULTS_DIR})",
    )
    return parser


def bench_args(description: str | None = None, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a bench script's command line (``--quick``, ``--out DIR``)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return add_bench_args(parser).parse_args(argv)
