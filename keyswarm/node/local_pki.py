"""The soft-token PKI of a local network: the root and node enrolments `keyswarm up` makes before it starts nodes.

Owns where a local network keeps its tokens and certificates, and making
them with the same code as `keyswarm init` and `keyswarm enroll-node`
(`keyswarm.enrolment`):

    ROOT/root/root.token          the root's soft token (network "local")
    ROOT/root/root.pem            the root certificate
    ROOT/root/domain-key.sealed   the domain key, sealed to the root token
    ROOT/nK/node.token            node nK's soft token
    ROOT/nK/node.pem              nK's node certificate, issued by the root
    ROOT/nK/root.pem              the root certificate, beside it
    ROOT/nK/domain-key.sealed     the domain key, sealed to nK's token

Rules:
- Soft tokens, no passphrase: a local network is for development. Their
  keys are NOT hardware-protected; `keyswarm up` says so once, and each node
  says so loudly in its log at start.
- A kept directory (`keyswarm up --data DIR`) is reused: an existing root
  (root.pem and root.token) is kept, and so is an enrolled node (node.pem and
  node.token); only what is missing is made. A node whose files do not belong
  together is not repaired here: the node itself refuses to start, with exit
  code 2 and a log line naming the file.
- Nothing here runs on a node's loop: it blocks on files and tokens, before
  any node starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from keyswarm.crypto.certificates import network_id
from keyswarm.enrolment import (
    DIR_MODE,
    DOMAIN_KEY_FILE,
    NODE_CERT_FILE,
    ROOT_CERT_FILE,
    TokenAccess,
    create_network,
    enrol_node,
    read_certificate_pem,
)

#: The network name `keyswarm up` gives its root.
LOCAL_NETWORK_NAME = "local"
#: The root's directory under the network's directory.
ROOT_DIR_NAME = "root"
ROOT_TOKEN_FILE = "root.token"
NODE_TOKEN_FILE = "node.token"


@dataclass(frozen=True, slots=True)
class NodeTokenFiles:
    """What a node's `[token]` section names: its token spec, its two certificates and its sealed domain key."""

    spec: str
    node_certificate: str
    root_certificate: str
    domain_key: str


@dataclass(frozen=True, slots=True)
class LocalPki:
    """A local network's root and enrolled nodes, as `enrol_local_network` left them."""

    network_id: str
    root_directory: str
    made: tuple[str, ...]  # what was made this time ("root", "n1", ...), the rest was reused
    nodes: dict[str, NodeTokenFiles]


def node_token_files(node_directory: str) -> NodeTokenFiles:
    """The token and certificate paths of the node whose directory is `node_directory` (no I/O)."""
    return NodeTokenFiles(
        spec="soft:" + os.path.join(node_directory, NODE_TOKEN_FILE),
        node_certificate=os.path.join(node_directory, NODE_CERT_FILE),
        root_certificate=os.path.join(node_directory, ROOT_CERT_FILE),
        domain_key=os.path.join(node_directory, DOMAIN_KEY_FILE),
    )


def enrol_local_network(root: str, nodes: Sequence[tuple[str, str]]) -> LocalPki:
    """Make (or reuse) the root under `root/root/` and enrol every `(node id, node directory)` on a soft token.

    Raises `KeyswarmError` (an `EnrolmentError`, a `TokenError`) naming the
    file when a step is refused: an existing root.pem without its token, a
    damaged token file.
    """
    root_directory = os.path.join(os.path.abspath(root), ROOT_DIR_NAME)
    root_access = TokenAccess(spec="soft:" + os.path.join(root_directory, ROOT_TOKEN_FILE))
    root_cert_path = os.path.join(root_directory, ROOT_CERT_FILE)
    made: list[str] = []
    new_root = not _all_exist(root_cert_path, os.path.join(root_directory, ROOT_TOKEN_FILE))
    if new_root:
        os.makedirs(root_directory, mode=DIR_MODE, exist_ok=True)
        # A half-made root (a crash between its files) is made anew, and every node enrolled again under it.
        create_network(root_access, network_name=LOCAL_NETWORK_NAME, out_dir=root_directory, force=True)
        made.append(ROOT_DIR_NAME)
    root_cert = read_certificate_pem(root_cert_path, "root certificate", kinds=("root",))
    enrolled: dict[str, NodeTokenFiles] = {}
    for node_id, directory in nodes:
        files = node_token_files(directory)
        token_path = files.spec.removeprefix("soft:")
        if new_root or not _all_exist(files.node_certificate, token_path, files.domain_key):
            # `force`: a token that is already there keeps its key and gets a new certificate.
            os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
            enrol_node(
                root_access, root_cert_path, TokenAccess(spec=files.spec),
                name=node_id, out_dir=directory, force=True,
            )
            made.append(node_id)
        enrolled[node_id] = files
    return LocalPki(network_id=network_id(root_cert), root_directory=root_directory, made=tuple(made), nodes=enrolled)


def _all_exist(*paths: str) -> bool:
    return all(os.path.isfile(path) for path in paths)


#: Where `enrol_local_client` keeps a client's files, under the network's directory.
CLIENTS_DIR_NAME = "clients"
CLIENT_KEY_FILE = "key.pem"


@dataclass(frozen=True, slots=True)
class LocalClientFiles:
    """What `Client.connect` needs for one enrolled demo client (a key file, no passphrase)."""

    name: str
    admin: bool
    root_certificate: str
    client_certificate: str
    key: str


def enrol_local_client(pki: LocalPki, name: str, *, admin: bool = False) -> tuple[LocalClientFiles, bool]:
    """Enrol client `name` under the local root (certificate issued by the root, key in a 0600 key file).

    Files: ROOT/clients/NAME/{client.pem, root.pem, key.pem}. A client already
    enrolled under this root (all three files there) is reused; returns the
    files and whether they were made now.
    """
    from keyswarm.enrolment import CLIENT_CERT_FILE, enrol_client

    directory = os.path.join(os.path.dirname(pki.root_directory), CLIENTS_DIR_NAME, name)
    files = LocalClientFiles(
        name=name, admin=admin,
        root_certificate=os.path.join(directory, ROOT_CERT_FILE),
        client_certificate=os.path.join(directory, CLIENT_CERT_FILE),
        key=os.path.join(directory, CLIENT_KEY_FILE),
    )
    root_cert_path = os.path.join(pki.root_directory, ROOT_CERT_FILE)
    if _all_exist(files.root_certificate, files.client_certificate, files.key) and "root" not in pki.made:
        return files, False
    os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
    enrol_client(
        TokenAccess(spec="soft:" + os.path.join(pki.root_directory, ROOT_TOKEN_FILE)), root_cert_path,
        name=name, out_dir=directory, key_file=files.key, admin=admin, force=True,
    )
    return files, True
