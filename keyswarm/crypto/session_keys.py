"""Session keys: the HKDF schedule, in-session frame sealing, and the replay window.

Owns: HKDF-SHA256 (RFC 5869) and keyswarm's labels for it; the direction
nonces; `SessionChannel`, one end of an established session (its two
direction keys, its send counter and its receive replay window); the
in-session frame `[1, "s", counter, [session_id, ciphertext]]` with
`seal_frame` / `open_frame`; and the errors a frame can earn (`Replayed`,
`FrameNotAuthentic`). docs/protocol.md section 12 ("Sessions") specifies
it, with test vectors.

Rules:
- Pure and sans-IO: no clock, no randomness, no I/O. Keys come from the
  handshake (`keyswarm.crypto.handshake`); counters from the channel.
- One key per direction (c2s, s2c), and the nonce names the direction too:
  nonce = u32 BE direction (1 = c2s, 2 = s2c) || u64 BE counter. A frame
  reflected back at its sender therefore fails twice over (wrong key, wrong
  nonce), and a counter is never used twice under one key because each
  end's send counter only goes up.
- The AAD is the frame header in fixed binary form, not msgpack:
  u8 version (1) || u8 's' || u64 BE counter || session_id (16 bytes).
  Fixed bytes, so a client in another language need not reproduce any
  particular msgpack encoder to authenticate a header.
- Order on receive: parse (DecodeError) -> session id matches the keys
  (FrameNotAuthentic) -> replay check (Replayed) -> AEAD open
  (FrameNotAuthentic) -> only then the window records the counter. A forged
  frame never moves the window, so it cannot push real frames out of it.
- The replay window is WireGuard's / RFC 6479's sliding bitmap over 1,024
  counters: a counter seen before is `Replayed`; one 1,024 or more below the
  highest seen is `Replayed` (too old); any other is accepted once, in any
  order. A jump forward of any size costs O(1): the bitmap is reset, never
  shifted by the jump.
- Two AEAD suites, chosen per session in the handshake (the client offers,
  in its order of preference; the node takes the first it speaks):
  1 = ChaCha20-Poly1305 (DESIGN section 5; the suite of a hello that offers
  none) and 2 = AES-256-GCM. Same 12-byte nonce, AAD and 16-byte tag, so
  the frame is the same. AES-256-GCM is there for speed where the CPU has
  AES instructions: measured here (VAES) 83 Gbit/s against ChaCha20's 29,
  and 0.44 against 1.06 us for a 64-byte frame. A 1 MiB bulk request
  crosses four session AEAD passes (seal and open, each way), which with
  ChaCha20 alone cost more CPU than the 10 Gbit/s target leaves for
  everything (docs/protocol.md, "Suites"). `preferred_suites` orders them
  for this machine, as TLS stacks do.
- AEAD objects are built per call from the raw 32-byte keys: one
  `ChaCha20Poly1305` object holds an OpenSSL context of ~2.2 KB of RSS, so
  keeping two per session would cost 440 MB for 100,000 sessions; building
  one costs ~1 us.
"""

from __future__ import annotations

import hmac
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from keyswarm.errors import DecodeError, DecryptFailed, ErrorCode, ProtocolError, UnsupportedVersion
from keyswarm.transport.codec import (
    DEFAULT_LIMITS,
    UINT_MAX,
    Limits,
    read_msgpack,
    short_repr,
    wire_type_name,
    write_msgpack,
)
from keyswarm.transport.frames import PROTOCOL_VERSION, SUPPORTED_VERSIONS, UINT_WIDTHS

KEY_BYTES = 32
SESSION_ID_BYTES = 16
TAG_BYTES = 16
#: Counters the replay window remembers below the highest one seen.
REPLAY_WINDOW = 1024
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1

#: Session AEAD suites (permanent numbers) and what a hello that names none gets.
SUITE_CHACHA20_POLY1305 = 1
SUITE_AES256_GCM = 2
DEFAULT_SUITE = SUITE_CHACHA20_POLY1305
SUITE_AEADS: dict[int, type] = {SUITE_CHACHA20_POLY1305: ChaCha20Poly1305, SUITE_AES256_GCM: AESGCM}
SUITE_NAMES = {SUITE_CHACHA20_POLY1305: "chacha20-poly1305", SUITE_AES256_GCM: "aes256-gcm"}
#: At most this many suites in one hello.
MAX_OFFERED_SUITES = 16


