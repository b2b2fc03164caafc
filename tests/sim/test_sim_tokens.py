"""Simulated nodes run the hardware and sub-keys actors on virtual YubiKeys; pulling a key out degrades a node.

Every node of a default `Simulation` has its own `VirtualYubiKey`, a node
certificate issued at sim start by a root made for the run, and the real
hardware and sub-keys actors. The "token unplugged" fault: the node reports
`degraded` once its hardware actor notices, sub-key renewal fails and is
retried with a doubling backoff, the current sub-key expires with no
successor; plugging the key back in clears it all and the node is `ok` again.
And each node's event signer is certified by its virtual YubiKey: a chain
written before is recertified at the next boot and verifies up to the root.
"""

from __future__ import annotations

from datetime import datetime, timezone

from cryptography import x509

from keyswarm.actors.messages import Health, HealthResult
from keyswarm.audit import audit_log
from keyswarm.actors.subkeys import SubkeyState
from keyswarm.config import SubkeysConfig
from keyswarm.crypto.chain_verify import verify_chain
from keyswarm.node.signer_certificate import SignerCertificate
from keyswarm.sim import Simulation
from keyswarm.sim.node import simulated_signing_key
from keyswarm.sim.tokens import SimTokens
from keyswarm.storage.bodies import SIGNER_KEY_TYPE, KeyDisabled, decode_body
from keyswarm.storage.chain import OriginChain, Signer, draft
from keyswarm.storage.chain import verify_chain as verify_origin_chain

#: Short sub-key lifetime: rotation at 60 s, expiry at 120 s of virtual time.
LIFETIME_S = 120.0


def health(sim: Simulation, node: str) -> HealthResult:
    reply = sim.request(node, Health(), timeout_s=2.0)
    assert reply.ok, f"seed={sim.seed}: {reply.error}"
    return reply.value


def test_every_node_mints_a_subkey_certified_by_its_virtual_yubikey(sim_seed: int) -> None:
    sim = Simulation(sim_seed, 3)
    sim.run_for(1.0)
    assert sim.tokens is not None
    for name, node in sim.nodes.items():
        result = health(sim, name)
        assert result.status == "ok", f"seed={sim_seed}: {result}"
        assert result.actors["hardware"] == result.actors["subkeys"] == "running", f"seed={sim_seed}: {result}"
        assert (result.token, result.token_kind, result.subkey) == ("ready", "virtual", "ok"), f"seed={sim_seed}: {result}"
        wall = node.wall_time()
        assert wall + 3500 < result.subkey_not_after_s <= wall + 3600, f"seed={sim_seed}: {result}"
        # The sub-key's certificate chains up to the simulation's root, at the node's own time.
        current = node.runtime.actor("subkeys").current
        node_cert = x509.load_der_x509_certificate(sim.tokens.certificates[name])
        verified = verify_chain(
            current.certificate_der, [node_cert], sim.tokens.root_certificate,
            now=datetime.fromtimestamp(wall, timezone.utc), network_id=sim.tokens.network_id, expected_kind="subkey",
        )
        assert verified.name == name and verified.serial == result.subkey_serial, f"seed={sim_seed}: {verified}"


def test_the_pki_comes_from_the_seed_and_the_simulated_clock(sim_seed: int) -> None:
    first, second = SimTokens(sim_seed, ["n1", "n2"], wall_time_s=1e9), SimTokens(sim_seed, ["n1", "n2"], wall_time_s=1e9)
    assert first.root_certificate == second.root_certificate and first.certificates == second.certificates
    assert SimTokens(sim_seed + 1, ["n1", "n2"], wall_time_s=1e9).certificates != first.certificates
    node = x509.load_der_x509_certificate(first.certificates["n1"])
    assert node.not_valid_before_utc.timestamp() <= 1e9 - 86_400, "issued at the simulated clock, backdated a day"


