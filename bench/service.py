"""Service KPI: a real node's key service through the Python client, against a bare pyzmq + msgpack + AES-GCM server.

    python bench/service.py [--quick] [--out DIR]

Set-up (all in a temporary directory, removed at the end):
- a network root, one node (soft token, domain key, data_dir in the temp
  dir) started as its own process (`python -m keyswarm node --config`), an
  admin client, the bench client (key file) and a second bench client whose
  key is in slot 9a of a VirtualYubiKey with its default (real-device)
  latency model;
- the admin grants both bench clients every operation on `bench/*`; the
  bench client creates `bench/aes` (aes256-gcm) and `bench/ed` (ed25519);
- a bare server (this script with `--serve-bare`, its own process): a ROUTER
  loop that unpacks a msgpack request, AES-GCM-encrypts its 64 B payload with
  a fixed key, packs the reply and sends it. No sessions, no actors.

The client harness is this process: one `AsyncClient` on one uvloop loop
(`--loop asyncio` for asyncio's own; uvloop is what the node and the sync
client run on, and costs the harness ~20 % less CPU per request),
C worker coroutines each keeping one request in flight (C requests pipelined
over one session). The bare server is driven by the same shape (C coroutines
over one zmq.asyncio DEALER, replies matched by id). Throughput runs are
interleaved where a ratio is taken; every figure is the median of the runs.
Auth and session establishment are 50 sequential connects per key after one
unmeasured warm-up connect (a process's one-time cost: loading the key; for
the YubiKey, opening its PIV session and verifying the PIN, which
`slot_9a_signer` then keeps); that first handshake's time is in the params
(`first_handshake_ms`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import psutil
import zmq
import zmq.asyncio

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))  # a source checkout runs without an install

from common import add_bench_args, record, write_results  # noqa: E402

from keyswarm.transport.malloc_tuning import keep_large_buffers  # noqa: E402

PAYLOAD = bytes(range(64))
BULK = os.urandom(1 << 20)
BARE_KEY = bytes(32)
PIN = "123456"  # a virtual YubiKey's factory PIN
START_TIMEOUT_S = 60.0


# --- the bare server (own process) --------------------------------------------------


def serve_bare(endpoint: str) -> int:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(BARE_KEY)
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    recv, send = sock.recv_multipart, sock.send_multipart
    unpackb, packb, urandom = msgpack.unpackb, msgpack.packb, os.urandom
    while True:
        identity, data = recv()
        rid, name, plaintext = unpackb(data)
        nonce = urandom(12)
        send([identity, packb([rid, True, nonce + aead.encrypt(nonce, plaintext, name.encode())])])


class BareClient:
    """The bare server's client: one DEALER, replies matched by request id."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str):
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.pending: dict[int, asyncio.Future] = {}
        self.next = 0
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            rid, ok, ciphertext = msgpack.unpackb(await self.sock.recv())
            future = self.pending.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(ciphertext)

    async def encrypt(self, name: str, plaintext: bytes) -> bytes:
        self.next += 1
        rid = self.next
        future = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        await self.sock.send(msgpack.packb([rid, name, plaintext]))
        return await asyncio.wait_for(future, 5.0)

    async def close(self) -> None:
        self.reader.cancel()
        self.sock.close(linger=0)


# --- the harness ---------------------------------------------------------------------


async def drive(call, *, concurrency: int, duration_s: float, warmup_s: float, server: psutil.Process | None = None,
                items_per_call: int = 1, bytes_per_call: int = 0) -> dict:
    """`concurrency` workers each loop `await call()`; measured after the warm-up."""
    perf = time.perf_counter
    start = perf()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    latencies: list[float] = []
    state: dict = {}

    async def worker() -> None:
        while True:
            t0 = perf()
            if t0 >= stop_at:
                return
            await call()
            t1 = perf()
            if t0 >= measure_from and t1 <= stop_at:
                latencies.append(t1 - t0)
            if "cpu0" not in state and t1 >= measure_from:
                state["cpu0"] = cpu_seconds(server) if server else 0.0
                state["own0"] = time.process_time()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = (cpu_seconds(server) - state.get("cpu0", 0.0)) if server else 0.0
    own = time.process_time() - state.get("own0", time.process_time())
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / duration_s,
        "items_per_s": n * items_per_call / duration_s,
        "gbit_s": n * bytes_per_call * 8 / duration_s / 1e9,
        "p50_ms": latencies[n // 2] * 1e3 if n else None,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else None,
        "n": n,
        "server_cpu_us": cpu / n * 1e6 if n and server else None,
        "harness_cpu_percent": own / duration_s * 100.0,
        "harness_cpu_us": own / n * 1e6 if n else None,
    }


