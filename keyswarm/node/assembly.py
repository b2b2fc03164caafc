"""What a node runs: its actor set and its blocking services.

Both drivers build nodes from here, so the simulator runs exactly the actors
a real node runs. Later issues add their actors and services to these lists.
"""

from __future__ import annotations

import os

from keyswarm.actors.demo import CounterActor, EchoActor, PingerActor
from keyswarm.actors.gateway import Gateway
from keyswarm.actors.runtime import ActorSpec
from keyswarm.node.services import BlockingService, CounterStore

#: The actor every client request is delivered to.
GATEWAY = "gateway"


def node_actors() -> list[ActorSpec]:
    """The node's actors in start order (the order also fixes their RNG seeds)."""
    return [
        ActorSpec(GATEWAY, Gateway),
        ActorSpec(EchoActor.name, EchoActor),
        ActorSpec(PingerActor.name, PingerActor),
        ActorSpec(CounterActor.name, CounterActor),
    ]


def node_services(data_dir: str | None) -> dict[str, BlockingService]:
    """The node's blocking services; `data_dir` empty or None keeps them in memory."""
    counter_path = os.path.join(data_dir, "counters.json") if data_dir else None
    services: list[BlockingService] = [CounterStore(counter_path)]
    return {service.name: service for service in services}
