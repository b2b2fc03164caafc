"""The certificate of a node's event-signing key: `data_dir/node-signing.pem`.

Owns the file that holds the certificate of the node's long-lived Ed25519
event-signing key (`node_key.py`'s `node-signing.key`), and the start-time
decision: use the stored certificate, or have the node's token issue a new
one (`certificates.signer_certificate`, kind `signer`,
`keyswarm://<net>/node/<name>/signer`). The storage actor records it in the
chain's SignerKey (docs/storage.md, "Signer keys live in the log").

Rules:
- The file holds one PEM certificate, mode 0600, written to a temporary file
  in the same directory, fsynced, `os.replace`d into place and the directory
  fsynced: a crash leaves the old file or the new one, never half of one.
- The stored certificate is used only if it checks out now: one PEM
  certificate of at most `MAX_FILE_BYTES`, a `signer` certificate that
  chains through this node's certificate to the root (`verify_chain`), names
  this node, certifies exactly the signing key, and is not within its
  renewal margin (`renewal_due`: less than `min(RENEW_MARGIN, half its
  lifetime)` left).
- Otherwise, and when the node has its token, a new certificate is issued
  and replaces the file. The file is a cache of something the token can
  always vouch for again, and holds nothing secret: a damaged, hostile or
  stale file (garbage, a huge file, a symlink, a certificate of another key,
  node or network) is logged as a WARNING naming the file and why, and
  replaced, never trusted and never a reason to stay down. Only a file that
  cannot be replaced (a directory in its place, a read-only data dir) or a
  token that fails to sign refuses the start (`ConfigError` naming the file).
- Without its token at start (a YubiKey not connected), a stored
  certificate that still verifies is used even inside its renewal margin
  (the next start with the token renews it); with none, the node runs
  uncertified, as a node without a token always does.
- Blocking (a file, a token): runs at node start, before the runtime, from
  `node_token.open_node_token`, never in an actor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.crypto.certificates import network_id, signer_certificate
from keyswarm.crypto.chain_verify import CertificateInvalid, verify_chain
from keyswarm.fileio import read_at_most
from keyswarm.errors import ConfigError, KeyswarmError
from keyswarm.hardware.token import Entropy, Token

log = logging.getLogger("keyswarm.node")

#: The certificate file's name under `node.data_dir`, beside `node-signing.key`.
CERTIFICATE_FILE = "node-signing.pem"
#: A signer certificate is under 1 KiB; anything past this is not one.
MAX_FILE_BYTES = 64 * 1024
#: Renew a stored certificate with less than this (or half its lifetime, if less) left.
RENEW_MARGIN = timedelta(days=30)


class SignerCertificateProblem(KeyswarmError):
    """The stored signer certificate cannot be used (the message says why); the node re-issues it."""


@dataclass(frozen=True, slots=True)
class SignerCertificate:
    """What the chain's SignerKey records: the signer certificate and the node certificate that issued it."""

    certificate_der: bytes
    intermediates: tuple[bytes, ...]
    serial: int
    not_valid_after: datetime


def signer_certificate_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / CERTIFICATE_FILE