def cpu_seconds(process: psutil.Process) -> float:
    t = process.cpu_times()
    return t.user + t.system


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


# --- set-up ---------------------------------------------------------------------------


def make_pki(base: Path) -> dict[str, Path]:
    from keyswarm.enrolment import TokenAccess, create_network, enrol_client, enrol_node

    root = TokenAccess(spec=f"soft:{base / 'root.token'}")
    create_network(root, network_name="bench", out_dir=base)
    for d in ("n1", "ops", "app", "appyk"):
        (base / d).mkdir(mode=0o700)
    enrol_node(root, base / "root.pem", TokenAccess(spec=f"soft:{base / 'n1' / 'node.token'}"), name="n1",
               out_dir=base / "n1")
    enrol_client(root, base / "root.pem", name="ops", admin=True, out_dir=base / "ops", key_file=base / "ops" / "key.pem")
    enrol_client(root, base / "root.pem", name="app", out_dir=base / "app", key_file=base / "app" / "key.pem")
    device = base / "appyk" / "client.vyk"
    enrol_client(root, base / "root.pem", name="appyk", out_dir=base / "appyk",
                 yubikey_slot_9a=TokenAccess(spec=f"virtual:{device}?latency=zero"), environ={"KEYSWARM_PIN": PIN})
    return {"base": base, "n1": base / "n1", "ops": base / "ops", "app": base / "app", "appyk": base / "appyk",
            "device": device}


def write_node_config(pki: dict[str, Path], client_port: int, peer_port: int, client_endpoint: str = "") -> Path:
    q = json.dumps
    n1 = pki["n1"]
    (n1 / "data").mkdir(mode=0o700)
    text = "\n".join([
        "[node]", 'id = "n1"', f"client_endpoint = {q(client_endpoint or f'tcp://127.0.0.1:{client_port}')}",
        f"peer_endpoint = {q(f'tcp://127.0.0.1:{peer_port}')}", f"data_dir = {q(str(n1 / 'data'))}", "",
        "[token]", f"spec = {q('soft:' + str(n1 / 'node.token'))}", f"node_certificate = {q(str(n1 / 'node.pem'))}",
        f"root_certificate = {q(str(n1 / 'root.pem'))}", f"domain_key = {q(str(n1 / 'domain-key.sealed'))}", "",
    ])
    path = n1 / "node.toml"
    path.write_text(text)
    return path


def creds(pki: dict[str, Path], who: str, **kw) -> dict:
    d = pki[who]
    return {"root_certificate": d / "root.pem", "client_certificate": d / "client.pem", "key": d / "key.pem",
            "timeout_s": 10.0, **kw}


def yk_creds(pki: dict[str, Path]) -> dict:
    from keyswarm.client.session import slot_9a_signer

    d = pki["appyk"]
    return {"root_certificate": d / "root.pem", "client_certificate": d / "client.pem",
            "key": slot_9a_signer(f"virtual:{pki['device']}", PIN), "timeout_s": 10.0}


async def connect_when_ready(endpoint: str, kw: dict, node: subprocess.Popen, log: Path):
    from keyswarm.client.session import AsyncClient

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if node.poll() is not None:
            raise SystemExit(f"the node exited with {node.returncode}:\n{log.read_text()[-3000:]}")
        try:
            client = await AsyncClient.connect(endpoint, **{**kw, "timeout_s": 2.0, "retries": 1})
            health = await client.health()
            if all(health.actors.get(a) == "running" for a in ("sessions", "keys", "admin")):
                client.timeout_s = 10.0
                return client
            await client.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --- the measurements ---------------------------------------------------------------------




