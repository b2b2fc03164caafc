"""`YubiKeyToken`: the `Token` interface on a YubiKey, through yubikit's public API only.

    token = YubiKeyToken.open(serial=12345678, pin=PinSource())     # a real key, via ykman
    token = YubiKeyToken(VirtualYubiKey("5.7.2"), kind="virtual",     # any SmartCardConnection
                         pin="123456", connect=device.connect)

Keys (generated on the device; they never leave it):
- identity: PIV slot 9c, Ed25519 on firmware >= 5.7, else P-256; PIN policy
  ALWAYS (the PIN is verified right before every signature);
- sealing: PIV retired slot 82, X25519 on firmware >= 5.7, else P-256;
  PIN policy ONCE (verified once per PIV session);
- HMAC-SHA1 challenge-response: OTP slot 2 (`configure_hmac` writes a random
  secret if asked; challenges are 1-63 bytes).
Public keys and PIN policies come from the slots' metadata (firmware >= 5.3,
which every supported YubiKey 5 has); no placeholder certificates are needed.

Rules:
- One long-lived connection. PIV state (PIN verified, management key
  authenticated) ends when another applet is selected, so using OTP drops the
  PIV session and the next PIV call selects it again and verifies again.
- The PIN comes from a `PinSource` (config value, `KEYSWARM_PIN`, or a
  getpass prompt only when stdin is a TTY). It is never logged and never in a
  repr; yubikit's APDU traffic loggers are held at DEBUG or above so the PIN
  bytes never reach a log either.
- A PIN is never retried blindly: a wrong PIN raises `WrongPin` (an
  `AuthError` carrying `tries_left`) and is latched, so later calls fail
  without touching the device; with one try left the token refuses to try at
  all (`PinTryRefused`) unless built with `allow_last_pin_try=True`. A
  blocked PIN is `PinBlocked`, naming the PUK unblock path (`unblock_pin`).
- Foreign exceptions are translated at this boundary: a removed card
  (pyscard) -> `TokenAbsent` (the connection is then dead until `reconnect()`);
  everything yubikit raises -> `TokenError` (`raise ... from exc`). Invariant
  violations (`AssertionError`, e.g. the virtual device's overlap detector)
  pass through.
- Blocking, and not thread-safe: only the token service's thread calls it.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from smartcard.Exceptions import SmartcardException
from yubikit.core import CommandError, InvalidPinError, NotSupportedError, Version
from yubikit.core.smartcard import SW, ApduError, SmartCardConnection
from yubikit.piv import KEY_TYPE, PIN_POLICY, SLOT, TOUCH_POLICY, PivSession, SlotMetadata
from yubikit.yubiotp import SLOT as OTP_SLOT
from yubikit.yubiotp import HmacSha1SlotConfiguration, YubiOtpSession

from keyswarm.errors import AuthError, KeyswarmError, PinBlocked, TokenAbsent, TokenError
from keyswarm.hardware.token import (
    BadPeerKey,
    Entropy,
    IdentityPublicKey,
    SealingPublicKey,
    Token,
    TokenInfo,
    check_certificate_slot,
    check_hmac_challenge,
    public_key_fingerprint,
)

log = logging.getLogger("keyswarm.yubikey")

#: Environment variable the PIN is read from when no PIN is configured.
PIN_ENV_VAR = "KEYSWARM_PIN"
#: The factory management key (TDES before 5.7, AES-192 from 5.7: the same bytes).
DEFAULT_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
#: Oldest firmware served: slot metadata (public keys, PIN policies) exists from 5.3.
MIN_FIRMWARE = (5, 3, 0)
#: Ed25519 / X25519 in PIV exist from 5.7 (yubikit refuses them below).
CURVE25519_FIRMWARE = (5, 7, 0)
#: Token certificate slot name -> PIV slot.
PIV_SLOTS = {"identity": SLOT.SIGNATURE, "sealing": SLOT.RETIRED1}
HMAC_SECRET_BYTES = 20

_KEY_TYPES = {"ed25519": (KEY_TYPE.ED25519, KEY_TYPE.X25519), "p256": (KEY_TYPE.ECCP256, KEY_TYPE.ECCP256)}
_ALGORITHM_OF = {KEY_TYPE.ED25519: "ed25519", KEY_TYPE.ECCP256: "p256"}
_VERIFY_EVERY_TIME = (PIN_POLICY.ALWAYS, PIN_POLICY.MATCH_ALWAYS)
# yubikit logs raw APDUs (the PIN among them) at its TRAFFIC level, below DEBUG.
_APDU_LOGGERS = ("ykman.pcsc", "yubikit.core.smartcard", "yubikit.core.otp")


# --- the PIN --------------------------------------------------------------------


class WrongPin(AuthError):
    """The device refused the PIN; `tries_left` tries remain. keyswarm does not try it again."""

    def __init__(self, message: str, tries_left: int):
        super().__init__(message)
        self.tries_left = tries_left


class PinTryRefused(WrongPin):
    """Only one PIN try is left and the token was not allowed to spend it (`allow_last_pin_try`)."""


class WrongPuk(WrongPin):
    """The device refused the PUK; `tries_left` tries remain."""


class MissingPin(AuthError):
    """No PIN configured, none in the environment, and no terminal to ask on."""


class Secret:
    """A PIN or key that never shows in a repr, a str or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes):
        self._value = value

    def reveal(self) -> str | bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__


