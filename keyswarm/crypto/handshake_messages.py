"""Handshake messages and the transcript hash.

Owns: the handshake's wire messages (tags 0x0701-0x0708; the ticket body
0x0709 is `tickets.py`'s), the transcript (a chained SHA-256 over
length-prefixed, typed items), the item codes, and the signature contexts.
The state machines that send and check these are `handshake.py`'s.

On the wire (docs/protocol.md section 12, "Sessions"), the handshake rides
in the ordinary client envelope, as requests and their replies:

    [1, "q", rid, {"op": "handshake.hello", ...}]  ->  [1, "r", rid, {"ok": true, "op": "handshake.challenge", ...}]
    [1, "q", rid, {"op": "handshake.auth", ...}]   ->  [1, "r", rid, {"ok": true, "op": "handshake.welcome", ...}]
    [1, "q", rid, {"op": "handshake.resume", ...}] ->  [1, "r", rid, {"ok": true, "op": "handshake.resumed", ...}]

so a node refuses a bad handshake the way it refuses any bad request (an
error reply with a code), and a client pipelines it like any request.

Rules:
- Messages carry no `__post_init__` checks: lengths and semantics are the
  state machine's to check (a peer's bad value is a `PeerAuthFailed` with a
  reason, not a codec error), and every registered message must stay
  constructible from any typed values (tests/unit/test_codec.py fuzzes them).
- The transcript is NOT the msgpack of the messages. It is
  h_0 = SHA-256(label), h_i = SHA-256(h_{i-1} || u8 code || u32 BE length ||
  bytes), over the fields in a fixed order. msgpack has more than one valid
  encoding of a value (int widths, map order), so hashing it would force a
  client in another language to reproduce one library's encoder byte for
  byte; this form needs only SHA-256 and big-endian integers. Chaining
  (as Noise's MixHash) keeps the state 32 bytes, which matters for the
  node's table of half-open handshakes.
- Every item has its own code, so no two transcripts of different fields
  can collide by shifting bytes from one field into the next.
- Signatures are over context || transcript hash, the context naming the
  signer's role (as TLS 1.3's CertificateVerify does), so a node signature
  can never be replayed as a client signature or the reverse.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from keyswarm.transport.codec import message

# --- sizes --------------------------------------------------------------------------

EPHEMERAL_BYTES = 32  # X25519 public key, raw
NONCE_BYTES = 32
HANDSHAKE_ID_BYTES = 16
#: Handshake protocol versions this code speaks (the envelope version is separate).
HANDSHAKE_VERSIONS = (1,)
MAX_OFFERED_VERSIONS = 16
MAX_SEALED_BYTES = 64 * 1024  # an auth carries at most two certificates of 16 KiB and a signature

# --- transcript item codes (permanent) ---------------------------------------------

T_VERSIONS = 0x01  # hello: each offered version as u16 BE, concatenated
T_CLIENT_EPHEMERAL = 0x02
T_CLIENT_NONCE = 0x03
T_SUITES = 0x04  # hello / resume: each offered session suite as u16 BE; mixed only when some are offered
T_VERSION = 0x10  # challenge / resumed: the chosen version, u16 BE
T_HANDSHAKE_ID = 0x11
T_NODE_CERTIFICATE = 0x12
T_SUBKEY_CERTIFICATE = 0x13
T_NODE_EPHEMERAL = 0x14
T_NODE_NONCE = 0x15
T_NODE_SIGNATURE = 0x16
T_SUITE = 0x17  # challenge / resumed: the chosen suite, u16 BE; mixed only when the hello offered suites
T_CLIENT_CERTIFICATE = 0x20
T_INTERMEDIATE = 0x21  # one item per intermediate certificate, in order
T_CLIENT_SIGNATURE = 0x22
T_TICKET = 0x30  # resume: the ticket bytes as sent

#: h_0 of a full handshake and of a resumption.
HANDSHAKE_LABEL = b"keyswarm/v1 handshake"
RESUME_LABEL = b"keyswarm/v1 resume"
#: What each side signs: context || transcript hash (32 bytes).
NODE_SIGNATURE_CONTEXT = b"keyswarm/v1 node signature\x00"
CLIENT_SIGNATURE_CONTEXT = b"keyswarm/v1 client signature\x00"

_LENGTH = struct.Struct(">BI")


class Transcript:
    """The running transcript hash: 32 bytes of state, one SHA-256 per item."""

    __slots__ = ("hash",)

    def __init__(self, label: bytes = HANDSHAKE_LABEL, *, resume_from: bytes | None = None):
        # `resume_from`: continue from a hash computed elsewhere (test vectors).
        self.hash = hashlib.sha256(label).digest() if resume_from is None else resume_from

    def mix(self, code: int, data: bytes) -> bytes:
        """Absorb one item; returns the new hash."""
        self.hash = hashlib.sha256(self.hash + _LENGTH.pack(code, len(data)) + data).digest()
        return self.hash

    def mix_versions(self, code: int, versions: tuple[int, ...]) -> bytes:
        return self.mix(code, b"".join(v.to_bytes(2, "big") for v in versions))


def mix_hello(transcript: Transcript, hello: Hello | Resume) -> None:
    """Items of a hello (or, after its ticket, a resume): versions, ephemeral, nonce, then the suites if any.

    A hello that offers no suites hashes exactly as before suites existed,
    so older clients and the first vectors stay valid; one that does binds
    them, so a suite list stripped or reordered in transit breaks the
    node's signature check on the client."""
    transcript.mix_versions(T_VERSIONS, hello.versions)
    if isinstance(hello, Resume):
        transcript.mix(T_TICKET, hello.ticket)
    transcript.mix(T_CLIENT_EPHEMERAL, hello.client_ephemeral)
    transcript.mix(T_CLIENT_NONCE, hello.client_nonce)
    if hello.suites:
        transcript.mix_versions(T_SUITES, hello.suites)


