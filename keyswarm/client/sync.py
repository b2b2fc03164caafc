"""`Client`: the blocking face of `AsyncClient`, for scripts and the CLI.

    with Client.connect("tcp://127.0.0.1:7001", root_certificate="root.pem",
                        client_certificate="client.pem", key="key.pem") as client:
        ciphertext = client.encrypt("app1/db", b"secret")
        assert client.decrypt(ciphertext) == b"secret"

Rules:
- One `AsyncClient` runs on an event loop in a daemon thread this object
  owns; every method is the async one, run there and waited for. The same
  session, resumption, retries and typed exceptions.
- `submit(op, *args, **kwargs)` returns a `concurrent.futures.Future`
  without waiting, so a blocking caller can pipeline too.
- `close` (or leaving `with`) closes the client and stops the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import uvloop

from keyswarm.client.session import OPERATIONS, AsyncClient

#: Longest a blocking call waits beyond the client's own timeouts and retries (a stuck loop).
_GRACE_S = 30.0


class Client:
    """A blocking authenticated client; `Client.connect(...)` takes `AsyncClient.connect`'s arguments."""

    def __init__(self) -> None:
        # uvloop (a dependency; the node runs on it too): its futures and reader callbacks cost about
        # a fifth less CPU per request than asyncio's own loop (bench/service.py --loop).
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="keyswarm-client", daemon=True)
        self._thread.start()
        self._client: AsyncClient | None = None

    @classmethod
    def connect(cls, endpoint: str, **kwargs: Any) -> Client:
        client = cls()
        try:
            client._client = client._run(AsyncClient.connect(endpoint, **kwargs))
        except BaseException:
            client._stop()
            raise
        return client

    @property
    def session(self):  # noqa: ANN201 -- the current `ClientSession`
        return self._client.session if self._client else None

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._client.stats) if self._client else {}

    @property
    def async_client(self) -> AsyncClient:
        assert self._client is not None
        return self._client

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, op: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Start operation `op` (a method name of `AsyncClient`) and return its future at once."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}")
        return asyncio.run_coroutine_threadsafe(getattr(self.async_client, op)(*args, **kwargs), self._loop)

    def call_async(self, coro_factory: Any) -> Any:
        """Run `coro_factory(async_client)` on the client's loop and wait for it (e.g. an `asyncio.gather`)."""
        return self._run(coro_factory(self.async_client))

    def close(self) -> None:
        if self._client is not None:
            try:
                self._run(self._client.close())
            finally:
                self._client = None
        self._stop()

    def _stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _blocking(name: str) -> Any:
    def method(self: Client, *args: Any, **kwargs: Any) -> Any:
        return self.submit(name, *args, **kwargs).result()

    method.__name__ = name
    method.__doc__ = getattr(AsyncClient, name).__doc__
    return method


for _name in OPERATIONS:
    setattr(Client, _name, _blocking(_name))
