"""The Python client (`keyswarm.client`) and `keyswarm client` against a real `NodeThread` with a soft token.

The PKI is made in a temporary directory with `keyswarm.enrolment`, as in
test_sessions_node.py. Key-operation tests run only once the node runs a
`keys` actor (they skip with a fixed reason until then).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

import keyswarm.actors.key_messages as km
from keyswarm.actors.messages import EchoResult
from keyswarm.cli import main
from keyswarm.client import errors as E
from keyswarm.client.session import AsyncClient
from keyswarm.client.sync import Client
from keyswarm.enrolment import TokenAccess, create_network, enrol_client, enrol_node
from keyswarm.crypto import envelope
from keyswarm.errors import AuthError, DecodeError, DecryptFailed, ErrorCode
from keyswarm.transport import frames

pytestmark = pytest.mark.integration

NO_KEYS_ACTOR = "the node runs no keys actor yet (key service not wired into nodes)"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("client-pki")
    root = TokenAccess(spec=f"soft:{base / 'root.token'}")
    create_network(root, network_name="clientlib", out_dir=base)
    for d in ("c1", "alice", "other"):
        (base / d).mkdir()
    enrol_node(root, base / "root.pem", TokenAccess(spec=f"soft:{base / 'c1' / 'node.token'}"), name="c1",
               out_dir=base / "c1")
    enrol_client(root, base / "root.pem", name="alice", out_dir=base / "alice", key_file=base / "alice" / "key.pem")
    # Another network entirely: its root must not be accepted for c1.
    other_root = TokenAccess(spec=f"soft:{base / 'other' / 'root.token'}")
    create_network(other_root, network_name="elsewhere", out_dir=base / "other")
    return {"base": base, "node": base / "c1", "client": base / "alice", "other": base / "other"}


def start_node(node_factory: Callable, pki: dict[str, Path], healthy: Callable, context: zmq.Context,
               **sections: dict):
    node_dir = pki["node"]
    (node,) = node_factory(["c1"], **sections, token={
        "spec": f"soft:{node_dir / 'node.token'}",
        "node_certificate": str(node_dir / "node.pem"),
        "root_certificate": str(node_dir / "root.pem"),
        "domain_key": str(node_dir / "domain-key.sealed"),
    })
    deadline = time.monotonic() + 10.0
    while (health := healthy(node.client_endpoint, context)).subkey != "ok":
        assert time.monotonic() < deadline, f"no sub-key within 10 s: {health}"
        time.sleep(0.02)
    return node


def credentials(pki: dict[str, Path], **overrides: object) -> dict[str, object]:
    c = pki["client"]
    return {"root_certificate": c / "root.pem", "client_certificate": c / "client.pem", "key": c / "key.pem",
            "timeout_s": 5.0, **overrides}


@pytest.fixture
def node(pki, node_factory, healthy, zmq_context):
    return start_node(node_factory, pki, healthy, zmq_context)


def cli(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    fake_in = io.TextIOWrapper(io.BytesIO(stdin))
    import sys

    old = sys.stdin
    sys.stdin = fake_in
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        sys.stdin = old
    return code, out.getvalue(), err.getvalue()


def cli_auth(pki: dict[str, Path], endpoint: str) -> list[str]:
    c = pki["client"]
    return ["--connect", endpoint, "--root-cert", str(c / "root.pem"), "--cert", str(c / "client.pem"),
            "--key", str(c / "key.pem"), "--timeout", "5"]


# --- the error table ---------------------------------------------------------------------


def test_every_error_code_has_its_own_exception_class() -> None:
    assert set(E.ERROR_CLASSES) == set(ErrorCode)
    assert len(set(E.ERROR_CLASSES.values())) == len(ErrorCode)
    for code, cls in E.ERROR_CLASSES.items():
        info = frames.ErrorInfo(code=code, message="m", retryable=code in (ErrorCode.BUSY, ErrorCode.UNAVAILABLE),
                                redirect="n2")
        exc = E.error_from(info)
        assert type(exc) is cls and exc.code is code and exc.redirect == "n2" and exc.message == "m"
        assert exc.retryable == (code in (ErrorCode.BUSY, ErrorCode.UNAVAILABLE))
    assert isinstance(E.error_from(frames.ErrorInfo(code=ErrorCode.UNAUTHENTICATED, message="", retryable=False)),
                      AuthError)
    # A retryable KEY_NOT_FOUND (a version not seen yet) keeps the node's word.
    assert E.error_from(frames.ErrorInfo(code=ErrorCode.KEY_NOT_FOUND, message="", retryable=True)).retryable
    table = {ErrorCode.UNAUTHENTICATED: 3, ErrorCode.SESSION_EXPIRED: 3, ErrorCode.KEY_NOT_FOUND: 4,
             ErrorCode.FORBIDDEN: 5, ErrorCode.DECRYPT_FAILED: 6, ErrorCode.BUSY: 7, ErrorCode.UNAVAILABLE: 7,
             ErrorCode.BAD_REQUEST: 1, ErrorCode.INTERNAL: 1, ErrorCode.KEY_DISABLED: 1}
    for code, exit_code in table.items():
        assert E.exit_code_for(E.ERROR_CLASSES[code]("x")) == exit_code, code
    assert E.exit_code_for(E.RequestTimeout("slow")) == 7


# --- sessions ------------------------------------------------------------------------------


def test_sync_client_handshakes_and_asks_health_in_session(pki, node) -> None:
    with Client.connect(node.client_endpoint, **credentials(pki)) as client:
        health = client.health()
        assert health.node == "c1" and health.actors["sessions"] == "running"
        assert client.session.node == "c1" and client.stats["handshakes"] == 1
    stats = node.call(lambda: node.driver.runtime.actor("sessions").stats())
    assert stats["welcomes"] == 1, stats


def test_a_hundred_pipelined_requests_are_all_answered(pki, node) -> None:
    from keyswarm.actors.messages import Echo

    async def run() -> None:
        client = await AsyncClient.connect(node.client_endpoint, **credentials(pki))
        try:
            payloads = [b"p-%d" % i for i in range(100)]
            results = await asyncio.gather(*(client.request(Echo(payload=p)) for p in payloads))
            assert [r.payload for r in results] == payloads
            assert not client._pending and client.stats["retries"] == 0
        finally:
            await client.close()

    asyncio.run(run())


def test_the_client_resumes_by_ticket_when_the_node_forgets_the_session(pki, node) -> None:
    with Client.connect(node.client_endpoint, **credentials(pki)) as client:
        first = client.session.session_id
        sessions = node.driver.runtime.actor("sessions")
        assert node.call(lambda: sessions.table.remove(first))  # the node forgets it (as an eviction would)
        assert client.health().node == "c1"  # UNAUTHENTICATED for the frame -> resume -> resent
        second = client.session.session_id
        assert second != first and client.stats["resumptions"] == 1 and client.stats["handshakes"] == 1, client.stats
        # A session at its expiry is renewed before the next request is sent.
        object.__setattr__(client.session, "expires_at_s", time.time())
        assert client.health().node == "c1"
        assert client.session.session_id != second and client.stats["resumptions"] == 2, client.stats


def test_a_client_key_in_a_yubikey_slot_9a_signs_the_handshake(pki, node, tmp_path) -> None:
    from keyswarm.client.session import slot_9a_signer

    spec = f"virtual:{tmp_path / 'yk.vyk'}?latency=zero"
    root = TokenAccess(spec=f"soft:{pki['base'] / 'root.token'}")
    enrol_client(root, pki["base"] / "root.pem", name="bob", out_dir=tmp_path, yubikey_slot_9a=TokenAccess(spec=spec))
    signer = slot_9a_signer(spec, "123456")
    with Client.connect(node.client_endpoint, root_certificate=tmp_path / "root.pem",
                        client_certificate=tmp_path / "client.pem", key=signer) as client:
        assert client.health().node == "c1"


def test_a_root_of_another_network_is_refused_before_signing(pki, node) -> None:
    signed: list[bytes] = []

    def signer(data: bytes) -> bytes:
        signed.append(data)
        return b"x" * 64

    with pytest.raises(AuthError, match="certificate"):
        Client.connect(node.client_endpoint, **credentials(pki, root_certificate=pki["other"] / "root.pem",
                                                              key=signer))
    assert signed == []
    code, out, err = cli("client", *cli_auth(pki, node.client_endpoint)[:2], "--root-cert",
                         str(pki["other"] / "root.pem"), "--cert", str(pki["client"] / "client.pem"),
                         "--key", str(pki["client"] / "key.pem"), "key", "list")
    assert code == 3 and err.startswith("error: UNAUTHENTICATED: "), (code, err)


def test_key_operations_without_a_policy_are_forbidden_with_exit_code_5(pki, node) -> None:
    with Client.connect(node.client_endpoint, **credentials(pki)) as client:
        with pytest.raises(E.ForbiddenError) as info:
            client.encrypt("app/x", b"x")
        assert "app/x" in info.value.message and not info.value.retryable
    code, out, err = cli("client", *cli_auth(pki, node.client_endpoint), "encrypt", "app/x", stdin=b"hi")
    assert code == 5 and err.startswith("error: FORBIDDEN: ") and out == "", (code, out, err)


# --- key operations (need the keys actors) --------------------------------------------


_GRANTS = itertools.count(1)


def grant(node, client: str, *rules: tuple[str, tuple[str, ...]]) -> None:
    """Fold a `PolicySet` for `client` into the node's policy gate (what an admin's policy.set ends in)."""
    from keyswarm.storage.bodies import tag_of_body
    from keyswarm.storage.events import Event
    from keyswarm.storage.policy_bodies import PolicyRule, PolicySet
    from keyswarm.transport import codec

    body = PolicySet(client=client, rules=tuple(PolicyRule(pattern=p, ops=ops) for p, ops in rules))
    # A logical counter in the HLC's low bits: two grants in one millisecond still order (last one wins).
    hlc = int(time.time() * 1000) << 16 | next(_GRANTS)
    event = Event(partition=0, origin="test", origin_seq=1, hlc=hlc, type=tag_of_body(body),
                  subject="", body=codec.encode(body), prev=b"\x00" * 32)
    sessions = node.driver.runtime.actor("sessions")
    node.call(lambda: sessions.gate.fold([event]))


def require_keys_actor(client: Client) -> None:
    if not any(name == "keys" or name.startswith("keys") for name in client.health().actors):
        pytest.skip(NO_KEYS_ACTOR)


def test_key_lifecycle_and_crypto_from_python(pki, node) -> None:
    with Client.connect(node.client_endpoint, **credentials(pki)) as client:
        require_keys_actor(client)
        grant(node, "alice", ("app1/**", ("*",)))
        name = f"app1/k{time.time_ns()}"
        info = client.create_key(name, "aes256-gcm")
        assert info.name == name and info.algorithm == "aes256-gcm" and len(info.versions) == 1
        ciphertext = client.encrypt(name, b"attack at dawn", b"ctx")
        assert client.decrypt(ciphertext, b"ctx") == b"attack at dawn"
        with pytest.raises(E.DecryptFailedError):
            client.decrypt(ciphertext, b"other context")
        with pytest.raises(E.KeyNotFoundError):
            client.get_key("app1/absent")
        with pytest.raises(E.ForbiddenError):
            client.encrypt("app2/x", b"x")
        rotated = client.rotate_key(name)
        assert len(rotated.versions) == 2 and client.decrypt(ciphertext, b"ctx") == b"attack at dawn"
        assert name in client.list_keys("app1/")
        signing = client.create_key(name + "-sig", "ed25519")
        signature = client.sign(signing.name, b"m")
        assert client.verify(signing.name, b"m", signature) and not client.verify(signing.name, b"n", signature)
        data_key = client.datakey(name, 128)
        assert len(data_key.plaintext) == 16 and client.decrypt(data_key.ciphertext) == data_key.plaintext
        results = client.encrypt_batch([km.EncryptItem(name=name, plaintext=b"%d" % i) for i in range(10)])
        assert all(r.ok for r in results)


def test_key_commands_from_the_shell(pki, node) -> None:
    with Client.connect(node.client_endpoint, **credentials(pki)) as client:
        require_keys_actor(client)
        grant(node, "alice", ("app1/**", ("*",)))
    auth = cli_auth(pki, node.client_endpoint)
    name = f"app1/cli{time.time_ns()}"
    code, out, err = cli("client", *auth, "key", "create", name, "--algorithm", "chacha20-poly1305", "--json")
    assert code == 0 and json.loads(out)["name"] == name, (code, out, err)
    code, out, err = cli("client", *auth, "encrypt", name, stdin=b"hello")
    assert code == 0 and out.startswith("ks:v1:"), (code, out, err)
    code, plain, err = cli("client", *auth, "decrypt", stdin=out.encode())
    assert code == 0 and plain == "hello", (code, plain, err)
    code, _, err = cli("client", *auth, "decrypt", stdin=out[:-3].encode() + b"AAA")
    assert code in (1, 6), (code, err)
    assert cli("client", *auth, "key", "get", "app1/absent")[0] == 4
    assert cli("client", *auth, "encrypt", "app2/x", stdin=b"x")[0] == 5
    # envelopes: sealed by the CLI under a data key the node wraps
    data = bytes(range(256)) * 300
    code, out, err = cli("client", *auth, "encrypt", name, "--envelope", "--context", "c", "--json", stdin=data)
    assert code == 0, (code, out, err)
    sealed = base64.b64decode(json.loads(out)["envelope"])
    assert sealed[:4] == b"kse\x01"
    code, out, err = cli("client", *auth, "decrypt", "--envelope", "--context", "c", "--json", stdin=sealed)
    assert code == 0 and base64.b64decode(json.loads(out)["plaintext"]) == data, (code, err)
    assert cli("client", *auth, "decrypt", "--envelope", "--context", "other", stdin=sealed)[0] == 6
    assert cli("client", *auth, "decrypt", "--envelope", stdin=sealed[:-1] + bytes([sealed[-1] ^ 1]))[0] == 6
    code, _, err = cli("client", *auth, "decrypt", "--envelope", stdin=b"ks:v1:not-an-envelope")
    assert code == 1 and "not a keyswarm envelope" in err, (code, err)


# --- the command line -------------------------------------------------------------------


def test_cli_argument_errors_are_usage_errors() -> None:
    assert cli("client", "key", "create", "k1")[0] == 2  # --algorithm missing
    assert cli("client", "key", "frobnicate", "k1")[0] == 2
    assert cli("client", "key", "config", "k1", "--deletion-allowed", "maybe")[0] == 2
    code, _, err = cli("client", "--connect", "tcp://127.0.0.1:1", "key", "list")  # no --cert
    assert code == 2 and "--cert" in err, err
    code, _, err = cli("client", "--connect", "tcp://127.0.0.1:1", "--cert", "c.pem", "--root-cert", "r.pem",
                       "--key", "k.pem", "--yubikey", "virtual:/x", "key", "list")
    assert code == 2 and "--yubikey" in err, err


def test_cli_missing_credentials_files_are_exit_code_3(tmp_path) -> None:
    code, _, err = cli("client", "--connect", "tcp://127.0.0.1:1", "--cert", str(tmp_path / "nope.pem"),
                       "--root-cert", str(tmp_path / "r.pem"), "--key", str(tmp_path / "k.pem"), "key", "list")
    assert code == 3 and err.startswith("error: UNAUTHENTICATED: ") and "r.pem" in err, err


def test_cli_unreachable_node_is_exit_code_7(pki) -> None:
    from tests.integration.conftest import free_port

    argv = cli_auth(pki, f"tcp://127.0.0.1:{free_port()}")
    argv[argv.index("--timeout") + 1] = "0.2"
    code, _, err = cli("client", *argv, "--retries", "0", "key", "get", "k1")
    assert code == 7 and err.startswith("error: UNAVAILABLE: "), (code, err)


def test_cli_plaintext_operations_still_work(node) -> None:
    code, out, _ = cli("client", "--connect", node.client_endpoint, "echo", "hi")
    assert code == 0 and '"hi"' in out


# --- timeouts and the receive loop -----------------------------------------------------------


def test_a_silent_endpoint_times_out_and_leaves_nothing_pending(pki, zmq_context) -> None:
    """A ROUTER that reads and never answers: the handshake's hello times out with RequestTimeout
    (the client's own timer, not a hang), and the client cleans up its waiter."""
    silent = zmq_context.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")

    async def run() -> None:
        started = time.monotonic()
        with pytest.raises(E.RequestTimeout, match="within 0.3 s"):
            await AsyncClient.connect(f"tcp://127.0.0.1:{port}", **credentials(pki, timeout_s=0.3, retries=0))
        assert time.monotonic() - started < 5.0

    try:
        asyncio.run(run())
        assert silent.poll(2000), "the hello never reached the silent endpoint"
        identity, hello = silent.recv_multipart()
        assert frames.decode_request(hello)[1].__class__.__name__ == "Hello"
    finally:
        silent.close(linger=0)


def test_a_burst_of_replies_is_read_in_one_wake_up(pki, node) -> None:
    """64 requests pipelined on one session: every reply matched to its request (the read loop
    drains all queued frames after each wake-up, without an await per frame)."""

    async def run() -> None:
        client = await AsyncClient.connect(node.client_endpoint, **credentials(pki))
        try:
            replies = await asyncio.gather(*(client.request(km.ListKeys(prefix=f"p{i}/", limit=1))
                                             for i in range(64)))
            assert len(replies) == 64 and client.stats["late_replies"] == 0
            assert not client._pending and not client._counters
        finally:
            await client.close()

    asyncio.run(run())


def test_envelope_encryption_round_trips_and_follows_the_policy_of_its_named_key(pki, node) -> None:
    """encrypt_envelope: one datakey request, the data sealed here; decrypt_envelope: the node unwraps
    the data key under the named key's decrypt policy (docs/protocol.md 11.6)."""
    with Client.connect(node.client_endpoint, **credentials(pki)) as client:
        require_keys_actor(client)
        name = f"env/k{time.time_ns()}"
        grant(node, "alice", ("env/**", ("key.create", "datakey", "decrypt")))
        client.create_key(name, "aes256-gcm")
        data = bytes(range(256)) * 4096  # 1 MiB
        sealed = client.encrypt_envelope(name, data, b"ctx")
        assert bytes(sealed[:4]) == b"kse\x01" and len(sealed) == len(data) + 8 + len(envelope.wrapped_key(sealed)) + 28
        assert client.decrypt_envelope(sealed, b"ctx") == data
        with pytest.raises(E.DecryptFailedError):  # the wrapped key was sealed with the context
            client.decrypt_envelope(sealed, b"other")
        tampered = bytearray(sealed)
        tampered[-1] ^= 1
        with pytest.raises(DecryptFailed):
            client.decrypt_envelope(bytes(tampered), b"ctx")
        with pytest.raises(DecodeError):
            client.decrypt_envelope(b"not an envelope at all", b"ctx")
        grant(node, "alice", ("env/**", ("key.create", "datakey")))  # no decrypt: the data key stays wrapped
        with pytest.raises(E.ForbiddenError) as info:
            client.decrypt_envelope(sealed, b"ctx")
        assert name in info.value.message and "decrypt" in info.value.message
        grant(node, "alice", ("env/**", ("decrypt",)))  # no datakey: no envelope
        with pytest.raises(E.ForbiddenError):
            client.encrypt_envelope(name, b"x")


@pytest.mark.parametrize("suites", [(1,), (2,), None])
def test_one_mebibyte_crosses_the_session_both_ways_in_each_suite(pki, node_factory, healthy, zmq_context,
                                                                   suites) -> None:
    """Large frames take the in-place sealing, copy-free parsing and zero-copy sends on both ends."""
    from keyswarm.crypto.session_keys import preferred_suites

    node = start_node(node_factory, pki, healthy, zmq_context, limits={"max_frame_bytes": 4 << 20})
    with Client.connect(node.client_endpoint, **credentials(pki, suites=suites)) as client:
        require_keys_actor(client)
        assert client.session.channel.suite == (suites[0] if suites else preferred_suites()[0])
        name = f"big/k{time.time_ns()}"
        grant(node, "alice", ("big/**", ("key.create", "encrypt", "decrypt")))
        client.create_key(name, "aes256-gcm")
        data = bytes(range(256)) * 4096 + b"tail"
        futures = [client.submit("encrypt", name, data, b"c") for _ in range(4)]  # pipelined: frames queue up
        ciphertexts = [f.result(timeout=30) for f in futures]
        assert len({bytes(c) for c in ciphertexts}) == 4
        for ciphertext in ciphertexts:
            assert client.decrypt(ciphertext, b"c") == data


def test_a_frame_over_the_nodes_limit_gets_too_large_at_once_not_a_timeout(pki, node) -> None:
    """The node reads the frame's counter from its first bytes, so the refusal reaches the request
    (here a client not told the limit, as with a node that does not say it in its welcome)."""
    with Client.connect(node.client_endpoint, **credentials(pki, timeout_s=30.0, retries=0)) as client:
        inner = client.async_client
        inner.session = dataclasses.replace(inner.session, max_frame_bytes=0)
        started = time.monotonic()
        with pytest.raises(E.TooLargeError, match="over the limit"):
            client.encrypt("any/key", bytes(100_000))  # over 64 KiB, under 2x (past that libzmq drops the link)
        assert time.monotonic() - started < 20.0  # answered, not timed out
        assert client.health().node == "c1"  # the session is still good


def test_a_request_over_the_nodes_frame_limit_is_refused_by_the_client_itself(pki, node) -> None:
    """The welcome tells the client the node's frame limit, so even a frame past libzmq's 2x cut-off
    (which would drop the link and leave the request to time out) fails at once, and nothing is sent."""
    with Client.connect(node.client_endpoint, **credentials(pki, timeout_s=30.0, retries=0)) as client:
        assert client.session.max_frame_bytes == 64 * 1024  # the test nodes' limit
        sent_before = client.session.channel.next_counter
        started = time.monotonic()
        with pytest.raises(E.TooLargeError, match=r"over the frame limit of node 'c1' \(65536 bytes\)"):
            client.encrypt("any/key", bytes(1 << 20))
        assert time.monotonic() - started < 5.0
        assert client.health().node == "c1"  # the session is still good
        assert client.session.channel.next_counter == sent_before + 2  # the refused frame's counter, then health


def test_a_hostile_endpoint_cannot_make_the_client_buffer_a_frame_over_its_limit(pki, zmq_context) -> None:
    """A 'node' answering the hello with 8 MiB to a client whose frame limit is 1 MiB: libzmq drops the
    link without buffering it (MAXMSGSIZE) and the hello times out; a bad limit is refused up front."""
    hostile = zmq_context.socket(zmq.ROUTER)
    hostile.setsockopt(zmq.LINGER, 0)
    port = hostile.bind_to_random_port("tcp://127.0.0.1")

    async def run() -> None:
        attempt = asyncio.ensure_future(AsyncClient.connect(
            f"tcp://127.0.0.1:{port}", **credentials(pki, timeout_s=1.0, retries=0, max_frame_bytes=1 << 20)))
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, hostile.poll, 5000)
        assert got, "no hello reached the hostile endpoint"
        identity, hello = hostile.recv_multipart()
        rid = frames.decode_request(hello)[0]
        hostile.send_multipart([identity, frames.encode_reply(rid, EchoResult(payload=bytes(8 << 20), node="x"))])
        with pytest.raises(E.RequestTimeout):
            await attempt

    try:
        asyncio.run(run())
    finally:
        hostile.close(linger=0)
    for bad in (0, 1023, (1 << 30) + 1):
        with pytest.raises(ValueError, match="max_frame_bytes"):
            Client.connect("tcp://127.0.0.1:1", **credentials(pki, max_frame_bytes=bad))
