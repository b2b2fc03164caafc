"""The event signer's certificate in the chain: genesis, recertification at start, and the service's lookup.

The storage actor runs on the same fake driver as test_storage_actor (the
test serves the event-log requests with the real service over a MemoryLog).
"""

from __future__ import annotations

import pytest

from keyswarm.actors.storage import AppendBatch, LoadHead
from keyswarm.node import event_log_service
from keyswarm.node.event_log_service import EventLogService
from keyswarm.errors import StorageError
from keyswarm.storage.bodies import SIGNER_KEY_TYPE, KeyDisabled, SignerKey, decode_body
from keyswarm.storage.chain import ChainBreak, ChainVerifier, OriginChain, Signer, draft, verify_chain
from keyswarm.storage.memory_log import MemoryLog
from signer_pki import VALID_MS, Network, build_network
from test_storage_actor import KEY, NODE, PARTITIONS, Harness, append

PUBLIC = Signer(KEY).public_key


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return build_network(tmp_path_factory.mktemp("pki"), nodes=("n1",))


def certified(net: Network, **kwargs: object) -> dict[str, object]:
    certificate, intermediates = net.signer(NODE, PUBLIC, **kwargs)
    return {"signer_certificate": certificate, "signer_intermediates": intermediates}


def signer_keys(events: list) -> list[tuple[int, SignerKey]]:
    return [(e.origin_seq, decode_body(e)) for e in events if e.type == SIGNER_KEY_TYPE]


def write(h: Harness, *names: str) -> None:
    h.send(0, append(*names))
    h.fire()
    h.serve()


def test_the_genesis_signer_key_carries_the_certificate_and_the_node_certificate(net: Network) -> None:
    settings = certified(net)
    h = Harness(requesters=1, **settings)
    load = h.serve()
    assert type(load) is LoadHead and load.with_certificate
    write(h, "a")
    ((seq, body),) = signer_keys(h.chain())
    assert seq == 1 and body.public_key == PUBLIC
    assert body.certificate == settings["signer_certificate"]
    assert body.intermediates == settings["signer_intermediates"]


def test_an_uncertified_chain_is_recertified_with_the_same_key_at_the_next_start(net: Network) -> None:
    h = Harness(requesters=1)
    assert h.serve().with_certificate is False  # no certificate: no scan asked
    write(h, "a", "b")
    assert [body.certificate for _, body in signer_keys(h.chain())] == [b""]

    settings = certified(net)
    again = Harness(requesters=1, log=h.log.reopen(), **settings)
    again.serve()  # the head: the actor commits the recertification at once, before any append
    (batch,) = again.batches()
    (event,) = batch.events
    assert (event.origin_seq, event.type) == (4, SIGNER_KEY_TYPE)
    again.serve()
    write(again, "c")
    events = again.chain()  # verifies: a rotation to the same key, signed by it
    assert [(seq, body.public_key, body.certificate) for seq, body in signer_keys(events)] == [
        (1, PUBLIC, b""), (4, PUBLIC, settings["signer_certificate"])]
    assert [e.origin_seq for e in events] == [1, 2, 3, 4, 5]
    assert again.actor.stats.recertifications == 1

    # Started again with the same certificate: nothing to record.
    third = Harness(requesters=1, log=again.log.reopen(), **settings)
    third.serve()
    assert third.batches() == [] and third.outstanding() == []

    # A renewed certificate (another serial): recorded once more.
    renewed = certified(net, serial=12345)
    fourth = Harness(requesters=1, log=third.log.reopen(), **renewed)
    fourth.serve()
    fourth.serve()
    last = signer_keys(fourth.chain())[-1]
    assert last == (6, SignerKey(public_key=PUBLIC, certificate=renewed["signer_certificate"],
                                 intermediates=renewed["signer_intermediates"]))


def test_a_failed_recertification_is_retried_after_the_resync(net: Network) -> None:
    h = Harness(requesters=1)
    h.serve()
    write(h, "a")
    settings = certified(net)
    again = Harness(requesters=1, log=h.log.reopen(), **settings)
    again.serve()
    again.serve(error=StorageError("disk full"))  # the recertification commit fails
    assert type(again.serve()) is LoadHead  # the resync reloads the head ...
    assert type(again.serve()) is AppendBatch  # ... and commits the recertification again
    write(again, "b")
    assert [seq for seq, _ in signer_keys(again.chain())] == [1, 3]


def test_the_service_finds_the_newest_signer_certificate_of_an_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_log_service, "SIGNER_SCAN_BATCH", 3)  # several steps back through partition 0
    log = MemoryLog(node_id=NODE, partitions=1)
    chains = {o: OriginChain(o, Signer(bytes([i + 1]) * 32)) for i, o in enumerate((NODE, "n2"))}
    chains[NODE].recertify(b"first")
    ms = VALID_MS
    for origin in (NODE, "n2"):
        log.append(chains[origin].seal([draft(KeyDisabled(name=f"k{i}"), subject=f"k{i}", partitions=1)
                                        for i in range(4)], ms))  # fmt: skip
    chains[NODE].recertify(b"second")
    log.append(chains[NODE].seal([], ms + 1))
    for _ in range(3):
        log.append(chains["n2"].seal([draft(KeyDisabled(name="x"), subject="x", partitions=1)], ms + 2))
    service = EventLogService(log)
    assert service.load_head(NODE, with_certificate=True).signer_certificate == b"second"
    assert service.load_head("n2", with_certificate=True).signer_certificate == b""
    assert service.load_head(NODE).signer_certificate == b""  # not asked: not looked up
    # Kept up to date by the commits the service makes.
    chains[NODE].recertify(b"third")
    events = chains[NODE].seal([], ms + 3)
    service.handle(AppendBatch(tuple(events)))
    assert service.load_head(NODE, with_certificate=True).signer_certificate == b"third"
    assert EventLogService(log).signer_certificate(NODE) == b"third"  # and found again from the log


def test_origin_chain_recertify_on_a_new_chain_goes_into_the_genesis_event() -> None:
    chain = OriginChain(NODE, Signer(KEY), certificate=b"c0", intermediates=(b"i0",))
    chain.recertify(b"c1", (b"i1",))
    assert not chain.recertifying  # nothing to append: the genesis will carry it
    events = chain.seal([], VALID_MS)
    assert [decode_body(e) for e in events] == [SignerKey(public_key=PUBLIC, certificate=b"c1", intermediates=(b"i1",))]
    chain.recertify(b"c2")
    assert chain.recertifying
    more = chain.seal([draft(KeyDisabled(name="k"), subject="k", partitions=PARTITIONS)], VALID_MS)
    assert [e.type == SIGNER_KEY_TYPE for e in more] == [True, False] and more[0].sig and more[1].sig
    assert not chain.recertifying
    verify_chain(NODE, events + more, partitions=PARTITIONS)


def test_a_same_key_signer_key_signed_by_another_key_still_breaks_the_chain() -> None:
    # The recertification is a rotation like any other: signed by the key in force, or the chain breaks.
    chain = OriginChain(NODE, Signer(KEY))
    events = chain.seal([], VALID_MS)
    forger = OriginChain(NODE, Signer(bytes(32)), head=chain.head, last_hlc=chain.last_hlc)
    forged = forger.rotate(Signer(KEY), VALID_MS + 1, certificate=b"forged")
    verifier = ChainVerifier(NODE)
    verifier.feed(events[0])
    with pytest.raises(ChainBreak, match="bad_signature"):
        verifier.feed(forged)

