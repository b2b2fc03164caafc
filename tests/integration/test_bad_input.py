"""Bad client and peer input against a real node: a clear error, nothing lost, bounded memory.

DESIGN section 9: a node never crashes or grows memory without bound on
client input. Each test sends one kind of bad input over real ZeroMQ and then
checks that the node still answers `health`. The test node's frame limit is
64 KiB (conftest.TEST_MAX_FRAME_BYTES).
"""

from __future__ import annotations

import logging
import random
import time

import msgpack
import psutil
import pytest
import zmq

from keyswarm.actors.messages import Echo, Health, HealthResult
from keyswarm.client.plain import PlainClient, RequestFailed
from keyswarm.errors import ErrorCode
from keyswarm.node.driver import NodeThread
from keyswarm.transport import frames

pytestmark = pytest.mark.integration

MAX_FRAME = 64 * 1024  # conftest.TEST_MAX_FRAME_BYTES
RSS_GROWTH_BOUND = 100 * 1024 * 1024
DECODE_ERRORS = {ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.UNSUPPORTED_VERSION}


@pytest.fixture
def raw(node: NodeThread, zmq_context: zmq.Context):
    """A bare DEALER on the node's client endpoint: sends whatever bytes a test wants."""
    sock = zmq_context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.client_endpoint)
    yield sock
    sock.close(linger=0)


def exchange(sock: zmq.Socket, *parts: bytes, timeout_s: float = 5.0) -> frames.Reply:
    sock.send_multipart(list(parts))
    assert sock.poll(int(timeout_s * 1000)), f"no reply within {timeout_s} s"
    return frames.decode_reply(sock.recv())


def replies(sock: zmq.Socket, count: int, timeout_s: float = 10.0) -> list[frames.Reply]:
    """Exactly `count` replies (fails if fewer arrive in time)."""
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        assert remaining_ms > 0 and sock.poll(remaining_ms), f"{len(got)} of {count} replies within {timeout_s} s"
        got.append(frames.decode_reply(sock.recv()))
    return got


def assert_healthy(node, context: zmq.Context) -> None:
    """`node` is a NodeThread or a conftest.NodeProcess (anything with `client_endpoint`)."""
    with PlainClient(node.client_endpoint, zmq_context=context, timeout_s=5.0) as client:
        health = client.call(Health())
    assert isinstance(health, HealthResult) and health.status == "ok"


def envelope(*items: object) -> bytes:
    return msgpack.packb(list(items))


# --- malformed frames --------------------------------------------------------------


