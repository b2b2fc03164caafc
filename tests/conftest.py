"""Shared pytest options and fixtures.

`--sim-seed=S` replays one simulation seed; without it every test taking the
`sim_seed` fixture runs over a small fixed sweep (SIM_SEED_SWEEP).
"""

from __future__ import annotations

import pytest

#: Seeds every simulation test runs by default. Small: the sim suite stays fast.
SIM_SEED_SWEEP = (1, 2, 3)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sim-seed",
        action="store",
        type=int,
        default=None,
        help="replay simulation tests with this one seed instead of the default sweep",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # `sim_seed` is a parametrized fixture: one test item per seed, named by it.
    if "sim_seed" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--sim-seed")
        seeds = (chosen,) if chosen is not None else SIM_SEED_SWEEP
        metafunc.parametrize("sim_seed", seeds, ids=[f"seed={s}" for s in seeds])
