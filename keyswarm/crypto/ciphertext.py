"""The keyswarm ciphertext: binary format, text form, and the operations that make and open it.

Owns the byte layout of a named-key ciphertext (docs/protocol.md section 11),
its strict parser, the `ks:v1:` text form, `ReadyKey` (a loaded key version
with its precomputed header: what the key cache stores), and `encrypt`,
`decrypt`, `rewrap` and `datakey` on top of `named_keys`.

Layout (all integers big-endian):

    offset  size  field
    0       2     magic "ks" (6b 73)
    2       1     format version, 1
    3       1     algorithm id: 1 aes256-gcm, 2 chacha20-poly1305
    4       2     name length N, 1..4096 (a node reads up to its max_key_name_bytes)
    6       N     key name, UTF-8
    6+N     1     version id length V, 1..64
    7+N     V     version id (the KeyCreated / KeyVersionAdded `version_id`)
    7+N+V   12    nonce
    19+N+V  L+16  AEAD ciphertext of the L plaintext bytes, then the 16-byte tag

    header = bytes 0 .. 7+N+V (everything before the nonce)
    AAD    = header || context

Rules:
- The header names the key and the key *version id*, not its number:
  numbers can shift under concurrent rotations (storage/fold.py), ids never.
- The whole header, so the name, the version and the algorithm, is AAD, and
  so is the caller's optional `context`. The header is self-delimiting, so
  `header || context` is unambiguous. Change any of them and the ciphertext
  does not open.
- Parsing is strict and bounded: a length past its limit, a short or
  unknown field, trailing garbage that breaks the layout, invalid UTF-8 ->
  `DecodeError` (BAD_REQUEST) before any crypto. Anything that parses but
  does not authenticate -> `DecryptFailed`. No partial plaintext is ever
  returned (the AEAD checks the tag before releasing a byte).
- Nonces are 96 random bits from the caller's `entropy`. With random nonces
  one key version should seal at most 2**32 messages (NIST SP 800-38D);
  rotate keys well before that.
- Text form: `ks:v1:` + base64url without padding (RFC 4648 section 5).
  Decoding is strict: the exact prefix, only the url-safe alphabet, no `=`,
  no whitespace, no impossible length, no non-zero trailing bits (so each
  ciphertext has exactly one text form).
- Hot path: a `ReadyKey` carries its header, built once per key version, so
  an encrypt is one AEAD call and two concatenations; `encrypt_bulk` seals a
  large plaintext in place into one bytearray (no second MiB-sized buffer);
  `parse` reads a large sealed part through a memoryview, so a 1 MiB
  ciphertext is not copied before the AEAD reads it.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyswarm.crypto import named_keys
from keyswarm.crypto.named_keys import (
    AES256_GCM,
    CHACHA20_POLY1305,
    NONCE_BYTES,
    TAG_BYTES,
    AeadKey,
    Entropy,
    KeyRequestError,
    LoadedKey,
)
from keyswarm.errors import DecodeError, DecryptFailed
from keyswarm.storage.bodies import MAX_VERSION_ID_BYTES

MAGIC = b"ks"
FORMAT_VERSION = 1
ALGORITHM_IDS = {AES256_GCM: 1, CHACHA20_POLY1305: 2}
ALGORITHM_BY_ID = {v: k for k, v in ALGORITHM_IDS.items()}
#: The most name bytes the format can carry (= the largest max_key_name_bytes a node accepts).
FORMAT_MAX_NAME_BYTES = 4096
#: What `parse` reads by default: the node's default max_key_name_bytes.
MAX_NAME_BYTES = 256
#: Caller context (associated data) per operation.
MAX_CONTEXT_BYTES = 8192
TEXT_PREFIX = "ks:v1:"

_FIXED = len(MAGIC) + 1 + 1 + 2  # magic, version, algorithm, name length
_MIN_BYTES = _FIXED + 1 + 1 + 1 + NONCE_BYTES + TAG_BYTES  # 1-byte name, 1-byte version id, empty plaintext
_TEXT_BODY = re.compile(r"[A-Za-z0-9_-]*")  # a fixed pattern: nothing here compiles user input
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_FIXED_FIELDS = struct.Struct(">2sBBH")  # magic, format version, algorithm id, name length
_MAX_HEAD = _FIXED + FORMAT_MAX_NAME_BYTES + 1 + MAX_VERSION_ID_BYTES + NONCE_BYTES  # header + nonce at most
_VIEW_FROM = 4096  # sealed parts this long are read through a memoryview instead of sliced
_HAS_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")  # cryptography >= 45


# --- ready keys and headers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadyKey:
    """One version of a named key, loaded and ready: what the key cache stores.

    `header` is the ciphertext header of this version, built once here (b""
    for keys that make no ciphertexts), which keeps it off the hot path.
    """

    name: str
    version_id: bytes
    key: LoadedKey
    header: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        header = encode_header(self.key.algorithm, self.name, self.version_id) if type(self.key) is AeadKey else b""
        object.__setattr__(self, "header", header)

    @property
    def algorithm(self) -> str:
        return self.key.algorithm


def encode_header(algorithm: str, name: str, version_id: bytes) -> bytes:
    """The header of every ciphertext made by version `version_id` of key `name`."""
    algorithm_id = ALGORITHM_IDS.get(algorithm)
    if algorithm_id is None:
        raise KeyRequestError(f"a {algorithm} key makes no ciphertexts")
    encoded = name.encode("utf-8")
    if not 1 <= len(encoded) <= FORMAT_MAX_NAME_BYTES:
        raise KeyRequestError(
            f"key name is {len(encoded)} bytes; a ciphertext names keys of 1..{FORMAT_MAX_NAME_BYTES}"
        )
    if not 1 <= len(version_id) <= MAX_VERSION_ID_BYTES:
        raise KeyRequestError(f"version id is {len(version_id)} bytes (1..{MAX_VERSION_ID_BYTES})")
    return b"".join((
        MAGIC,
        bytes((FORMAT_VERSION, algorithm_id)),
        len(encoded).to_bytes(2, "big"),
        encoded,
        bytes((len(version_id),)),
        version_id,
    ))


# --- parsing -------------------------------------------------------------------------


class Ciphertext(NamedTuple):
    """A parsed ciphertext: who made it (key name, version id, algorithm) and its parts.

    A NamedTuple, not a dataclass: a decrypt builds one per request.
    """

    algorithm: str
    name: str
    version_id: bytes
    header: bytes
    nonce: bytes
    sealed: bytes | memoryview  # AEAD output: ciphertext || tag (a view when large, never a copy of it)


def parse(blob: bytes | bytearray | memoryview, *, max_name_bytes: int = MAX_NAME_BYTES) -> Ciphertext:
    """The parts of `blob`; `DecodeError` naming the first thing wrong. Authenticates nothing."""
    data = blob
    if type(data) is bytes:
        head = data
    else:  # read the header from a bytes copy of at most the largest possible header
        if type(data) is memoryview and data.format != "B":
            try:
                data = data.cast("B")
            except TypeError as exc:
                raise DecodeError(f"ciphertext buffer cannot be read as bytes: {exc}") from None
        head = bytes(data[:_MAX_HEAD])
    n = len(data)
    if n < _MIN_BYTES:
        raise DecodeError(f"ciphertext is truncated: {n} bytes, the smallest is {_MIN_BYTES}")
    magic, version, algorithm_id, name_len = _FIXED_FIELDS.unpack_from(head)
    if magic != MAGIC:
        raise DecodeError("not a keyswarm ciphertext (it does not start with 'ks')")
    if version != FORMAT_VERSION:
        raise DecodeError(f"ciphertext format version {version} is not supported (this node reads {FORMAT_VERSION})")
    algorithm = ALGORITHM_BY_ID.get(algorithm_id)
    if algorithm is None:
        raise DecodeError(f"unknown ciphertext algorithm id {algorithm_id}")
    limit = max_name_bytes if max_name_bytes < FORMAT_MAX_NAME_BYTES else FORMAT_MAX_NAME_BYTES
    if not 1 <= name_len <= limit:
        raise DecodeError(f"ciphertext names a key of {name_len} bytes (1..{limit})")
    vid_at = _FIXED + name_len
    if n <= vid_at:
        raise DecodeError("ciphertext is truncated inside the key name")
    vid_len = head[vid_at]
    if not 1 <= vid_len <= MAX_VERSION_ID_BYTES:
        raise DecodeError(f"ciphertext names a version id of {vid_len} bytes (1..{MAX_VERSION_ID_BYTES})")
    nonce_at = vid_at + 1 + vid_len
    sealed_at = nonce_at + NONCE_BYTES
    if n < sealed_at + TAG_BYTES:
        raise DecodeError(f"ciphertext is truncated: {n} bytes, its header needs {sealed_at + TAG_BYTES}")
    try:
        name = str(head[_FIXED:vid_at], "utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"ciphertext key name is not UTF-8: {exc.reason}") from None
    if n - sealed_at >= _VIEW_FROM:
        sealed: bytes | memoryview = memoryview(data)[sealed_at:]
    else:
        sealed = data[sealed_at:] if data is head else bytes(data[sealed_at:])
    return Ciphertext(algorithm, name, head[vid_at + 1 : nonce_at], head[:nonce_at], head[nonce_at:sealed_at], sealed)


# --- operations ----------------------------------------------------------------------


def _check_context(context: bytes) -> None:
    if len(context) > MAX_CONTEXT_BYTES:
        raise KeyRequestError(f"context is {len(context)} bytes (at most {MAX_CONTEXT_BYTES})")


def _nonce(entropy: Entropy) -> bytes:
    nonce = entropy(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise AssertionError(f"entropy source returned {len(nonce)} bytes, asked for {NONCE_BYTES}")
    return nonce


def encrypt(key: ReadyKey, plaintext: bytes, *, entropy: Entropy, context: bytes = b"") -> bytes:
    """A new ciphertext of `plaintext` under `key`, with `context` bound as associated data."""
    header = key.header
    if not header:
        named_keys.check_operation(key.algorithm, "encrypt")
    if context:
        _check_context(context)
    nonce = _nonce(entropy)
    aad = header + context if context else header
    return header + nonce + key.key.aead.encrypt(nonce, plaintext, aad)  # type: ignore[union-attr]


def encrypt_bulk(key: ReadyKey, plaintext: bytes | memoryview, *, entropy: Entropy,
                 context: bytes = b"") -> bytearray:
    """The same bytes as `encrypt`, sealed in place into one new bytearray.

    For large plaintexts (a 1 MiB frame): `encrypt` concatenates the header
    and the AEAD output, and that second MiB-sized buffer, with the page
    faults of allocating it, costs several times the AES-GCM work itself.
    """
    header = key.header
    if not header:
        named_keys.check_operation(key.algorithm, "encrypt")
    if context:
        _check_context(context)
    nonce = _nonce(entropy)
    aad = header + context if context else header
    start = len(header) + NONCE_BYTES
    out = bytearray(start + len(plaintext) + TAG_BYTES)
    out[: len(header)] = header
    out[len(header) : start] = nonce
    aead = key.key.aead  # type: ignore[union-attr]
    if _HAS_ENCRYPT_INTO:
        with memoryview(out) as view:
            aead.encrypt_into(nonce, plaintext, aad, view[start:])
    else:  # older cryptography: one copy
        out[start:] = aead.encrypt(nonce, plaintext, aad)
    return out


def decrypt(ciphertext: Ciphertext | bytes, key: ReadyKey, *, context: bytes = b"") -> bytes:
    """The plaintext of `ciphertext`, which must have been made by `key` (name, version, algorithm).

    The caller finds `key` from `parse(blob).name` and `.version_id` (and checks
    policy for that name); a ciphertext of another key is DecryptFailed.
    """
    if not key.header:
        named_keys.check_operation(key.algorithm, "decrypt")
    parsed = ciphertext if type(ciphertext) is Ciphertext else parse(ciphertext)  # type: ignore[arg-type]
    header = parsed.header
    if header != key.header:
        raise DecryptFailed(
            f"ciphertext was made by key {parsed.name!r} version {parsed.version_id.hex()} ({parsed.algorithm}), "
            f"not by key {key.name!r} version {key.version_id.hex()}"
        )
    if context:
        _check_context(context)
    aad = header + context if context else header
    try:
        return key.key.aead.decrypt(parsed.nonce, parsed.sealed, aad)  # type: ignore[union-attr, arg-type]
    except InvalidTag:
        raise DecryptFailed("ciphertext does not authenticate: tampered, truncated, or another context") from None


def rewrap(ciphertext: Ciphertext | bytes, old: ReadyKey, new: ReadyKey, *, entropy: Entropy,
           context: bytes = b"") -> bytes:
    """`ciphertext` (made by `old`) opened and sealed again under `new`, normally the primary version.

    The plaintext never leaves this function. Always a fresh nonce, even when
    `old` is `new`, so a rewrap also proves the ciphertext authentic.
    """
    return encrypt(new, decrypt(ciphertext, old, context=context), entropy=entropy, context=context)


@dataclass(frozen=True, slots=True)
class DataKey:
    """A fresh data key: its plaintext (for the caller to use, then forget) and its ciphertext."""

    plaintext: bytes = field(repr=False)
    ciphertext: bytes


def datakey(key: ReadyKey, *, entropy: Entropy, context: bytes = b"", length: int = 32) -> DataKey:
    """A random data key of `length` bytes and the same key sealed under `key` (decrypt it later
    with `decrypt`). Envelope encryption: bulk data never has to travel to the node."""
    if not key.header:
        named_keys.check_operation(key.algorithm, "datakey")
    plaintext = named_keys.generate_data_key(entropy, length)
    return DataKey(plaintext, encrypt(key, plaintext, entropy=entropy, context=context))


# --- text form -----------------------------------------------------------------------


def to_text(blob: bytes) -> str:
    """`ks:v1:` + base64url of `blob`, without padding."""
    return TEXT_PREFIX + base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")


def from_text(text: str) -> bytes:
    """The bytes of a `ks:v1:` text form; DecodeError for anything not exactly in that form."""
    if type(text) is not str:
        raise DecodeError(f"a text ciphertext is a str, not {type(text).__name__}")
    if not text.startswith(TEXT_PREFIX):
        if text.startswith("ks:v") and text[4:].split(":", 1)[0].isdigit():
            version = text[4:].split(":", 1)[0]
            raise DecodeError(f"text ciphertext version v{version} is not supported (this node reads v1)")
        raise DecodeError("not a keyswarm text ciphertext (it does not start with 'ks:v1:')")
    body = text[len(TEXT_PREFIX):]
    if not _TEXT_BODY.fullmatch(body):
        raise DecodeError("text ciphertext has characters outside base64url (A-Z a-z 0-9 - _; no padding, no spaces)")
    remainder = len(body) % 4
    if remainder == 1:
        raise DecodeError(f"text ciphertext has an impossible base64 length ({len(body)} characters)")
    if remainder and _B64URL.index(body[-1]) & (0x0F if remainder == 2 else 0x03):
        raise DecodeError("text ciphertext is not canonical base64url (non-zero trailing bits)")
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
