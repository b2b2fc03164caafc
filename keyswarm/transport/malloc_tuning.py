"""Keep glibc from handing large buffers back to the kernel after every request.

Owns: `keep_large_buffers`, called once by a process that moves large frames
(the node, the CLI client, the benchmarks).

Why: a 1 MiB encrypt allocates several MiB-sized buffers per request (the
received frame, the opened plaintext, the ciphertext, the sealed reply).
glibc serves an allocation over its mmap threshold (128 KiB at start,
raised as large blocks are freed, up to 32 MiB) with a fresh mmap, and
trims the top of its heap once 2 x that threshold is free. Either way the
next request's buffers come back as new pages, and touching them costs a
page fault per 4 KiB: measured with a node serving 1 MiB encrypts, that
costs more than the AES-GCM itself (bulk at 2.1 Gbit/s with the defaults,
3.5 with these settings, under cProfile; `bench/service.py
--profile-node 5 --profile-op bulk`).

What: M_MMAP_THRESHOLD = 64 MiB (every frame up to the 16 MiB limit comes
from the heap, so freed blocks are reused) and M_TRIM_THRESHOLD = 256 MiB
(up to that much freed heap stays mapped). The cost is memory the process
keeps after a burst of large frames instead of returning it: at most about
256 MiB. Anywhere but glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024

_done = False


def keep_large_buffers() -> bool:
    """Set the two thresholds once per process; True when glibc took them."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname; find_library would run ldconfig
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if ok:
        _done = True
        log.debug("malloc: mmap threshold %d MiB, trim threshold %d MiB", MMAP_THRESHOLD_BYTES >> 20,
                  TRIM_THRESHOLD_BYTES >> 20)
    return ok
