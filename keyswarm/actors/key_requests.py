"""Answering the key service's read and crypto requests against a partition's folded state.

Owns `KeyRequests`: given a `PartitionState`, a request (`Encrypt`, `Sign`,
`GetKey`, a batch, ...), the time and an entropy source, it computes the
answer: a result message or a `Failure`. The `keys.<p>` actors call it; it
is pure (no context, no clock), so it is tested and measured directly.

Rules:
- Check before touching material: the key must exist (KEY_NOT_FOUND; a
  malformed name is BAD_REQUEST instead), must offer the operation
  (BAD_REQUEST naming operation and algorithm), and must not be disabled
  (KEY_DISABLED) before the key ring unwraps anything.
- Failures are `KeyswarmError`s, translated once (`failure_of`) into the
  wire `Failure`, with `retryable` true only where a retry can succeed: a
  key version this node has not seen yet (replication may bring it), BUSY,
  UNAVAILABLE. Nothing else is caught: a bug crashes the actor, and the
  supervisor restarts it.
- A ciphertext that does not parse is BAD_REQUEST; one that parses but does
  not open (tampered, another context, another key) is DECRYPT_FAILED, with
  no plaintext, partial or whole. A decrypt that names a key refuses a
  ciphertext of another key (DECRYPT_FAILED) before any cryptography.
- Batches answer item by item, in order: a bad item fails alone. More
  than `max_batch_items` items fails the whole batch (BAD_REQUEST).
- Public keys (`key.get` of ed25519 / ecdsa-p256 keys) are derived from
  unwrapped material and kept in a bounded memo: they are not secret, and
  a disabled key still shows them.
"""

from __future__ import annotations

from collections.abc import Callable

from keyswarm.actors.key_messages import (
    BATCHES,
    DataKey,
    DataKeyResult,
    Decrypt,
    DecryptItem,
    DecryptItemResult,
    DecryptResult,
    Encrypt,
    EncryptItem,
    EncryptItemResult,
    EncryptResult,
    GetKey,
    Hmac,
    HmacItem,
    HmacItemResult,
    HmacResult,
    KeyInfo,
    KeyVersionInfo,
    Rewrap,
    RewrapItem,
    RewrapItemResult,
    RewrapResult,
    Sign,
    SignItem,
    SignItemResult,
    SignResult,
    Verify,
    VerifyItem,
    VerifyItemResult,
    VerifyResult,
    check_key_name,
)
from keyswarm.actors.messages import Failure
from keyswarm.crypto import ciphertext as ct
from keyswarm.crypto import named_keys
from keyswarm.crypto.ciphertext import ReadyKey
from keyswarm.crypto.key_cache import KeyRing, MaterialUnavailable
from keyswarm.crypto.sealing import DomainKey, UnsealFailed
from keyswarm.errors import RETRYABLE_CODES, DecryptFailed, KeyNotFound, KeyswarmError
from keyswarm.storage.fold import KeyState, PartitionState

Entropy = Callable[[int], bytes]

#: Plaintexts at least this long are sealed in place (`encrypt_bulk`): one buffer, not two.
BULK_FROM_BYTES = 256 * 1024
#: Public keys remembered per partition actor (they are not secret; the bound is for memory).
MAX_PUBLIC_KEYS = 4096
#: Data key sizes, in bits, that `datakey` offers.
DATA_KEY_BITS = (128, 192, 256, 512)
_SIGNING = (named_keys.ED25519, named_keys.ECDSA_P256)


def failure_of(exc: KeyswarmError) -> Failure:
    """The wire answer for a refused request (`retryable` as the error class says)."""
    retryable = getattr(exc, "retryable", None)
    if retryable is None:
        retryable = exc.code in RETRYABLE_CODES
    return Failure(code=exc.code, message=str(exc), retryable=bool(retryable))