def cpu_has_aes(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AES instructions (the `aes` flag of /proc/cpuinfo on x86 and Arm).

    False when it cannot tell (no /proc): ChaCha20 is then the safe choice,
    constant-time in software.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                cpuinfo = f.read(1 << 16)
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and "aes" in value.split():
            return True
    return False


def preferred_suites(cpuinfo: str | None = None) -> tuple[int, ...]:
    """Both suites, AES-256-GCM first when the CPU has AES instructions."""
    if cpu_has_aes(cpuinfo):
        return (SUITE_AES256_GCM, SUITE_CHACHA20_POLY1305)
    return (SUITE_CHACHA20_POLY1305, SUITE_AES256_GCM)


#: Nonce prefixes: the direction, as a u32 BE (1 = client to node, 2 = node to client).
C2S = struct.pack(">I", 1)
S2C = struct.pack(">I", 2)

#: Every HKDF-Expand info string starts with this.
LABEL_PREFIX = b"keyswarm/v1 "

_SESSION_KIND = b"s"
_HEADER = struct.Struct(">BcQ")  # version, kind, counter; the session id follows


# --- HKDF-SHA256 (RFC 5869) -----------------------------------------------------
# Written on hmac: the schedule extracts once and expands several labels from
# one PRK, which cryptography's one-shot HKDF class does not offer (and
# Extract on its own is a single HMAC). Same speed as that class; the test
# vectors of RFC 5869 (cases 1 and 3) check it.


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract: HMAC-SHA256 keyed by `salt` over `ikm` (an empty salt is 32 zero bytes)."""
    return hmac.digest(salt or bytes(32), ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-Expand to `length` bytes (at most 255 blocks)."""
    if not 0 < length <= 255 * 32:
        raise ValueError(f"HKDF-Expand length must be 1..8160, got {length}")
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([i]), "sha256")
        out += block
        i += 1
    return out[:length]


def expand_label(prk: bytes, label: str, length: int = KEY_BYTES) -> bytes:
    """HKDF-Expand with info = "keyswarm/v1 " + label (ASCII)."""
    return hkdf_expand(prk, LABEL_PREFIX + label.encode("ascii"), length)


def direction_keys(prk: bytes, prefix: str = "") -> tuple[bytes, bytes]:
    """(c2s, s2c) keys from `prk`: labels "<prefix>c2s" and "<prefix>s2c"."""
    return expand_label(prk, prefix + "c2s"), expand_label(prk, prefix + "s2c")


def nonce(direction: bytes, counter: int) -> bytes:
    """12 bytes: the 4-byte direction prefix, then the counter as u64 BE."""
    return direction + counter.to_bytes(8, "big")


def frame_header(counter: int, session_id: bytes) -> bytes:
    """The AAD of an in-session frame: version, b"s", counter (u64 BE), session id."""
    return _HEADER.pack(PROTOCOL_VERSION, _SESSION_KIND, counter) + session_id