async def setup(pki: dict[str, Path], endpoint: str, node_proc: subprocess.Popen, log: Path):
    """Grant the bench clients everything on bench/*, create bench/aes and bench/ed; the bench client, connected."""
    from keyswarm.client.session import AsyncClient
    from keyswarm.policy import ALL_KEY_OPERATIONS

    admin = await connect_when_ready(endpoint, creds(pki, "ops"), node_proc, log)
    for who in ("app", "appyk"):  # everything on bench/*
        await admin.set_policy(who, [("bench/*", (ALL_KEY_OPERATIONS,))])
    await admin.close()
    deadline = time.monotonic() + 10
    client = await AsyncClient.connect(endpoint, **creds(pki, "app"))
    while True:  # the policy reaches the sessions actor once durable
        try:
            await client.create_key("bench/aes", "aes256-gcm")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            await client.close()
            client = await AsyncClient.connect(endpoint, **creds(pki, "app"))
    await client.create_key("bench/ed", "ed25519")
    return client


async def bench(args, pki: dict[str, Path], endpoint: str, bare_endpoint: str, node: psutil.Process,
                bare: psutil.Process, node_proc: subprocess.Popen, log: Path) -> list[dict]:
    quick = args.quick
    runs = 1 if quick else 3
    timing = {"duration_s": 1.0, "warmup_s": 0.3} if quick else {"duration_s": 3.0, "warmup_s": 0.5}
    base = {"runs": runs, "payload_bytes": len(PAYLOAD), **timing}
    records: list[dict] = []
    t_start = time.monotonic()

    client = await setup(pki, endpoint, node_proc, log)
    ciphertext = await client.encrypt("bench/aes", PAYLOAD)
    assert await client.decrypt(ciphertext) == PAYLOAD
    bare_client = BareClient(zmq.asyncio.Context.instance(), bare_endpoint)
    assert len(await bare_client.encrypt("bench/aes", PAYLOAD)) == 12 + 64 + 16

    ops = {
        "encrypt": lambda: client.encrypt("bench/aes", PAYLOAD),
        "decrypt": lambda: client.decrypt(ciphertext),
        "sign": lambda: client.sign("bench/ed", PAYLOAD),
        "bare": lambda: bare_client.encrypt("bench/aes", PAYLOAD),
    }

    async def series(name: str, concurrency: int, server: psutil.Process = node, **kw) -> list[dict]:
        out = []
        for _ in range(runs):
            out.append(await drive(ops[name], concurrency=concurrency, server=server, **timing, **kw))
        return out

    med = statistics.median
    only = set(args.only.split(",")) if args.only else None

    def want(group: str) -> bool:
        return only is None or group in only

    # encrypt c1
    if want("encrypt"):
        await encrypt_series(series, drive_pair=(ops, node, bare, timing, runs), base=base, records=records)
    await rest(args, want, series, ops, client, base, records, pki, endpoint, med)
    await bare_client.close()
    if want("sessions"):
        await sessions_rss(args, client, pki, endpoint, node, records)
    print(f"bench took {time.monotonic() - t_start:.0f} s", flush=True)
    return records