def renewal_due(cert: x509.Certificate, now: datetime) -> bool:
    """Whether less than `min(RENEW_MARGIN, half its lifetime)` of `cert`'s validity is left at `now`."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < min(RENEW_MARGIN, lifetime / 2)


def load_signer_certificate(
    path: str | Path,
    *,
    public_key: bytes,
    node_name: str,
    node_cert: x509.Certificate,
    root: x509.Certificate,
    now: datetime,
) -> x509.Certificate:
    """The certificate in `path`, checked; `SignerCertificateProblem` saying why it cannot be used,
    FileNotFoundError when there is none."""
    path = Path(path)
    data = _read_small_file(path)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise SignerCertificateProblem(f"{path} is not a PEM certificate ({exc})") from exc
    if len(found) != 1:
        raise SignerCertificateProblem(f"{path} holds {len(found)} certificates; it must hold exactly one")
    cert = found[0]
    try:
        verified = verify_chain(cert, [node_cert], root, now=now, network_id=network_id(root), expected_kind="signer")
    except CertificateInvalid as exc:
        raise SignerCertificateProblem(f"{path} does not chain through this node's certificate: {exc}") from exc
    if verified.name != node_name:
        raise SignerCertificateProblem(f"{path} certifies the signer of node {verified.name!r}, not {node_name!r}")
    if verified.public_key.public_bytes_raw() != public_key:  # type: ignore[union-attr]  # Ed25519 (checked)
        raise SignerCertificateProblem(
            f"{path} certifies key {verified.public_key.public_bytes_raw().hex()[:16]}..., "  # type: ignore[union-attr]
            f"not this node's signing key {public_key.hex()[:16]}..."
        )
    return cert


def ensure_signer_certificate(
    data_dir: str | Path | None,
    *,
    token: Token | None,
    node_cert: x509.Certificate,
    root: x509.Certificate,
    node_name: str,
    public_key: bytes,
    now: datetime,
    entropy: Entropy = os.urandom,
) -> SignerCertificate | None:
    """The signer certificate to record in the chain: the stored one if it checks
    out and is not due for renewal, else a new one from `token` (stored in
    `data_dir`). None when there is neither (no token at start, nothing valid
    stored). `ConfigError` (naming the file) when a new one cannot be issued or stored.
    """
    path = signer_certificate_path(data_dir) if data_dir else None
    stored: x509.Certificate | None = None
    if path is not None:
        try:
            stored = load_signer_certificate(
                path, public_key=public_key, node_name=node_name, node_cert=node_cert, root=root, now=now
            )
        except FileNotFoundError:
            why = f"{path} does not exist"
        except SignerCertificateProblem as exc:
            why = str(exc)
            log.warning("node %s: the stored signer certificate cannot be used: %s", node_name, why)
        else:
            if not renewal_due(stored, now):
                log.info("node %s: event signer certified by %s (serial %x, valid until %s)", node_name, path,
                         stored.serial_number, stored.not_valid_after_utc.isoformat())
                return _recorded(stored, node_cert)
            why = f"{path} expires at {stored.not_valid_after_utc.isoformat()}, within its renewal margin"
    else:
        why = "the node has no data_dir (its signing key lives only in memory)"
    if token is None:
        if stored is not None:
            log.warning("node %s: %s, but the token is not connected: using it until a start with the token",
                        node_name, why)
            return _recorded(stored, node_cert)
        log.warning("node %s: the event signer runs UNCERTIFIED (%s, and the token is not connected to issue one)",
                    node_name, why)
        return None
    try:
        cert = signer_certificate(
            token, node_cert, Ed25519PublicKey.from_public_bytes(public_key),
            node_name=node_name, now=now, entropy=entropy,
        )  # fmt: skip
    except KeyswarmError as exc:
        where = path if path is not None else "the node's signing key"
        raise ConfigError(f"the token cannot certify the event signer ({where}): {exc}", field="token.spec") from exc
    if path is not None:
        write_signer_certificate(path, cert)
    log.info("node %s: the token certified the event signer (%s; serial %x, valid until %s)%s", node_name, why,
             cert.serial_number, cert.not_valid_after_utc.isoformat(), f", stored in {path}" if path else "")
    return _recorded(cert, node_cert)


def write_signer_certificate(path: str | Path, cert: x509.Certificate) -> None:
    """Replace `path` with `cert` as PEM, atomically, mode 0600; `ConfigError` naming the file on failure."""
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)  # a leftover of this pid: ours
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, cert.public_bytes(Encoding.PEM))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # replaces a symlink itself, never its target
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):  # best effort: the error below is what matters
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the signer certificate {path}: {exc.strerror or exc}",
                          field="node.data_dir") from exc


def _recorded(cert: x509.Certificate, node_cert: x509.Certificate) -> SignerCertificate:
    return SignerCertificate(
        certificate_der=cert.public_bytes(Encoding.DER),
        intermediates=(node_cert.public_bytes(Encoding.DER),),
        serial=cert.serial_number,
        not_valid_after=cert.not_valid_after_utc,
    )


def _read_small_file(path: Path) -> bytes:
    """At most `MAX_FILE_BYTES` of a regular file, without following a symlink or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if path.is_symlink():
            raise SignerCertificateProblem(f"{path} is a symlink; it is never followed") from exc
        raise SignerCertificateProblem(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SignerCertificateProblem(f"{path} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise SignerCertificateProblem(f"{path} is {info.st_size:,} bytes; a signer certificate is under "
                                           f"{MAX_FILE_BYTES:,}")
        data = read_at_most(fd, MAX_FILE_BYTES)
    except OSError as exc:
        raise SignerCertificateProblem(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise SignerCertificateProblem(f"{path} grew past {MAX_FILE_BYTES:,} bytes while it was read")
    return data
