"""Transport KPI: a node's full client request path against a bare pyzmq + msgpack echo.

    python bench/transport.py [--quick] [--out DIR]

One client harness, two servers, same run (DESIGN section 11):
- bare server: a separate process running a plain ROUTER loop: blocking
  `recv_multipart`, `msgpack.unpackb` the request, build the reply map a node
  sends for an echo, `packb`, `send_multipart`. Nothing else: the floor of
  what Python + pyzmq + msgpack cost per request on this machine.
- runtime server: a real node (`python -m keyswarm node --config`, its own
  process, so client and server do not share a GIL) answering
  `Echo(payload=64 bytes)` through its driver, gateway and echo actor.
- client harness: this process. A sync DEALER keeps C requests in flight
  (C = 1 and 64), sends `frames.encode_request(rid, Echo(...))` (the bare
  server gets the same bytes), decodes every reply with `frames.decode_reply`
  (the bare server's replies are valid reply frames, so the harness does the
  same work for both) and checks it is ok and carries the payload. Replies in
  the warm-up are not counted; requests/s and latency come from the rest.

Runs are interleaved (bare, runtime, bare, runtime, ...) so machine noise hits
both alike; ratios are the median of the per-pair ratios. The machine has 2
cores: during a run only the harness and one server are busy.

At C=64 the harness and the server share the 2 cores (each also has a ZeroMQ
I/O thread), so requests/s is capped by the pair, and the throughput ratio
drifts towards 1 whatever the server costs. The server's CPU time per request
(all its threads, read with psutil over the measured window) is what each
server costs regardless of the harness: `echo_cpu_ratio` = bare CPU per
request / node CPU per request (1.0: the node costs no more than the bare
loop). The harness's own CPU use is printed and kept in the params.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import psutil
import zmq

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))  # a source checkout runs without an install

from common import add_bench_args, median_of, record, write_results  # noqa: E402

PAYLOAD = bytes(range(64))
CONCURRENCY = (1, 64)
#: Request ids cycle through this many pre-encoded frames (far more than are ever in flight).
RING = 1024
#: A reply slower than this means a server is stuck: the run fails instead of hanging.
REPLY_TIMEOUT_MS = 5000
START_TIMEOUT_S = 30.0
RATIO_TARGET = 0.5


# --- the bare server (runs in its own process) -----------------------------------


def serve_bare(endpoint: str) -> int:
    """Echo forever: decode, build the node's echo reply shape, encode, send. SIGTERM ends it."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    recv, send = sock.recv_multipart, sock.send_multipart
    unpackb, packb = msgpack.unpackb, msgpack.packb
    while True:
        identity, data = recv()
        version, _kind, request_id, body = unpackb(data)
        reply = {"ok": True, "op": "echo.result", "payload": body["payload"], "node": "bare"}
        send([identity, packb([version, "r", request_id, reply])])


# --- the client harness ------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    rps: float
    p50_ms: float
    p99_ms: float
    replies: int
    server_cpu_us: float  # server process CPU (all threads) per reply, in the measured window
    client_cpu_percent: float  # harness CPU use in the window: near 100 means the harness is the limit


def request_ring() -> list[bytes]:
    from keyswarm.actors.messages import Echo
    from keyswarm.transport.frames import encode_request

    return [encode_request(rid, Echo(payload=PAYLOAD)) for rid in range(RING)]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def drive(
    context: zmq.Context, endpoint: str, ring: list[bytes], server: psutil.Process, *, concurrency: int, duration_s: float, warmup_s: float
) -> RunResult:
    """Keep `concurrency` requests in flight for `warmup_s + duration_s`; measure after the warm-up."""
    from keyswarm.transport.frames import decode_reply

    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
    sock.connect(endpoint)
    send, recv, perf = sock.send, sock.recv, time.perf_counter
    sent_at = [0.0] * RING
    latencies: list[float] = []
    record_latency = latencies.append
    try:
        rid = 0
        start = perf()
        for _ in range(concurrency):
            sent_at[rid] = perf()
            send(ring[rid])
            rid += 1
        for phase_end, measuring in ((start + warmup_s, False), (start + warmup_s + duration_s, True)):
            if measuring:
                window_start, server_cpu0, client_cpu0 = perf(), cpu_seconds(server), time.process_time()
            while True:
                try:
                    data = recv()
                except zmq.Again:
                    raise SystemExit(f"no reply from {endpoint} within {REPLY_TIMEOUT_MS} ms") from None
                now = perf()
                reply = decode_reply(data)
                if reply.error is not None or reply.value.payload != PAYLOAD:
                    raise SystemExit(f"bad reply from {endpoint}: {reply}")
                if measuring:
                    record_latency(now - sent_at[reply.request_id])
                sent_at[rid] = now
                send(ring[rid])
                rid = (rid + 1) % RING
                if now >= phase_end:
                    break
        elapsed = now - window_start
        server_cpu = cpu_seconds(server) - server_cpu0
        client_cpu = time.process_time() - client_cpu0
        for _ in range(concurrency):  # let the server go idle before the next run
            recv()
    finally:
        sock.close(linger=0)
    latencies.sort()
    return RunResult(
        rps=len(latencies) / elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000.0,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000.0,
        replies=len(latencies),
        server_cpu_us=server_cpu / len(latencies) * 1e6,
        client_cpu_percent=client_cpu / elapsed * 100.0,
    )


# --- servers' lifecycle ----------------------------------------------------------------


