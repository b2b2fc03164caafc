"""Child process of tests/integration/test_storage_crash.py: a real node that appends until it is killed.

    python tests/integration/storage_crash_child.py DATA_DIR [APPENDERS] [IN_FLIGHT] [PAUSE_MS]

Runs a real `NodeDriver` on a `NodeThread` (uvloop, the event-log service
on its own thread, an `LmdbLog` in DATA_DIR/log, the node key in
DATA_DIR/node-signing.key) with the real storage actor and APPENDERS
appender actors that each keep IN_FLIGHT appends of 1-3 events in flight
(the next one PAUSE_MS after an answer).
Every ACKNOWLEDGED append is written to stdout as one line, in one write
(atomic on a pipe), after the acknowledgement arrived:

    ACK <origin> <first_seq> <last_seq> <subject>,<subject>,...

The parent kills this process with SIGKILL at a random moment; nothing here
tries to survive that. Also usable as a rough throughput probe: with
`--measure SECONDS` it prints acknowledged events/s instead of ACK lines.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from keyswarm.actors.runtime import Actor, ActorSpec, Context  # noqa: E402
from keyswarm.actors.storage import STORAGE, AppendEvents, EventDraft, EventsAppended  # noqa: E402
from keyswarm.config import node_config  # noqa: E402
from keyswarm.node.assembly import node_actors, node_services, open_node_storage  # noqa: E402
from keyswarm.node.driver import NodeThread  # noqa: E402
from keyswarm.storage.bodies import KeyDisabled  # noqa: E402
from keyswarm.storage.chain import draft  # noqa: E402

NODE_ID = "crash-node"
PARTITIONS = 16
#: Small, so that kills also land around snapshot writes.
SNAPSHOT_EVERY = 200

#: Called with (origin, first_seq, last_seq, subjects) for every acknowledged append.
OnAck = Callable[[str, int, int, tuple[str, ...]], None]


class Appender(Actor):
    """Keeps `in_flight` appends in flight, the next one `pause_s` after an answer;
    reports each acknowledgement through `on_ack` (no I/O here)."""

    def __init__(self, on_ack: OnAck, in_flight: int, partitions: int, pause_s: float = 0.0):
        self.on_ack = on_ack
        self.in_flight = in_flight
        self.partitions = partitions
        self.pause_s = pause_s
        self.sent: deque[tuple[str, ...]] = deque()  # one requester's appends are answered in order

    def on_start(self, ctx: Context) -> None:
        for _ in range(self.in_flight):
            self._append(ctx)

    def _append(self, ctx: Context) -> None:
        subjects = tuple(f"key-{ctx.rng.randrange(1000)}" for _ in range(ctx.rng.randint(1, 3)))
        drafts = tuple(
            EventDraft.of(draft(KeyDisabled(name=name), subject=name, partitions=self.partitions)) for name in subjects
        )
        self.sent.append(subjects)
        ctx.send(STORAGE, AppendEvents(drafts=drafts))

    def on_message(self, ctx: Context, msg: object) -> None:
        if msg is NEXT:
            self._append(ctx)
            return
        subjects = self.sent.popleft()
        if type(msg) is EventsAppended:
            self.on_ack(msg.origin, msg.first_seq, msg.last_seq, subjects)
        if self.pause_s > 0:
            ctx.start_timer(self.pause_s, NEXT)
        else:
            self._append(ctx)


#: Timer message: time for the next append.
NEXT = "next"


def write_ack(origin: str, first: int, last: int, subjects: tuple[str, ...]) -> None:
    os.write(1, f"ACK {origin} {first} {last} {','.join(subjects)}\n".encode())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_node(data_dir: str, appenders: int, in_flight: int, on_ack: OnAck, pause_s: float = 0.0) -> NodeThread:
    """A node on free ports with the real storage parts and the appenders."""
    config = node_config(
        node={"id": NODE_ID, "data_dir": data_dir, "client_endpoint": f"tcp://127.0.0.1:{free_port()}",
              "peer_endpoint": f"tcp://127.0.0.1:{free_port()}"},
        storage={"partitions": PARTITIONS},
    )
    # What NodeDriver does for a default node, plus the appenders.
    opened = open_node_storage(config)
    actors = node_actors(config.storage, signer_key=opened.signer_key)
    actors += [ActorSpec(f"appender{i}", lambda: Appender(on_ack, in_flight, PARTITIONS, pause_s)) for i in range(appenders)]
    services = node_services(None, event_log=opened.event_log, snapshot_every=SNAPSHOT_EVERY)
    return NodeThread(config, actors=actors, services=services)


def measure(data_dir: str, appenders: int, in_flight: int, seconds: float) -> None:
    acked = [0]

    def count(origin: str, first: int, last: int, subjects: tuple[str, ...]) -> None:
        acked[0] += last - first + 1

    node = build_node(data_dir, appenders, in_flight, count)
    node.start()
    time.sleep(0.5)  # warm up
    start_count, start = node.call(lambda: acked[0]), time.monotonic()
    time.sleep(seconds)
    end_count, end = node.call(lambda: acked[0]), time.monotonic()
    stats = node.call(lambda: node.driver.runtime.actor(STORAGE).stats)
    node.stop()
    rate = (end_count - start_count) / (end - start)
    print(f"appenders={appenders} in_flight={in_flight}: {rate:,.0f} durable events/s; "
          f"commits={stats.commits} events={stats.events} avg_batch={stats.events / max(stats.commits, 1):.1f} "
          f"max_batch={stats.max_batch_events} late={stats.late_appends} max_wait_ms={stats.max_wait_s * 1000:.2f}")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--measure":
        seconds, rest = float(argv[1]), argv[2:]
        measure(rest[0], int(rest[1]) if len(rest) > 1 else 64, int(rest[2]) if len(rest) > 2 else 1, seconds)
        return 0
    data_dir = argv[0]
    appenders = int(argv[1]) if len(argv) > 1 else 8
    in_flight = int(argv[2]) if len(argv) > 2 else 2
    pause_ms = float(argv[3]) if len(argv) > 3 else 0.0
    node = build_node(data_dir, appenders, in_flight, write_ack, pause_ms / 1000.0)
    node.start()
    while True:  # until SIGKILL
        time.sleep(60)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
