"""A node's standing, sans-IO: `node.revoke` and a node certificate that stops being valid while it runs.

The real gateway and sessions actors run in the simulator (virtual time and
wall clock: `WALL_EPOCH_S + sim.now`) beside the stand-ins of
`session_node.py`. Certificates with short validity windows around the
simulation's wall clock make expiry happen in virtual seconds, never by
sleeping. Assertion messages carry the seed's replay hint.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from keyswarm.actors.key_messages import PolicyChanged
from keyswarm.actors.messages import Echo, EchoResult, Health, HealthResult
from keyswarm.actors.node_standing import CERTIFICATE_CONDITION, REVOKED_CONDITION
from keyswarm.actors.runtime import Address
from keyswarm.actors.session_messages import LoadPolicy
from keyswarm.crypto.certificates import node_certificate
from keyswarm.crypto.sealing import DomainKey
from keyswarm.errors import ErrorCode
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.node.event_log_service import EventLogService
from keyswarm.sim.node import WALL_EPOCH_S
from keyswarm.storage.chain import OriginChain, Signer, draft
from keyswarm.storage.memory_log import MemoryLog
from keyswarm.storage.policy_bodies import NodeRevoked, PolicyRule, PolicySet
from keyswarm.transport import frames
from session_node import ISSUED, Client, Pki, build_pki, event, refused, session_net

#: "short" expires 100 s into the simulation; "late" becomes valid 100 s into it.
EXPIRES_AT_S = WALL_EPOCH_S + 100


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory: Path = tmp_path_factory.mktemp("standing-pki")
    pki = build_pki(directory)
    for name, issued, lifetime in (("short", ISSUED, timedelta(seconds=700)),  # ISSUED is 600 s before the epoch
                                   ("late", ISSUED + timedelta(seconds=760), timedelta(days=1))):  # 60 s backdate
        token = SoftToken.create(directory / f"{name}.key", algorithm="ed25519", entropy=pki.rng.randbytes)
        cert = node_certificate(pki.root_token, pki.root, token.identity_public_key(), node_name=name, now=issued,
                                lifetime=lifetime, entropy=pki.rng.randbytes)
        pki.nodes[name] = (token, cert)
    return pki


def health(client: Client, node: str) -> HealthResult:
    result = client.plain(Health(), node)
    assert type(result) is HealthResult
    return result


def revoke(net, node: str, *, at: str, reason: str = "compromised") -> None:
    """What this node's admin actor hands the sessions actor once a `NodeRevoked` is durable."""
    runtime = net.sim.node(at).runtime
    runtime.deliver("sessions", Address(at, "admin"), PolicyChanged((event(NodeRevoked(node=node, reason=reason)),)))
    net.sim.run_for(0.01)


# --- node.revoke ---------------------------------------------------------------------------------


def test_a_revoked_node_refuses_handshakes_and_resumptions_closes_sessions_and_says_so(
    pki: Pki, sim_seed: int
) -> None:
    net = session_net(pki, sim_seed, domain_key=DomainKey(bytes(32)))
    hint = net.sim.replay_hint()
    client = Client(net, "app1", seed=1)
    client.handshake()
    assert client.call(Echo(payload=b"in")) == EchoResult(payload=b"in", node="n1")
    # Another node's revocation changes nothing here.
    revoke(net, "n9", at="n1")
    assert client.call(Echo(payload=b"still in")) == EchoResult(payload=b"still in", node="n1")
    revoke(net, "n1", at="n1", reason="token stolen")
    client.send(client.seal(Echo(payload=b"out")))
    assert frames.decode_reply(client.receive()[0]).error.code is ErrorCode.UNAUTHENTICATED, hint
    assert len(net.actor().table) == 0, hint
    # A new client, and the old one's resumption: UNAVAILABLE, retryable, saying why.
    reply = hello_refused(client, "n1", hint)
    assert "this node is revoked: token stolen" in reply.error.message, reply
    error = refused(lambda: client.resume("n1"), ErrorCode.UNAVAILABLE)
    assert "revoked" in error.message
    shown = health(client, "n1")
    assert shown.status == "degraded" and "token stolen" in shown.conditions[REVOKED_CONDITION], (shown, hint)


