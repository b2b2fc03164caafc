"""Resumption: a new session from a ticket, on any node of the network, with no signature.

Owns: `ClientResumption` (client side: `resume()` -> `receive_resumed()`)
and `accept_resume` (node side, one step). The ticket format is
`tickets.py`'s; the end step both handshakes share (`establish_session`)
is `handshake.py`'s.

    C -> N  resume   versions, ticket, client ephemeral X25519, client nonce
    N -> C  resumed  version, node ephemeral, node nonce,
                     sealed under hs_s2c: session id, expiry, new ticket, node name

  h   = transcript from "keyswarm/v1 resume": versions, ticket, client
        ephemeral, client nonce, then version, node ephemeral, node nonce
  prk = HKDF-Extract(salt = h, ikm = resumption secret || X25519(e_c, e_n))
  hs_s2c, c2s, s2c, next resumption secret = HKDF-Expand(prk, "keyswarm/v1 hs s2c" / "c2s" / "s2c" / "resumption")

Rules:
- PSK plus fresh ECDH, as TLS 1.3's psk_dhe_ke: the ticket brings the
  resumption secret to whichever node the client reaches; the keys need
  both that secret and the new ephemeral exchange. A ticket alone (stolen
  off the wire, without the secret the client holds) opens nothing; a
  ticket key leaked later does not open sessions recorded earlier.
- No hardware signature on either side. The client authenticates by
  knowing the resumption secret (its first in-session frame proves it);
  the node authenticates by opening the ticket (only the network's nodes
  hold the domain key) and sealing the reply under keys derived from it.
- Replaying a `resume` gets the replayer a session it has no keys for.
- The new ticket keeps `authenticated_at_s`, so a chain of resumptions ends
  `resumption_max_age_s` after the client last proved its key; the
  client's certificate notAfter and revocation (by serial or fingerprint,
  of the client or its issuer) are checked on every resumption, and so is
  the revocation of the node that minted the ticket (`TicketBody.node`).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keyswarm.crypto.handshake import (
    RESUME_TRANSITIONS,
    ClientSession,
    Machine,
    NodeSettings,
    PeerAuthFailed,
    VersionMismatch,
    check_chosen_suite,
    check_length,
    choose_suite,
    choose_version,
    client_session,
    draw,
    establish_session,
    exchange,
    open_welcome,
    raw_public,
)
from keyswarm.crypto.handshake_messages import (
    EPHEMERAL_BYTES,
    HANDSHAKE_VERSIONS,
    NONCE_BYTES,
    RESUME_LABEL,
    Resume,
    Resumed,
    Transcript,
    mix_hello,
    mix_resumed,
)
from keyswarm.crypto.session_keys import DEFAULT_SUITE, KEY_BYTES, expand_label, hkdf_extract
from keyswarm.crypto.session_table import Session
from keyswarm.crypto.tickets import NodeRevokedCheck, TicketKeys, TicketRejected, TicketRevoked, open_ticket
from keyswarm.hardware.token import Entropy


class ClientResumption(Machine):
    """Client side of a resumption: `resume()` -> `receive_resumed()`."""

    __slots__ = ("_ticket", "_secret", "_versions", "_suites", "_ephemeral", "_transcript")
    _transitions = RESUME_TRANSITIONS

    def __init__(self, *, ticket: bytes, resumption_secret: bytes, versions: tuple[int, ...] = HANDSHAKE_VERSIONS,
                 suites: tuple[int, ...] = ()):
        super().__init__()
        if len(resumption_secret) != KEY_BYTES:
            raise ValueError(f"a resumption secret is {KEY_BYTES} bytes")
        self._ticket, self._secret, self._versions = ticket, resumption_secret, tuple(versions)
        self._suites = tuple(suites)
        self._transcript = Transcript(RESUME_LABEL)

    @classmethod
    def from_session(
        cls, session: ClientSession, *, versions: tuple[int, ...] = HANDSHAKE_VERSIONS, suites: tuple[int, ...] = ()
    ) -> ClientResumption:
        """Resume `session` (its ticket and resumption secret)."""
        if not session.ticket:
            raise ValueError("the node issued no ticket for this session")
        return cls(ticket=session.ticket, resumption_secret=session.resumption_secret, versions=versions,
                   suites=suites)

    def resume(self, entropy: Entropy) -> Resume:
        with self._step("resume"):
            self._ephemeral = X25519PrivateKey.from_private_bytes(draw(entropy, EPHEMERAL_BYTES))
            msg = Resume(
                versions=self._versions,
                ticket=self._ticket,
                client_ephemeral=raw_public(self._ephemeral),
                client_nonce=draw(entropy, NONCE_BYTES),
                suites=self._suites,
            )
            mix_hello(self._transcript, msg)
            return msg

    def receive_resumed(self, resumed: Resumed) -> ClientSession:
        with self._step("resumed"):
            try:
                if resumed.version not in self._versions:
                    raise VersionMismatch(
                        "version", f"node chose version {resumed.version}, we offered {self._versions}"
                    )
                suite = check_chosen_suite(self._suites, resumed.suite)
                check_length("node nonce", resumed.node_nonce, NONCE_BYTES)
                resumed_hash = mix_resumed(self._transcript, resumed)
                dh = exchange(self._ephemeral, resumed.node_ephemeral, "node ephemeral")
                prk = hkdf_extract(resumed_hash, self._secret + dh)
                body = open_welcome(expand_label(prk, "hs s2c"), resumed.sealed, resumed_hash)
                return client_session(prk, body, suite)
            finally:
                self._secret = b""
                del self._ephemeral


def accept_resume(
    resume: Resume,
    *,
    settings: NodeSettings,
    tickets: TicketKeys,
    now: float,
    entropy: Entropy,
    revoked: TicketRevoked = frozenset(),
    revoked_nodes: NodeRevokedCheck = frozenset(),
) -> tuple[Resumed, Session]:
    """Node side of a resumption, in one step: the reply to send and the session to keep.

    `revoked_nodes` refuses tickets minted by a revoked node (`open_ticket`)."""
    version = choose_version(resume.versions, settings.versions)
    suite = choose_suite(resume.suites, settings.suites)
    check_length("client nonce", resume.client_nonce, NONCE_BYTES)
    try:
        ticket = open_ticket(tickets, resume.ticket, now=now, network_id=settings.network_id, revoked=revoked,
                             revoked_nodes=revoked_nodes)
    except TicketRejected as exc:
        raise PeerAuthFailed("ticket", exc.detail, subreason=exc.reason) from exc
    if now >= ticket.authenticated_at_s + settings.resumption_max_age_s:
        raise PeerAuthFailed("ticket", "the client last authenticated too long ago", subreason="expired")
    ephemeral = X25519PrivateKey.from_private_bytes(draw(entropy, EPHEMERAL_BYTES))
    dh = exchange(ephemeral, resume.client_ephemeral, "client ephemeral")
    unsealed = Resumed(
        version=version,
        node_ephemeral=raw_public(ephemeral),
        node_nonce=draw(entropy, NONCE_BYTES),
        sealed=b"",
        suite=suite,
    )
    transcript = Transcript(RESUME_LABEL)
    mix_hello(transcript, resume)
    resumed_hash = mix_resumed(transcript, unsealed)
    prk = hkdf_extract(resumed_hash, ticket.resumption_secret + dh)
    reply, session = establish_session(
        settings, prk, expand_label(prk, "hs s2c"), resumed_hash, ticket.identity(),
        authenticated_at_s=ticket.authenticated_at_s, now=now, entropy=entropy, tickets=tickets, resumed=unsealed,
        suite=suite or DEFAULT_SUITE,
    )
    assert isinstance(reply, Resumed)
    return reply, session