async def encrypt_series(series, *, drive_pair, base: dict, records: list[dict]) -> None:
    ops, node, bare, timing, runs = drive_pair
    med = statistics.median
    r = await series("encrypt", 1)
    records.append(record("service.encrypt_rps.c1", round(med(x["rps"] for x in r)), "req/s",
                          params={**base, "concurrency": 1, "values": [round(x["rps"]) for x in r],
                                  "p50_ms": round(med(x["p50_ms"] for x in r), 3),
                                  "node_cpu_us_per_req": round(med(x["server_cpu_us"] for x in r), 1),
                                  "harness_cpu_us_per_req": round(med(x["harness_cpu_us"] for x in r), 1)}))
    print(f"encrypt c1 {[round(x['rps']) for x in r]}", flush=True)

    # encrypt c32 against bare, interleaved
    node_runs, bare_runs = [], []

    ratios = []
    for _ in range(runs):
        bare_runs.append(await drive(ops["bare"], concurrency=32, server=bare, **timing))
        node_runs.append(await drive(ops["encrypt"], concurrency=32, server=node, **timing))
        ratios.append(node_runs[-1]["rps"] / bare_runs[-1]["rps"])
    print(f"encrypt c32 {[round(x['rps']) for x in node_runs]} bare {[round(x['rps']) for x in bare_runs]}  "
          f"node CPU us/req {[round(x['server_cpu_us'], 1) for x in node_runs]}  "
          f"bare CPU us/req {[round(x['server_cpu_us'], 1) for x in bare_runs]}  "
          f"harness CPU us/req node {[round(x['harness_cpu_us'], 1) for x in node_runs]} "
          f"bare {[round(x['harness_cpu_us'], 1) for x in bare_runs]}", flush=True)
    c32 = {**base, "concurrency": 32}
    records.append(record("service.encrypt_rps.c32", round(med(x["rps"] for x in node_runs)), "req/s", target=20_000,
                          params={**c32, "values": [round(x["rps"]) for x in node_runs], "floor": 5_000,
                                  "meets_floor_5000": med(x["rps"] for x in node_runs) >= 5_000,
                                  "p50_ms": round(med(x["p50_ms"] for x in node_runs), 3),
                                  "node_cpu_us_per_req": round(med(x["server_cpu_us"] for x in node_runs), 1),
                                  "harness_cpu_us_per_req": round(med(x["harness_cpu_us"] for x in node_runs), 1),
                                  "harness_cpu_percent": round(med(x["harness_cpu_percent"] for x in node_runs))}))
    records.append(record("service.encrypt_p99_ms.c32", round(med(x["p99_ms"] for x in node_runs), 3), "ms", target=10,
                          higher_is_better=False, params={**c32, "values": [round(x["p99_ms"], 3) for x in node_runs]}))
    records.append(record("service.bare_encrypt_rps.c32", round(med(x["rps"] for x in bare_runs)), "req/s",
                          params={**c32, "values": [round(x["rps"]) for x in bare_runs],
                                  "bare_cpu_us_per_req": round(med(x["server_cpu_us"] for x in bare_runs), 1),
                                  "harness_cpu_us_per_req": round(med(x["harness_cpu_us"] for x in bare_runs), 1),
                                  "what": "pyzmq ROUTER + msgpack + AES-GCM(64 B), fixed key, no sessions/actors"}))
    records.append(record("service.ratio_to_bare_encrypt.c32", round(med(ratios), 3), "node/bare req/s", target=0.5,
                          params={**c32, "values": [round(x, 3) for x in ratios],
                                  "how": "median of per-pair ratios, bare and node runs interleaved, same harness"}))


async def rest(args, want, series, ops, client, base: dict, records: list[dict], pki, endpoint: str, med) -> None:
    from keyswarm.actors.key_messages import EncryptItem

    c32 = {**base, "concurrency": 32}
    for name in ("decrypt", "sign") if want("decrypt") else ():
        r = await series(name, 32)
        print(f"{name} c32 {[round(x['rps']) for x in r]}", flush=True)
        records.append(record(f"service.{name}_rps.c32", round(med(x["rps"] for x in r)), "req/s", target=5_000,
                              params={**c32, "values": [round(x["rps"]) for x in r],
                                      "p99_ms": round(med(x["p99_ms"] for x in r), 3),
                                      "node_cpu_us_per_req": round(med(x["server_cpu_us"] for x in r), 1),
                                      "harness_cpu_us_per_req": round(med(x["harness_cpu_us"] for x in r), 1)}))

    # batches of 100
    if want("batch"):
        items = [EncryptItem(name="bench/aes", plaintext=PAYLOAD) for _ in range(100)]
        ops["batch"] = lambda: client.encrypt_batch(items)
        r = await series("batch", 8, items_per_call=100)
        print(f"batch100 items/s {[round(x['items_per_s']) for x in r]}", flush=True)
        records.append(record("service.encrypt_batch100_items_per_s", round(med(x["items_per_s"] for x in r)),
                              "items/s", target=20_000, params={**base, "concurrency": 8, "batch": 100,
                                                                "values": [round(x["items_per_s"]) for x in r]}))

    # bulk 1 MiB
    ops["bulk"] = lambda: client.encrypt("bench/aes", BULK)
    if want("bulk"):
        await bulk_series(series, ops, client, base, records, med)

    # key ops: create + rotate, pipelined
    counter = iter(range(10**9))

    async def key_op() -> None:
        name = f"bench/k{next(counter)}"
        await client.create_key(name, "aes256-gcm")
        await client.rotate_key(name)

    ops["keyops"] = key_op
    if want("keyops"):
        await keyops_series(series, base, records, med)
    if want("auth"):
        await auth_series(args, pki, endpoint, records, med)