def seal_message(key: bytes, direction: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 with counter 0: for the handshake's single sealed message per key."""
    return ChaCha20Poly1305(key).encrypt(nonce(direction, 0), plaintext, aad)


def open_message(key: bytes, direction: bytes, sealed: bytes, aad: bytes) -> bytes | None:
    """Inverse of `seal_message`; None if it does not authenticate."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(direction, 0), sealed, aad)
    except InvalidTag:
        return None


# --- errors ------------------------------------------------------------------------


class Replayed(ProtocolError):
    """A frame's counter was seen before, or fell out of the replay window.

    `request_id` is the frame's counter, so `frames.error_for` answers the
    frame that earned it. Never retry the same bytes: seal again.
    """

    code = ErrorCode.REPLAYED

    def __init__(self, counter: int, *, too_old: bool, highest: int):
        self.counter = counter
        self.too_old = too_old
        self.request_id = counter
        why = (
            f"is {highest - counter} below the highest seen ({highest}), outside the window of {REPLAY_WINDOW}"
            if too_old
            else "was already received"
        )
        super().__init__(f"in-session counter {counter} {why}")


class FrameNotAuthentic(ProtocolError, DecryptFailed):
    """An in-session frame does not authenticate under its session's keys:
    tampered, truncated, or lifted from another session.

    A `DecryptFailed` (the AEAD refused it) whose wire code is UNAUTHENTICATED:
    for a client it means "this session does not vouch for that frame", not
    "your ciphertext does not open under your named key" (DECRYPT_FAILED).
    """

    code = ErrorCode.UNAUTHENTICATED

    def __init__(self, message: str, *, counter: int | None = None):
        self.request_id = counter
        super().__init__(message)


# --- the replay window ------------------------------------------------------------


class ReplayWindow:
    """Counters received so far: the highest, and a bitmap of the 1,024 below it.

    Bit i of `bitmap` is set when counter `highest - i` was accepted. `check`
    never mutates; `accept` is called only once a frame authenticated.
    """

    __slots__ = ("highest", "bitmap")

    def __init__(self) -> None:
        self.highest = -1  # nothing received yet
        self.bitmap = 0

    def check(self, counter: int) -> None:
        """Raise `Replayed` if `counter` must be refused; change nothing."""
        highest = self.highest
        if counter > highest:
            return
        offset = highest - counter
        if offset >= REPLAY_WINDOW:
            raise Replayed(counter, too_old=True, highest=highest)
        if self.bitmap >> offset & 1:
            raise Replayed(counter, too_old=False, highest=highest)

    def accept(self, counter: int) -> None:
        """Record `counter` (which `check` passed)."""
        highest = self.highest
        if counter > highest:
            shift = counter - highest
            # A jump of a window or more forgets everything: bitmap = just this counter.
            self.bitmap = (self.bitmap << shift | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            self.highest = counter
        else:
            self.bitmap |= 1 << (highest - counter)


# --- one end of a session ---------------------------------------------------------


class SessionChannel(ReplayWindow):
    """One end of an established session: its keys, its send counter, its receive window.

    A client builds one with `client_side=True` (seals c2s, opens s2c), the
    node with `client_side=False`. Memory matters (the node holds 100,000):
    it is a `ReplayWindow` itself rather than holding one, and its two keys
    live in one 64-byte string (seal key, then open key) with a bool for the
    side, which saves ~50 bytes a session for ~50 ns of slicing per frame.
    """

    __slots__ = ("session_id", "keys", "client_side", "next_counter", "aead")

    def __init__(self, session_id: bytes, *, c2s: bytes, s2c: bytes, client_side: bool, next_counter: int = 0,
                 suite: int = DEFAULT_SUITE):
        super().__init__()
        aead = SUITE_AEADS.get(suite)
        if aead is None:
            raise ValueError(f"unknown session suite {suite!r}")
        self.aead = aead  # the AEAD class: seal and open build one per call (module docstring)
        if len(session_id) != SESSION_ID_BYTES:
            raise ValueError(f"a session id is {SESSION_ID_BYTES} bytes, not {len(session_id)}")
        if len(c2s) != KEY_BYTES or len(s2c) != KEY_BYTES:
            raise ValueError(f"session keys are {KEY_BYTES} bytes each")
        self.session_id = session_id
        self.keys = c2s + s2c if client_side else s2c + c2s
        self.client_side = client_side
        self.next_counter = next_counter

    @property
    def suite(self) -> int:
        return SUITE_CHACHA20_POLY1305 if self.aead is ChaCha20Poly1305 else SUITE_AES256_GCM

    @property
    def seal_key(self) -> bytes:
        return self.keys[:KEY_BYTES]

    @property
    def open_key(self) -> bytes:
        return self.keys[KEY_BYTES:]

    def seal(self, plaintext: bytes) -> bytes:
        """The next in-session frame carrying `plaintext`."""
        counter = self.next_counter
        self.next_counter = counter + 1
        return seal_frame(self, counter, plaintext)

    def open(self, data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> tuple[int, bytes]:
        """(counter, plaintext) of a frame sent by the other end; see `open_frame`."""
        return open_frame(self, data, window=self, limits=limits)

    def __repr__(self) -> str:
        side = "client" if self.client_side else "node"
        return (f"SessionChannel({self.session_id.hex()}, {side}, {SUITE_NAMES[self.suite]}, next={self.next_counter}, "
                f"highest={self.highest})")


# --- frames ------------------------------------------------------------------------


#: Frames whose plaintext is at least this long are built in place (`_seal_in_place`).
IN_PLACE_FROM_BYTES = 64 * 1024
_HAS_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(ChaCha20Poly1305, "encrypt_into")


def seal_frame(keys: SessionChannel, counter: int, plaintext: bytes | bytearray | memoryview) -> bytes | bytearray:
    """`[1, "s", counter, [session_id, ciphertext]]` sealed with `keys`' send key.

    The caller owns the counter: it must never repeat under one key
    (`SessionChannel.seal` keeps it). Plaintext is the msgpack of the inner
    request or reply map; this layer does not look inside. A large frame
    comes back as a bytearray (the same bytes; see `_seal_in_place`).
    """
    if type(counter) is not int or not 0 <= counter <= UINT_MAX:
        raise ValueError(f"frame counter must be a uint64, got {counter!r}")
    session_id, client_side = keys.session_id, keys.client_side
    nonce = (C2S if client_side else S2C) + counter.to_bytes(8, "big")
    aead = keys.aead(keys.keys[:KEY_BYTES])
    if len(plaintext) >= IN_PLACE_FROM_BYTES and _HAS_ENCRYPT_INTO:
        return _seal_in_place(aead, nonce, counter, session_id, plaintext)
    ciphertext = aead.encrypt(nonce, plaintext, frame_header(counter, session_id))
    # One msgpack call on the finished structure (the codec's reused Packer).
    return write_msgpack([PROTOCOL_VERSION, "s", counter, [session_id, ciphertext]])


def _seal_in_place(aead: Any, nonce: bytes, counter: int, session_id: bytes,
                   plaintext: bytes | bytearray | memoryview) -> bytearray:
    """A large frame, encrypted straight into its final buffer.

    The msgpack head is written by hand (the encoding msgpack itself gives:
    smallest int form, bin8 session id, bin32 ciphertext) and the AEAD writes
    the ciphertext behind it: one pass over the data instead of three (AEAD
    output, the Packer's buffer, the bytes it returns). At 1 MiB each pass
    costs about as much as the AES-GCM work.
    """
    n = len(plaintext) + TAG_BYTES
    head = b"\x94\x01\xa1s" + _uint(counter) + b"\x92\xc4\x10" + session_id + (
        b"\xc6" + n.to_bytes(4, "big") if n > 0xFFFF else b"\xc5" + n.to_bytes(2, "big"))
    out = bytearray(len(head) + n)
    out[: len(head)] = head
    with memoryview(out) as view:
        aead.encrypt_into(nonce, plaintext, frame_header(counter, session_id), view[len(head):])
    return out


def _uint(value: int) -> bytes:
    """msgpack's encoding of a non-negative int (the smallest form)."""
    if value < 0x80:
        return bytes((value,))
    if value <= 0xFF:
        return b"\xcc" + bytes((value,))
    if value <= 0xFFFF:
        return b"\xcd" + value.to_bytes(2, "big")
    if value <= 0xFFFFFFFF:
        return b"\xce" + value.to_bytes(4, "big")
    return b"\xcf" + value.to_bytes(8, "big")


def _parse_large(data: bytes | bytearray | memoryview) -> tuple[int, bytes, memoryview] | None:
    """(counter, session_id, ciphertext view) of a large frame in the canonical encoding, without copying
    the ciphertext; None for anything else (the general parser then decides, with its errors)."""
    view = memoryview(data)
    if view[:4] != b"\x94\x01\xa1s":
        return None
    tag = view[4]
    if tag < 0x80:
        counter, at = tag, 5
    else:
        width = UINT_WIDTHS.get(tag)
        if width is None:
            return None
        counter, at = int.from_bytes(view[5 : 5 + width], "big"), 5 + width
    if view[at : at + 3] != b"\x92\xc4\x10":
        return None
    session_id = bytes(view[at + 3 : at + 19])
    at += 19
    if view[at : at + 1] != b"\xc6":
        return None
    n = int.from_bytes(view[at + 1 : at + 5], "big")
    if at + 5 + n != len(view) or n < TAG_BYTES or len(session_id) != SESSION_ID_BYTES:
        return None
    return counter, session_id, view[at + 5 :]


def parse_frame(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> tuple[int, bytes, bytes | memoryview]:
    """(counter, session_id, ciphertext) of an in-session frame, unauthenticated.

    The gateway reads the session id here to find the session; nothing in
    it is trusted until `open_frame` authenticated it. `DecodeError` (with
    the counter as `request_id` once known) for anything that is not one.
    A large frame's ciphertext is a view into `data`, not a copy.
    """
    if len(data) > IN_PLACE_FROM_BYTES and len(data) <= limits.max_frame_bytes:
        parsed = _parse_large(data)
        if parsed is not None and len(parsed[2]) <= limits.max_bin_bytes:
            return parsed
    obj: Any = read_msgpack(data, limits=limits)
    if type(obj) is not tuple or not obj:
        raise DecodeError(f"a frame is an array [version, kind, counter, body], got {wire_type_name(obj)}")
    counter = obj[2] if len(obj) > 2 and type(obj[2]) is int and 0 <= obj[2] <= UINT_MAX else None
    version = obj[0]
    if type(version) is not int:
        raise _tagged(DecodeError(f"frame version: expected int, got {wire_type_name(version)}"), counter)
    if version not in SUPPORTED_VERSIONS:
        raise _tagged(UnsupportedVersion(version, SUPPORTED_VERSIONS), counter)
    if len(obj) != 4:
        raise _tagged(DecodeError(f"a version {version} frame has 4 elements, got {len(obj)}"), counter)
    if obj[1] != "s":
        raise _tagged(DecodeError(f"expected a session frame (kind 's'), got kind {short_repr(obj[1])}"), counter)
    if counter is None:
        raise DecodeError(f"frame counter: expected a uint64, got {short_repr(obj[2])}")
    body = obj[3]
    if type(body) is not tuple or len(body) != 2:
        raise _tagged(DecodeError(f"session frame body: expected [session_id, ciphertext], got {short_repr(body)}"),
                      counter)
    session_id, ciphertext = body
    if type(session_id) is not bytes or len(session_id) != SESSION_ID_BYTES:
        raise _tagged(DecodeError(f"session id: expected {SESSION_ID_BYTES} bytes, got {short_repr(session_id)}"),
                      counter)
    if type(ciphertext) is not bytes or len(ciphertext) < TAG_BYTES:
        raise _tagged(DecodeError(f"ciphertext: expected bytes of at least {TAG_BYTES}, got {short_repr(ciphertext)}"),
                      counter)
    return counter, session_id, ciphertext


def open_frame(
    keys: SessionChannel, data: bytes, *, window: ReplayWindow | None, limits: Limits = DEFAULT_LIMITS
) -> tuple[int, bytes]:
    """(counter, plaintext) of a frame sealed by the other end of `keys`' session.

    `window` is required by name so that skipping the replay check is a
    visible choice (`window=None`: test vectors, diagnostics). Raises
    `DecodeError` for bytes that are no session frame, `FrameNotAuthentic`
    for a frame of another session or one that does not authenticate, and
    `Replayed`; the window moves only for a frame that authenticated.
    """
    return open_parsed(keys, *parse_frame(data, limits=limits), window=window)


def open_parsed(
    keys: SessionChannel, counter: int, session_id: bytes, ciphertext: bytes | memoryview, *,
    window: ReplayWindow | None
) -> tuple[int, bytes]:
    """`open_frame` after `parse_frame`: the gateway parses once, looks up, then opens."""
    if not hmac.compare_digest(session_id, keys.session_id):
        raise FrameNotAuthentic("frame names another session", counter=counter)
    if window is not None:
        window.check(counter)
    try:
        direction = S2C if keys.client_side else C2S
        plaintext = keys.aead(keys.keys[KEY_BYTES:]).decrypt(
            direction + counter.to_bytes(8, "big"), ciphertext, frame_header(counter, session_id)
        )
    except InvalidTag:
        raise FrameNotAuthentic(
            f"frame {counter} does not authenticate under session {session_id.hex()}", counter=counter
        ) from None
    if window is not None:
        window.accept(counter)
    return counter, plaintext


def _tagged(exc: DecodeError, counter: int | None) -> DecodeError:
    exc.request_id = counter
    return exc

