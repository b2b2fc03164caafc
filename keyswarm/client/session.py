"""`AsyncClient`: the authenticated client of one node (zmq.asyncio), with sessions, resumption and pipelining.

    client = await AsyncClient.connect("tcp://127.0.0.1:7001", root_certificate="root.pem",
                                       client_certificate="client.pem", key="key.pem")
    await client.create_key("app1/db", "aes256-gcm")
    ciphertext = await client.encrypt("app1/db", b"secret")
    assert await client.decrypt(ciphertext) == b"secret"
    await client.close()

Rules (docs/protocol.md sections 4, 5, 11.5 and 12; docs/client.md):
- `connect` runs the full handshake: the node's chain is verified to the
  pinned root before the client's key signs anything (`ClientHandshake`).
- Requests are pipelined: each is sealed in its own in-session frame with
  its own inner request id; a reader task matches replies by that id, so
  any number may be in flight and answers come in any order.
- A frame-level refusal of the session (a plain `SESSION_EXPIRED` or
  `UNAUTHENTICATED` reply under the frame's counter) renews the session
  once -- by ticket when there is one, else (or when the resumption is
  refused) with a full handshake -- and resends the request. A session
  near its expiry is renewed before a request is sent.
- Errors are typed (`keyswarm.client.errors`); retryable ones (and
  timeouts) are retried up to `retries` times with jittered exponential
  backoff. Key-changing writes carry a random `client_request_id`, the same
  on every retry, so a retried write applies once.
- Plain (handshake) requests use ids from 2^62 up, so they never collide
  with a session's frame counters, which count from 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import keyswarm.actors.key_messages as km
from keyswarm.actors.messages import Health, HealthResult
from keyswarm.client.errors import (
    ClientError,
    RequestTimeout,
    TooLargeError,
    UnavailableError,
    error_from,
)
from keyswarm.crypto import envelope
from keyswarm.crypto.handshake import ClientCredentials, ClientHandshake, ClientSession, PeerAuthFailed
from keyswarm.crypto.resumption import ClientResumption
from keyswarm.crypto.session_keys import open_parsed, parse_frame, preferred_suites
from keyswarm.errors import AuthError, DecodeError, ErrorCode, KeyswarmError
from keyswarm.storage.policy_bodies import PolicyRule
from keyswarm.transport import frames
from keyswarm.transport.codec import DEFAULT_LIMITS

#: Plain request ids start here; session counters stay far below.
_PLAIN_BASE = 2**62
#: Renew a session this long before the node would call it expired.
_RENEW_MARGIN_S = 5.0
_BACKOFF_BASE_S = 0.05
_BACKOFF_MAX_S = 2.0
#: The first bytes of every in-session frame: fixarray(4), version 1, "s".
_SESSION_PREFIX = b"\x94\x01\xa1\x73"
_SESSION_LOST = frozenset({ErrorCode.SESSION_EXPIRED, ErrorCode.UNAUTHENTICATED})


class CredentialsError(AuthError):
    """The client's own credentials cannot be read or used (a file, a passphrase, a certificate)."""


# --- credentials -------------------------------------------------------------------------


Signer = Callable[[bytes], bytes]


def _certificate(value: str | os.PathLike[str] | bytes | x509.Certificate, what: str) -> x509.Certificate:
    if isinstance(value, x509.Certificate):
        return value
    try:
        data = value if isinstance(value, bytes) else Path(value).read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{what} {value}: {exc.strerror or exc}") from exc
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CredentialsError(f"{what} {value if not isinstance(value, bytes) else ''}: not a certificate ({exc})") from exc


