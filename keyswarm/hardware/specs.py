"""Token specs: the strings that name a token (`soft:PATH`, `virtual:PATH?fw=...`, `yubikey:SERIAL`), and device listing.

    spec = parse_token_spec("virtual:/tmp/root.vyk?fw=5.4.3&serial=12345678")
    token = open_token(spec, pin="123456", create=True)
    for device in list_yubikeys(): print(device.serial, device.firmware)

Forms:
- `soft:PATH`: a `SoftToken` key file (`create=True` makes one if absent).
- `virtual:PATH[?fw=5.7.2&serial=N&latency=zero|real]`: a `VirtualYubiKey`
  whose state lives in PATH (made with `create=True` if absent, from `fw`
  and `serial`; saved back after every change to keys, certificates or PIN
  counters, and on close). For tests and demos only: the file holds every
  secret in the clear. Its PIN is the factory default unless changed.
- `yubikey:SERIAL` (or `yubikey:` for the only connected key): a real
  YubiKey through ykman's device listing.

Rules:
- Parsing is pure and strict: an unknown scheme, an unknown or repeated
  query parameter, a non-numeric serial is a `ConfigError` naming the spec.
- ykman is imported only when a real device is listed or opened.
- Opening a real device failing to connect is `TokenAbsent`; a missing PC/SC
  stack (no pcscd) is a `TokenError` that says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from keyswarm.errors import ConfigError, TokenAbsent, TokenError
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.hardware.token import Entropy, Token
from keyswarm.hardware.yubikey_token import PinSource, YubiKeyToken

TOKEN_SCHEMES = ("soft", "virtual", "yubikey")
_VIRTUAL_PARAMS = ("fw", "serial", "latency")
_LATENCIES = ("zero", "real")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSpec:
    """A parsed token spec. `path` for soft and virtual; `serial` for yubikey (None: the only one)."""

    scheme: str
    path: str | None = None
    serial: int | None = None
    firmware: str | None = None  # virtual only: firmware of a new device
    latency: str = "real"  # virtual only: "zero" or "real" (the default real-device figures)

    def __str__(self) -> str:
        if self.scheme == "yubikey":
            return f"yubikey:{'' if self.serial is None else self.serial}"
        if self.scheme == "soft":
            return f"soft:{self.path}"
        query = [f"fw={self.firmware}"] if self.firmware else []
        query += [f"serial={self.serial}"] if self.serial is not None else []
        query += [f"latency={self.latency}"] if self.latency != "real" else []
        return f"virtual:{self.path}" + ("?" + "&".join(query) if query else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceListing:
    """One connected YubiKey, as `keyswarm token list` shows it."""

    serial: int | None
    firmware: str
    name: str
    spec: str  # the spec that opens it


def parse_token_spec(text: str) -> TokenSpec:
    """Parse `soft:PATH`, `virtual:PATH[?query]` or `yubikey:[SERIAL]`; `ConfigError` naming the spec."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"token spec {text!r}: {why}", field="token")

    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in TOKEN_SCHEMES:
        raise bad(f"must start with one of {', '.join(s + ':' for s in TOKEN_SCHEMES)}")
    if scheme == "yubikey":
        if not rest:
            return TokenSpec(scheme=scheme)
        return TokenSpec(scheme=scheme, serial=_serial(rest, bad))
    path, _, query = rest.partition("?") if scheme == "virtual" else (rest, "", "")
    if not path:
        raise bad("needs a path")
    if scheme == "soft":
        return TokenSpec(scheme=scheme, path=path)
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise bad(f"malformed query: {exc}") from exc
    for key, value in pairs:
        if key not in _VIRTUAL_PARAMS:
            raise bad(f"unknown parameter {key!r}; virtual tokens take {', '.join(_VIRTUAL_PARAMS)}")
        if key in params:
            raise bad(f"parameter {key!r} given twice")
        params[key] = value
    latency = params.get("latency", "real")
    if latency not in _LATENCIES:
        raise bad(f"latency must be one of {', '.join(_LATENCIES)}")
    serial = _serial(params["serial"], bad) if "serial" in params else None
    return TokenSpec(scheme=scheme, path=path, serial=serial, firmware=params.get("fw") or None, latency=latency)


def open_token(
    spec: str | TokenSpec,
    *,
    pin: PinSource | str | None = None,
    passphrase: str | None = None,
    management_key: bytes | None = None,
    allow_last_pin_try: bool = False,
    create: bool = False,
    entropy: Entropy = os.urandom,
) -> Token:
    """Open (or with `create`, make if absent) the token `spec` names.

    `pin` for virtual and yubikey tokens, `passphrase` for soft ones. A new
    soft or virtual token has fresh keys from `entropy`; a new virtual
    device has empty slots (call `generate()`), as a factory-fresh YubiKey.
    """
    spec = parse_token_spec(spec) if isinstance(spec, str) else spec
    if spec.scheme == "soft":
        path = Path(spec.path)
        if create and not path.exists():
            return SoftToken.create(path, passphrase=passphrase, entropy=entropy)
        return SoftToken.open(path, passphrase=passphrase)
    options = dict(pin=pin, management_key=management_key, allow_last_pin_try=allow_last_pin_try)
    if spec.scheme == "yubikey":
        return YubiKeyToken.open(spec.serial, **options)
    return _open_virtual(spec, create=create, entropy=entropy, **options)