def start_bare_server(endpoint: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-bare", endpoint],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_answering(context: zmq.Context, endpoint: str, ring: list[bytes], process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    server = psutil.Process(process.pid)
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the bare server exited with code {process.returncode}")
        try:
            drive(context, endpoint, ring, server, concurrency=1, duration_s=0.05, warmup_s=0.0)
            return
        except SystemExit:
            if time.monotonic() > deadline:
                raise


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = add_bench_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--serve-bare", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.serve_bare)

    from keyswarm.node.local_network import LocalNetwork, find_free_base_port, plan_network

    runs = 1 if args.quick else 5
    timing = {"duration_s": 1.0, "warmup_s": 0.2} if args.quick else {"duration_s": 3.0, "warmup_s": 0.5}
    base = find_free_base_port(2)
    bare_endpoint = f"tcp://127.0.0.1:{base + 2}"  # base+1 and base+101 are the node's
    ring = request_ring()
    context = zmq.Context()
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="keyswarm-bench-") as root:
        plan = plan_network(1, base_port=base, root=root)
        network = LocalNetwork(plan, log_level="warning")
        bare = start_bare_server(bare_endpoint)
        try:
            network.start()
            network.wait_healthy(START_TIMEOUT_S)
            wait_answering(context, bare_endpoint, ring, bare)
            servers = {
                "bare": (bare_endpoint, psutil.Process(bare.pid)),
                "runtime": (plan[0].client_endpoint, psutil.Process(network.processes[plan[0].id].pid)),
            }
            for concurrency in CONCURRENCY:
                results: dict[str, list[RunResult]] = {"bare": [], "runtime": []}

                def one_pair() -> float:
                    for name in ("bare", "runtime"):  # interleaved: noise hits both alike
                        endpoint, process = servers[name]
                        results[name].append(drive(context, endpoint, ring, process, concurrency=concurrency, **timing))
                    return results["runtime"][-1].rps / results["bare"][-1].rps

                ratio, ratios = median_of(runs, one_pair)
                records += results_for(concurrency, results, ratio, ratios, params={"runs": runs, **timing})
                show_runs(concurrency, results)
        finally:
            reports = network.stop()
            stop(bare)
            context.destroy(linger=0)
    if not all(r.clean for r in reports):
        print(f"warning: the node did not stop cleanly: {reports}", file=sys.stderr)
    records.sort(key=lambda r: METRIC_ORDER.index(r["metric"]) if r["metric"] in METRIC_ORDER else len(METRIC_ORDER))
    write_results("transport", records, out_dir=args.out)
    return 0


METRIC_ORDER = [
    f"transport.{name}"
    for name in (
        "echo_rps.c1", "echo_rps.c64", "bare_echo_rps.c1", "bare_echo_rps.c64", "echo_ratio.c64", "echo_ratio.c1",
        "echo_p99_ms.c64", "echo_cpu_ratio.c64", "echo_cpu_ratio.c1",
    )
]


def show_runs(concurrency: int, results: dict[str, list[RunResult]]) -> None:
    for name, runs in results.items():
        print(
            f"C={concurrency:<2} {name:<7} req/s {[round(r.rps) for r in runs]}  "
            f"server CPU us/req {[round(r.server_cpu_us, 1) for r in runs]}  "
            f"harness CPU % {[round(r.client_cpu_percent) for r in runs]}",
            flush=True,
        )


def results_for(
    concurrency: int, results: dict[str, list[RunResult]], ratio: float, ratios: list[float], *, params: dict
) -> list[dict]:
    median = statistics.median
    params = {"concurrency": concurrency, "payload_bytes": len(PAYLOAD), **params}
    c = f"c{concurrency}"

    def summary(runs: list[RunResult]) -> dict:
        return {
            "values": [round(r.rps) for r in runs],
            "p50_ms": round(median(r.p50_ms for r in runs), 3),
            "p99_ms": round(median(r.p99_ms for r in runs), 3),
            "server_cpu_us_per_req": round(median(r.server_cpu_us for r in runs), 2),
            "harness_cpu_percent": round(median(r.client_cpu_percent for r in runs)),
        }

    node, bare = results["runtime"], results["bare"]
    cpu_ratios = [b.server_cpu_us / n.server_cpu_us for b, n in zip(bare, node)]
    out = [
        record(f"transport.echo_rps.{c}", round(median(r.rps for r in node)), "req/s", params={**params, **summary(node)}),
        record(f"transport.bare_echo_rps.{c}", round(median(r.rps for r in bare)), "req/s", params={**params, **summary(bare)}),
        record(f"transport.echo_ratio.{c}", round(ratio, 3), "runtime/bare", target=RATIO_TARGET,
               params={**params, "values": [round(x, 3) for x in ratios], "how": "median of per-pair ratios, runs interleaved"}),
        # Throughput ratios say little once the harness is the limit (harness CPU near
        # 100 %); server CPU per request is what each server costs regardless.
        record(f"transport.echo_cpu_ratio.{c}", round(median(cpu_ratios), 3), "bare/runtime CPU per req",
               params={**params, "values": [round(x, 3) for x in cpu_ratios],
                       "how": "bare server CPU per request / node CPU per request, median of pairs"}),
    ]
    if concurrency == 64:
        out.append(record(f"transport.echo_p99_ms.{c}", round(median(r.p99_ms for r in node), 3), "ms", higher_is_better=False,
                          params={**params, "values": [round(r.p99_ms, 3) for r in node]}))
    return out


if __name__ == "__main__":
    sys.exit(main())
