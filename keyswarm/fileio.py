"""Bounded reads of small files the node trusts nothing about (key files, certificates).

Owns `read_at_most`: the one loop that reads an open file descriptor until
EOF or one byte past a limit, so a caller can tell "too large" (it got
`limit + 1` bytes) from a file that changed size while it was read, and a
hostile file (a FIFO, /dev/zero behind a symlink, a file growing forever)
can never make it read more than `limit + 1` bytes.
"""

from __future__ import annotations

import os


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to `limit + 1` bytes from `fd` (short reads retried until EOF); OSError as `os.read` raises it."""
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
