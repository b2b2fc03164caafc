"""Enrolment: create a network root, enrol a node, enrol a client, describe a token.

The blocking logic behind `keyswarm init`, `enroll-node`, `enroll-client` and
`token info` (`keyswarm/cli_enrol.py` only parses arguments and prints).
Everything here may block on a token (a YubiKey signature takes ~80 ms).

Rules:
- Nothing is half-done by a refusal: every output path is checked (and every
  input read and cross-checked) before a token is asked to sign or a file is
  written. A refusal is an `EnrolmentError` naming the path or argument.
- Outputs are written atomically (temporary file, fsync, rename). Secrets
  (sealed domain keys, client key files) are 0600; certificates 0644; new
  directories 0700. An existing output is refused unless `force`.
- Inputs are hostile until checked: a PEM must hold one X.509 certificate of
  the expected keyswarm kind; a root certificate must be self-signed and
  belong to the token that claims to be the root (same network id); an
  issued certificate is verified with `verify_chain` before it is written.
- Secrets come from the environment by name (`--passphrase-env VAR`): never
  from argv (visible in `ps`), never logged.
- The domain key is generated at `init` and sealed to the root token; a node
  gets it unsealed by the root token and resealed to its own token. It never
  touches the disk in the clear.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keyswarm.crypto.certificates import (
    certificate_identity,
    client_certificate,
    identity_uri,
    is_ca,
    network_id,
    node_certificate,
    root_certificate,
)
from keyswarm.crypto.chain_verify import verify_chain
from keyswarm.crypto.sealing import (
    DomainKey,
    UnsealFailed,
    seal_domain_key_to_token,
    unseal_domain_key_with_token,
)
from keyswarm.errors import KeyswarmError, TokenAbsent, TokenError
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.hardware.specs import TokenSpec, open_token, parse_token_spec
from keyswarm.hardware.token import Entropy, Token, public_key_fingerprint
from keyswarm.hardware.client_slot import ClientSlot
from keyswarm.hardware.yubikey_token import PinSource, YubiKeyToken

ROOT_CERT_FILE = "root.pem"
NODE_CERT_FILE = "node.pem"
CLIENT_CERT_FILE = "client.pem"
DOMAIN_KEY_FILE = "domain-key.sealed"
SECRET_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
#: Largest PEM file read as a certificate (ours are under 2 KiB).
MAX_PEM_BYTES = 64 * 1024
MAX_LIFETIME_DAYS = 36500


class EnrolmentError(KeyswarmError):
    """An enrolment step refused its input or could not write its output."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenAccess:
    """How to open one token: its spec, and the names of the environment variables holding its secrets."""

    spec: str
    pin_env: str | None = None  # PIV PIN (virtual, yubikey); None: $KEYSWARM_PIN or a prompt
    passphrase_env: str | None = None  # soft token passphrase; None: no passphrase
    management_key_env: str | None = None  # PIV management key, hex; None: the factory default


@dataclass(frozen=True, slots=True)
class NetworkCreated:
    network_id: str
    root_uri: str
    root_cert_path: Path
    domain_key_path: Path
    token: str  # what the root token is, for the operator
    warning: str | None  # the soft-token warning, when the root is not hardware


@dataclass(frozen=True, slots=True)
class NodeEnrolled:
    uri: str
    node_cert_path: Path
    root_cert_path: Path
    domain_key_path: Path
    token: str
    warning: str | None


@dataclass(frozen=True, slots=True)
class ClientEnrolled:
    uri: str
    client_cert_path: Path
    root_cert_path: Path | None  # written when the root issued the certificate
    key_location: str  # the key file, or the YubiKey slot holding the key


# --- init ---------------------------------------------------------------------------