class PinSource:
    """Where the PIV PIN comes from: a configured value, `KEYSWARM_PIN`, or a prompt.

    Resolved on first use (so a token that never needs its PIN never asks)
    and kept for the token's life. The prompt (getpass) is used only when
    stdin is a terminal: a node under a service manager fails with
    `MissingPin` instead of hanging.
    """

    def __init__(
        self,
        pin: str | None = None,
        *,
        env_var: str = PIN_ENV_VAR,
        environ: Mapping[str, str] | None = None,
        prompt: Callable[[str], str] | None = None,
        interactive: bool | None = None,
    ):
        self._pin = None if pin is None else Secret(pin)
        self._env_var = env_var
        self._environ = os.environ if environ is None else environ
        self._prompt = prompt or getpass.getpass
        self._interactive = interactive

    def __repr__(self) -> str:
        origin = "config" if self._pin is not None else f"${self._env_var} or prompt"
        return f"PinSource(from={origin})"

    def get(self, prompt: str = "PIV PIN: ") -> Secret:
        if self._pin is None:
            value = self._environ.get(self._env_var)
            if value is None:
                interactive = sys.stdin is not None and sys.stdin.isatty() if self._interactive is None else self._interactive
                if not interactive:
                    raise MissingPin(
                        f"no PIV PIN: configure one, set {self._env_var}, or run on a terminal to be asked"
                    )
                value = self._prompt(prompt)
            self._pin = Secret(value)
        pin = self._pin.reveal()
        if not isinstance(pin, str) or not 6 <= len(pin.encode()) <= 8:
            raise MissingPin("a PIV PIN is 6 to 8 characters")  # refused before it reaches the device
        return self._pin


# --- the token --------------------------------------------------------------------


