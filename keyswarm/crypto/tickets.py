"""Resumption tickets: sealed by one node of a network, opened by any.

Owns: the ticket format, `TicketBody` (tag 0x0709), `TicketKeys` (per-epoch
ticket keys derived from the domain key), `issue_ticket` / `open_ticket`,
and `TicketRejected` with its reasons.

Format (docs/protocol.md section 12 ("Sessions")):

    magic b"KSTK" 4 | version 1 (=1) | epoch u64 BE 8 | nonce 12 | ChaCha20-Poly1305 ciphertext

  key   = DomainKey.derive(b"ticket/v1/" + epoch as u64 BE)
        = HKDF-SHA256(salt none, ikm domain key, info "keyswarm domain v1/ticket/v1/" || epoch)
  aad   = the 25 header bytes (magic, version, epoch, nonce)
  plain = msgpack array form of `TicketBody`: [0x0709, network_id, client_name, ...]

Rules:
- Any node of the network derives the same key: the ticket key depends only
  on the domain key and the epoch number, epoch = floor(now / epoch_s).
- Rotation: a node opens tickets of the current epoch, the previous one,
  and the next one. Previous, so a ticket issued just before a boundary
  lives its lifetime; next, so a node whose clock runs a little behind the
  issuer's does not refuse a ticket minted just after a boundary. Two
  epochs old (or two ahead) is refused, whatever its expiry says: a leaked
  ticket key is worth at most three epochs.
- Tickets are opaque to clients, sealed (confidential: they carry the
  resumption secret) and authenticated (any change is `forged`).
- Checks run in a fixed order, the first failure is the reason:
  malformed -> epoch -> forged -> wrong_network -> expired -> revoked
  (the client or its issuer, then the node that minted the ticket).
- A ticket names the node that minted it (`TicketBody.node`, appended with
  a default): a ticket minted by a revoked node is refused everywhere
  (`revoked_nodes`). One minted before the field existed names none ("");
  it is refused while any node of the network is revoked, since it could
  be the revoked node's (sound, at the price of a full handshake).
- Pure: `now` and the nonce's entropy are arguments; the small cache of
  derived keys is the only state.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from keyswarm.crypto.session_table import ClientIdentity
from keyswarm.crypto.sealing import DomainKey
from keyswarm.errors import AuthError, DecodeError
from keyswarm.hardware.token import Entropy
from keyswarm.transport.codec import decode, encode, message

MAGIC = b"KSTK"
TICKET_VERSION = 1
NONCE_BYTES = 12
RESUMPTION_SECRET_BYTES = 32
DEFAULT_EPOCH_S = 3600.0
#: Largest ticket a node opens; ours are ~200 bytes.
MAX_TICKET_BYTES = 2048
REASONS = frozenset({"malformed", "epoch", "forged", "wrong_network", "expired", "revoked"})

_HEADER = struct.Struct(">4sBQ12s")
HEADER_BYTES = _HEADER.size  # 25
_TAG_BYTES = 16

#: A revocation check for the node that minted a ticket: a predicate over its name
#: ("" for tickets minted before tickets named their node), or revoked node names.
NodeRevokedCheck = Callable[[str], bool] | Collection[str]

#: A revocation check for a ticket's client: a predicate over its identity,
#: or serials (int) and certificate fingerprints (bytes or hex) of the client
#: or its issuer, as `chain_verify.Revoked` takes them.
TicketRevoked = Callable[[ClientIdentity], bool] | Collection[int | bytes | str]


class TicketRejected(AuthError):
    """A ticket that must not resume a session; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, f"unknown ticket failure reason {reason!r}"
        self.reason = reason
        self.detail = detail
        super().__init__(f"ticket refused ({reason}): {detail}")


@message(tag=0x0709)
@dataclass(frozen=True, slots=True, kw_only=True)
class TicketBody:
    """What a ticket carries, sealed. Fields are append-only."""

    network_id: str
    client_name: str
    client_fingerprint: bytes
    client_serial: bytes  # big-endian, minimal: X.509 serials run to 159 bits, past msgpack's uint64
    issuer_fingerprint: bytes
    client_not_after_s: float
    authenticated_at_s: float  # when the client last proved its key (a full handshake)
    expires_at_s: float
    resumption_secret: bytes
    node: str = ""  # the node that minted it ("": minted before tickets named their node)

    def identity(self) -> ClientIdentity:
        return ClientIdentity(
            name=self.client_name,
            fingerprint=self.client_fingerprint,
            serial=int.from_bytes(self.client_serial, "big"),
            issuer_fingerprint=self.issuer_fingerprint,
            not_after_s=self.client_not_after_s,
        )


def serial_bytes(serial: int) -> bytes:
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")


