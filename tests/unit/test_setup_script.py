"""scripts/setup.sh detection and messages, and `make test`'s exit-5 rule.

These run the real script with `--check` (detect only, install nothing) and
override hooks that simulate a non-root user and missing prerequisites.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _setup(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSWARM_")}
    full_env.update(env)
    return subprocess.run(
        ["bash", str(SETUP), *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=60
    )


def test_nonroot_missing_pcsc_prints_the_exact_command(tmp_path):
    # A venv path that does not exist: detection runs against the chosen Python.
    result = _setup(
        KEYSWARM_VENV=str(tmp_path / "venv"),
        KEYSWARM_ASSUME_NONROOT="1",
        KEYSWARM_ASSUME_MISSING="pcsc",
        PYTHON=sys.executable,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sudo apt-get install -y libpcsclite-dev pkg-config\n" in result.stderr
    assert "winscard.h" in result.stderr
    assert not (tmp_path / "venv").exists(), "nothing may be created when a prerequisite is missing"


def test_check_lists_every_missing_prerequisite(tmp_path):
    result = _setup(
        "--check",
        KEYSWARM_VENV=str(tmp_path / "venv"),
        KEYSWARM_ASSUME_MISSING="pcsc compiler headers venv",
        PYTHON=sys.executable,
    )
    assert result.returncode == 1
    err = result.stderr
    assert "libpcsclite-dev pkg-config gcc libc6-dev" in err
    assert "-dev" in err.split("libc6-dev", 1)[1]  # pythonX.Y-dev or python3-dev
    assert "-venv" in err
    assert "venv/ensurepip" in err


def test_no_suitable_python_is_a_clear_error(tmp_path):
    result = _setup(KEYSWARM_VENV=str(tmp_path / "venv"), PYTHON=str(tmp_path / "no-such-python"))
    assert result.returncode == 1
    assert "is not a working Python >= 3.11" in result.stderr


def test_rejects_unknown_arguments():
    result = _setup("--bogus")
    assert result.returncode == 1
    assert "unknown argument" in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("pytest_rc", "make_fails"), [(0, False), (1, True), (5, True)])
def test_make_test_fails_when_pytest_collects_nothing(tmp_path, pytest_rc, make_fails):
    # A stand-in venv whose "python" exits like pytest would; a fresh stamp so
    # `setup` has nothing to do.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text(f"#!/bin/sh\necho \"fake pytest $*\"\nexit {pytest_rc}\n")
    fake.chmod(0o755)
    (venv / ".installed").touch()
    os.utime(venv / ".installed", (4_000_000_000, 4_000_000_000))  # newer than any input

    result = subprocess.run(
        ["make", "-s", "-C", str(REPO), "test", f"VENV={venv}", "PYTEST_ARGS=-k something"],
        capture_output=True, text=True, timeout=60,
    )
    assert (result.returncode != 0) is make_fails, result.stdout + result.stderr
    assert "fake pytest -m pytest -q -p no:cacheprovider -k something" in result.stdout
    assert ("collected no tests" in result.stderr) is (pytest_rc == 5)
