"""`SoftToken`: a `Token` whose keys live in one file on disk. Not hardware-protected.

The default token for `keyswarm up` and the demo. Anyone who can read the file
(and knows its passphrase, if it has one) holds the node's identity, so the
node logs `SoftToken.warning()` loudly at start.

File format (all integers big-endian; docs/hardware.md "Tokens" has the table):

    magic     8   b"KSWTOKEN"
    version   1   1
    protect   1   0 = plain, 1 = scrypt + ChaCha20-Poly1305
    -- protect = 1 only --
    log2_n    1   scrypt cost N = 2**log2_n (15 by default)
    r         1   scrypt block size (8)
    p         1   scrypt parallelism (1)
    salt     16
    check    16   SHA-256(b"keyswarm passphrase check" || scrypt[32:64])[:16]
    nonce    12
    -- then --
    payload       (protect = 0) or ChaCha20-Poly1305(scrypt[0:32], nonce,
                  payload, aad = every header byte before it) (protect = 1)

    payload: algorithm 1 (1 = ed25519 + x25519, 2 = p256 + p256)
             identity private key 32, sealing private key 32,
             HMAC-SHA1 secret 20,
             identity certificate (u32 length + DER, length 0 = empty),
             sealing certificate (u32 length + DER)

Rules:
- Created with O_CREAT|O_EXCL and mode 0600; never overwrites a file. A file
  readable or writable by group or others is refused on open, as ssh refuses
  such a key. Rewrites (`generate`, `write_certificate`) go to a fresh 0600
  temporary file in the same directory, fsynced, then `os.replace`d.
- The check value tells a wrong passphrase (`WrongPassphrase`, an
  `AuthError`) from a damaged file (`TokenError` naming the file); it lets an
  attacker test a passphrase no faster than the AEAD tag already does.
- Every bad file (absent, oversized > 64 KiB, truncated, wrong magic, newer
  version, bad lengths, invalid keys) raises a `TokenError` naming the path
  before any state is built: nothing half-loaded survives a failed open.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
import tempfile
import unicodedata
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from keyswarm.errors import AuthError, TokenAbsent, TokenError
from keyswarm.fileio import read_at_most
from keyswarm.hardware.token import (
    IDENTITY_ALGORITHMS,
    SEALING_ALGORITHM_FOR,
    BadPeerKey,
    Entropy,
    IdentityPrivateKey,
    IdentityPublicKey,
    SealingPrivateKey,
    SealingPublicKey,
    Token,
    TokenInfo,
    check_certificate_slot,
    check_hmac_challenge,
    generate_private_key,
)

MAGIC = b"KSWTOKEN"
FORMAT_VERSION = 1
#: Largest key file accepted; a real one is well under 4 KiB even with two certificates.
MAX_FILE_BYTES = 64 * 1024
#: scrypt cost for new files: 2**15 * 8 * 128 B = 32 MiB and ~70 ms here.
DEFAULT_SCRYPT_LOG2_N = 15
SCRYPT_R = 8
SCRYPT_P = 1
#: Bounds a file's scrypt parameters must meet: a crafted file must not make open() eat the machine.
SCRYPT_LOG2_N_RANGE = (10, 20)
MAX_SCRYPT_MEMORY_BYTES = 1 << 30

_PLAIN, _SCRYPT_CHACHA = 0, 1
_ALGORITHM_CODES = {"ed25519": 1, "p256": 2}
_ALGORITHM_NAMES = {code: name for name, code in _ALGORITHM_CODES.items()}
_HMAC_SECRET_BYTES = 20
_SALT_BYTES, _CHECK_BYTES, _NONCE_BYTES = 16, 16, 12
_CHECK_LABEL = b"keyswarm passphrase check"


class WrongPassphrase(AuthError):
    """The passphrase does not open this key file (or one was missing or not expected)."""


class SoftToken(Token):
    """Identity key, sealing key, HMAC secret and certificate slots held in one key file."""

    def __init__(self, path: Path, payload: _Payload, protection: _Protection | None, entropy: Entropy):
        # Use `create` or `open`; this constructor trusts its arguments.
        self._path = path
        self._payload: _Payload | None = payload
        self._protection = protection
        self._entropy = entropy

    # --- construction ------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        algorithm: str = "ed25519",
        passphrase: str | bytes | None = None,
        entropy: Entropy = os.urandom,
        scrypt_log2_n: int = DEFAULT_SCRYPT_LOG2_N,
    ) -> SoftToken:
        """Create a new key file at `path` with fresh keys. Refuses to overwrite anything."""
        path = Path(path)
        if algorithm not in IDENTITY_ALGORITHMS:
            raise TokenError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(IDENTITY_ALGORITHMS)}")
        protection = None
        if passphrase is not None:
            low, high = SCRYPT_LOG2_N_RANGE
            if not low <= scrypt_log2_n <= high:
                raise TokenError(f"scrypt log2(N) must be {low}..{high}, got {scrypt_log2_n}")
            protection = _Protection.derive(
                _passphrase_bytes(passphrase), log2_n=scrypt_log2_n, r=SCRYPT_R, p=SCRYPT_P, salt=entropy(_SALT_BYTES)
            )
        payload = _Payload.generate(algorithm, entropy)
        data = _encode_file(payload, protection, entropy)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError as exc:
            raise TokenError(f"{path}: already exists; refusing to overwrite a key file") from exc
        except OSError as exc:
            raise TokenError(f"{path}: cannot create key file: {exc.strerror}") from exc
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            path.unlink(missing_ok=True)  # no half-written key file left to be mistaken for a good one
            raise TokenError(f"{path}: cannot write key file: {exc.strerror}") from exc
        return cls(path, payload, protection, entropy)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, passphrase: str | bytes | None = None, entropy: Entropy = os.urandom
    ) -> SoftToken:
        """Load the key file at `path`; `WrongPassphrase` or `TokenError` (naming it) on failure."""
        path = Path(path)
        data = _read_key_file(path)
        payload, protection = _decode_file(path, data, passphrase)
        return cls(path, payload, protection, entropy)

    @property
    def path(self) -> Path:
        return self._path

    def warning(self) -> str:
        """The text a node logs loudly at start when it runs on a soft token."""
        guard = "and knows its passphrase " if self._protection else ""
        return (
            f"keys are NOT hardware-protected: they live in the file {self._path}; anyone who can read it "
            f"{guard}can act as this node. Use a YubiKey for anything but development."
        )

    # --- Token -------------------------------------------------------------

    def info(self) -> TokenInfo:
        return TokenInfo(
            kind="soft",
            serial=None,
            firmware=None,
            identity_algorithm=self._open_payload().algorithm,
            hardware_protected=False,
        )

    def identity_public_key(self) -> IdentityPublicKey:
        return self._open_payload().identity.public_key()

    def sign(self, data: bytes) -> bytes:
        key = self._open_payload().identity
        if isinstance(key, Ed25519PrivateKey):
            return key.sign(data)
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    def sealing_public_key(self) -> SealingPublicKey:
        return self._open_payload().sealing.public_key()

    def key_agreement(self, peer_public: SealingPublicKey) -> bytes:
        key = self._open_payload().sealing
        if isinstance(key, X25519PrivateKey):
            if not isinstance(peer_public, X25519PublicKey):
                raise BadPeerKey(f"peer key is {type(peer_public).__name__}; this token's sealing key is X25519")
            try:
                return key.exchange(peer_public)
            except ValueError as exc:  # a low-order point gives the all-zero secret
                raise BadPeerKey("X25519 key agreement gave a degenerate secret") from exc
        if not (isinstance(peer_public, ec.EllipticCurvePublicKey) and isinstance(peer_public.curve, ec.SECP256R1)):
            raise BadPeerKey(f"peer key is {type(peer_public).__name__}; this token's sealing key is P-256")
        return key.exchange(ec.ECDH(), peer_public)

    def generate(self, *, algorithm: str | None = None) -> None:
        algorithm = algorithm or self._open_payload().algorithm
        if algorithm not in IDENTITY_ALGORITHMS:
            raise TokenError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(IDENTITY_ALGORITHMS)}")
        self._replace(_Payload.generate(algorithm, self._entropy))

    def read_certificate(self, slot: str) -> bytes | None:
        check_certificate_slot(slot)
        return self._open_payload().certificates.get(slot)

    def write_certificate(self, slot: str, der: bytes) -> None:
        check_certificate_slot(slot)
        payload = self._open_payload()
        certificates = dict(payload.certificates)
        certificates[slot] = bytes(der)
        self._replace(_Payload(payload.algorithm, payload.identity, payload.sealing, payload.hmac_secret, certificates))

    def hmac_sha1(self, challenge: bytes) -> bytes:
        check_hmac_challenge(challenge)
        return hmac.new(self._open_payload().hmac_secret, challenge, hashlib.sha1).digest()

    def close(self) -> None:
        self._payload = None
        self._protection = None

    # --- internals ---------------------------------------------------------

    def _open_payload(self) -> _Payload:
        if self._payload is None:
            raise TokenError(f"soft token {self._path} is closed")
        return self._payload

    def _replace(self, payload: _Payload) -> None:
        data = _encode_file(payload, self._protection, self._entropy)
        if len(data) > MAX_FILE_BYTES:
            raise TokenError(f"{self._path}: key file would grow past {MAX_FILE_BYTES} bytes; certificate too large")
        _replace_file(self._path, data)
        self._payload = payload


class _Payload:
    """The secret contents of a key file, decoded into key objects."""

    def __init__(
        self,
        algorithm: str,
        identity: IdentityPrivateKey,
        sealing: SealingPrivateKey,
        hmac_secret: bytes,
        certificates: dict[str, bytes],
    ):
        self.algorithm = algorithm
        self.identity = identity
        self.sealing = sealing
        self.hmac_secret = hmac_secret
        self.certificates = certificates

    @classmethod
    def generate(cls, algorithm: str, entropy: Entropy) -> _Payload:
        identity = generate_private_key(algorithm, entropy)
        sealing = generate_private_key(SEALING_ALGORITHM_FOR[algorithm], entropy)
        return cls(algorithm, identity, sealing, entropy(_HMAC_SECRET_BYTES), {})  # type: ignore[arg-type]

    def encode(self) -> bytes:
        parts = [bytes([_ALGORITHM_CODES[self.algorithm]]), _private_bytes(self.identity)]
        parts += [_private_bytes(self.sealing), self.hmac_secret]
        for slot in ("identity", "sealing"):
            der = self.certificates.get(slot, b"")
            parts.append(struct.pack(">I", len(der)) + der)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> _Payload:
        """Raise ValueError (caught and named by the caller) on any malformed byte."""
        if len(data) < 1 + 32 + 32 + _HMAC_SECRET_BYTES + 8:
            raise ValueError("payload truncated")
        algorithm = _ALGORITHM_NAMES.get(data[0])
        if algorithm is None:
            raise ValueError(f"unknown algorithm code {data[0]}")
        identity_raw, sealing_raw = data[1:33], data[33:65]
        hmac_secret = data[65 : 65 + _HMAC_SECRET_BYTES]
        offset = 65 + _HMAC_SECRET_BYTES
        certificates = {}
        for slot in ("identity", "sealing"):
            if offset + 4 > len(data):
                raise ValueError("payload truncated in the certificate table")
            (length,) = struct.unpack_from(">I", data, offset)
            offset += 4
            if offset + length > len(data):
                raise ValueError(f"{slot} certificate length {length} runs past the end")
            if length:
                certificates[slot] = data[offset : offset + length]
            offset += length
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} trailing bytes after the payload")
        if algorithm == "ed25519":
            identity: IdentityPrivateKey = Ed25519PrivateKey.from_private_bytes(identity_raw)
            sealing: SealingPrivateKey = X25519PrivateKey.from_private_bytes(sealing_raw)
        else:
            identity = _p256_from_scalar(identity_raw)
            sealing = _p256_from_scalar(sealing_raw)
        return cls(algorithm, identity, sealing, hmac_secret, certificates)


class _Protection:
    """scrypt parameters and the key they derived from the passphrase."""

    def __init__(self, *, log2_n: int, r: int, p: int, salt: bytes, key: bytes, check: bytes):
        self.log2_n, self.r, self.p, self.salt, self.key, self.check = log2_n, r, p, salt, key, check

    @classmethod
    def derive(cls, passphrase: bytes, *, log2_n: int, r: int, p: int, salt: bytes) -> _Protection:
        stretched = Scrypt(salt=salt, length=64, n=1 << log2_n, r=r, p=p).derive(passphrase)
        check = hashlib.sha256(_CHECK_LABEL + stretched[32:]).digest()[:_CHECK_BYTES]
        return cls(log2_n=log2_n, r=r, p=p, salt=salt, key=stretched[:32], check=check)

    def header(self) -> bytes:
        return bytes([self.log2_n, self.r, self.p]) + self.salt + self.check


def _encode_file(payload: _Payload, protection: _Protection | None, entropy: Entropy) -> bytes:
    plain = payload.encode()
    if protection is None:
        return MAGIC + bytes([FORMAT_VERSION, _PLAIN]) + plain
    nonce = entropy(_NONCE_BYTES)
    header = MAGIC + bytes([FORMAT_VERSION, _SCRYPT_CHACHA]) + protection.header() + nonce
    return header + ChaCha20Poly1305(protection.key).encrypt(nonce, plain, header)


def _decode_file(path: Path, data: bytes, passphrase: str | bytes | None) -> tuple[_Payload, _Protection | None]:
    def corrupt(why: str) -> TokenError:
        return TokenError(f"{path}: not a valid keyswarm key file: {why}")

    if len(data) < len(MAGIC) + 2:
        raise corrupt(f"truncated ({len(data)} bytes)")
    if data[: len(MAGIC)] != MAGIC:
        raise corrupt("wrong magic (not a keyswarm key file)")
    version, protect = data[len(MAGIC)], data[len(MAGIC) + 1]
    if version > FORMAT_VERSION:
        raise TokenError(
            f"{path}: key file format version {version} is newer than this keyswarm reads ({FORMAT_VERSION}); upgrade"
        )
    if version != FORMAT_VERSION:
        raise corrupt(f"unknown format version {version}")
    body = data[len(MAGIC) + 2 :]
    protection = None
    if protect == _PLAIN:
        if passphrase is not None:
            raise WrongPassphrase(f"{path}: a passphrase was given but this key file is not passphrase-protected")
        plain = body
    elif protect == _SCRYPT_CHACHA:
        fixed = 3 + _SALT_BYTES + _CHECK_BYTES + _NONCE_BYTES
        if len(body) < fixed + 16:
            raise corrupt("truncated in the passphrase header")
        log2_n, r, p = body[0], body[1], body[2]
        low, high = SCRYPT_LOG2_N_RANGE
        if not (low <= log2_n <= high and r >= 1 and 1 <= p <= 16 and 128 * r << log2_n <= MAX_SCRYPT_MEMORY_BYTES):
            raise corrupt(f"scrypt parameters out of range (log2 N {log2_n}, r {r}, p {p})")
        if passphrase is None:
            raise WrongPassphrase(f"{path}: this key file is passphrase-protected and no passphrase was given")
        salt = body[3 : 3 + _SALT_BYTES]
        check = body[3 + _SALT_BYTES : 3 + _SALT_BYTES + _CHECK_BYTES]
        nonce = body[fixed - _NONCE_BYTES : fixed]
        protection = _Protection.derive(_passphrase_bytes(passphrase), log2_n=log2_n, r=r, p=p, salt=salt)
        if not hmac.compare_digest(protection.check, check):
            raise WrongPassphrase(f"{path}: wrong passphrase")
        header = data[: len(MAGIC) + 2 + fixed]
        try:
            plain = ChaCha20Poly1305(protection.key).decrypt(nonce, body[fixed:], header)
        except InvalidTag as exc:
            raise corrupt("the passphrase is right but the encrypted keys are damaged") from exc
    else:
        raise corrupt(f"unknown protection scheme {protect}")
    try:
        return _Payload.decode(plain), protection
    except ValueError as exc:
        raise corrupt(str(exc)) from exc


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise TokenAbsent(f"{path}: no such key file") from exc
    except OSError as exc:
        raise TokenError(f"{path}: cannot open key file: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"{path}: not a regular file")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise TokenError(
                f"{path}: permissions {mode:04o} are too open; a key file must be accessible by its owner only "
                f"(run: chmod 600 {path})"
            )
        data = read_at_most(fd, MAX_FILE_BYTES)
    except OSError as exc:
        raise TokenError(f"{path}: cannot read key file: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise TokenError(f"{path}: key file is larger than {MAX_FILE_BYTES} bytes; not a keyswarm key file")
    return data


def _replace_file(path: Path, data: bytes) -> None:
    try:
        # mkstemp opens with O_EXCL and mode 0600 in the target's directory, so
        # os.replace is atomic and the keys are never world-readable mid-write.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise TokenError(f"{path}: cannot rewrite key file: {exc.strerror}") from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    # NFC so the same passphrase typed on two keyboards derives the same key.
    raw = unicodedata.normalize("NFC", passphrase).encode() if isinstance(passphrase, str) else bytes(passphrase)
    if not raw:
        raise TokenError("empty passphrase; pass None for a key file without one")
    return raw


def _private_bytes(key: IdentityPrivateKey | SealingPrivateKey) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.private_numbers().private_value.to_bytes(32, "big")
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _p256_from_scalar(raw: bytes) -> ec.EllipticCurvePrivateKey:
    # derive_private_key raises ValueError for 0 or a scalar >= the group order.
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
