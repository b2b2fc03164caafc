"""slot_9a_signer(keep_open=True): one PIV session, the PIN once, a lost session retried once, a PIN never twice."""

from __future__ import annotations

import threading

import pytest

from keyswarm.client.session import _KeptSlotSigner, slot_9a_signer
from keyswarm.enrolment import TokenAccess, create_network, enrol_client
from keyswarm.errors import TokenAbsent, TokenError


class FakeSlot:
    def __init__(self, log: list, fail: list):
        self.log, self.fail, self.closed = log, fail, False

    def sign(self, data: bytes, *, pin: str | None = None) -> bytes:
        self.log.append(("sign", pin))
        if self.fail:
            raise self.fail.pop(0)
        return b"sig:" + data

    def close(self) -> None:
        self.closed = True


def signer_with(fail: list) -> tuple[_KeptSlotSigner, list, list]:
    log: list = []
    slots: list = []

    def open_slot() -> FakeSlot:
        slots.append(FakeSlot(log, fail))
        return slots[-1]

    return _KeptSlotSigner(open_slot, "123456"), log, slots


def test_the_pin_is_verified_once_per_session_and_the_session_is_kept() -> None:
    sign, log, slots = signer_with([])
    assert [sign(b"a"), sign(b"b"), sign(b"c")] == [b"sig:a", b"sig:b", b"sig:c"]
    assert sign.opened == 1 and log == [("sign", "123456"), ("sign", None), ("sign", None)]
    sign.close()
    assert slots[0].closed
    assert sign(b"d") == b"sig:d" and sign.opened == 2 and log[-1] == ("sign", "123456")


def test_a_lost_session_is_reopened_once_with_the_pin() -> None:
    fail: list = []
    sign, log, slots = signer_with(fail)
    sign(b"a")
    fail.append(TokenAbsent("the device is gone"))
    assert sign(b"b") == b"sig:b"
    assert sign.opened == 2 and slots[0].closed and log[-2:] == [("sign", None), ("sign", "123456")]


@pytest.mark.parametrize("error", [TokenError("wrong PIN, 2 tries left"), TokenAbsent("no device")])
def test_a_failure_on_a_fresh_session_is_raised_at_once_never_spending_a_second_pin_try(error) -> None:
    sign, log, slots = signer_with([error])
    with pytest.raises(type(error)):
        sign(b"a")
    assert sign.opened == 1 and log == [("sign", "123456")] and slots[0].closed


def test_a_kept_session_failing_then_a_fresh_one_failing_raises_after_one_pin_try() -> None:
    sign, log, _ = signer_with([])
    sign(b"a")
    fail = [TokenError("lost"), TokenError("wrong PIN")]
    log.clear()
    sign._slot.fail = fail  # type: ignore[union-attr]

    def open_failing() -> FakeSlot:
        return FakeSlot(log, fail)

    sign._open_slot = open_failing
    with pytest.raises(TokenError, match="wrong PIN"):
        sign(b"b")
    assert log == [("sign", None), ("sign", "123456")]


def test_concurrent_signatures_share_one_session() -> None:
    sign, log, _ = signer_with([])
    threads = [threading.Thread(target=sign, args=(b"%d" % i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sign.opened == 1 and len(log) == 16 and log.count(("sign", "123456")) == 1


def test_a_virtual_yubikey_signs_many_handshakes_on_one_session(tmp_path) -> None:
    root = TokenAccess(spec=f"soft:{tmp_path / 'root.token'}")
    create_network(root, network_name="slots", out_dir=tmp_path)
    spec = f"virtual:{tmp_path / 'yk.vyk'}?latency=zero"
    (tmp_path / "c").mkdir()
    enrol_client(root, tmp_path / "root.pem", name="carol", out_dir=tmp_path / "c", yubikey_slot_9a=TokenAccess(spec=spec))
    kept = slot_9a_signer(spec, "123456")
    signatures = [kept(b"transcript %d" % i) for i in range(5)]
    assert kept.opened == 1 and len(set(signatures)) == 5
    one_shot = slot_9a_signer(spec, "123456", keep_open=False)
    kept.close()  # let the one-shot signer in
    assert one_shot(b"x")
    wrong = slot_9a_signer(spec, "000000")
    with pytest.raises(TokenError):
        wrong(b"x")
    assert wrong.opened == 1
