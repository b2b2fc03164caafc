"""The key service in the simulator: crashes, retried writes, and two origins writing one key.

Each node runs the real node actors plus the key service (`key_service_specs`).
Client requests go through the wire codec (map form) to a stand-in front
actor that forwards by `KEY_ROUTES`, as the sessions actor does once a
request has authenticated. A crash loses what was not durable; the client
retries every write that got no answer, with the same client request id.

Limit, stated: there is no replication yet, so "concurrent creates of one name
on two nodes" is checked on one node whose log holds both origins' events
(the second origin's chain is written straight into its log, as the
replicator will). The fold keeps both versions and both decrypt.
"""

from __future__ import annotations

import hashlib

from keyswarm.actors.key_messages import CreateKey, Decrypt, Encrypt, GetKey, KeyInfo, RotateKey
from keyswarm.actors.key_router import KEY_ROUTES, key_service_specs
from keyswarm.actors.keys import KeySettings
from keyswarm.actors.runtime import Actor, ActorSpec, Context
from keyswarm.config import StorageConfig
from keyswarm.crypto import ciphertext as ct
from keyswarm.crypto import named_keys
from keyswarm.crypto.sealing import DomainKey
from keyswarm.node.assembly import node_actors
from keyswarm.sim.driver import Simulation
from keyswarm.sim.network import LinkProfile
from keyswarm.sim.node import simulated_signing_key
from keyswarm.storage.bodies import KeyCreated, KeyVersionAdded
from keyswarm.storage.chain import OriginChain, Signer, draft
from keyswarm.transport import codec

PARTITIONS = 8
FRONT = "front"


class Front(Actor):
    """Stands in for the sessions actor after authentication: forwards by KEY_ROUTES."""

    def on_message(self, ctx: Context, msg: object) -> None:
        ctx.forward(KEY_ROUTES[type(msg)], msg)


def domain_key(seed: int) -> DomainKey:
    return DomainKey(hashlib.blake2b(seed.to_bytes(8, "big"), digest_size=32, person=b"sim.domain").digest())


def simulation(seed: int, nodes: list[str], *, client_loss: float = 0.0) -> Simulation:
    storage = StorageConfig(partitions=PARTITIONS)
    key = domain_key(seed)

    def actors(node: str) -> list[ActorSpec]:
        return [
            *node_actors(storage, signer_key=simulated_signing_key(seed, node)),
            ActorSpec(FRONT, Front),
            *key_service_specs(KeySettings(partitions=PARTITIONS), (key,)),
        ]

    client_link = LinkProfile(latency_s=0.0002, jitter_s=0.00005, jitter_cap_s=0.001, loss=client_loss)
    return Simulation(seed, nodes, actors=actors, gateway=FRONT, storage=storage, client_link=client_link, trace="off")


def bodies(sim: Simulation, node: str, cls: type) -> list[object]:
    log, tag = sim.node(node).event_log, codec.tag_of(cls)
    return [codec.decode(e.body, expect=cls) for p in range(PARTITIONS) for _, e in log.read_partition(p) if e.type == tag]


def write_until_answered(sim: Simulation, node: str, msg: object, *, attempts: int = 40) -> object:
    """Send `msg` until it is answered ok (a crashed node or a lost message answers nothing;
    the client retries the request as it is, client request id included)."""
    for _ in range(attempts):
        handle = sim.submit(node, msg, timeout_s=1.0)
        sim.run_until(lambda: handle in sim.replies, max_s=2.0)
        outcome = sim.replies.get(handle)
        if outcome is not None and outcome.ok:
            return outcome.reply.value
        sim.run_for(0.5)
    raise AssertionError(f"{msg!r} never succeeded; {sim.replay_hint()}")