async def bulk_series(series, ops, client, base: dict, records: list[dict], med) -> None:
    try:
        r = await series("bulk", 4, bytes_per_call=len(BULK))
        print(f"bulk Gbit/s {[round(x['gbit_s'], 3) for x in r]}", flush=True)
        records.append(record("service.bulk_encrypt_gbit_s", round(med(x["gbit_s"] for x in r), 3), "Gbit/s", target=10,
                              params={**base, "concurrency": 4, "plaintext_bytes": len(BULK),
                                      "values": [round(x["gbit_s"], 3) for x in r],
                                      "p99_ms": round(med(x["p99_ms"] for x in r), 1),
                                      "node_cpu_us_per_req": round(med(x["server_cpu_us"] for x in r), 1),
                                      "harness_cpu_us_per_req": round(med(x["harness_cpu_us"] for x in r), 1)}))
        # the same 1 MiB, sealed by the client under a data key the node wraps (docs/protocol.md 11.6)
        ops["envelope"] = lambda: client.encrypt_envelope("bench/aes", BULK)
        r = await series("envelope", 4, bytes_per_call=len(BULK))
        print(f"bulk envelope Gbit/s {[round(x['gbit_s'], 3) for x in r]}", flush=True)
        records.append(record("service.bulk_envelope_encrypt_gbit_s", round(med(x["gbit_s"] for x in r), 3),
                              "Gbit/s", target=10,
                              params={**base, "concurrency": 4, "plaintext_bytes": len(BULK),
                                      "values": [round(x["gbit_s"], 3) for x in r],
                                      "p99_ms": round(med(x["p99_ms"] for x in r), 2),
                                      "node_cpu_us_per_call": round(med(x["server_cpu_us"] for x in r), 1),
                                      "what": "AsyncClient.encrypt_envelope: one datakey request to the node per "
                                              "1 MiB, AES-256-GCM in the client; not the same measurement as "
                                              "service.bulk_encrypt_gbit_s, where every byte crosses the node"}))
    except Exception as exc:  # e.g. TOO_LARGE
        print(f"bulk failed: {exc!r}", flush=True)
        records.append(record("service.bulk_encrypt_gbit_s", None, "Gbit/s", target=10,
                              params={"error": repr(exc)[:300], "plaintext_bytes": len(BULK)}))


async def keyops_series(series, base: dict, records: list[dict], med) -> None:
    r = await series("keyops", 32, items_per_call=2)
    print(f"key ops/s {[round(x['items_per_s']) for x in r]}", flush=True)
    records.append(record("service.key_ops_per_s", round(med(x["items_per_s"] for x in r)), "ops/s", target=1_000,
                          params={**base, "concurrency": 32, "values": [round(x["items_per_s"]) for x in r],
                                  "what": "create + rotate of a fresh aes256-gcm key (2 durable writes each)",
                                  "p99_ms_per_pair": round(med(x["p99_ms"] for x in r), 2)}))



