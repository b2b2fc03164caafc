"""`NodeThread`: a real node (`NodeDriver`) on its own uvloop in a daemon thread.

Owns running one node inside the calling process, for tests and benchmarks
that want real sockets without a process per node: start (waiting, bounded,
until the sockets are bound), stop (graceful, then forced), and calling into
the node's loop thread to read its state safely.

Rules:
- Every wait is bounded; a node that does not start or stop in time is an
  `Unavailable` naming it, and an exception raised on the node's thread is
  re-raised in the thread that starts or stops it.
- The driver's state belongs to the node's thread: read it through `call`
  (or only while the node is idle or stopped).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import uvloop

from keyswarm.config import NodeConfig
from keyswarm.errors import Unavailable
from keyswarm.node.driver import NodeDriver

T = TypeVar("T")


class NodeThread:
    """A `NodeDriver` on its own uvloop in a daemon thread (tests and benchmarks).

    `with NodeThread(config) as node:` starts it (waiting until bound) and stops
    it on exit. `node.driver` is the driver; read its state only when the node
    is idle or stopped (it belongs to the node's thread).
    """

    def __init__(self, config: NodeConfig, **driver_kwargs: object):
        self.driver = NodeDriver(config, **driver_kwargs)
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"keyswarm-node-{config.node.id}", daemon=True)

    @property
    def client_endpoint(self) -> str:
        return self.driver.client_endpoint

    @property
    def peer_endpoint(self) -> str:
        return self.driver.peer_endpoint

    def _main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                self.exit_code = runner.run(self.driver.run())
        except BaseException as exc:  # handed to the starting or stopping thread, which re-raises it
            self.error = exc

    def start(self, timeout_s: float = 10.0) -> NodeThread:
        """Start the node and wait until its sockets are bound; re-raises a start failure."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.driver.ready.wait(0.01):
            if not self._thread.is_alive():  # `run` failed before it was up
                raise self.error or Unavailable(f"node {self.driver.node_id} exited while starting")
            if time.monotonic() >= deadline:
                self.driver.request_stop()
                raise Unavailable(f"node {self.driver.node_id} did not start within {timeout_s} s")
        return self

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Request a graceful stop and wait for it; returns the driver's exit code."""
        if self._thread.ident is None:
            return None  # never started
        if not self.driver.stop_requested:  # a second request would cut the drain short
            self.driver.request_stop()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.driver.request_stop()  # second request: stop at once
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise Unavailable(f"node {self.driver.node_id} did not stop within {2 * timeout_s} s")
        if self.error is not None:
            raise self.error
        return self.exit_code

    def call(self, fn: Callable[[], T], timeout_s: float = 5.0) -> T:
        """Run `fn` on the node's loop thread and return its result (to read state safely)."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed back to the calling thread
                done.set_exception(exc)

        self.driver._loop.call_soon_threadsafe(run)
        return done.result(timeout_s)

    def stats(self, timeout_s: float = 5.0) -> dict[str, object]:
        """`driver.stats()`, read on the node's thread."""
        return self.call(self.driver.stats, timeout_s)

    def __enter__(self) -> NodeThread:
        return self.start() if self._thread.ident is None else self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self.stop()
