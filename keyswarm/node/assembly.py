"""What a node runs: its actor set and its blocking services.

Both drivers build nodes from here, so the simulator runs exactly the actors
a real node runs. Later issues add their actors and services to these lists.

The storage parts need the world: the event log (LMDB under `data_dir`, or
a non-durable MemoryLog without one) and the node's signing key. The real
driver gets both from `open_node_storage(config)`; the simulator gives each
node a MemoryLog that outlives its crashes and a key derived from the seed.
`node_actors()` and `node_services()` take them as arguments and do no I/O.

The token parts are the same kind of input: `token_parts()` builds the
hardware actor, the sub-keys actor and the token service around a token that
someone else opened (the real driver: `node_token.open_node_token(config)`
from `[token]`; the simulator: a virtual YubiKey per node). A node without a
token runs neither actor, and nothing else changes. The token parts also
carry the certificate of the node's event-signing key when the token issued
(or the data dir held) one; the storage actor records it in the chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from collections.abc import Callable, Sequence

from keyswarm.actors.demo import CounterActor, EchoActor, PingerActor
from keyswarm.actors.gateway import Gateway
from keyswarm.actors.runtime import ActorSpec
from keyswarm.actors.storage import StorageActor
from keyswarm.actors.sessions import SessionSettings, sessions_spec
from keyswarm.actors.subkeys import SubkeySettings, subkeys_spec
from keyswarm.config import NodeConfig, StorageConfig, SubkeysConfig
from keyswarm.hardware.token import Token
from keyswarm.node.event_log_service import SNAPSHOT_EVERY_EVENTS, EventLogService, open_node_log
from keyswarm.node.node_key import node_signing_key
from keyswarm.node.signer_certificate import SignerCertificate
from keyswarm.node.services import BlockingService, CounterStore
from keyswarm.node.token_service import TokenService, hardware_components
from keyswarm.storage.log import EventLog

#: The actor every client request is delivered to.
GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class TokenParts:
    """A token's share of a node: the hardware and sub-keys actors, and the token service that owns the token."""

    actors: tuple[ActorSpec, ...]
    service: TokenService
    #: The event-signing key's certificate, for the chain's SignerKey (None: the key runs uncertified).
    signer_certificate: SignerCertificate | None = None


def token_parts(
    token: Token | None,
    *,
    node_name: str,
    node_certificate_der: bytes,
    subkeys: SubkeysConfig | None = None,
    reopen: Callable[[], Token] | None = None,
    sessions: SessionSettings | None = None,
    keys: Sequence[ActorSpec] = (),
    signer_certificate: SignerCertificate | None = None,
    **hardware_options: object,
) -> TokenParts:
    """The hardware actor and token service around `token`, and the sub-keys actor for this node's certificate.

    With `sessions`, also the sessions actor (it has the sub-key sign its
    challenges, so it runs only beside one). `keys`: the key service's actors
    (`key_router.keys_specs` over the domain key the token unsealed), last,
    so every actor before them keeps its seed. `signer_certificate`: the
    event-signing key's certificate, which `node_actors` hands the storage actor.

    `token` None with a `reopen` factory: the device was absent at start; the
    node starts degraded and the hardware actor reconnects with backoff.
    `hardware_options` go to `hardware_components` (queue bound, backoff,
    idle probe). `ValueError` when the certificate does not name `node_name`.
    """
    hardware, service = hardware_components(token, reopen=reopen, **hardware_options)  # type: ignore[arg-type]
    settings = SubkeySettings.from_config(
        subkeys or SubkeysConfig(), node_name=node_name, node_certificate_der=node_certificate_der
    )
    actors = (hardware, subkeys_spec(settings))
    if sessions is not None:
        actors += (sessions_spec(sessions),)
    actors += tuple(keys)
    return TokenParts(actors=actors, service=service, signer_certificate=signer_certificate)


def node_actors(
    storage: StorageConfig | None = None, *, signer_key: bytes | None = None, token: TokenParts | None = None
) -> list[ActorSpec]:
    """The node's actors in start order (the order also fixes their RNG seeds).

    `signer_key` is the node's Ed25519 signing key; without one the storage
    actor refuses every append (for tests that never write events). `token`
    adds the hardware and sub-keys actors, last, so the actors before them
    keep their seeds, and hands the storage actor the signing key's
    certificate when the token parts carry one.
    """
    settings = storage or StorageConfig()
    certified = token.signer_certificate if token is not None else None

    def storage_actor() -> StorageActor:
        return StorageActor(
            signer_key=signer_key,
            partitions=settings.partitions,
            max_events=settings.group_commit_max_events,
            max_delay_s=settings.group_commit_max_delay_ms / 1000.0,
            signer_certificate=certified.certificate_der if certified is not None else b"",
            signer_intermediates=certified.intermediates if certified is not None else (),
        )

    return [
        ActorSpec(GATEWAY, Gateway),
        ActorSpec(EchoActor.name, EchoActor),
        ActorSpec(PingerActor.name, PingerActor),
        ActorSpec(CounterActor.name, CounterActor),
        ActorSpec(StorageActor.name, storage_actor),
        *(token.actors if token is not None else ()),
    ]


def node_services(
    data_dir: str | None,
    *,
    event_log: EventLog | None = None,
    snapshot_every: int = SNAPSHOT_EVERY_EVENTS,
    token: TokenParts | None = None,
) -> dict[str, BlockingService]:
    """The node's blocking services; `data_dir` empty or None keeps the counters
    in memory. Without `event_log` there is no `event-log` service (and the
    storage actor keeps retrying its head load); with `token`, its `token` service."""
    counter_path = os.path.join(data_dir, "counters.json") if data_dir else None
    services: list[BlockingService] = [CounterStore(counter_path)]
    if event_log is not None:
        services.append(EventLogService(event_log, snapshot_every=snapshot_every))
    if token is not None:
        services.append(token.service)
    return {service.name: service for service in services}


@dataclass(frozen=True, slots=True)
class NodeStorage:
    """A real node's opened event log and its signing key."""

    event_log: EventLog
    signer_key: bytes


def open_node_storage(config: NodeConfig) -> NodeStorage:
    """Open the node's event log (checked) and its signing key (checked against the log's chain).

    With `data_dir`: `data_dir/log` (LMDB) and `data_dir/node-signing.key`.
    Without: a MemoryLog and a key from `os.urandom` that dies with the
    process, like the events. `KeyswarmError` naming the file when either
    is damaged or they do not belong together: the node must not start.
    """
    event_log = open_node_log(config)
    try:
        data_dir = config.node.data_dir
        key = node_signing_key(data_dir, event_log, config.node.id) if data_dir else os.urandom(32)
    except BaseException:
        event_log.close()
        raise
    return NodeStorage(event_log=event_log, signer_key=key)
