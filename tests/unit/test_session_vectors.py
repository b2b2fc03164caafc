"""docs/protocol.md section 12 ("Sessions") test vectors, regenerated and checked.

`Reference` below is a second implementation of the handshake, frame and
ticket recipes written from the document alone (hashlib, hmac, msgpack, the
AEAD), not from keyswarm's modules. Three things are checked:
1. the ```session-vector blocks in docs/protocol.md are exactly what the
   reference computes from the fixed inputs (so the doc cannot drift);
2. keyswarm's code computes the same bytes from the same inputs (transcript,
   node machine, frames, tickets, client resumption);
3. a real handshake and resumption (real certificates, the state machines)
   derive exactly the keys the reference derives from the captured messages.

`python tests/unit/test_session_vectors.py` prints the blocks for the doc.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BLOCK = re.compile(r"```session-vector\n(.*?)```", re.DOTALL)
RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)

# --- fixed inputs ---------------------------------------------------------------------
# X25519 keys of RFC 7748 section 6.1 (Alice = client, Bob = node), Ed25519 secret keys of
# RFC 8032 section 7.1 tests 1 (sub-key) and 2 (client); counting bytes for the rest.
INPUTS = {
    "client_ephemeral_private": bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
    "node_ephemeral_private": bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
    "subkey_private": bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
    "client_private": bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"),
    "client_nonce": bytes(range(0, 32)),
    "node_nonce": bytes(range(32, 64)),
    "handshake_id": bytes(range(64, 80)),
    "session_id": bytes(range(80, 96)),
    "node_certificate": b"<node certificate DER>",
    "subkey_certificate": b"<sub-key certificate DER>",
    "client_certificate": b"<client certificate DER>",
}
T = 1_772_366_400.0  # 2026-03-01T12:00:00Z
DOMAIN_KEY = bytes(range(0xA0, 0xC0))
TICKET_NONCE = bytes(range(0xC0, 0xCC))
NETWORK_ID = "00112233445566778899aabbccddeeff"
RESUMED_SESSION_ID = bytes(range(96, 112))
MAX_FRAME = 16 * 1024 * 1024  # the welcome tells the client the node's frame limit


class Reference:
    """The recipes of docs/protocol.md section 12 ("Sessions"), one function each."""

    @staticmethod
    def mix(h: bytes, code: int, data: bytes) -> bytes:
        return hashlib.sha256(h + bytes([code]) + struct.pack(">I", len(data)) + data).digest()

    @staticmethod
    def extract(salt: bytes, ikm: bytes) -> bytes:
        return hmac.new(salt, ikm, hashlib.sha256).digest()

    @staticmethod
    def expand(prk: bytes, label: str) -> bytes:
        return hmac.new(prk, b"keyswarm/v1 " + label.encode() + b"\x01", hashlib.sha256).digest()

    @staticmethod
    def seal(key: bytes, direction: int, counter: int, plaintext: bytes, aad: bytes, suite: int = 1) -> bytes:
        aead = ChaCha20Poly1305(key) if suite == 1 else AESGCM(key)
        return aead.encrypt(struct.pack(">IQ", direction, counter), plaintext, aad)

    @classmethod
    def handshake(cls, v: dict[str, bytes], *, node_signature: bytes | None = None,
                  client_signature: bytes | None = None, intermediates: tuple[bytes, ...] = (),
                  welcome: list[object] | None = None, suites: tuple[int, ...] = (2, 1)) -> dict[str, bytes]:
        """`suites`: what the hello offers; the node takes the first (it speaks both)."""
        mix, out = cls.mix, {}
        client_e = X25519PrivateKey.from_private_bytes(v["client_ephemeral_private"])
        node_e = X25519PrivateKey.from_private_bytes(v["node_ephemeral_private"])
        client_pub, node_pub = client_e.public_key().public_bytes(*RAW), node_e.public_key().public_bytes(*RAW)
        hello = {"op": "handshake.hello", "versions": [1], "client_ephemeral": client_pub,
                 "client_nonce": v["client_nonce"], "suites": list(suites)}
        out["hello_frame"] = msgpack.packb([1, "q", 1, hello])
        h = hashlib.sha256(b"keyswarm/v1 handshake").digest()
        items = [(0x01, b"\x00\x01"), (0x02, client_pub), (0x03, v["client_nonce"])]
        if suites:  # offered suites, then the chosen one after the version
            items += [(0x04, b"".join(s.to_bytes(2, "big") for s in suites)), (0x10, b"\x00\x01"),
                      (0x17, suites[0].to_bytes(2, "big"))]
        else:
            items += [(0x10, b"\x00\x01")]
        items += [(0x11, v["handshake_id"]), (0x12, v["node_certificate"]), (0x13, v["subkey_certificate"]),
                  (0x14, node_pub), (0x15, v["node_nonce"])]
        for code, data in items:
            h = mix(h, code, data)
        out["node_signed_hash"] = h
        signed = b"keyswarm/v1 node signature\x00" + h
        if node_signature is None:
            node_signature = Ed25519PrivateKey.from_private_bytes(v["subkey_private"]).sign(signed)
        out["node_signature"] = node_signature
        out["handshake_hash"] = h = mix(h, 0x16, node_signature)
        out["x25519_secret"] = dh = client_e.exchange(node_e.public_key())
        hs_prk = cls.extract(h, dh)
        out["hs_c2s"], out["hs_s2c"] = cls.expand(hs_prk, "hs c2s"), cls.expand(hs_prk, "hs s2c")
        h = mix(h, 0x20, v["client_certificate"])
        for intermediate in intermediates:
            h = mix(h, 0x21, intermediate)
        out["client_signed_hash"] = h
        if client_signature is None:
            client_signature = Ed25519PrivateKey.from_private_bytes(v["client_private"]).sign(
                b"keyswarm/v1 client signature\x00" + h)
        out["client_signature"] = client_signature
        out["auth_body"] = msgpack.packb([0x0707, v["client_certificate"], list(intermediates), client_signature])
        out["auth_sealed"] = cls.seal(out["hs_c2s"], 1, 0, out["auth_body"], out["handshake_hash"])
        out["final_hash"] = h = mix(h, 0x22, client_signature)
        prk = cls.extract(h, dh)
        out["c2s"], out["s2c"], out["resumption_secret"] = (cls.expand(prk, x) for x in ("c2s", "s2c", "resumption"))
        body = welcome or [v["session_id"], T + 3600, b"", 0.0, "n1", MAX_FRAME]
        out["welcome_body"] = msgpack.packb([0x0708, *body])
        out["welcome_sealed"] = cls.seal(out["hs_s2c"], 2, 0, out["welcome_body"], h)
        return out

    @classmethod
    def frame(cls, key: bytes, direction: int, counter: int, session_id: bytes, plaintext: bytes,
              suite: int = 1) -> bytes:
        aad = b"\x01s" + struct.pack(">Q", counter) + session_id
        return msgpack.packb([1, "s", counter, [session_id, cls.seal(key, direction, counter, plaintext, aad, suite)]])

    @staticmethod
    def ticket(domain_key: bytes, epoch: int, nonce: bytes, body: list[object]) -> dict[str, bytes]:
        key = HKDF(hashes.SHA256(), 32, salt=None,
                   info=b"keyswarm domain v1/ticket/v1/" + struct.pack(">Q", epoch)).derive(domain_key)
        header = b"KSTK\x01" + struct.pack(">Q", epoch) + nonce
        plain = msgpack.packb([0x0709, *body])
        return {"ticket_key": key, "ticket_body": plain,
                "ticket": header + ChaCha20Poly1305(key).encrypt(nonce, plain, header)}

    @classmethod
    def resume(cls, v: dict[str, bytes], ticket: bytes, secret: bytes, *, welcome: list[object]) -> dict[str, bytes]:
        mix, out = cls.mix, {}
        client_e = X25519PrivateKey.from_private_bytes(v["client_ephemeral_private"])
        node_e = X25519PrivateKey.from_private_bytes(v["node_ephemeral_private"])
        client_pub, node_pub = client_e.public_key().public_bytes(*RAW), node_e.public_key().public_bytes(*RAW)
        h = hashlib.sha256(b"keyswarm/v1 resume").digest()
        for code, data in ((0x01, b"\x00\x01"), (0x30, ticket), (0x02, client_pub), (0x03, v["client_nonce"]),
                           (0x10, b"\x00\x01"), (0x14, node_pub), (0x15, v["node_nonce"])):
            h = mix(h, code, data)
        out["resume_hash"] = h
        prk = cls.extract(h, secret + client_e.exchange(node_e.public_key()))
        for label in ("hs s2c", "c2s", "s2c", "resumption"):
            out[label.replace(" ", "_")] = cls.expand(prk, label)
        out["welcome_body"] = msgpack.packb([0x0708, *welcome])
        out["welcome_sealed"] = cls.seal(out["hs_s2c"], 2, 0, out["welcome_body"], h)
        return out


def ticket_body_fields(secret: bytes) -> list[object]:
    return [NETWORK_ID, "app1", b"\x11" * 32, b"\x01\x02", b"\x22" * 32, T + 365 * 86400, T, T + 3600, secret, "n1"]


def vectors() -> dict[str, dict[str, bytes]]:
    """Every vector of the doc, in order: name -> field -> bytes."""
    hs = Reference.handshake(INPUTS)
    handshake = {k: INPUTS[k] for k in ("client_ephemeral_private", "node_ephemeral_private", "subkey_private",
                                          "client_private", "client_nonce", "node_nonce", "handshake_id",
                                          "session_id")} | hs
    health = msgpack.packb({"op": "health", "id": 7})
    frames = {
        "session_id": INPUTS["session_id"], "c2s": hs["c2s"], "s2c": hs["s2c"],
        "request_plaintext": health,
        "request_frame": Reference.frame(hs["c2s"], 1, 0, INPUTS["session_id"], health, suite=2),
        "reply_plaintext": msgpack.packb({"ok": True, "op": "health.result", "id": 7}),
    }
    frames["reply_frame"] = Reference.frame(hs["s2c"], 2, 300, INPUTS["session_id"], frames["reply_plaintext"],
                                            suite=2)
    # The same two frames in a ChaCha20-Poly1305 session (suite 1).
    frames["request_frame_suite1"] = Reference.frame(hs["c2s"], 1, 0, INPUTS["session_id"], health)
    frames["reply_frame_suite1"] = Reference.frame(hs["s2c"], 2, 300, INPUTS["session_id"], frames["reply_plaintext"])
    epoch = int(T // 3600)
    ticket = {"domain_key": DOMAIN_KEY, "epoch": struct.pack(">Q", epoch), "nonce": TICKET_NONCE} | Reference.ticket(
        DOMAIN_KEY, epoch, TICKET_NONCE, ticket_body_fields(hs["resumption_secret"]))
    resume = {"ticket": ticket["ticket"], "resumption_secret": hs["resumption_secret"]} | Reference.resume(
        INPUTS, ticket["ticket"], hs["resumption_secret"], welcome=[RESUMED_SESSION_ID, T + 3660, b"", 0.0, "n2", MAX_FRAME])
    return {"handshake": handshake, "frames": frames, "ticket": ticket, "resume": resume}


def render() -> str:
    blocks = []
    for name, fields in vectors().items():
        lines = [f"name: {name}"]
        for key, value in fields.items():
            text = value.hex()
            chunks = [text[i : i + 64] for i in range(0, len(text), 64)] or [""]
            lines.append(f"{key}: {chunks[0]}")
            lines += [" " * (len(key) + 2) + chunk for chunk in chunks[1:]]
        blocks.append("```session-vector\n" + "\n".join(lines) + "\n```")
    return "\n\n".join(blocks) + "\n"


def doc_vectors() -> dict[str, dict[str, bytes]]:
    parsed: dict[str, dict[str, bytes]] = {}
    for block in BLOCK.findall(DOC.read_text(encoding="utf-8")):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith(" ") and key is not None:
                fields[key] += line.strip()
            else:
                key, _, value = line.partition(": ")
                fields[key] = value.strip()
        name = fields.pop("name")
        parsed[name] = {k: bytes.fromhex(v) for k, v in fields.items()}
    return parsed


if __name__ == "__main__":
    print(render(), end="")


# --- 1. the doc -------------------------------------------------------------------------


def test_the_doc_carries_exactly_the_reference_vectors() -> None:
    documented = doc_vectors()
    expected = vectors()
    assert list(documented) == list(expected), "docs/protocol.md: run `python tests/unit/test_session_vectors.py`"
    for name, fields in expected.items():
        assert list(documented[name]) == list(fields), f"vector {name}: fields differ"
        for key, value in fields.items():
            assert documented[name][key].hex() == value.hex(), f"vector {name}: {key} differs"


# --- 2. keyswarm's code computes the same bytes ---------------------------------------------

from keyswarm.crypto.handshake import NodeCredentials, NodeHandshake  # noqa: E402
from keyswarm.crypto.handshake_messages import (  # noqa: E402
    AuthBody,
    Challenge,
    Hello,
    Resumed,
    Transcript,
    WelcomeBody,
    mix_client_certificates,
)
from keyswarm.crypto.resumption import ClientResumption  # noqa: E402
from keyswarm.crypto.sealing import DomainKey  # noqa: E402
from keyswarm.crypto.session_keys import (  # noqa: E402
    C2S,
    S2C,
    SessionChannel,
    direction_keys,
    expand_label,
    hkdf_extract,
    open_message,
    seal_message,
)
from keyswarm.crypto.tickets import TicketBody, TicketKeys, issue_ticket, open_ticket  # noqa: E402
from keyswarm.transport.codec import decode, encode  # noqa: E402
from keyswarm.transport.frames import encode_request  # noqa: E402


class Script:
    """An entropy source that hands out fixed byte strings in order."""

    def __init__(self, *draws: bytes):
        self.draws = list(draws)

    def __call__(self, n: int) -> bytes:
        data = self.draws.pop(0)
        assert len(data) == n, f"scripted draw of {len(data)} bytes for a request of {n}"
        return data


def public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(*RAW)


def test_the_node_machine_and_the_codec_compute_the_handshake_vector() -> None:
    v, vec = INPUTS, vectors()["handshake"]
    hello = Hello(versions=(1,), client_ephemeral=public(v["client_ephemeral_private"]), client_nonce=v["client_nonce"],
                  suites=(2, 1))
    assert encode_request(1, hello) == vec["hello_frame"]

    class Settings:  # the node machine reads only its versions and suites before receive_auth
        versions = (1,)
        suites = (2, 1)

    node = NodeHandshake(Settings())  # type: ignore[arg-type]
    creds = NodeCredentials(node_certificate=v["node_certificate"], subkey_certificate=v["subkey_certificate"],
                            subkey_serial=1)
    entropy = Script(v["node_ephemeral_private"], v["handshake_id"], v["node_nonce"])
    to_sign = node.receive_hello(hello, credentials=creds, entropy=entropy)
    assert to_sign == b"keyswarm/v1 node signature\x00" + vec["node_signed_hash"]
    challenge: Challenge = node.challenge(Ed25519PrivateKey.from_private_bytes(v["subkey_private"]).sign(to_sign),
                                          serial=1)
    assert challenge.signature == vec["node_signature"] and challenge.handshake_id == v["handshake_id"]
    assert node._hs_hash == vec["handshake_hash"] and (node._hs_c2s, node._hs_s2c) == (vec["hs_c2s"], vec["hs_s2c"])
    # The sealed auth opens under the node's handshake key to the documented body.
    assert open_message(node._hs_c2s, C2S, vec["auth_sealed"], node._hs_hash) == vec["auth_body"]
    body = decode(vec["auth_body"], expect=AuthBody)
    assert encode(body) == vec["auth_body"]
    transcript = Transcript(resume_from=node._transcript.hash)
    assert mix_client_certificates(transcript, body.client_certificate, ()) == vec["client_signed_hash"]
    assert transcript.mix(0x22, body.signature) == vec["final_hash"]
    prk = hkdf_extract(vec["final_hash"], vec["x25519_secret"])
    assert direction_keys(prk) == (vec["c2s"], vec["s2c"])
    assert expand_label(prk, "resumption") == vec["resumption_secret"]
    welcome = WelcomeBody(session_id=v["session_id"], expires_at_s=T + 3600, ticket=b"", ticket_expires_at_s=0.0,
                          node="n1", max_frame_bytes=MAX_FRAME)
    assert encode(welcome) == vec["welcome_body"]
    assert seal_message(vec["hs_s2c"], S2C, vec["welcome_body"], vec["final_hash"]) == vec["welcome_sealed"]


def test_session_channels_compute_the_frame_vectors() -> None:
    vec = vectors()["frames"]
    for suite, tail in ((2, ""), (1, "_suite1")):
        client = SessionChannel(vec["session_id"], c2s=vec["c2s"], s2c=vec["s2c"], client_side=True, suite=suite)
        node = SessionChannel(vec["session_id"], c2s=vec["c2s"], s2c=vec["s2c"], client_side=False,
                              next_counter=300, suite=suite)
        assert client.seal(vec["request_plaintext"]) == vec["request_frame" + tail]
        assert node.seal(vec["reply_plaintext"]) == vec["reply_frame" + tail]
        assert node.open(vec["request_frame" + tail]) == (0, vec["request_plaintext"])
        assert client.open(vec["reply_frame" + tail]) == (300, vec["reply_plaintext"])


def test_tickets_compute_the_ticket_vector() -> None:
    vec = vectors()["ticket"]
    keys = TicketKeys(DomainKey(vec["domain_key"]))
    epoch = int.from_bytes(vec["epoch"], "big")
    assert keys.epoch_at(T) == epoch and keys.key(epoch) == vec["ticket_key"]
    body = decode(vec["ticket_body"], expect=TicketBody)
    names = [f.name for f in dataclasses.fields(TicketBody)]
    assert body == TicketBody(**dict(zip(names, ticket_body_fields(vectors()["handshake"]["resumption_secret"]))))
    assert encode(body) == vec["ticket_body"]
    assert issue_ticket(keys, body, now=T, entropy=Script(vec["nonce"])) == vec["ticket"]
    assert open_ticket(keys, vec["ticket"], now=T + 1, network_id=NETWORK_ID) == body


def test_the_client_resumption_machine_computes_the_resume_vector() -> None:
    v, vec = INPUTS, vectors()["resume"]
    client = ClientResumption(ticket=vec["ticket"], resumption_secret=vec["resumption_secret"])
    msg = client.resume(Script(v["client_ephemeral_private"], v["client_nonce"]))
    assert msg.ticket == vec["ticket"] and msg.client_ephemeral == public(v["client_ephemeral_private"])
    reply = Resumed(version=1, node_ephemeral=public(v["node_ephemeral_private"]), node_nonce=v["node_nonce"],
                    sealed=vec["welcome_sealed"])
    session = client.receive_resumed(reply)
    assert session.session_id == RESUMED_SESSION_ID and session.node == "n2" and session.max_frame_bytes == MAX_FRAME
    assert session.channel.keys == vec["c2s"] + vec["s2c"] and session.resumption_secret == vec["resumption"]


# --- 3. real handshakes derive what the reference derives --------------------------------


class Recorder:
    def __init__(self, seed: int):
        self.rng, self.draws = random.Random(seed), []

    def __call__(self, n: int) -> bytes:
        data = self.rng.randbytes(n)
        self.draws.append(data)
        return data


def test_a_real_handshake_matches_the_reference(tmp_path: Path) -> None:
    from test_handshake import Pair, build_net

    net = build_net(tmp_path, "ed25519", seed=1)
    for kind in ("ed25519", "p256", "admin-issued"):
        pair = Pair(net, kind)
        recorder = Recorder(seed=8)
        pair.entropy = recorder  # type: ignore[method-assign]
        seen: dict[str, object] = {}
        pair.hooks["Challenge"] = lambda m: seen.setdefault("challenge", m)
        pair.hooks["Auth"] = lambda m: seen.setdefault("auth", m)
        pair.hooks["Welcome"] = lambda m: seen.setdefault("welcome", m)
        signatures: list[bytes] = []
        token_sign = pair.sign
        def sign(data: bytes, token_sign: Callable[[bytes], bytes] = token_sign) -> bytes:
            signatures.append(token_sign(data))
            return signatures[-1]

        pair.sign = sign
        mine, theirs = pair.run()
        hello: Hello = pair.sent["Hello"]  # type: ignore[assignment]
        challenge: Challenge = seen["challenge"]  # type: ignore[assignment]
        draws = recorder.draws  # client: ephemeral, nonce; node: ephemeral, id, nonce; then session id, ticket nonce
        inputs = {
            "client_ephemeral_private": draws[0], "node_ephemeral_private": draws[2],
            "client_nonce": hello.client_nonce, "node_nonce": challenge.node_nonce,
            "handshake_id": challenge.handshake_id, "node_certificate": challenge.node_certificate,
            "subkey_certificate": challenge.subkey_certificate,
            "client_certificate": pair.who.certificate, "session_id": mine.session_id,
        }
        ref = Reference.handshake(
            inputs, node_signature=challenge.signature, client_signature=signatures[0],
            intermediates=pair.who.intermediates,
            welcome=[mine.session_id, mine.expires_at_s, mine.ticket, mine.ticket_expires_at_s, "n1",
                     mine.max_frame_bytes],
            suites=hello.suites,
        )
        assert ref["auth_sealed"] == seen["auth"].sealed, kind  # type: ignore[attr-defined]
        assert ref["welcome_sealed"] == seen["welcome"].sealed, kind  # type: ignore[attr-defined]
        assert mine.channel.keys == ref["c2s"] + ref["s2c"] and theirs.keys == ref["s2c"] + ref["c2s"]
        assert mine.resumption_secret == ref["resumption_secret"]


def test_a_real_resumption_matches_the_reference(tmp_path: Path) -> None:
    from test_handshake import Pair, build_net

    from keyswarm.crypto.resumption import accept_resume

    net = build_net(tmp_path, "p256", seed=4)
    held, _ = Pair(net, "p256").run()
    client_draws, node_draws = Recorder(seed=1), Recorder(seed=2)
    client = ClientResumption.from_session(held)
    msg = client.resume(client_draws)
    reply, theirs = accept_resume(msg, settings=net.settings, tickets=net.tickets, now=T + 9, entropy=node_draws)
    mine = client.receive_resumed(reply)
    inputs = {"client_ephemeral_private": client_draws.draws[0], "node_ephemeral_private": node_draws.draws[0],
              "client_nonce": msg.client_nonce, "node_nonce": reply.node_nonce}
    ref = Reference.resume(inputs, held.ticket, held.resumption_secret,
                           welcome=[mine.session_id, mine.expires_at_s, mine.ticket, mine.ticket_expires_at_s, "n1",
                                    mine.max_frame_bytes])
    assert ref["welcome_sealed"] == reply.sealed
    assert mine.channel.keys == ref["c2s"] + ref["s2c"] == theirs.keys[32:] + theirs.keys[:32]
    assert mine.resumption_secret == ref["resumption"]