def mix_suite(transcript: Transcript, suite: int) -> None:
    """The chosen suite (challenge / resumed), when the hello offered suites (`suite` != 0)."""
    if suite:
        transcript.mix_versions(T_SUITE, (suite,))


def mix_challenge(transcript: Transcript, challenge: Challenge) -> bytes:
    """Items of a challenge up to (not including) its signature; returns the hash the node signs."""
    transcript.mix_versions(T_VERSION, (challenge.version,))
    mix_suite(transcript, challenge.suite)
    transcript.mix(T_HANDSHAKE_ID, challenge.handshake_id)
    transcript.mix(T_NODE_CERTIFICATE, challenge.node_certificate)
    transcript.mix(T_SUBKEY_CERTIFICATE, challenge.subkey_certificate)
    transcript.mix(T_NODE_EPHEMERAL, challenge.node_ephemeral)
    return transcript.mix(T_NODE_NONCE, challenge.node_nonce)


def mix_client_certificates(transcript: Transcript, certificate: bytes, intermediates: tuple[bytes, ...]) -> bytes:
    """Items of an auth up to its signature; returns the hash the client signs."""
    transcript.mix(T_CLIENT_CERTIFICATE, certificate)
    for intermediate in intermediates:
        transcript.mix(T_INTERMEDIATE, intermediate)
    return transcript.hash


def mix_resumed(transcript: Transcript, resumed: Resumed) -> bytes:
    transcript.mix_versions(T_VERSION, (resumed.version,))
    mix_suite(transcript, resumed.suite)
    transcript.mix(T_NODE_EPHEMERAL, resumed.node_ephemeral)
    return transcript.mix(T_NODE_NONCE, resumed.node_nonce)


def node_signed_data(transcript_hash: bytes) -> bytes:
    return NODE_SIGNATURE_CONTEXT + transcript_hash


def client_signed_data(transcript_hash: bytes) -> bytes:
    return CLIENT_SIGNATURE_CONTEXT + transcript_hash


# --- messages (tags 0x0701-0x0708; fields are append-only) ---------------------------


@message(tag=0x0701, op="handshake.hello")
@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """C->N: open a handshake. Answered with `Challenge`."""

    versions: tuple[int, ...]  # handshake versions the client speaks
    client_ephemeral: bytes  # X25519 public key, 32 bytes raw
    client_nonce: bytes  # 32 random bytes
    suites: tuple[int, ...] = ()  # session AEAD suites, preferred first; () means ChaCha20-Poly1305 only


@message(tag=0x0702, op="handshake.challenge")
@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """N->C: who the node is, its ephemeral key, and its sub-key's signature
    over the transcript so far (hello, then these fields in order)."""

    version: int  # the version chosen from the hello's
    handshake_id: bytes  # 16 bytes naming this half-open handshake; the auth quotes it
    node_certificate: bytes  # DER, issued by the root
    subkey_certificate: bytes  # DER, issued by the node certificate
    node_ephemeral: bytes
    node_nonce: bytes
    signature: bytes  # Ed25519 by the sub-key over NODE_SIGNATURE_CONTEXT || transcript hash
    suite: int = 0  # the suite chosen from the hello's; 0 when it offered none (ChaCha20-Poly1305)


@message(tag=0x0703, op="handshake.auth")
@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    """C->N: `AuthBody`, sealed under the client's handshake key. Answered with `Welcome`."""

    handshake_id: bytes
    sealed: bytes


@message(tag=0x0704, op="handshake.welcome")
@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """N->C: `WelcomeBody`, sealed under the node's handshake key."""

    sealed: bytes


@message(tag=0x0705, op="handshake.resume")
@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """C->N: open a new session from a ticket, with fresh keys. Answered with `Resumed`."""

    versions: tuple[int, ...]
    ticket: bytes  # as received in a WelcomeBody, opaque to the client
    client_ephemeral: bytes
    client_nonce: bytes
    suites: tuple[int, ...] = ()  # as in Hello


@message(tag=0x0706, op="handshake.resumed")
@dataclass(frozen=True, slots=True, kw_only=True)
class Resumed:
    """N->C: the node's ephemeral key and `WelcomeBody` sealed under the resumed handshake key."""

    version: int
    node_ephemeral: bytes
    node_nonce: bytes
    sealed: bytes
    suite: int = 0  # as in Challenge


@message(tag=0x0707)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthBody:
    """The plaintext of `Auth.sealed` (array form): who the client is, and its proof."""

    client_certificate: bytes  # DER
    intermediates: tuple[bytes, ...]  # () or (the admin certificate that issued it,)
    signature: bytes  # by the client certificate's key over CLIENT_SIGNATURE_CONTEXT || transcript hash


@message(tag=0x0708)
@dataclass(frozen=True, slots=True, kw_only=True)
class WelcomeBody:
    """The plaintext of `Welcome.sealed` and `Resumed.sealed` (array form)."""

    session_id: bytes  # 16 bytes; names the session in every in-session frame
    expires_at_s: float  # session end, seconds since the epoch (node's wall clock)
    ticket: bytes  # resumption ticket, opaque; b"" when the node issues none
    ticket_expires_at_s: float  # 0.0 when there is no ticket
    node: str  # the name of the node that holds the session
    max_frame_bytes: int = 0  # the largest frame the node takes (0: not said); a client refuses larger ones itself
