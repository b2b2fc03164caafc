"""fileio.read_at_most: never more than limit + 1 bytes, whatever the file does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyswarm.fileio import read_at_most


@pytest.mark.parametrize("size, limit, expected", [(0, 10, 0), (10, 10, 10), (11, 10, 11), (5000, 10, 11)])
def test_reads_up_to_one_byte_past_the_limit(tmp_path: Path, size: int, limit: int, expected: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
    fd = os.open(path, os.O_RDONLY)
    try:
        data = read_at_most(fd, limit)
    finally:
        os.close(fd)
    assert len(data) == expected and data == path.read_bytes()[:expected]


def test_an_endless_source_is_cut_at_limit_plus_one() -> None:
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        assert read_at_most(fd, 1 << 16) == bytes((1 << 16) + 1)
    finally:
        os.close(fd)


def test_short_reads_are_retried_until_eof() -> None:
    read, write = os.pipe()
    for part in (b"ab", b"cd", b"e"):
        os.write(write, part)
    os.close(write)
    try:
        assert read_at_most(read, 100) == b"abcde"
    finally:
        os.close(read)
