"""The one architectural rule (DESIGN section 2), checked on the source.

Modules under keyswarm/actors/ are sans-IO: they import none of the modules
that reach the clock, the OS, the network, the disk or OS randomness, and none
of keyswarm's own I/O layers. Imports are read from the AST, so an import
inside a function or under `if TYPE_CHECKING` counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ACTORS = Path(__file__).resolve().parents[2] / "keyswarm" / "actors"

BANNED_STDLIB = frozenset({"asyncio", "zmq", "lmdb", "time", "os", "random", "socket", "threading"})
# keyswarm's own I/O layers; actors reach them only through their Context.
BANNED_INTERNAL = ("keyswarm.node", "keyswarm.sim", "keyswarm.cli", "keyswarm.client", "keyswarm.transport.zmq_sockets")


def forbidden_imports(source: str) -> list[str]:
    """Names of forbidden modules that `source` imports, in order of appearance."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in BANNED_STDLIB or name.startswith(BANNED_INTERNAL):
                found.append(name)
    return found


def actor_modules() -> list[Path]:
    return sorted(ACTORS.rglob("*.py"))


def test_actor_package_has_modules() -> None:
    assert len(actor_modules()) >= 3, f"no actor modules found under {ACTORS}"


@pytest.mark.parametrize("path", actor_modules(), ids=lambda p: p.name)
def test_actor_module_is_sans_io(path: Path) -> None:
    bad = forbidden_imports(path.read_text(encoding="utf-8"))
    assert not bad, f"{path.relative_to(ACTORS.parent.parent)} imports {bad}: actors act only through ctx"


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "from asyncio import sleep",
        "import zmq.asyncio as z",
        "def f():\n    import random\n",
        "from keyswarm.node.driver import NodeDriver",
        "from keyswarm import sim",
        "try:\n    import lmdb\nexcept ImportError:\n    pass\n",
    ],
)
def test_checker_catches_forbidden_imports(source: str) -> None:
    assert forbidden_imports(source), f"checker missed a forbidden import in {source!r}"


def test_checker_allows_pure_imports() -> None:
    source = "import heapq\nfrom collections import deque\nfrom keyswarm.errors import Busy\nimport timeit_helper_free\n"
    assert forbidden_imports(source) == []
