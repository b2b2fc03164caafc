"""`keyswarm client ...` against a real node: results, error replies, timeouts.

The node is a `NodeThread` (the `node` fixture of tests/integration/conftest.py);
the command runs in-process through `keyswarm.cli.main`, and once as
`python -m keyswarm` to prove the module entry point. Exit codes: 0 with one
JSON line on stdout; 1 with one `error: ...` line on stderr.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from keyswarm.cli import main
from keyswarm.node.driver import NodeThread
from keyswarm.node.local_network import child_environment

pytestmark = pytest.mark.integration


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def client(node: NodeThread, *args: str) -> list[str]:
    return ["client", "--connect", node.client_endpoint, "--timeout", "5", *args]


def test_health_prints_the_nodes_status(node: NodeThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(client(node, "health"), capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["op"] == "health.result"
    assert result["node"] == "n1" and result["status"] == "ok"
    assert set(result["actors"]) >= {"gateway", "echo", "pinger", "counter"}


def test_echo_and_count(node: NodeThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(client(node, "echo", "hello, node"), capsys)
    assert code == 0 and json.loads(out) == {"op": "echo.result", "payload": "hello, node", "node": "n1"}
    values = []
    for by in ("1", "5"):
        code, out, _ = run(client(node, "count", "visits", "--by", by), capsys)
        assert code == 0
        values.append(json.loads(out)["value"])
    assert values == [1, 6]


@pytest.mark.parametrize(
    "args, code_name",
    [
        (["ping", "nobody"], "UNAVAILABLE"),  # no such peer
        (["count", ""], "BAD_REQUEST"),  # counter names are 1-256 bytes
    ],
)
def test_an_error_reply_is_one_line_and_exit_1(
    node: NodeThread, capsys: pytest.CaptureFixture[str], args: list[str], code_name: str
) -> None:
    code, out, err = run(client(node, *args), capsys)
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: {code_name}: ") and err.count("\n") == 1, err


def test_no_listener_times_out_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago; nobody listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    code, out, err = run(["client", "--connect", endpoint, "--timeout", "0.3", "health"], capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and endpoint in err and "0.3 s" in err, err
    assert "Traceback" not in err
    assert time.monotonic() - started < 10, "the timeout was not honoured"


def test_bad_endpoint_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["client", "--connect", "not-an-endpoint", "--timeout", "0.3", "health"], capsys)
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err, err


def test_python_dash_m_keyswarm_runs_the_client(node: NodeThread) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keyswarm", *client(node, "health")],
        capture_output=True, text=True, env=child_environment(), timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["node"] == "n1"
