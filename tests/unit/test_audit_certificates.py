"""`audit_log(root=...)`: every SignerKey's certificate checked up to the network root.

Logs are MemoryLogs written with `OriginChain` directly, so each test plants
exactly the certificate it is about: ours, another key's, another node's,
another network's, expired at the SignerKey's time, garbage, or none.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from keyswarm.audit import audit_log
from keyswarm.storage.bodies import KeyDisabled
from keyswarm.storage.chain import OriginChain, Signer, draft
from keyswarm.storage.memory_log import MemoryLog
from signer_pki import NOW, VALID_MS, Network, build_network

PARTITIONS = 4
KEY = Signer(bytes(range(32)))
OTHER_KEY = Signer(bytes(range(1, 33)))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return build_network(tmp_path_factory.mktemp("ours"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return build_network(tmp_path_factory.mktemp("theirs"), seed=2, nodes=("n1",))


def chain_log(certificate: bytes = b"", intermediates: tuple[bytes, ...] = (), *, origin: str = "n1",
              ms: int = VALID_MS, recertify: tuple[bytes, tuple[bytes, ...]] | None = None) -> MemoryLog:
    """A log holding `origin`'s chain: a genesis carrying `certificate`, two batches, and optionally a
    same-key SignerKey carrying `recertify` between them."""
    log = MemoryLog(node_id=origin, partitions=PARTITIONS)
    chain = OriginChain(origin, KEY, certificate=certificate, intermediates=intermediates)
    body = [draft(KeyDisabled(name=f"k{i}"), subject=f"k{i}", partitions=PARTITIONS) for i in range(3)]
    log.append(chain.seal(body, ms))
    if recertify is not None:
        chain.recertify(*recertify)
    log.append(chain.seal(body, ms + 1))
    return log


def findings(report: object) -> list[tuple[str, int | None, str]]:
    return [(f.reason, f.origin_seq, f.detail) for f in report.findings]  # type: ignore[attr-defined]


def test_a_certified_chain_verifies_against_the_root(net: Network) -> None:
    report = audit_log(chain_log(*net.signer("n1", KEY.public_key)), root=net.root, require_certified=True)
    assert report.ok, report.findings
    assert report.certificates == 1 and report.warnings == []
    assert "1 signer certificates" in report.summary()


def test_an_uncertified_chain_is_a_warning_or_with_require_certified_a_finding(net: Network) -> None:
    report = audit_log(chain_log(), root=net.root)
    assert report.ok
    (warning,) = report.warnings
    assert (warning.reason, warning.origin, warning.origin_seq, warning.partition) == ("uncertified", "n1", 1, 0)
    assert warning.seq == 1 and "carries no certificate" in warning.detail
    strict = audit_log(chain_log(), root=net.root, require_certified=True)
    assert [(f.reason, f.origin_seq) for f in strict.findings] == [("uncertified", 1)]


def test_without_a_root_nothing_about_certificates_is_said(net: Network) -> None:
    for log in (chain_log(), chain_log(*net.signer("n1", OTHER_KEY.public_key))):
        report = audit_log(log)
        assert report.ok and report.warnings == [] and report.certificates == 0


def test_a_chain_recertified_later_is_certified(net: Network) -> None:
    log = chain_log(recertify=net.signer("n1", KEY.public_key))
    report = audit_log(log, root=net.root, require_certified=True)
    assert report.ok, report.findings
    assert report.certificates == 1 and report.warnings == []


def test_a_certificate_of_another_key_is_a_key_mismatch(net: Network) -> None:
    report = audit_log(chain_log(*net.signer("n1", OTHER_KEY.public_key)), root=net.root)
    ((reason, seq, detail),) = findings(report)
    assert (reason, seq) == ("certificate_key_mismatch", 1)
    assert OTHER_KEY.public_key.hex()[:16] in detail and KEY.public_key.hex()[:16] in detail
    assert report.warnings == []  # said once: not also "uncertified"


def test_a_certificate_of_another_node_is_a_wrong_node(net: Network) -> None:
    report = audit_log(chain_log(*net.signer("n2", KEY.public_key)), root=net.root)
    ((reason, seq, detail),) = findings(report)
    assert (reason, seq) == ("certificate_wrong_node", 1)
    assert "node 'n2', not 'n1'" in detail


def test_a_certificate_of_another_network_is_a_bad_certificate(net: Network, foreign: Network) -> None:
    report = audit_log(chain_log(*foreign.signer("n1", KEY.public_key)), root=net.root)
    ((reason, seq, detail),) = findings(report)
    assert (reason, seq) == ("bad_certificate", 1)
    assert "wrong_network" in detail


def test_a_certificate_expired_at_the_signer_keys_time_is_a_bad_certificate(net: Network) -> None:
    certificate, intermediates = net.signer("n1", KEY.public_key, lifetime=timedelta(minutes=30))
    report = audit_log(chain_log(certificate, intermediates), root=net.root)  # written an hour after NOW
    ((reason, _, detail),) = findings(report)
    assert reason == "bad_certificate" and "expired" in detail and "at the SignerKey's time" in detail
    before = int((NOW + timedelta(minutes=10)).timestamp() * 1000)
    assert audit_log(chain_log(certificate, intermediates, ms=before), root=net.root).ok


@pytest.mark.parametrize(
    ("certificate", "intermediates", "said"),
    [(b"garbage", (), "malformed"), (b"\x30" * 20_000, (), "malformed"), (b"", (b"x",), "uncertified")],
)
def test_garbage_in_the_certificate_fields_is_reported(net: Network, certificate: bytes,
                                                      intermediates: tuple[bytes, ...], said: str) -> None:
    report = audit_log(chain_log(certificate, intermediates), root=net.root, require_certified=True)
    assert len(report.findings) == 1
    assert said in report.findings[0].reason + report.findings[0].detail


def test_the_certificate_without_its_node_certificate_is_a_bad_certificate(net: Network) -> None:
    certificate, _ = net.signer("n1", KEY.public_key)
    report = audit_log(chain_log(certificate, ()), root=net.root)
    assert [(f.reason, "malformed" in f.detail) for f in report.findings] == [("bad_certificate", True)]
