"""A real node's token at start: open it as `[token]` says, check its enrolled certificates, build its actors.

Owns: turning a node config's `[token]` section into the node's
`TokenParts` (hardware actor, sub-keys actor, token service; see
`assembly.token_parts`), and every check that must pass before a node runs
on a token:

1. the root certificate parses and is a self-signed keyswarm root;
2. the node certificate parses, chains to that root (`verify_chain`: same
   network, issued by it, valid now) and names this node's `[node] id`;
3. the token opens (secrets from the environment variables `[token]`
   names, never from the file);
4. the token's identity key is the key the node certificate certifies;
5. with `[token] domain_key`, the sealed domain key file unseals with the
   token (opened here, at start, before the token service takes the token:
   same process, one owner at a time). The node then runs the key service
   (`key_router.keys_specs`) and keys its resumption tickets from the
   domain key, so tickets resume on every node of the network. Without a
   `domain_key` (or a YubiKey absent at start) the node serves no keys.
6. given the node's event-signing key, its certificate
   (`signer_certificate.ensure_signer_certificate`: the stored
   `data_dir/node-signing.pem` if it checks out, else a new one issued by
   the token), which the storage actor records in the chain.

Rules:
- A failed check refuses the start: `ConfigError` naming the `[token]`
  field (`node.data_dir` for a signer certificate file that cannot be
  written) and the file at fault, with the reason; `run_node` logs it and exits
  2. The token is closed before the error leaves. Nothing is half-started.
- Files are read here, at node start, not by the config loader: they live on
  the node's disk like `data_dir` (a config is checkable anywhere, before
  enrolment wrote them), and reading them once here leaves no gap between a
  check and the use.
- A soft token is announced loudly: one WARNING line saying its keys are not
  hardware-protected. A node without a token says so at INFO.
- A YubiKey (`yubikey:`) that is not connected at start is not a refusal: the
  node starts degraded, token absent, and the hardware actor reconnects with
  backoff through a `reopen` factory that repeats check 4 (a key holding
  another identity is refused, and retried, never used). A soft or virtual
  token is a file: a missing one is a refusal.
- Blocking (files, a token): runs before the node's loop starts, never in an actor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keyswarm.actors.key_router import keys_specs
from keyswarm.actors.runtime import ActorSpec
from keyswarm.actors.sessions import SessionSettings
from keyswarm.config import NodeConfig, TokenConfig
from keyswarm.crypto.certificates import certificate_identity, network_id
from keyswarm.crypto.chain_verify import CertificateInvalid, verify_chain
from keyswarm.crypto.sealing import DomainKey, unseal_domain_key_with_token
from keyswarm.enrolment import EnrolmentError, TokenAccess, open_access, read_certificate_pem
from keyswarm.errors import ConfigError, KeyswarmError, TokenAbsent, TokenError
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.hardware.specs import parse_token_spec
from keyswarm.hardware.token import Token, public_key_fingerprint
from keyswarm.node.assembly import TokenParts, token_parts
from keyswarm.node.signer_certificate import SignerCertificate, ensure_signer_certificate

log = logging.getLogger("keyswarm.node")

_FIELD = "token."


def open_node_token(
    config: NodeConfig,
    *,
    environ: Mapping[str, str] = os.environ,
    now: datetime | None = None,
    signer_public_key: bytes | None = None,
) -> TokenParts | None:
    """The node's token parts, or None when `[token] spec` is empty. `ConfigError` refuses the start.

    `signer_public_key`: the node's event-signing key (raw Ed25519), to certify (check 6)."""
    settings = config.token
    node_id = config.node.id
    if not settings.spec:
        log.info("node %s runs without a token ([token] spec is empty): no hardware and no sub-keys actor", node_id)
        return None
    now = now or datetime.now(timezone.utc)
    root, node_cert = load_certificates(settings, node_id=node_id, now=now)
    access = TokenAccess(
        spec=settings.spec,
        pin_env=settings.pin_env or None,
        passphrase_env=settings.passphrase_env or None,
        management_key_env=settings.management_key_env or None,
    )
    certificate_der = node_cert.public_bytes(Encoding.DER)

    def open_checked() -> Token:
        """Open the token and hold it to check 4 (also the hardware actor's reconnect)."""
        token = open_access(access, create=False, environ=environ)
        try:
            check_token_holds(token, node_cert, settings)
        except BaseException:
            token.close()
            raise
        return token

    token: Token | None
    try:
        token = open_checked()
    except TokenAbsent as exc:
        if parse_token_spec(settings.spec).scheme != "yubikey":
            raise ConfigError(f"cannot open token {settings.spec}: {exc}", field=_FIELD + "spec") from exc
        log.warning("node %s: token %s is not connected (%s); starting degraded, reconnecting", node_id, settings.spec, exc)
        token = None
    except ConfigError:
        raise
    except KeyswarmError as exc:  # a missing secret variable, a wrong passphrase, a damaged file
        raise ConfigError(f"cannot open token {settings.spec}: {exc}", field=_FIELD + "spec") from exc

    domain_key: DomainKey | None = None
    if settings.domain_key:
        if token is None:
            log.warning(
                "node %s: token %s is not connected, so %s cannot be unsealed: the node serves no keys "
                "until it is restarted with its token connected", node_id, settings.spec, settings.domain_key,
            )
        else:
            try:
                domain_key = load_domain_key(token, settings)
            except BaseException:
                token.close()
                raise
    else:
        log.info("node %s: [token] domain_key is not set: the node serves no keys", node_id)
    key_actors: list[ActorSpec] = keys_specs(config, domain_key) if domain_key is not None else []

    certified: SignerCertificate | None = None
    if signer_public_key is not None:
        try:
            certified = ensure_signer_certificate(
                config.node.data_dir or None, token=token, node_cert=node_cert, root=root, node_name=node_id,
                public_key=signer_public_key, now=now,
            )  # fmt: skip
        except BaseException:
            if token is not None:
                token.close()
            raise

    identity = certificate_identity(node_cert)
    if isinstance(token, SoftToken):
        log.warning("node %s runs on a SOFT TOKEN: %s", node_id, token.warning())
    log.info(
        "node %s: token %s %s the key of %s (certificate valid until %s)",
        node_id, settings.spec, "holds" if token is not None else "must hold (checked when it connects)",
        identity.uri, node_cert.not_valid_after_utc.isoformat(),
    )
    try:
        return token_parts(
            token,
            node_name=node_id,
            node_certificate_der=certificate_der,
            subkeys=config.subkeys,
            reopen=open_checked,
            sessions=SessionSettings.from_config(
                config.sessions, config.limits, node_name=node_id, root_certificate=root,
                node_certificate_der=certificate_der, domain_key=domain_key,
                key_partitions=config.storage.partitions if key_actors else None,
            ),
            keys=key_actors,
            signer_certificate=certified,
        )
    except ValueError as exc:  # the sub-keys settings refused the certificate (checked above; a backstop)
        if token is not None:
            token.close()
        raise ConfigError(str(exc), field=_FIELD + "node_certificate") from exc


