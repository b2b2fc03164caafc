"""Envelope encryption: bulk data sealed by the client under a data key the node wraps.

Owns the byte layout of an envelope (docs/protocol.md section 11.6), its
strict parser, and `seal` / `open_` around it. The client library's
`encrypt_envelope` / `decrypt_envelope` use it: the node hands out a data key
(`datakey`: a fresh AES-256 key and the same key sealed under a named key),
the client encrypts the data itself and keeps only the wrapped key beside it.
To decrypt, the node unwraps the data key (`decrypt`, under the same policy
as any decrypt of that named key) and the client opens the data.

Why: a node can seal data sent to it (`encrypt`), but every byte then crosses
the session twice, once each way, each time through an AEAD pass, a copy
into and out of the kernel and the codec. Measured on 2 cores with the
client on the same machine that caps a node at about 6 Gbit/s of 1 MiB
encrypts (`bench/service.py`, `service.bulk_encrypt_gbit_s`); AES-256-GCM in
the client runs at tens of Gbit/s, and the node does one small request per
envelope, not per byte. This is how KMS-backed services do bulk encryption
(AWS KMS GenerateDataKey with the Encryption SDK, Vault's datakey).

Layout (all integers big-endian):

    offset  size  field
    0       4     magic "kse" (6b 73 65), format version 1
    4       4     W: length of the wrapped data key, 1 .. 65,536
    8       W     the wrapped data key: a named-key ciphertext (section 11.2)
    8+W     12    nonce
    20+W    L+16  AES-256-GCM of the L plaintext bytes under the data key, then the tag

    header = bytes 0 .. 8+W (magic, length and wrapped key)
    AAD    = header || context

Rules:
- The wrapped key names the named key and its version; it was sealed with
  the same `context`, so the node only gives the data key back to a caller
  that presents that context, and the data does not open under another.
- The whole header is AAD: swap the wrapped key of one envelope into
  another and the data does not open.
- One data key per envelope: a fresh key and a random 96-bit nonce, so no
  (key, nonce) pair ever repeats.
- Strict parsing, before any crypto: a wrong magic, a length past its bound
  or past the end -> DecodeError. Data that does not authenticate ->
  DecryptFailed, with no partial plaintext.
- Pure: the caller supplies the data key, the nonce and the wrapped key.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyswarm.errors import DecodeError, DecryptFailed

MAGIC = b"kse\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
DATA_KEY_BYTES = 32
MAX_WRAPPED_BYTES = 64 * 1024
_FIXED = len(MAGIC) + 4


def header(wrapped_key: bytes) -> bytes:
    """Magic, length and the wrapped key: the part of an envelope before its nonce."""
    if not 0 < len(wrapped_key) <= MAX_WRAPPED_BYTES:
        raise ValueError(f"a wrapped data key is 1..{MAX_WRAPPED_BYTES} bytes, got {len(wrapped_key)}")
    return MAGIC + len(wrapped_key).to_bytes(4, "big") + wrapped_key


def seal(data_key: bytes, wrapped_key: bytes, plaintext: bytes | bytearray | memoryview, *, nonce: bytes,
         context: bytes = b"") -> bytearray:
    """The envelope of `plaintext`, written in one buffer (the AEAD writes straight into it)."""
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"an envelope's data key is {DATA_KEY_BYTES} bytes (AES-256), got {len(data_key)}")
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    head = header(wrapped_key)
    start = len(head) + NONCE_BYTES
    out = bytearray(start + len(plaintext) + TAG_BYTES)
    out[: len(head)] = head
    out[len(head) : start] = nonce
    with memoryview(out) as view:
        AESGCM(data_key).encrypt_into(nonce, plaintext, head + context, view[start:])
    return out


def wrapped_key(envelope: bytes | bytearray | memoryview) -> bytes:
    """The wrapped data key of `envelope` (to have the node unwrap it); DecodeError if it is no envelope."""
    return bytes(_parse(envelope)[1])


def open_(data_key: bytes, envelope: bytes | bytearray | memoryview, *, context: bytes = b"") -> bytes:
    """The plaintext of `envelope` under its unwrapped `data_key`; DecodeError or DecryptFailed."""
    view, wrapped, head_len = _parse(envelope)
    if len(data_key) != DATA_KEY_BYTES:
        raise DecryptFailed(f"the unwrapped data key is {len(data_key)} bytes, not {DATA_KEY_BYTES}")
    nonce = bytes(view[head_len : head_len + NONCE_BYTES])
    try:
        return AESGCM(data_key).decrypt(nonce, view[head_len + NONCE_BYTES :], bytes(view[:head_len]) + context)
    except InvalidTag:
        raise DecryptFailed("envelope does not authenticate: tampered, truncated, or another context") from None


def _parse(envelope: bytes | bytearray | memoryview) -> tuple[memoryview, memoryview, int]:
    if not isinstance(envelope, (bytes, bytearray, memoryview)):
        raise DecodeError(f"an envelope is bytes, not {type(envelope).__name__}")
    view = memoryview(envelope).cast("B") if isinstance(envelope, memoryview) else memoryview(envelope)
    if len(view) < _FIXED or view[: len(MAGIC)] != MAGIC:
        if len(view) >= 3 and view[:3] == MAGIC[:3]:
            raise DecodeError(f"envelope format version {view[3] if len(view) > 3 else '?'} is not supported "
                              "(this client reads 1)")
        raise DecodeError("not a keyswarm envelope (it does not start with 'kse' and version 1)")
    size = int.from_bytes(view[len(MAGIC) : _FIXED], "big")
    if not 0 < size <= MAX_WRAPPED_BYTES:
        raise DecodeError(f"envelope: wrapped key length {size} is outside 1..{MAX_WRAPPED_BYTES}")
    head_len = _FIXED + size
    if len(view) < head_len + NONCE_BYTES + TAG_BYTES:
        raise DecodeError(f"envelope of {len(view)} bytes is shorter than its header, nonce and tag")
    return view, view[_FIXED:head_len], head_len
