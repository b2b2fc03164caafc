"""`VirtualYubiKey`: an APDU-level YubiKey 5 that yubikit's sessions run on unmodified.

    device = VirtualYubiKey("5.7.2", serial=12345678, latency=LatencyModel.zero())
    piv = PivSession(device)            # yubikit, as on hardware
    otp = YubiOtpSession(device)
    info = ManagementSession(device).read_device_info()

This module owns the *connection*: APDU framing (short and extended APDUs,
command chaining with CLA 10, response chaining with 61xx / GET RESPONSE
00 C0), applet selection, the latency model, fault injection, the overlap
detector, and saving / loading device state. The applets live in
`virtual_piv` (PIV) and `virtual_otp` (OTP, management).

Rules:
- Any byte string sent gets a status word back, never a Python exception,
  except these, which model the hardware and the host:
  * unplugged: every APDU raises pyscard's
    `smartcard.Exceptions.CardConnectionException` ("Card was removed",
    hresult SCARD_W_REMOVED_CARD), exactly what ykman's
    `ScardSmartCardConnection` lets through: yubikit does not wrap it.
    An APDU in flight when `unplug()` is called raises it too.
  * closed: `CardConnectionException("Card not connected")`, as pyscard
    raises after a disconnect; `connect()` opens the connection again.
  * overlap: two APDUs in flight at once (two threads) raise
    `AssertionError` naming both. A YubiKey answers one APDU at a time; the
    hardware actor must serialise, and this is the check that it does.
- Volatile state (PIN verified, management key authenticated, selected
  applet, half-sent chains, unread responses) ends with the session: on
  SELECT of any applet, `close()`, and `unplug()`. Keys, PIN counters and
  objects persist, and `to_bytes()` / `save()` carry them across restarts.
- Time is an input: every APDU costs `LatencyModel.cost_s(...)` seconds,
  handed to the injected `sleep` (tests pass `LatencyModel.zero()`, the
  simulator passes a sleep that advances virtual time). `busy_s` totals it.
- Randomness is an input: `entropy(n) -> bytes` (default `os.urandom`)
  feeds the serial, keys, witnesses and certificate serial numbers, so
  `entropy=random.Random(seed).randbytes` gives the same device every run.

THE SAVED STATE HOLDS EVERY PRIVATE KEY, PIN, PUK, MANAGEMENT KEY AND HMAC
SECRET IN THE CLEAR. It is a test device: `save()` writes the file 0600, but
nothing stored in a virtual YubiKey is protected. Never use one for real keys.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from smartcard.Exceptions import CardConnectionException
from smartcard.scard import SCARD_W_REMOVED_CARD
from yubikit.core import TRANSPORT, Version
from yubikit.core.smartcard import SmartCardConnection

from keyswarm.errors import ConfigError, TokenError
from keyswarm.hardware import virtual_apdu as apdu
from keyswarm.hardware.virtual_apdu import ApduReject, Command, Reply, Work, parse_command
from keyswarm.hardware.virtual_otp import MANAGEMENT_AID, OTP_AID, ManagementApplet, OtpApplet
from keyswarm.hardware.virtual_piv import PIV_AID, PivApplet
from keyswarm.hardware.virtual_profile import FirmwareProfile, LatencyModel, firmware_profile

__all__ = ["FirmwareProfile", "LatencyModel", "VirtualStateError", "VirtualYubiKey", "firmware_profile"]

Entropy = Callable[[int], bytes]
_STATE_FORMAT = "keyswarm-virtual-yubikey"
_STATE_VERSION = 1


class VirtualStateError(TokenError):
    """A saved virtual YubiKey state that cannot be read (corrupt, truncated, or not one)."""


def _card_removed() -> CardConnectionException:
    # Byte for byte what pyscard raises from SCardTransmit once the card is gone.
    return CardConnectionException(
        "Failed to transmit with protocol T1. Card was removed.", hresult=SCARD_W_REMOVED_CARD
    )


class VirtualYubiKey(SmartCardConnection):
    """A YubiKey 5 (firmware 5.4.x or 5.7.x) behind a `SmartCardConnection`.

    Args:
        firmware: "5.4.3", "5.7.2" (any 5.4.x / 5.7.x), or a `FirmwareProfile`.
        serial: the device serial; default drawn from `entropy` (8 digits).
        entropy: `entropy(n) -> n bytes`; default `os.urandom`.
        latency: seconds per operation; default `LatencyModel()` (real-device figures).
        sleep: called with each APDU's cost in seconds; default `time.sleep`.
        transport: USB (default; yubikit then sends extended APDUs) or NFC
            (yubikit sends short APDUs: command and response chaining).
    """

    def __init__(
        self,
        firmware: str | FirmwareProfile = "5.7.2",
        *,
        serial: int | None = None,
        entropy: Entropy | None = None,
        latency: LatencyModel | None = None,
        sleep: Callable[[float], None] | None = None,
        transport: TRANSPORT = TRANSPORT.USB,
    ):
        profile = firmware if isinstance(firmware, FirmwareProfile) else firmware_profile(firmware)
        self._init_runtime(profile, entropy, latency, sleep, transport)
        if serial is None:
            serial = 10_000_000 + int.from_bytes(self._entropy(4), "big") % 90_000_000
        self._init_applets(serial)
        self._test_root = self._piv.manufacture()

    def _init_runtime(
        self,
        profile: FirmwareProfile,
        entropy: Entropy | None,
        latency: LatencyModel | None,
        sleep: Callable[[float], None] | None,
        transport: TRANSPORT,
    ) -> None:
        self._profile: FirmwareProfile = profile
        self._entropy: Entropy = entropy or os.urandom
        self._latency: LatencyModel = latency or LatencyModel()
        self._sleep: Callable[[float], None] = sleep or time.sleep
        if transport not in (TRANSPORT.USB, TRANSPORT.NFC):
            raise ConfigError(f"transport must be USB or NFC, got {transport!r}", field="transport")
        self._transport = transport
        self._lock = threading.Lock()  # held while an APDU is in flight
        self._in_flight: str | None = None
        self._plugged = True
        self._open = True
        self._session_over = False  # volatile state to drop before the next APDU
        self._failures: deque[int] = deque()
        self._selected: PivApplet | OtpApplet | ManagementApplet | None = None
        self._chain: tuple[tuple[int, int, int], bytes] | None = None
        self._pending = b""  # response bytes not yet fetched with GET RESPONSE
        #: APDUs answered (or failed by injection) since construction.
        self.apdu_count = 0
        #: Modelled seconds the device has spent answering.
        self.busy_s = 0.0
        #: (in flight, arriving) descriptions of every overlap detected.
        self.overlaps: list[tuple[str | None, str]] = []

    def _init_applets(self, serial: int) -> None:
        if not 0 < serial < 2**32:
            raise ConfigError(f"serial must fit in 4 bytes and be positive, got {serial}", field="serial")
        self._serial = serial
        self._piv = PivApplet(self._profile, serial, self._entropy)
        self._otp = OtpApplet(self._profile, serial)
        self._management = ManagementApplet(self._profile, serial)
        self._applets = ((PIV_AID, self._piv), (OTP_AID, self._otp), (MANAGEMENT_AID, self._management))

    # --- what the device is ------------------------------------------------------

    @property
    def transport(self) -> TRANSPORT:
        return self._transport

    @property
    def serial(self) -> int:
        return self._serial

    @property
    def firmware(self) -> Version:
        return Version(*self._profile.version)

    @property
    def profile(self) -> FirmwareProfile:
        return self._profile

    @property
    def test_root_certificate(self) -> x509.Certificate:
        """The per-device root that the F9 attestation certificate chains to (trust it in tests)."""
        return self._test_root

    @property
    def plugged(self) -> bool:
        return self._plugged

    # --- the connection ----------------------------------------------------------

    def send_and_receive(self, apdu_bytes: bytes) -> tuple[bytes, int]:
        """Answer one command APDU: (response data, status word)."""
        arriving = f"{threading.current_thread().name}: {bytes(apdu_bytes[:4]).hex()}"
        if not self._lock.acquire(blocking=False):
            in_flight = self._in_flight
            self.overlaps.append((in_flight, arriving))
            raise AssertionError(
                f"VirtualYubiKey {self._serial}: APDU [{arriving}] sent while [{in_flight}] was in flight;"
                " a YubiKey answers one APDU at a time"
            )
        try:
            self._in_flight = arriving
            if not self._plugged:
                raise _card_removed()
            if not self._open:
                raise CardConnectionException("Card not connected")
            if self._session_over:
                self._end_session()
            self.apdu_count += 1
            reply = Reply(sw=self._failures.popleft()) if self._failures else self._exchange(bytes(apdu_bytes))
            cost = self._latency.cost_s(reply.work, touch=reply.touch)
            self.busy_s += cost
            if cost:
                self._sleep(cost)
            if not self._plugged:  # pulled out while the device was working
                raise _card_removed()
            return reply.data, reply.sw
        finally:
            self._in_flight = None
            self._lock.release()

    def close(self) -> None:
        """Disconnect: the session ends; the device keeps its keys. `connect()` reopens."""
        self._open = False
        self._session_over = True

    def connect(self) -> VirtualYubiKey:
        """Open the connection again after `close()`; returns self (a connection factory)."""
        self._open = True
        return self

    def _end_session(self) -> None:
        for _, applet in self._applets:
            applet.deselect()
        self._selected = None
        self._chain = None
        self._pending = b""
        self._session_over = False

    # --- faults ------------------------------------------------------------------

    def unplug(self) -> None:
        """Pull the key out: every APDU now raises CardConnectionException ("Card was removed")."""
        self._plugged = False
        self._session_over = True

    def plug(self) -> None:
        """Put it back: APDUs work again, on a fresh session (select an applet, verify the PIN again)."""
        self._plugged = True
        self._session_over = True

    def fail_next(self, count: int = 1, sw: int = apdu.SW_NO_DIAGNOSIS) -> None:
        """Answer the next `count` APDUs with `sw` and no data, without executing them."""
        if count < 1 or not 0 <= sw <= 0xFFFF:
            raise ValueError(f"fail_next needs count >= 1 and a 16-bit status word, got {count}, {sw:#x}")
        self._failures.extend([sw] * count)

    # --- framing -----------------------------------------------------------------

    def _exchange(self, raw: bytes) -> Reply:
        try:
            cmd = parse_command(raw)
        except ApduReject as reject:
            self._chain = None
            return Reply(sw=reject.sw)
        if cmd.cla & ~apdu.CLA_CHAINING:  # no secure messaging, no proprietary classes
            self._chain, self._pending = None, b""
            return Reply(sw=apdu.SW_CLA_NOT_SUPPORTED)
        if cmd.ins == apdu.INS_GET_RESPONSE and not cmd.chained and self._chain is None:
            return self._get_response(cmd)
        self._pending = b""  # any other command forfeits an unread response
        if cmd.chained or self._chain is not None:
            assembled = self._assemble(cmd)
            if isinstance(assembled, Reply):
                return assembled
            cmd = assembled
        try:
            reply = self._dispatch(cmd)
        except ApduReject as reject:
            return Reply(sw=reject.sw, work=reject.work or Work.APDU)
        return self._first_chunk(reply, cmd)

    def _assemble(self, cmd: Command) -> Command | Reply:
        """Collect a CLA-10 chain; the closing CLA-00 link gets the whole body."""
        if self._chain is not None and self._chain[0] != cmd.header:
            self._chain = None
            return Reply(sw=apdu.SW_LAST_COMMAND_EXPECTED)
        body = (self._chain[1] if self._chain else b"") + cmd.data
        if len(body) > apdu.MAX_CHAINED_DATA_BYTES:
            self._chain = None
            return Reply(sw=apdu.SW_WRONG_LENGTH)
        if cmd.chained:
            self._chain = (cmd.header, body)
            return Reply()
        self._chain = None
        return cmd.with_data(body)

    def _dispatch(self, cmd: Command) -> Reply:
        if cmd.ins == apdu.INS_SELECT:
            return self._select(cmd)
        if self._selected is None:  # no applet selected since power-up / reconnect
            raise ApduReject(apdu.SW_INS_NOT_SUPPORTED)
        return self._selected.handle(cmd)

    def _select(self, cmd: Command) -> Reply:
        if (cmd.p1, cmd.p2) != (0x04, 0x00):  # select by AID, first occurrence
            raise ApduReject(apdu.SW_WRONG_P1P2)
        for aid, applet in self._applets:
            if 5 <= len(cmd.data) <= len(aid) and aid.startswith(cmd.data):
                if self._selected is not None:
                    self._selected.deselect()  # re-selecting an applet also ends its session
                self._selected = applet
                return applet.select()
        raise ApduReject(apdu.SW_FILE_NOT_FOUND)  # the current applet stays selected

    def _first_chunk(self, reply: Reply, cmd: Command) -> Reply:
        limit = cmd.le if cmd.le is not None else (65536 if cmd.extended else 256)
        if reply.sw != apdu.SW_OK or len(reply.data) <= limit:
            return reply
        self._pending = reply.data[limit:]
        return replace(reply, data=reply.data[:limit], sw=apdu.more_data_sw(len(self._pending)))

    def _get_response(self, cmd: Command) -> Reply:
        if cmd.p1 or cmd.p2:
            return Reply(sw=apdu.SW_WRONG_P1P2)
        if not self._pending:
            return Reply(sw=apdu.SW_CONDITIONS_NOT_SATISFIED)
        limit = cmd.le if cmd.le is not None else 256
        chunk, self._pending = self._pending[:limit], self._pending[limit:]
        return Reply(chunk, sw=apdu.more_data_sw(len(self._pending)) if self._pending else apdu.SW_OK)

    # --- persistence -------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The persistent state as JSON bytes. SECRETS IN THE CLEAR (see the module docstring)."""
        with self._lock:  # never a half-applied APDU
            state = {
                "format": _STATE_FORMAT,
                "version": _STATE_VERSION,
                "firmware": self._profile.version_string,
                "serial": self._serial,
                "test_root": self._test_root.public_bytes(Encoding.PEM).decode("ascii"),
                "piv": self._piv.to_state(),
                "otp": self._otp.to_state(),
            }
        return json.dumps(state, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        entropy: Entropy | None = None,
        latency: LatencyModel | None = None,
        sleep: Callable[[float], None] | None = None,
        transport: TRANSPORT = TRANSPORT.USB,
    ) -> VirtualYubiKey:
        """The device `to_bytes()` saved, plugged in with a fresh session. Runtime knobs are not saved."""
        device = cls.__new__(cls)
        try:
            state = json.loads(data)
            if state.get("format") != _STATE_FORMAT or state.get("version") != _STATE_VERSION:
                raise ValueError(f"not a {_STATE_FORMAT} v{_STATE_VERSION} state")
            device._init_runtime(firmware_profile(state["firmware"]), entropy, latency, sleep, transport)
            device._init_applets(int(state["serial"]))
            device._piv.load_state(state["piv"])
            device._otp.load_state(state["otp"])
            device._test_root = x509.load_pem_x509_certificate(state["test_root"].encode("ascii"))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, ApduReject, ConfigError) as exc:
            raise VirtualStateError(f"virtual YubiKey state unreadable: {exc!r}") from exc
        return device

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to `path` atomically, mode 0600. SECRETS IN THE CLEAR."""
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        data = self.to_bytes()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a leftover temporary file may have had another mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        entropy: Entropy | None = None,
        latency: LatencyModel | None = None,
        sleep: Callable[[float], None] | None = None,
        transport: TRANSPORT = TRANSPORT.USB,
    ) -> VirtualYubiKey:
        """The device `save()` wrote at `path`; the runtime knobs as for the constructor."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise VirtualStateError(f"cannot read virtual YubiKey state {path}: {exc}") from exc
        return cls.from_bytes(data, entropy=entropy, latency=latency, sleep=sleep, transport=transport)
