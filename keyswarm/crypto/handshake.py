"""The handshake as two pure state machines: `ClientHandshake` and `NodeHandshake`.

Owns: every transition of the full handshake, the checks each side makes on
what it receives, the end step both handshakes share (`establish_session`:
session keys, id, ticket, sealed welcome), and the two error families:
`PeerAuthFailed` (the peer's message does not check out: h11's
RemoteProtocolError) and `LocalHandshakeError` (we broke the protocol: a
call out of order, or our own signer's signature does not verify: h11's
LocalProtocolError). Messages and the transcript are
`handshake_messages.py`'s; resumption is `resumption.py`'s.

The full handshake (SIGMA-I, signatures over the transcript as in TLS 1.3):

    C -> N  hello      versions, client ephemeral X25519, client nonce
    N -> C  challenge  version, handshake id, node cert, sub-key cert,
                       node ephemeral, node nonce,
                       sub-key Ed25519 signature over the transcript
    C -> N  auth       handshake id, sealed under hs_c2s:
                         client cert (+ admin intermediate), client signature
    N -> C  welcome    sealed under hs_s2c: session id, expiry, ticket, node name

  hs_prk = HKDF-Extract(salt = transcript hash after the node signature, ikm = X25519(e_c, e_n))
  hs_c2s, hs_s2c = HKDF-Expand(hs_prk, "keyswarm/v1 hs c2s" / "keyswarm/v1 hs s2c")
  prk    = HKDF-Extract(salt = transcript hash after the client signature, ikm = the same X25519 secret)
  c2s, s2c, resumption secret = HKDF-Expand(prk, "keyswarm/v1 c2s" / "... s2c" / "... resumption")

Rules:
- Pure and sans-IO: `now` (wall seconds) and `entropy(n)` are arguments.
  Nothing here signs: the client machine hands out the bytes to sign
  (`receive_challenge` returns them) and takes the token's signature back
  (`auth`), so a YubiKey that takes 50 ms (or a touch) never blocks it; the
  node machine does the same with its sub-key, whose private half only the
  sub-keys actor holds (`SubkeySign`).
- The client verifies the node's chain (pinned root -> node -> sub-key, this
  network, valid at `now`, not revoked) and the sub-key's signature before
  it hands out anything to sign: it never signs for an unverified node.
- Deliberate strengthening over DESIGN section 5: `auth` is sealed too, not
  only `welcome`. The client certificate names the client; sealed under
  keys from the ephemeral exchange it is hidden from passive observers, as
  TLS 1.3 encrypts its Certificate messages (SIGMA-I's identity protection
  for the initiator). The node's certificates travel in clear: nodes are
  public, and an active attacker could fetch them anyway.
- Transitions are tables (`CLIENT_TRANSITIONS`, `NODE_TRANSITIONS`); any
  other call is a `LocalHandshakeError`. Any exception moves a machine to
  FAILED, where every call is refused: a half-checked handshake never goes on.
- Our own side's faults are caught here, not blamed on the peer: the client
  checks its token's signature before sending it (a token holding the
  wrong key); the node checks that the sub-key that signed is the one whose
  certificate it sends (a rotation between reading and signing).
- Secrets are dropped when no longer needed: the ephemeral private key once
  the X25519 secret is computed, the secret and handshake keys once the
  session keys are derived.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from keyswarm.crypto.certificates import network_id as network_id_of
from keyswarm.crypto.chain_verify import CertificateInvalid, Revoked, verify_chain
from keyswarm.crypto.handshake_messages import (
    EPHEMERAL_BYTES,
    HANDSHAKE_ID_BYTES,
    HANDSHAKE_VERSIONS,
    MAX_OFFERED_VERSIONS,
    MAX_SEALED_BYTES,
    NONCE_BYTES,
    T_CLIENT_SIGNATURE,
    T_NODE_SIGNATURE,
    Auth,
    AuthBody,
    Challenge,
    Hello,
    Resumed,
    Transcript,
    Welcome,
    WelcomeBody,
    client_signed_data,
    mix_challenge,
    mix_client_certificates,
    mix_hello,
    node_signed_data,
)
from keyswarm.crypto.session_keys import (
    C2S,
    S2C,
    DEFAULT_SUITE,
    MAX_OFFERED_SUITES,
    SESSION_ID_BYTES,
    SUITE_AES256_GCM,
    SUITE_AEADS,
    SUITE_CHACHA20_POLY1305,
    SessionChannel,
    direction_keys,
    expand_label,
    hkdf_extract,
    open_message,
    seal_message,
)
from keyswarm.crypto.session_table import ClientIdentity, Session
from keyswarm.crypto.tickets import (
    TicketBody,
    TicketKeys,
    issue_ticket,
    serial_bytes,
)
from keyswarm.errors import AuthError, DecodeError, ErrorCode, KeyswarmError
from keyswarm.hardware.token import Entropy, IdentityPublicKey, check_signature
from keyswarm.transport.codec import decode, encode

#: Why a peer was refused (`PeerAuthFailed.reason`).
REASONS = frozenset({"malformed", "version", "certificate", "signature", "sealed", "identity", "ticket"})

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- errors ---------------------------------------------------------------------------


class PeerAuthFailed(AuthError):
    """The peer's handshake message does not check out (the peer's fault).

    `reason` is one of `REASONS`; `subreason` carries the certificate
    (`CertificateInvalid.reason`) or ticket (`TicketRejected.reason`) reason.
    """

    def __init__(self, reason: str, detail: str, *, subreason: str | None = None):
        assert reason in REASONS, f"unknown handshake failure reason {reason!r}"
        self.reason = reason
        self.subreason = subreason
        self.detail = detail
        label = f"{reason}: {subreason}" if subreason else reason
        super().__init__(f"handshake refused ({label}): {detail}")


class VersionMismatch(PeerAuthFailed):
    """No handshake version in common."""

    code = ErrorCode.UNSUPPORTED_VERSION


class LocalHandshakeError(KeyswarmError):
    """We broke the protocol: a call out of order, or our own signature does not verify."""

    code = ErrorCode.INTERNAL


# --- configuration ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCredentials:
    """What a client brings: the pinned root, its certificate (and admin intermediate)."""

    root_certificate: x509.Certificate
    certificate: bytes  # DER
    intermediates: tuple[bytes, ...] = ()
    network_id: str = field(init=False)
    public_key: IdentityPublicKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "network_id", network_id_of(self.root_certificate))
        own = x509.load_der_x509_certificate(self.certificate)
        object.__setattr__(self, "public_key", own.public_key())


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    """A node's handshake settings; one object shared by every handshake."""

    node_name: str
    root_certificate: x509.Certificate
    session_ttl_s: float = 3600.0
    ticket_lifetime_s: float = 3600.0
    resumption_max_age_s: float = 86_400.0
    versions: tuple[int, ...] = HANDSHAKE_VERSIONS
    #: Session suites this node speaks; it takes the client's first choice among them.
    suites: tuple[int, ...] = (SUITE_AES256_GCM, SUITE_CHACHA20_POLY1305)
    #: The node's frame limit, told to clients in the welcome (0: not told).
    max_frame_bytes: int = 0
    network_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "network_id", network_id_of(self.root_certificate))
        for name in ("session_ttl_s", "ticket_lifetime_s", "resumption_max_age_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not self.suites or any(suite not in SUITE_AEADS for suite in self.suites):
            raise ValueError(f"suites must name known suites {sorted(SUITE_AEADS)}, got {self.suites}")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCredentials:
    """The node's certificate and its current sub-key, as the sub-keys actor reports them."""

    node_certificate: bytes  # DER
    subkey_certificate: bytes  # DER
    subkey_serial: int  # the sub-key certificate's serial: `SubkeySignature.serial` must match it


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSession:
    """What a client holds after a handshake or a resumption."""

    channel: SessionChannel
    expires_at_s: float
    ticket: bytes
    ticket_expires_at_s: float
    resumption_secret: bytes = field(repr=False)
    node: str
    max_frame_bytes: int = 0  # the node's frame limit from the welcome (0: not told)

    @property
    def session_id(self) -> bytes:
        return self.channel.session_id


# --- states ------------------------------------------------------------------------------


class State(enum.Enum):
    START = "start"
    AWAIT_CHALLENGE = "await_challenge"  # client: hello sent
    AWAIT_SIGNATURE = "await_signature"  # both: the transcript hash is out for signing
    AWAIT_AUTH = "await_auth"  # node: challenge sent
    AWAIT_WELCOME = "await_welcome"  # client: auth sent
    AWAIT_RESUMED = "await_resumed"  # client resumption: resume sent
    ESTABLISHED = "established"
    FAILED = "failed"


S = State
# Transition tables: state -> {event: next state}. Anything absent is a LocalHandshakeError.
CLIENT_TRANSITIONS = {
    S.START: {"hello": S.AWAIT_CHALLENGE},
    S.AWAIT_CHALLENGE: {"challenge": S.AWAIT_SIGNATURE},
    S.AWAIT_SIGNATURE: {"auth": S.AWAIT_WELCOME},
    S.AWAIT_WELCOME: {"welcome": S.ESTABLISHED},
}
NODE_TRANSITIONS = {
    S.START: {"hello": S.AWAIT_SIGNATURE},
    S.AWAIT_SIGNATURE: {"challenge": S.AWAIT_AUTH},
    S.AWAIT_AUTH: {"auth": S.ESTABLISHED},
}
RESUME_TRANSITIONS = {
    S.START: {"resume": S.AWAIT_RESUMED},
    S.AWAIT_RESUMED: {"resumed": S.ESTABLISHED},
}


class Machine:
    __slots__ = ("state",)
    _transitions: dict[State, dict[str, State]] = {}

    def __init__(self) -> None:
        self.state = S.START

    @contextmanager
    def _step(self, event: str) -> Iterator[None]:
        """Take the transition for `event`; any exception inside leaves the machine FAILED."""
        nxt = self._transitions.get(self.state, {}).get(event)
        if nxt is None:
            raise LocalHandshakeError(f"{type(self).__name__}: cannot {event} in state {self.state.value}")
        self.state = nxt
        try:
            yield
        except BaseException:
            self.state = S.FAILED
            raise


# --- the client ---------------------------------------------------------------------------


class ClientHandshake(Machine):
    """Client side: `hello()` -> `receive_challenge()` -> (token signs) -> `auth()` -> `receive_welcome()`."""

    __slots__ = ("_credentials", "_versions", "_suites", "_suite", "_ephemeral", "_transcript", "_dh", "_hs_hash",
                 "_hs_c2s", "_hs_s2c", "_to_sign", "_handshake_id", "node")
    _transitions = CLIENT_TRANSITIONS

    def __init__(self, credentials: ClientCredentials, *, versions: tuple[int, ...] = HANDSHAKE_VERSIONS,
                 suites: tuple[int, ...] = ()):
        """`suites`: session suites to offer, preferred first (`session_keys.preferred_suites()`);
        () offers none, which gets ChaCha20-Poly1305 as before suites existed."""
        super().__init__()
        self._credentials = credentials
        self._versions = tuple(versions)
        self._suites = tuple(suites)
        self._transcript = Transcript()
        self.node: str | None = None  # the verified node name, once the challenge checked out

    def hello(self, entropy: Entropy) -> Hello:
        with self._step("hello"):
            self._ephemeral = X25519PrivateKey.from_private_bytes(draw(entropy, EPHEMERAL_BYTES))
            hello = Hello(
                versions=self._versions,
                client_ephemeral=raw_public(self._ephemeral),
                client_nonce=draw(entropy, NONCE_BYTES),
                suites=self._suites,
            )
            mix_hello(self._transcript, hello)
            return hello

    def receive_challenge(self, challenge: Challenge, *, now: float, revoked: Revoked = frozenset()) -> bytes:
        """Verify the node, then return the bytes the client's token must sign."""
        with self._step("challenge"):
            return self._on_challenge(challenge, now, revoked)

    def _on_challenge(self, challenge: Challenge, now: float, revoked: Revoked) -> bytes:
        if challenge.version not in self._versions:
            raise VersionMismatch("version", f"node chose version {challenge.version}, we offered {self._versions}")
        self._suite = check_chosen_suite(self._suites, challenge.suite)
        check_length("handshake id", challenge.handshake_id, HANDSHAKE_ID_BYTES)
        check_length("node ephemeral", challenge.node_ephemeral, EPHEMERAL_BYTES)
        check_length("node nonce", challenge.node_nonce, NONCE_BYTES)
        creds = self._credentials
        # One chain does both: sub-key <- node <- pinned root (shape, network,
        # signatures, revocation of either, validity of all three at `now`).
        try:
            subkey = verify_chain(
                challenge.subkey_certificate, [challenge.node_certificate], creds.root_certificate,
                now=utc(now), network_id=creds.network_id, revoked=revoked, expected_kind="subkey",
            )
        except CertificateInvalid as exc:
            raise PeerAuthFailed("certificate", f"node {exc}", subreason=exc.reason) from exc
        signed_hash = mix_challenge(self._transcript, challenge)
        key = subkey.public_key
        assert isinstance(key, Ed25519PublicKey)  # verify_chain insists on it for sub-keys
        try:
            key.verify(challenge.signature, node_signed_data(signed_hash))
        except InvalidSignature:
            raise PeerAuthFailed("signature", "the sub-key's signature over the transcript does not verify") from None
        self._hs_hash = self._transcript.mix(T_NODE_SIGNATURE, challenge.signature)
        self._dh = exchange(self._ephemeral, challenge.node_ephemeral, "node ephemeral")
        del self._ephemeral  # forward secrecy: the private half is not needed again
        self._hs_c2s, self._hs_s2c = direction_keys(hkdf_extract(self._hs_hash, self._dh), "hs ")
        self._handshake_id = challenge.handshake_id
        self.node = subkey.name
        self._to_sign = client_signed_data(
            mix_client_certificates(self._transcript, creds.certificate, creds.intermediates)
        )
        return self._to_sign

    def auth(self, signature: bytes) -> Auth:
        """Seal the client's certificates and `signature` (over what `receive_challenge` returned)."""
        with self._step("auth"):
            creds = self._credentials
            if not check_signature(creds.public_key, signature, self._to_sign):
                raise LocalHandshakeError("our token's signature does not verify under our certificate's key")
            body = AuthBody(client_certificate=creds.certificate, intermediates=creds.intermediates,
                            signature=signature)
            sealed = seal_message(self._hs_c2s, C2S, encode(body), self._hs_hash)
            self._transcript.mix(T_CLIENT_SIGNATURE, signature)
            return Auth(handshake_id=self._handshake_id, sealed=sealed)

    def receive_welcome(self, welcome: Welcome) -> ClientSession:
        with self._step("welcome"):
            try:
                final = self._transcript.hash
                body = open_welcome(self._hs_s2c, welcome.sealed, final)
                if body.node != self.node:
                    raise PeerAuthFailed("identity", f"welcome names node {body.node!r}, the certificate {self.node!r}")
                return client_session(hkdf_extract(final, self._dh), body, self._suite)
            finally:
                self._dh = self._hs_c2s = self._hs_s2c = b""


# --- the node -------------------------------------------------------------------------------


class NodeHandshake(Machine):
    """Node side: `receive_hello()` -> (sub-key signs) -> `challenge()` -> `receive_auth()`.

    Kept in `PendingHandshakes` between challenge and auth; what it holds
    then is small (ids, two 32-byte hashes, the X25519 secret, two keys).
    """

    __slots__ = ("handshake_id", "_settings", "_transcript", "_dh", "_hs_hash", "_hs_c2s", "_hs_s2c",
                 "_unsigned", "_subkey_serial", "_suite")
    _transitions = NODE_TRANSITIONS

    def __init__(self, settings: NodeSettings):
        super().__init__()
        self._settings = settings
        self.handshake_id = b""

    def receive_hello(self, hello: Hello, *, credentials: NodeCredentials, entropy: Entropy) -> bytes:
        """Check the hello; return the bytes the current sub-key must sign."""
        with self._step("hello"):
            version = choose_version(hello.versions, self._settings.versions)
            suite = choose_suite(hello.suites, self._settings.suites)
            self._suite = suite or DEFAULT_SUITE
            check_length("client nonce", hello.client_nonce, NONCE_BYTES)
            ephemeral = X25519PrivateKey.from_private_bytes(draw(entropy, EPHEMERAL_BYTES))
            self._dh = exchange(ephemeral, hello.client_ephemeral, "client ephemeral")
            self.handshake_id = draw(entropy, HANDSHAKE_ID_BYTES)
            self._unsigned = Challenge(
                version=version,
                handshake_id=self.handshake_id,
                node_certificate=credentials.node_certificate,
                subkey_certificate=credentials.subkey_certificate,
                node_ephemeral=raw_public(ephemeral),
                node_nonce=draw(entropy, NONCE_BYTES),
                signature=b"",
                suite=suite,
            )
            self._transcript = Transcript()
            mix_hello(self._transcript, hello)
            self._subkey_serial = credentials.subkey_serial
            return node_signed_data(mix_challenge(self._transcript, self._unsigned))

    def challenge(self, signature: bytes, *, serial: int) -> Challenge:
        """The challenge, with the sub-key's `signature` over what `receive_hello` returned.

        `serial` names the sub-key that signed (`SubkeySignature.serial`). It
        must be the one whose certificate the challenge carries: the sub-keys
        actor signs with its *current* key, which may have rotated since the
        credentials were read. Comparing serials catches that race exactly,
        for free; re-verifying our own signature would cost ~190 us a
        handshake, half the node's work for a hello.
        """
        with self._step("challenge"):
            if serial != self._subkey_serial:
                raise LocalHandshakeError(
                    f"signed by sub-key {serial:x}, but the challenge carries sub-key {self._subkey_serial:x} "
                    "(rotated meanwhile: read the current sub-key and start over)"
                )
            if len(signature) != 64:
                raise LocalHandshakeError(f"a sub-key signature is 64 bytes, got {len(signature)}")
            self._hs_hash = self._transcript.mix(T_NODE_SIGNATURE, signature)
            self._hs_c2s, self._hs_s2c = direction_keys(hkdf_extract(self._hs_hash, self._dh), "hs ")
            challenge = replace(self._unsigned, signature=signature)
            self._unsigned = None  # the certificates are not ours to keep
            return challenge

    def receive_auth(
        self,
        auth: Auth,
        *,
        now: float,
        entropy: Entropy,
        revoked: Revoked = frozenset(),
        tickets: TicketKeys | None = None,
    ) -> tuple[Welcome, Session]:
        """Check the client; return the welcome to send and the session to keep."""
        with self._step("auth"):
            try:
                if auth.handshake_id != self.handshake_id:
                    raise LocalHandshakeError("auth for another handshake given to this one")
                return self._on_auth(auth, now, entropy, revoked, tickets)
            finally:
                self._dh = self._hs_c2s = self._hs_s2c = b""

    def _on_auth(
        self, auth: Auth, now: float, entropy: Entropy, revoked: Revoked, tickets: TicketKeys | None
    ) -> tuple[Welcome, Session]:
        settings = self._settings
        if len(auth.sealed) > MAX_SEALED_BYTES:
            raise PeerAuthFailed("malformed", f"sealed auth of {len(auth.sealed)} bytes")
        plaintext = open_message(self._hs_c2s, C2S, auth.sealed, self._hs_hash)
        if plaintext is None:
            raise PeerAuthFailed("sealed", "the sealed auth does not open under this handshake's key")
        try:
            body: AuthBody = decode(plaintext, expect=AuthBody)
        except DecodeError as exc:
            raise PeerAuthFailed("malformed", f"auth body: {exc}") from exc
        try:
            client = verify_chain(
                body.client_certificate, body.intermediates, settings.root_certificate,
                now=utc(now), network_id=settings.network_id, revoked=revoked, expected_kind="client",
            )
        except CertificateInvalid as exc:
            raise PeerAuthFailed("certificate", f"client {exc}", subreason=exc.reason) from exc
        signed = client_signed_data(mix_client_certificates(self._transcript, body.client_certificate,
                                                            body.intermediates))
        if not check_signature(client.public_key, body.signature, signed):
            raise PeerAuthFailed("signature", f"client {client.name!r}: signature over the transcript does not verify")
        final = self._transcript.mix(T_CLIENT_SIGNATURE, body.signature)
        identity = ClientIdentity(
            name=client.name,
            fingerprint=client.fingerprint,
            serial=client.serial,
            issuer_fingerprint=client.issuer_fingerprint,
            not_after_s=client.not_valid_after.timestamp(),
        )
        reply, session = establish_session(
            settings, hkdf_extract(final, self._dh), self._hs_s2c, final, identity,
            authenticated_at_s=now, now=now, entropy=entropy, tickets=tickets, resumed=None, suite=self._suite,
        )
        assert isinstance(reply, Welcome)
        return reply, session


# --- shared steps (resumption.py uses them too) -------------------------------------------


def establish_session(
    settings: NodeSettings,
    prk: bytes,
    hs_s2c: bytes,
    aad: bytes,
    identity: ClientIdentity,
    *,
    authenticated_at_s: float,
    now: float,
    entropy: Entropy,
    tickets: TicketKeys | None,
    resumed: Resumed | None,
    suite: int = DEFAULT_SUITE,
) -> tuple[Welcome | Resumed, Session]:
    """Derive the session keys, mint id and ticket, seal the welcome body."""
    c2s, s2c = direction_keys(prk)
    session_id = draw(entropy, SESSION_ID_BYTES)
    expires_at_s = min(now + settings.session_ttl_s, identity.not_after_s)
    ticket, ticket_expires_at_s = b"", 0.0
    if tickets is not None:
        ticket_expires_at_s = min(
            now + settings.ticket_lifetime_s,
            authenticated_at_s + settings.resumption_max_age_s,
            identity.not_after_s,
        )
        body = TicketBody(
            network_id=settings.network_id,
            client_name=identity.name,
            client_fingerprint=identity.fingerprint,
            client_serial=serial_bytes(identity.serial),
            issuer_fingerprint=identity.issuer_fingerprint,
            client_not_after_s=identity.not_after_s,
            authenticated_at_s=authenticated_at_s,
            expires_at_s=ticket_expires_at_s,
            resumption_secret=expand_label(prk, "resumption"),
            node=settings.node_name,
        )
        ticket = issue_ticket(tickets, body, now=now, entropy=entropy)
    welcome = WelcomeBody(
        session_id=session_id,
        expires_at_s=expires_at_s,
        ticket=ticket,
        ticket_expires_at_s=ticket_expires_at_s,
        node=settings.node_name,
        max_frame_bytes=settings.max_frame_bytes,
    )
    sealed = seal_message(hs_s2c, S2C, encode(welcome), aad)
    session = Session(session_id, c2s=c2s, s2c=s2c, client=identity, expires_at_s=expires_at_s, suite=suite)
    reply: Welcome | Resumed = Welcome(sealed=sealed) if resumed is None else replace(resumed, sealed=sealed)
    return reply, session


def open_welcome(hs_s2c: bytes, sealed: bytes, aad: bytes) -> WelcomeBody:
    plaintext = open_message(hs_s2c, S2C, sealed, aad) if len(sealed) <= MAX_SEALED_BYTES else None
    if plaintext is None:
        raise PeerAuthFailed("sealed", "the sealed welcome does not open under this handshake's key")
    try:
        body: WelcomeBody = decode(plaintext, expect=WelcomeBody)
    except DecodeError as exc:
        raise PeerAuthFailed("malformed", f"welcome body: {exc}") from exc
    check_length("session id", body.session_id, SESSION_ID_BYTES)
    return body


def client_session(prk: bytes, body: WelcomeBody, suite: int = DEFAULT_SUITE) -> ClientSession:
    c2s, s2c = direction_keys(prk)
    return ClientSession(
        channel=SessionChannel(body.session_id, c2s=c2s, s2c=s2c, client_side=True, suite=suite),
        expires_at_s=body.expires_at_s,
        ticket=body.ticket,
        ticket_expires_at_s=body.ticket_expires_at_s,
        resumption_secret=expand_label(prk, "resumption"),
        node=body.node,
        max_frame_bytes=body.max_frame_bytes if type(body.max_frame_bytes) is int and body.max_frame_bytes > 0 else 0,
    )


def choose_version(offered: tuple[int, ...], spoken: tuple[int, ...]) -> int:
    if len(offered) > MAX_OFFERED_VERSIONS:
        raise PeerAuthFailed("malformed", f"{len(offered)} versions offered (at most {MAX_OFFERED_VERSIONS})")
    if any(not 0 < v < 1 << 16 for v in offered):
        raise PeerAuthFailed("malformed", "versions are 1..65535")
    common = set(offered) & set(spoken)
    if not common:
        raise VersionMismatch("version", f"client offers versions {offered}; this node speaks {spoken}")
    return max(common)


def choose_suite(offered: tuple[int, ...], spoken: tuple[int, ...]) -> int:
    """The client's first offered suite this node speaks; 0 when it offered none (ChaCha20-Poly1305, unmixed)."""
    if not offered:
        return 0
    if len(offered) > MAX_OFFERED_SUITES:
        raise PeerAuthFailed("malformed", f"{len(offered)} suites offered (at most {MAX_OFFERED_SUITES})")
    if any(type(s) is not int or not 0 < s <= 0xFFFF for s in offered):
        raise PeerAuthFailed("malformed", "suites are 1..65535")
    for suite in offered:
        if suite in spoken:
            return suite
    raise VersionMismatch("version", f"client offers session suites {offered}; this node speaks {spoken}")


def check_chosen_suite(offered: tuple[int, ...], chosen: int) -> int:
    """The suite the session uses, after checking the node's `chosen` against what we `offered`."""
    if not offered:
        if chosen != 0:
            raise PeerAuthFailed("malformed", f"node chose session suite {chosen}, but we offered none")
        return DEFAULT_SUITE
    if chosen not in offered:
        raise VersionMismatch("version", f"node chose session suite {chosen}, we offered {offered}")
    return chosen


def exchange(private: X25519PrivateKey, peer: bytes, what: str) -> bytes:
    check_length(what, peer, EPHEMERAL_BYTES)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise PeerAuthFailed("malformed", f"{what} is a low-order X25519 point") from None


def check_length(what: str, value: bytes, n: int) -> None:
    if len(value) != n:
        raise PeerAuthFailed("malformed", f"{what} must be {n} bytes, got {len(value)}")


def draw(entropy: Entropy, n: int) -> bytes:
    data = entropy(n)
    if len(data) != n:  # a short read must never become a weak key
        raise AssertionError(f"entropy source returned {len(data)} bytes, asked for {n}")
    return data


def raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(*_RAW)


def utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=timezone.utc)

