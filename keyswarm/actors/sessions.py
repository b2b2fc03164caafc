"""The sessions actor: handshakes, the session table, and every in-session frame.

Owns the node's half of DESIGN section 5's sessions: the half-open
handshakes (`PendingHandshakes`, keyed by the client's ZeroMQ identity), the
session table (`SessionTable`: capacity, expiry, LRU), the ticket keys, the
opening of in-session frames and the sealing of their answers, and the
policy enforcement point every in-session request passes (`PolicyGate`).
The handshake machines, frames and tickets are `keyswarm.crypto`'s; this
actor only drives them. docs/architecture.md, "The session path", tells
the whole path; docs/protocol.md section 12 the wire.

The session layer is a tunnel for the ordinary request / reply protocol:
the plaintext of an in-session frame is exactly a plain request frame
`[1, "q", rid, {"op": ...}]` and the plaintext of the answer exactly a plain
reply frame, so every operation works the same in and out of a session.

Flow:
- `handshake.hello` / `.auth` / `.resume` arrive as plain requests (the
  gateway routes them here). A hello gets its challenge signed by the local
  `subkeys` actor (`SubkeySign`, matched by `request_id`); the half-open
  handshake then waits in `PendingHandshakes` for its auth. A welcome or a
  resumption puts a `Session` in the table and answers with a ticket.
- An in-session frame arrives as `SessionFrame` from the driver, whose
  sender names the frame's in-flight slot. Failures before the frame
  authenticated are plain error replies under the frame's counter
  (UNAUTHENTICATED, SESSION_EXPIRED, REPLAYED): the node may not have the
  keys to seal them. Once it authenticated, every answer is sealed: the
  inner request is decoded (BAD_REQUEST / TOO_LARGE sealed), checked by the
  policy (FORBIDDEN sealed) and forwarded to the actor that serves it with
  an opened-session sender (`ClientRef.inner_id`, `.client`). That actor
  replies as to any client; the runtime hands the answer back here
  (`SessionReply`), and it is sealed under the session's s2c counter and
  sent as a `RawFrame`.

Rules:
- Never a crash on client input: every failure is an error reply (sealed
  or not, as above), every bound past is a counted refusal.
- Memory is bounded: sessions by `max_sessions` (LRU), half-open handshakes
  per client and overall (`PendingHandshakes`), hellos waiting for the
  sub-key by `MAX_WAITING_HELLOS`, signatures in flight by the driver's
  in-flight caps (each is a client request until answered).
- Handshakes wait for the policy table: until it is loaded from the event
  log, hellos and resumptions get UNAVAILABLE (retryable), since a
  revocation might not be known yet. The table is kept current by
  `PolicyChanged` (from this node's `admin` actor) and by polling the log
  (`LoadPolicy`, every `POLICY_POLL_S`), which also brings events that
  arrived from peers.
- Only this node's actors may send `PolicyChanged` or answer as `subkeys`;
  handshake requests are served to clients only.
- Time: the session table speaks wall time (`ctx.wall_time()`: expiries are
  told to clients and carried in tickets); everything else monotonic.
- A restart of this actor loses the table: clients get UNAUTHENTICATED on
  their next frame and resume with their ticket (whose keys are the domain
  key's, unless the node has none: then tickets die with the incarnation).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509

from keyswarm.actors.addresses import SESSIONS, Address, ClientRef, RawFrame, ServiceResult, SessionReply
from keyswarm.actors.gateway import GATEWAY, client_routes, refused_delivery
from keyswarm.actors.key_messages import AuthorizedListKeys, ListKeys, PolicyChanged
from keyswarm.actors.key_router import KEYS, KeyRouting
from keyswarm.actors.messages import Failure
from keyswarm.actors.node_standing import NodeStanding
from keyswarm.actors.runtime import Actor, ActorSpec, Context
from keyswarm.actors.session_messages import LoadPolicy, PolicyLoaded, RequestLimits, SessionFrame
from keyswarm.actors.session_policy import PolicyGate
from keyswarm.actors.subkeys import SUBKEYS, CurrentSubkey, SubkeyInfo, SubkeySign, SubkeySignature
from keyswarm.config import LimitsConfig, SessionsConfig
from keyswarm.crypto.handshake import LocalHandshakeError, NodeCredentials, NodeHandshake, NodeSettings, PeerAuthFailed
from keyswarm.crypto.handshake_messages import Auth, Hello, Resume
from keyswarm.crypto.resumption import accept_resume
from keyswarm.crypto.sealing import DomainKey
from keyswarm.crypto.session_keys import FrameNotAuthentic, Replayed, open_parsed
from keyswarm.crypto.session_table import (
    DEFAULT_PENDING_CAPACITY,
    DEFAULT_PENDING_PER_PEER,
    PendingHandshakes,
    Session,
    SessionExpired,
    SessionTable,
    SessionUnknown,
)
from keyswarm.crypto.tickets import TicketKeys
from keyswarm.errors import ErrorCode, KeyswarmError, ProtocolError
from keyswarm.policy import PolicyTable
from keyswarm.transport.codec import Limits, op_of
from keyswarm.transport.frames import decode_request, encode_error, encode_reply

#: The blocking service the policy table is loaded from.
EVENT_LOG = "event-log"
#: Seconds between housekeeping ticks (expiry sweeps, timeouts, polls).
TICK_S = 1.0
#: Seconds between polls of the log for policy events (peers' included).
POLICY_POLL_S = 5.0
#: Seconds the sub-keys actor has to answer before the requests waiting on it fail (UNAVAILABLE).
SUBKEYS_TIMEOUT_S = 5.0
#: Seconds between refreshes of the current sub-key certificate (rotations are also caught when signing).
CREDENTIALS_REFRESH_S = 60.0
#: Hellos parked while the current sub-key is being read; past it, UNAVAILABLE.
MAX_WAITING_HELLOS = 1024
#: Bytes a sealed frame adds to its plaintext: the AEAD tag and the envelope (a generous bound).
SEAL_OVERHEAD_BYTES = 64

_HANDSHAKE_TYPES = (Hello, Auth, Resume)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    """What the factory hands the actor: identity, bounds, limits, and where the policy comes from."""

    node: NodeSettings  # node name, pinned root, session / ticket lifetimes
    node_certificate_der: bytes
    ticket_keys: TicketKeys | None = None  # None: a node-local secret per incarnation (module docstring)
    max_sessions: int = 100_000
    pending_capacity: int = DEFAULT_PENDING_CAPACITY  # half-open handshakes, all clients
    pending_per_peer: int = DEFAULT_PENDING_PER_PEER  # half-open handshakes of one client
    pending_ttl_s: float = 10.0  # s a half-open handshake waits for its auth
    limits: RequestLimits = field(default_factory=RequestLimits)
    routes: Mapping[type, str] | None = None  # None: the gateway's `client_routes()`
    policy: PolicyTable | None = None  # given: the table to start from (tests)
    policy_service: str | None = EVENT_LOG  # None: no loading (the given table is all there is)
    #: The key service's partition count: single-key requests then go straight to their `keys.<p>`
    #: actor, skipping the router's hop (~4 us a request, bench/keys_actor.py). None: via the router.
    key_partitions: int | None = None

    @classmethod
    def from_config(
        cls,
        sessions: SessionsConfig,
        limits: LimitsConfig,
        *,
        node_name: str,
        root_certificate: x509.Certificate,
        node_certificate_der: bytes,
        domain_key: DomainKey | None = None,
        key_partitions: int | None = None,
    ) -> SessionSettings:
        """Settings from the node's `[sessions]` and `[limits]` sections and its enrolment."""
        return cls(
            node=NodeSettings(
                node_name=node_name,
                root_certificate=root_certificate,
                session_ttl_s=sessions.session_ttl_s,
                ticket_lifetime_s=sessions.session_ttl_s,
                max_frame_bytes=limits.max_frame_bytes,
            ),
            node_certificate_der=node_certificate_der,
            ticket_keys=TicketKeys(domain_key) if domain_key is not None else None,
            key_partitions=key_partitions,
            max_sessions=sessions.max_sessions,
            pending_ttl_s=sessions.handshake_timeout_s,
            limits=RequestLimits(
                max_plaintext_bytes=limits.max_frame_bytes,
                max_key_name_bytes=limits.max_key_name_bytes,
                max_batch_items=limits.max_batch_items,
                codec=Limits(
                    max_frame_bytes=limits.max_frame_bytes, max_depth=limits.max_depth,
                    max_container_len=limits.max_container_len, max_str_bytes=limits.max_str_bytes,
                    max_bin_bytes=limits.max_bin_bytes,
                ),
            ),
        )