class TicketKeys:
    """The ticket keys of one network, by epoch. Holds the domain key; never shows it."""

    __slots__ = ("_domain_key", "epoch_s", "_cache")

    def __init__(self, domain_key: DomainKey, *, epoch_s: float = DEFAULT_EPOCH_S):
        if not epoch_s > 0:
            raise ValueError(f"epoch_s must be positive, got {epoch_s!r}")
        self._domain_key = domain_key
        self.epoch_s = float(epoch_s)
        self._cache: dict[int, bytes] = {}

    def epoch_at(self, now: float) -> int:
        return int(now // self.epoch_s)

    def key(self, epoch: int) -> bytes:
        key = self._cache.get(epoch)
        if key is None:
            if len(self._cache) >= 8:  # epochs only move forward: the oldest are dead
                del self._cache[min(self._cache)]
            key = self._cache[epoch] = self._domain_key.derive(b"ticket/v1/" + epoch.to_bytes(8, "big"))
        return key

    def __repr__(self) -> str:
        return f"TicketKeys(domain key {self._domain_key.key_id.hex()}, epoch_s={self.epoch_s})"


def issue_ticket(keys: TicketKeys, body: TicketBody, *, now: float, entropy: Entropy) -> bytes:
    """Seal `body` under the current epoch's key with a fresh nonce from `entropy`."""
    epoch = keys.epoch_at(now)
    nonce = entropy(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise AssertionError(f"entropy source returned {len(nonce)} bytes, asked for {NONCE_BYTES}")
    header = _HEADER.pack(MAGIC, TICKET_VERSION, epoch, nonce)
    return header + ChaCha20Poly1305(keys.key(epoch)).encrypt(nonce, encode(body), header)


def open_ticket(
    keys: TicketKeys,
    ticket: bytes,
    *,
    now: float,
    network_id: str,
    revoked: TicketRevoked = frozenset(),
    revoked_nodes: NodeRevokedCheck = frozenset(),
) -> TicketBody:
    """The body of a live ticket of `network_id`; `TicketRejected(reason)` otherwise."""
    if type(ticket) is not bytes or not HEADER_BYTES + _TAG_BYTES <= len(ticket) <= MAX_TICKET_BYTES:
        raise TicketRejected("malformed", f"a ticket is {HEADER_BYTES + _TAG_BYTES}..{MAX_TICKET_BYTES} bytes")
    magic, version, epoch, nonce = _HEADER.unpack_from(ticket)
    if magic != MAGIC or version != TICKET_VERSION:
        raise TicketRejected("malformed", f"not a version {TICKET_VERSION} keyswarm ticket")
    current = keys.epoch_at(now)
    if not current - 1 <= epoch <= current + 1:
        raise TicketRejected("epoch", f"ticket epoch {epoch} is outside {current - 1}..{current + 1}")
    try:
        plaintext = ChaCha20Poly1305(keys.key(epoch)).decrypt(nonce, ticket[HEADER_BYTES:], ticket[:HEADER_BYTES])
    except InvalidTag:
        raise TicketRejected("forged", "ticket does not authenticate (tampered, or another network's)") from None
    try:
        body: TicketBody = decode(plaintext, expect=TicketBody)
    except DecodeError as exc:  # authentic but unreadable: a node bug or a format from the future
        raise TicketRejected("malformed", f"ticket body: {exc}") from exc
    if body.network_id != network_id:
        raise TicketRejected("wrong_network", f"ticket of network {body.network_id}, not {network_id}")
    if len(body.resumption_secret) != RESUMPTION_SECRET_BYTES:
        raise TicketRejected("malformed", "ticket resumption secret has the wrong length")
    if now >= body.expires_at_s:
        raise TicketRejected("expired", f"ticket expired at {body.expires_at_s:.3f}")
    if _is_revoked(body, revoked):
        raise TicketRejected("revoked", f"client {body.client_name!r} (or its issuer) is revoked")
    if _node_revoked(body.node, revoked_nodes):
        minted = f"node {body.node!r}" if body.node else "a node that did not name itself (an older node)"
        raise TicketRejected("revoked", f"the ticket was minted by {minted}, and a node is revoked")
    return body


def _node_revoked(node: str, revoked_nodes: NodeRevokedCheck) -> bool:
    if callable(revoked_nodes):
        return bool(revoked_nodes(node))
    return bool(revoked_nodes) and (not node or node in revoked_nodes)


def _is_revoked(body: TicketBody, revoked: TicketRevoked) -> bool:
    if callable(revoked):
        return bool(revoked(body.identity()))
    if not revoked:
        return False
    serial = int.from_bytes(body.client_serial, "big")
    for fingerprint in (body.client_fingerprint, body.issuer_fingerprint):
        if fingerprint in revoked or fingerprint.hex() in revoked:
            return True
    return serial in revoked
