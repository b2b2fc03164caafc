"""The demonstration `keyswarm up --demo` runs on a local network, step by step.

Owns the demo's steps and what each prints: health; sub-keys (each node's
token and the sub-key it minted, read from `health`); the peer network (a
round-trip matrix of `ping.peer`); the counter (a blocking service that
persists); echo; then, on a network with tokens, the client steps of
`local_workload` (enrolled clients and a policy, keys and a mixed workload,
a summary). `run_demo` returns True only if every step worked.

Rules:
- Only the client operations a node serves to anyone are used; nothing
  reads a node's files or its log. Sub-key serials and expiries come from
  `health`, which carries no key material.
- Every wait is bounded: a step that retries (the peer links coming up, a
  sub-key being certified) does so until a deadline, then reports FAIL with
  the last error.
- Output is plain text tables (`format_table`), one line per node, readable
  in a terminal and in a CI log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

from keyswarm.errors import KeyswarmError
from keyswarm.node.local_network import LocalNetwork, PlannedNode, format_table, request

#: How long the demo keeps retrying a ping while the peer links come up.
PING_SETTLE_S = 10.0
#: How long the demo waits for every node's first sub-key (a soft token certifies in milliseconds).
SUBKEY_SETTLE_S = 10.0



def describe_actors(states: dict[str, str]) -> str:
    """`71 running` or `70 running; keys.3 restarting`: a node runs dozens of
    actors (one per key partition), so list only those that are not running."""
    running = sum(1 for state in states.values() if state == "running")
    others = [f"{name} {state}" for name, state in sorted(states.items()) if state != "running"]
    return "; ".join([f"{running} running"] + others)

def run_demo(network: LocalNetwork, *, out: Callable[[str], object]) -> bool:
    """Health, sub-keys, peer pings, counters and echo on every node, then the client steps; True if every step worked."""
    ok = True
    steps = [_health_step, *((_subkeys_step,) if network.tokens else ()), _ping_step, _counter_step, _echo_step]
    for step, run in enumerate(steps, 1):
        if step > 1:
            out("")
        ok &= run(step, network.plan, out)
    if network.tokens:
        from keyswarm.node.local_workload import run_client_steps

        ok &= run_client_steps(len(steps) + 1, network, out=out)
    out("\ndemo: every step succeeded" if ok else "\ndemo: some steps FAILED (see above)")
    return ok


def _health_step(step: int, plan: tuple[PlannedNode, ...], out: Callable[[str], object]) -> bool:
    from keyswarm.actors.messages import Health

    out(f"{step}. health: each node answers a client")
    ok, rows = True, []
    for node in plan:
        value, error = _ask(node, Health())
        ok &= error is None
        if error is None:
            actors = describe_actors(value.actors)
            rows.append([node.id, value.status, f"{value.uptime_s:.1f} s", actors])
        else:
            rows.append([node.id, "FAILED", "", error])
    format_table(["node", "status", "uptime", "actors"], rows, out=out)
    return ok


def _subkeys_step(step: int, plan: tuple[PlannedNode, ...], out: Callable[[str], object]) -> bool:
    from keyswarm.actors.messages import Health

    out(f"{step}. sub-keys: each node minted a sub-key (Ed25519 + X25519) and had its own soft token certify it")
    ok, rows = True, []
    deadline = time.monotonic() + SUBKEY_SETTLE_S
    for node in plan:
        while True:
            value, error = _ask(node, Health())
            if error is not None or value.subkey == "ok" or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        good = error is None and value.subkey == "ok" and value.token == "ready"
        ok &= good
        if error is not None:
            rows.append([node.id, "FAIL", "", "", "", error])
            continue
        token = f"{value.token_kind or '?'}, {value.token}"
        if value.subkey_serial:
            expiry = datetime.fromtimestamp(value.subkey_not_after_s, timezone.utc)
            left_min = (value.subkey_not_after_s - time.time()) / 60.0
            until = f"{expiry:%Y-%m-%d %H:%M:%S} UTC (in {left_min:.0f} min)"
            serial = f"{value.subkey_serial:016x}"
        else:
            until, serial = "-", "-"
        rows.append([node.id, token, value.subkey if good else f"{value.subkey} FAIL", serial, until, value.status])
    format_table(["node", "token", "sub-key", "serial", "valid until", "node status"], rows, out=out)
    out("  rotated at half-life by the node itself; the token signs once per rotation, never on a request")
    return ok


def _ping_step(step: int, plan: tuple[PlannedNode, ...], out: Callable[[str], object]) -> bool:
    from keyswarm.actors.messages import PingPeer

    out(f"{step}. peer network: each node pings every other node's echo actor (ping.peer, round trip in ms)")
    ok, rows = True, []
    settle_until = time.monotonic() + PING_SETTLE_S
    for source in plan:
        row = [source.id]
        for target in plan:
            if target.id == source.id:
                row.append("-")
                continue
            value, error = _ask(source, PingPeer(target=target.id, timeout_s=1.0), retry_until=settle_until)
            ok &= error is None
            row.append(f"{value.rtt_ms:.2f}" if error is None else "FAIL")
            if error is not None:
                out(f"  {source.id} -> {target.id}: {error}")
        rows.append(row)
    format_table(["from \\ to", *(n.id for n in plan)], rows, out=out)
    return ok


def _counter_step(step: int, plan: tuple[PlannedNode, ...], out: Callable[[str], object]) -> bool:
    from keyswarm.actors.messages import Increment

    out(f"{step}. counter: 'demo' incremented three times on each node, through its blocking counter-store service")
    ok, rows = True, []
    for node in plan:
        values = []
        for _ in range(3):
            value, error = _ask(node, Increment(name="demo", by=1))
            ok &= error is None
            values.append(str(value.value) if error is None else f"FAIL ({error})")
        rows.append([node.id, " -> ".join(values), os.path.join(node.data_dir, "counters.json")])
    format_table(["node", "values", "persisted in"], rows, out=out)
    return ok


def _echo_step(step: int, plan: tuple[PlannedNode, ...], out: Callable[[str], object]) -> bool:
    from keyswarm.actors.messages import Echo

    out(f"{step}. echo: each node sends back what a client sent")
    ok, rows = True, []
    for node in plan:
        text = f"hello {node.id}"
        value, error = _ask(node, Echo(payload=text.encode()))
        good = error is None and value.payload == text.encode() and value.node == node.id
        ok &= good
        shown = f"{value.payload.decode(errors='replace')!r} from {value.node}" if error is None else error
        rows.append([node.id, repr(text), shown, "ok" if good else "MISMATCH" if error is None else "FAIL"])
    format_table(["node", "sent", "received", ""], rows, out=out)
    return ok


def _ask(node: PlannedNode, msg: object, *, retry_until: float = 0.0, timeout_s: float = 3.0) -> tuple[object, str | None]:
    """`(value, None)` or `(None, "CODE: message")`; retries until `retry_until` while it fails."""
    while True:
        try:
            reply = request(node.client_endpoint, msg, timeout_s=timeout_s)
        except KeyswarmError as exc:
            error = f"no reply: {exc}"
        else:
            if reply.error is None:
                return reply.value, None
            error = f"{reply.error.code}: {reply.error.message}"
        if time.monotonic() >= retry_until:
            return None, error
        time.sleep(0.1)