def create_network(
    access: TokenAccess,
    *,
    network_name: str,
    out_dir: str | os.PathLike[str],
    lifetime_days: int | None = None,
    algorithm: str | None = None,
    force: bool = False,
    now: datetime | None = None,
    environ: Mapping[str, str] = os.environ,
    entropy: Entropy = os.urandom,
) -> NetworkCreated:
    """Create a network root on a token: root certificate, domain key sealed to the token."""
    out = _output_dir(out_dir)
    root_path, key_path = out / ROOT_CERT_FILE, out / DOMAIN_KEY_FILE
    _refuse_existing([root_path, key_path], force, "a network root")
    lifetime = _lifetime(lifetime_days)
    now = now or datetime.now(timezone.utc)
    with open_access(access, create=True, environ=environ, entropy=entropy) as token:
        has_key = _has_identity_key(token)
        held = token.read_certificate("identity") if has_key else None
        if held is not None and not force:
            raise EnrolmentError(
                f"token {access.spec} already holds a certificate ({_describe_der(held)}); it is in use. "
                "--force generates new keys on it (the old identity is lost)"
            )
        if held is not None or not has_key or _wrong_algorithm(token, algorithm):
            token.generate(algorithm=algorithm)
        kwargs = {} if lifetime is None else {"lifetime": lifetime}
        root = root_certificate(token, network_name=network_name, now=now, entropy=entropy, **kwargs)
        domain_key = DomainKey.generate(entropy)
        sealed = seal_domain_key_to_token(token, domain_key, entropy=entropy)
        write_file(root_path, _pem(root), mode=CERT_MODE, overwrite=force)
        write_file(key_path, sealed, mode=SECRET_MODE, overwrite=force)
        token.write_certificate("identity", root.public_bytes(serialization.Encoding.DER))
        return NetworkCreated(
            network_id=network_id(root), root_uri=certificate_identity(root).uri, root_cert_path=root_path,
            domain_key_path=key_path, token=_token_line(access.spec, token), warning=_warning(token),
        )


# --- enroll-node ------------------------------------------------------------------------


def enrol_node(
    root: TokenAccess,
    root_cert_path: str | os.PathLike[str],
    node: TokenAccess,
    *,
    name: str,
    out_dir: str | os.PathLike[str],
    domain_key_path: str | os.PathLike[str] | None = None,
    lifetime_days: int | None = None,
    force: bool = False,
    now: datetime | None = None,
    environ: Mapping[str, str] = os.environ,
    entropy: Entropy = os.urandom,
) -> NodeEnrolled:
    """Issue a node certificate from the root token and hand the node the domain key, sealed to its token."""
    root_cert = read_certificate_pem(root_cert_path, "root certificate", kinds=("root",))
    network = network_id(root_cert)
    uri = identity_uri(network, "node", name)  # checks the name before anything is opened
    sealed_in = Path(domain_key_path) if domain_key_path else Path(root_cert_path).parent / DOMAIN_KEY_FILE
    envelope = _read_file(sealed_in, "sealed domain key", limit=4096)
    out = _output_dir(out_dir)
    outputs = (out / NODE_CERT_FILE, out / ROOT_CERT_FILE, out / DOMAIN_KEY_FILE)
    if outputs[1].resolve() == Path(root_cert_path).resolve() or outputs[2].resolve() == sealed_in.resolve():
        raise EnrolmentError(f"--out {out} is the root's own directory; give the node a directory of its own")
    _refuse_existing([outputs[0], outputs[2]], force, "an enrolled node")
    lifetime = _lifetime(lifetime_days)
    now = now or datetime.now(timezone.utc)
    with open_access(root, create=False, environ=environ, entropy=entropy) as root_token:
        _require_holder(root_token, root_cert, root.spec, "root")
        try:
            domain_key = unseal_domain_key_with_token(root_token, envelope)
        except UnsealFailed as exc:
            raise EnrolmentError(f"{sealed_in}: the domain key does not open with root token {root.spec}: {exc}") from exc
        with open_access(node, create=True, environ=environ, entropy=entropy) as node_token:
            if not _has_identity_key(node_token):
                node_token.generate()
            node_key = node_token.identity_public_key()
            if public_key_fingerprint(node_key) == public_key_fingerprint(root_cert.public_key()):
                raise EnrolmentError(f"node token {node.spec} is the root token; a node needs a token of its own")
            held = node_token.read_certificate("identity")
            if held is not None and not force:
                raise EnrolmentError(
                    f"node token {node.spec} already holds a certificate ({_describe_der(held)}); "
                    "--force issues a new certificate for the same key"
                )
            kwargs = {} if lifetime is None else {"lifetime": lifetime}
            cert = node_certificate(root_token, root_cert, node_key, node_name=name, now=now, entropy=entropy, **kwargs)
            _check_issued(cert, [], root_cert, now, "node")
            sealed = seal_domain_key_to_token(node_token, domain_key, entropy=entropy)
            write_file(outputs[0], _pem(cert), mode=CERT_MODE, overwrite=force)
            write_file(outputs[1], _pem(root_cert), mode=CERT_MODE, overwrite=True)
            write_file(outputs[2], sealed, mode=SECRET_MODE, overwrite=force)
            node_token.write_certificate("identity", cert.public_bytes(serialization.Encoding.DER))
            return NodeEnrolled(
                uri=uri, node_cert_path=outputs[0], root_cert_path=outputs[1], domain_key_path=outputs[2],
                token=_token_line(node.spec, node_token), warning=_warning(node_token),
            )


