"""Messages of the key service: named-key operations, crypto operations, batches, admin writes.

Owns the client-facing messages of the `keys` actors and the `admin` actor
(tags 0x0800-0x08FF, each with its `op`), the key-name rule
(`check_key_name`), and `key_names_of`, which says which named keys a
request touches (the sessions actor authorises each of them).

Rules (STYLE habit 3, docs/protocol.md sections 4, 5 and 11):
- Tags are permanent; fields are append-only and new fields have defaults.
- Requests are named for what they ask (`CreateKey`, `Encrypt`), results
  after their op (`EncryptResult`, op `encrypt.result`). Every key-changing
  request carries `client_request_id` (b"": not deduplicated): a retry with
  the same id by the same client applies once and gets the original answer.
- Ciphertexts are binary here (the `ks:v1:` text form is the CLI's). A
  decrypt or rewrap may name the key it expects (`name`); "" means "the key
  the ciphertext names". A ciphertext of another key than `name` is
  DECRYPT_FAILED.
- Batch items each name their key; a batch answers item by item, in order,
  and one bad item fails only itself (`ok` false and its `error`).
- Key names: 1..`limits.max_key_name_bytes` UTF-8 bytes, `/`-separated
  segments of `[A-Za-z0-9._-]+`, no empty segment.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from keyswarm.actors.messages import Failure
from keyswarm.crypto.ciphertext import parse
from keyswarm.errors import DecodeError
from keyswarm.storage.events import Event
from keyswarm.storage.policy_bodies import PolicyRule
from keyswarm.transport.codec import message

#: Longest client request id a write may carry.
MAX_CLIENT_REQUEST_ID_BYTES = 64
_KEY_NAME = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")


class BadKeyName(DecodeError):
    """A key name that breaks the naming rule (BAD_REQUEST)."""


def check_key_name(name: str, max_bytes: int) -> None:
    """BadKeyName unless `name` is a valid key name of at most `max_bytes` UTF-8 bytes."""
    if type(name) is not str or not name:
        raise BadKeyName("a key name is a non-empty string")
    size = len(name.encode("utf-8")) if not name.isascii() else len(name)
    if size > max_bytes:
        raise BadKeyName(f"key name is {size} bytes; at most {max_bytes}")
    if not _KEY_NAME.fullmatch(name):
        raise BadKeyName(f"key name {name[:80]!r} is not `/`-separated segments of A-Z a-z 0-9 . _ -")


# --- named keys -------------------------------------------------------------------------


@message(tag=0x0801, op="key.create")
@dataclass(frozen=True, slots=True, kw_only=True)
class CreateKey:
    name: str
    algorithm: str  # aes256-gcm | chacha20-poly1305 | ed25519 | ecdsa-p256 | hmac-sha256
    client_request_id: bytes = b""


@message(tag=0x0802, op="key.rotate")
@dataclass(frozen=True, slots=True, kw_only=True)
class RotateKey:
    """Add a version; it becomes the primary."""

    name: str
    client_request_id: bytes = b""


@message(tag=0x0803, op="key.get")
@dataclass(frozen=True, slots=True, kw_only=True)
class GetKey:
    name: str


@message(tag=0x0804, op="key.list")
@dataclass(frozen=True, slots=True, kw_only=True)
class ListKeys:
    """Live key names starting with `prefix`, in order, after `cursor` (the last name of the previous page)."""

    prefix: str = ""
    limit: int = 100  # 1..1000
    cursor: str = ""


@message(tag=0x0805, op="key.disable")
@dataclass(frozen=True, slots=True, kw_only=True)
class DisableKey:
    name: str
    client_request_id: bytes = b""


@message(tag=0x0806, op="key.enable")
@dataclass(frozen=True, slots=True, kw_only=True)
class EnableKey:
    name: str
    client_request_id: bytes = b""


@message(tag=0x0807, op="key.delete")
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteKey:
    """Delete the key forever (refused unless its `deletion_allowed` is set); the name is never reused."""

    name: str
    client_request_id: bytes = b""


@message(tag=0x0808, op="key.config")
@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigureKey:
    """Change settings; None leaves one as it is. At least one must be given."""

    name: str
    min_decryption_version: int | None = None  # older versions no longer decrypt (1..the primary's number)
    deletion_allowed: bool | None = None
    auto_rotate_period_s: float | None = None  # 0: off
    client_request_id: bytes = b""


@message(tag=0x0810)
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyVersionInfo:
    number: int  # 1..n in version order; can shift when a concurrent version merges in
    version_id: bytes  # what ciphertexts name; never changes
    created_hlc: int  # hybrid logical clock of the event that made it: (unix ms << 16) | logical
    created_by: str  # the node that made it
    public_key: bytes = b""  # SubjectPublicKeyInfo DER for ed25519 / ecdsa-p256 keys


@message(tag=0x0811, op="key.info")
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    """A key as this node knows it: the answer to key.get and to every key write but delete."""

    name: str
    algorithm: str
    versions: tuple[KeyVersionInfo, ...]
    primary: int  # number of the primary version
    primary_version_id: bytes
    disabled: bool
    min_decryption_version: int
    deletion_allowed: bool
    auto_rotate_period_s: float
    version_id: bytes = b""  # key.create / key.rotate: the version this request made


@message(tag=0x0812, op="key.list.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class ListKeysResult:
    names: tuple[str, ...]
    cursor: str = ""  # pass it back for the next page; "" when this is the last one


@message(tag=0x0813, op="key.delete.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteKeyResult:
    name: str


# --- crypto operations -----------------------------------------------------------------


@message(tag=0x0820, op="encrypt")
@dataclass(frozen=True, slots=True, kw_only=True)
class Encrypt:
    name: str
    plaintext: bytes
    context: bytes = b""  # bound as associated data: decrypt must give the same


@message(tag=0x0821, op="encrypt.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptResult:
    ciphertext: bytes
    version_id: bytes


@message(tag=0x0822, op="decrypt")
@dataclass(frozen=True, slots=True, kw_only=True)
class Decrypt:
    ciphertext: bytes
    context: bytes = b""
    name: str = ""  # the key expected; "": the key the ciphertext names


@message(tag=0x0823, op="decrypt.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptResult:
    plaintext: bytes
    version_id: bytes


@message(tag=0x0824, op="rewrap")
@dataclass(frozen=True, slots=True, kw_only=True)
class Rewrap:
    """Open the ciphertext and seal it again under the key's primary version (same context)."""

    ciphertext: bytes
    context: bytes = b""
    name: str = ""


