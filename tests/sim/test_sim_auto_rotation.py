"""Automatic key rotation in the simulator: versions appear on schedule in virtual time, across a crash.

The node runs the real node actors and the key service (as in test_sim_keys.py);
time is virtual, so a key rotating every two minutes is watched for half an
hour in well under a second. Every ciphertext sealed along the way, under
whichever version was the primary then, must still decrypt at the end.
"""

from __future__ import annotations

import hashlib

from keyswarm.actors.key_messages import ConfigureKey, CreateKey, Decrypt, Encrypt, GetKey
from keyswarm.actors.key_router import KEY_ROUTES, key_service_specs
from keyswarm.actors.keys import KeySettings
from keyswarm.actors.runtime import Actor, ActorSpec, Context
from keyswarm.config import StorageConfig
from keyswarm.crypto.sealing import DomainKey
from keyswarm.node.assembly import node_actors
from keyswarm.sim.driver import Simulation
from keyswarm.sim.node import simulated_signing_key

PARTITIONS = 8
FRONT = "front"
PERIOD_S = 120.0


class Front(Actor):
    """Stands in for the sessions actor after authentication: forwards by KEY_ROUTES."""

    def on_message(self, ctx: Context, msg: object) -> None:
        ctx.forward(KEY_ROUTES[type(msg)], msg)


def simulation(seed: int) -> Simulation:
    storage = StorageConfig(partitions=PARTITIONS)
    key = DomainKey(hashlib.blake2b(seed.to_bytes(8, "big"), digest_size=32, person=b"sim.domain").digest())

    def actors(node: str) -> list[ActorSpec]:
        return [
            *node_actors(storage, signer_key=simulated_signing_key(seed, node)),
            ActorSpec(FRONT, Front),
            *key_service_specs(KeySettings(partitions=PARTITIONS), (key,)),
        ]

    return Simulation(seed, ["n1"], actors=actors, gateway=FRONT, storage=storage, trace="off")


def value(sim: Simulation, msg: object) -> object:
    reply = sim.request("n1", msg)
    assert reply.ok, (msg, reply, sim.replay_hint())
    return reply.value


def test_a_key_rotates_every_period_in_virtual_time_and_old_ciphertexts_still_decrypt(sim_seed: int) -> None:
    sim = simulation(sim_seed)
    hint = sim.replay_hint()
    value(sim, CreateKey(name="auto/k", algorithm="aes256-gcm"))
    value(sim, ConfigureKey(name="auto/k", auto_rotate_period_s=PERIOD_S))
    value(sim, CreateKey(name="manual/k", algorithm="chacha20-poly1305"))  # period 0: never rotates
    start = sim.now
    # Down for a minute across the due time of 960 s: that rotation happens as soon as the node is
    # back (~970 s), and the schedule goes on from that version's stamp.
    sim.at(start + 7 * PERIOD_S + 70, lambda: sim.crash("n1"), "crash")
    sim.at(start + 7 * PERIOD_S + 130, lambda: sim.restart("n1"), "restart")
    sealed: list[tuple[bytes, bytes]] = []  # (ciphertext, plaintext)
    versions_seen: list[bytes] = []
    for i in range(15):  # 15 periods, sealing once in the middle of each
        sim.run_for(PERIOD_S / 2)
        plaintext = b"message %d" % i
        answer = value(sim, Encrypt(name="auto/k", plaintext=plaintext))
        sealed.append((answer.ciphertext, plaintext))  # type: ignore[attr-defined]
        versions_seen.append(answer.version_id)  # type: ignore[attr-defined]
        sim.run_for(PERIOD_S / 2)
    sim.run_for(PERIOD_S / 2)  # 1,860 s: rotations at 120 .. 840, ~970, ~1090 .. ~1810
    info = value(sim, GetKey(name="auto/k"))
    assert len(info.versions) == 16, (len(info.versions), sim.now - start, hint)  # type: ignore[attr-defined]
    assert len(set(versions_seen)) == 15, hint  # every period sealed under a version of its own
    gaps_ms = [(b.created_hlc >> 16) - (a.created_hlc >> 16)
               for a, b in zip(info.versions, info.versions[1:])]  # type: ignore[attr-defined]
    assert all(PERIOD_S * 1000 <= gap < (PERIOD_S + 1) * 1000 for gap in gaps_ms[:7] + gaps_ms[8:]), (gaps_ms, hint)
    assert PERIOD_S * 1000 < gaps_ms[7] < (PERIOD_S + 60) * 1000, (gaps_ms, hint)
    assert len(value(sim, GetKey(name="manual/k")).versions) == 1, hint  # type: ignore[attr-defined]
    for ciphertext, plaintext in sealed:
        assert value(sim, Decrypt(ciphertext=ciphertext)).plaintext == plaintext, hint  # type: ignore[attr-defined]
