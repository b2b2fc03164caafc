"""The virtual YubiKey's OTP applet (HMAC-SHA1 challenge-response) and management applet (device info).

OTP applet, as yubikit's `YubiOtpSession` drives it over CCID:
- SELECT and INS 03 answer the 6-byte status: firmware (3), programming
  sequence, touch level (little-endian 16 bits: slot valid / touch bits).
- INS 01, P1 = the "slot" command. Writes (CONFIG_1/2, UPDATE_1/2, SWAP)
  carry a 52-byte configuration (fixed 16, uid 6, key 16, access code 6,
  fixed length, ext / tkt / cfg flags, RFU 2, CRC16 little-endian, stored
  inverted so the residual over all 52 bytes is F0B8) and the slot's current
  6-byte access code. A rejected write (bad CRC, wrong access code, update of
  a slot that forbids it) answers the status with the sequence *unchanged*,
  as the device does; yubikit then raises CommandRejectedError. An accepted
  write increments the sequence, or sets it to 0 when no slot stays configured.
- CHAL_HMAC_1/2 (P1 30 / 38) take a 64-byte challenge. With HMAC_LT64 set in
  the slot's cfg flags, every trailing byte equal to the last byte is
  padding and is stripped before the MAC: yubikit pads with a byte that
  differs from the challenge's last, so a challenge of 0..63 bytes round-trips
  exactly, while a 64-byte one loses its trailing run. The key is key(16) +
  uid[:4]; the answer is exactly 20 bytes.

Management applet: SELECT answers the firmware version as ASCII; INS 1D reads
device-info pages (length byte + TLVs; tag 10 announces another page).
Writes to the device configuration are not emulated (6D00).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from keyswarm.hardware import virtual_apdu as apdu
from keyswarm.hardware.virtual_apdu import ApduReject, Command, Reply, Work, tlv
from keyswarm.hardware.virtual_profile import FirmwareProfile

OTP_AID = bytes.fromhex("a0000005272001")
MANAGEMENT_AID = bytes.fromhex("a000000527471117")

INS_CONFIG, INS_STATUS, INS_READ_DEVICE_INFO = 0x01, 0x03, 0x1D
CONFIG_1, CONFIG_2, UPDATE_1, UPDATE_2, SWAP = 0x01, 0x03, 0x04, 0x05, 0x06
DEVICE_SERIAL, CHAL_HMAC_1, CHAL_HMAC_2 = 0x10, 0x30, 0x38

CONFIG_BYTES, ACCESS_CODE_BYTES, CHALLENGE_BYTES = 52, 6, 64
_CRC_OK_RESIDUAL = 0xF0B8
_NO_ACCESS_CODE = bytes(ACCESS_CODE_BYTES)

# Flag bits (yubikit `yubiotp`): the ones the emulator reads.
TKT_CHAL_RESP = 0x40
CFG_CHAL_HMAC, CFG_HMAC_LT64, CFG_CHAL_BTN_TRIG = 0x22, 0x04, 0x08
EXT_ALLOW_UPDATE = 0x20
# Bits an UPDATE may change (yubikit's *_UPDATE_MASK).
_TKT_UPDATE_MASK, _CFG_UPDATE_MASK, _EXT_UPDATE_MASK = 0x3F, 0x0C, 0xFF
# Touch-level bits (yubikit `CFGSTATE`).
_SLOT_VALID = (0x01, 0x02)
_SLOT_TOUCH = (0x04, 0x08)


def crc16(data: bytes) -> int:
    """The YubiKey's CRC16 (ISO 13239, reflected 0x8408, initial FFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