class KeyRequests:
    """Computes answers for one partition actor; holds the shared key ring and a public-key memo."""

    def __init__(self, ring: KeyRing, domain_keys: tuple[DomainKey, ...], *, max_name_bytes: int = 256,
                 max_batch_items: int = 1000):
        self.ring = ring
        self._domain_keys = {k.key_id: k for k in domain_keys}
        self.max_name_bytes = max_name_bytes
        self.max_batch_items = max_batch_items
        self._public_keys: dict[tuple[str, bytes], bytes] = {}
        self._memo: dict[tuple, ReadyKey] | None = None  # ready keys of the batch being answered
        # Request (or batch item) type -> its core operation. Items have the fields of
        # their single request, so one core serves both; only the result class differs.
        cores = {Encrypt: self._encrypt, Decrypt: self._decrypt, Rewrap: self._rewrap, Sign: self._sign,
                 Verify: self._verify, Hmac: self._hmac}
        self._single: dict[type, Callable[..., object]] = {
            kind: _single(core, _RESULTS[kind]) for kind, core in cores.items()
        }
        self._single[DataKey] = self._datakey
        self._single[GetKey] = self.get
        self._items: dict[type, Callable[..., tuple]] = {item: cores[single] for item, single in _ITEMS.items()}

    def handles(self, kind: type) -> bool:
        return kind in self._single or kind in BATCHES

    def answer(self, state: PartitionState, msg: object, now: float, entropy: Entropy) -> object:
        """The result message for `msg`, or its `Failure`."""
        kind = type(msg)
        handler = self._single.get(kind)
        try:
            if handler is not None:
                return handler(state, msg, now, entropy)
            return self._batch(state, msg, now, entropy)
        except KeyswarmError as exc:
            return failure_of(exc)

    # --- core operations: (result fields...) or KeyswarmError -------------------------------

    def _encrypt(self, state: PartitionState, msg: Encrypt, now: float, entropy: Entropy) -> tuple[object, bytes]:
        ready = self._primary(state, msg.name, "encrypt", now)
        plaintext = msg.plaintext
        if len(plaintext) >= BULK_FROM_BYTES:  # a bytearray: the codec writes it as bin, without a copy
            return ct.encrypt_bulk(ready, plaintext, entropy=entropy, context=msg.context), ready.version_id
        return ct.encrypt(ready, plaintext, entropy=entropy, context=msg.context), ready.version_id

    def _decrypt(self, state: PartitionState, msg: Decrypt, now: float, entropy: Entropy) -> tuple[bytes, bytes]:
        parsed, ready = self._opener(state, msg.ciphertext, msg.name, "decrypt", now)
        return ct.decrypt(parsed, ready, context=msg.context), ready.version_id

    def _rewrap(self, state: PartitionState, msg: Rewrap, now: float, entropy: Entropy) -> tuple[bytes, bytes]:
        parsed, old = self._opener(state, msg.ciphertext, msg.name, "rewrap", now)
        new = self._primary(state, parsed.name, "rewrap", now)
        return ct.rewrap(parsed, old, new, entropy=entropy, context=msg.context), new.version_id

    def _sign(self, state: PartitionState, msg: Sign, now: float, entropy: Entropy) -> tuple[bytes, bytes]:
        ready = self._primary(state, msg.name, "sign", now)
        return named_keys.sign(ready.key, msg.message, prehashed=msg.prehashed), ready.version_id

    def _verify(self, state: PartitionState, msg: Verify, now: float, entropy: Entropy) -> tuple[bool, bytes]:
        if msg.version_id:
            ready = self._version(state, msg.name, msg.version_id, "verify", now)
        else:
            ready = self._primary(state, msg.name, "verify", now)
        return named_keys.verify(ready.key, msg.message, msg.signature, prehashed=msg.prehashed), ready.version_id

    def _hmac(self, state: PartitionState, msg: Hmac, now: float, entropy: Entropy) -> tuple[bytes, bytes]:
        ready = self._primary(state, msg.name, "hmac", now)
        return named_keys.hmac(ready.key, msg.message), ready.version_id

    def _datakey(self, state: PartitionState, msg: DataKey, now: float, entropy: Entropy) -> DataKeyResult:
        if msg.bits not in DATA_KEY_BITS:
            sizes = ", ".join(map(str, DATA_KEY_BITS))
            raise named_keys.KeyRequestError(f"a data key has {sizes} bits, not {msg.bits}")
        self._usable(state, msg.name, "datakey")
        ready = self.ring.primary(state, msg.name, now=now)
        made = ct.datakey(ready, entropy=entropy, context=msg.context, length=msg.bits // 8)
        return DataKeyResult(plaintext=made.plaintext, ciphertext=made.ciphertext, version_id=ready.version_id)

    def get(self, state: PartitionState, msg: GetKey, now: float, entropy: Entropy) -> KeyInfo:
        return self.info(self._existing(state, msg.name))

    # --- key descriptions ---------------------------------------------------------------------

    def info(self, key: KeyState, *, version_id: bytes = b"") -> KeyInfo:
        """`key` as `KeyInfo`; `version_id`: the version the answered write made."""
        versions = key.versions
        signing = key.algorithm in _SIGNING
        primary = versions[-1] if versions else None
        return KeyInfo(
            name=key.name,
            algorithm=key.algorithm,
            versions=tuple(
                KeyVersionInfo(number=n, version_id=v.version_id, created_hlc=v.hlc, created_by=v.origin,
                               public_key=self._public_key(key, v.version_id, v.material) if signing else b"")
                for n, v in enumerate(versions, 1)
            ),
            primary=len(versions),
            primary_version_id=primary.version_id if primary is not None else b"",
            disabled=key.disabled,
            min_decryption_version=key.setting("min_decryption_version"),
            deletion_allowed=key.setting("deletion_allowed"),
            auto_rotate_period_s=key.setting("auto_rotate_period_s"),
            version_id=version_id,
        )

    def _public_key(self, key: KeyState, version_id: bytes, wrapped: bytes) -> bytes:
        memo = self._public_keys
        found = memo.get((key.name, version_id))
        if found is not None:
            return found
        domain_key = self._domain_keys.get(wrapped[:8])
        if domain_key is None:
            raise MaterialUnavailable(f"key {key.name!r} version {version_id.hex()} is wrapped under a domain key "
                                      f"this node does not hold")
        try:
            material = named_keys.unwrap_material(domain_key, key.name, version_id, wrapped)
        except UnsealFailed as exc:
            raise MaterialUnavailable(f"key {key.name!r} version {version_id.hex()}: material does not unwrap") from exc
        public = named_keys.public_key(key.algorithm, material)
        if len(memo) >= MAX_PUBLIC_KEYS:
            memo.clear()
        memo[(key.name, version_id)] = public
        return public

    def forget(self, name: str) -> None:
        """A write changed key `name`: drop what is remembered of it (public keys, cached material)."""
        self.ring.cache.invalidate(name)
        if self._public_keys:
            for held in [k for k in self._public_keys if k[0] == name]:
                del self._public_keys[held]

    # --- checks ------------------------------------------------------------------------------------

    def _existing(self, state: PartitionState, name: str) -> KeyState:
        key = state.key(name)
        if key is None:
            check_key_name(name, self.max_name_bytes)
            raise KeyNotFound(f"no key named {name!r}")
        return key

    def _usable(self, state: PartitionState, name: str, op: str) -> KeyState:
        key = self._existing(state, name)
        named_keys.check_operation(key.algorithm, op)
        return key  # disabled keys are refused by the ring, before it unwraps anything

    def _opener(self, state: PartitionState, blob: bytes, name: str, op: str, now: float) -> tuple:
        parsed = ct.parse(blob, max_name_bytes=self.max_name_bytes)
        if name and parsed.name != name:
            raise DecryptFailed(f"the ciphertext was made by key {parsed.name!r}, not by key {name!r}")
        return parsed, self._version(state, parsed.name, parsed.version_id, op, now)

    def _primary(self, state: PartitionState, name: str, op: str, now: float) -> ReadyKey:
        """The primary version of `name`, checked for `op` (inside a batch: once per name and op)."""
        memo = self._memo
        if memo is not None:
            ready = memo.get((name, op))
            if ready is not None:
                return ready
        ready = self.ring.primary_of(self._usable(state, name, op), now=now)
        if memo is not None:
            memo[(name, op)] = ready
        return ready

    def _version(self, state: PartitionState, name: str, version_id: bytes, op: str, now: float) -> ReadyKey:
        """Version `version_id` of `name`, checked for `op` (decrypting ops: min_decryption_version too)."""
        memo = self._memo
        if memo is not None:
            ready = memo.get((name, op, version_id))
            if ready is not None:
                return ready
        self._usable(state, name, op)
        ready = self.ring.version(state, name, version_id, now=now, decrypting=op != "verify")
        if memo is not None:
            memo[(name, op, version_id)] = ready
        return ready

    # --- batches -----------------------------------------------------------------------------------

    def _batch(self, state: PartitionState, msg: object, now: float, entropy: Entropy) -> object:
        result_cls, item_cls = BATCHES[type(msg)]
        items = msg.items  # type: ignore[attr-defined]
        if len(items) > self.max_batch_items:
            raise named_keys.KeyRequestError(f"a batch holds at most {self.max_batch_items} items, got {len(items)}")
        build = _ITEM_RESULTS[item_cls]
        out = []
        append = out.append
        # The state cannot change during one batch (the actor is synchronous): each key is
        # checked and looked up once, whatever the number of its items.
        self._memo = {}
        try:
            for item in items:
                try:
                    core = self._items[type(item)]
                    append(build(core(state, item, now, entropy)))
                except KeyswarmError as exc:
                    append(item_cls(ok=False, error=failure_of(exc)))
        finally:
            self._memo = None
        return result_cls(items=tuple(out))


def _single(core: Callable[..., tuple], build: Callable[[tuple], object]) -> Callable[..., object]:
    return lambda state, msg, now, entropy: build(core(state, msg, now, entropy))


# How each core's result fields become a single result, and a batch item result.
_RESULTS: dict[type, Callable[[tuple], object]] = {
    Encrypt: lambda r: EncryptResult(ciphertext=r[0], version_id=r[1]),
    Decrypt: lambda r: DecryptResult(plaintext=r[0], version_id=r[1]),
    Rewrap: lambda r: RewrapResult(ciphertext=r[0], version_id=r[1]),
    Sign: lambda r: SignResult(signature=r[0], version_id=r[1]),
    Verify: lambda r: VerifyResult(valid=r[0], version_id=r[1]),
    Hmac: lambda r: HmacResult(mac=r[0], version_id=r[1]),
}
_ITEM_RESULTS: dict[type, Callable[[tuple], object]] = {
    EncryptItemResult: lambda r: EncryptItemResult(ok=True, ciphertext=r[0], version_id=r[1]),
    DecryptItemResult: lambda r: DecryptItemResult(ok=True, plaintext=r[0], version_id=r[1]),
    RewrapItemResult: lambda r: RewrapItemResult(ok=True, ciphertext=r[0], version_id=r[1]),
    SignItemResult: lambda r: SignItemResult(ok=True, signature=r[0], version_id=r[1]),
    VerifyItemResult: lambda r: VerifyItemResult(ok=True, valid=r[0], version_id=r[1]),
    HmacItemResult: lambda r: HmacItemResult(ok=True, mac=r[0], version_id=r[1]),
}
#: Each batch item type -> the single request whose core serves it (same field names).
_ITEMS: dict[type, type] = {
    EncryptItem: Encrypt, DecryptItem: Decrypt, RewrapItem: Rewrap, SignItem: Sign, VerifyItem: Verify, HmacItem: Hmac,
}