def test_writes_survive_crashes_and_retries_apply_once(sim_seed: int) -> None:
    sim = simulation(sim_seed, ["n1"], client_loss=0.25)  # lost answers: the client retries writes that applied
    rng = sim.rng
    names = [f"app/k{i}" for i in range(12)]
    # Every create is sent once, then the node crashes somewhere inside the burst and restarts.
    for i, name in enumerate(names):
        sim.submit("n1", CreateKey(name=name, algorithm="aes256-gcm", client_request_id=b"create-%d" % i), timeout_s=1.0)
    crash_at = sim.now + rng.uniform(0.002, 0.016)  # the burst is durable and answered within ~15 ms
    sim.at(crash_at, lambda: sim.crash("n1"), "crash")
    sim.at(crash_at + 0.2, lambda: sim.restart("n1"), "restart")
    sim.run_for(1.5)
    created = {name: write_until_answered(sim, "n1", CreateKey(name=name, algorithm="aes256-gcm",
                                                               client_request_id=b"create-%d" % i))
               for i, name in enumerate(names)}
    hint = sim.replay_hint()
    assert sorted(b.name for b in bodies(sim, "n1", KeyCreated)) == sorted(names), hint
    # Acknowledged ciphertexts, rotations (retried across another crash), then everything must still open.
    sealed = {}
    for name in names:
        answer = write_until_answered(sim, "n1", Encrypt(name=name, plaintext=name.encode()))
        sealed[name] = answer.ciphertext
        assert answer.version_id == created[name].primary_version_id, hint
    for i, name in enumerate(names[:6]):
        sim.submit("n1", RotateKey(name=name, client_request_id=b"rotate-%d" % i), timeout_s=1.0)
    sim.at(sim.now + rng.uniform(0.0005, 0.004), lambda: sim.crash("n1"), "crash")
    sim.run_for(0.5)
    sim.restart("n1")
    sim.run_for(0.5)
    for i, name in enumerate(names[:6]):
        info = write_until_answered(sim, "n1", RotateKey(name=name, client_request_id=b"rotate-%d" % i))
        assert isinstance(info, KeyInfo) and info.primary == 2, (info, hint)
    assert len(bodies(sim, "n1", KeyVersionAdded)) == 6, hint
    for name, blob in sealed.items():
        answer = write_until_answered(sim, "n1", Decrypt(ciphertext=blob))
        assert answer.plaintext == name.encode(), (name, answer, hint)


def test_concurrent_creates_from_two_origins_keep_both_versions(sim_seed: int) -> None:
    sim = simulation(sim_seed, ["n1"])
    first = sim.request("n1", CreateKey(name="shared", algorithm="chacha20-poly1305")).value
    mine = sim.request("n1", Encrypt(name="shared", plaintext=b"from n1")).value.ciphertext
    # Origin n2 created the same name concurrently (its own version and material, an HLC next to n1's).
    rng = sim.rng
    key = domain_key(sim_seed)
    version_id, material = rng.randbytes(16), named_keys.generate_material("chacha20-poly1305", rng.randbytes)
    wrapped = named_keys.wrap_material(key, "shared", version_id, material, entropy=rng.randbytes)
    body = KeyCreated(name="shared", algorithm="chacha20-poly1305", version_id=version_id, material=wrapped)
    n2 = OriginChain("n2", Signer(hashlib.sha256(b"n2 %d" % sim_seed).digest()))
    physical_ms = first.versions[0].created_hlc >> 16
    events = n2.seal([draft(body, subject="shared", partitions=PARTITIONS)], physical_ms)
    sim.node("n1").event_log.append(events)
    sim.crash("n1")  # the keys actor learns of n2's events when it loads its partition (replication will push them)
    sim.restart("n1")
    sim.run_for(0.2)
    info = sim.request("n1", GetKey(name="shared")).value
    hint = sim.replay_hint()
    assert {v.version_id for v in info.versions} == {first.primary_version_id, version_id}, hint
    assert {v.created_by for v in info.versions} == {"n1", "n2"}, hint
    theirs = ct.encrypt(ct.ReadyKey("shared", version_id, named_keys.load_key("chacha20-poly1305", material)),
                        b"from n2", entropy=rng.randbytes)
    for blob, plaintext in ((mine, b"from n1"), (theirs, b"from n2")):
        answer = sim.request("n1", Decrypt(ciphertext=blob))
        assert answer.ok and answer.value.plaintext == plaintext, (answer, hint)


def test_one_seed_gives_one_run(sim_seed: int) -> None:
    def run() -> list[object]:
        sim = simulation(sim_seed, ["n1"])
        out = [sim.request("n1", CreateKey(name="d", algorithm="ed25519")).value]
        out.append(sim.request("n1", Encrypt(name="d", plaintext=b"x")))
        return out

    assert run() == run()
