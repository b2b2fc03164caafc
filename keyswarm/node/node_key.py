"""The node signing key file: `data_dir/node-signing.key`.

Owns the file that holds a node's long-lived Ed25519 event-signing key (it
signs the checkpoints of the node's chain; on a node with a token it is
certified by the token, `signer_certificate.py`, docs/storage.md "The
signing key is certified by the node's token"), and the check that the key
is the one that started the node's chain in its log.

Rules:
- The file is exactly 32 raw bytes (the Ed25519 private key), created with
  `os.urandom`, mode 0600, owned by the node's user, written to a temporary
  file, fsynced and linked into place, so a crash never leaves a short key.
- Loading refuses, with a message naming the file and what to do: a file
  that is not a regular file (or is a symlink), is readable or writable by
  group or others, is owned by another user, or is not 32 bytes. Never
  "fixed" silently: a key file someone else could read is a leaked key.
- A log that holds this node's chain decides which key is right: the key
  must be the one in the chain's genesis `SignerKey` event. A missing key
  file next to such a log is refused, not replaced (a new key could not
  sign on to the chain; a node that lost its key rejoins under a new id).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from keyswarm.errors import DecodeError, KeyswarmError
from keyswarm.fileio import read_at_most
from keyswarm.storage.bodies import SignerKey, decode_body
from keyswarm.storage.chain import Signer
from keyswarm.storage.log import EventLog

#: The key file's name under `node.data_dir`.
KEY_FILE = "node-signing.key"
KEY_BYTES = 32


class NodeKeyError(KeyswarmError):
    """The node signing key file is missing, unsafe, malformed, or not this node's chain's key."""


def node_key_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / KEY_FILE


def load_node_key(path: str | Path) -> bytes:
    """The key in `path`; `NodeKeyError` if it is unsafe or malformed, FileNotFoundError if absent."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if Path(path).is_symlink():
            raise NodeKeyError(f"node signing key {path} is a symlink; refusing to follow it") from exc
        raise NodeKeyError(f"cannot open node signing key {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NodeKeyError(f"node signing key {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise NodeKeyError(
                f"node signing key {path} has permissions {mode:04o}: group or others may use it. "
                f"If nobody else read it, run `chmod 600 {path}`; otherwise treat the key as leaked"
            )
        if info.st_uid != os.geteuid():
            raise NodeKeyError(f"node signing key {path} is owned by uid {info.st_uid}, not by this node's user")
        if info.st_size != KEY_BYTES:
            raise NodeKeyError(f"node signing key {path} is {info.st_size} bytes; a key file is exactly {KEY_BYTES}")
        key = read_at_most(fd, KEY_BYTES)
    except OSError as exc:
        raise NodeKeyError(f"cannot read node signing key {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise NodeKeyError(f"node signing key {path} changed while it was read ({len(key)} bytes)")
    return key


def create_node_key(path: str | Path) -> bytes:
    """Write a fresh key to `path` (which must not exist); returns it."""
    path = Path(path)
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = os.urandom(KEY_BYTES)
        tmp = directory / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if a key appeared meanwhile: never replace a key
        finally:
            os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError as exc:
        raise NodeKeyError(f"node signing key {path} appeared while it was being created; start the node again") from exc
    except OSError as exc:
        raise NodeKeyError(f"cannot create node signing key {path}: {exc.strerror or exc}") from exc
    return key


def genesis_public_key(event_log: EventLog, origin: str) -> bytes | None:
    """The public key of `origin`'s genesis SignerKey event, or None when the log holds no chain of it."""
    first = event_log.read_origin(origin, 1, 1)
    if not first:
        return None
    try:
        body = decode_body(first[0])
    except DecodeError as exc:
        raise NodeKeyError(f"the first event of {origin}'s chain does not decode: {exc}") from exc
    if type(body) is not SignerKey:
        raise NodeKeyError(f"the first event of {origin}'s chain is not a SignerKey event")
    return body.public_key


def node_signing_key(data_dir: str | Path, event_log: EventLog, node_id: str) -> bytes:
    """Load (or, for a node without a chain yet, create) the node's key and
    check it is the key that started the node's chain in `event_log`."""
    path = node_key_path(data_dir)
    started_by = genesis_public_key(event_log, node_id)
    try:
        key = load_node_key(path)
    except FileNotFoundError:
        if started_by is not None:
            raise NodeKeyError(
                f"node signing key {path} is missing, but the event log holds a chain of node {node_id!r} "
                f"started by key {started_by.hex()[:16]}...; restore the key file (a node that lost its key "
                f"must rejoin under a new node id)"
            ) from None
        key = create_node_key(path)
    if started_by is not None and Signer(key).public_key != started_by:
        raise NodeKeyError(
            f"node signing key {path} is not the key that started node {node_id!r}'s chain in the event log "
            f"({started_by.hex()[:16]}...); restore the right key file"
        )
    return key