def sessions_spec(settings: SessionSettings) -> ActorSpec:
    """The actor's spec for a node's assembly (beside the sub-keys actor it asks to sign)."""
    return ActorSpec(SESSIONS, lambda: SessionsActor(settings))


@dataclass(frozen=True, slots=True)
class _Tick:
    """Timer: housekeeping."""


@dataclass(slots=True, eq=False)
class _Ask:
    """A request to the sub-keys actor awaiting its answer (FIFO: it answers in order)."""

    request_id: int  # 0: a `CurrentSubkey`; else the `SubkeySign`'s
    sent_at: float
    ref: ClientRef | None = None  # the hello's client (signing only)
    handshake: NodeHandshake | None = None
    hello: Hello | None = None
    attempt: int = 0  # 1 once restarted after a rotation


class SessionsActor(Actor):
    """Handshakes, sessions, in-session frames (module docstring)."""

    name = SESSIONS

    def __init__(self, settings: SessionSettings):
        self.settings = settings
        self.node = settings.node
        self.table = SessionTable(settings.max_sessions, settings.node.session_ttl_s)
        self.pending = PendingHandshakes(settings.pending_capacity, settings.pending_per_peer, settings.pending_ttl_s)
        self.gate = PolicyGate(root_certificate=settings.node.root_certificate, limits=settings.limits,
                               table=settings.policy)
        if settings.policy_service is None:
            self.gate.loaded = True
        self.routes = client_routes() if settings.routes is None else settings.routes
        self.key_routing = (KeyRouting(settings.key_partitions, settings.limits.max_key_name_bytes)
                            if settings.key_partitions else None)
        self.standing = NodeStanding(settings.node_certificate_der)  # revoked? certificate valid now?
        self.tickets = settings.ticket_keys
        self.credentials: NodeCredentials | None = None
        self._credentials_at = 0.0
        self._asks: deque[_Ask] = deque()
        self._next_sign = 0
        self._waiting: deque[tuple[ClientRef, Hello, int]] = deque()
        self._policy_ticket: int | None = None
        self._polled_at = 0.0
        self._max_reply = settings.limits.max_plaintext_bytes - SEAL_OVERHEAD_BYTES
        self.counters = dict.fromkeys(
            (
                "frames", "forwarded", "sealed", "replayed", "unauthenticated", "expired", "forbidden",
                "bad_requests", "busy", "unavailable", "hellos", "challenges", "welcomes", "resumptions", "refused",
                "sign_failures", "encode_failures", "orphan_replies", "policy_loads", "policy_load_failures",
            ),
            0,
        )

    # --- lifecycle ----------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        if self.tickets is None:
            self.tickets = TicketKeys(DomainKey(ctx.entropy(32)))
            ctx.log.info("sessions: no domain key given; tickets are sealed under a node-local key "
                         "and resume only on this node, until this actor restarts")
        self._ask_credentials(ctx)
        self._poll_policy(ctx)
        ctx.start_timer(TICK_S, _Tick())

    def on_message(self, ctx: Context, msg: object) -> None:
        kind = type(msg)
        if kind is SessionFrame:
            self._on_frame(ctx, msg)
        elif kind is SessionReply:
            self._on_reply(ctx, msg)
        elif kind in _HANDSHAKE_TYPES:
            sender = ctx.sender
            if type(sender) is not ClientRef or sender.inner_id is not None:
                ctx.log.debug("ignoring %s from %s: handshakes are served to clients only", kind.__name__, sender)
            elif kind is Hello:
                self._on_hello(ctx, sender, msg, 0)
            elif kind is Auth:
                self._on_auth(ctx, sender, msg)
            else:
                self._on_resume(ctx, sender, msg)
        elif kind is SubkeySignature or kind is SubkeyInfo or kind is Failure:
            if self._from_local(ctx, SUBKEYS):
                self._on_subkeys(ctx, msg)
        elif kind is ServiceResult:
            self._on_service(ctx, msg)
        elif kind is PolicyChanged:
            if self._from_local(ctx, None):
                self._fold(ctx, msg.events)
        elif kind is _Tick:
            self._on_tick(ctx)
            ctx.start_timer(TICK_S, _Tick())
        else:
            ctx.log.debug("sessions ignores %s", kind.__name__)

    def stats(self) -> dict[str, object]:
        """Counters, the session table's and the half-open handshakes' (tests, bench, monitor)."""
        return {**self.counters, "table": self.table.stats(), "pending": self.pending.stats(),
                "waiting_hellos": len(self._waiting), "subkey_asks": len(self._asks)}

    # --- handshakes ---------------------------------------------------------------

    def _on_hello(self, ctx: Context, ref: ClientRef, hello: Hello, attempt: int) -> None:
        self.counters["hellos"] += attempt == 0
        if not self.gate.loaded:
            ctx.reply_to(ref, Failure.of(ErrorCode.UNAVAILABLE, "the node is still loading its policy table"))
            return
        if self._unavailable_here(ctx, ref):
            return
        credentials = self.credentials
        if credentials is None:
            if len(self._waiting) >= MAX_WAITING_HELLOS:
                ctx.reply_to(ref, Failure.of(ErrorCode.UNAVAILABLE,
                                             "the node is reading its sub-key; too many hellos waiting"))
                return
            self._waiting.append((ref, hello, attempt))
            self._ask_credentials(ctx)
            return
        handshake = NodeHandshake(self.node)
        try:
            to_sign = handshake.receive_hello(hello, credentials=credentials, entropy=ctx.entropy)
        except PeerAuthFailed as exc:
            self._refuse(ctx, ref, exc)
            return
        self._next_sign += 1
        if not ctx.send(SUBKEYS, SubkeySign(data=to_sign, request_id=self._next_sign)):
            ctx.reply_to(ref, Failure.of(ErrorCode.BUSY, "the sub-keys actor is over its queue bound"))
            return
        self._asks.append(_Ask(self._next_sign, ctx.now(), ref, handshake, hello, attempt))

    def _on_signed(self, ctx: Context, ask: _Ask, msg: SubkeySignature) -> None:
        try:
            challenge = ask.handshake.challenge(msg.signature, serial=msg.serial)  # type: ignore[union-attr]
        except LocalHandshakeError as exc:
            # The sub-key rotated between reading its certificate and signing:
            # read the current one and run this hello again, once.
            self.credentials = None
            if ask.attempt == 0:
                self._on_hello(ctx, ask.ref, ask.hello, 1)  # type: ignore[arg-type]
            else:
                self._fail(ctx, ask.ref, ErrorCode.INTERNAL, f"the node's sub-key changed while signing: {exc}")
            return
        self.pending.put(ask.ref.identity, challenge.handshake_id, ask.handshake, ctx.now())  # type: ignore[union-attr]
        self.counters["challenges"] += 1
        ctx.reply_to(ask.ref, challenge)

    def _on_auth(self, ctx: Context, ref: ClientRef, auth: Auth) -> None:
        handshake = self.pending.take(auth.handshake_id, ctx.now())
        if type(handshake) is not NodeHandshake:
            self.counters["refused"] += 1
            ctx.reply(Failure.of(
                ErrorCode.UNAUTHENTICATED,
                "no such handshake here (expired, evicted, or another node's): start over with a hello",
            ))
            return
        if self._unavailable_here(ctx, ref):
            return
        check = self.gate.chain_check()
        try:
            welcome, session = handshake.receive_auth(
                auth, now=ctx.wall_time(), entropy=ctx.entropy, revoked=check, tickets=self.tickets
            )
        except (PeerAuthFailed, LocalHandshakeError) as exc:
            self._refuse(ctx, ref, exc)
            return
        self.gate.learn(check, session.client)
        self.table.put(session, ctx.wall_time())
        self.counters["welcomes"] += 1
        ctx.reply(welcome)

    def _on_resume(self, ctx: Context, ref: ClientRef, resume: Resume) -> None:
        if not self.gate.loaded:
            ctx.reply(Failure.of(ErrorCode.UNAVAILABLE, "the node is still loading its policy table"))
            return
        if self._unavailable_here(ctx, ref):
            return
        try:
            resumed, session = accept_resume(
                resume, settings=self.node, tickets=self.tickets, now=ctx.wall_time(), entropy=ctx.entropy,
                revoked=self.gate.ticket_revoked, revoked_nodes=self.gate.ticket_node_revoked,
            )
        except PeerAuthFailed as exc:
            self._refuse(ctx, ref, exc)
            return
        self.table.put(session, ctx.wall_time())
        self.counters["resumptions"] += 1
        ctx.reply(resumed)

    def _refuse(self, ctx: Context, ref: ClientRef, exc: KeyswarmError) -> None:
        self.counters["refused"] += 1
        ctx.reply_to(ref, Failure.of(exc.code, str(exc)))

    def _unavailable_here(self, ctx: Context, ref: ClientRef) -> bool:
        """Answer UNAVAILABLE (True) if this node may take no session now: revoked, or certificate not valid."""
        refusal = self.standing.refusal(ctx)
        if refusal is not None:
            self.counters["unavailable"] += 1
            ctx.reply_to(ref, refusal)
        return refusal is not None

    # --- the sub-keys actor ---------------------------------------------------------

    def _ask_credentials(self, ctx: Context) -> None:
        if any(ask.request_id == 0 for ask in self._asks):
            return  # one read at a time
        if ctx.send(SUBKEYS, CurrentSubkey()):
            self._asks.append(_Ask(0, ctx.now()))
        else:
            self._fail_waiting(ctx, "the node has no sub-keys actor, or it is over its queue bound")

    def _on_subkeys(self, ctx: Context, msg: object) -> None:
        """Match an answer of the sub-keys actor to its request.

        It answers in order, so the request answered is the oldest one of its
        kind; older requests of the other kind lost their answers (the actor
        restarted on them) and fail. A `Failure` carries no id: it answers
        the oldest request. An answer to nothing asked (timed out) is ignored.
        """
        asks = self._asks
        kind = type(msg)
        if kind is SubkeyInfo:
            match = next((ask for ask in asks if ask.request_id == 0), None)
        elif kind is SubkeySignature:
            match = next((ask for ask in asks if ask.request_id == msg.request_id), None)  # type: ignore[union-attr]
        else:
            match = asks[0] if asks else None
        if match is None:
            ctx.log.debug("sessions ignores a %s from subkeys that answers nothing asked", kind.__name__)
            return
        while (ask := asks.popleft()) is not match:
            self._lost(ctx, ask)
        self._answered(ctx, match, msg)

    def _answered(self, ctx: Context, ask: _Ask, msg: object) -> None:
        if type(msg) is SubkeyInfo:
            self.credentials = NodeCredentials(node_certificate=self.settings.node_certificate_der,
                                               subkey_certificate=msg.certificate_der, subkey_serial=msg.serial)
            self._credentials_at = ctx.now()
            waiting, self._waiting = self._waiting, deque()
            for ref, hello, attempt in waiting:
                self._on_hello(ctx, ref, hello, attempt)
        elif type(msg) is SubkeySignature:
            self._on_signed(ctx, ask, msg)
        elif ask.request_id == 0:  # Failure: no valid sub-key now
            self.credentials = None
            self._fail_waiting(ctx, msg.message)  # type: ignore[union-attr]
        else:
            self.counters["sign_failures"] += 1
            ctx.reply_to(ask.ref, msg)

    def _lost(self, ctx: Context, ask: _Ask) -> None:
        if ask.request_id == 0:
            self._fail_waiting(ctx, "the sub-keys actor did not answer")
        else:
            self.counters["sign_failures"] += 1
            self._fail(ctx, ask.ref, ErrorCode.UNAVAILABLE, "the sub-keys actor did not sign in time: start over")

    def _fail_waiting(self, ctx: Context, why: str) -> None:
        waiting, self._waiting = self._waiting, deque()
        for ref, _, _ in waiting:
            self._fail(ctx, ref, ErrorCode.UNAVAILABLE, f"this node cannot sign a challenge now: {why}")

    def _fail(self, ctx: Context, ref: ClientRef | None, code: ErrorCode, message: str) -> None:
        if ref is not None:
            ctx.reply_to(ref, Failure.of(code, message))

    # --- in-session frames ----------------------------------------------------------

    def _on_frame(self, ctx: Context, frame: SessionFrame) -> None:
        slot = ctx.sender
        if type(slot) is not ClientRef or slot.inner_id is not None:
            ctx.log.debug("ignoring an in-session frame from %s: only the driver delivers them", slot)
            return
        counters = self.counters
        counters["frames"] += 1
        try:
            session = self.table.get(frame.session_id, ctx.wall_time())
            _, plaintext = open_parsed(session, frame.counter, frame.session_id, frame.ciphertext, window=session)
        except (SessionUnknown, FrameNotAuthentic) as exc:
            counters["unauthenticated"] += 1
            ctx.reply(Failure.of(ErrorCode.UNAUTHENTICATED, str(exc)))
            return
        except SessionExpired as exc:
            counters["expired"] += 1
            ctx.reply(Failure.of(ErrorCode.SESSION_EXPIRED, str(exc)))
            return
        except Replayed as exc:
            counters["replayed"] += 1
            ctx.reply(Failure.of(ErrorCode.REPLAYED, str(exc)))
            return
        # Authentic from here on: every answer is sealed.
        limits = self.settings.limits
        if len(plaintext) > limits.max_plaintext_bytes:
            self._refuse_inner(ctx, slot, session, 0, ErrorCode.TOO_LARGE,
                               f"inner request of {len(plaintext)} bytes; at most {limits.max_plaintext_bytes}")
            return
        try:
            inner_id, msg = decode_request(plaintext, limits=limits.codec)
        except ProtocolError as exc:
            rid = exc.request_id if exc.request_id is not None else 0
            self._refuse_inner(ctx, slot, session, rid, exc.code, str(exc))
            return
        kind = type(msg)
        if kind in _HANDSHAKE_TYPES:
            self._refuse_inner(ctx, slot, session, inner_id, ErrorCode.BAD_REQUEST,
                               f"{op_of(kind)} is sent outside a session, as a plain request")
            return
        client = session.client.name
        refusal = self.gate.check(client, op_of(kind) or "", msg)
        if refusal is not None:
            counters["forbidden" if refusal.code is ErrorCode.FORBIDDEN else "bad_requests"] += 1
            self._seal(ctx, slot, session, inner_id, refusal)
            return
        target = self.routes.get(kind, GATEWAY)
        if target == KEYS and self.key_routing is not None:
            target = self.key_routing.actor_for(msg) or KEYS  # None: the router scatters it
        if kind is ListKeys:  # the keys actors list only what this client may see
            table = self.gate.table
            msg = AuthorizedListKeys(request=msg, allows=lambda name: table.allows(client, "key.list", name))
        opened = ClientRef(slot.node, slot.identity, slot.request_id, slot.session, inner_id, client)
        if ctx.forward(target, msg, sender=opened):
            counters["forwarded"] += 1
        else:
            refusal = refused_delivery(ctx, target)
            counters["busy" if refusal.code is ErrorCode.BUSY else "unavailable"] += 1
            self._seal(ctx, slot, session, inner_id, refusal)

    def _refuse_inner(self, ctx: Context, slot: ClientRef, session: Session, inner_id: int, code: ErrorCode,
                      message: str) -> None:
        self.counters["bad_requests"] += 1
        self._seal(ctx, slot, session, inner_id, Failure.of(code, message))

    def _on_reply(self, ctx: Context, reply: SessionReply) -> None:
        ref = reply.ref
        slot = ref.slot
        session = self.table.peek(ref.session)
        if session is None:  # closed meanwhile (revoked, evicted, this actor restarted): nothing to seal with
            self.counters["orphan_replies"] += 1
            ctx.reply_to(slot, Failure.of(ErrorCode.UNAUTHENTICATED,
                                          "the session closed before the answer was sealed: resume or reconnect"))
            return
        self._seal(ctx, slot, session, ref.inner_id, reply.msg)  # type: ignore[arg-type]

    def _seal(self, ctx: Context, slot: ClientRef, session: Session, inner_id: int, msg: object) -> None:
        """Answer the in-session request `inner_id` (of the frame in `slot`) with `msg`, sealed."""
        try:
            if type(msg) is Failure:
                plaintext = encode_error(inner_id, msg.code, msg.message, retryable=msg.retryable,
                                         redirect=msg.redirect)
            else:
                plaintext = encode_reply(inner_id, msg)
        except (TypeError, ValueError) as exc:  # an actor answered with something no client can read: a bug
            self.counters["encode_failures"] += 1
            ctx.log.error("sessions cannot encode the answer %s: %s", type(msg).__name__, exc)
            plaintext = encode_error(inner_id, ErrorCode.INTERNAL, "the node could not encode its reply")
        if len(plaintext) > self._max_reply:
            plaintext = encode_error(inner_id, ErrorCode.TOO_LARGE,
                                     f"the reply of {len(plaintext)} bytes is over the frame limit")
        self.counters["sealed"] += 1
        ctx.reply_to(slot, RawFrame(session.seal(plaintext)))

    # --- the policy table ------------------------------------------------------------

    def _poll_policy(self, ctx: Context) -> None:
        service = self.settings.policy_service
        if service is None or self._policy_ticket is not None:
            return
        self._polled_at = ctx.now()
        self._policy_ticket = ctx.ask(service, LoadPolicy(after_seq=self.gate.seq))

    def _on_service(self, ctx: Context, result: ServiceResult) -> None:
        if result.ticket != self._policy_ticket:
            return
        self._policy_ticket = None
        loaded = result.value
        if not result.ok or type(loaded) is not PolicyLoaded:
            self.counters["policy_load_failures"] += 1
            if self.counters["policy_load_failures"] in (1, 10, 100) or not self.gate.loaded:
                ctx.log.warning("sessions cannot load the policy table (retrying): %s", result.error or loaded)
            return
        self.counters["policy_loads"] += 1
        self._fold(ctx, loaded.events)
        self.gate.seq = max(self.gate.seq, loaded.seq)
        if not self.gate.loaded:
            self.gate.loaded = True
            ctx.log.info("sessions: policy table loaded (%d clients with rules, %d revoked)",
                         len(self.gate.table.clients), len(self.gate.table.revoked))

    def _fold(self, ctx: Context, events: tuple[object, ...]) -> None:
        before = self.gate.undecodable
        revoked = self.gate.fold(events)  # type: ignore[arg-type]
        if self.gate.undecodable != before:
            ctx.log.error("sessions: %d policy event(s) do not decode; they grant nothing",
                          self.gate.undecodable - before)
        if revoked:
            gate = self.gate
            closed = self.table.drop_where(lambda session: gate.concerns(session.client, revoked))
            ctx.log.info("sessions: %s revoked; %d session(s) closed", ", ".join(revoked), closed)
        if self.standing.observe(ctx, self.gate.table):  # this node is revoked: close every session
            ctx.log.warning("sessions: this node is revoked; %d session(s) closed",
                            self.table.drop_where(lambda session: True))

    # --- housekeeping ----------------------------------------------------------------

    def _on_tick(self, ctx: Context) -> None:
        now = ctx.now()
        self.pending.expire(now)
        self.table.sweep(ctx.wall_time())
        self.standing.check_certificate(ctx)  # keeps the node_certificate condition current for health
        asks = self._asks
        while asks and asks[0].sent_at + SUBKEYS_TIMEOUT_S <= now:
            self._lost(ctx, asks.popleft())
        if now - self._polled_at >= POLICY_POLL_S or not self.gate.loaded:
            self._poll_policy(ctx)
        if self.credentials is not None and now - self._credentials_at >= CREDENTIALS_REFRESH_S:
            self._ask_credentials(ctx)

    def _from_local(self, ctx: Context, actor: str | None) -> bool:
        """The sender is this node's actor `actor` (any local actor when None)."""
        sender = ctx.sender
        ok = type(sender) is Address and sender.node == ctx.node and (actor is None or sender.actor == actor)
        if not ok:
            ctx.log.debug("sessions ignores a message from %s", sender)
        return ok