@dataclass(frozen=True, slots=True)
class SlotConfig:
    """One programmed OTP slot (the 52-byte record minus its CRC)."""

    fixed: bytes
    uid: bytes
    key: bytes
    access_code: bytes
    ext: int
    tkt: int
    cfg: int

    @classmethod
    def parse(cls, record: bytes) -> SlotConfig:
        return cls(
            fixed=record[: record[44] if record[44] <= 16 else 16],
            uid=record[16:22],
            key=record[22:38],
            access_code=record[38:44],
            ext=record[45],
            tkt=record[46],
            cfg=record[47],
        )

    @property
    def is_hmac(self) -> bool:
        return bool(self.tkt & TKT_CHAL_RESP) and self.cfg & CFG_CHAL_HMAC == CFG_CHAL_HMAC

    @property
    def touch_triggered(self) -> bool:
        """A keyboard slot (fires on touch), as opposed to challenge-response."""
        return not self.tkt & TKT_CHAL_RESP

    def hmac_sha1(self, challenge: bytes) -> bytes:
        if self.cfg & CFG_HMAC_LT64:
            challenge = challenge.rstrip(challenge[-1:])
        return hmac.new(self.key + self.uid[:4], challenge, hashlib.sha1).digest()

    def to_state(self) -> list[object]:
        return [self.fixed.hex(), self.uid.hex(), self.key.hex(), self.access_code.hex(), self.ext, self.tkt, self.cfg]

    @classmethod
    def from_state(cls, state: list) -> SlotConfig:
        fixed, uid, key, access, ext, tkt, cfg = state
        config = cls(bytes.fromhex(fixed), bytes.fromhex(uid), bytes.fromhex(key), bytes.fromhex(access), ext, tkt, cfg)
        if len(config.uid) != 6 or len(config.key) != 16 or len(config.access_code) != 6:
            raise ValueError("OTP slot fields have the wrong lengths")
        return config


class OtpApplet:
    """The YubiOTP applet over CCID: two slots and a programming sequence."""

    def __init__(self, profile: FirmwareProfile, serial: int):
        self._profile = profile
        self._serial = serial
        self._slots: list[SlotConfig | None] = [None, None]
        self._sequence = 0

    def status(self) -> bytes:
        touch_level = 0
        for index, slot in enumerate(self._slots):
            if slot is not None:
                touch_level |= _SLOT_VALID[index] | (_SLOT_TOUCH[index] if slot.touch_triggered else 0)
        return bytes(self._profile.version) + bytes([self._sequence]) + touch_level.to_bytes(2, "little")

    def select(self) -> Reply:
        return Reply(self.status())

    def deselect(self) -> None:
        """Nothing volatile: OTP keeps no session state."""

    def handle(self, cmd: Command) -> Reply:
        if cmd.ins == INS_STATUS:
            return Reply(self.status())
        if cmd.ins != INS_CONFIG:
            raise ApduReject(apdu.SW_INS_NOT_SUPPORTED)
        if cmd.p2 != 0:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        if cmd.p1 in (CONFIG_1, CONFIG_2, UPDATE_1, UPDATE_2, SWAP):
            return self._write(cmd.p1, cmd.data)
        if cmd.p1 == DEVICE_SERIAL:
            return Reply(self._serial.to_bytes(4, "big"))
        if cmd.p1 in (CHAL_HMAC_1, CHAL_HMAC_2):
            return self._challenge(0 if cmd.p1 == CHAL_HMAC_1 else 1, cmd.data)
        raise ApduReject(apdu.SW_WRONG_P1P2)  # Yubico OTP / NDEF / scan map: not emulated

    def _challenge(self, index: int, challenge: bytes) -> Reply:
        if len(challenge) != CHALLENGE_BYTES:
            raise ApduReject(apdu.SW_WRONG_LENGTH)
        slot = self._slots[index]
        if slot is None or not slot.is_hmac:  # emulator's choice of word for "nothing to answer with"
            raise ApduReject(apdu.SW_CONDITIONS_NOT_SATISFIED)
        touch = bool(slot.cfg & CFG_CHAL_BTN_TRIG)
        return Reply(slot.hmac_sha1(challenge), work=Work.HMAC, touch=touch)

    def _write(self, command: int, data: bytes) -> Reply:
        if command == SWAP:
            if len(data) != ACCESS_CODE_BYTES:
                raise ApduReject(apdu.SW_WRONG_LENGTH)
            self._slots.reverse()
            return self._accepted()
        if len(data) != CONFIG_BYTES + ACCESS_CODE_BYTES:
            raise ApduReject(apdu.SW_WRONG_LENGTH)
        record, offered_code = data[:CONFIG_BYTES], data[CONFIG_BYTES:]
        index = 0 if command in (CONFIG_1, UPDATE_1) else 1
        current = self._slots[index]
        if current is not None and not hmac.compare_digest(current.access_code, offered_code):
            return Reply(self.status(), work=Work.FLASH_WRITE)  # rejected: sequence unchanged
        if command in (CONFIG_1, CONFIG_2) and record == bytes(CONFIG_BYTES):
            self._slots[index] = None  # yubikit's delete_slot writes all zeros
            return self._accepted()
        if crc16(record) != _CRC_OK_RESIDUAL:
            return Reply(self.status(), work=Work.FLASH_WRITE)
        new = SlotConfig.parse(record)
        if command in (UPDATE_1, UPDATE_2):
            if current is None or not current.ext & EXT_ALLOW_UPDATE:
                return Reply(self.status(), work=Work.FLASH_WRITE)
            new = SlotConfig(
                fixed=current.fixed,
                uid=current.uid,
                key=current.key,
                access_code=new.access_code,
                ext=current.ext & ~_EXT_UPDATE_MASK | new.ext & _EXT_UPDATE_MASK,
                tkt=current.tkt & ~_TKT_UPDATE_MASK | new.tkt & _TKT_UPDATE_MASK,
                cfg=current.cfg & ~_CFG_UPDATE_MASK | new.cfg & _CFG_UPDATE_MASK,
            )
        self._slots[index] = new
        return self._accepted()

    def _accepted(self) -> Reply:
        if all(slot is None for slot in self._slots):
            self._sequence = 0
        else:
            # yubikit accepts exactly previous + 1; past 255 the byte wraps to 1, never 0 (which means "empty").
            self._sequence = self._sequence % 255 + 1
        return Reply(self.status(), work=Work.FLASH_WRITE)

    def to_state(self) -> dict[str, object]:
        """Slots and sequence; HMAC keys in the clear (test device)."""
        return {"sequence": self._sequence, "slots": [None if s is None else s.to_state() for s in self._slots]}

    def load_state(self, state: dict) -> None:
        slots = [None if s is None else SlotConfig.from_state(s) for s in state["slots"]]
        sequence = int(state["sequence"])
        if len(slots) != 2 or not 0 <= sequence <= 255:
            raise ValueError("OTP state needs two slots and a one-byte sequence")
        self._slots, self._sequence = slots, sequence


