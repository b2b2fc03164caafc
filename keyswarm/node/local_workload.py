"""The client half of `keyswarm up --demo`: enrolled clients, a policy, named keys, a mixed workload, a summary.

Owns demo steps 6-8 (`run_client_steps`), which run only on a network with
tokens (sessions need node certificates):

6. clients: the root enrols an admin `ops` and an application client `app1`
   (key files under DATA/clients/); `ops` gives `app1` the rules `app1/*`.
7. workload: `app1` creates `app1/aes`, `app1/ed`, `app1/mac` on n1 and runs
   a short mixed workload there (encrypt+decrypt round trips, sign+verify,
   hmac; a few requests in flight), rotates `app1/aes` half-way, decrypts
   what it sealed before the rotation, is refused `app2/x` (FORBIDDEN), and
   seals 8 MiB in its own process as an envelope under a data key that
   `app1/aes` wraps (bulk data never crosses the network), then opens it.
8. summary: operations by type, errors by code, throughput, latency
   percentiles.

Rules:
- Only the client library (`keyswarm.client.Client`) talks to the nodes;
  nothing reads a node's files or log.
- Keys and policy live on n1 only: there is no replication yet, so the
  workload runs against n1, and the output says so.
- Every check counts: a wrong plaintext, an invalid signature, any error in
  the workload or a missing refusal makes the step FAIL (and the demo exit
  non-zero). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from keyswarm.errors import KeyswarmError
from keyswarm.node.local_network import LocalNetwork, format_table
from keyswarm.node.local_pki import LocalClientFiles, enrol_local_client

#: How long the workload runs.
WORKLOAD_S = 2.5
#: Requests the workload keeps in flight on its one session (a little pipelining).
IN_FLIGHT = 8
#: How long `app1` retries while `ops`'s policy becomes durable on n1.
POLICY_SETTLE_S = 10.0
#: The mix: (share, kind) of workload iterations.
MIX = ((0.70, "encrypt+decrypt"), (0.20, "sign+verify"), (0.10, "hmac"))
#: Ciphertexts sealed under app1/aes before the rotation, decrypted after it.
PRE_ROTATION_CIPHERTEXTS = 16

KEYS = (("app1/aes", "aes256-gcm"), ("app1/ed", "ed25519"), ("app1/mac", "hmac-sha256"))
APP1_OPS = ("encrypt", "decrypt", "datakey", "sign", "verify", "hmac", "key.create", "key.rotate", "key.get")
#: Bulk data the demo seals in app1's process as an envelope (docs/protocol.md 11.6).
ENVELOPE_BYTES = 8 * 1024 * 1024


@dataclass
class Tally:
    """What the workload did: each request's latency by operation, and errors by code."""

    latencies_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    error_ops: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    window_requests: int = 0  # requests that finished inside the timed window (throughput)

    def requests(self) -> int:
        return sum(len(v) for v in self.latencies_s.values())

    def error(self, op: str, code: str, text: str) -> None:
        self.errors[code] += 1
        self.error_ops[op] += 1
        if len(self.first_errors) < 3:
            self.first_errors.append(f"{op}: {text if text.startswith(code) else f'{code}: {text}'}")


@dataclass
class DemoClients:
    ops: LocalClientFiles | None = None
    app1: LocalClientFiles | None = None
    tally: Tally | None = None


def run_client_steps(first: int, network: LocalNetwork, *, out: Callable[[str], object]) -> bool:
    """Steps `first`..`first+2` (clients, workload, summary); True if every one worked."""
    state = DemoClients()
    ok = True
    for step, run in enumerate((_clients_step, _workload_step, _summary_step), first):
        out("")
        # The workload needs the clients; the summary needs a workload that ran (it shows its errors too).
        if (run is _workload_step and not ok) or (run is _summary_step and state.tally is None):
            out(f"{step}. skipped: an earlier step FAILED")
            ok = False
            continue
        try:
            ok &= run(step, network, state, out)
        except KeyswarmError as exc:  # a client that could not connect, an enrolment refused
            out(f"  FAIL: {type(exc).__name__}: {exc}")
            ok = False
    return ok


def _connect(network: LocalNetwork, files: LocalClientFiles):  # noqa: ANN202 -- a keyswarm.client.Client
    from keyswarm.client import Client

    return Client.connect(
        network.plan[0].client_endpoint, root_certificate=files.root_certificate,
        client_certificate=files.client_certificate, key=files.key,
    )


