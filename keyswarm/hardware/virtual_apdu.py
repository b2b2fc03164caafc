"""APDU framing for the virtual YubiKey: command parsing, BER-TLV, status words, replies.

This module owns the byte-level rules every virtual applet shares (ISO 7816-4
as a YubiKey 5 applies them) and nothing else:

- `parse_command` reads the four ISO cases in short and extended form; any
  APDU whose length bytes disagree with its size is rejected with 6700.
- `parse_tlvs` reads the BER-TLV subset the PIV applet speaks (tags of one
  to three bytes, definite lengths of at most two bytes). Anything else is
  6A80, as the device answers; the indefinite form yubikit's own parser
  accepts is refused here because the card refuses it.
- Applets signal an error answer by raising `ApduReject(sw)`; the connection
  turns it into a status word. `ApduReject` never leaves the emulator, and no
  input bytes may make this module raise anything else.
- `Reply.work` names the operation the device performed so the latency model
  can charge for it; framing code never reads a clock.

Pure: no clock, no threads, no randomness.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# --- status words (the subset a YubiKey 5 answers) --------------------------

SW_OK = 0x9000
SW_MORE_DATA = 0x6100  # | remaining byte count (00 = 256 or more)
SW_RETRIES = 0x63C0  # | tries left
SW_WRONG_LENGTH = 0x6700
SW_LAST_COMMAND_EXPECTED = 0x6883  # a command chain was broken off
SW_SECURITY_STATUS_NOT_SATISFIED = 0x6982
SW_AUTH_METHOD_BLOCKED = 0x6983
SW_CONDITIONS_NOT_SATISFIED = 0x6985
SW_WRONG_DATA = 0x6A80
SW_FILE_NOT_FOUND = 0x6A82
SW_NO_SPACE = 0x6A84
SW_WRONG_P1P2 = 0x6A86
SW_REFERENCE_NOT_FOUND = 0x6A88
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00
SW_NO_DIAGNOSIS = 0x6F00

#: CLA bit that marks "more of this command follows" (ISO 7816-4 command chaining).
CLA_CHAINING = 0x10
INS_SELECT = 0xA4
INS_GET_RESPONSE = 0xC0

#: Largest APDU a YubiKey >= 4.3 accepts (yubikit's `_MaxApduSize.YK4_3`).
MAX_APDU_BYTES = 3062
#: Largest command body the device assembles from a chain. The YubiKey's
#: buffer holds one full PIV object write (3052 bytes plus its tags).
MAX_CHAINED_DATA_BYTES = 3072


def sw_retries(tries_left: int) -> int:
    """The 63Cx status word: x tries left, capped at 15 as the encoding allows."""
    return SW_RETRIES | min(tries_left, 0x0F)


class ApduReject(Exception):
    """An applet's error answer. Caught by the connection, never seen by callers."""

    def __init__(self, sw: int, work: Work | None = None):
        super().__init__(f"SW={sw:04X}")
        self.sw = sw
        # The operation the device performed before refusing (a wrong PIN
        # still costs a PIN check), so refusals are charged like the device.
        self.work = work


class Work(enum.Enum):
    """What the device spent its time on while answering; the latency model prices each."""

    APDU = "apdu"  # framing and a table lookup: every APDU pays this
    PIN = "pin"  # PIN / PUK check (VERIFY, CHANGE REFERENCE, RESET RETRY)
    MGMT_AUTH = "mgmt_auth"  # one step of the management-key challenge-response
    SIGN = "sign"  # EC / Ed25519 private-key signature
    ECDH = "ecdh"  # EC / X25519 key agreement
    KEYGEN = "keygen"  # on-device key generation
    ATTEST = "attest"  # build and sign an attestation certificate
    HMAC = "hmac"  # OTP HMAC-SHA1 challenge-response
    FLASH_WRITE = "flash_write"  # persistent write: objects, key import, config


@dataclass(frozen=True, slots=True)
class Reply:
    """An applet's answer: response data, status word, and what it cost."""

    data: bytes = b""
    sw: int = SW_OK
    work: Work = Work.APDU
    touch: bool = False  # the device waited for a touch before answering


