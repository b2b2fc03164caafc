"""The policy table: which client may do which operation to which named keys.

Owns key-name patterns, the operations a policy speaks of, the convergent
fold of policy events (`keyswarm.storage.policy_bodies`) into a
`PolicyTable`, and `authorize`, the one check every request passes.

Why here and not in `keyswarm/crypto/`: a policy is authorisation, not
cryptography. It is a pure fold of partition-0 events, used by the gateway
and the keys actors alike, the way `storage/fold.py` serves the keys actors.

Patterns (a key name is segments separated by `/`):

| pattern        | matches                                 | does not match            |
|----------------|-----------------------------------------|---------------------------|
| `app1/db`      | `app1/db` only (exact, case-sensitive)  | `app1/db2`, `App1/db`     |
| `app1/*`       | `app1/a`, `app1/b-c`                    | `app1`, `app1/a/b`        |
| `app1/db-*`    | `app1/db-1`, `app1/db-`                 | `app1/db/1`               |
| `app1/**`      | `app1/a`, `app1/a/b/c`                  | `app1`, `app2/a`          |
| `**/payments`  | `payments`, `x/payments`, `x/y/payments`| `payments/x`              |
| `a/**/z`       | `a/z`, `a/b/z`, `a/b/c/z`               | `a/zz`                    |
| `*`            | any one-segment name                    | `a/b`                     |
| `**`           | every name                              |                           |

- `*` matches any run of characters inside one segment (possibly empty);
  it never crosses a `/`. `**` is a whole segment and matches zero or more
  whole segments, except at the end of a pattern, where it matches one or
  more (`app1/**` is what is *inside* app1, as in .gitignore). Every other
  character is literal: no `?`, no `[...]`, no escapes, no regular
  expressions built from user input. Matching is linear in the name for
  each pattern (greedy leftmost placement, which is exact for `*`-only
  globs), so no pattern can make a node backtrack.
- A valid pattern is 1..512 UTF-8 bytes with no empty segment and `**`
  only as a whole segment (`validate_rules` refuses anything else with
  BAD_REQUEST before it is written).

Operations: the key operations of `KEY_OPERATIONS`, granted per pattern by
rules; `*` in a rule means all of them. The admin operations
(`policy.set`, `client.revoke`, `node.revoke`) are not granted by rules but
by `AdminGranted`; admin does not imply any key operation (`keyswarm init`
writes both an `AdminGranted` and a `PolicySet` for the first client).
Batch forms are authorised as their single operation (`encrypt.batch` ->
`encrypt`, per item key).

Rules of the fold (the same discipline as `storage/fold.py`):
- Convergent: any order of the same events, and any repetition, folds to an
  equal table. A client's rules are one last-writer-wins register by
  `(hlc, origin)` of the event (ties, which only an equivocating origin can
  make, are broken by the body's bytes); admin is another register, where a
  revoke wins a tie.
- `ClientRevoked` is a tombstone that wins forever: the client's rules and
  admin are forgotten and every later event for it is ignored. With a
  fingerprint it revokes one key of the client (a certificate) forever.
- `NodeRevoked` is a tombstone for a node, in a namespace of its own (a
  client and a node may share a name): kept with its earliest stamp and
  reason, and no event removes it (`policy.set` speaks of clients only).
- Default deny: a client without rules may do nothing; a stored rule whose
  pattern or operations are not valid grants nothing (fail closed), and an
  operation name this version does not know grants nothing either.
- `Forbidden` says which operation on which key was refused, and never
  what the client *is* allowed, nor anything of other clients' rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from keyswarm.crypto.certificates import NAME_PATTERN
from keyswarm.errors import ErrorCode, KeyswarmError
from keyswarm.storage.events import Event
from keyswarm.storage.policy_bodies import (
    POLICY_BODY_BY_TAG,
    AdminRevoked,
    ClientRevoked,
    NodeRevoked,
    PolicyRule,
    PolicySet,
    check_policy_envelope,
)
from keyswarm.transport import codec

KEY_OPERATIONS = (
    "encrypt", "decrypt", "rewrap", "datakey", "sign", "verify", "hmac",
    "key.create", "key.rotate", "key.get", "key.list", "key.disable", "key.enable", "key.delete", "key.config",
)
ADMIN_OPERATIONS = ("policy.set", "client.revoke", "node.revoke")
OPERATIONS = KEY_OPERATIONS + ADMIN_OPERATIONS
#: In a rule's ops: every key operation.
ALL_KEY_OPERATIONS = "*"
MAX_PATTERN_BYTES = 512
MAX_RULES = 256

_KEY_OPS = frozenset(KEY_OPERATIONS)
_ADMIN_OPS = frozenset(ADMIN_OPERATIONS)


class Forbidden(KeyswarmError):
    """The client may not do this operation to this key (or is revoked)."""

    code = ErrorCode.FORBIDDEN


class PolicyError(KeyswarmError):
    """A rule or pattern that cannot be written, or an operation name that does not exist."""

    code = ErrorCode.BAD_REQUEST


# --- patterns ---------------------------------------------------------------------------

_GLOBSTAR = None  # a `**` segment among a pattern's tokens


class KeyPattern:
    """A compiled key-name pattern; `matches(name)` is the only question it answers."""

    __slots__ = ("text", "_kind", "_prefix", "_groups", "_trailing_globstar")

    def __init__(self, text: str):
        _check_pattern(text)
        self.text = text
        segments = text.split("/")
        has_star = "*" in text
        self._prefix = ""
        self._groups: tuple[tuple[str | tuple[str, ...], ...], ...] = ()
        self._trailing_globstar = segments[-1] == "**"
        if not has_star:
            self._kind = "exact"
        elif text == "**":
            self._kind = "any"
        elif segments[-1] in ("*", "**") and "*" not in text[: -len(segments[-1])]:
            self._kind = "children" if segments[-1] == "*" else "subtree"
            self._prefix = text[: -len(segments[-1])]  # ends with "/"
        else:
            self._kind = "general"
            tokens = [_GLOBSTAR if s == "**" else (tuple(s.split("*")) if "*" in s else s) for s in segments]
            groups: list[list[str | tuple[str, ...]]] = [[]]
            for token in tokens:
                if token is _GLOBSTAR:
                    if groups[-1] or len(groups) == 1:  # `**/**` is one `**`
                        groups.append([])
                else:
                    groups[-1].append(token)
            self._groups = tuple(tuple(g) for g in groups)

    def __repr__(self) -> str:
        return f"KeyPattern({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyPattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def matches(self, name: str) -> bool:
        kind = self._kind
        if kind == "exact":
            return name == self.text
        if kind == "any":
            return bool(name)
        if kind == "children":
            prefix = self._prefix
            return name.startswith(prefix) and "/" not in name[len(prefix):]
        if kind == "subtree":
            return len(name) > len(self._prefix) and name.startswith(self._prefix)
        return _match_groups(self._groups, self._trailing_globstar, name.split("/"))


def _check_pattern(text: str) -> None:
    if type(text) is not str:
        raise PolicyError(f"a key pattern is a string, not {type(text).__name__}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_PATTERN_BYTES:
        raise PolicyError(f"a key pattern is 1..{MAX_PATTERN_BYTES} bytes, got {size}")
    for segment in text.split("/"):
        if not segment:
            raise PolicyError(f"key pattern {text!r} has an empty segment (leading, trailing or double '/')")
        if "**" in segment and segment != "**":
            raise PolicyError(f"key pattern {text!r}: '**' must be a whole segment ('a/**/b'), not part of one")


def _match_segment(token: str | tuple[str, ...], segment: str) -> bool:
    if type(token) is str:
        return token == segment
    head, *middle, tail = token  # a `*`-glob split at its stars: at least two parts
    if len(segment) < len(head) + len(tail) or not segment.startswith(head) or not segment.endswith(tail):
        return False
    at, stop = len(head), len(segment) - len(tail)
    for part in middle:  # leftmost placement of each literal part is exact for `*` globs
        if part:
            found = segment.find(part, at, stop)
            if found < 0:
                return False
            at = found + len(part)
    return True


def _match_run(group: tuple[str | tuple[str, ...], ...], segments: list[str], start: int) -> bool:
    return all(_match_segment(token, segments[start + i]) for i, token in enumerate(group))


def _match_groups(groups: tuple[tuple[str | tuple[str, ...], ...], ...], trailing_globstar: bool,
                  segments: list[str]) -> bool:
    """Groups are the runs of segment tokens between `**`s. The first is anchored at the start, the
    last at the end, the middle ones placed leftmost in order (exact, as for `*` in a string)."""
    if len(groups) == 1:
        return len(segments) == len(groups[0]) and _match_run(groups[0], segments, 0)
    first, *middle, last = groups
    end = len(segments) - len(last)
    if end < len(first) or not _match_run(first, segments, 0) or not _match_run(last, segments, end):
        return False
    at = len(first)
    for group in middle:
        for start in range(at, end - len(group) + 1):
            if _match_run(group, segments, start):
                at = start + len(group)
                break
        else:
            return False
    return at < end if trailing_globstar else True


def compile_pattern(text: str) -> KeyPattern:
    """A compiled pattern; PolicyError when `text` is not a valid pattern."""
    return KeyPattern(text)


# --- writing rules ------------------------------------------------------------------------


def validate_node_name(node: str) -> str:
    """`node` if it can name a node (as its certificate's URI does), else PolicyError."""
    if type(node) is not str or not NAME_PATTERN.fullmatch(node):
        raise PolicyError(f"{node!r} is not a node name (1-48 letters, digits, '.', '_', '-')")
    return node


def validate_rules(rules: Iterable[PolicyRule | tuple[str, Iterable[str]]]) -> tuple[PolicyRule, ...]:
    """Rules as a `PolicySet` should carry them, or PolicyError naming the first bad one.

    Accepts `PolicyRule`s or `(pattern, ops)` pairs; ops are de-duplicated
    and sorted. Admin operations are refused here: admin is granted apart.
    """
    out = []
    for rule in rules:
        pattern, ops = (rule.pattern, rule.ops) if isinstance(rule, PolicyRule) else rule
        compile_pattern(pattern)
        if isinstance(ops, str):
            raise PolicyError(f"rule {pattern!r}: ops is a list of operation names, not a string")
        names = tuple(sorted(dict.fromkeys(ops)))
        if not names:
            raise PolicyError(f"rule {pattern!r} grants no operation")
        for op in names:
            if op in _ADMIN_OPS:
                raise PolicyError(f"rule {pattern!r}: {op} is an admin operation; grant admin instead")
            if op not in _KEY_OPS and op != ALL_KEY_OPERATIONS:
                raise PolicyError(f"rule {pattern!r}: unknown operation {op!r}")
        out.append(PolicyRule(pattern=pattern, ops=names))
    if len(out) > MAX_RULES:
        raise PolicyError(f"{len(out)} rules for one client; at most {MAX_RULES}")
    return tuple(out)


def parse_rule(text: str) -> PolicyRule:
    """`"app1/*: encrypt, decrypt"` -> a validated PolicyRule (the CLI's and the docs' notation)."""
    pattern, colon, ops = text.rpartition(":")
    if not colon:
        raise PolicyError(f"a rule reads 'pattern: op, op', got {text!r}")
    return validate_rules([(pattern.strip(), [op.strip() for op in ops.split(",") if op.strip()])])[0]


# --- the table ----------------------------------------------------------------------------


class Stamp(NamedTuple):
    """When a fact was written: the event's hlc and origin."""

    hlc: int
    origin: str


class NodeRevocation(NamedTuple):
    """A node's revocation: the earliest one folded (a later one with another reason changes nothing)."""

    hlc: int
    origin: str
    reason: str


class RulesRegister(NamedTuple):
    """A client's rules; the greatest (hlc, origin, encoded) wins."""

    hlc: int
    origin: str
    encoded: bytes  # the PolicySet body: unique per value, so ties of stamps are still decided
    rules: tuple[PolicyRule, ...]


class AdminRegister(NamedTuple):
    """A client's admin flag; the greatest (hlc, origin, revoked) wins, so a revoke wins a tie."""

    hlc: int
    origin: str
    revoked: bool


@dataclass(slots=True)
class ClientPolicy:
    """What the table knows of one (not revoked) client."""

    rules: RulesRegister | None = None
    admin: AdminRegister | None = None

    @property
    def is_admin(self) -> bool:
        return self.admin is not None and not self.admin.revoked


class _Compiled:
    """A client's rules ready for matching: exact names in a dict, patterns in order."""

    __slots__ = ("exact", "patterns")

    def __init__(self, rules: tuple[PolicyRule, ...]):
        self.exact: dict[str, frozenset[str]] = {}
        patterns = []
        for rule in rules:
            ops = _granted(rule.ops)
            try:
                pattern = KeyPattern(rule.pattern)
            except PolicyError:
                continue  # a rule that is not valid grants nothing
            if not ops:
                continue
            if "*" in rule.pattern:
                patterns.append((pattern, ops))
            else:
                self.exact[rule.pattern] = self.exact.get(rule.pattern, frozenset()) | ops
        self.patterns = tuple(patterns)

    def allows(self, op: str, name: str) -> bool:
        if not name:
            return False  # no key is called "": no pattern grants it
        ops = self.exact.get(name)
        if ops is not None and op in ops:
            return True
        for pattern, ops in self.patterns:
            if op in ops and pattern.matches(name):
                return True
        return False


def _granted(ops: tuple[str, ...]) -> frozenset[str]:
    if ALL_KEY_OPERATIONS in ops:
        return _KEY_OPS
    return frozenset(op for op in ops if op in _KEY_OPS)  # unknown and admin names grant nothing


_NO_RULES = _Compiled(())


@dataclass(slots=True)
class PolicyTable:
    """The folded policy table of the network (partition 0's policy events)."""

    clients: dict[str, ClientPolicy] = field(default_factory=dict)
    revoked: dict[str, Stamp] = field(default_factory=dict)  # whole clients, earliest revocation
    revoked_keys: dict[str, dict[bytes, Stamp]] = field(default_factory=dict)  # client -> fingerprint -> stamp
    covered: dict[str, int] = field(default_factory=dict)  # origin -> highest origin_seq folded (any type)
    _compiled: dict[str, _Compiled] = field(default_factory=dict, compare=False, repr=False)
    revoked_nodes: dict[str, NodeRevocation] = field(default_factory=dict)  # node -> earliest revocation

    # --- questions ----------------------------------------------------------------

    def is_revoked(self, client: str, fingerprint: bytes | None = None) -> bool:
        """The client is revoked, or (given its key's fingerprint) that key is."""
        if client in self.revoked:
            return True
        return bool(fingerprint) and fingerprint in self.revoked_keys.get(client, {})

    def is_node_revoked(self, node: str) -> bool:
        return node in self.revoked_nodes

    def is_admin(self, client: str) -> bool:
        entry = self.clients.get(client)
        return entry is not None and entry.is_admin

    def allows(self, client: str, op: str, key_name: str, *, fingerprint: bytes | None = None) -> bool:
        """`authorize` as a yes / no (for filtering `key.list`)."""
        if self.is_revoked(client, fingerprint):
            return False
        if op in _ADMIN_OPS:
            return self.is_admin(client)
        compiled = self._compiled.get(client)
        if compiled is None:
            compiled = self._compile(client)
        return compiled.allows(op, key_name)

    def _compile(self, client: str) -> _Compiled:
        entry = self.clients.get(client)
        if entry is None or entry.rules is None:
            return _NO_RULES  # not cached: unknown client names must not grow the cache
        compiled = self._compiled[client] = _Compiled(entry.rules.rules)
        return compiled

    # --- folding ------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Fold one event in place; events that are not policy events only advance `covered`.
        DecodeError when a policy body does not decode or breaks its envelope rules."""
        cls = POLICY_BODY_BY_TAG.get(event.type)
        if cls is not None:  # decode before changing anything
            body = codec.decode(event.body, expect=cls)
            check_policy_envelope(event, body)
        if event.origin_seq > self.covered.get(event.origin, 0):
            self.covered[event.origin] = event.origin_seq
        if cls is None:
            return
        if cls is NodeRevoked:
            held = self.revoked_nodes.get(body.node)
            revocation = NodeRevocation(event.hlc, event.origin, body.reason)
            if held is None or revocation < held:
                self.revoked_nodes[body.node] = revocation
            return
        client = body.client
        stamp = Stamp(event.hlc, event.origin)
        if cls is ClientRevoked:
            self._revoke(client, body.fingerprint, stamp)
            return
        if client in self.revoked:
            return  # the tombstone wins over everything
        entry = self.clients.get(client)
        if entry is None:
            entry = self.clients[client] = ClientPolicy()
        if cls is PolicySet:
            register = RulesRegister(event.hlc, event.origin, event.body, body.rules)
            if entry.rules is None or register[:3] > entry.rules[:3]:
                entry.rules = register
                self._compiled.pop(client, None)
        else:
            admin = AdminRegister(event.hlc, event.origin, cls is AdminRevoked)
            if entry.admin is None or admin > entry.admin:
                entry.admin = admin

    def _revoke(self, client: str, fingerprint: bytes, stamp: Stamp) -> None:
        if fingerprint:
            if client in self.revoked:
                return
            keys = self.revoked_keys.setdefault(client, {})
            held = keys.get(fingerprint)
            if held is None or stamp < held:
                keys[fingerprint] = stamp
            return
        held = self.revoked.get(client)
        if held is None or stamp < held:
            self.revoked[client] = stamp
        self.clients.pop(client, None)
        self.revoked_keys.pop(client, None)
        self._compiled.pop(client, None)

    def copy(self) -> PolicyTable:
        return PolicyTable(
            {c: ClientPolicy(p.rules, p.admin) for c, p in self.clients.items()},
            dict(self.revoked),
            {c: dict(k) for c, k in self.revoked_keys.items()},
            dict(self.covered),
            dict(self._compiled),  # compiled rules are immutable: sharing them is safe
            dict(self.revoked_nodes),
        )


def fold_policy(events: Iterable[Event], table: PolicyTable | None = None) -> PolicyTable:
    """The table after folding `events` onto `table` (or onto nothing); `table` is not changed."""
    result = PolicyTable() if table is None else table.copy()
    apply = result.apply
    for event in events:
        apply(event)
    return result


def authorize(table: PolicyTable, client: str, op: str, key_name: str = "", *,
              fingerprint: bytes | None = None) -> None:
    """Return if `client` may do `op` to key `key_name`; raise Forbidden otherwise.

    `fingerprint` (SHA-256 of the client key's SubjectPublicKeyInfo) also
    refuses a revoked key of an otherwise valid client. Admin operations
    ignore `key_name`; for a key operation an empty `key_name` is refused.
    `key.list` is not authorised once but filtered: list, then keep the names
    `table.allows(client, "key.list", name)`. An operation name keyswarm does
    not have is PolicyError.
    """
    if client in table.revoked or (fingerprint and fingerprint in table.revoked_keys.get(client, {})):
        raise Forbidden(f"client {client!r} is revoked")
    if op in _ADMIN_OPS:
        if table.is_admin(client):
            return
        raise Forbidden(f"client {client!r} may not {op}: it is an admin operation")
    if op not in _KEY_OPS:
        raise PolicyError(f"unknown operation {op!r}")
    compiled = table._compiled.get(client)
    if compiled is None:
        compiled = table._compile(client)
    if not compiled.allows(op, key_name):
        raise Forbidden(f"client {client!r} may not {op} key {key_name!r}")