def test_random_bytes_each_get_an_error_and_logging_is_rate_limited(
    node: NodeThread, raw: zmq.Socket, zmq_context: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(20240601)
    sent = [rng.randbytes(rng.randrange(0, 300)) for _ in range(300)]
    with caplog.at_level(logging.WARNING, logger="keyswarm.node"):
        for data in sent:
            raw.send(data)
        for reply in replies(raw, len(sent)):
            assert reply.error is not None and reply.error.code in DECODE_ERRORS, reply
    lines = [r for r in caplog.records if r.name == "keyswarm.node"]
    assert 1 <= len(lines) <= len(DECODE_ERRORS), [r.getMessage() for r in lines]
    assert node.stats()["bad_frames"] and sum(node.stats()["bad_frames"].values()) == len(sent)
    assert_healthy(node, zmq_context)


def test_mutated_requests_each_get_one_answer(node: NodeThread, raw: zmq.Socket, zmq_context: zmq.Context) -> None:
    rng = random.Random(7)
    valid = frames.encode_request(99, Echo(payload=b"0123456789"))
    sent = 0
    for _ in range(300):
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        raw.send(bytes(data))
        sent += 1
    assert len(replies(raw, sent)) == sent  # an answer (value or error) for every frame, no crash
    assert_healthy(node, zmq_context)


def test_empty_frame_is_bad_request(node: NodeThread, raw: zmq.Socket, zmq_context: zmq.Context) -> None:
    reply = exchange(raw, b"")
    assert reply.error.code is ErrorCode.BAD_REQUEST and reply.request_id == 0
    assert_healthy(node, zmq_context)


@pytest.mark.parametrize("count", [3, 10_000])
def test_many_frames_in_one_message_are_bad_request(
    node: NodeThread, raw: zmq.Socket, zmq_context: zmq.Context, count: int
) -> None:
    request = frames.encode_request(5, Health())
    reply = exchange(raw, *([request] * count))
    assert reply.error.code is ErrorCode.BAD_REQUEST
    assert "one frame" in reply.error.message
    assert_healthy(node, zmq_context)


def test_frame_at_the_limit_is_served_and_one_byte_more_is_too_large(
    node: NodeThread, raw: zmq.Socket, zmq_context: zmq.Context
) -> None:
    overhead = len(frames.encode_request(3, Echo(payload=b"x" * 1000))) - 1000
    at_limit = frames.encode_request(3, Echo(payload=b"x" * (MAX_FRAME - overhead)))
    assert len(at_limit) == MAX_FRAME
    served = exchange(raw, at_limit)
    # The request is read and served; its echo is bigger than the request,
    # so the answer is the node refusing to send an oversized *reply*.
    assert served.error.code is ErrorCode.TOO_LARGE and served.error.message.startswith("the reply of"), served
    over = frames.encode_request(4, Echo(payload=b"x" * (MAX_FRAME - overhead + 1)))
    assert len(over) == MAX_FRAME + 1
    reply = exchange(raw, over)
    assert reply.error.code is ErrorCode.TOO_LARGE
    assert str(MAX_FRAME) in reply.error.message
    assert_healthy(node, zmq_context)


def test_frame_over_twice_the_limit_drops_the_connection_only(
    node: NodeThread, raw: zmq.Socket, zmq_context: zmq.Context
) -> None:
    raw.send(b"\x00" * (2 * MAX_FRAME + 1))
    assert not raw.poll(300), "a frame past MAXMSGSIZE is not answered: libzmq drops the connection"
    assert_healthy(node, zmq_context)
    # The DEALER reconnects by itself and is served again.
    reply = exchange(raw, frames.encode_request(8, Health()))
    assert reply.request_id == 8 and reply.ok


@pytest.mark.parametrize(
    ("data", "request_id", "words"),
    [
        (msgpack.packb({"version": 1, "kind": "q"}), 0, "array"),
        (envelope(1, "q", 5, {"op": "health"}, "extra"), 5, "4 elements"),
        (envelope(1, "q", "7", {"op": "health"}), 0, "request_id"),
        (envelope(1, "r", 6, {"op": "health"}), 6, "request"),
        (envelope(1, "q", 10, {"op": "frobnicate"}), 10, "frobnicate"),
        (envelope(1, "q", 11, {"op": "echo", "payload": "text, not bytes"}), 11, "payload"),
        (envelope(1, "q", 12, ["health"]), 12, "map"),
    ],
    ids=["map-envelope", "five-elements", "string-request-id", "reply-kind", "unknown-op", "wrong-field-type", "array-body"],
)
def test_wrong_shapes_are_bad_request(
    node: NodeThread, raw: zmq.Socket, zmq_context: zmq.Context, data: bytes, request_id: int, words: str
) -> None:
    reply = exchange(raw, data)
    assert reply.error is not None and reply.error.code is ErrorCode.BAD_REQUEST, reply
    assert reply.request_id == request_id
    assert words in reply.error.message
    assert not reply.error.retryable
    assert_healthy(node, zmq_context)


def test_version_2_is_unsupported_naming_the_versions(node: NodeThread, raw: zmq.Socket, zmq_context: zmq.Context) -> None:
    reply = exchange(raw, envelope(2, "q", 9, {"op": "health"}))
    assert reply.error.code is ErrorCode.UNSUPPORTED_VERSION
    assert reply.request_id == 9
    assert "2" in reply.error.message and "speaks 1" in reply.error.message
    assert_healthy(node, zmq_context)


def test_deep_nesting_is_refused(node: NodeThread, raw: zmq.Socket, zmq_context: zmq.Context) -> None:
    depth = 10_000
    data = (
        b"\x94\x01\xa1q\x0b\x82" + msgpack.packb("op") + msgpack.packb("echo") + msgpack.packb("payload")
        + b"\x91" * depth + b"\xc0"
    )
    reply = exchange(raw, data)
    # The codec reports nesting past its limit as TOO_LARGE (a limit was passed); both are "send less".
    assert reply.error.code in {ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE}, reply
    assert "nest" in reply.error.message
    assert_healthy(node, zmq_context)


# --- floods --------------------------------------------------------------------------


def test_flood_from_one_client_gets_busy_and_memory_stays_bounded(node_process, zmq_context: zmq.Context) -> None:
    node = node_process(limits={"client_inflight_max": 64})
    process = psutil.Process(node.process.pid)
    flooder = zmq_context.socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.setsockopt(zmq.SNDHWM, 0)  # the flooder queues everything; the node's bounds must hold
    flooder.connect(node.client_endpoint)
    try:
        before = process.memory_info().rss
        for request_id in range(1, 20_001):
            flooder.send(frames.encode_request(request_id, Echo(payload=b"f" * 100)))
        # Another client is served while the flooder reads nothing.
        assert_healthy(node, zmq_context)
        busy = answered = 0
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and flooder.poll(1000):
            reply = frames.decode_reply(flooder.recv())
            answered += 1
            if reply.error is not None:
                assert reply.error.code is ErrorCode.BUSY, reply
                busy += 1
        grown = process.memory_info().rss - before
    finally:
        flooder.close(linger=0)
    assert busy > 0, f"no BUSY among {answered} replies"
    assert answered <= 20_000
    assert grown < RSS_GROWTH_BOUND, f"node RSS grew by {grown / 2**20:.1f} MiB"
    assert_healthy(node, zmq_context)


def test_replies_to_a_client_that_does_not_read_are_dropped_and_counted(
    node_factory, zmq_context: zmq.Context
) -> None:
    (node,) = node_factory(["n1"], transport={"sndhwm": 50})
    sluggard = zmq_context.socket(zmq.DEALER)
    sluggard.setsockopt(zmq.LINGER, 0)
    sluggard.setsockopt(zmq.SNDHWM, 0)
    sluggard.setsockopt(zmq.RCVHWM, 1)
    sluggard.setsockopt(zmq.RCVBUF, 4096)
    sluggard.connect(node.client_endpoint)
    try:
        payload = b"s" * 8192
        for request_id in range(1, 3_001):  # ~24 MiB of replies: more than the pipe and TCP buffers hold
            sluggard.send(frames.encode_request(request_id, Echo(payload=payload)))
        deadline = time.monotonic() + 20.0
        while node.stats()["client_frames_in"] < 3_000:
            assert time.monotonic() < deadline, node.stats()
            time.sleep(0.05)
        stats = node.stats()
        assert stats["reply_drops_busy"] > 0, stats
        assert stats["inflight"] == 0
        assert_healthy(node, zmq_context)
    finally:
        sluggard.close(linger=0)


def test_many_client_identities_leave_nothing_behind(node_process, zmq_context: zmq.Context) -> None:
    node = node_process()
    process = psutil.Process(node.process.pid)
    count = 2_000
    before = process.memory_info().rss
    sockets = []
    try:
        poller = zmq.Poller()
        for _ in range(count):
            sock = zmq_context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(node.client_endpoint)
            sock.send(frames.encode_request(1, Health()))
            poller.register(sock, zmq.POLLIN)
            sockets.append(sock)
        answered = 0
        deadline = time.monotonic() + 30.0
        while answered < count:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            assert remaining_ms > 0, f"{answered} of {count} clients answered"
            for sock, _ in poller.poll(remaining_ms):
                assert frames.decode_reply(sock.recv()).ok
                poller.unregister(sock)
                answered += 1
        grown = process.memory_info().rss - before
    finally:
        for sock in sockets:
            sock.close(linger=0)
    assert grown < RSS_GROWTH_BOUND, f"node RSS grew by {grown / 2**20:.1f} MiB with {count} clients connected"
    assert_healthy(node, zmq_context)


# --- the peer socket --------------------------------------------------------------------


def test_bad_peer_frames_are_counted_and_dropped(node: NodeThread, zmq_context: zmq.Context) -> None:
    rng = random.Random(3)
    strangers = []
    try:
        for identity in (b"\xff\xfe", b"evil"):
            sock = zmq_context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, identity)
            sock.connect(node.peer_endpoint)
            strangers.append(sock)
        for _ in range(100):
            strangers[0].send(frames.encode_actor_frame("echo", "x", Health()))  # identity is not UTF-8
            strangers[1].send(rng.randbytes(rng.randrange(0, 200)))
        strangers[1].send_multipart([b"a", b"b", b"c"])
        strangers[1].send(frames.encode_actor_frame("nobody", "x", Health()))  # no such actor
        deadline = time.monotonic() + 5.0
        while True:
            stats = node.stats()
            if stats["peer_frames_in"] >= 202:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.02)
    finally:
        for sock in strangers:
            sock.close(linger=0)
    assert stats["peer_bad_frames"] >= 200
    assert stats["peer_undeliverable"] >= 1
    assert_healthy(node, zmq_context)