def load_certificates(settings: TokenConfig, *, node_id: str, now: datetime) -> tuple[x509.Certificate, x509.Certificate]:
    """The root and node certificates `[token]` names, checked (1, 2): `(root, node)`."""
    root = _read(settings.root_certificate, "root certificate", "root", "root_certificate")
    node_cert = _read(settings.node_certificate, "node certificate", "node", "node_certificate")
    try:
        verified = verify_chain(node_cert, [], root, now=now, network_id=network_id(root), expected_kind="node")
    except CertificateInvalid as exc:
        raise ConfigError(
            f"{settings.node_certificate} does not chain to the root certificate {settings.root_certificate} "
            f"of network {network_id(root)}: {exc}",
            field=_FIELD + "node_certificate",
        ) from exc
    if verified.name != node_id:
        raise ConfigError(
            f"{settings.node_certificate} certifies node {verified.name!r} ({verified.uri}), "
            f"but this node's id is {node_id!r}",
            field=_FIELD + "node_certificate",
        )
    return root, node_cert


def load_domain_key(token: Token, settings: TokenConfig) -> DomainKey:
    """Check 5: `[token] domain_key` read and unsealed with `token`; `ConfigError` naming the field and file if not."""
    path = settings.domain_key
    try:
        with open(path, "rb") as file:
            envelope = file.read(1 << 16)
    except OSError as exc:
        raise ConfigError(f"cannot read the sealed domain key {path}: {exc.strerror or exc}",
                          field=_FIELD + "domain_key") from exc
    try:
        key = unseal_domain_key_with_token(token, envelope)
    except (KeyswarmError, ValueError) as exc:
        raise ConfigError(
            f"{path} does not unseal with token {settings.spec}: {exc} "
            "(damaged, or sealed to another node's token? enroll-node writes it)",
            field=_FIELD + "domain_key",
        ) from exc
    log.info("domain key %s (epoch %d) unsealed from %s", key.key_id.hex(), key.epoch, path)
    return key


def check_token_holds(token: Token, node_cert: x509.Certificate, settings: TokenConfig) -> None:
    """Check 4: the token's identity key is the certified key; `ConfigError` naming both fingerprints if not."""
    try:
        held = public_key_fingerprint(token.identity_public_key())
    except TokenAbsent:
        raise
    except TokenError as exc:  # an empty PIV slot 9c
        raise ConfigError(
            f"token {settings.spec} holds no identity key ({exc}); enrol it with keyswarm enroll-node",
            field=_FIELD + "spec",
        ) from exc
    certified = public_key_fingerprint(node_cert.public_key())
    if held != certified:
        raise ConfigError(
            f"{settings.node_certificate} certifies a key that token {settings.spec} does not hold "
            f"(certificate key {certified.hex()[:16]}..., token key {held.hex()[:16]}...): "
            "the certificate was issued for another token",
            field=_FIELD + "node_certificate",
        )


def _read(path: str, what: str, kind: str, field: str) -> x509.Certificate:
    try:
        return read_certificate_pem(path, what, kinds=(kind,))
    except EnrolmentError as exc:
        raise ConfigError(str(exc), field=_FIELD + field) from exc


