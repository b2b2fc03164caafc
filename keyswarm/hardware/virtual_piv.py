"""The virtual YubiKey's PIV applet: PIN / PUK, management key, key slots, objects, attestation.

Owns the PIV applet's state machine, and answers what yubikit's `PivSession`
sends (see `shared/YUBIKEY.md`) the way a YubiKey 5 does.

Rules the applet keeps:
- Persistent state (PIN, PUK, counters, management key, keys, objects)
  survives `deselect`; volatile state (PIN verified, management key
  authenticated, a pending witness, cached touch) does not. The connection
  calls `deselect` on every SELECT (this applet's included), on close, and on
  unplug, so a PIN verification lives exactly as long as one PIV session.
- PIN policy ALWAYS needs a VERIFY as the *immediately preceding* PIV
  command: any other command in between spends the freshness. This is at
  least as strict as the device (it cannot accept fewer sequences), so code
  that passes here passes on hardware.
- Counters: a wrong PIN or PUK answers 63Cx with x tries left (63C0 on the
  try that blocks it), then 6983 while blocked. A correct one restores the
  counter. An empty VERIFY reports the count without spending a try.
- Generate, import, PUT DATA, SET MANAGEMENT KEY, move / delete need the
  management key (6982 otherwise). Touch is modelled as always given, after
  the latency model's `touch_s`.
- Error answers follow the device where it is documented (6982, 6983, 63Cx,
  6A80, 6A82, 6A86, 6A88, 6D00); where it is not, the choice is named in a
  comment. A key operation on an empty slot or with the wrong algorithm is
  6A80, the answer yubikit's `_use_private_key` anticipates.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.hardware import virtual_apdu as apdu
from keyswarm.hardware.virtual_apdu import ApduReject, Command, Reply, Work, parse_tlv_dict, parse_tlvs, tlv, unwrap_tlv
from keyswarm.hardware.virtual_attestation import create_attestation_chain, issue_attestation
from keyswarm.hardware.virtual_piv_keys import (
    ORIGIN_GENERATED,
    ORIGIN_IMPORTED,
    PIN_POLICY_ALWAYS,
    PIN_POLICY_NEVER,
    PIN_POLICY_ONCE,
    TOUCH_POLICY_ALWAYS,
    TOUCH_POLICY_CACHED,
    TOUCH_POLICY_NEVER,
    SlotKey,
    generate_private_key,
    import_private_key,
)
from keyswarm.hardware.virtual_profile import KEY_ECCP256, MGMT_TDES, FirmwareProfile

Entropy = Callable[[int], bytes]

#: The PIV applet's full AID; yubikit selects it by its 5-byte prefix.
PIV_AID = bytes.fromhex("a000000308000010000100")
# Application property template a YubiKey answers to SELECT (AID + authority).
_SELECT_RESPONSE = bytes.fromhex("61114f0600001000010079074f05a000000308")
# The discovery object (7E): PIV AID and PIN usage policy, as the device holds it.
_DISCOVERY = tlv(0x7E, tlv(0x4F, PIV_AID) + tlv(0x5F2F, b"\x40\x00"))

INS_VERIFY, INS_CHANGE_REFERENCE, INS_RESET_RETRY = 0x20, 0x24, 0x2C
INS_GENERATE, INS_AUTHENTICATE, INS_GET_DATA, INS_PUT_DATA = 0x47, 0x87, 0xCB, 0xDB
INS_MOVE_KEY, INS_GET_METADATA, INS_GET_SERIAL, INS_ATTEST = 0xF6, 0xF7, 0xF8, 0xF9
INS_SET_PIN_RETRIES, INS_RESET, INS_GET_VERSION, INS_IMPORT_KEY, INS_SET_MGMT_KEY = 0xFA, 0xFB, 0xFD, 0xFE, 0xFF

PIN_P2, PUK_P2, BIO_P2 = 0x80, 0x81, 0x96
SLOT_MANAGEMENT, SLOT_ATTESTATION = 0x9B, 0xF9
#: Slots that hold user keys: 9A 9C 9D 9E and the twenty retired slots 82..95.
KEY_SLOTS = frozenset({0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96)})
#: The certificate object of each slot (SP 800-73-4; F9's is Yubico's 5FFF01).
OBJECT_FOR_SLOT = {0x9A: 0x5FC105, 0x9C: 0x5FC10A, 0x9D: 0x5FC10B, 0x9E: 0x5FC101, SLOT_ATTESTATION: 0x5FFF01}
OBJECT_FOR_SLOT.update({slot: 0x5FC10D + slot - 0x82 for slot in range(0x82, 0x96)})
_DEFAULT_PIN_POLICY = {0x9C: PIN_POLICY_ALWAYS, 0x9E: PIN_POLICY_NEVER, SLOT_ATTESTATION: PIN_POLICY_NEVER}
# Objects read only after VERIFY: fingerprints, facial image, printed info, iris.
_PIN_PROTECTED_OBJECTS = frozenset({0x5FC103, 0x5FC108, 0x5FC109, 0x5FC121})
_MAX_OBJECT_BYTES = 3052  # YubiKey 5 PIV object limit

DEFAULT_PIN = b"123456"
DEFAULT_PUK = b"12345678"
DEFAULT_MANAGEMENT_KEY = bytes(range(1, 9)) * 3
_MGMT_KEY_BYTES = {MGMT_TDES: 24, 0x08: 16, 0x0A: 24, 0x0C: 32}


def _writable_object(object_id: int) -> bool:
    return 0x5FC101 <= object_id <= 0x5FC123 or 0x5FFF00 <= object_id <= 0x5FFF15


def _padded(value: bytes) -> bytes:
    return value.ljust(8, b"\xff")


def _new_reference_value(block: bytes) -> bytes:
    """The PIN / PUK in an 8-byte FF-padded block: 6-8 bytes, no FF inside; else 6A80."""
    value = block.rstrip(b"\xff")
    if not 6 <= len(value) <= 8 or b"\xff" in value:
        raise ApduReject(apdu.SW_WRONG_DATA)
    return value


@dataclass(slots=True)
class _Reference:
    """A PIN or PUK with its retry counter."""

    value: bytes
    max_tries: int
    left: int

    def check(self, offered_block: bytes) -> bool:
        """Spend a try on `offered_block` (8 bytes, FF-padded); True when it matches."""
        if self.left == 0:
            raise ApduReject(apdu.SW_AUTH_METHOD_BLOCKED, Work.PIN)
        if hmac.compare_digest(offered_block, _padded(self.value)):
            self.left = self.max_tries
            return True
        self.left -= 1
        return False


def _mgmt_cipher(key_type: int, key: bytes) -> Cipher:
    algorithm = TripleDES(key) if key_type == MGMT_TDES else algorithms.AES(key)
    return Cipher(algorithm, modes.ECB())  # noqa: S305 - the PIV protocol is single-block ECB


def _ecb_encrypt(key_type: int, key: bytes, block: bytes) -> bytes:
    encryptor = _mgmt_cipher(key_type, key).encryptor()
    return encryptor.update(block) + encryptor.finalize()


class PivApplet:
    """PIV on a YubiKey 5: state plus one method per instruction."""

    def __init__(self, profile: FirmwareProfile, serial: int, entropy: Entropy):
        self._profile = profile
        self._serial = serial
        self._entropy = entropy
        self._factory_defaults()
        self.deselect()
        self._handlers: dict[int, Callable[[Command], Reply]] = {
            INS_VERIFY: self._verify,
            INS_CHANGE_REFERENCE: self._change_reference,
            INS_RESET_RETRY: self._reset_retry,
            INS_GENERATE: self._generate,
            INS_AUTHENTICATE: self._authenticate,
            INS_GET_DATA: self._get_data,
            INS_PUT_DATA: self._put_data,
            INS_MOVE_KEY: self._move_key,
            INS_GET_METADATA: self._get_metadata,
            INS_GET_SERIAL: lambda cmd: Reply(self._serial.to_bytes(4, "big")),
            INS_ATTEST: self._attest,
            INS_SET_PIN_RETRIES: self._set_pin_retries,
            INS_RESET: self._reset,
            INS_GET_VERSION: lambda cmd: Reply(bytes(self._profile.version)),
            INS_IMPORT_KEY: self._import_key,
            INS_SET_MGMT_KEY: self._set_mgmt_key,
        }

    def _factory_defaults(self) -> None:
        self._pin = _Reference(DEFAULT_PIN, 3, 3)
        self._puk = _Reference(DEFAULT_PUK, 3, 3)
        self._mgmt_type = self._profile.default_management_key_type
        self._mgmt_key = DEFAULT_MANAGEMENT_KEY
        self._mgmt_touch = False
        self._keys: dict[int, SlotKey] = {}
        self._objects: dict[int, bytes] = {}

    def manufacture(self) -> x509.Certificate:
        """Install an attestation key and certificate as the factory does; return the test root."""
        private = generate_private_key(KEY_ECCP256, self._entropy)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        root, certificate = create_attestation_chain(self._serial, self._entropy, private)
        self._keys[SLOT_ATTESTATION] = SlotKey(KEY_ECCP256, private, PIN_POLICY_NEVER, TOUCH_POLICY_NEVER, ORIGIN_IMPORTED)
        self._objects[OBJECT_FOR_SLOT[SLOT_ATTESTATION]] = (
            tlv(0x70, certificate.public_bytes(Encoding.DER)) + tlv(0x71, b"\x00") + tlv(0xFE)
        )
        return root

    # --- session -------------------------------------------------------------

    def select(self) -> Reply:
        return Reply(_SELECT_RESPONSE)

    def deselect(self) -> None:
        """Forget everything a session proved: PIN, management key, witness, touch."""
        self._pin_verified = False
        self._pin_fresh = False  # a VERIFY was the previous PIV command
        self._fresh_now = False  # ... as seen by the command being handled
        self._mgmt_authenticated = False
        self._witness: bytes | None = None
        self._touch_cached = False

    def handle(self, cmd: Command) -> Reply:
        # Every command spends PIN freshness; a successful VERIFY renews it.
        self._fresh_now, self._pin_fresh = self._pin_fresh, False
        handler = self._handlers.get(cmd.ins)
        if handler is None or (cmd.ins == INS_MOVE_KEY and not self._profile.move_key):
            raise ApduReject(apdu.SW_INS_NOT_SUPPORTED)
        return handler(cmd)

    def _require_mgmt(self) -> None:
        if not self._mgmt_authenticated:
            raise ApduReject(apdu.SW_SECURITY_STATUS_NOT_SATISFIED)

    # --- PIN and PUK -----------------------------------------------------------

    def _verify(self, cmd: Command) -> Reply:
        if cmd.p2 != PIN_P2:  # PUK cannot be VERIFYed; 96 (bio) is absent on this model
            raise ApduReject(apdu.SW_REFERENCE_NOT_FOUND)
        if cmd.p1 == 0xFF:  # SP 800-73-4: P1=FF with no data resets the PIN's status
            if cmd.data:
                raise ApduReject(apdu.SW_WRONG_DATA)
            self._pin_verified = False
            return Reply()
        if cmd.p1 != 0:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        if not cmd.data:  # status query: spends nothing
            if self._pin.left == 0:
                raise ApduReject(apdu.SW_AUTH_METHOD_BLOCKED)
            if self._pin_verified:
                self._pin_fresh = self._fresh_now
                return Reply()
            return Reply(sw=apdu.sw_retries(self._pin.left))
        if len(cmd.data) != 8:
            raise ApduReject(apdu.SW_WRONG_DATA)
        if self._pin.check(cmd.data):
            self._pin_verified = self._pin_fresh = True
            return Reply(work=Work.PIN)
        self._pin_verified = False
        return Reply(sw=apdu.sw_retries(self._pin.left), work=Work.PIN)

    def _change_reference(self, cmd: Command) -> Reply:
        if cmd.p1 != 0:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        reference = {PIN_P2: self._pin, PUK_P2: self._puk}.get(cmd.p2)
        if reference is None:
            raise ApduReject(apdu.SW_REFERENCE_NOT_FOUND)
        if len(cmd.data) != 16:
            raise ApduReject(apdu.SW_WRONG_DATA)
        if not reference.check(cmd.data[:8]):
            if reference is self._pin:
                self._pin_verified = False
            return Reply(sw=apdu.sw_retries(reference.left), work=Work.PIN)
        reference.value = _new_reference_value(cmd.data[8:])
        return Reply(work=Work.PIN)

    def _reset_retry(self, cmd: Command) -> Reply:
        if cmd.p1 != 0:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        if cmd.p2 != PIN_P2:
            raise ApduReject(apdu.SW_REFERENCE_NOT_FOUND)
        if len(cmd.data) != 16:
            raise ApduReject(apdu.SW_WRONG_DATA)
        if not self._puk.check(cmd.data[:8]):
            return Reply(sw=apdu.sw_retries(self._puk.left), work=Work.PIN)
        self._pin.value = _new_reference_value(cmd.data[8:])
        self._pin.left = self._pin.max_tries
        self._pin_verified = False
        return Reply(work=Work.PIN)

    def _set_pin_retries(self, cmd: Command) -> Reply:
        self._require_mgmt()
        if not self._pin_verified:
            raise ApduReject(apdu.SW_SECURITY_STATUS_NOT_SATISFIED)
        if not (cmd.p1 and cmd.p2):
            raise ApduReject(apdu.SW_WRONG_P1P2)
        # The device resets both values to their defaults along with the counts.
        self._pin = _Reference(DEFAULT_PIN, cmd.p1, cmd.p1)
        self._puk = _Reference(DEFAULT_PUK, cmd.p2, cmd.p2)
        self._pin_verified = False
        return Reply(work=Work.FLASH_WRITE)

    # --- management key --------------------------------------------------------

    def _authenticate(self, cmd: Command) -> Reply:
        body = parse_tlv_dict(unwrap_tlv(cmd.data, 0x7C))
        if cmd.p2 == SLOT_MANAGEMENT:
            return self._mgmt_authenticate(cmd.p1, body)
        if cmd.p2 in KEY_SLOTS:
            return self._use_key(cmd.p2, cmd.p1, body)
        raise ApduReject(apdu.SW_WRONG_P1P2)

    def _mgmt_authenticate(self, key_type: int, body: dict[int, bytes]) -> Reply:
        if key_type != self._mgmt_type:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        block = 8 if key_type == MGMT_TDES else 16
        if body == {0x80: b""}:  # step 1: the host asks for a witness
            self._mgmt_authenticated = False
            self._witness = self._entropy(block)
            witness = _ecb_encrypt(key_type, self._mgmt_key, self._witness)
            return Reply(tlv(0x7C, tlv(0x80, witness)), work=Work.MGMT_AUTH)
        if set(body) == {0x80, 0x81}:  # step 2: decrypted witness + the host's challenge
            expected, self._witness = self._witness, None
            if expected is None or not hmac.compare_digest(body[0x80], expected):
                raise ApduReject(apdu.SW_SECURITY_STATUS_NOT_SATISFIED, Work.MGMT_AUTH)
            if len(body[0x81]) != block:
                raise ApduReject(apdu.SW_WRONG_DATA)
            self._mgmt_authenticated = True
            response = _ecb_encrypt(key_type, self._mgmt_key, body[0x81])
            return Reply(tlv(0x7C, tlv(0x82, response)), work=Work.MGMT_AUTH, touch=self._mgmt_touch)
        raise ApduReject(apdu.SW_WRONG_DATA)  # single-sided flows are not emulated

    def _set_mgmt_key(self, cmd: Command) -> Reply:
        if cmd.p1 != 0xFF or cmd.p2 not in (0xFF, 0xFE):
            raise ApduReject(apdu.SW_WRONG_P1P2)
        self._require_mgmt()
        if not cmd.data:
            raise ApduReject(apdu.SW_WRONG_DATA)
        key_type, key = cmd.data[0], unwrap_tlv(cmd.data[1:], SLOT_MANAGEMENT)
        if key_type not in self._profile.management_key_types or len(key) != _MGMT_KEY_BYTES[key_type]:
            raise ApduReject(apdu.SW_WRONG_DATA)
        self._mgmt_type, self._mgmt_key, self._mgmt_touch = key_type, key, cmd.p2 == 0xFE
        return Reply(work=Work.FLASH_WRITE)

    # --- keys --------------------------------------------------------------------

    def _policies(self, slot: int, body: dict[int, bytes]) -> tuple[int, int]:
        """PIN and touch policy from tags AA / AB, DEFAULT resolved for `slot`."""
        pin, touch = body.get(0xAA, b"\x00"), body.get(0xAB, b"\x00")
        # MATCH_ONCE / MATCH_ALWAYS (4, 5) need a YubiKey Bio: not this model.
        if len(pin) != 1 or pin[0] > PIN_POLICY_ALWAYS or len(touch) != 1 or touch[0] > TOUCH_POLICY_CACHED:
            raise ApduReject(apdu.SW_WRONG_DATA)
        return pin[0] or _DEFAULT_PIN_POLICY.get(slot, PIN_POLICY_ONCE), touch[0] or TOUCH_POLICY_NEVER

    def _generate(self, cmd: Command) -> Reply:
        if cmd.p1 != 0 or cmd.p2 not in KEY_SLOTS:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        self._require_mgmt()
        body = parse_tlv_dict(unwrap_tlv(cmd.data, 0xAC))
        algorithm = body.get(0x80, b"")
        if len(algorithm) != 1 or algorithm[0] not in self._profile.piv_key_types or set(body) - {0x80, 0xAA, 0xAB}:
            raise ApduReject(apdu.SW_WRONG_DATA)
        pin_policy, touch_policy = self._policies(cmd.p2, body)
        private = generate_private_key(algorithm[0], self._entropy)
        key = SlotKey(algorithm[0], private, pin_policy, touch_policy, ORIGIN_GENERATED)
        self._keys[cmd.p2] = key
        return Reply(tlv(0x7F49, key.public_template()), work=Work.KEYGEN)

    def _import_key(self, cmd: Command) -> Reply:
        if cmd.p2 not in KEY_SLOTS | {SLOT_ATTESTATION}:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        self._require_mgmt()
        if cmd.p1 not in self._profile.piv_key_types:
            raise ApduReject(apdu.SW_WRONG_DATA)
        body = parse_tlv_dict(cmd.data)
        if set(body) - {0x06, 0x07, 0x08, 0xAA, 0xAB}:
            raise ApduReject(apdu.SW_WRONG_DATA)
        private = import_private_key(cmd.p1, body)
        pin_policy, touch_policy = self._policies(cmd.p2, body)
        self._keys[cmd.p2] = SlotKey(cmd.p1, private, pin_policy, touch_policy, ORIGIN_IMPORTED)
        return Reply(work=Work.FLASH_WRITE)

    def _move_key(self, cmd: Command) -> Reply:
        source, destination = cmd.p2, cmd.p1
        if source not in KEY_SLOTS or (destination != 0xFF and (destination not in KEY_SLOTS or destination == source)):
            raise ApduReject(apdu.SW_WRONG_P1P2)
        self._require_mgmt()
        if source not in self._keys:
            raise ApduReject(apdu.SW_REFERENCE_NOT_FOUND)
        if destination != 0xFF:
            if destination in self._keys:  # emulator's choice: never overwrite silently
                raise ApduReject(apdu.SW_CONDITIONS_NOT_SATISFIED)
            self._keys[destination] = self._keys[source]
        del self._keys[source]
        return Reply(work=Work.FLASH_WRITE)

    def _use_key(self, slot: int, key_type: int, body: dict[int, bytes]) -> Reply:
        key = self._keys.get(slot)
        if key is None or key.key_type != key_type:
            raise ApduReject(apdu.SW_WRONG_DATA)
        if body.get(0x82) != b"" or set(body) not in ({0x81, 0x82}, {0x82, 0x85}):
            raise ApduReject(apdu.SW_WRONG_DATA)
        if key.pin_policy == PIN_POLICY_ONCE and not self._pin_verified:
            raise ApduReject(apdu.SW_SECURITY_STATUS_NOT_SATISFIED)
        if key.pin_policy == PIN_POLICY_ALWAYS and not (self._pin_verified and self._fresh_now):
            raise ApduReject(apdu.SW_SECURITY_STATUS_NOT_SATISFIED)
        touch = key.touch_policy == TOUCH_POLICY_ALWAYS or (
            key.touch_policy == TOUCH_POLICY_CACHED and not self._touch_cached
        )
        self._touch_cached = self._touch_cached or key.touch_policy == TOUCH_POLICY_CACHED
        if 0x81 in body:
            return Reply(tlv(0x7C, tlv(0x82, key.sign(body[0x81]))), work=Work.SIGN, touch=touch)
        return Reply(tlv(0x7C, tlv(0x82, key.agree(body[0x85]))), work=Work.ECDH, touch=touch)

    def _attest(self, cmd: Command) -> Reply:
        if cmd.p1 not in KEY_SLOTS or cmd.p2 != 0:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        key = self._keys.get(cmd.p1)
        if key is None:
            raise ApduReject(apdu.SW_REFERENCE_NOT_FOUND)
        if key.origin != ORIGIN_GENERATED:  # only keys born on the device can be vouched for
            raise ApduReject(apdu.SW_WRONG_DATA)
        signer = self._keys.get(SLOT_ATTESTATION)
        stored = self._objects.get(OBJECT_FOR_SLOT[SLOT_ATTESTATION])
        if signer is None or stored is None:
            raise ApduReject(apdu.SW_REFERENCE_NOT_FOUND)
        try:
            certificate = parse_tlv_dict(stored)[0x70]
            der = issue_attestation(
                slot=cmd.p1,
                key=key,
                attestation_key=signer,
                attestation_certificate_der=certificate,
                firmware=self._profile.version,
                serial=self._serial,
                form_factor=self._profile.form_factor,
                entropy=self._entropy,
            )
        except (KeyError, ValueError) as exc:  # someone stored a non-certificate in 5FFF01
            raise ApduReject(apdu.SW_WRONG_DATA) from exc
        return Reply(der, work=Work.ATTEST)

    # --- metadata and data objects ---------------------------------------------

    def _get_metadata(self, cmd: Command) -> Reply:
        if cmd.p1 != 0:
            raise ApduReject(apdu.SW_WRONG_P1P2)
        if cmd.p2 == SLOT_MANAGEMENT:
            default = self._mgmt_type == self._profile.default_management_key_type and hmac.compare_digest(
                self._mgmt_key, DEFAULT_MANAGEMENT_KEY
            )
            touch = TOUCH_POLICY_ALWAYS if self._mgmt_touch else TOUCH_POLICY_NEVER
            return Reply(tlv(0x01, bytes([self._mgmt_type])) + tlv(0x02, bytes([0, touch])) + tlv(0x05, bytes([default])))
        if cmd.p2 in (PIN_P2, PUK_P2):
            ref, default_value = (self._pin, DEFAULT_PIN) if cmd.p2 == PIN_P2 else (self._puk, DEFAULT_PUK)
            default = hmac.compare_digest(ref.value, default_value)
            return Reply(tlv(0x01, b"\xff") + tlv(0x05, bytes([default])) + tlv(0x06, bytes([ref.max_tries, ref.left])))
        key = self._keys.get(cmd.p2)
        if key is None:  # empty slot, unknown reference, and 96 (no bio) alike
            raise ApduReject(apdu.SW_REFERENCE_NOT_FOUND)
        return Reply(
            tlv(0x01, bytes([key.key_type]))
            + tlv(0x02, bytes([key.pin_policy, key.touch_policy]))
            + tlv(0x03, bytes([key.origin]))
            + tlv(0x04, key.public_template())
        )

    def _get_data(self, cmd: Command) -> Reply:
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF):
            raise ApduReject(apdu.SW_WRONG_P1P2)
        tag = unwrap_tlv(cmd.data, 0x5C)
        if tag == b"\x7e":
            return Reply(_DISCOVERY)
        if not 1 <= len(tag) <= 3:
            raise ApduReject(apdu.SW_WRONG_DATA)
        object_id = int.from_bytes(tag, "big")
        if object_id in _PIN_PROTECTED_OBJECTS and not self._pin_verified:
            raise ApduReject(apdu.SW_SECURITY_STATUS_NOT_SATISFIED)
        value = self._objects.get(object_id)
        if value is None:
            raise ApduReject(apdu.SW_FILE_NOT_FOUND)
        return Reply(tlv(0x53, value))

    def _put_data(self, cmd: Command) -> Reply:
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF):
            raise ApduReject(apdu.SW_WRONG_P1P2)
        self._require_mgmt()
        items = parse_tlvs(cmd.data)
        if len(items) != 2 or items[0][0] != 0x5C or items[1][0] != 0x53 or len(items[0][1]) != 3:
            raise ApduReject(apdu.SW_WRONG_DATA)
        object_id, value = int.from_bytes(items[0][1], "big"), items[1][1]
        if not _writable_object(object_id):
            raise ApduReject(apdu.SW_WRONG_DATA)
        if len(value) > _MAX_OBJECT_BYTES:
            raise ApduReject(apdu.SW_NO_SPACE)
        if value:
            self._objects[object_id] = value
        else:  # an empty 53 deletes the object (yubikit's delete_certificate)
            self._objects.pop(object_id, None)
        return Reply(work=Work.FLASH_WRITE)

    def _reset(self, cmd: Command) -> Reply:
        if self._pin.left or self._puk.left:  # only a device with both blocked may be reset
            raise ApduReject(apdu.SW_CONDITIONS_NOT_SATISFIED)
        attestation_key = self._keys.get(SLOT_ATTESTATION)
        attestation_object = self._objects.get(OBJECT_FOR_SLOT[SLOT_ATTESTATION])
        self._factory_defaults()
        self.deselect()
        # The factory attestation key and its certificate survive a PIV reset.
        if attestation_key is not None:
            self._keys[SLOT_ATTESTATION] = attestation_key
        if attestation_object is not None:
            self._objects[OBJECT_FOR_SLOT[SLOT_ATTESTATION]] = attestation_object
        return Reply(work=Work.FLASH_WRITE)

    # --- persistence -------------------------------------------------------------

    def to_state(self) -> dict[str, object]:
        """Persistent state as JSON-able data. Keys are in the clear: test device."""
        return {
            "pin": [self._pin.value.hex(), self._pin.max_tries, self._pin.left],
            "puk": [self._puk.value.hex(), self._puk.max_tries, self._puk.left],
            "mgmt": [self._mgmt_type, self._mgmt_key.hex(), self._mgmt_touch],
            "keys": {f"{slot:02x}": key.to_state() for slot, key in sorted(self._keys.items())},
            "objects": {f"{oid:06x}": value.hex() for oid, value in sorted(self._objects.items())},
        }

    def load_state(self, state: dict) -> None:
        """Replace persistent state with `state`; raises KeyError / ValueError / TypeError on bad data."""
        pin, puk, mgmt = state["pin"], state["puk"], state["mgmt"]
        self._pin = _Reference(bytes.fromhex(pin[0]), int(pin[1]), int(pin[2]))
        self._puk = _Reference(bytes.fromhex(puk[0]), int(puk[1]), int(puk[2]))
        self._mgmt_type, self._mgmt_key, self._mgmt_touch = int(mgmt[0]), bytes.fromhex(mgmt[1]), bool(mgmt[2])
        if self._mgmt_type not in _MGMT_KEY_BYTES or len(self._mgmt_key) != _MGMT_KEY_BYTES[self._mgmt_type]:
            raise ValueError("management key type and length disagree")
        self._keys = {int(slot, 16): SlotKey.from_state(key) for slot, key in state["keys"].items()}
        self._objects = {int(oid, 16): bytes.fromhex(value) for oid, value in state["objects"].items()}
        self.deselect()
