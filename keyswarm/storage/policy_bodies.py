"""Typed event bodies of the policy table: who may do what, who is admin, who is revoked.

Owns the policy bodies under their permanent tags (0x0420-0x043F of the
event-body block) and `check_policy_envelope`, the shape rules a policy
event must keep. The fold that turns them into a table is `keyswarm.policy`.

| tag      | body            | says                                                   |
|----------|-----------------|--------------------------------------------------------|
| `0x0420` | `PolicySet`     | replace client C's rules (last writer wins by stamp)   |
| `0x0421` | `ClientRevoked` | client C (or one of its keys) is refused, forever      |
| `0x0422` | `AdminGranted`  | client C may run admin operations (LWW with revoke)    |
| `0x0423` | `AdminRevoked`  | client C may no longer run admin operations            |
| `0x0424` | `NodeRevoked`   | node N is refused, forever: it stops serving, its tickets die |
| `0x043F` | `PolicyRule`    | one rule inside `PolicySet`; never an event by itself  |

Rules:
- Network-wide: every policy event lives in partition 0 with subject ""
  (DESIGN section 6). `check_policy_envelope` refuses anything else, an
  empty client (or node) name, and a fingerprint that is neither empty nor
  32 bytes.
- Codec rules as in `bodies.py`: tags are permanent, fields append-only with
  defaults, no `__post_init__` checks, so a body that breaks a rule still
  decodes and the verifier can say which rule it broke. A rule whose pattern
  or operations are not valid is stored as written and grants nothing
  (`keyswarm.policy` fails closed); the key service validates rules before
  it writes them (`keyswarm.policy.validate_rules`).
- The `keyswarm init` bootstrap writes `AdminGranted(client=<first client>)`
  (and usually a `PolicySet` for it): the network's first admin.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyswarm.errors import DecodeError
from keyswarm.storage.bodies import Envelope
from keyswarm.transport import codec

#: The policy bodies' share of the event-body block.
POLICY_TAGS = range(0x0420, 0x0440)
#: A revoked key is named by SHA-256 over its SubjectPublicKeyInfo DER
#: (`keyswarm.hardware.token.public_key_fingerprint`).
FINGERPRINT_BYTES = 32


@codec.message(tag=0x043F)
@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRule:
    """Key names matching `pattern` may have `ops` done to them (docs: keyswarm.policy)."""

    pattern: str
    ops: tuple[str, ...] = ()


@codec.message(tag=0x0420)
@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySet:
    """`client`'s rules from now on, replacing all it had (empty: the client may do nothing)."""

    client: str
    rules: tuple[PolicyRule, ...] = ()


@codec.message(tag=0x0421)
@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRevoked:
    """`client` is refused everywhere, forever; with a `fingerprint`, only that key of the client.

    A revocation wins over every other policy event, whatever their order.
    """

    client: str
    fingerprint: bytes = b""
    reason: str = ""


@codec.message(tag=0x0422)
@dataclass(frozen=True, slots=True, kw_only=True)
class AdminGranted:
    """`client` may run admin operations (policy.set, client.revoke, node.revoke)."""

    client: str


@codec.message(tag=0x0423)
@dataclass(frozen=True, slots=True, kw_only=True)
class AdminRevoked:
    """`client` may no longer run admin operations."""

    client: str


@codec.message(tag=0x0424)
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRevoked:
    """Node `node` is revoked, forever: it refuses handshakes and resumptions and closes its
    sessions, and no node resumes a ticket it minted. Nothing undoes it (no event un-revokes)."""

    node: str
    reason: str = ""


#: Bodies that are policy events (PolicyRule only travels inside PolicySet).
POLICY_BODIES = (PolicySet, ClientRevoked, AdminGranted, AdminRevoked, NodeRevoked)
POLICY_BODY_BY_TAG: dict[int, type] = {codec.tag_of(cls): cls for cls in POLICY_BODIES}


def check_policy_envelope(event: Envelope, body: object) -> None:
    """DecodeError unless `body` is a policy event body that may travel in `event`'s envelope."""
    if type(body) not in POLICY_BODY_BY_TAG.values():
        raise DecodeError(f"{type(body).__name__} is not a policy event body")
    name = type(body).__name__
    if event.subject or event.partition != 0:
        raise DecodeError(f"{name} is network-wide: subject '' in partition 0")
    if type(body) is NodeRevoked:
        if not body.node:
            raise DecodeError("NodeRevoked: empty node name")
        return
    client = body.client  # type: ignore[attr-defined]
    if not client:
        raise DecodeError(f"{name}: empty client name")
    if type(body) is ClientRevoked and body.fingerprint and len(body.fingerprint) != FINGERPRINT_BYTES:
        raise DecodeError(f"ClientRevoked: a fingerprint is {FINGERPRINT_BYTES} bytes, got {len(body.fingerprint)}")
