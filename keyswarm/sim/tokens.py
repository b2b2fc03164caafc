"""Simulated tokens: a virtual YubiKey per node, one root per simulation, node certificates issued at sim start.

Owns the simulation's public-key infrastructure (DESIGN section 8: "the real
actors, virtual YubiKeys"): a root `VirtualYubiKey` that self-signs the
network's root certificate, one `VirtualYubiKey` per node holding the node's
identity key, the node certificates the root issues, and the `TokenParts`
(hardware actor, sub-keys actor, token service) each node boots with. Also
the "token unplugged" fault: `unplug(node)` / `plug(node)`. And the
network's domain key (one per simulation, from the seed): every node runs the
key service over it (`key_service_specs`, after its token's actors, as a real
node that unsealed `[token] domain_key` does) and keys its resumption tickets
from it, so a ticket one node issued resumes on every node. And each node's
event-signer certificate (its token certifies its seeded signing key, as a
real node's does at start), which the storage actor records in the node's
chain, so every simulated chain verifies up to the simulation's root.

Rules:
- Entropy is derived from the run's seed and a label (BLAKE2b), not drawn
  from the simulation's `Random`, so adding tokens moved no other seed. Keys,
  device serials and certificate serials repeat for one seed. INSECURE BY
  DESIGN, like all simulator entropy.
- Time: certificates are issued at the simulation's wall clock at virtual
  time 0 (`WALL_EPOCH_S`), backdated by `CERTIFICATE_BACKDATE_S` so that a
  node whose clock is skewed behind still finds its certificate valid. The
  real clock is never read.
- The devices have zero latency and never sleep: the token service's
  modelled latency in the simulator (`Simulation(token_latency=...)`, about
  90 ms by default) stands for the device's time, in virtual time.
- A device is hardware: it outlives its node's crashes and restarts (keys,
  PIN counters, plugged or not). Each boot opens a new `YubiKeyToken` on it,
  as a restarted process would; a device unplugged at boot gives a node that
  starts with its token absent and reconnects with backoff.
- Everything here runs outside the actors, at simulation start and at each
  boot; the actors only ever see the token through the token service.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.actors.key_router import key_service_specs
from keyswarm.actors.keys import KeySettings
from keyswarm.actors.sessions import SessionSettings
from keyswarm.config import KeyCacheConfig, LimitsConfig, SessionsConfig, StorageConfig, SubkeysConfig
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keyswarm.crypto.certificates import NAME_PATTERN, network_id, node_certificate, root_certificate, signer_certificate
from keyswarm.crypto.sealing import DomainKey
from keyswarm.errors import TokenAbsent
from keyswarm.hardware.token import Token
from keyswarm.hardware.virtual_yubikey import LatencyModel, VirtualYubiKey
from keyswarm.hardware.yubikey_token import YubiKeyToken
from keyswarm.node.assembly import TokenParts, token_parts
from keyswarm.node.signer_certificate import SignerCertificate
from keyswarm.sim.node import simulated_signing_key
from keyswarm.storage.chain import Signer

#: Firmware of every simulated YubiKey: Ed25519 identities, whose signatures are deterministic.
SIM_FIRMWARE = "5.7.2"
#: The factory PIN the simulated devices keep.
SIM_PIN = "123456"
#: The network name in the simulation's root certificate.
SIM_NETWORK_NAME = "sim"
#: Certificates start this long before the simulation's wall clock at virtual time 0.
CERTIFICATE_BACKDATE_S = 86_400.0


def seeded_entropy(seed: int, label: str) -> Callable[[int], bytes]:
    """An entropy function for `label` in the run of `seed` (INSECURE: anyone knowing the seed has it)."""
    material = seed.to_bytes(16, "big", signed=True) + label.encode("utf-8")
    digest = hashlib.blake2b(material, digest_size=16, person=b"keyswarm.simpki").digest()
    return random.Random(int.from_bytes(digest, "big")).randbytes


def _no_sleep(seconds: float) -> None:
    """The devices never sleep: their time is the token service's modelled latency."""