def test_a_ticket_minted_by_a_revoked_node_is_refused_on_every_node(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, nodes=("n1", "n2"), domain_key=DomainKey(bytes(32)))
    minted_by_n1, minted_by_n2 = Client(net, "app1", seed=1), Client(net, "app2", seed=2)
    minted_by_n1.handshake("n1")
    minted_by_n2.handshake("n2")
    revoke(net, "n1", at="n2")
    error = refused(lambda: minted_by_n1.resume("n2"), ErrorCode.UNAUTHENTICATED)
    assert "minted by node 'n1'" in error.message, error
    minted_by_n2.resume("n2")  # n2's own tickets still resume
    assert minted_by_n2.call(Echo(payload=b"ok")) == EchoResult(payload=b"ok", node="n2")
    Client(net, "app1", seed=3).handshake("n2")  # and the client authenticates in full there


def test_a_node_revocation_is_replayed_from_the_log_and_no_later_policy_undoes_it(pki: Pki, sim_seed: int) -> None:
    log = MemoryLog(node_id="n1", partitions=4)
    chain = OriginChain("n1", Signer(bytes(range(32))))
    log.append(chain.seal([draft(NodeRevoked(node="n1", reason="retired"), subject="", partitions=4)],
                          1_700_000_000_000))
    # Later policy events, one for a client that shares the node's name: none of them un-revokes the node.
    log.append(chain.seal([draft(PolicySet(client="n1", rules=(PolicyRule(pattern="**", ops=("*",)),)),
                                 subject="", partitions=4)], 1_700_000_001_000))
    service = EventLogService(log)
    assert len(service.handle(LoadPolicy()).events) == 2
    net = session_net(pki, sim_seed, services=lambda node: {"event-log": service}, policy_service="event-log")
    net.sim.run_for(0.01)
    actor = net.actor()
    assert actor.gate.loaded and actor.gate.table.is_node_revoked("n1"), net.sim.replay_hint()
    error = refused(lambda: Client(net, "app1", seed=1).handshake(), ErrorCode.UNAVAILABLE)
    assert "revoked: retired" in error.message
    # A restart of the node (new actors, empty tables) folds it again from the log before any handshake.
    net.sim.crash("n1")
    net.sim.restart("n1")
    net.sim.run_for(0.01)
    refused(lambda: Client(net, "app2", seed=2).handshake(), ErrorCode.UNAVAILABLE)
    assert health(Client(net, "app2", seed=4), "n1").status == "degraded"


# --- the node certificate's validity while the node runs ------------------------------------------


def test_a_node_whose_certificate_expires_while_it_runs_refuses_new_sessions(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, nodes=("short",), domain_key=DomainKey(bytes(32)))
    hint = net.sim.replay_hint()
    client = Client(net, "app1", seed=1)
    client.handshake("short")
    assert health(client, "short").status == "ok", hint
    net.sim.run_until(lambda: net.wall() > EXPIRES_AT_S + 1, max_s=200)
    shown = health(client, "short")
    assert shown.status == "degraded" and "expired" in shown.conditions[CERTIFICATE_CONDITION], (shown, hint)
    late = Client(net, "app2", seed=2)
    reply = hello_refused(late, "short", hint)
    assert "node certificate expired" in reply.error.message, reply
    error = refused(lambda: client.resume("short"), ErrorCode.UNAVAILABLE)
    assert "expired" in error.message


def test_a_node_whose_certificate_is_not_yet_valid_refuses_until_it_is(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, nodes=("late",))
    hint = net.sim.replay_hint()
    client = Client(net, "app1", seed=1)
    reply = hello_refused(client, "late", hint)
    assert "not valid before" in reply.error.message, reply
    shown = health(client, "late")
    assert shown.status == "degraded" and CERTIFICATE_CONDITION in shown.conditions, (shown, hint)
    net.sim.run_until(lambda: net.wall() > EXPIRES_AT_S + 2, max_s=200)  # valid now: the condition clears
    assert health(client, "late").status == "ok", hint
    client.handshake("late")