@message(tag=0x0825, op="rewrap.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class RewrapResult:
    ciphertext: bytes
    version_id: bytes


@message(tag=0x0826, op="datakey")
@dataclass(frozen=True, slots=True, kw_only=True)
class DataKey:
    name: str
    bits: int = 256  # 128 | 192 | 256 | 512
    context: bytes = b""


@message(tag=0x0827, op="datakey.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class DataKeyResult:
    plaintext: bytes  # the data key: use it, then forget it
    ciphertext: bytes  # the data key sealed under the named key (decrypt gives it back)
    version_id: bytes


@message(tag=0x0828, op="sign")
@dataclass(frozen=True, slots=True, kw_only=True)
class Sign:
    name: str
    message: bytes
    prehashed: bool = False  # ecdsa-p256 only: `message` is the 32-byte SHA-256 digest


@message(tag=0x0829, op="sign.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class SignResult:
    signature: bytes
    version_id: bytes


@message(tag=0x082A, op="verify")
@dataclass(frozen=True, slots=True, kw_only=True)
class Verify:
    """Check a signature (or, with an hmac-sha256 key, a MAC)."""

    name: str
    message: bytes
    signature: bytes
    version_id: bytes = b""  # b"": the primary version
    prehashed: bool = False


@message(tag=0x082B, op="verify.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    valid: bool
    version_id: bytes


@message(tag=0x082C, op="hmac")
@dataclass(frozen=True, slots=True, kw_only=True)
class Hmac:
    name: str
    message: bytes


@message(tag=0x082D, op="hmac.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class HmacResult:
    mac: bytes
    version_id: bytes


# --- batches: items name their keys; results come item by item, in order -----------------


@message(tag=0x0840)
@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptItem:
    name: str
    plaintext: bytes
    context: bytes = b""


@message(tag=0x0841)
@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptItemResult:
    ok: bool
    ciphertext: bytes = b""
    version_id: bytes = b""
    error: Failure | None = None


@message(tag=0x0842, op="encrypt.batch")
@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptBatch:
    items: tuple[EncryptItem, ...]


@message(tag=0x0843, op="encrypt.batch.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptBatchResult:
    items: tuple[EncryptItemResult, ...]


@message(tag=0x0844)
@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptItem:
    ciphertext: bytes
    context: bytes = b""
    name: str = ""


@message(tag=0x0845)
@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptItemResult:
    ok: bool
    plaintext: bytes = b""
    version_id: bytes = b""
    error: Failure | None = None


@message(tag=0x0846, op="decrypt.batch")
@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptBatch:
    items: tuple[DecryptItem, ...]


@message(tag=0x0847, op="decrypt.batch.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptBatchResult:
    items: tuple[DecryptItemResult, ...]


@message(tag=0x0848)
@dataclass(frozen=True, slots=True, kw_only=True)
class RewrapItem:
    ciphertext: bytes
    context: bytes = b""
    name: str = ""


@message(tag=0x0849)
@dataclass(frozen=True, slots=True, kw_only=True)
class RewrapItemResult:
    ok: bool
    ciphertext: bytes = b""
    version_id: bytes = b""
    error: Failure | None = None


@message(tag=0x084A, op="rewrap.batch")
@dataclass(frozen=True, slots=True, kw_only=True)
class RewrapBatch:
    items: tuple[RewrapItem, ...]


@message(tag=0x084B, op="rewrap.batch.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class RewrapBatchResult:
    items: tuple[RewrapItemResult, ...]


@message(tag=0x084C)
@dataclass(frozen=True, slots=True, kw_only=True)
class SignItem:
    name: str
    message: bytes
    prehashed: bool = False


@message(tag=0x084D)
@dataclass(frozen=True, slots=True, kw_only=True)
class SignItemResult:
    ok: bool
    signature: bytes = b""
    version_id: bytes = b""
    error: Failure | None = None


@message(tag=0x084E, op="sign.batch")
@dataclass(frozen=True, slots=True, kw_only=True)
class SignBatch:
    items: tuple[SignItem, ...]


@message(tag=0x084F, op="sign.batch.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class SignBatchResult:
    items: tuple[SignItemResult, ...]


@message(tag=0x0850)
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyItem:
    name: str
    message: bytes
    signature: bytes
    version_id: bytes = b""
    prehashed: bool = False


@message(tag=0x0851)
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyItemResult:
    ok: bool
    valid: bool = False
    version_id: bytes = b""
    error: Failure | None = None


@message(tag=0x0852, op="verify.batch")
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyBatch:
    items: tuple[VerifyItem, ...]


@message(tag=0x0853, op="verify.batch.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyBatchResult:
    items: tuple[VerifyItemResult, ...]


@message(tag=0x0854)
@dataclass(frozen=True, slots=True, kw_only=True)
class HmacItem:
    name: str
    message: bytes


@message(tag=0x0855)
@dataclass(frozen=True, slots=True, kw_only=True)
class HmacItemResult:
    ok: bool
    mac: bytes = b""
    version_id: bytes = b""
    error: Failure | None = None


@message(tag=0x0856, op="hmac.batch")
@dataclass(frozen=True, slots=True, kw_only=True)
class HmacBatch:
    items: tuple[HmacItem, ...]


@message(tag=0x0857, op="hmac.batch.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class HmacBatchResult:
    items: tuple[HmacItemResult, ...]


#: Each batch request -> (its result class, its item result class).
BATCHES: dict[type, tuple[type, type]] = {
    EncryptBatch: (EncryptBatchResult, EncryptItemResult),
    DecryptBatch: (DecryptBatchResult, DecryptItemResult),
    RewrapBatch: (RewrapBatchResult, RewrapItemResult),
    SignBatch: (SignBatchResult, SignItemResult),
    VerifyBatch: (VerifyBatchResult, VerifyItemResult),
    HmacBatch: (HmacBatchResult, HmacItemResult),
}


# --- statistics ----------------------------------------------------------------------------


@message(tag=0x0860, op="keys.stats")
@dataclass(frozen=True, slots=True, kw_only=True)
class GetKeyStats:
    """The key service's counters on this node."""


@message(tag=0x0861, op="keys.stats.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyStatsResult:
    cache_hits: int
    cache_misses: int
    cache_evictions: int
    cache_expirations: int
    cache_size: int
    writes: int  # key-changing requests applied (durable)
    deduplicated: int  # retried writes answered without writing again
    partitions_loaded: int
    auto_rotations: int = 0  # automatic rotations applied (also counted in `writes`)
    auto_rotation_failures: int = 0  # automatic rotations that failed and wait for their retry


# --- admin ----------------------------------------------------------------------------------


@message(tag=0x0870, op="policy.set")
@dataclass(frozen=True, slots=True, kw_only=True)
class SetPolicy:
    """Replace `client`'s rules (empty: it may do nothing)."""

    client: str
    rules: tuple[PolicyRule, ...] = ()
    client_request_id: bytes = b""


@message(tag=0x0871, op="policy.set.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class SetPolicyResult:
    client: str
    rules: tuple[PolicyRule, ...]  # as stored: validated, each rule's ops de-duplicated and sorted


@message(tag=0x0872, op="client.revoke")
@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeClient:
    """Refuse `client` everywhere, forever (with `fingerprint`: only that key of it)."""

    client: str
    fingerprint: bytes = b""  # SHA-256 of the key's SubjectPublicKeyInfo DER, or b""
    reason: str = ""
    client_request_id: bytes = b""


@message(tag=0x0873, op="client.revoke.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeClientResult:
    client: str


@message(tag=0x0874, op="node.revoke")
@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeNode:
    """Revoke node `node` everywhere, forever: it stops taking handshakes and resumptions and
    closes its sessions; no node resumes a ticket it minted (`NodeRevoked`)."""

    node: str
    reason: str = ""
    client_request_id: bytes = b""


@message(tag=0x0875, op="node.revoke.result")
@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeNodeResult:
    node: str


@dataclass(frozen=True, slots=True)
class AuthorizedListKeys:
    """sessions -> keys: `request` for a client that may see only the names `allows` accepts
    (`lambda name: table.allows(client, "key.list", name)`). Each partition filters before it
    takes `limit`, so pages stay full. Node-local, never on the wire."""

    request: ListKeys
    allows: Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    """To the `sessions` actor: these durable policy events are new; fold them
    (`PolicyTable.apply`). Node-local, never on the wire."""

    events: tuple[Event, ...]


# --- what a request touches --------------------------------------------------------------


def key_names_of(msg: object, *, max_name_bytes: int = 4096) -> tuple[str, ...]:
    """The key names `msg` touches, one per item for batches (for policy checks).

    A decrypt or rewrap without `name` touches the key its ciphertext names;
    a ciphertext that does not parse gives "" (the keys actor answers it
    BAD_REQUEST). `key.list`, `keys.stats` and admin requests touch none.
    """
    kind = type(msg)
    if kind in BATCHES:
        return tuple(_name_of(item, max_name_bytes) for item in msg.items)  # type: ignore[attr-defined]
    if kind in (ListKeys, AuthorizedListKeys, GetKeyStats, SetPolicy, RevokeClient, RevokeNode):
        return ()
    return (_name_of(msg, max_name_bytes),)


def _name_of(item: object, max_name_bytes: int) -> str:
    name = getattr(item, "name", "")
    if name:
        return name
    ciphertext = getattr(item, "ciphertext", None)
    if ciphertext is None:
        return ""
    try:
        return parse(ciphertext, max_name_bytes=max_name_bytes).name
    except DecodeError:
        return ""