async def auth_series(args, pki, endpoint: str, records: list[dict], med) -> None:
    from keyswarm.client.session import AsyncClient

    # auth and session establishment: soft key, then the virtual YubiKey
    n_auth = 20 if args.quick else 50
    for variant, kw in (("", creds(pki, "app")), (".yubikey", yk_creds(pki))):
        auth, establish = [], []
        # One warm-up handshake, not measured: it pays what a process pays once, not per handshake
        # (importing and loading the key; for the YubiKey, opening the PIV session and verifying the PIN).
        first_t0 = time.perf_counter()
        await (await AsyncClient.connect(endpoint, **kw)).close()
        first_ms = (time.perf_counter() - first_t0) * 1e3
        for _ in range(n_auth):
            t0 = time.perf_counter()
            c = await AsyncClient.connect(endpoint, **kw)
            t1 = time.perf_counter()
            await c.encrypt("bench/aes", PAYLOAD)
            t2 = time.perf_counter()
            await c.close()
            auth.append(t1 - t0)
            establish.append(t2 - t0)
        p = {"n": n_auth, "key": "soft Ed25519 key file" if not variant else
             "VirtualYubiKey slot 9a, default latency model", "p50_ms": round(med(auth) * 1e3, 2),
             "warmup": 1, "first_handshake_ms": round(first_ms, 2)}
        print(f"auth{variant} p99 {p99(auth) * 1e3:.1f} ms  session p99 {p99(establish) * 1e3:.1f} ms", flush=True)
        records.append(record(f"service.auth_p99_ms{variant}", round(p99(auth) * 1e3, 2), "ms", target=100,
                              higher_is_better=False,
                              params={**p, "what": "AsyncClient.connect: full handshake incl. chain verification"}))
        records.append(record(f"service.session_establish_p99_ms{variant}", round(p99(establish) * 1e3, 2), "ms",
                              target=200, higher_is_better=False,
                              params={**p, "p50_ms": round(med(establish) * 1e3, 2),
                                      "what": "connect -> first encrypt reply"}))



async def sessions_rss(args, client, pki, endpoint: str, node: psutil.Process, records: list[dict]) -> None:
    from keyswarm.client.session import AsyncClient

    quick = args.quick
    # sessions: RSS of the node after N more full handshakes
    rss0 = node.memory_info().rss
    budget_s = 60.0 if quick else 240.0
    target_n = 10_000 if quick else 100_000
    opened = 0
    t0 = time.monotonic()
    gen_deadline = t0 + budget_s
    sem_clients = [client] + [await AsyncClient.connect(endpoint, **creds(pki, "app")) for _ in range(3)]

    async def opener(c) -> None:
        nonlocal opened
        while opened < target_n and time.monotonic() < gen_deadline:
            opened += 1
            await c._handshake()  # a full handshake; the node keeps the session

    await asyncio.gather(*(opener(c) for c in sem_clients for _ in range(6)))
    elapsed = time.monotonic() - t0
    await asyncio.sleep(0.5)
    rss1 = node.memory_info().rss
    per_session = (rss1 - rss0) / max(opened, 1)
    stats_text = None
    reached = opened >= target_n
    extrapolated_mb = (rss1 + per_session * (100_000 - opened)) / 2**20
    print(f"sessions opened {opened} in {elapsed:.1f} s, RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB "
          f"({per_session:.0f} B/session)", flush=True)
    records.append(record("service.sessions_100k_rss_mb",
                          round((rss1 if opened >= 100_000 else extrapolated_mb * 2**20) / 2**20, 1), "MiB",
                          params={"sessions_opened": opened, "open_s": round(elapsed, 1),
                                  "handshakes_per_s": round(opened / elapsed), "rss_before_mib": round(rss0 / 2**20, 1),
                                  "rss_after_mib": round(rss1 / 2**20, 1), "bytes_per_session": round(per_session),
                                  "extrapolated": opened < 100_000,
                                  "how": ("measured at 100,000 sessions" if opened >= 100_000 else
                                          f"measured RSS after {opened} sessions (time budget {budget_s:.0f} s / "
                                          f"target {target_n}), extrapolated linearly to 100,000 with the measured "
                                          "bytes per session"),
                                  "target_10000_sessions_held": opened >= 10_000, "note": stats_text}))
    records.append(record("service.sessions_held", opened, "sessions", target=10_000,
                          params={"open_s": round(elapsed, 1), "budget_s": budget_s, "reached_target_n": reached}))
    for c in sem_clients[1:]:
        await c.close()


async def profile_run(pki: dict[str, Path], endpoint: str, node_proc: subprocess.Popen, log: Path, seconds: float,
                      op: str) -> dict:
    client = await setup(pki, endpoint, node_proc, log)
    plaintext, concurrency = (BULK, 4) if op == "bulk" else (PAYLOAD, 32)
    try:
        return await drive(lambda: client.encrypt("bench/aes", plaintext), concurrency=concurrency, duration_s=seconds,
                           warmup_s=0.5, server=psutil.Process(node_proc.pid), bytes_per_call=len(plaintext))
    finally:
        await client.close()