class SimTokens:
    """The root, every node's virtual YubiKey and node certificate, for one simulation."""

    def __init__(self, seed: int, names: Sequence[str], *, wall_time_s: float):
        issued = datetime.fromtimestamp(wall_time_s - CERTIFICATE_BACKDATE_S, timezone.utc)
        serials = seeded_entropy(seed, "certificate-serials")
        root_device = self._device(seed, "root")
        root = _open(root_device)
        try:
            root.generate()
            self.root_certificate: x509.Certificate = root_certificate(
                root, network_name=SIM_NETWORK_NAME, now=issued, entropy=serials
            )
            self.devices: dict[str, VirtualYubiKey] = {}
            self.certificates: dict[str, bytes] = {}  # node -> node certificate DER
            for name in names:
                if not NAME_PATTERN.fullmatch(name):
                    raise ValueError(
                        f"node name {name!r} cannot be certified (1-48 of A-Z a-z 0-9 . _ -, starting with a letter "
                        "or digit); rename it or run the simulation with tokens=False"
                    )
                device = self._device(seed, f"node/{name}")
                token = _open(device)
                try:
                    token.generate()
                    cert = node_certificate(
                        root, self.root_certificate, token.identity_public_key(),
                        node_name=name, now=issued, entropy=serials,
                    )
                finally:
                    token.close()
                self.devices[name] = device
                self.certificates[name] = cert.public_bytes(Encoding.DER)
        finally:
            root.close()
        # Each node's event signer, certified by its own token (after every node certificate, from
        # entropy of its own label, so the node certificates are the bytes they always were).
        signer_serials = seeded_entropy(seed, "signer-certificate-serials")
        self.signer_certificates: dict[str, SignerCertificate] = {}
        for name in names:
            node_cert = x509.load_der_x509_certificate(self.certificates[name])
            public = Ed25519PublicKey.from_public_bytes(Signer(simulated_signing_key(seed, name)).public_key)
            token = _open(self.devices[name])
            try:
                signer = signer_certificate(token, node_cert, public, node_name=name, now=issued,
                                            entropy=signer_serials)  # fmt: skip
            finally:
                token.close()
            self.signer_certificates[name] = SignerCertificate(
                certificate_der=signer.public_bytes(Encoding.DER), intermediates=(self.certificates[name],),
                serial=signer.serial_number, not_valid_after=signer.not_valid_after_utc,
            )  # fmt: skip
        self.network_id = network_id(self.root_certificate)
        self._root_device = root_device
        #: The network's domain key: one per simulation, from the seed (INSECURE, like all sim entropy).
        self.domain_key = DomainKey.generate(seeded_entropy(seed, "domain-key"))

    @staticmethod
    def _device(seed: int, label: str) -> VirtualYubiKey:
        return VirtualYubiKey(
            SIM_FIRMWARE, entropy=seeded_entropy(seed, label), latency=LatencyModel.zero(), sleep=_no_sleep
        )

    def parts(self, name: str, subkeys: SubkeysConfig, storage: StorageConfig | None = None) -> TokenParts:
        """What node `name` boots with: its token (None if unplugged: it reconnects), actors and token service.

        The actors end with the key service over the simulation's domain key
        (`storage.partitions` partition actors; default `[limits]` and
        `[key_cache]`), as a real node's with `[token] domain_key`.
        """
        device = self.devices[name]
        try:
            token: Token | None = _open(device)
        except TokenAbsent:
            token = None
        return token_parts(
            token,
            node_name=name,
            node_certificate_der=self.certificates[name],
            subkeys=subkeys,
            reopen=lambda: _open(device),
            sessions=SessionSettings.from_config(
                SessionsConfig(), LimitsConfig(), node_name=name, root_certificate=self.root_certificate,
                node_certificate_der=self.certificates[name], domain_key=self.domain_key,
                key_partitions=(storage or StorageConfig()).partitions,
            ),
            keys=self._key_service(storage or StorageConfig()),
            signer_certificate=self.signer_certificates[name],
        )

    def _key_service(self, storage: StorageConfig) -> list:
        limits, cache = LimitsConfig(), KeyCacheConfig()
        settings = KeySettings(partitions=storage.partitions, max_name_bytes=limits.max_key_name_bytes,
                               max_batch_items=limits.max_batch_items)
        return key_service_specs(settings, (self.domain_key,), cache_max_entries=cache.max_entries,
                                 cache_max_age_s=cache.max_age_s)

    def root_token(self) -> YubiKeyToken:
        """A session on the root's device (PIN verified): tests issue client certificates with it. Close it."""
        return _open(self._root_device)

    def unplug(self, name: str) -> None:
        """Pull node `name`'s YubiKey out: every APDU fails as a removed card does."""
        self.devices[name].unplug()

    def plug(self, name: str) -> None:
        """Put it back; the node's hardware actor notices on its next reconnect attempt."""
        self.devices[name].plug()

    def plugged(self, name: str) -> bool:
        return self.devices[name].plugged


def _open(device: VirtualYubiKey) -> YubiKeyToken:
    return YubiKeyToken(device.connect(), kind="virtual", pin=SIM_PIN, connect=device.connect)