@dataclass(frozen=True, slots=True)
class Command:
    """One command APDU, parsed. `le` is None when the APDU carried no Le."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None
    extended: bool

    @property
    def chained(self) -> bool:
        return bool(self.cla & CLA_CHAINING)

    @property
    def header(self) -> tuple[int, int, int]:
        return (self.ins, self.p1, self.p2)

    def with_data(self, data: bytes) -> Command:
        """The same command carrying `data` (the body assembled from a chain)."""
        return Command(self.cla & ~CLA_CHAINING, self.ins, self.p1, self.p2, data, self.le, self.extended)


def parse_command(apdu: bytes, max_apdu_bytes: int = MAX_APDU_BYTES) -> Command:
    """Parse a command APDU (ISO 7816-4 cases 1-4, short or extended).

    Raises `ApduReject(6700)` when the length bytes do not match the APDU.
    """
    n = len(apdu)
    if n < 4 or n > max_apdu_bytes:
        raise ApduReject(SW_WRONG_LENGTH)
    cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
    if n == 4:  # case 1: no data, no Le
        return Command(cla, ins, p1, p2, b"", None, False)
    b4 = apdu[4]
    if n == 5:  # case 2 short: Le only; 00 means 256
        return Command(cla, ins, p1, p2, b"", b4 or 256, False)
    if b4 != 0:  # short Lc
        if n == 5 + b4:
            return Command(cla, ins, p1, p2, apdu[5:], None, False)
        if n == 6 + b4:
            return Command(cla, ins, p1, p2, apdu[5:-1], apdu[-1] or 256, False)
        raise ApduReject(SW_WRONG_LENGTH)
    # Extended form: a 00 byte, then two length bytes.
    if n < 7:
        raise ApduReject(SW_WRONG_LENGTH)
    l16 = apdu[5] << 8 | apdu[6]
    if n == 7:  # case 2 extended: Le only; 0000 means 65536
        return Command(cla, ins, p1, p2, b"", l16 or 65536, True)
    if l16 == 0:  # an extended Lc of zero is not an encoding
        raise ApduReject(SW_WRONG_LENGTH)
    if n == 7 + l16:
        return Command(cla, ins, p1, p2, apdu[7:], None, True)
    if n == 9 + l16:
        le = apdu[-2] << 8 | apdu[-1]
        return Command(cla, ins, p1, p2, apdu[7:-2], le or 65536, True)
    raise ApduReject(SW_WRONG_LENGTH)


def more_data_sw(remaining: int) -> int:
    """61xx: xx more bytes wait for GET RESPONSE (00 means 256 or more)."""
    return SW_MORE_DATA | (remaining if remaining < 256 else 0)


# --- BER-TLV -----------------------------------------------------------------


def tlv(tag: int, value: bytes = b"") -> bytes:
    """Encode one TLV with a definite length (short, 81 or 82 form)."""
    tag_bytes = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    elif n <= 0xFF:
        length = bytes([0x81, n])
    elif n <= 0xFFFF:
        length = bytes([0x82]) + n.to_bytes(2, "big")
    else:
        raise AssertionError(f"TLV value of {n} bytes: the device never builds one")
    return tag_bytes + length + value


def parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Parse concatenated TLVs. Malformed encodings raise `ApduReject(6A80)`."""
    out = []
    i, n = 0, len(data)
    while i < n:
        tag = data[i]
        i += 1
        if tag & 0x1F == 0x1F:  # multi-byte tag: continuation bytes have bit 8 set
            for _ in range(2):
                if i >= n:
                    raise ApduReject(SW_WRONG_DATA)
                b = data[i]
                i += 1
                tag = tag << 8 | b
                if not b & 0x80:
                    break
            else:
                raise ApduReject(SW_WRONG_DATA)
        if i >= n:
            raise ApduReject(SW_WRONG_DATA)
        length = data[i]
        i += 1
        if length == 0x81 or length == 0x82:
            width = length - 0x80
            if i + width > n:
                raise ApduReject(SW_WRONG_DATA)
            length = int.from_bytes(data[i : i + width], "big")
            i += width
        elif length >= 0x80:  # indefinite or wider lengths: not spoken by the card
            raise ApduReject(SW_WRONG_DATA)
        if i + length > n:
            raise ApduReject(SW_WRONG_DATA)
        out.append((tag, data[i : i + length]))
        i += length
    return out


def parse_tlv_dict(data: bytes) -> dict[int, bytes]:
    """Parse TLVs into {tag: value}; a repeated tag is malformed (6A80)."""
    out: dict[int, bytes] = {}
    for tag, value in parse_tlvs(data):
        if tag in out:
            raise ApduReject(SW_WRONG_DATA)
        out[tag] = value
    return out


def unwrap_tlv(data: bytes, tag: int) -> bytes:
    """The value of `data` when it is exactly one TLV with `tag`; else 6A80."""
    items = parse_tlvs(data)
    if len(items) != 1 or items[0][0] != tag:
        raise ApduReject(SW_WRONG_DATA)
    return items[0][1]