def _clients_step(step: int, network: LocalNetwork, state: DemoClients, out: Callable[[str], object]) -> bool:
    assert network.pki is not None
    n1 = network.plan[0].id
    out(f"{step}. clients: the root enrols an admin 'ops' and an application client 'app1'; ops sets app1's policy on {n1}")
    rows = []
    for name, admin in (("ops", True), ("app1", False)):
        files, made = enrol_local_client(network.pki, name, admin=admin)
        setattr(state, name, files)
        kind = "admin (root-issued)" if admin else "application (root-issued)"
        rows.append([name, kind, "enrolled" if made else "reused", files.client_certificate, files.key])
    format_table(["client", "certificate", "", "certificate file", "key file (0600, no passphrase)"], rows, out=out)
    rules = [("app1/*", APP1_OPS)]
    with _connect(network, state.ops) as ops:
        ops.set_policy("app1", rules)
    out(f"  ops -> {n1}: policy.set app1: app1/* -> {', '.join(APP1_OPS)}  ok")
    return True


def _workload_step(step: int, network: LocalNetwork, state: DemoClients, out: Callable[[str], object]) -> bool:
    from keyswarm.client import ForbiddenError

    n1 = network.plan[0].id
    out(f"{step}. workload: app1 creates three keys on {n1} and runs a {WORKLOAD_S:g} s mixed workload "
        f"({IN_FLIGHT} requests in flight)")
    out(f"  keys and policy live on {n1} only (no replication yet; it comes later), so the workload runs against {n1}")
    ok = True
    with _connect(network, state.app1) as app:
        rows = []
        for name, algorithm in KEYS:
            info, how = _create_key(app, name, algorithm)
            good = info.algorithm == algorithm
            ok &= good
            rows.append([name, info.algorithm, f"v{info.primary}", how if good else f"{how}, wrong algorithm FAIL"])
        format_table(["key", "algorithm", "primary", ""], rows, out=out)

        tally, rotation = app.call_async(lambda client: _workload(client))
        state.tally = tally
        before, after, sealed, opened = rotation
        rotated = after == before + 1 and opened == sealed
        ok &= rotated
        out(f"  rotation: app1/aes v{before} -> v{after} half-way through; {opened}/{sealed} ciphertexts "
            f"sealed under v{before} still decrypt  {'ok' if rotated else 'FAIL'}")
        errors = sum(tally.errors.values())
        ok &= errors == 0
        out(f"  workload: {tally.window_requests} requests in {tally.elapsed_s:.2f} s "
            f"(+{tally.requests() - tally.window_requests} around the rotation check), "
            + ("no errors  ok" if errors == 0 else f"{errors} errors FAIL"))
        for line in tally.first_errors:
            out(f"    {line}")

        try:
            app.encrypt("app2/x", b"not mine")
        except ForbiddenError as exc:
            text = str(exc) if str(exc).startswith("FORBIDDEN") else f"FORBIDDEN: {exc}"
            out(f"  refused as it should be: app1 encrypt app2/x -> {text}  ok")
        except KeyswarmError as exc:
            out(f"  app1 encrypt app2/x: expected FORBIDDEN, got {type(exc).__name__}: {exc}  FAIL")
            ok = False
        else:
            out("  app1 encrypt app2/x: expected FORBIDDEN, but it was allowed  FAIL")
            ok = False
        ok &= _envelope(app, out)
    return ok


def _envelope(app, out: Callable[[str], object]) -> bool:  # noqa: ANN001 -- a keyswarm.client.Client
    """Bulk data as an envelope: one datakey request to n1, AES-256-GCM in this process, and back."""
    from keyswarm.crypto.session_keys import SUITE_NAMES

    data = random.Random(7).randbytes(ENVELOPE_BYTES)
    try:
        started = time.perf_counter()
        sealed = app.encrypt_envelope("app1/aes", data, b"demo")
        sealed_s = time.perf_counter() - started
        opened = app.decrypt_envelope(sealed, b"demo")
    except KeyswarmError as exc:
        out(f"  envelope: {type(exc).__name__}: {exc}  FAIL")
        return False
    good = opened == data
    suite = SUITE_NAMES.get(app.session.channel.suite, "?")
    out(f"  envelope: {ENVELOPE_BYTES >> 20} MiB sealed in app1's process under a data key app1/aes wraps in "
        f"{sealed_s * 1e3:.1f} ms (one datakey request to n1; the data never crossed the network); opened again  "
        + ("ok" if good else "FAIL"))
    out(f"  the session itself runs {suite} (docs/protocol.md 12.6)")
    return good


def _create_key(app, name: str, algorithm: str):  # noqa: ANN001, ANN202 -- (KeyInfo, how)
    """Create `name`, retrying FORBIDDEN while the policy becomes durable; a kept data dir's key is reused."""
    from keyswarm.client import ForbiddenError

    deadline = time.monotonic() + POLICY_SETTLE_S
    while True:
        try:
            return app.create_key(name, algorithm), "created"
        except ForbiddenError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
        except KeyswarmError as exc:
            if "already exists" not in str(exc):
                raise
            return app.get_key(name), "reused (kept data dir)"