def hello_refused(client: Client, node: str, hint: str) -> frames.Reply:
    """A fresh hello from `client` to `node`, answered UNAVAILABLE (retryable): that reply."""
    from keyswarm.crypto.handshake import ClientCredentials, ClientHandshake

    machine = ClientHandshake(ClientCredentials(root_certificate=client.net.pki.root,
                                               certificate=client.who.certificate))
    client.node = node
    client.rid += 1
    client.send(frames.encode_request(client.rid, machine.hello(client.entropy)), node)
    reply = frames.decode_reply(client.receive()[0])
    assert reply.error.code is ErrorCode.UNAVAILABLE and reply.error.retryable, (reply, hint)
    return reply


# --- the pure parts: the fold and the ticket check -------------------------------------------------


def test_node_revocations_fold_convergently_keep_the_earliest_and_nothing_undoes_them() -> None:
    from itertools import permutations

    from keyswarm.policy import fold_policy
    from keyswarm.storage.policy_bodies import ClientRevoked

    events = [event(NodeRevoked(node="n1", reason="first"), hlc=10), event(NodeRevoked(node="n1", reason="again"), hlc=20),
              event(PolicySet(client="n1", rules=(PolicyRule(pattern="**", ops=("*",)),)), hlc=30),
              event(ClientRevoked(client="n2"), hlc=40)]
    tables = [fold_policy(order) for order in permutations(events)]
    assert all(table == tables[0] for table in tables)
    table = tables[0]
    assert table.is_node_revoked("n1") and table.revoked_nodes["n1"].reason == "first"
    assert not table.is_node_revoked("n2") and table.is_revoked("n2")  # a client of that name, not a node
    assert not table.is_revoked("n1") and "n1" in table.clients  # the client named n1 is untouched


def test_a_node_revocation_must_name_a_node() -> None:
    from keyswarm.errors import DecodeError
    from keyswarm.policy import PolicyError, PolicyTable, validate_node_name

    with pytest.raises(DecodeError, match="empty node name"):
        PolicyTable().apply(event(NodeRevoked(node="")))
    assert validate_node_name("n-1.a_b") == "n-1.a_b"
    for bad in ("", "-n1", "n1/x", "x" * 49):
        with pytest.raises(PolicyError):
            validate_node_name(bad)


def test_open_ticket_refuses_tickets_of_revoked_nodes_and_unnamed_ones_while_any_node_is_revoked() -> None:
    from keyswarm.crypto.tickets import TicketBody, TicketKeys, TicketRejected, issue_ticket, open_ticket

    keys = TicketKeys(DomainKey(bytes(32)))
    now = 1_700_000_000.0

    def ticket(node: str) -> bytes:
        body = TicketBody(network_id="net", client_name="app1", client_fingerprint=b"f" * 32, client_serial=b"\x01",
                          issuer_fingerprint=b"i" * 32, client_not_after_s=now + 1e6, authenticated_at_s=now,
                          expires_at_s=now + 3600, resumption_secret=b"s" * 32, node=node)
        return issue_ticket(keys, body, now=now, entropy=lambda n: b"\x07" * n)

    assert open_ticket(keys, ticket("n1"), now=now, network_id="net").node == "n1"
    assert open_ticket(keys, ticket(""), now=now, network_id="net", revoked_nodes=()).node == ""  # none revoked
    assert open_ticket(keys, ticket("n2"), now=now, network_id="net", revoked_nodes={"n1"}).node == "n2"
    for node in ("n1", ""):
        with pytest.raises(TicketRejected) as info:
            open_ticket(keys, ticket(node), now=now, network_id="net", revoked_nodes={"n1"})
        assert info.value.reason == "revoked"
        with pytest.raises(TicketRejected):
            open_ticket(keys, ticket(node), now=now, network_id="net",
                        revoked_nodes=lambda name: name in ("n1", ""))