class ManagementApplet:
    """Device information, read-only: what `ManagementSession.read_device_info()` needs."""

    def __init__(self, profile: FirmwareProfile, serial: int):
        self._profile = profile
        self._serial = serial

    def select(self) -> Reply:
        return Reply(self._profile.version_string.encode("ascii"))

    def deselect(self) -> None:
        """Nothing volatile."""

    def _pages(self) -> list[bytes]:
        p = self._profile
        caps = p.capabilities.to_bytes(2, "big")
        first = (
            tlv(0x01, caps)  # USB supported
            + tlv(0x02, self._serial.to_bytes(4, "big"))
            + tlv(0x03, caps)  # USB enabled
            + tlv(0x04, bytes([p.form_factor]))
            + tlv(0x05, bytes(p.version))
            + tlv(0x06, b"\x00\x00")  # auto-eject timeout
            + tlv(0x07, b"\x0f")  # challenge-response timeout, 15 s
            + tlv(0x08, b"\x00")  # device flags
            + tlv(0x0A, b"\x00")  # configuration not locked
        )
        if p.nfc:
            first += tlv(0x0D, caps) + tlv(0x0E, caps)
        if p.version < (5, 7, 0):
            return [first]
        # 5.7 reports more than one page holds: exercise yubikit's paging.
        second = tlv(0x14, b"\x00") + tlv(0x15, b"\x00") + tlv(0x16, b"\x00") + tlv(0x17, b"\x00") + tlv(0x18, b"\x00\x00")
        return [first + tlv(0x10, b"\x01"), second]

    def handle(self, cmd: Command) -> Reply:
        if cmd.ins != INS_READ_DEVICE_INFO:
            raise ApduReject(apdu.SW_INS_NOT_SUPPORTED)
        if cmd.p2 != 0:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        pages = self._pages()
        page = pages[cmd.p1] if cmd.p1 < len(pages) else b""
        return Reply(bytes([len(page)]) + page)