def key_file_signer(path: str | os.PathLike[str], passphrase: str | bytes | None = None) -> Signer:
    """A signer over a PKCS#8 key file (Ed25519 or P-256), as `keyswarm enroll-client --key-file` writes."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CredentialsError(f"key file {path}: {exc.strerror or exc}") from exc
    password = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    try:
        key = serialization.load_pem_private_key(data, password=password or None)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain key
        raise CredentialsError(f"key file {path}: {exc}") from exc
    except ValueError as exc:
        raise CredentialsError(f"key file {path}: cannot read the key (wrong passphrase or not a PKCS#8 key)") from exc
    if isinstance(key, Ed25519PrivateKey):
        return key.sign
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))
    raise CredentialsError(f"key file {path}: a client key is Ed25519 or P-256, not {type(key).__name__}")


def slot_9a_signer(spec: str, pin: str | None = None, *, management_key: bytes | None = None,
                   keep_open: bool = True) -> Signer:
    """A signer over the key in PIV slot 9a of a YubiKey (`yubikey:SERIAL` or `virtual:PATH`).

    `keep_open` (the default) keeps one PIV session to the device between
    signatures, so the PIN is verified once, not at every handshake: a
    PIN verify costs ~10 ms and resets the PIN retry counter in the
    device's flash each time. While the signer lives, this process holds the
    device's PIV session (`close()` it to let others in). A session that
    fails (the device was unplugged, the PIN state was lost) is dropped and
    the signature tried once more on a fresh one, with the PIN; a failure on
    a fresh session (a wrong PIN above all) is raised at once, so no PIN try
    is ever spent twice. `keep_open=False` opens the device for each
    signature, as a one-shot command does.
    """
    from keyswarm.hardware.client_slot import ClientSlot
    from keyswarm.hardware.specs import parse_token_spec

    parsed = parse_token_spec(spec)
    if not keep_open:
        def sign_once(data: bytes) -> bytes:
            with ClientSlot.open(parsed, management_key=management_key) as slot:
                return slot.sign(data, pin=pin)

        return sign_once
    return _KeptSlotSigner(lambda: ClientSlot.open(parsed, management_key=management_key), pin)


class _KeptSlotSigner:
    """`slot_9a_signer(keep_open=True)`: one PIV session, opened on first use, kept (thread-safe)."""

    def __init__(self, open_slot: Callable[[], Any], pin: str | None):
        self._open_slot = open_slot
        self._pin = pin
        self._slot: Any = None
        self._lock = threading.Lock()
        self.opened = 0  # sessions opened so far

    def __call__(self, data: bytes) -> bytes:
        with self._lock:
            for _ in range(2):
                fresh = self._slot is None
                if fresh:
                    self._slot = self._open_slot()
                    self.opened += 1
                slot = self._slot
                try:
                    # The PIN only on a fresh session: slot 9a's PIN policy keeps it verified for the session.
                    return slot.sign(data, pin=self._pin if fresh else None)
                except KeyswarmError:
                    self._slot = None
                    slot.close()
                    if fresh:
                        raise
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._slot is not None:
                self._slot.close()
                self._slot = None


def _signer_of(key: object, passphrase: str | bytes | None) -> Signer:
    if isinstance(key, str | os.PathLike):
        return key_file_signer(key, passphrase)
    sign = getattr(key, "sign", None)  # a Token (YubiKeyToken, SoftToken) or any object with sign(data)
    if callable(sign):
        return sign
    if callable(key):
        return key  # type: ignore[return-value]
    raise CredentialsError(f"key: expected a key file path, a Token or a signer, got {type(key).__name__}")


# --- the client --------------------------------------------------------------------------


@dataclass
class _Pending:
    future: asyncio.Future
    counter: int = -1


def revoked_fingerprints(entries: Collection[bytes | str]) -> frozenset[bytes]:
    """SHA-256 certificate fingerprints from bytes or hex (colons and case as openssl prints them);
    CredentialsError naming the first entry that is neither."""
    if isinstance(entries, (str, bytes)):
        raise CredentialsError("revoked_certificates is a collection of fingerprints, not one string")
    out = set()
    for entry in entries:
        if isinstance(entry, bytes) and len(entry) == 32:
            out.add(entry)
            continue
        text = entry.replace(":", "").strip() if isinstance(entry, str) else ""
        try:
            value = bytes.fromhex(text)
        except ValueError:
            value = b""
        if len(value) != 32:
            raise CredentialsError(f"revoked certificate {str(entry)[:80]!r} is not a SHA-256 fingerprint "
                                   "(64 hex digits, colons allowed)")
        out.add(value)
    return frozenset(out)


class _Expired(Exception):
    """A request's timer fired before its answer came."""


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(_Expired())


class _SessionLost(Exception):
    def __init__(self, error: ClientError, generation: int):
        self.error, self.generation = error, generation


