"""The `YubiKeyToken` suite against a real YubiKey (marker `hardware`).

Runs only when `KEYSWARM_TEST_YUBIKEY=<serial>` names a connected key, and
is reported as skipped otherwise. It is the very `YubiKeyTokenSuite` that
`tests/unit/test_yubikey_token.py` runs on the virtual device.

THE SUITE IS DESTRUCTIVE: it generates new keys in PIV slots 9c and 82
(the old ones are gone), deletes their certificates, programs OTP slot 2
with HMAC-SHA1 secrets, and blocks the PIN on purpose before unblocking it
with the PUK. Use a spare key with known credentials:
`KEYSWARM_TEST_PIN` (default 123456), `KEYSWARM_TEST_PUK` (default 12345678),
`KEYSWARM_TEST_MANAGEMENT_KEY` in hex (default: the factory key).

    KEYSWARM_TEST_YUBIKEY=12345678 .venv/bin/python -m pytest tests/hardware -m hardware
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyswarm.hardware.specs import open_yubikey_connection
from keyswarm.hardware.yubikey_token import YubiKeyToken

SERIAL_VARIABLE = "KEYSWARM_TEST_YUBIKEY"

pytestmark = pytest.mark.hardware

if not os.environ.get(SERIAL_VARIABLE):
    # One skip for the module, reported with its reason (the suite is not even loaded).
    pytest.skip(
        f"no real YubiKey: set {SERIAL_VARIABLE}=<serial> of a spare key (the suite destroys its PIV keys)",
        allow_module_level=True,
    )


def _load_suite():
    # The shared suite lives beside the virtual-device tests; test directories
    # are not packages, so load that module by path (as test_bench_common does).
    path = Path(__file__).resolve().parents[1] / "unit" / "test_yubikey_token.py"
    spec = importlib.util.spec_from_file_location("keyswarm_yubikey_token_suite", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


suite = _load_suite()


@pytest.fixture
def rig() -> Iterator[object]:
    serial = int(os.environ[SERIAL_VARIABLE])
    key_hex = os.environ.get("KEYSWARM_TEST_MANAGEMENT_KEY")
    management_key = bytes.fromhex(key_hex) if key_hex else None

    def open_token(**options: object) -> YubiKeyToken:
        options.setdefault("management_key", management_key)
        return YubiKeyToken.open(serial, **options)

    probe = YubiKeyToken.open(serial, management_key=management_key)
    firmware = tuple(int(part) for part in probe.firmware.split("."))
    probe.close()
    rig = suite.Rig(
        open=open_token,
        connect=lambda: open_yubikey_connection(serial),
        firmware=firmware,
        pin=os.environ.get("KEYSWARM_TEST_PIN", "123456"),
        puk=os.environ.get("KEYSWARM_TEST_PUK", "12345678"),
    )
    yield rig
    for token in rig.opened:
        token.close()


class TestRealYubiKey(suite.YubiKeyTokenSuite):
    """The whole YubiKeyToken path on the key named by KEYSWARM_TEST_YUBIKEY."""