# --- enroll-client -----------------------------------------------------------------------


def enrol_client(
    issuer: TokenAccess,
    issuer_cert_path: str | os.PathLike[str],
    *,
    name: str,
    out_dir: str | os.PathLike[str],
    key_file: str | os.PathLike[str] | None = None,
    key_passphrase_env: str | None = None,
    yubikey_slot_9a: TokenAccess | None = None,
    admin: bool = False,
    lifetime_days: int | None = None,
    force: bool = False,
    now: datetime | None = None,
    environ: Mapping[str, str] = os.environ,
    entropy: Entropy = os.urandom,
) -> ClientEnrolled:
    """Issue a client certificate for a new key file, or for the key in a YubiKey's slot 9a."""
    if (key_file is None) == (yubikey_slot_9a is None):
        raise EnrolmentError("give exactly one of --key-file and --yubikey-slot-9a")
    issuer_cert = read_certificate_pem(issuer_cert_path, "issuer certificate", kinds=("root", "client"))
    issuer_identity = certificate_identity(issuer_cert)
    if issuer_identity.kind == "client" and not is_ca(issuer_cert):
        raise EnrolmentError(f"{issuer_cert_path}: client {issuer_identity.name!r} is not an admin and cannot issue")
    uri = identity_uri(issuer_identity.network_id, "client", name)
    out = _output_dir(out_dir)
    cert_path = out / CLIENT_CERT_FILE
    root_path = out / ROOT_CERT_FILE if issuer_identity.kind == "root" else None
    _refuse_existing([cert_path] + ([Path(key_file)] if key_file is not None else []), force, "a client enrolment")
    if key_file is not None and not Path(key_file).parent.is_dir():
        raise EnrolmentError(f"--key-file {key_file}: directory {Path(key_file).parent} does not exist")
    if yubikey_slot_9a is not None and _same_device(yubikey_slot_9a.spec, issuer.spec):
        raise EnrolmentError("the client's YubiKey is the issuer's token; a client key lives on a device of its own")
    passphrase = _env(environ, key_passphrase_env, "key file passphrase") if key_passphrase_env else None
    lifetime = {} if lifetime_days is None else {"lifetime": _lifetime(lifetime_days)}
    now = now or datetime.now(timezone.utc)
    with open_access(issuer, create=False, environ=environ, entropy=entropy) as issuer_token:
        _require_holder(issuer_token, issuer_cert, issuer.spec, issuer_identity.kind)
        if key_file is not None:
            private_key = Ed25519PrivateKey.from_private_bytes(entropy(32))
            cert = client_certificate(
                issuer_token, issuer_cert, private_key.public_key(), client_name=name, now=now, admin=admin,
                entropy=entropy, **lifetime,
            )
            if root_path is not None:
                _check_issued(cert, [], issuer_cert, now, "client")
            encryption = (
                serialization.BestAvailableEncryption(passphrase.encode("utf-8"))
                if passphrase else serialization.NoEncryption()
            )
            pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
            write_file(Path(key_file), pem, mode=SECRET_MODE, overwrite=force)
            location = f"key file {key_file}"
        else:
            with _open_client_slot(yubikey_slot_9a, environ=environ, entropy=entropy) as slot:
                public_key = slot.public_key()
                cert = client_certificate(
                    issuer_token, issuer_cert, public_key, client_name=name, now=now, admin=admin,
                    entropy=entropy, **lifetime,
                )
                if root_path is not None:
                    _check_issued(cert, [], issuer_cert, now, "client")
                slot.store_certificate(cert)
                location = slot.location
    write_file(cert_path, _pem(cert), mode=CERT_MODE, overwrite=force)
    if root_path is not None:
        write_file(root_path, _pem(issuer_cert), mode=CERT_MODE, overwrite=True)
    return ClientEnrolled(uri=uri, client_cert_path=cert_path, root_cert_path=root_path, key_location=location)


# --- tokens -------------------------------------------------------------------------------


def open_access(
    access: TokenAccess, *, create: bool, environ: Mapping[str, str] = os.environ, entropy: Entropy = os.urandom
) -> Token:
    """Open the token `access` names, reading its secrets from the environment variables it names."""
    spec = parse_token_spec(access.spec)
    if spec.scheme != "soft" and access.passphrase_env:
        raise EnrolmentError(f"{access.spec}: a passphrase is for soft tokens; this one takes a PIN")
    if spec.scheme == "soft" and (access.pin_env or access.management_key_env):
        raise EnrolmentError(f"{access.spec}: a soft token has no PIN or management key; use a passphrase")
    passphrase = _env(environ, access.passphrase_env, "passphrase") if access.passphrase_env else None
    pin = PinSource(env_var=access.pin_env, environ=environ) if access.pin_env else PinSource(environ=environ)
    management_key = management_key_from(environ, access.management_key_env)
    if spec.scheme in ("soft", "virtual"):
        _check_token_path(spec)
    return open_token(
        spec, pin=pin, passphrase=passphrase, management_key=management_key, create=create, entropy=entropy
    )