class AsyncClient:
    """An authenticated client of one node. Build it with `await AsyncClient.connect(...)`."""

    #: Wall seconds the node's chain is verified at (`connect(clock=...)`: a test, a host with a skewed clock).
    clock: Callable[[], float] = staticmethod(time.time)
    #: Fingerprints of node / sub-key certificates refused at the handshake (`connect(revoked_certificates=...)`).
    revoked: frozenset[bytes] = frozenset()

    def __init__(
        self,
        endpoint: str,
        *,
        credentials: ClientCredentials,
        signer: Signer,
        timeout_s: float = 5.0,
        retries: int = 3,
        zmq_context: zmq.asyncio.Context | None = None,
        suites: tuple[int, ...] | None = None,
        max_frame_bytes: int = DEFAULT_LIMITS.max_frame_bytes,
    ):
        if retries < 0 or not timeout_s > 0:
            raise ValueError("retries must be >= 0 and timeout_s positive")
        if not 1024 <= max_frame_bytes <= 1 << 30:
            raise ValueError("max_frame_bytes must be 1 KiB .. 1 GiB")
        self.limits = dataclasses.replace(DEFAULT_LIMITS, max_frame_bytes=max_frame_bytes,
                                          max_bin_bytes=max(max_frame_bytes, DEFAULT_LIMITS.max_bin_bytes))
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self._credentials = credentials
        self._signer = signer
        # Session AEAD suites offered, preferred first (docs/protocol.md 12.6); None: this CPU's order.
        self.suites = preferred_suites() if suites is None else tuple(suites)
        self._owns_context = zmq_context is None
        self._context = zmq.asyncio.Context() if zmq_context is None else zmq_context
        # A plain (not asyncio) socket driven by the loop's reader callback, as the node's driver
        # does: a zmq.asyncio recv or send costs a future per message, more than the message.
        self._sock = zmq.Socket(self._context, zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # A node's frame larger than ours is never read into memory: libzmq drops that link (as the
        # node does for clients, zmq_sockets.client_router); up to it, the codec checks every frame.
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self._sock.connect(endpoint)
        self._loop = asyncio.get_running_loop()
        self._next_plain = _PLAIN_BASE
        self._next_rid = 1
        self._plain: dict[int, asyncio.Future] = {}
        self._pending: dict[int, _Pending] = {}
        self._counters: dict[int, int] = {}  # frame counter (current session) -> inner request id
        self._channels: dict[bytes, Any] = {}  # session id -> channel (the current and recent ones)
        self.session: ClientSession | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._closed = False
        self._fd = self._sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._drain)
        self.stats = {"handshakes": 0, "resumptions": 0, "retries": 0, "late_replies": 0}

    @classmethod
    async def connect(
        cls,
        endpoint: str,
        *,
        root_certificate: str | os.PathLike[str] | bytes | x509.Certificate,
        client_certificate: str | os.PathLike[str] | bytes | x509.Certificate,
        key: object,
        passphrase: str | bytes | None = None,
        intermediates: Sequence[str | os.PathLike[str] | bytes | x509.Certificate] = (),
        timeout_s: float = 5.0,
        retries: int = 3,
        zmq_context: zmq.asyncio.Context | None = None,
        suites: tuple[int, ...] | None = None,
        max_frame_bytes: int = DEFAULT_LIMITS.max_frame_bytes,
        clock: Callable[[], float] | None = None,
        revoked_certificates: Collection[bytes | str] = (),
    ) -> AsyncClient:
        """Connect and authenticate (full handshake). `key`: a key file path (+ `passphrase`), a Token, or a signer.

        `revoked_certificates`: SHA-256 fingerprints (32 bytes, or hex, colons allowed as `openssl x509
        -fingerprint -sha256` prints them) of node or sub-key certificates this client refuses, whatever
        the node says: a revoked node that is compromised would not refuse its own clients
        (docs/operations.md, "Revoking a node")."""
        root = _certificate(root_certificate, "root certificate")
        own = _certificate(client_certificate, "client certificate")
        der = serialization.Encoding.DER
        try:
            credentials = ClientCredentials(
                root_certificate=root, certificate=own.public_bytes(der),
                intermediates=tuple(_certificate(c, "intermediate certificate").public_bytes(der) for c in intermediates),
            )
        except (ValueError, KeyswarmError) as exc:
            raise CredentialsError(f"client credentials: {exc}") from exc
        revoked = revoked_fingerprints(revoked_certificates)
        client = cls(endpoint, credentials=credentials, signer=_signer_of(key, passphrase), timeout_s=timeout_s,
                     retries=retries, zmq_context=zmq_context, suites=suites, max_frame_bytes=max_frame_bytes)
        client.revoked = revoked
        if clock is not None:
            client.clock = clock  # type: ignore[method-assign]
        try:
            await client._with_retries(lambda: client._renew(client._generation, resume=False))
        except BaseException:
            await client.close()
            raise
        return client

    # --- lifecycle ---------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        for waiter in [*self._plain.values(), *(p.future for p in self._pending.values())]:
            if not waiter.done():
                waiter.set_exception(UnavailableError("the client is closed"))
        self._sock.close(linger=0)
        if self._owns_context:
            self._context.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the wire ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Take every frame queued, without waiting (the loop calls this when the socket's FD wakes).

        ZeroMQ's FD is edge-triggered and a send can consume its edge, so `_send`
        schedules a drain itself when frames wait after it sent (as the node's
        driver does, `zmq_sockets.has_input`).
        """
        if self._closed:
            return
        recv, again = self._sock.recv, zmq.Again
        while True:
            try:
                data = recv(zmq.NOBLOCK)
            except again:
                return
            except zmq.ZMQError:  # closed under us
                return
            try:
                self._dispatch(data)
            except (DecodeError, KeyswarmError, ValueError, TypeError, IndexError):
                self.stats["late_replies"] += 1  # a frame we cannot read, open or match: dropped

    def _dispatch(self, data: bytes) -> None:
        if data[:4] == _SESSION_PREFIX:  # [1, "s", ...]: an in-session frame
            counter, session_id, ciphertext = parse_frame(data, limits=self.limits)
            channel = self._channels.get(session_id)
            if channel is None:
                self.stats["late_replies"] += 1
                return
            _counter, plaintext = open_parsed(channel, counter, session_id, ciphertext, window=channel)
            reply = frames.decode_reply(plaintext, limits=self.limits)
            pending = self._pending.pop(reply.request_id, None)
            if pending is None:
                self.stats["late_replies"] += 1
                return
            self._counters.pop(pending.counter, None)
            if not pending.future.done():
                pending.future.set_result(reply)
            return
        reply = frames.decode_reply(data, limits=self.limits)
        waiter = self._plain.pop(reply.request_id, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(reply)
            return
        rid = self._counters.pop(reply.request_id, None)  # a plain refusal of one of our session frames
        pending = self._pending.get(rid) if rid is not None else None
        if pending is not None and reply.error is not None and not pending.future.done():
            del self._pending[rid]
            pending.future.set_result(_SessionLost(error_from(reply.error), self._generation))
        else:
            self.stats["late_replies"] += 1

    async def _wait(self, future: asyncio.Future, timeout_s: float, cleanup: Callable[[], None]) -> Any:
        # One timer handle, cancelled on the answer: `asyncio.wait_for` adds a second future and
        # two callbacks per request, which at 10,000 requests/s is a visible share of the client.
        handle = asyncio.get_running_loop().call_later(timeout_s, _expire, future)
        try:
            return await future
        except _Expired:
            cleanup()
            raise RequestTimeout(f"no reply from {self.endpoint} within {timeout_s:g} s") from None
        finally:
            handle.cancel()

    async def _send(self, data: bytes | bytearray, timeout_s: float) -> None:
        copy = len(data) < zmq.COPY_THRESHOLD  # a large frame goes zero-copy
        sock = self._sock
        delay, deadline = 0.0005, None
        while True:
            try:
                sock.send(data, zmq.NOBLOCK, copy=copy)
                break
            except zmq.Again:  # the queue to the node is full (it is not reading): wait for room
                now = time.monotonic()
                deadline = deadline or now + timeout_s
                if now >= deadline:
                    raise RequestTimeout(f"{self.endpoint} took no request within {timeout_s:g} s (its queue is full)")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
            except zmq.ZMQError as exc:
                raise UnavailableError(f"cannot send to {self.endpoint}: {exc}") from exc
            if self._closed:
                raise UnavailableError("the client is closed")
        if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # our send took the FD's edge: read now
            self._loop.call_soon(self._drain)

    async def _plain_call(self, msg: object) -> object:
        """A plain (handshake) request; the value, or the typed error raised."""
        rid = self._next_plain
        self._next_plain += 1
        future = asyncio.get_running_loop().create_future()
        self._plain[rid] = future
        await self._send(frames.encode_request(rid, msg), self.timeout_s)
        reply = await self._wait(future, self.timeout_s, lambda: self._plain.pop(rid, None))
        if reply.error is not None:
            raise error_from(reply.error)
        return reply.value

    async def _sealed_call(self, msg: object, timeout_s: float) -> frames.Reply | _SessionLost:
        if self.session is None or self.session.expires_at_s - time.time() < _RENEW_MARGIN_S:
            await self._renew(self._generation)
        session, generation = self.session, self._generation
        rid = self._next_rid
        self._next_rid += 1
        future = asyncio.get_running_loop().create_future()
        counter = session.channel.next_counter
        frame = session.channel.seal(frames.encode_request(rid, msg))
        limit = session.max_frame_bytes
        if limit and len(frame) > limit:  # the node would refuse it, or libzmq drop the link: say so here
            raise TooLargeError(f"the request's frame of {len(frame)} bytes is over the frame limit of node "
                                f"{session.node!r} ({limit} bytes); split it, or use encrypt_envelope for bulk data")
        self._pending[rid] = _Pending(future, counter)
        self._counters[counter] = rid
        await self._send(frame, timeout_s)

        def cleanup() -> None:
            self._pending.pop(rid, None)
            self._counters.pop(counter, None)

        result = await self._wait(future, timeout_s, cleanup)
        if isinstance(result, _SessionLost):
            result.generation = generation
        return result

    # --- sessions ------------------------------------------------------------------------

    async def _renew(self, generation: int, *, resume: bool = True) -> None:
        """A new session, unless another request renewed it since `generation`."""
        async with self._lock:
            if self._generation != generation and self.session is not None:
                return
            session = None
            old = self.session
            if resume and old is not None and old.ticket and old.ticket_expires_at_s > time.time() + 1.0:
                try:
                    machine = ClientResumption.from_session(old, suites=self.suites)
                    resumed = await self._plain_call(machine.resume(os.urandom))
                    session = machine.receive_resumed(resumed)
                    self.stats["resumptions"] += 1
                except (ClientError, PeerAuthFailed) as exc:
                    if isinstance(exc, ClientError) and exc.retryable:
                        raise
                    session = None  # the ticket is refused: fall back to the full handshake
            if session is None:
                session = await self._handshake()
            self.session = session
            self._generation += 1
            self._counters.clear()
            self._channels[session.session_id] = session.channel
            while len(self._channels) > 4:
                del self._channels[next(iter(self._channels))]

    async def _handshake(self) -> ClientSession:
        machine = ClientHandshake(self._credentials, suites=self.suites)
        challenge = await self._plain_call(machine.hello(os.urandom))
        # verifies the node (and that it is not one we were told is revoked) before we sign
        to_sign = machine.receive_challenge(challenge, now=self.clock(), revoked=self.revoked)
        signature = await asyncio.get_running_loop().run_in_executor(None, self._signer, to_sign)
        welcome = await self._plain_call(machine.auth(signature))
        session = machine.receive_welcome(welcome)
        self.stats["handshakes"] += 1
        return session

    # --- requests ------------------------------------------------------------------------

    async def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        for n in range(self.retries + 1):
            try:
                return await attempt()
            except ClientError as exc:
                if not exc.retryable or n == self.retries:
                    raise
                self.stats["retries"] += 1
                delay = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2**n)
                await asyncio.sleep(random.uniform(delay / 2, delay))
        raise AssertionError("unreachable")

    async def request(self, msg: object, *, timeout_s: float | None = None) -> object:
        """Send `msg` in the session; its result, or its typed error raised (after retries)."""
        if self._closed:
            raise UnavailableError("the client is closed")
        timeout = self.timeout_s if timeout_s is None else timeout_s

        async def attempt() -> object:
            result = await self._sealed_call(msg, timeout)
            if isinstance(result, _SessionLost):  # renew once, then send again
                if result.error.code not in _SESSION_LOST:
                    raise result.error
                await self._renew(result.generation)
                result = await self._sealed_call(msg, timeout)
                if isinstance(result, _SessionLost):
                    raise result.error
            if result.error is not None:
                raise error_from(result.error)
            return result.value

        return await self._with_retries(attempt)

    @staticmethod
    def _request_id() -> bytes:
        return os.urandom(16)

    # --- typed operations ----------------------------------------------------------------

    async def health(self) -> HealthResult:
        return await self.request(Health())  # type: ignore[return-value]

    async def create_key(self, name: str, algorithm: str) -> km.KeyInfo:
        return await self.request(km.CreateKey(name=name, algorithm=algorithm, client_request_id=self._request_id()))  # type: ignore[return-value]

    async def rotate_key(self, name: str) -> km.KeyInfo:
        return await self.request(km.RotateKey(name=name, client_request_id=self._request_id()))  # type: ignore[return-value]

    async def get_key(self, name: str) -> km.KeyInfo:
        return await self.request(km.GetKey(name=name))  # type: ignore[return-value]

    async def list_keys(self, prefix: str = "", *, limit: int = 100) -> list[str]:
        """Every key name under `prefix` (all pages)."""
        names: list[str] = []
        cursor = ""
        while True:
            page = await self.request(km.ListKeys(prefix=prefix, limit=limit, cursor=cursor))
            names.extend(page.names)  # type: ignore[attr-defined]
            cursor = page.cursor  # type: ignore[attr-defined]
            if not cursor:
                return names

    async def disable_key(self, name: str) -> km.KeyInfo:
        return await self.request(km.DisableKey(name=name, client_request_id=self._request_id()))  # type: ignore[return-value]

    async def enable_key(self, name: str) -> km.KeyInfo:
        return await self.request(km.EnableKey(name=name, client_request_id=self._request_id()))  # type: ignore[return-value]

    async def delete_key(self, name: str) -> km.DeleteKeyResult:
        return await self.request(km.DeleteKey(name=name, client_request_id=self._request_id()))  # type: ignore[return-value]

    async def configure_key(
        self, name: str, *, min_decryption_version: int | None = None, deletion_allowed: bool | None = None,
        auto_rotate_period_s: float | None = None,
    ) -> km.KeyInfo:
        return await self.request(km.ConfigureKey(  # type: ignore[return-value]
            name=name, min_decryption_version=min_decryption_version, deletion_allowed=deletion_allowed,
            auto_rotate_period_s=auto_rotate_period_s, client_request_id=self._request_id(),
        ))

    async def encrypt(self, name: str, plaintext: bytes, context: bytes = b"") -> bytes:
        result = await self.request(km.Encrypt(name=name, plaintext=bytes(plaintext), context=context))
        return result.ciphertext  # type: ignore[attr-defined]

    async def decrypt(self, ciphertext: bytes, context: bytes = b"", *, name: str = "") -> bytes:
        result = await self.request(km.Decrypt(ciphertext=bytes(ciphertext), context=context, name=name))
        return result.plaintext  # type: ignore[attr-defined]

    async def rewrap(self, ciphertext: bytes, context: bytes = b"", *, name: str = "") -> bytes:
        result = await self.request(km.Rewrap(ciphertext=bytes(ciphertext), context=context, name=name))
        return result.ciphertext  # type: ignore[attr-defined]

    async def datakey(self, name: str, bits: int = 256, context: bytes = b"") -> km.DataKeyResult:
        return await self.request(km.DataKey(name=name, bits=bits, context=context))  # type: ignore[return-value]

    async def encrypt_envelope(self, name: str, plaintext: bytes | bytearray | memoryview,
                               context: bytes = b"") -> bytearray:
        """Bulk data sealed here under a fresh data key that named key `name` wraps (docs/protocol.md 11.6).

        One small request to the node (`datakey`, policy op "datakey") whatever
        the size of `plaintext`; the AES-256-GCM work is this process's.
        """
        data_key = await self.datakey(name, 256, context)
        return envelope.seal(data_key.plaintext, data_key.ciphertext, plaintext, nonce=os.urandom(envelope.NONCE_BYTES),
                             context=context)

    async def decrypt_envelope(self, sealed: bytes | bytearray | memoryview, context: bytes = b"") -> bytes:
        """The plaintext of an `encrypt_envelope` result: the node unwraps its data key (policy op
        "decrypt" on the named key), this process opens the data. DecodeError / DecryptFailed as `decrypt`."""
        data_key = await self.decrypt(envelope.wrapped_key(sealed), context)
        return envelope.open_(data_key, sealed, context=context)

    async def sign(self, name: str, message: bytes, *, prehashed: bool = False) -> bytes:
        result = await self.request(km.Sign(name=name, message=bytes(message), prehashed=prehashed))
        return result.signature  # type: ignore[attr-defined]

    async def verify(
        self, name: str, message: bytes, signature: bytes, *, version_id: bytes = b"", prehashed: bool = False
    ) -> bool:
        result = await self.request(km.Verify(name=name, message=bytes(message), signature=bytes(signature),
                                              version_id=version_id, prehashed=prehashed))
        return result.valid  # type: ignore[attr-defined]

    async def hmac(self, name: str, message: bytes) -> bytes:
        result = await self.request(km.Hmac(name=name, message=bytes(message)))
        return result.mac  # type: ignore[attr-defined]

    # Batches: item results in order, each `ok` with its fields or `ok` false with its `error`.

    async def encrypt_batch(self, items: Sequence[km.EncryptItem]) -> tuple[km.EncryptItemResult, ...]:
        return (await self.request(km.EncryptBatch(items=tuple(items)))).items  # type: ignore[attr-defined]

    async def decrypt_batch(self, items: Sequence[km.DecryptItem]) -> tuple[km.DecryptItemResult, ...]:
        return (await self.request(km.DecryptBatch(items=tuple(items)))).items  # type: ignore[attr-defined]

    async def rewrap_batch(self, items: Sequence[km.RewrapItem]) -> tuple[km.RewrapItemResult, ...]:
        return (await self.request(km.RewrapBatch(items=tuple(items)))).items  # type: ignore[attr-defined]

    async def sign_batch(self, items: Sequence[km.SignItem]) -> tuple[km.SignItemResult, ...]:
        return (await self.request(km.SignBatch(items=tuple(items)))).items  # type: ignore[attr-defined]

    async def verify_batch(self, items: Sequence[km.VerifyItem]) -> tuple[km.VerifyItemResult, ...]:
        return (await self.request(km.VerifyBatch(items=tuple(items)))).items  # type: ignore[attr-defined]

    async def hmac_batch(self, items: Sequence[km.HmacItem]) -> tuple[km.HmacItemResult, ...]:
        return (await self.request(km.HmacBatch(items=tuple(items)))).items  # type: ignore[attr-defined]

    async def key_stats(self) -> km.KeyStatsResult:
        return await self.request(km.GetKeyStats())  # type: ignore[return-value]

    # Admin (the client certificate must be an admin's).

    async def set_policy(self, client: str, rules: Sequence[PolicyRule | tuple[str, Sequence[str]]]) -> km.SetPolicyResult:
        parsed = tuple(r if isinstance(r, PolicyRule) else PolicyRule(pattern=r[0], ops=tuple(r[1])) for r in rules)
        return await self.request(km.SetPolicy(client=client, rules=parsed, client_request_id=self._request_id()))  # type: ignore[return-value]

    async def revoke_client(self, client: str, *, fingerprint: bytes = b"", reason: str = "") -> km.RevokeClientResult:
        return await self.request(km.RevokeClient(  # type: ignore[return-value]
            client=client, fingerprint=fingerprint, reason=reason, client_request_id=self._request_id()))

    async def revoke_node(self, node: str, *, reason: str = "") -> km.RevokeNodeResult:
        """Revoke node `node` for good: it refuses new sessions and closes its own; its tickets die."""
        return await self.request(km.RevokeNode(  # type: ignore[return-value]
            node=node, reason=reason, client_request_id=self._request_id()))


#: The operations `Client` (sync) mirrors.
OPERATIONS = (
    "request", "health", "create_key", "rotate_key", "get_key", "list_keys", "disable_key", "enable_key",
    "delete_key", "configure_key", "encrypt", "decrypt", "rewrap", "datakey", "encrypt_envelope", "decrypt_envelope",
    "sign", "verify", "hmac",
    "encrypt_batch", "decrypt_batch", "rewrap_batch", "sign_batch", "verify_batch", "hmac_batch", "key_stats",
    "set_policy", "revoke_client", "revoke_node",
)

__all__ = ["AsyncClient", "CredentialsError", "OPERATIONS", "Signer", "key_file_signer",
           "slot_9a_signer"]
