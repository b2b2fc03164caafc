"""The policy enforcement point of the session path: who may open a session, and who may do what in one.

Owns `PolicyGate`: the sessions actor's copy of the policy table (the fold
of partition 0's policy events, `keyswarm.policy`), the revocation checks a
full handshake and a resumption run, the bootstrap admin rule, and
`check(client, request)`, the one decision every in-session request passes
before it reaches the actor that serves it. Pure: no clock, no I/O.

Which requests need what (`keyswarm.policy` names the operations):
- Key operations (`encrypt`, `key.create`, ..., and their `.batch` forms,
  authorised as the single operation for every key they name): the policy
  must allow the operation on each key name (`authorize`); default deny.
  `key.list` names no key: any client not revoked may ask, and the keys
  actors filter the answer: the sessions actor hands them an
  `AuthorizedListKeys` whose `allows` is `PolicyTable.allows(client,
  "key.list", name)`. (Serving actors read the client's name from their
  sender, `ClientRef.client`.)
- Admin operations (`policy.set`, `client.revoke`, `node.revoke`): admin only.
- Everything else (`health`, `echo`, `stats`, ...): any client not revoked,
  as those are served outside sessions too.
- Limits before the policy: at most `max_batch_items` items in a batch
  (TOO_LARGE), each key name at most `max_key_name_bytes` (BAD_REQUEST).

Which key names a request names is the key service's
`key_names_of` (one per batch item; a decrypt without a name names the
key its ciphertext names). A name that cannot be read ("": a ciphertext
that does not parse) grants nothing and is not checked here: the keys
actor answers it BAD_REQUEST without touching any key.

Revocation (a revocation always wins, DESIGN section 1):
- Full handshake: the chain check refuses a client certificate (or the admin
  certificate that issued it) whose client is revoked, or whose key is
  (`ClientRevoked` with a fingerprint: SHA-256 over the SubjectPublicKeyInfo).
- Every in-session request checks the client's revocation first.
- A revocation folded here closes the sessions it concerns at once (the
  sessions actor drops them): the client's, and those of clients its admin
  certificate issued.
- Resumption: a ticket carries the client's name, certificate serial and
  fingerprints, but not its key fingerprint nor its issuer's name. So a
  ticket is refused when its client is revoked or has any key revoked (it
  authenticates in full again, where the key itself is checked), and a
  ticket issued through an admin certificate this node has not seen in a
  full handshake is refused while any client of the network is revoked.
  Sound, at the price of a full handshake in those rare cases.
- Nodes (`NodeRevoked`): a ticket minted by a revoked node is refused on
  every node (`ticket_node_revoked`; one that names no node, minted before
  tickets named theirs, while any node is revoked). What the revoked node
  itself does (refuse handshakes, close its sessions, report degraded) is
  `node_standing.py`'s.

Bootstrap: until the first `AdminGranted` or `AdminRevoked` is folded (a
fresh network), a client whose certificate is an admin certificate issued
by the root (a CA the root holder made on purpose, `keyswarm enroll-client
--admin`) is an admin; so the network's first admin can write the first
policies. The rule is learned at a full handshake on this node (tickets do
not say whether a certificate is a CA) and ends, on every node, with the
first admin event. Until the policy table is loaded from the log the gate
is closed: no handshake or resumption is accepted (UNAVAILABLE), since a
revocation might not be known yet.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509

from keyswarm.actors.key_messages import key_names_of
from keyswarm.actors.messages import Failure
from keyswarm.actors.session_messages import RequestLimits
from keyswarm.crypto.certificates import certificate_fingerprint, certificate_identity, is_ca
from keyswarm.crypto.session_table import ClientIdentity
from keyswarm.errors import DecodeError, ErrorCode
from keyswarm.hardware.token import public_key_fingerprint
from keyswarm.policy import ADMIN_OPERATIONS, KEY_OPERATIONS, Forbidden, PolicyTable, authorize
from keyswarm.storage.events import Event
from keyswarm.storage.policy_bodies import POLICY_BODY_BY_TAG, AdminGranted, AdminRevoked, ClientRevoked
from keyswarm.transport import codec

#: Admin certificates issued by the root, remembered for the bootstrap rule (names; a handful in practice).
MAX_BOOTSTRAP_ADMINS = 1024
#: Issuing admin certificates remembered (fingerprint -> client name) for checking tickets.
MAX_ISSUERS = 4096

_KEY_OPS = frozenset(KEY_OPERATIONS)
_ADMIN_OPS = frozenset(ADMIN_OPERATIONS)
_ADMIN_EVENT_TYPES = frozenset(codec.tag_of(cls) for cls in (AdminGranted, AdminRevoked))
_CLIENT_REVOKED = codec.tag_of(ClientRevoked)
_BATCH = ".batch"


def policy_operation(op: str) -> str:
    """The operation a policy speaks of: `encrypt.batch` is authorised as `encrypt`."""
    return op[: -len(_BATCH)] if op.endswith(_BATCH) else op


class ChainCheck:
    """The revocation predicate of one full handshake: refuses revoked client certificates,
    and remembers each client certificate of the chain it was shown (for `PolicyGate.learn`)."""

    __slots__ = ("_table", "seen")

    def __init__(self, table: PolicyTable):
        self._table = table
        self.seen: list[tuple[bytes, str, bool]] = []  # (certificate fingerprint, client name, is a CA)

    def __call__(self, cert: x509.Certificate) -> bool:
        try:
            identity = certificate_identity(cert)
        except ValueError:  # verify_chain parsed it before asking; a backstop
            return True
        if identity.kind != "client" or identity.name is None:
            return False
        self.seen.append((certificate_fingerprint(cert), identity.name, is_ca(cert)))
        return self._table.is_revoked(identity.name, public_key_fingerprint(cert.public_key()))


class PolicyGate:
    """The policy table as the sessions actor enforces it (module docstring)."""

    def __init__(self, *, root_certificate: x509.Certificate, limits: RequestLimits,
                 table: PolicyTable | None = None):
        self.limits = limits
        self.table = PolicyTable() if table is None else table.copy()
        #: False until the table was loaded from the log (or given): the gate refuses handshakes meanwhile.
        self.loaded = table is not None
        self.seq = 0  # partition 0's local sequence folded up to (LoadPolicy's after_seq)
        self.undecodable = 0  # policy events that did not fold (logged by the actor)
        self._root_fingerprint = certificate_fingerprint(root_certificate)
        self._admin_seen = any(entry.admin is not None for entry in self.table.clients.values())
        self._bootstrap_admins: dict[str, None] = {}
        self._issuers: dict[bytes, str] = {}  # admin certificate fingerprint -> its client's name

    # --- folding ------------------------------------------------------------------

    def fold(self, events: Iterable[Event]) -> list[str]:
        """Fold policy events; returns the clients revoked by them (their sessions must close)."""
        revoked: list[str] = []
        table = self.table
        for event in events:
            kind = event.type
            if kind not in POLICY_BODY_BY_TAG:
                continue
            try:
                table.apply(event)
                if kind == _CLIENT_REVOKED:
                    revoked.append(codec.decode(event.body, expect=ClientRevoked).client)
            except DecodeError:
                self.undecodable += 1  # unchanged by apply; fails closed (grants nothing)
                continue
            if kind in _ADMIN_EVENT_TYPES:
                self._admin_seen = True
        return revoked

    def concerns(self, client: ClientIdentity, revoked: list[str]) -> bool:
        """Whether a session of `client` must close after `revoked` were revoked (theirs, or their admin's)."""
        return client.name in revoked or self._issuers.get(client.issuer_fingerprint) in revoked

    # --- handshakes -----------------------------------------------------------------

    def chain_check(self) -> ChainCheck:
        """The `revoked` predicate for one full handshake's `receive_auth`."""
        return ChainCheck(self.table)

    def learn(self, check: ChainCheck, client: ClientIdentity) -> None:
        """After a full handshake of `client` succeeded: remember its issuer and whether it may bootstrap."""
        for fingerprint, name, ca in check.seen:
            if fingerprint == client.fingerprint:
                admins = self._bootstrap_admins
                bootstrap = ca and client.issuer_fingerprint == self._root_fingerprint
                if bootstrap and name not in admins and len(admins) < MAX_BOOTSTRAP_ADMINS:
                    admins[name] = None
            elif ca:
                issuers = self._issuers
                if fingerprint not in issuers and len(issuers) >= MAX_ISSUERS:
                    del issuers[next(iter(issuers))]  # the oldest learned
                issuers[fingerprint] = name

    def ticket_revoked(self, client: ClientIdentity) -> bool:
        """The `revoked` predicate for `accept_resume` (module docstring, "Resumption")."""
        table = self.table
        if client.name in table.revoked or client.name in table.revoked_keys:
            return True
        issuer = client.issuer_fingerprint
        if issuer == self._root_fingerprint:
            return False
        issuer_name = self._issuers.get(issuer)
        if issuer_name is not None:
            return issuer_name in table.revoked or issuer_name in table.revoked_keys
        return bool(table.revoked or table.revoked_keys)

    def ticket_node_revoked(self, node: str) -> bool:
        """The `revoked_nodes` predicate for `accept_resume`: the ticket's minting node is revoked."""
        revoked = self.table.revoked_nodes
        return node in revoked if node else bool(revoked)

    def is_admin(self, name: str) -> bool:
        if self.table.is_admin(name):
            return True
        return not self._admin_seen and name in self._bootstrap_admins and not self.table.is_revoked(name)

    # --- requests -------------------------------------------------------------------

    def check(self, client: str, op: str, msg: object) -> Failure | None:
        """None if `client` may send `msg` (whose operation is `op`); else the sealed refusal."""
        base = policy_operation(op)
        table = self.table
        if client in table.revoked:
            return Failure.of(ErrorCode.FORBIDDEN, f"client {client!r} is revoked")
        if base in _ADMIN_OPS:
            if self.is_admin(client):
                return None
            return Failure.of(ErrorCode.FORBIDDEN, f"client {client!r} may not {op}: it is an admin operation")
        if base not in _KEY_OPS or base == "key.list":
            return None
        limits = self.limits
        items = getattr(msg, "items", None)
        if type(items) is tuple and len(items) > limits.max_batch_items:
            return Failure.of(
                ErrorCode.TOO_LARGE, f"{op} has {len(items)} items; at most {limits.max_batch_items} in one request"
            )
        most = limits.max_key_name_bytes
        for key in dict.fromkeys(key_names_of(msg, max_name_bytes=most)):  # a batch often names one key many times
            if not key:
                continue  # unreadable: the keys actor refuses it (BAD_REQUEST) before touching a key
            if len(key) * 4 > most and len(key.encode("utf-8", "surrogatepass")) > most:
                return Failure.of(ErrorCode.BAD_REQUEST, f"{op}: key name of over {most} bytes")
            try:
                authorize(table, client, base, key)
            except Forbidden as exc:
                return Failure.of(ErrorCode.FORBIDDEN, str(exc) if base == op else f"{op}: {exc}")
        return None