def _same_device(a: str, b: str) -> bool:
    first, second = parse_token_spec(a), parse_token_spec(b)
    if first.scheme != second.scheme:
        return False
    if first.path is not None:
        return Path(first.path).resolve() == Path(second.path).resolve()
    return first.serial == second.serial


def _open_client_slot(access: TokenAccess, *, environ: Mapping[str, str], entropy: Entropy) -> ClientSlot:
    spec = parse_token_spec(access.spec)
    if spec.scheme == "soft":
        raise EnrolmentError(f"--yubikey-slot-9a {access.spec}: a soft token has no PIV slot 9a; use --key-file")
    if spec.scheme == "virtual":
        _check_token_path(spec)
    key = management_key_from(environ, access.management_key_env)
    return ClientSlot.open(spec, management_key=key, create=True, entropy=entropy)


def management_key_from(environ: Mapping[str, str], name: str | None) -> bytes | None:
    """The PIV management key from the environment variable `name` (hex), or None for the default."""
    if not name:
        return None
    text = _env(environ, name, "management key").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise EnrolmentError(f"${name}: a management key is hex (48 digits for the default AES-192 / TDES)") from None
    if len(key) not in (16, 24, 32):
        raise EnrolmentError(f"${name}: a management key is 16, 24 or 32 bytes, got {len(key)}")
    return key


def _check_token_path(spec: TokenSpec) -> None:
    path = Path(spec.path)
    if path.is_dir():
        raise EnrolmentError(f"token file {path} is a directory")
    if not path.parent.is_dir():
        raise EnrolmentError(f"token file {path}: directory {path.parent} does not exist")


def _has_identity_key(token: Token) -> bool:
    try:
        token.identity_public_key()
    except TokenAbsent:
        raise
    except TokenError:
        if isinstance(token, SoftToken):
            raise
        return False  # an empty PIV slot 9c
    return True


def _wrong_algorithm(token: Token, algorithm: str | None) -> bool:
    return algorithm is not None and token.info().identity_algorithm != algorithm


def _require_holder(token: Token, cert: x509.Certificate, spec: str, kind: str) -> None:
    """Refuse a certificate the token does not hold the key of (another network, another token)."""
    held = token.identity_public_key()
    if public_key_fingerprint(held) == public_key_fingerprint(cert.public_key()):
        return
    if kind == "root":
        raise EnrolmentError(
            f"the root certificate is the root of network {network_id(cert)}, but token {spec} holds the key of "
            f"network {network_id(held)}: they do not belong together"
        )
    raise EnrolmentError(f"token {spec} does not hold the key of the {kind} certificate {certificate_identity(cert).uri}")


def _token_line(spec: str, token: Token) -> str:
    info = token.info()
    parts = [info.kind, info.identity_algorithm]
    if info.serial is not None:
        parts.append(f"serial {info.serial}")
    if info.firmware is not None:
        parts.append(f"firmware {info.firmware}")
    return f"{spec} ({', '.join(parts)})"


def _warning(token: Token) -> str | None:
    return token.warning() if isinstance(token, SoftToken) else None


# --- certificates and files -------------------------------------------------------------------


def read_certificate_pem(path: str | os.PathLike[str], what: str, *, kinds: tuple[str, ...]) -> x509.Certificate:
    """One keyswarm certificate of one of `kinds` from a PEM file; `EnrolmentError` on anything else."""
    data = _read_file(Path(path), what, limit=MAX_PEM_BYTES)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise EnrolmentError(f"{path}: the {what} is not a PEM X.509 certificate") from None
    if len(certs) != 1:
        raise EnrolmentError(f"{path}: expected one certificate, found {len(certs)}")
    cert = certs[0]
    try:
        identity = certificate_identity(cert)
    except ValueError as exc:
        raise EnrolmentError(f"{path}: not a keyswarm certificate ({exc})") from None
    if identity.kind not in kinds:
        raise EnrolmentError(f"{path}: the {what} is a {identity.kind} certificate ({identity.uri})")
    if identity.kind == "root":
        try:
            cert.verify_directly_issued_by(cert)
        except (InvalidSignature, ValueError, TypeError):
            raise EnrolmentError(f"{path}: the root certificate's self-signature does not verify") from None
        if network_id(cert) != identity.network_id:
            raise EnrolmentError(f"{path}: the root certificate names network {identity.network_id}, not its own key's")
    return cert


