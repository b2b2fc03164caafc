"""Automatic rotation of named keys (`auto_rotate_period_s`): the schedule alone, then the keys actors.

The actor tests run a `KeyNode` (tests/unit/key_node.py) whose clocks move only
when the test moves them: a key set to rotate every P seconds must rotate
when its primary version is P old by the version's stamp, never before, and
only while it is enabled and not deleted.
"""

from __future__ import annotations

import logging
import math

import pytest
from key_node import KeyNode

from keyswarm.actors.auto_rotation import (
    AUTO_ROTATE_CLIENT,
    AUTO_ROTATE_RETRY_S,
    MAX_AUTO_ROTATE_PERIOD_S,
    MIN_AUTO_ROTATE_PERIOD_S,
    RotationSchedule,
    auto_request_id,
    rotation_due_ms,
)
from keyswarm.actors.key_messages import (
    ConfigureKey,
    CreateKey,
    Decrypt,
    DeleteKey,
    DisableKey,
    EnableKey,
    Encrypt,
    GetKey,
    GetKeyStats,
    KeyInfo,
    RotateKey,
)
from keyswarm.actors.keys import KeySettings, KeysActor, _RotateDueKeys, partition_actor
from keyswarm.actors.messages import Failure
from keyswarm.actors.storage import AppendBatch
from keyswarm.errors import DecodeError, ErrorCode, StorageError
from keyswarm.storage.bodies import KeyVersionAdded, request_fingerprint
from keyswarm.storage.events import partition_of
from keyswarm.storage.fold import KeyState, KeyVersion, Register
from keyswarm.transport import codec

HOUR = 3600.0


def ok(answer: object) -> KeyInfo:
    assert isinstance(answer, KeyInfo), f"expected key.info, got {answer!r}"
    return answer


def info(node: KeyNode, name: str) -> KeyInfo:
    return ok(node.request(GetKey(name=name)))


def versions(node: KeyNode, name: str) -> int:
    return len(info(node, name).versions)


def rotations_in_log(node: KeyNode) -> list[KeyVersionAdded]:
    tag = codec.tag_of(KeyVersionAdded)
    return [codec.decode(e.body, expect=KeyVersionAdded)
            for p in range(node.partitions) for _, e in node.log.read_partition(p) if e.type == tag]


def actor_of(node: KeyNode, name: str) -> KeysActor:
    actor = node.runtime.actor(partition_actor(partition_of(name, node.partitions)))
    assert isinstance(actor, KeysActor)
    return actor


def auto_key(node: KeyNode, name: str, period_s: float, algorithm: str = "aes256-gcm") -> KeyInfo:
    ok(node.request(CreateKey(name=name, algorithm=algorithm)))
    return ok(node.request(ConfigureKey(name=name, auto_rotate_period_s=period_s)))


def stamp_ms(version_info: object) -> int:
    return version_info.created_hlc >> 16  # type: ignore[attr-defined]


# --- the schedule alone ------------------------------------------------------------------


def key_state(name: str, *, created_ms: int, period_s: float | None, disabled: bool = False) -> KeyState:
    key = KeyState(name)
    key._add_record(KeyVersion(b"v1", created_ms << 16, "n1", b"m", "aes256-gcm", True))
    if period_s is not None:
        key._set_setting("auto_rotate_period_s", Register(1, "n1", period_s))
    if disabled:
        key._set_status(Register(1, "n1", True))
    return key


def test_a_key_is_due_a_period_after_its_primary_was_stamped() -> None:
    assert rotation_due_ms(key_state("k", created_ms=5_000, period_s=HOUR)) == 5_000 + 3_600_000
    assert rotation_due_ms(key_state("k", created_ms=5_000, period_s=None)) is None
    assert rotation_due_ms(key_state("k", created_ms=5_000, period_s=0.0)) is None
    assert rotation_due_ms(key_state("k", created_ms=5_000, period_s=HOUR, disabled=True)) is None
    assert rotation_due_ms(None) is None
    # Written before the bounds existed: clamped, never refused.
    assert rotation_due_ms(key_state("k", created_ms=0, period_s=1.0)) == 60_000
    assert rotation_due_ms(key_state("k", created_ms=0, period_s=1e300)) == MAX_AUTO_ROTATE_PERIOD_S * 1000


