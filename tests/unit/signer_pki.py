"""A small PKI for the event-signer tests: a network with nodes n1 and n2, another network with its own n1.

Every certificate is DER, ready to ride in a SignerKey (`certificate`,
`intermediates`). Built from seeded soft tokens at a fixed time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.crypto.certificates import network_id, node_certificate, root_certificate, signer_certificate
from keyswarm.hardware.soft_token import SoftToken

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
#: Milliseconds since the epoch an hour after NOW: a time at which every certificate here is valid.
VALID_MS = int((NOW + timedelta(hours=1)).timestamp() * 1000)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@dataclass
class Network:
    root_token: SoftToken
    root: x509.Certificate
    network: str
    tokens: dict[str, SoftToken]
    nodes: dict[str, x509.Certificate]

    def signer(self, node: str, public_key: bytes, **kwargs: object) -> tuple[bytes, tuple[bytes, ...]]:
        """`(certificate, intermediates)` certifying `public_key` as `node`'s event signer."""
        cert = signer_certificate(self.tokens[node], self.nodes[node], Ed25519PublicKey.from_public_bytes(public_key),
                                  node_name=node, **{"now": NOW, **kwargs})  # type: ignore[arg-type]
        return der(cert), (der(self.nodes[node]),)

    def root_pem(self, path: Path) -> Path:
        path.write_bytes(self.root.public_bytes(Encoding.PEM))
        return path


def build_network(directory: Path, *, seed: int = 1, nodes: tuple[str, ...] = ("n1", "n2")) -> Network:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    root_token = SoftToken.create(directory / "root.token", entropy=rng.randbytes)
    root = root_certificate(root_token, network_name=f"net {seed}", now=NOW, entropy=rng.randbytes)
    tokens, certs = {}, {}
    for name in nodes:
        tokens[name] = SoftToken.create(directory / f"{name}.token", entropy=rng.randbytes)
        certs[name] = node_certificate(root_token, root, tokens[name].identity_public_key(), node_name=name, now=NOW,
                                       entropy=rng.randbytes)  # fmt: skip
    return Network(root_token, root, network_id(root), tokens, certs)