def _open_virtual(spec: TokenSpec, *, create: bool, entropy: Entropy, **options: object) -> YubiKeyToken:
    # Imported here: the emulator is test and demo machinery, not a node's runtime.
    from keyswarm.hardware.virtual_yubikey import LatencyModel, VirtualYubiKey

    path = Path(spec.path)
    latency = LatencyModel.zero() if spec.latency == "zero" else LatencyModel()
    if path.exists():
        device = VirtualYubiKey.load(path, entropy=entropy, latency=latency)
        if spec.firmware is not None and device.profile.version_string != spec.firmware:
            raise TokenError(f"{path}: the virtual YubiKey has firmware {device.profile.version_string}, not {spec.firmware}")
        if spec.serial is not None and device.serial != spec.serial:
            raise TokenError(f"{path}: the virtual YubiKey has serial {device.serial}, not {spec.serial}")
    elif create:
        device = VirtualYubiKey(spec.firmware or "5.7.2", serial=spec.serial, entropy=entropy, latency=latency)
        device.save(path)
    else:
        raise TokenAbsent(f"{path}: no virtual YubiKey state here (create one with `keyswarm init`)")

    def save() -> None:
        try:
            device.save(path)
        except OSError as exc:
            raise TokenError(f"{path}: cannot save the virtual YubiKey: {exc}") from exc

    return YubiKeyToken(device, kind="virtual", connect=device.connect, on_change=save, **options)  # type: ignore[arg-type]


# --- real devices (ykman) -----------------------------------------------------


def list_yubikeys() -> list[DeviceListing]:
    """Every connected YubiKey with a smart-card interface, by serial (devices hidden serials last)."""
    devices = _list_devices()
    listing = []
    for _device, info in devices:
        version = "%d.%d.%d" % tuple(info.version)
        listing.append(
            DeviceListing(
                serial=info.serial, firmware=version, name=_device_name(info),
                spec=f"yubikey:{info.serial}" if info.serial is not None else "yubikey:",
            )
        )
    listing.sort(key=lambda d: (d.serial is None, d.serial or 0))
    return listing


def open_yubikey_connection(serial: int | None):  # -> SmartCardConnection
    """A smart-card connection to the YubiKey with `serial` (the only one if None).

    `TokenAbsent` when it is not connected (or, with no serial, when none or
    several are); `TokenError` when PC/SC itself is unavailable.
    """
    from smartcard.Exceptions import SmartcardException
    from yubikit.core.smartcard import SmartCardConnection

    devices = _list_devices()
    if serial is None:
        if len(devices) != 1:
            found = ", ".join(str(info.serial) for _, info in devices) or "none"
            raise TokenAbsent(f"expected exactly one YubiKey, found {len(devices)} ({found}); name one by serial")
        device = devices[0][0]
    else:
        matches = [dev for dev, info in devices if info.serial == serial]
        if not matches:
            found = ", ".join(str(info.serial) for _, info in devices) or "none"
            raise TokenAbsent(f"YubiKey {serial} is not connected (connected: {found})")
        device = matches[0]
    try:
        return device.open_connection(SmartCardConnection)
    except (SmartcardException, OSError, ValueError) as exc:
        raise TokenAbsent(f"cannot open YubiKey {serial if serial is not None else ''}: {exc}") from exc


def _list_devices() -> list:
    try:
        from smartcard.System import readers
        from ykman.device import list_all_devices
        from yubikit.core.smartcard import SmartCardConnection
    except ImportError as exc:  # pyscard missing or broken
        raise TokenError(f"YubiKey support is not installed (yubikey-manager / pyscard): {exc}") from exc
    devices = list_all_devices([SmartCardConnection])
    if not devices:
        # ykman logs and swallows a PC/SC failure; tell "no key" from "no PC/SC".
        try:
            readers()
        except Exception as exc:  # noqa: BLE001 -- pyscard's own exception tree (EstablishContextException ...)
            raise TokenError(f"cannot list YubiKeys: PC/SC is unavailable (is pcscd running?): {exc}") from exc
    return devices


def _device_name(info: object) -> str:
    try:
        from ykman.device import get_name

        return get_name(info, None)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 -- a name is cosmetic; never fail a listing over it
        return "YubiKey"


def _serial(text: str, bad: Callable[[str], ConfigError]) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**32:
        raise bad(f"serial {text!r} must be a positive decimal number")
    return int(text)
