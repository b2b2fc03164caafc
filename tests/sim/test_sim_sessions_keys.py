"""Key operations through sessions in the simulator: the default assembly, a 3-node network on virtual YubiKeys.

Every simulated node runs the real actors (sessions, sub-keys, and the key
service over the simulation's domain key, `keyswarm.sim.tokens`). Clients are
certified by the simulation's root and speak raw frames (the sessions tests'
`Client`): an admin sets a policy, a second client creates a key, encrypts and
decrypts, and a ticket from one node resumes on another (one domain key).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from session_node import Client, Pki, RequestFailed, SessionNet  # noqa: E402

from keyswarm.actors.key_messages import CreateKey, Decrypt, Encrypt, SetPolicy  # noqa: E402
from keyswarm.actors.messages import Echo, EchoResult  # noqa: E402
from keyswarm.errors import ErrorCode  # noqa: E402
from keyswarm.sim import Simulation  # noqa: E402
from keyswarm.storage.policy_bodies import PolicyRule  # noqa: E402


def network(seed: int, tmp_path: Path) -> tuple[SessionNet, object]:
    sim = Simulation(seed, 3)
    assert sim.tokens is not None
    root_token = sim.tokens.root_token()
    pki = Pki(root=sim.tokens.root_certificate, root_token=root_token, rng=random.Random(seed))  # type: ignore[arg-type]
    pki.client("boss", tmp_path, admin=True)
    pki.client("app1", tmp_path)
    assert sim.run_until(lambda: all(
        sim.node(n).runtime.actor("subkeys") is not None and sim.node(n).runtime.actor("keys") is not None
        for n in ("n1", "n2", "n3")), max_s=5.0)
    return SessionNet(sim=sim, pki=pki), root_token


def handshake_when_ready(client: Client, node: str, *, tries: int = 100) -> None:
    """Hellos are UNAVAILABLE while the node loads its policy table and mints its first sub-key."""
    for _ in range(tries):
        try:
            client.handshake(node)
            return
        except RequestFailed as failed:
            if failed.code is not ErrorCode.UNAVAILABLE:
                raise
            client.net.sim.run_for(0.1)
    raise AssertionError(f"{node} not ready for a handshake after {tries} tries")


def call_until_allowed(client: Client, msg: object, *, tries: int = 50) -> object:
    """The policy reaches the sessions actor once durable: retry a FORBIDDEN a few times."""
    for _ in range(tries):
        try:
            return client.call(msg)
        except RequestFailed as failed:
            if failed.code is not ErrorCode.FORBIDDEN:
                raise
            client.net.sim.run_for(0.1)
    raise AssertionError(f"still FORBIDDEN after {tries} tries: {msg}")


@pytest.mark.parametrize("seed", [3, 11])
def test_keys_through_sessions_in_a_three_node_sim(seed: int, tmp_path: Path) -> None:
    net, root_token = network(seed, tmp_path)
    try:
        boss, app = Client(net, "boss", seed=seed), Client(net, "app1", seed=seed + 1)
        handshake_when_ready(boss, "n1")
        handshake_when_ready(app, "n1")
        rules = (PolicyRule(pattern="app1/*", ops=("encrypt", "decrypt", "key.create")),)
        boss.call(SetPolicy(client="app1", rules=rules, client_request_id=b"policy-1"))
        created = call_until_allowed(app, CreateKey(name="app1/k", algorithm="chacha20-poly1305",
                                                    client_request_id=b"create-1"))
        assert created.name == "app1/k"
        sealed = app.call(Encrypt(name="app1/k", plaintext=b"sim secret"))
        assert app.call(Decrypt(ciphertext=sealed.ciphertext)).plaintext == b"sim secret"
        with pytest.raises(RequestFailed) as forbidden:
            app.call(Encrypt(name="app2/x", plaintext=b"x"))
        assert forbidden.value.code is ErrorCode.FORBIDDEN
        tampered = bytearray(sealed.ciphertext)
        tampered[-1] ^= 1
        with pytest.raises(RequestFailed) as broken:
            app.call(Decrypt(ciphertext=bytes(tampered)))
        assert broken.value.code is ErrorCode.DECRYPT_FAILED
        # A ticket from n1 resumes on n3: every node keys its tickets from the sim's domain key.
        app.resume("n3")
        assert app.call(Echo(payload=b"n3")) == EchoResult(payload=b"n3", node="n3")
    finally:
        root_token.close()
