"""What a virtual YubiKey claims to be: its firmware profile and its latency model.

Owns the static description of a virtual device, never its state:

- `FirmwareProfile`: the firmware version the device reports and what that
  firmware can do. The version picks yubikit's code paths (metadata >= 5.3,
  AES management keys >= 5.4, Ed25519 / X25519 / move / delete >= 5.7), so
  the profiles mirror real devices: 5.4.3 has a TDES default management key
  and P-256 / P-384; 5.7.x has an AES-192 default management key (same bytes)
  and adds Ed25519 / X25519. RSA is not emulated on either (generating or
  importing an RSA key answers 6A80).
- `LatencyModel`: seconds per operation, defaults from `shared/YUBIKEY.md`
  "Real-device notes"; every field carries its unit. `LatencyModel.zero()`
  is the model tests use.

Pure data: no clock, no randomness.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from keyswarm.errors import ConfigError
from keyswarm.hardware.virtual_apdu import Work

# PIV key types (yubikit `KEY_TYPE`) and management key types (`MANAGEMENT_KEY_TYPE`).
KEY_ECCP256 = 0x11
KEY_ECCP384 = 0x14
KEY_ED25519 = 0xE0
KEY_X25519 = 0xE1
MGMT_TDES = 0x03
MGMT_AES128 = 0x08
MGMT_AES192 = 0x0A
MGMT_AES256 = 0x0C

#: YubiKey capability bits (yubikit `management.CAPABILITY`) a YubiKey 5 NFC has.
CAPABILITIES_YUBIKEY_5 = 0x01 | 0x02 | 0x08 | 0x10 | 0x20 | 0x100 | 0x200  # OTP U2F PGP PIV OATH HSMAUTH FIDO2
FORM_FACTOR_USB_A_KEYCHAIN = 0x01


@dataclass(frozen=True, slots=True, kw_only=True)
class FirmwareProfile:
    """A firmware version and the features the emulator grants it."""

    version: tuple[int, int, int]
    #: Management key algorithm after a factory reset (its bytes are always 0102..08 x3).
    default_management_key_type: int
    #: PIV key types this firmware generates and imports.
    piv_key_types: frozenset[int]
    #: INS F6 (move / delete key) exists from 5.7.
    move_key: bool
    form_factor: int = FORM_FACTOR_USB_A_KEYCHAIN
    nfc: bool = True
    capabilities: int = CAPABILITIES_YUBIKEY_5

    def __post_init__(self) -> None:
        if len(self.version) != 3 or not all(0 <= v <= 255 for v in self.version):
            raise ConfigError(f"firmware version must be three bytes, got {self.version!r}", field="version")
        if KEY_ECCP256 not in self.piv_key_types:
            raise ConfigError("every YubiKey 5 generates P-256 keys", field="piv_key_types")

    @property
    def version_string(self) -> str:
        return "%d.%d.%d" % self.version

    @property
    def management_key_types(self) -> frozenset[int]:
        """AES management keys exist from 5.4 (yubikit checks the same bound)."""
        if self.version >= (5, 4, 0):
            return frozenset({MGMT_TDES, MGMT_AES128, MGMT_AES192, MGMT_AES256})
        return frozenset({MGMT_TDES})


def firmware_profile(version: str) -> FirmwareProfile:
    """The profile for "5.4.x" or "5.7.x" (e.g. "5.4.3", "5.7.2").

    Other versions are refused: the emulator only vouches for the two
    families yubikit is tested against here.
    """
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version.strip())
    if not match:
        raise ConfigError(f"firmware version {version!r} is not MAJOR.MINOR.PATCH", field="firmware")
    triple = (int(match[1]), int(match[2]), int(match[3]))
    if triple[:2] == (5, 4):
        return FirmwareProfile(
            version=triple,
            default_management_key_type=MGMT_TDES,
            piv_key_types=frozenset({KEY_ECCP256, KEY_ECCP384}),
            move_key=False,
        )
    if triple[:2] == (5, 7):
        return FirmwareProfile(
            version=triple,
            default_management_key_type=MGMT_AES192,
            piv_key_types=frozenset({KEY_ECCP256, KEY_ECCP384, KEY_ED25519, KEY_X25519}),
            move_key=True,
        )
    raise ConfigError(f"firmware {version!r}: the virtual YubiKey emulates 5.4.x and 5.7.x", field="firmware")


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyModel:
    """How long the device takes, in seconds. Defaults: public real-device figures.

    Each APDU costs `apdu_s` plus the cost of the work it did; a touch adds
    `touch_s`. Figures marked "estimate" have no public measurement behind
    them and are set between their neighbours.
    """

    apdu_s: float = 0.0005  # trivial APDU: < 1 ms
    pin_s: float = 0.010  # PIN / PUK verify: ~10 ms
    mgmt_auth_s: float = 0.002  # one TDES / AES block per step (estimate)
    sign_s: float = 0.075  # EC sign: 50-100 ms
    ecdh_s: float = 0.075  # same scalar multiplication as a signature (estimate)
    keygen_s: float = 0.100  # EC key generation: ~0.1 s
    attest_s: float = 0.120  # one signature plus certificate assembly (estimate)
    hmac_s: float = 0.015  # OTP challenge-response (estimate)
    flash_write_s: float = 0.020  # object / config write to flash (estimate)
    touch_s: float = 0.500  # a human touching the key (estimate)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"latency must be a finite number of seconds >= 0, got {value!r}", field=f.name)

    @classmethod
    def zero(cls) -> LatencyModel:
        """No latency at all: unit tests."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    def cost_s(self, work: Work, *, touch: bool = False) -> float:
        """Seconds one APDU that did `work` takes."""
        extra = {
            Work.APDU: 0.0,
            Work.PIN: self.pin_s,
            Work.MGMT_AUTH: self.mgmt_auth_s,
            Work.SIGN: self.sign_s,
            Work.ECDH: self.ecdh_s,
            Work.KEYGEN: self.keygen_s,
            Work.ATTEST: self.attest_s,
            Work.HMAC: self.hmac_s,
            Work.FLASH_WRITE: self.flash_write_s,
        }[work]
        return self.apdu_s + extra + (self.touch_s if touch else 0.0)