async def _workload(client) -> tuple[Tally, tuple[int, int, int, int]]:  # noqa: ANN001 -- an AsyncClient
    """Run the mix for `WORKLOAD_S` with `IN_FLIGHT` workers; rotate app1/aes half-way.

    Returns the tally and (version before, version after, ciphertexts sealed
    before the rotation, how many of them decrypted after it).
    """
    from keyswarm.client.errors import code_of

    tally = Tally()

    async def timed(op: str, coro):  # noqa: ANN001, ANN202
        started = time.perf_counter()
        try:
            result = await coro
        except KeyswarmError as exc:
            tally.error(op, code_of(exc), str(exc))
            return None
        tally.latencies_s[op].append(time.perf_counter() - started)
        return result

    def check(op: str, good: bool, what: str) -> None:
        if not good:
            tally.error(op, "MISMATCH", what)

    before = (await client.get_key("app1/aes")).primary
    plaintexts = [f"sealed before the rotation #{i}".encode() for i in range(PRE_ROTATION_CIPHERTEXTS)]
    sealed = await asyncio.gather(*(timed("encrypt", client.encrypt("app1/aes", p, b"demo")) for p in plaintexts))

    deadline = time.monotonic() + WORKLOAD_S

    async def worker(index: int) -> None:
        rng = random.Random(index)
        kinds, weights = [k for _, k in MIX], [w for w, _ in MIX]
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            message = rng.randbytes(rng.randint(16, 512))
            if kind == "encrypt+decrypt":
                ciphertext = await timed("encrypt", client.encrypt("app1/aes", message, b"demo"))
                if ciphertext is not None:
                    plain = await timed("decrypt", client.decrypt(ciphertext, b"demo"))
                    check("decrypt", plain is None or plain == message, "round trip gave other bytes")
            elif kind == "sign+verify":
                signature = await timed("sign", client.sign("app1/ed", message))
                if signature is not None:
                    valid = await timed("verify", client.verify("app1/ed", message, signature))
                    check("verify", valid is None or valid is True, "a fresh signature did not verify")
            else:
                mac = await timed("hmac", client.hmac("app1/mac", message))
                check("hmac", mac is None or len(mac) == 32, "an HMAC-SHA256 tag not 32 bytes")

    async def rotate_half_way() -> int:
        await asyncio.sleep(WORKLOAD_S / 2)
        info = await timed("key.rotate", client.rotate_key("app1/aes"))
        return info.primary if info is not None else before

    done_before = tally.requests()
    started = time.perf_counter()
    *_, after = await asyncio.gather(*(worker(i) for i in range(IN_FLIGHT)), rotate_half_way())
    tally.elapsed_s = time.perf_counter() - started
    tally.window_requests = tally.requests() - done_before

    opened = await asyncio.gather(*(timed("decrypt", client.decrypt(c, b"demo")) for c in sealed if c is not None))
    good = sum(1 for p, o in zip(plaintexts, opened) if o == p)
    check("decrypt", good == len(plaintexts), "a ciphertext sealed before the rotation did not decrypt")
    return tally, (before, after, len(plaintexts), good)


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values), max(1, math.ceil(share * len(sorted_values))))
    return sorted_values[rank - 1]


def _summary_step(step: int, network: LocalNetwork, state: DemoClients, out: Callable[[str], object]) -> bool:
    tally = state.tally
    assert tally is not None
    out(f"{step}. summary: app1's requests to {network.plan[0].id} (latency is the client's, request to reply, in ms)")
    rows = []
    every: list[float] = []
    for op in ("encrypt", "decrypt", "sign", "verify", "hmac", "key.rotate"):
        values = sorted(tally.latencies_s.get(op, []))
        every.extend(values)
        if values or tally.error_ops[op]:
            rows.append([op, str(len(values)), str(tally.error_ops[op]), *_ms(values)])
    every.sort()
    rows.append(["all", str(len(every)), str(sum(tally.errors.values())), *_ms(every)])
    format_table(["operation", "ok", "errors", "p50", "p90", "p99"], rows, out=out)
    throughput = tally.window_requests / tally.elapsed_s if tally.elapsed_s > 0 else 0.0
    out(f"  throughput: {throughput:.0f} ops/s ({tally.window_requests} requests in {tally.elapsed_s:.2f} s, "
        f"{IN_FLIGHT} in flight on one session)")
    if tally.errors:
        out("  errors by code: " + ", ".join(f"{code} {count}" for code, count in sorted(tally.errors.items())) + "  FAIL")
    else:
        out("  errors by code: none")
    return not tally.errors and bool(every)


def _ms(values: list[float]) -> list[str]:
    return [f"{percentile(values, share) * 1000:.2f}" if values else "-" for share in (0.50, 0.90, 0.99)]


__all__ = ["run_client_steps", "percentile", "WORKLOAD_S", "IN_FLIGHT"]