def _check_issued(cert: x509.Certificate, middle: list, root: x509.Certificate, now: datetime, kind: str) -> None:
    verify_chain(cert, middle, root, now=now, network_id=network_id(root), expected_kind=kind)


def _describe_der(der: bytes) -> str:
    try:
        return certificate_identity(x509.load_der_x509_certificate(der)).uri
    except ValueError:
        return "not a keyswarm certificate"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _read_file(path: Path, what: str, *, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise EnrolmentError(f"{path}: no such file (the {what})") from None
    except IsADirectoryError:
        raise EnrolmentError(f"{path}: is a directory, not the {what}") from None
    except OSError as exc:
        raise EnrolmentError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if len(data) > limit:
        raise EnrolmentError(f"{path}: larger than {limit} bytes; not the {what}")
    return data


def _output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Check an output directory; it is made (0700) only when the first file is written into it."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EnrolmentError(f"--out {out}: exists and is not a directory")
    existing = next((parent for parent in (out, *out.parents) if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise EnrolmentError(f"--out {out}: {existing} is not a directory")
    return out


def _refuse_existing(paths: list[Path], force: bool, what: str) -> None:
    for path in paths:
        if path.is_dir():
            raise EnrolmentError(f"{path} is a directory")
        if path.exists() and not force:
            raise EnrolmentError(f"{path} already exists ({what} is there); refusing to overwrite it without --force")


def write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write `data` to `path` atomically with exactly `mode`; refuse an existing file unless `overwrite`."""
    if path.exists() and not overwrite:
        raise EnrolmentError(f"{path} already exists; refusing to overwrite it without --force")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # the umask must not loosen or tighten what was asked
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise EnrolmentError(f"{path}: cannot write: {exc.strerror}") from None


def _lifetime(days: int | None) -> timedelta | None:
    if days is None:
        return None
    if not 1 <= days <= MAX_LIFETIME_DAYS:
        raise EnrolmentError(f"lifetime must be 1 to {MAX_LIFETIME_DAYS} days, got {days}")
    return timedelta(days=days)


def _env(environ: Mapping[str, str], name: str, what: str) -> str:
    value = environ.get(name)
    if value is None:
        raise EnrolmentError(f"the {what} is read from ${name}, which is not set")
    if not value:
        raise EnrolmentError(f"the {what} in ${name} is empty")
    return value


# --- token info ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenReport:
    """What `keyswarm token info` shows. Fingerprints are SHA-256 over the SubjectPublicKeyInfo, hex."""

    spec: str
    kind: str
    serial: int | None
    firmware: str | None
    identity_algorithm: str
    sealing_algorithm: str
    hardware_protected: bool
    identity_fingerprint: str | None  # None: no identity key yet
    sealing_fingerprint: str | None
    certificates: tuple[tuple[str, str], ...]  # (slot, description) for the slots that hold one
    pin_tries_left: int | None  # YubiKey-like tokens only; read without spending a try


def inspect_token(access: TokenAccess, *, environ: Mapping[str, str] = os.environ) -> TokenReport:
    """Read what a token is and holds. Needs no PIN (a soft token's passphrase, if it has one)."""
    with open_access(access, create=False, environ=environ) as token:
        info = token.info()
        fingerprints = []
        for read in (token.identity_public_key, token.sealing_public_key):
            try:
                fingerprints.append(public_key_fingerprint(read()).hex())
            except TokenAbsent:
                raise
            except TokenError:
                fingerprints.append(None)  # an empty PIV slot
        certificates = []
        for slot in ("identity", "sealing"):
            der = token.read_certificate(slot)
            if der is not None:
                certificates.append((slot, _describe_certificate(der)))
        pin_tries = token.pin_attempts() if isinstance(token, YubiKeyToken) else None
        return TokenReport(
            spec=access.spec, kind=info.kind, serial=info.serial, firmware=info.firmware,
            identity_algorithm=info.identity_algorithm, sealing_algorithm=info.sealing_algorithm,
            hardware_protected=info.hardware_protected, identity_fingerprint=fingerprints[0],
            sealing_fingerprint=fingerprints[1], certificates=tuple(certificates), pin_tries_left=pin_tries,
        )


def _describe_certificate(der: bytes) -> str:
    try:
        cert = x509.load_der_x509_certificate(der)
        uri = certificate_identity(cert).uri
    except ValueError:
        return "a certificate that is not keyswarm's"
    return f"{uri}, valid until {cert.not_valid_after_utc.isoformat()}"