class YubiKeyToken(Token):
    """A YubiKey (or anything answering like one) as a keyswarm `Token`."""

    def __init__(
        self,
        connection: SmartCardConnection,
        *,
        kind: str = "yubikey",
        pin: PinSource | str | None = None,
        management_key: bytes | None = None,
        allow_last_pin_try: bool = False,
        connect: Callable[[], SmartCardConnection] | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        """Open the PIV application on `connection` (which this token now owns).

        `connect` opens a fresh connection to the same device for `reconnect()`;
        `on_change` is called after the device's persistent state may have
        changed (keys, certificates, PIN counters): the virtual device saves
        its state file there. `management_key` None means the factory default.
        """
        if kind not in ("yubikey", "virtual"):
            raise TokenError(f"YubiKeyToken kind must be 'yubikey' or 'virtual', not {kind!r}")
        _quiet_apdu_traffic()
        self._kind = kind
        self._pin = pin if isinstance(pin, PinSource) else PinSource(pin)
        self._management_key = Secret(DEFAULT_MANAGEMENT_KEY if management_key is None else bytes(management_key))
        self._allow_last_pin_try = allow_last_pin_try
        self._connect = connect
        self._on_change = on_change
        self._connection: SmartCardConnection | None = connection
        self._alive = True
        self._pin_latch: Callable[[], KeyswarmError] | None = None  # a PIN failure not to repeat
        self._pin_good = False  # a verify succeeded on this connection: the counter is full
        self._serial: int | None = None
        self._version: Version | None = None
        self._reset_session()
        with self._device("open PIV"):
            piv = self._piv_session()
            self._version = piv.version
            self._serial = piv.get_serial()
        if self._version < MIN_FIRMWARE:
            raise TokenError(
                f"YubiKey {self._serial} has firmware {self.firmware}; keyswarm needs {'.'.join(map(str, MIN_FIRMWARE))}"
                " or later (PIV slot metadata)"
            )

    @classmethod
    def open(cls, serial: int | None = None, **kwargs: object) -> YubiKeyToken:
        """The connected YubiKey with `serial` (the only one if None), via ykman's device listing."""
        from keyswarm.hardware.specs import open_yubikey_connection  # ykman stays out of import time

        def connect() -> SmartCardConnection:
            return open_yubikey_connection(serial)

        return cls(connect(), kind="yubikey", connect=connect, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"YubiKeyToken(kind={self._kind!r}, serial={self._serial}, firmware={self.firmware!r})"

    # --- what it is -----------------------------------------------------------

    @property
    def serial(self) -> int | None:
        return self._serial

    @property
    def firmware(self) -> str | None:
        return None if self._version is None else "%d.%d.%d" % tuple(self._version)

    def default_algorithm(self) -> str:  # "ed25519" on firmware >= 5.7, else "p256"
        return "ed25519" if self._version >= CURVE25519_FIRMWARE else "p256"

    def info(self) -> TokenInfo:
        """Serial and firmware read from the device (one APDU: it doubles as a presence probe)."""
        with self._device("read info"):
            serial = self._piv_session().get_serial()
            meta = self._slot_metadata("identity", missing_ok=True)
        algorithm = self.default_algorithm() if meta is None else _ALGORITHM_OF.get(meta.key_type, "p256")
        return TokenInfo(
            kind=self._kind, serial=serial, firmware=self.firmware,
            identity_algorithm=algorithm, hardware_protected=self._kind == "yubikey",
        )

    def identity_public_key(self) -> IdentityPublicKey:
        with self._device("read identity key"):
            return self._slot_metadata("identity").public_key

    def sealing_public_key(self) -> SealingPublicKey:
        with self._device("read sealing key"):
            return self._slot_metadata("sealing").public_key

    def pin_attempts(self) -> int:
        """PIN tries left, read from the device without spending one."""
        with self._device("read PIN attempts"):
            return self._piv_session().get_pin_attempts()

    # --- key operations -------------------------------------------------------

    def sign(self, data: bytes) -> bytes:
        with self._device("sign"):
            meta = self._slot_metadata("identity")
            piv = self._piv_session()
            self._verify_pin_for(meta)
            if meta.key_type == KEY_TYPE.ED25519:
                return piv.sign(SLOT.SIGNATURE, KEY_TYPE.ED25519, data, None)
            return piv.sign(SLOT.SIGNATURE, meta.key_type, data, hashes.SHA256())

    def key_agreement(self, peer_public: SealingPublicKey) -> bytes:
        with self._device("key agreement"):
            meta = self._slot_metadata("sealing")
            if meta.key_type == KEY_TYPE.X25519:
                if not isinstance(peer_public, X25519PublicKey):
                    raise BadPeerKey(f"peer key is {type(peer_public).__name__}; this token's sealing key is X25519")
            elif not (isinstance(peer_public, ec.EllipticCurvePublicKey) and isinstance(peer_public.curve, ec.SECP256R1)):
                raise BadPeerKey(f"peer key is {type(peer_public).__name__}; this token's sealing key is P-256")
            self._verify_pin_for(meta)
            try:
                secret = self._piv_session().calculate_secret(SLOT.RETIRED1, peer_public)
            except ApduError as exc:
                if exc.sw == SW.INCORRECT_PARAMETERS:  # the device refuses a degenerate point (X25519 all-zero result)
                    raise BadPeerKey("the YubiKey refused the peer key (degenerate point)") from exc
                raise
        if not any(secret):
            raise BadPeerKey("key agreement gave the all-zero secret (low-order peer point)")
        return secret

    def generate(self, *, algorithm: str | None = None) -> None:
        """Generate the identity (9c, PIN ALWAYS) and sealing (82, PIN ONCE) keys on the device.

        `algorithm` None: the firmware's default (Ed25519 from 5.7, else
        P-256). Certificates in both slots are deleted: they certify old keys.
        """
        algorithm = algorithm or self.default_algorithm()
        if algorithm not in _KEY_TYPES:
            raise TokenError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(_KEY_TYPES)}")
        if algorithm == "ed25519" and self._version < CURVE25519_FIRMWARE:
            raise TokenError(f"YubiKey {self._serial} (firmware {self.firmware}) has no Ed25519; use p256")
        identity_type, sealing_type = _KEY_TYPES[algorithm]
        try:
            with self._device("generate keys"):
                piv = self._authenticated_piv()
                piv.generate_key(SLOT.SIGNATURE, identity_type, PIN_POLICY.ALWAYS, TOUCH_POLICY.NEVER)
                piv.generate_key(SLOT.RETIRED1, sealing_type, PIN_POLICY.ONCE, TOUCH_POLICY.NEVER)
                self._metadata.clear()
                for slot in PIV_SLOTS.values():
                    try:
                        piv.delete_certificate(slot)
                    except ApduError as exc:
                        if exc.sw != SW.FILE_NOT_FOUND:
                            raise
        finally:
            self._changed()
        log.info("generated %s identity (9c) and sealing (82) keys on YubiKey %s", algorithm, self._serial)

    def attest(self, slot: str = "identity") -> bytes:
        """DER attestation certificate for a key generated in `slot` (chains to Yubico's PIV CA)."""
        check_certificate_slot(slot)
        with self._device("attest"):
            return self._piv_session().attest_key(PIV_SLOTS[slot]).public_bytes(serialization.Encoding.DER)

    # --- certificates ---------------------------------------------------------

    def read_certificate(self, slot: str) -> bytes | None:
        check_certificate_slot(slot)
        with self._device("read certificate"):
            try:
                cert = self._piv_session().get_certificate(PIV_SLOTS[slot])
            except ApduError as exc:
                if exc.sw == SW.FILE_NOT_FOUND:
                    return None
                raise
        return cert.public_bytes(serialization.Encoding.DER)

    def write_certificate(self, slot: str, der: bytes) -> None:
        """Store `der` in `slot`; refused unless it certifies the key in that slot."""
        check_certificate_slot(slot)
        try:
            cert = x509.load_der_x509_certificate(bytes(der))
        except ValueError as exc:
            raise TokenError(f"not a DER X.509 certificate: {exc}") from exc
        try:
            with self._device("write certificate"):
                slot_key = self._slot_metadata(slot).public_key
                if public_key_fingerprint(cert.public_key()) != public_key_fingerprint(slot_key):  # type: ignore[arg-type]
                    raise TokenError(f"the certificate is not for the key in the {slot} slot ({PIV_SLOTS[slot]:x})")
                self._authenticated_piv().put_certificate(PIV_SLOTS[slot], cert)
        finally:
            self._changed()

    # --- HMAC-SHA1 (OTP slot 2) ----------------------------------------------

    def hmac_sha1(self, challenge: bytes) -> bytes:
        check_hmac_challenge(challenge)
        with self._device("HMAC-SHA1"):
            otp = self._otp_session()
            try:
                return otp.calculate_hmac_sha1(OTP_SLOT.TWO, challenge)
            except ApduError as exc:
                raise TokenError(
                    f"YubiKey {self._serial}: OTP slot 2 gives no HMAC-SHA1 response (sw {exc.sw:04x}); "
                    "is it configured for HMAC-SHA1 challenge-response? (YubiKeyToken.configure_hmac)"
                ) from exc

    def configure_hmac(self, key: bytes | None = None, *, entropy: Entropy = os.urandom, overwrite: bool = False) -> None:
        """Program OTP slot 2 for HMAC-SHA1 challenge-response with `key` (20 random bytes if None).

        Refuses a slot that is already configured unless `overwrite`: it may
        hold another application's secret (a password manager's, say).
        """
        secret = entropy(HMAC_SECRET_BYTES) if key is None else bytes(key)
        if len(secret) != HMAC_SECRET_BYTES:
            raise TokenError(f"an HMAC-SHA1 secret is {HMAC_SECRET_BYTES} bytes, got {len(secret)}")
        try:
            with self._device("configure OTP slot 2"):
                otp = self._otp_session()
                if otp.get_config_state().is_configured(OTP_SLOT.TWO) and not overwrite:
                    raise TokenError(
                        f"OTP slot 2 of YubiKey {self._serial} is already configured; refusing to overwrite it "
                        "(it may hold another application's secret)"
                    )
                otp.put_configuration(OTP_SLOT.TWO, HmacSha1SlotConfiguration(secret))
        finally:
            self._changed()
        log.info("configured OTP slot 2 of YubiKey %s for HMAC-SHA1 challenge-response", self._serial)

    # --- PIN ------------------------------------------------------------------

    def unblock_pin(self, puk: str, new_pin: str) -> None:
        """Set a new PIN with the PUK (after `PinBlocked`); this token then uses `new_pin`."""
        try:
            with self._device("unblock PIN"):
                try:
                    self._piv_session().unblock_pin(puk, new_pin)
                except InvalidPinError as exc:
                    if exc.attempts_remaining == 0:
                        raise PinBlocked(
                            f"the PUK of YubiKey {self._serial} is blocked too; only a PIV reset "
                            "(`ykman piv reset`, which destroys the keys) helps"
                        ) from exc
                    raise WrongPuk(f"wrong PUK; {exc.attempts_remaining} tries left", exc.attempts_remaining) from exc
        finally:
            self._changed()
        self._pin = PinSource(new_pin)
        self._pin_latch = None
        self._pin_good = True
        log.info("PIN of YubiKey %s unblocked with the PUK", self._serial)

    def _verify_pin_for(self, meta: SlotMetadata) -> None:
        """Verify the PIN if the slot's policy needs it now; never retries, never spends the last try."""
        if meta.pin_policy == PIN_POLICY.NEVER or (self._pin_verified and meta.pin_policy not in _VERIFY_EVERY_TIME):
            return
        if self._pin_latch is not None:
            raise self._pin_latch()
        pin = self._pin.get(f"PIV PIN for YubiKey {self._serial}: ")
        piv = self._piv_session()
        if not self._pin_good:
            # The counter is full after a success on this (exclusive) connection;
            # otherwise read it first: it costs no try.
            tries = piv.get_pin_attempts()
            if tries == 0:
                self._latch(lambda: PinBlocked(self._blocked_message()))
            if tries == 1 and not self._allow_last_pin_try:
                message = (
                    f"YubiKey {self._serial} has 1 PIN try left; keyswarm will not risk it. Check the PIN, then "
                    "retry with the last try allowed (allow_last_pin_try), or unblock with the PUK"
                )
                self._latch(lambda: PinTryRefused(message, 1))
        try:
            piv.verify_pin(pin.reveal())
        except InvalidPinError as exc:
            self._pin_good = False
            self._changed()
            left = exc.attempts_remaining
            if left == 0:
                self._latch(lambda: PinBlocked(self._blocked_message()))
            message = (
                f"wrong PIN for YubiKey {self._serial}: {left} {'try' if left == 1 else 'tries'} left; keyswarm "
                f"will not try it again (fix the configured PIN or {PIN_ENV_VAR} and restart)"
            )
            self._latch(lambda: WrongPin(message, left))
        if not self._pin_good:
            self._changed()  # the counter went back to full
        self._pin_good = True
        self._pin_verified = True

    def _latch(self, error: Callable[[], KeyswarmError]) -> None:
        """Remember a PIN failure, so later calls raise it again without touching the device."""
        self._pin_latch = error
        raise error()

    def _blocked_message(self) -> str:
        return (
            f"the PIV PIN of YubiKey {self._serial} is blocked. Unblock it with the PUK "
            f"(`ykman --device {self._serial} piv access unblock-pin`), then restart with the new PIN"
        )

    # --- connection -----------------------------------------------------------

    def reconnect(self) -> None:
        """Drop the connection and open a new one to the same device (after an unplug)."""
        if self._connect is None:
            raise TokenError(f"YubiKey {self._serial}: no way to reopen the connection")
        self._drop_connection()
        try:
            connection = self._connect()
        except KeyswarmError:
            raise
        except (SmartcardException, OSError, ValueError) as exc:
            raise TokenAbsent(f"YubiKey {self._serial} cannot be opened: {exc}") from exc
        self._connection, self._alive = connection, True
        with self._device("reopen PIV"):
            serial = self._piv_session().get_serial()
        if serial != self._serial:
            self._drop_connection()
            raise TokenError(f"reconnected to YubiKey {serial}, not {self._serial}")
        log.info("YubiKey %s reconnected", self._serial)

    def close(self) -> None:
        if self._connection is None:
            return
        self._drop_connection()
        self._connection = None
        self._changed()

    def _drop_connection(self) -> None:
        connection, self._alive = self._connection, False
        self._reset_session()
        self._pin_good = False
        if connection is not None:
            try:
                connection.close()
            except (SmartcardException, OSError):
                pass  # already gone

    def _reset_session(self) -> None:
        self._piv: PivSession | None = None
        self._pin_verified = False
        self._management_authenticated = False
        self._metadata: dict[str, SlotMetadata] = {}

    def _piv_session(self) -> PivSession:
        if self._piv is None:
            self._reset_session()
            self._piv = PivSession(self._connection)
        return self._piv

    def _otp_session(self) -> YubiOtpSession:
        self._reset_session()  # selecting OTP ends the PIV session (PIN, management key)
        return YubiOtpSession(self._connection)

    def _authenticated_piv(self) -> PivSession:
        piv = self._piv_session()
        if not self._management_authenticated:
            try:
                piv.authenticate(self._management_key.reveal())
            except (ApduError, CommandError, ValueError) as exc:
                raise TokenError(
                    f"YubiKey {self._serial} refused the management key; configure the right one"
                ) from exc
            self._management_authenticated = True
        return piv

    def _slot_metadata(self, slot: str, *, missing_ok: bool = False) -> SlotMetadata | None:
        meta = self._metadata.get(slot)
        if meta is None:
            try:
                meta = self._piv_session().get_slot_metadata(PIV_SLOTS[slot])
            except ApduError as exc:
                if exc.sw != SW.REFERENCE_DATA_NOT_FOUND:
                    raise
                if missing_ok:
                    return None
                raise TokenError(
                    f"YubiKey {self._serial} has no {slot} key in PIV slot {PIV_SLOTS[slot]:x}; generate it first "
                    "(keyswarm init)"
                ) from exc
            if slot == "identity" and meta.key_type not in _ALGORITHM_OF:
                raise TokenError(f"PIV slot 9c holds a {meta.key_type.name} key; keyswarm uses Ed25519 or P-256")
            self._metadata[slot] = meta
        return meta

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    @contextmanager
    def _device(self, what: str) -> Iterator[None]:
        """Translate yubikit and pyscard exceptions raised while talking to the device."""
        if self._connection is None:
            raise TokenError(f"YubiKey {self._serial} token is closed")
        if not self._alive:
            raise TokenAbsent(f"YubiKey {self._serial} is disconnected; waiting for reconnect")
        try:
            yield
        except KeyswarmError:
            raise
        except SmartcardException as exc:
            self._drop_connection()
            raise TokenAbsent(f"YubiKey {self._serial} was removed ({what}): {exc}") from exc
        except InvalidPinError as exc:
            raise AuthError(f"YubiKey {self._serial}: PIN refused during {what}") from exc
        except ApduError as exc:
            self._reset_session()  # the device's session state is unknown after an error
            if exc.sw == SW.AUTH_METHOD_BLOCKED:
                raise PinBlocked(self._blocked_message()) from exc
            if exc.sw == SW.SECURITY_CONDITION_NOT_SATISFIED:
                raise TokenError(f"YubiKey {self._serial}: {what} needs a PIN or management key it did not get") from exc
            raise TokenError(f"YubiKey {self._serial}: {what} failed with status {exc.sw:04x}") from exc
        except (CommandError, NotSupportedError, ValueError, TypeError) as exc:
            self._reset_session()
            raise TokenError(f"YubiKey {self._serial}: {what} failed: {exc}") from exc


def _quiet_apdu_traffic() -> None:
    for name in _APDU_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.DEBUG:
            logger.setLevel(logging.DEBUG)
