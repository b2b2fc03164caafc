"""Key service actors, sans-IO: microseconds per operation through the actors, no sockets.

    python bench/keys_actor.py [--quick] [--out DIR]

One node's storage actor, key router and partition actors on a `NodeRuntime`
whose environment is this script: service requests (a real `EventLogService`
over a `MemoryLog`) are answered inline, so a key create is "durable" in the
MemoryLog sense (committed, no fsync). What is measured is the Python work of
the request path (runtime dispatch, routing, key cache, crypto, reply), the
part the full service bench (sockets, sessions) adds its costs on top of.

- `encrypt_us`: 64 B encrypts delivered to the `keys` router in bursts of
  1,000 and run to idle; `encrypt_direct_us` delivers them to the partition
  actor (the router hop skipped, as the sessions actor may); `encrypt_one_us`
  delivers and runs one at a time.
- `encrypt_batch100_item_us`: per item of `encrypt.batch` with 100 items of one key.
- `decrypt_us`, `sign_ed25519_us`: as `encrypt_us`.
- `create_us`: key creates one at a time, each run until durable and answered;
  `create_burst_us`: 100 creates delivered at once (group commit batches them).
"""

from __future__ import annotations

import random
import time

from common import bench_args, median_of, record, write_results

from keyswarm.actors.key_messages import CreateKey, Decrypt, Encrypt, EncryptBatch, EncryptItem, Sign
from keyswarm.actors.key_router import key_service_specs
from keyswarm.actors.keys import KeySettings
from keyswarm.actors.runtime import ActorSpec, ClientRef, NodeRuntime
from keyswarm.actors.storage import StorageActor
from keyswarm.crypto.sealing import DomainKey
from keyswarm.node.event_log_service import EventLogService
from keyswarm.storage.events import partition_of
from keyswarm.storage.memory_log import MemoryLog

PARTITIONS = 64


class Env:
    def __init__(self) -> None:
        self.rng = random.Random(1)
        self.submitted: list[tuple[str, int, object]] = []
        self.replies = 0
        self.last: object = None

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_time(self) -> float:
        return time.time()

    def entropy(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def send_remote(self, to: object, sender: object, msg: object) -> bool:
        return False

    def reply_client(self, ref: ClientRef, msg: object) -> bool:
        self.replies += 1
        self.last = msg
        return True

    def submit(self, service: str, ticket: int, request: object) -> bool:
        self.submitted.append((service, ticket, request))
        return True

    def wake_at(self, deadline: float) -> None:
        return  # no timers fire in this bench: it measures request paths, not timeouts


class Node:
    def __init__(self) -> None:
        self.env = Env()
        self.service = EventLogService(MemoryLog(node_id="n1", partitions=PARTITIONS))
        key = DomainKey.generate(random.Random(2).randbytes)
        specs = [ActorSpec("storage", lambda: StorageActor(signer_key=bytes(range(32)), partitions=PARTITIONS, max_delay_s=0.0)),
                 *key_service_specs(KeySettings(partitions=PARTITIONS), (key,))]
        self.runtime = NodeRuntime("n1", specs, self.env, rng=random.Random(3), mailbox_capacity=100_000)
        self.runtime.start()
        self.settle()
        self.ref = ClientRef("n1", b"c", 1, client="bench")

    def settle(self) -> None:
        env, runtime = self.env, self.runtime
        while True:
            runtime.run(1_000_000)
            if env.submitted:
                submitted, env.submitted = env.submitted, []
                for _, ticket, request in submitted:
                    runtime.complete(ticket, value=self.service.handle(request))
                continue
            if runtime.fire_timers() == 0 and not runtime.has_work():
                return

    def request(self, msg: object, to: str = "keys") -> object:
        self.runtime.deliver(to, self.ref, msg)
        self.settle()
        return self.env.last


def per_op_us(node: Node, make, n: int, *, to: str = "keys", burst: int = 1000) -> float:  # noqa: ANN001
    runtime, ref = node.runtime, node.ref
    start = time.perf_counter()
    sent = 0
    while sent < n:
        for _ in range(min(burst, n - sent)):
            runtime.deliver(to, ref, make())
            sent += 1
        node.settle()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    args = bench_args(__doc__)
    runs = 3 if args.quick else 7
    n = 5_000 if args.quick else 20_000
    node = Node()
    node.request(CreateKey(name="bench/aes", algorithm="aes256-gcm"))
    node.request(CreateKey(name="bench/ed", algorithm="ed25519"))
    direct = f"keys.{partition_of('bench/aes', PARTITIONS)}"
    payload = bytes(64)
    enc = Encrypt(name="bench/aes", plaintext=payload)
    sealed = node.request(enc).ciphertext
    dec = Decrypt(ciphertext=sealed)
    sig = Sign(name="bench/ed", message=payload)
    batch = EncryptBatch(items=tuple(EncryptItem(name="bench/aes", plaintext=payload) for _ in range(100)))
    per_op_us(node, lambda: enc, 2000)  # warm up

    encrypt, encrypt_runs = median_of(runs, lambda: per_op_us(node, lambda: enc, n))
    direct_us, _ = median_of(runs, lambda: per_op_us(node, lambda: enc, n, to=direct))
    one, _ = median_of(runs, lambda: per_op_us(node, lambda: enc, n // 4, burst=1))
    decrypt, _ = median_of(runs, lambda: per_op_us(node, lambda: dec, n))
    sign, _ = median_of(runs, lambda: per_op_us(node, lambda: sig, n // 2))
    batch_item, _ = median_of(runs, lambda: per_op_us(node, lambda: batch, n // 100, burst=10) / 100)

    counter = iter(range(10**9))

    def create() -> CreateKey:
        return CreateKey(name=f"bench/c{next(counter)}", algorithm="aes256-gcm")

    creates = 300 if args.quick else 1000
    create_one, _ = median_of(runs, lambda: per_op_us(node, create, creates, burst=1))
    create_burst, _ = median_of(runs, lambda: per_op_us(node, create, creates, burst=100))

    common = {"partitions": PARTITIONS, "payload_bytes": 64, "runs": runs, "log": "MemoryLog (no fsync)"}
    write_results("keys_actor", [
        record("keys_actor.encrypt_us", encrypt, "us", params={**common, "ops": n, "burst": 1000, "runs_us": encrypt_runs}),
        record("keys_actor.encrypt_direct_us", direct_us, "us", params={**common, "ops": n, "to": "keys.<p>"}),
        record("keys_actor.encrypt_one_us", one, "us", params={**common, "ops": n // 4, "burst": 1}),
        record("keys_actor.decrypt_us", decrypt, "us", params={**common, "ops": n}),
        record("keys_actor.sign_ed25519_us", sign, "us", params={**common, "ops": n // 2}),
        record("keys_actor.encrypt_batch100_item_us", batch_item, "us", params={**common, "batches": n // 100}),
        record("keys_actor.create_us", create_one, "us", params={**common, "creates": creates, "burst": 1}),
        record("keys_actor.create_burst_us", create_burst, "us", params={**common, "creates": creates, "burst": 100}),
    ], out_dir=args.out)


if __name__ == "__main__":
    main()