def test_plain_client_sees_too_large_as_its_answer(node: NodeThread, client: PlainClient) -> None:
    # The node cannot read the id of a frame over the limit and answers with id 0;
    # a client with one request in flight takes that as its answer (no timeout).
    with pytest.raises(RequestFailed) as failed:
        client.call(Echo(payload=b"x" * MAX_FRAME), timeout_s=5.0)
    assert failed.value.code is ErrorCode.TOO_LARGE and not failed.value.retryable
    assert client.call(Echo(payload=b"ok")).payload == b"ok"


def test_reply_over_the_frame_limit_becomes_too_large(node: NodeThread, client: PlainClient) -> None:
    # A request just under the limit whose reply (payload + node id + keys) is over it:
    # the node answers TOO_LARGE in a frame the client can read, not an oversized reply.
    sizes = [MAX_FRAME - 40 - extra for extra in range(0, 40)]
    outcomes = set()
    for size in sizes:
        try:
            client.call(Echo(payload=b"x" * size), timeout_s=5.0)
            outcomes.add("ok")
        except RequestFailed as failed:
            assert failed.code is ErrorCode.TOO_LARGE, failed
            outcomes.add("too_large")
    assert "too_large" in outcomes, "no size in the sweep produced a reply over the limit"
    assert node.stats()["oversized_replies"] >= 1
    assert client.call(Echo(payload=b"ok")).payload == b"ok"
