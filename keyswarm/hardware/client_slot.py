"""`ClientSlot`: PIV slot 9a of a client's own YubiKey, where a client's identity key lives.

`keyswarm enroll-client --yubikey-slot-9a SERIAL` certifies the key in the
client's PIV authentication slot (9a), generating one there if the slot is
empty, and stores the certificate back in the slot, so a PIV-aware client
(and `ykman piv info`) finds key and certificate together. The node's own
keys (9c, 82) are `YubiKeyToken`'s; this module touches 9a only.

    with ClientSlot.open(parse_token_spec("virtual:/tmp/c1.vyk"), management_key=None) as slot:
        public_key = slot.public_key()          # generated on the device if the slot is empty
        slot.store_certificate(cert)

Rules:
- yubikit's public API only; the key never leaves the device.
- Generating a key and storing a certificate need the management key (the
  factory default unless given), never the PIN: a client's PIN is its own.
- A key already in the slot is used as it is: enrolment never destroys a key.
- Ed25519 on firmware >= 5.7, else P-256 (as for node tokens).
- Foreign exceptions are translated here: a removed card (pyscard) ->
  `TokenAbsent`; yubikit's -> `TokenError` naming what was being done.
- A virtual device's state file is saved after every change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from smartcard.Exceptions import SmartcardException
from yubikit.core import CommandError, NotSupportedError
from yubikit.core.smartcard import SW, ApduError, SmartCardConnection
from yubikit.piv import KEY_TYPE, SLOT, PivSession

from keyswarm.errors import KeyswarmError, TokenAbsent, TokenError
from keyswarm.hardware.specs import TokenSpec, open_yubikey_connection
from keyswarm.hardware.token import Entropy, IdentityPublicKey
from keyswarm.hardware.yubikey_token import DEFAULT_MANAGEMENT_KEY

#: Ed25519 in PIV exists from this firmware; P-256 below it.
_CURVE25519_FIRMWARE = (5, 7, 0)


class ClientSlot:
    """PIV slot 9a of one device, over a connection this object owns (close it, or use `with`)."""

    def __init__(
        self,
        connection: SmartCardConnection,
        *,
        location: str,
        management_key: bytes | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        self.location = location
        self._connection = connection
        self._management_key = DEFAULT_MANAGEMENT_KEY if management_key is None else bytes(management_key)
        self._on_change = on_change
        self._authenticated = False
        with self._device("open PIV"):
            self._piv = PivSession(connection)

    @classmethod
    def open(
        cls, spec: TokenSpec, *, management_key: bytes | None = None, create: bool = False, entropy: Entropy = os.urandom
    ) -> ClientSlot:
        """Slot 9a of the device `spec` names (`yubikey:SERIAL` or `virtual:PATH`).

        `create` makes a factory-fresh virtual device (firmware and serial from
        the spec) when its state file is absent.
        """
        if spec.scheme == "yubikey":
            serial = "" if spec.serial is None else f" {spec.serial}"
            connection = open_yubikey_connection(spec.serial)
            return cls(connection, location=f"YubiKey{serial} PIV slot 9a", management_key=management_key)
        if spec.scheme != "virtual":
            raise TokenError(f"{spec}: only a YubiKey (or a virtual one) has a PIV slot 9a")
        # The emulator is test and demo machinery: imported only when asked for.
        from keyswarm.hardware.virtual_yubikey import LatencyModel, VirtualYubiKey

        path = Path(spec.path)
        latency = LatencyModel.zero() if spec.latency == "zero" else LatencyModel()
        if path.exists():
            device = VirtualYubiKey.load(path, entropy=entropy, latency=latency)
            if spec.firmware is not None and device.profile.version_string != spec.firmware:
                raise TokenError(f"{path}: the virtual YubiKey has firmware {device.profile.version_string}, not {spec.firmware}")
        elif create:
            device = VirtualYubiKey(spec.firmware or "5.7.2", serial=spec.serial, entropy=entropy, latency=latency)
        else:
            raise TokenAbsent(f"{path}: no virtual YubiKey state here")

        def save() -> None:
            try:
                device.save(path)
            except OSError as exc:
                raise TokenError(f"{path}: cannot save the virtual YubiKey: {exc}") from exc

        return cls(
            device, location=f"virtual YubiKey {path} (serial {device.serial}) PIV slot 9a",
            management_key=management_key, on_change=save,
        )

    def public_key(self) -> IdentityPublicKey:
        """The public key in slot 9a; a new one generated on the device if the slot is empty."""
        with self._device("read slot 9a"):
            try:
                return self._piv.get_slot_metadata(SLOT.AUTHENTICATION).public_key
            except ApduError as exc:
                if exc.sw != SW.REFERENCE_DATA_NOT_FOUND:
                    raise
        key_type = KEY_TYPE.ED25519 if tuple(self._piv.version) >= _CURVE25519_FIRMWARE else KEY_TYPE.ECCP256
        try:
            with self._device("generate a key in slot 9a"):
                self._authenticate()
                return self._piv.generate_key(SLOT.AUTHENTICATION, key_type)
        finally:
            self._changed()

    def store_certificate(self, cert: x509.Certificate) -> None:
        """Put `cert` (for the key in slot 9a) into the slot's certificate object."""
        try:
            with self._device("store the certificate in slot 9a"):
                self._authenticate()
                self._piv.put_certificate(SLOT.AUTHENTICATION, cert)
        finally:
            self._changed()

    def sign(self, data: bytes, *, pin: str | None = None) -> bytes:
        """Sign `data` with the key in slot 9a (Ed25519 raw, or P-256 DER over SHA-256), after the PIN if given."""
        from cryptography.hazmat.primitives import hashes

        with self._device("sign with slot 9a"):
            if pin is not None:
                self._piv.verify_pin(pin)
            meta = self._piv.get_slot_metadata(SLOT.AUTHENTICATION)
            if meta.key_type == KEY_TYPE.ED25519:
                return self._piv.sign(SLOT.AUTHENTICATION, KEY_TYPE.ED25519, data, None)
            return self._piv.sign(SLOT.AUTHENTICATION, meta.key_type, data, hashes.SHA256())

    def close(self) -> None:
        try:
            self._connection.close()
        except (SmartcardException, OSError):
            pass  # a device that is gone is closed enough

    def __enter__(self) -> ClientSlot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _authenticate(self) -> None:
        if not self._authenticated:
            self._piv.authenticate(self._management_key)
            self._authenticated = True

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _device(self, what: str) -> _Translated:
        return _Translated(f"{self.location}: {what}")


class _Translated:
    """Context manager: pyscard and yubikit exceptions -> keyswarm token errors naming `what`."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, KeyswarmError):
            return False
        if isinstance(exc, SmartcardException):
            raise TokenAbsent(f"{self.what}: the device is gone: {exc}") from exc
        if isinstance(exc, ApduError) and exc.sw == SW.SECURITY_CONDITION_NOT_SATISFIED:
            raise TokenError(f"{self.what}: the device refused the management key") from exc
        if isinstance(exc, (CommandError, NotSupportedError, ValueError, TypeError)):
            raise TokenError(f"{self.what} failed: {exc or type(exc).__name__}") from exc
        return False  # anything else (an AssertionError from the emulator's checks) passes through
