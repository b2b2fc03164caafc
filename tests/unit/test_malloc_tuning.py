"""transport/malloc_tuning.py: glibc takes the thresholds once; elsewhere nothing happens."""

from __future__ import annotations

import platform

import pytest

from keyswarm.transport import malloc_tuning


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_glibc_takes_the_thresholds_once() -> None:
    assert malloc_tuning.keep_large_buffers() is True
    assert malloc_tuning.keep_large_buffers() is True  # idempotent


def test_without_glibc_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(malloc_tuning, "_done", False)
    monkeypatch.setattr(malloc_tuning.ctypes, "CDLL", no_libc)
    assert malloc_tuning.keep_large_buffers() is False
