"""Blocking services on their own threads, results posted back to the event loop.

Owns: one thread and one bounded queue per `BlockingService`, and the hand-off
of results to the loop thread, where the driver gives them to
`NodeRuntime.complete`.

Rules:
- `submit` never blocks the loop: a full queue (or a stopping service)
  returns False, and the runtime answers the asking actor with `Busy`.
- A service's `handle` runs only on that service's thread, one request at a
  time, in submission order (a token or an LMDB writer needs no locking).
- Results cross to the loop in batches: all threads append to one list, and
  only the append that finds the list empty schedules a loop callback
  (`call_soon_threadsafe` wakes the loop through a pipe write; once per batch,
  not once per result).
- `KeyswarmError` from `handle` is the answer's `error`; any other exception is
  a bug in the service: logged with its traceback and answered as
  `ServiceError` carrying its repr. The thread keeps serving.
- Threads are daemons so that a service stuck in `handle` cannot keep the
  process alive; `close` joins them with a timeout and says which did not stop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable

from keyswarm.errors import KeyswarmError, ServiceError
from keyswarm.node.services import BlockingService

log = logging.getLogger("keyswarm.services")

#: `(ticket, value, error)` as handed to `NodeRuntime.complete`.
Result = tuple[int, object, KeyswarmError | None]


class _ServiceThread:
    """One service, its queue and its thread."""

    def __init__(self, service: BlockingService, capacity: int, post: Callable[[Result], None]):
        self.service = service
        self.capacity = capacity
        self._post = post
        self._queue: deque[tuple[int, object]] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._stopping = False
        self.handled = 0
        self.refused = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._serve, name=f"keyswarm-service-{service.name}", daemon=True)

    def submit(self, ticket: int, request: object) -> bool:
        with self._ready:
            if self._stopping or len(self._queue) >= self.capacity:
                self.refused += 1
                return False
            self._queue.append((ticket, request))
            self._ready.notify()
        return True

    def stop(self) -> None:
        """Ask the thread to exit after the request it is handling; queued ones are abandoned."""
        with self._ready:
            self._stopping = True
            self._queue.clear()
            self._ready.notify()

    def queued(self) -> int:
        return len(self._queue)

    def _serve(self) -> None:
        service = self.service
        while True:
            with self._ready:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                ticket, request = self._queue.popleft()
            try:
                value, error = service.handle(request), None
            except KeyswarmError as exc:
                value, error = None, exc
            except Exception as exc:  # a bug in the service; the asker gets an answer anyway
                log.exception("service %s failed on %s", service.name, type(request).__name__)
                self.failed += 1
                value, error = None, ServiceError(f"service {service.name} failed: {exc!r}")
            self.handled += 1
            self._post((ticket, value, error))


class ServiceThreads:
    """All of a node's blocking services, each on its own thread.

    `complete(ticket, value, error)` is called on the loop thread, in batches;
    `after_batch()` runs once after each batch (the driver pumps its runtime).
    """

    def __init__(
        self,
        services: dict[str, BlockingService],
        *,
        queue_capacity: int,
        complete: Callable[[int, object, KeyswarmError | None], None],
        after_batch: Callable[[], None] = lambda: None,
    ):
        self._complete = complete
        self._after_batch = after_batch
        self._results: list[Result] = []
        self._results_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads = {
            name: _ServiceThread(service, queue_capacity, self._post) for name, service in services.items()
        }
        self.batches = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start every thread; results will be posted to `loop`."""
        self._loop = loop
        for worker in self._threads.values():
            worker.thread.start()

    def submit(self, service: str, ticket: int, request: object) -> bool:
        """Queue `request` for `service`; False when unknown, full or stopping (called on the loop)."""
        worker = self._threads.get(service)
        return worker is not None and worker.submit(ticket, request)

    def queued(self) -> int:
        """Requests waiting in all queues (not counting those being handled)."""
        return sum(worker.queued() for worker in self._threads.values())

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            name: {"queued": w.queued(), "handled": w.handled, "refused": w.refused, "failed": w.failed}
            for name, w in self._threads.items()
        }

    def close(self, timeout_s: float) -> list[str]:
        """Stop and join every thread, then close the services that stopped.

        Returns the names of services whose thread did not stop in time (their
        `close` is skipped: it would race the `handle` still running).
        """
        for worker in self._threads.values():
            worker.stop()
        stuck = []
        for name, worker in self._threads.items():
            if worker.thread.ident is not None:  # started (joining an unstarted thread raises)
                worker.thread.join(timeout_s)
            if worker.thread.is_alive():
                log.error("service %s did not stop within %.1f s; abandoning its thread", name, timeout_s)
                stuck.append(name)
                continue
            try:
                worker.service.close()
            except Exception:  # closing is best effort; one failure must not keep others open
                log.exception("closing service %s failed", name)
        return stuck

    # --- crossing to the loop ----------------------------------------------

    def _post(self, result: Result) -> None:
        """On a service thread: add a result; wake the loop if this starts a batch."""
        with self._results_lock:
            first = not self._results
            self._results.append(result)
        if first:
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:
                pass  # the loop is closed: the node stopped; the result has nobody to go to

    def _deliver(self) -> None:
        """On the loop: hand the pending batch to the runtime."""
        with self._results_lock:
            batch, self._results = self._results, []
        if not batch:
            return
        self.batches += 1
        complete = self._complete
        for ticket, value, error in batch:
            complete(ticket, value, error)
        self._after_batch()
