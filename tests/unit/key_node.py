"""A node's key service on a real `NodeRuntime` with a fake environment: the harness of the keys tests.

The test plays the driver: `settle()` runs the actors, answers the blocking
services (a real `EventLogService` over a `MemoryLog`) and fires due timers
until nothing is left to do. `hold` keeps chosen service requests waiting
(a slow disk), so tests can look at a node with a write in flight. Time
moves only when a test moves it (`advance`). No sockets, no threads, no sleeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from keyswarm.actors.key_router import KEY_ROUTES, key_service_specs
from keyswarm.actors.keys import KeySettings
from keyswarm.actors.runtime import Actor, ActorSpec, Address, ClientRef, Context, NodeRuntime
from keyswarm.actors.storage import StorageActor
from keyswarm.crypto.sealing import DomainKey
from keyswarm.errors import KeyswarmError
from keyswarm.node.event_log_service import EventLogService
from keyswarm.storage.memory_log import MemoryLog

NODE = "n1"
SIGNER_KEY = bytes(range(32))


class FakeEnv:
    """The driver's side: a clock the test moves, seeded entropy, recorded replies and service requests."""

    def __init__(self, seed: int, start_s: float = 100.0) -> None:
        self.now = start_s
        self.rng = random.Random(seed)
        self.submitted: list[tuple[str, int, object]] = []
        self.replies: dict[int, object] = {}
        self.deadlines: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall_time(self) -> float:
        return 1_700_000_000.0 + self.now

    def entropy(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def send_remote(self, to: Address, sender: Address, msg: object) -> bool:
        return False

    def reply_client(self, ref: ClientRef, msg: object) -> bool:
        assert ref.request_id not in self.replies, f"request {ref.request_id} answered twice"
        self.replies[ref.request_id] = msg
        return True

    def submit(self, service: str, ticket: int, request: object) -> bool:
        self.submitted.append((service, ticket, request))
        return True

    def wake_at(self, deadline: float) -> None:
        self.deadlines.append(deadline)


class Sessions(Actor):
    """Stands in for the sessions actor: records what the admin actor tells it."""

    def __init__(self, inbox: list[object]):
        self.inbox = inbox

    def on_message(self, ctx: Context, msg: object) -> None:
        self.inbox.append(msg)


@dataclass
class KeyNode:
    """One node: storage actor, key router, admin actor, P partition actors, and a stand-in sessions actor."""

    partitions: int = 8
    seed: int = 1
    log: MemoryLog | None = None
    domain_key: DomainKey | None = None
    snapshot_every: int = 10_000
    settings: dict = field(default_factory=dict)
    hold: set[type] = field(default_factory=set)  # service request types left waiting
    start_s: float = 100.0  # the clocks at start (monotonic; wall is 1,700,000,000 s later)

    def __post_init__(self) -> None:
        self.env = FakeEnv(self.seed, self.start_s)
        if self.log is None:
            self.log = MemoryLog(node_id=NODE, partitions=self.partitions)
        if self.domain_key is None:
            self.domain_key = DomainKey.generate(random.Random(99).randbytes)
        self.service = EventLogService(self.log, snapshot_every=self.snapshot_every)
        self.policy_notices: list[object] = []
        self.held: list[tuple[int, object]] = []
        settings = KeySettings(partitions=self.partitions, **self.settings)
        specs = [
            ActorSpec("storage", lambda: StorageActor(signer_key=SIGNER_KEY, partitions=self.partitions, max_delay_s=0.0)),
            ActorSpec("sessions", lambda: Sessions(self.policy_notices)),
            *key_service_specs(settings, (self.domain_key,), cache_max_entries=1000),
        ]
        self.runtime = NodeRuntime(NODE, specs, self.env, rng=random.Random(self.seed))
        self._next_request = 0
        self.runtime.start()
        self.settle()

    # --- driving -------------------------------------------------------------------------

    def settle(self) -> None:
        """Run until idle: messages, service requests (except held ones) and due timers."""
        env, runtime = self.env, self.runtime
        while True:
            runtime.run()
            if env.submitted:
                submitted, env.submitted = env.submitted, []
                for service, ticket, request in submitted:
                    if type(request) in self.hold:
                        self.held.append((ticket, request))
                    else:
                        self._serve(ticket, request)
                continue
            if runtime.fire_timers() or runtime.has_work():
                continue
            return

    def _serve(self, ticket: int, request: object) -> None:
        try:
            value = self.service.handle(request)
        except KeyswarmError as exc:
            self.runtime.complete(ticket, error=exc)
        else:
            self.runtime.complete(ticket, value=value)

    def release(self, *, error: KeyswarmError | None = None) -> None:
        """Answer every held service request (with `error` instead, when given) and settle."""
        held, self.held = self.held, []
        for ticket, request in held:
            if error is not None:
                self.runtime.complete(ticket, error=error)
            else:
                self._serve(ticket, request)
        self.settle()

    def advance(self, seconds: float) -> None:
        self.env.now += seconds
        self.settle()

    def send(self, msg: object, *, client: str = "app", to: str | None = None) -> int:
        """Deliver a client request (through the route a gateway would take); returns its request id."""
        self._next_request += 1
        ref = ClientRef(NODE, b"client", self._next_request, client=client)
        self.runtime.deliver(to or KEY_ROUTES[type(msg)], ref, msg)
        return self._next_request

    def answer(self, request_id: int) -> object | None:
        return self.env.replies.get(request_id)

    def request(self, msg: object, *, client: str = "app", to: str | None = None) -> object:
        """Send one request, settle, and return its answer."""
        request_id = self.send(msg, client=client, to=to)
        self.settle()
        assert request_id in self.env.replies, f"no answer to {type(msg).__name__}"
        return self.env.replies[request_id]

    def restart(self, **changes: object) -> KeyNode:
        """A new node on the same log (the disk) and domain key: everything in memory is gone."""
        return KeyNode(partitions=self.partitions, seed=self.seed + 1, log=self.log.reopen(),
                       domain_key=self.domain_key, snapshot_every=self.snapshot_every,
                       settings=self.settings, **changes)