def profile_node(seconds: float, op: str = "encrypt") -> int:
    """cProfile the node's main thread (driver, sessions and keys actors) under `op` (encrypt at c=32 of 64 B, or
    bulk: encrypt at c=4 of 1 MiB); print the top."""
    import pstats

    from keyswarm.node.local_network import child_environment, find_free_base_port

    base_port = find_free_base_port(2)
    endpoint = f"tcp://127.0.0.1:{base_port + 1}"
    tmp = Path(tempfile.mkdtemp(prefix="keyswarm-bench-service-prof-"))
    node_proc = None
    try:
        pki = make_pki(tmp)
        config = write_node_config(pki, base_port + 1, base_port + 101)
        log, prof = tmp / "node.log", tmp / "node.prof"
        with open(log, "ab") as out:
            node_proc = subprocess.Popen(
                [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "keyswarm", "--log-level", "warning",
                 "node", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=child_environment(),
                start_new_session=True)
        result = asyncio.run(profile_run(pki, endpoint, node_proc, log, seconds, op))
        print(f"{op} under cProfile: {result['rps']:.0f} req/s ({result['gbit_s']:.2f} Gbit/s), node CPU "
              f"{result['server_cpu_us']:.1f} us/req, harness CPU {result['harness_cpu_us']:.1f} us/req, "
              f"{result['n']} requests measured", flush=True)
        stop(node_proc)
        if prof.exists():
            stats = pstats.Stats(str(prof))
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(40)
        else:
            print(f"no profile written (node exit {node_proc.returncode})")
    finally:
        if node_proc is not None:
            stop(node_proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


# --- main --------------------------------------------------------------------------------


def run_loop(coro, loop: str):  # noqa: ANN001, ANN201
    """Run the harness on uvloop (as the node runs) or on asyncio's default loop."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = add_bench_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--serve-bare", metavar="ENDPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the client harness's event loop (default uvloop, as the node and the sync client use)")
    parser.add_argument("--transport", choices=("tcp", "ipc"), default="tcp",
                        help="how the client reaches the node (and the bare server): TCP loopback (default) or an "
                             "ipc:// Unix socket")
    parser.add_argument("--only", metavar="GROUPS",
                        help="comma-separated subset of encrypt,decrypt,batch,bulk,keyops,auth,sessions "
                             "(the results file then holds only those)")
    parser.add_argument("--profile-node", metavar="SECONDS", type=float,
                        help="only cProfile the node under --profile-op for SECONDS and print the top (no results file)")
    parser.add_argument("--profile-op", choices=("encrypt", "bulk"), default="encrypt",
                        help="what --profile-node drives: encrypt (64 B, c=32) or bulk (1 MiB, c=4)")
    args = parser.parse_args(argv)
    keep_large_buffers()  # the harness moves 1 MiB frames too (transport/malloc_tuning.py)
    if args.serve_bare:
        return serve_bare(args.serve_bare)
    if args.profile_node:
        return profile_node(args.profile_node, args.profile_op)

    from keyswarm.node.local_network import find_free_base_port, spawn_node

    base_port = find_free_base_port(2)
    tmp = Path(tempfile.mkdtemp(prefix="keyswarm-bench-service-"))
    if args.transport == "ipc":  # same-host clients over a Unix socket instead of TCP loopback
        endpoint, bare_endpoint = f"ipc://{tmp}/n1.sock", f"ipc://{tmp}/bare.sock"
    else:
        endpoint = f"tcp://127.0.0.1:{base_port + 1}"
        bare_endpoint = f"tcp://127.0.0.1:{base_port + 2}"
    node_proc = bare_proc = None
    try:
        pki = make_pki(tmp)
        config = write_node_config(pki, base_port + 1, base_port + 101, endpoint)
        log = tmp / "node.log"
        node_proc = spawn_node(str(config), str(log), log_level="warning")
        bare_proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-bare", bare_endpoint],
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        records = run_loop(bench(args, pki, endpoint, bare_endpoint, psutil.Process(node_proc.pid),
                                 psutil.Process(bare_proc.pid), node_proc, log), args.loop)
    finally:
        for p in (bare_proc, node_proc):
            if p is not None:
                stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
    write_results("service", records, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