def test_the_schedule_hands_out_due_keys_earliest_first_and_holds_them_until_released() -> None:
    schedule = RotationSchedule()
    keys = {f"k{i}": key_state(f"k{i}", created_ms=i * 1000, period_s=60.0) for i in range(5)}
    keys["off"] = key_state("off", created_ms=0, period_s=0.0)
    schedule.load(keys)
    assert len(schedule) == 5 and schedule.next_wake() == 60_000
    assert schedule.take(59_999, 10) == []
    assert schedule.take(62_000, 2) == [("k0", 60_000), ("k1", 61_000)]
    assert schedule.take(62_000, 10) == [("k2", 62_000)]  # the first two are in flight
    assert schedule.next_wake() == 63_000
    schedule.release("k0", 60_000, 90_000)  # failed: look again later
    schedule.update("k1", key_state("k1", created_ms=61_500, period_s=60.0))  # rotated: due a period later
    schedule.release("k1", 61_000, 90_000)  # its old due time: ignored
    assert [schedule.take(10**9, 10)] == [[("k3", 63_000), ("k4", 64_000), ("k0", 60_000), ("k1", 121_500)]]
    schedule.update("k2", None)  # deleted while in flight
    schedule.release("k2", 62_000, 90_000)
    assert schedule.due_of("k2") is None and schedule.next_wake() is None


def test_the_schedule_heap_stays_bounded_when_one_key_changes_often() -> None:
    schedule = RotationSchedule()
    schedule.load({})
    for i in range(10_000):
        schedule.update("k", key_state("k", created_ms=i, period_s=60.0))
    assert len(schedule._heap) <= 2 * len(schedule) + 65
    assert schedule.take(10**9, 10) == [("k", 9_999 + 60_000)]


# --- the keys actors --------------------------------------------------------------------


def test_a_key_rotates_once_its_period_has_passed_and_again_after_another(caplog: pytest.LogCaptureFixture) -> None:
    node = KeyNode()
    created = auto_key(node, "auto/k", HOUR)
    node.advance(HOUR - 1)
    assert versions(node, "auto/k") == 1 and rotations_in_log(node) == []
    with caplog.at_level(logging.INFO, logger="keyswarm.actors"):
        node.advance(1)
    now = info(node, "auto/k")
    assert (len(now.versions), now.primary) == (2, 2)
    assert stamp_ms(now.versions[1]) - stamp_ms(now.versions[0]) == HOUR * 1000
    due = stamp_ms(created.versions[0]) + 3_600_000
    [body] = rotations_in_log(node)
    assert body.request == request_fingerprint(AUTO_ROTATE_CLIENT, auto_request_id("auto/k", due))
    assert any("auto/k" in r.getMessage() and "version 2" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records), caplog.text
    assert actor_of(node, "auto/k").stats.auto_rotations == 1
    node.advance(HOUR - 1)
    assert versions(node, "auto/k") == 2
    node.advance(1)
    assert versions(node, "auto/k") == 3
    assert actor_of(node, "auto/k").stats.auto_rotations == 2
    stats = node.request(GetKeyStats())  # what `keys.stats` reports over the wire
    assert (stats.auto_rotations, stats.auto_rotation_failures) == (2, 0) and stats.writes >= 3
    for _ in range(10):  # ten more periods: one rotation each
        node.advance(HOUR)
    assert versions(node, "auto/k") == 13
    node.advance(10 * HOUR)  # ten periods at one jump of the clock: overdue once, rotated once
    assert versions(node, "auto/k") == 14


def test_old_ciphertexts_still_open_after_automatic_rotations() -> None:
    node = KeyNode()
    auto_key(node, "auto/enc", 60)
    sealed = []
    for _ in range(4):
        sealed.append(node.request(Encrypt(name="auto/enc", plaintext=b"secret")))
        node.advance(60)
    assert versions(node, "auto/enc") == 5
    assert len({answer.version_id for answer in sealed}) == 4  # four versions sealed them
    for blob in (answer.ciphertext for answer in sealed):
        assert node.request(Decrypt(ciphertext=blob)).plaintext == b"secret"


def test_a_period_of_zero_never_rotates() -> None:
    node = KeyNode()
    ok(node.request(CreateKey(name="never/default", algorithm="aes256-gcm")))
    auto_key(node, "never/zero", 0)
    auto_key(node, "never/turned-off", HOUR)
    ok(node.request(ConfigureKey(name="never/turned-off", auto_rotate_period_s=0)))
    node.advance(MAX_AUTO_ROTATE_PERIOD_S * 2)
    assert [versions(node, n) for n in ("never/default", "never/zero", "never/turned-off")] == [1, 1, 1]
    assert rotations_in_log(node) == []


