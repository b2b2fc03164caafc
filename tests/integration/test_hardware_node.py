"""The hardware actor and the token service in a real node (`NodeThread`), on a `VirtualYubiKey`.

A relay actor inside the node fires bursts of `TokenSign` at the hardware
actor in one turn (so they are all concurrent from its point of view) and
keeps the replies. The virtual device has a small latency and its overlap
detector armed: two APDUs in flight at once would fail a request and be
listed in `device.overlaps`. Every wait is bounded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from keyswarm.actors.gateway import Gateway
from keyswarm.actors.hardware import TokenSign, TokenSignature, TokenStatusResult
from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Actor, ActorSpec, Context
from keyswarm.errors import ErrorCode
from keyswarm.hardware.token import check_signature
from keyswarm.hardware.virtual_yubikey import LatencyModel, VirtualYubiKey
from keyswarm.hardware.yubikey_token import YubiKeyToken
from keyswarm.node.assembly import GATEWAY
from keyswarm.node.driver import NodeThread
from keyswarm.node.token_service import hardware_components

pytestmark = pytest.mark.integration

#: A quick device: the point is concurrency, not realism (each signature still sleeps a little).
SMALL_LATENCY = LatencyModel(apdu_s=0.0002, pin_s=0.0005, sign_s=0.001, ecdh_s=0.001, keygen_s=0.001)


@dataclass(frozen=True)
class Burst:
    count: int


class Relay(Actor):
    """Sends `count` signature requests to the hardware actor at once and keeps every reply."""

    name = "relay"

    def __init__(self) -> None:
        self.replies: list[object] = []

    def on_message(self, ctx: Context, msg: object) -> None:
        if type(msg) is Burst:
            for i in range(msg.count):
                ctx.send("hardware", TokenSign(data=b"burst %d" % i))
        else:
            self.replies.append(msg)


def start_node(node_factory: Callable, firmware: str, sleep: Callable[[float], None] | None = None, **options: object):
    device = VirtualYubiKey(firmware, serial=27182818, entropy=random.Random(firmware).randbytes,
                            latency=SMALL_LATENCY, sleep=sleep)
    token = YubiKeyToken(device, kind="virtual", pin="123456", connect=device.connect)
    token.generate()
    public_key = token.identity_public_key()
    options.setdefault("probe_interval_s", None)
    spec, service = hardware_components(token, **options)
    actors = [ActorSpec(GATEWAY, Gateway), spec, ActorSpec(Relay.name, Relay)]
    (node,) = node_factory(["hw1"], driver_kwargs={"actors": actors, "services": {service.name: service}})
    deadline = time.monotonic() + 10.0
    while node.call(lambda: node.driver.runtime.actor("hardware").state) != "ready":  # its start probe is answered
        assert time.monotonic() < deadline, "hardware actor not ready within 10 s"
        time.sleep(0.01)
    return node, device, public_key


def burst(node: NodeThread, count: int, timeout_s: float = 30.0) -> list[object]:
    """Fire a burst and wait (bounded) until every request of it has its reply."""
    relay = lambda: node.driver.runtime.actor("relay")  # noqa: E731 -- read on the node's thread only
    before = node.call(lambda: len(relay().replies))
    def fire() -> None:  # on the node's thread: deliver, then let the actors run at once
        node.driver.runtime.deliver("relay", None, Burst(count))
        node.driver.runtime.run()

    node.call(fire)
    deadline = time.monotonic() + timeout_s
    while node.call(lambda: len(relay().replies)) < before + count:
        assert time.monotonic() < deadline, f"burst of {count} not answered within {timeout_s} s"
        time.sleep(0.01)
    return node.call(lambda: list(relay().replies[before:]))


def wait_status(node: NodeThread, status: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while node.call(lambda: node.driver.runtime.status) != status:
        assert time.monotonic() < deadline, f"node did not become {status} within {timeout_s} s"
        time.sleep(0.01)


@pytest.mark.parametrize("firmware", ["5.4.3", "5.7.2"])
def test_a_hundred_concurrent_signatures_are_serialised(node_factory: Callable, firmware: str) -> None:
    node, device, public_key = start_node(node_factory, firmware)
    replies = burst(node, 100)
    assert device.overlaps == [], "two APDUs overlapped: the token was not serialised"
    assert all(type(r) is TokenSignature for r in replies), [r for r in replies if type(r) is not TokenSignature][:3]
    for i, reply in enumerate(replies):  # FIFO: reply i is the signature over request i
        assert check_signature(public_key, reply.signature, b"burst %d" % i)
    hardware = node.call(lambda: node.driver.runtime.actor("hardware"))
    assert hardware.completed == 100 and hardware.queue_depth == 0


def test_past_the_queue_bound_requests_are_answered_busy(node_factory: Callable) -> None:
    node, device, _ = start_node(node_factory, "5.7.2", max_queue=32)
    replies = burst(node, 100)
    signed = [r for r in replies if type(r) is TokenSignature]
    busy = [r for r in replies if type(r) is Failure]
    assert len(signed) == 32 and len(busy) == 68 and device.overlaps == []
    assert {f.code for f in busy} == {ErrorCode.BUSY} and all(f.retryable for f in busy)


def test_unplug_mid_signature_degrades_then_reconnects_after_plug(node_factory: Callable) -> None:
    armed = [False]

    def sleep(seconds: float) -> None:
        time.sleep(seconds)
        if armed[0] and seconds >= SMALL_LATENCY.sign_s:  # the key is pulled while it signs
            armed[0] = False
            device.unplug()

    node, device, public_key = start_node(node_factory, "5.7.2", sleep=sleep, reconnect_initial_s=0.02,
                                          reconnect_max_s=0.1)
    assert type(burst(node, 1)[0]) is TokenSignature
    armed[0] = True
    replies = burst(node, 5)
    assert all(type(r) is Failure and r.code is ErrorCode.UNAVAILABLE and r.retryable for r in replies), replies
    assert not device.plugged
    wait_status(node, "degraded")
    status = node.call(lambda: node.driver.runtime.actor("hardware")._status())
    assert isinstance(status, TokenStatusResult) and status.state == "absent"
    time.sleep(0.3)  # several reconnect attempts fail while it is out
    assert node.call(lambda: node.driver.runtime.status) == "degraded"
    device.plug()
    wait_status(node, "ok")
    (reply,) = burst(node, 1)
    assert type(reply) is TokenSignature and check_signature(public_key, reply.signature, b"burst 0")
    assert device.overlaps == []


def test_control_the_detector_trips_when_nothing_serialises() -> None:
    """Without the hardware actor two threads on one device overlap: the check above can fail."""
    import threading

    device = VirtualYubiKey("5.7.2", serial=27182818, latency=SMALL_LATENCY)
    YubiKeyToken(device, kind="virtual", pin="123456").generate()
    tokens = [YubiKeyToken(device, kind="virtual", pin="123456") for _ in range(2)]

    def hammer(token: YubiKeyToken) -> None:
        for _ in range(20):
            try:
                token.sign(b"x")
            except Exception:  # noqa: BLE001 -- the overlap itself (AssertionError), or the session it broke
                pass

    threads = [threading.Thread(target=hammer, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert device.overlaps, "the overlap detector never tripped on two unserialised threads"
