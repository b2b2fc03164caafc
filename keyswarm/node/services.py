"""Blocking services: the code actors reach only through `ctx.ask`.

A service is a plain object with a `name` and `handle(request) -> value`
that may block (fsync, a token APDU). The real driver runs each service on
its own thread behind a bounded queue; the simulator calls `handle` inline
and delivers the result after a modelled latency. `handle` raises
`KeyswarmError` subclasses for failures the asking actor should see; any
other exception is a bug, which the driver reports as `ServiceError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Protocol

from keyswarm.actors.demo import COUNTER_SERVICE, CounterIncrement
from keyswarm.errors import ServiceError


class BlockingService(Protocol):
    name: str

    def handle(self, request: object) -> object: ...

    def close(self) -> None: ...


class CounterStore:
    """Named integer counters, optionally persisted to a JSON file with fsync.

    The foundation's example of a blocking service: with a path, every
    increment is written to a temporary file, fsynced and renamed into place,
    so an acknowledged value survives a crash.
    """

    name = COUNTER_SERVICE
    MAX_COUNTERS = 100_000

    def __init__(self, path: str | None = None):
        self.path = path
        self.values: dict[str, int] = {}
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    loaded = json.load(f)
            except (OSError, ValueError) as exc:
                raise ServiceError(f"counter file {path} is unreadable: {exc}") from exc
            if not isinstance(loaded, dict) or not all(
                isinstance(k, str) and type(v) is int for k, v in loaded.items()
            ):
                raise ServiceError(f"counter file {path} does not hold a map of names to integers")
            self.values = loaded

    def handle(self, request: object) -> object:
        if type(request) is not CounterIncrement:
            raise ServiceError(f"counter store cannot handle {type(request).__name__}")
        if request.name not in self.values and len(self.values) >= self.MAX_COUNTERS:
            raise ServiceError("too many counters")
        value = self.values.get(request.name, 0) + request.by
        self.values[request.name] = value
        if self.path:
            self._persist()
        return value

    def _persist(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".counters.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.values, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ServiceError(f"cannot write counter file {self.path}: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def close(self) -> None:
        pass