def test_disabled_and_deleted_keys_do_not_rotate_and_an_enabled_one_catches_up_once() -> None:
    node = KeyNode()
    auto_key(node, "off/disabled", HOUR)
    ok(node.request(DisableKey(name="off/disabled")))
    ok(node.request(CreateKey(name="off/deleted", algorithm="aes256-gcm")))
    ok(node.request(ConfigureKey(name="off/deleted", auto_rotate_period_s=HOUR, deletion_allowed=True)))
    assert not isinstance(node.request(DeleteKey(name="off/deleted")), Failure)
    node.advance(5 * HOUR)
    assert rotations_in_log(node) == [] and versions(node, "off/disabled") == 1
    ok(node.request(EnableKey(name="off/disabled")))  # five periods overdue: one rotation, not five
    assert versions(node, "off/disabled") == 2
    node.advance(HOUR - 1)
    assert versions(node, "off/disabled") == 2
    node.advance(1)
    assert versions(node, "off/disabled") == 3
    assert [b.name for b in rotations_in_log(node)] == ["off/disabled", "off/disabled"]


def test_changing_the_period_re_arms_the_schedule() -> None:
    node = KeyNode()
    auto_key(node, "re/k", 2 * HOUR)
    node.advance(1000)
    ok(node.request(ConfigureKey(name="re/k", auto_rotate_period_s=1800)))  # shorter: due 800 s from now
    node.advance(799)
    assert versions(node, "re/k") == 1
    node.advance(1)
    assert versions(node, "re/k") == 2
    ok(node.request(ConfigureKey(name="re/k", auto_rotate_period_s=2 * HOUR)))  # longer: the 1800 s timer is void
    node.advance(1800)
    assert versions(node, "re/k") == 2
    node.advance(2 * HOUR - 1801)
    assert versions(node, "re/k") == 2
    node.advance(1)
    assert versions(node, "re/k") == 3
    node.advance(600)
    ok(node.request(ConfigureKey(name="re/k", auto_rotate_period_s=300)))  # already overdue: at once
    assert versions(node, "re/k") == 4


def test_a_manual_rotation_restarts_the_period() -> None:
    node = KeyNode()
    auto_key(node, "man/k", HOUR)
    node.advance(HOUR / 2)
    ok(node.request(RotateKey(name="man/k")))
    node.advance(HOUR / 2)
    assert versions(node, "man/k") == 2  # due an hour after the manual rotation, not after the create
    node.advance(HOUR / 2)
    assert versions(node, "man/k") == 3


def test_a_restart_keeps_the_schedule_of_the_version_stamps() -> None:
    node = KeyNode()
    auto_key(node, "rs/k", HOUR)  # stamped at t=100
    node.advance(2400)
    node = node.restart(start_s=node.env.now)  # the actor starts at t=2500; the key is due at t=3700
    node.advance(1199)
    assert versions(node, "rs/k") == 1
    node.advance(1)
    assert versions(node, "rs/k") == 2
    # Down across a due time: rotated as soon as the partition is loaded again, once.
    node.advance(HOUR - 10)
    node = node.restart(start_s=node.env.now + 5 * HOUR)
    assert versions(node, "rs/k") == 3
    node.advance(HOUR - 1)
    assert versions(node, "rs/k") == 3
    node.advance(1)
    assert versions(node, "rs/k") == 4


def test_many_due_keys_rotate_in_bounded_chunks() -> None:
    assert KeySettings(partitions=1).max_auto_rotations_per_tick == 100
    node = KeyNode(partitions=1, settings={"max_auto_rotations_per_tick": 4})
    names = [f"many/k{i:02d}" for i in range(10)]
    for name in names:
        auto_key(node, name, 60)
    ok(node.request(CreateKey(name="many/plain", algorithm="aes256-gcm")))
    node.hold.add(AppendBatch)
    node.advance(60)
    chunks = []
    while node.held:
        [(_, append)] = node.held
        chunks.append(len(append.events))
        node.release()
    assert chunks == [4, 4, 2]
    assert [versions(node, name) for name in names] == [2] * 10 and versions(node, "many/plain") == 1
    assert actor_of(node, names[0]).stats.auto_rotations == 10