def test_an_unplugged_token_degrades_the_node_and_it_recovers_when_plugged(sim_seed: int) -> None:
    sim = Simulation(sim_seed, 3, subkeys=SubkeysConfig(lifetime_s=LIFETIME_S))
    sim.run_for(10.0)
    first = health(sim, "n2")
    assert (first.status, first.token, first.subkey) == ("ok", "ready", "ok"), f"seed={sim_seed}: {first}"

    sim.unplug_token("n2")
    sim.run_for(40.0)  # the hardware actor's idle probe (every 30 s) notices
    now = health(sim, "n2")
    assert (now.status, now.token, now.subkey) == ("degraded", "absent", "ok"), f"seed={sim_seed}: {now}"
    assert all(health(sim, other).status == "ok" for other in ("n1", "n3")), f"seed={sim_seed}"

    # Rotation falls due at 60 s: certifying the successor fails and is retried, each delay double the last.
    subkeys = lambda: sim.node("n2").runtime.actor("subkeys")  # noqa: E731 -- a fresh look after each step
    failures_at: list[float] = []
    while sim.now < 135.0:
        before = subkeys().failures
        sim.run_for(0.05)
        if subkeys().failures > before:
            failures_at.append(sim.now)
    gaps = [round(b - a, 1) for a, b in zip(failures_at, failures_at[1:])]
    assert len(failures_at) >= 4, f"seed={sim_seed}: failures at {failures_at}"
    assert gaps == [min(2.0**k, 60.0) for k in range(len(gaps))], f"seed={sim_seed}: failures at {failures_at}"
    expired = health(sim, "n2")
    assert (expired.status, expired.token, expired.subkey) == ("degraded", "absent", "expired"), f"seed={sim_seed}: {expired}"
    assert subkeys().state is SubkeyState.EXPIRED and "token" in subkeys().last_error, f"seed={sim_seed}"

    sim.plug_token("n2")
    recovered = sim.run_until(lambda: subkeys().state is SubkeyState.OK, max_s=120.0)
    assert recovered, f"seed={sim_seed}: no sub-key within 120 s of plugging the key back in"
    back = health(sim, "n2")
    assert (back.status, back.token, back.subkey) == ("ok", "ready", "ok"), f"seed={sim_seed}: {back}"
    assert back.subkey_serial not in (0, first.subkey_serial), f"seed={sim_seed}: {back}"
    assert sim.node("n2").runtime.conditions == (), f"seed={sim_seed}: {sim.node('n2').runtime.conditions}"


def test_a_node_restarted_with_its_key_out_starts_degraded_and_reconnects(sim_seed: int) -> None:
    sim = Simulation(sim_seed, 2)
    sim.run_for(1.0)
    sim.crash("n1")
    sim.unplug_token("n1")
    sim.restart("n1")
    sim.run_for(2.0)
    down = health(sim, "n1")
    assert (down.status, down.token, down.subkey) == ("degraded", "absent", "starting"), f"seed={sim_seed}: {down}"
    sim.plug_token("n1")
    subkeys = lambda: sim.node("n1").runtime.actor("subkeys")  # noqa: E731
    assert sim.run_until(lambda: subkeys().state is SubkeyState.OK, max_s=60.0), f"seed={sim_seed}"
    up = health(sim, "n1")
    assert (up.status, up.token, up.subkey) == ("ok", "ready", "ok"), f"seed={sim_seed}: {up}"


def test_unplug_needs_the_simulation_s_own_tokens(sim_seed: int) -> None:
    import pytest

    sim = Simulation(sim_seed, 2, tokens=False)
    assert sim.tokens is None and "hardware" not in sim.node("n1").runtime.actor_names()
    with pytest.raises(ValueError, match="no tokens"):
        sim.unplug_token("n1")
    with pytest.raises(ValueError, match="no node"):
        Simulation(sim_seed, 2).unplug_token("n9")


def test_a_node_certifies_an_uncertified_chain_on_restart_and_it_verifies_to_the_sim_root(sim_seed: int) -> None:
    sim = Simulation(sim_seed, 2)
    sim.run_for(0.5)
    assert sim.tokens is not None
    certified: SignerCertificate = sim.tokens.signer_certificates["n1"]
    # n1's disk holds a chain its key wrote before it had a token (as an upgraded node's does).
    sim.crash("n1")
    disk = sim.node("n1").event_log
    partitions = disk.meta().partitions
    chain = OriginChain("n1", Signer(simulated_signing_key(sim_seed, "n1")))
    wall_ms = int(sim.node("n1").wall_time() * 1000)
    disk.append(chain.seal([draft(KeyDisabled(name=f"k{i}"), subject=f"k{i}", partitions=partitions)
                            for i in range(3)], wall_ms))  # fmt: skip
    hint = f"seed={sim_seed}: {sim.replay_hint()}"
    assert audit_log(disk, root=sim.tokens.root_certificate).warnings, hint  # uncertified so far
    sim.restart("n1")
    sim.run_for(1.0)
    disk = sim.node("n1").event_log  # a new handle on the same disk
    events = disk.read_origin("n1")
    verify_origin_chain("n1", events, partitions=partitions)
    keys = [(e.origin_seq, decode_body(e)) for e in events if e.type == SIGNER_KEY_TYPE]
    assert [(seq, body.certificate) for seq, body in keys] == [(1, b""), (5, certified.certificate_der)], hint
    report = audit_log(disk, root=sim.tokens.root_certificate, require_certified=True)
    assert report.ok and report.certificates == 1, f"{report.findings}; {hint}"