def test_a_client_write_is_not_starved_by_a_chunk_of_rotations() -> None:
    node = KeyNode(partitions=1, settings={"max_auto_rotations_per_tick": 3})
    for i in range(9):
        auto_key(node, f"busy/k{i}", 60)
    node.hold.add(AppendBatch)
    node.advance(60)  # the first chunk is in flight
    request = node.send(CreateKey(name="busy/new", algorithm="aes256-gcm"))
    node.release()  # the client's create is not queued behind the six rotations still due
    [(_, append)] = node.held
    assert [e.subject for e in append.events] == ["busy/new"]
    node.hold.clear()
    node.release()
    assert isinstance(node.answer(request), KeyInfo)
    assert len(rotations_in_log(node)) == 9


def test_a_duplicated_tick_rotates_once_and_a_repeated_rotation_for_one_due_time_writes_nothing() -> None:
    node = KeyNode(hold={AppendBatch})
    actor_name = partition_actor(partition_of("dup/k", node.partitions))
    node.hold.clear()
    created = auto_key(node, "dup/k", HOUR)
    node.hold.add(AppendBatch)
    node.advance(HOUR)
    assert len(node.held) == 1  # the rotation is in flight
    for serial in (0, 1, 2, 99):
        node.runtime.deliver(actor_name, None, _RotateDueKeys(serial))
    node.settle()
    assert len(node.held) == 1
    node.release()
    node.hold.clear()
    for serial in (0, 99):
        node.runtime.deliver(actor_name, None, _RotateDueKeys(serial))
    node.settle()
    assert versions(node, "dup/k") == 2 and len(rotations_in_log(node)) == 1
    # A scan repeated for the same due time (an earlier incarnation's, or another node's once events
    # replicate) carries the same request id: it is answered from the fold and writes nothing.
    due = stamp_ms(created.versions[0]) + 3_600_000
    rotated = info(node, "dup/k").versions[1].version_id
    again = ok(node.request(RotateKey(name="dup/k", client_request_id=auto_request_id("dup/k", due)),
                            client=AUTO_ROTATE_CLIENT, to=actor_name))
    assert again.version_id == rotated
    assert versions(node, "dup/k") == 2 and len(rotations_in_log(node)) == 1


def test_a_failed_automatic_rotation_is_retried_later() -> None:
    node = KeyNode()
    auto_key(node, "retry/k", HOUR)
    node.hold.add(AppendBatch)
    node.advance(HOUR)
    assert len(node.held) == 1
    node.hold.clear()
    node.release(error=StorageError("disk full"))
    stats = actor_of(node, "retry/k").stats
    assert versions(node, "retry/k") == 1 and stats.auto_rotation_failures == 1
    node.advance(AUTO_ROTATE_RETRY_S - 1)
    assert versions(node, "retry/k") == 1
    node.advance(1)
    assert versions(node, "retry/k") == 2 and stats.auto_rotations == 1


# --- the setting's bounds --------------------------------------------------------------------


@pytest.mark.parametrize("period", [
    -1, -0.001, math.nan, math.inf, -math.inf, 1e300, 2**63, MAX_AUTO_ROTATE_PERIOD_S + 1,
    0.5, 1, MIN_AUTO_ROTATE_PERIOD_S - 0.001, True, "3600",
])
def test_an_out_of_bounds_period_is_a_bad_request(period: object) -> None:
    node = KeyNode()
    ok(node.request(CreateKey(name="bad/k", algorithm="aes256-gcm")))
    answer = node.request(ConfigureKey(name="bad/k", auto_rotate_period_s=period))  # type: ignore[arg-type]
    assert isinstance(answer, Failure) and answer.code is ErrorCode.BAD_REQUEST, answer
    assert "auto_rotate_period_s" in answer.message
    assert info(node, "bad/k").auto_rotate_period_s == 0.0


@pytest.mark.parametrize("period", [0, 0.0, MIN_AUTO_ROTATE_PERIOD_S, 86_400, MAX_AUTO_ROTATE_PERIOD_S])
def test_periods_within_the_bounds_are_accepted(period: float) -> None:
    node = KeyNode()
    ok(node.request(CreateKey(name="good/k", algorithm="aes256-gcm")))
    assert ok(node.request(ConfigureKey(name="good/k", auto_rotate_period_s=period))).auto_rotate_period_s == period


@pytest.mark.parametrize("period", [math.nan, math.inf, -math.inf, 2**64, True])
def test_the_wire_refuses_what_no_float_field_may_carry(period: object) -> None:
    request = codec.to_map(ConfigureKey(name="k", auto_rotate_period_s=60.0))
    request["auto_rotate_period_s"] = period
    with pytest.raises(DecodeError):
        codec.from_map(request)
