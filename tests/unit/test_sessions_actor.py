"""The sessions actor, sans-IO: handshakes, in-session frames, the policy enforcement point, and bad input.

Every test runs the real gateway and sessions actors in the simulator
(virtual time, real codec, real crypto) beside stand-ins for the sub-keys,
keys and admin actors (`session_node.py`); clients speak raw frames with
their soft tokens. Assertion messages carry the seed's replay hint.
"""

from __future__ import annotations

import pytest

from keyswarm.actors.key_messages import (
    AuthorizedListKeys,
    Encrypt,
    EncryptBatch,
    EncryptItem,
    ListKeys,
    PolicyChanged,
    SetPolicy,
)
from keyswarm.actors.messages import Echo, EchoResult, Health, HealthResult
from keyswarm.actors.runtime import Address, ClientRef
from keyswarm.actors.session_messages import LoadPolicy, PolicyLoaded, RequestLimits
from keyswarm.crypto.handshake_messages import Auth, Challenge, Hello
from keyswarm.crypto.sealing import DomainKey
from keyswarm.crypto.session_keys import parse_frame
from keyswarm.errors import ErrorCode
from keyswarm.node.event_log_service import EventLogService
from keyswarm.storage.chain import OriginChain, Signer, draft
from keyswarm.storage.memory_log import MemoryLog
from keyswarm.storage.policy_bodies import AdminGranted, ClientRevoked, PolicyRule, PolicySet
from keyswarm.transport import frames
from keyswarm.transport.codec import write_msgpack
from session_node import (
    Client,
    Pki,
    build_pki,
    event,
    policy,
    refused,
    session_net,
)

APP1 = PolicySet(client="app1", rules=(PolicyRule(pattern="app1/*", ops=("encrypt", "decrypt", "key.list")),))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("sessions-pki"))


# --- handshake and round trips --------------------------------------------------------------


def test_clients_offering_aes_and_clients_offering_nothing_are_served_side_by_side(pki: Pki, sim_seed: int) -> None:
    """Suite negotiation through the actor: an AES-256-GCM session and a ChaCha20-Poly1305 one on one node."""
    net = session_net(pki, sim_seed, table=policy(APP1))
    aes, chacha = Client(net, "app1", seed=1, identity=b"c-aes"), Client(net, "app1", seed=2, identity=b"c-chacha")
    assert (aes.suites, chacha.suites) == ((2, 1), ())
    for client, suite in ((aes, 2), (chacha, 1)):
        session = client.handshake()
        assert session.channel.suite == suite
        assert net.actor().table.peek(session.session_id).suite == suite
        assert client.call(Echo(payload=b"s%d" % suite)) == EchoResult(payload=b"s%d" % suite, node="n1")
    resumed = aes.resume("n1")
    assert resumed.channel.suite == 2 and aes.call(Echo(payload=b"again")).payload == b"again"


def test_full_handshake_opens_a_session_and_requests_round_trip(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, table=policy(APP1))
    client = Client(net, "app1")
    session = client.handshake()
    hint = net.sim.replay_hint()
    assert session.node == "n1" and session.ticket, hint
    actor = net.actor()
    assert len(actor.table) == 1 and actor.counters["welcomes"] == 1, hint
    assert len(actor.pending) == 0, "a finished handshake leaves nothing half-open"
    # Echo (served by the echo actor) and health (the gateway), sealed both ways.
    assert client.call(Echo(payload=b"hi")) == EchoResult(payload=b"hi", node="n1"), hint
    health = client.call(Health())
    assert isinstance(health, HealthResult) and health.node == "n1", hint
    # A key operation the policy allows reaches the keys actor with the client's name.
    assert client.call(Encrypt(name="app1/db", plaintext=b"x")) == EchoResult(payload=b"served", node="n1")
    sender, msg = net.keys_seen[-1]
    assert type(sender) is ClientRef and sender.client == "app1" and sender.inner_id == client.rid, hint
    assert msg == Encrypt(name="app1/db", plaintext=b"x")
    stats = actor.stats()
    assert stats["table"].hits == 3 and stats["sealed"] == 3, (stats, hint)


def test_the_inner_request_id_comes_back_and_replies_are_sealed(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed)
    client = Client(net, "app2")
    client.handshake()
    client.send(client.seal(Echo(payload=b"a"), rid=12345))
    data = client.receive()[0]
    counter, session_id, _ = parse_frame(data)
    assert session_id == client.session.session_id and counter == 0, "the node's first sealed frame"
    reply = client.open(data)
    assert reply.request_id == 12345 and reply.value == EchoResult(payload=b"a", node="n1")


def test_key_operations_outside_a_session_are_unauthenticated(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, table=policy(APP1))
    client = Client(net, "app1")
    error = refused(lambda: client.plain(Encrypt(name="app1/db", plaintext=b"x")), ErrorCode.UNAUTHENTICATED)
    assert "session" in error.message
    refused(lambda: client.plain(SetPolicy(client="app1")), ErrorCode.UNAUTHENTICATED)
    assert not net.keys_seen and not net.admin_seen
    assert client.plain(Echo(payload=b"open")) == EchoResult(payload=b"open", node="n1")  # foundation ops stay open


def test_a_subkey_rotating_mid_handshake_is_retried_transparently(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, rotated=True)
    net.subkeys["n1"]["rotate_after_info"] = True  # the key rotates right after the actor read its certificate
    net.actor().credentials = None
    client = Client(net, "app2")
    client.handshake()  # verified against the new sub-key certificate
    assert net.subkeys["n1"]["signed"] == 2, "signed once with the rotated key, once again after re-reading"


def test_no_subkey_yet_is_unavailable_and_retryable(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed)
    net.subkeys["n1"]["ready"] = False
    net.actor().credentials = None
    client = Client(net, "app2")
    machine_hello = _hello(client)
    error = refused(lambda: client.plain(machine_hello), ErrorCode.UNAVAILABLE)
    assert "sub-key" in error.message
    net.subkeys["n1"]["ready"] = True
    client.handshake()


def _hello(client: Client) -> Hello:
    from keyswarm.crypto.handshake import ClientCredentials, ClientHandshake

    machine = ClientHandshake(ClientCredentials(root_certificate=client.net.pki.root,
                                               certificate=client.who.certificate))
    return machine.hello(client.entropy)


# --- replay, reordering, injection, expiry ---------------------------------------------------


def test_a_replayed_frame_is_refused_and_reordered_frames_are_accepted_once(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed)
    client = Client(net, "app2")
    client.handshake()
    sealed = [client.seal(Echo(payload=bytes([i]))) for i in range(3)]
    for data in (sealed[2], sealed[0], sealed[1]):  # out of order, all within the window
        client.send(data)
    replies = [client.open(data) for data in client.receive(3)]
    assert sorted(r.value.payload for r in replies) == [b"\x00", b"\x01", b"\x02"], net.sim.replay_hint()
    client.send(sealed[0])  # the same bytes again
    reply = client.open(client.receive()[0])
    assert not reply.ok and reply.error.code is ErrorCode.REPLAYED and reply.request_id == 0
    assert net.actor().counters["replayed"] == 1


def test_a_frame_of_one_session_injected_into_another_is_unauthenticated(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed)
    alice, bob = Client(net, "app1", seed=1), Client(net, "app2", seed=2)
    alice.handshake()
    bob.handshake()
    frame = alice.seal(Echo(payload=b"mine"))
    counter, _, ciphertext = parse_frame(frame)
    forged = write_msgpack([1, "s", counter, [bob.session.session_id, ciphertext]])
    alice.send(forged)
    reply = frames.decode_reply(alice.receive()[0])  # not sealed: the node has no keys that vouch for it
    assert not reply.ok and reply.error.code is ErrorCode.UNAUTHENTICATED, net.sim.replay_hint()
    assert bob.call(Echo(payload=b"still fine")) == EchoResult(payload=b"still fine", node="n1")
    # An unknown session id is UNAUTHENTICATED too.
    alice.send(write_msgpack([1, "s", 9, [bytes(16), ciphertext]]))
    assert frames.decode_reply(alice.receive()[0]).error.code is ErrorCode.UNAUTHENTICATED


def test_an_expired_session_is_session_expired(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, ttl_s=256.0)
    client = Client(net, "app2")
    session = client.handshake()
    client.call(Echo(payload=b"ok"))
    net.sim.run_for(session.expires_at_s - net.wall())
    client.send(client.seal(Echo(payload=b"late")))  # arrives just after the expiry
    reply = frames.decode_reply(client.receive()[0])
    assert not reply.ok and reply.error.code is ErrorCode.SESSION_EXPIRED, (reply, net.sim.replay_hint())


def test_resumption_on_another_node_of_the_same_network(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, nodes=("n1", "n2"), domain_key=DomainKey(bytes(range(32))))
    client = Client(net, "app2")
    first = client.handshake("n1")
    resumed = client.resume("n2")
    hint = net.sim.replay_hint()
    assert resumed.node == "n2" and resumed.session_id != first.session_id and resumed.ticket, hint
    assert client.call(Echo(payload=b"moved")) == EchoResult(payload=b"moved", node="n2"), hint
    assert net.actor("n2").counters["resumptions"] == 1 and net.subkeys["n2"].get("signed", 0) == 0, (
        "a resumption needs no signature on either side"
    )


def test_a_ticket_from_a_node_without_the_domain_key_does_not_resume_elsewhere(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, nodes=("n1", "n2"))  # each node: a node-local ticket key
    client = Client(net, "app2")
    client.handshake("n1")
    error = refused(lambda: client.resume("n2"), ErrorCode.UNAUTHENTICATED)
    assert "ticket" in error.message


# --- policy ------------------------------------------------------------------------------


def test_policy_escalation_to_another_apps_key_is_forbidden(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, table=policy(APP1))
    client = Client(net, "app1")
    client.handshake()
    error = refused(lambda: client.call(Encrypt(name="app2/x", plaintext=b"x")), ErrorCode.FORBIDDEN)
    assert "encrypt" in error.message and "app2/x" in error.message, error.message
    batch = EncryptBatch(items=(EncryptItem(name="app1/a", plaintext=b""), EncryptItem(name="app2/x", plaintext=b"")))
    error = refused(lambda: client.call(batch), ErrorCode.FORBIDDEN)
    assert "encrypt.batch" in error.message and "app2/x" in error.message
    assert not net.keys_seen, "nothing forbidden reached the keys actor"
    assert net.actor().counters["forbidden"] == 2


def test_a_client_without_rules_may_do_nothing_with_keys(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, table=policy(APP1))
    client = Client(net, "app2")
    client.handshake()
    refused(lambda: client.call(Encrypt(name="app1/db", plaintext=b"x")), ErrorCode.FORBIDDEN)
    assert client.call(Echo(payload=b"ok")) == EchoResult(payload=b"ok", node="n1")  # not a policed operation


def test_non_admin_policy_set_is_forbidden_and_admin_is_served(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, table=policy(APP1, AdminGranted(client="ops")))
    app = Client(net, "app1", seed=1)
    app.handshake()
    error = refused(lambda: app.call(SetPolicy(client="app1", rules=())), ErrorCode.FORBIDDEN)
    assert "policy.set" in error.message and "admin" in error.message
    ops = Client(net, "ops", seed=2)
    ops.handshake()
    ops.call(SetPolicy(client="app1", rules=()))
    assert [type(msg) for _, msg in net.admin_seen] == [SetPolicy], net.sim.replay_hint()
    # The bootstrap rule is over: an admin event exists, so boss's admin certificate grants nothing.
    boss = Client(net, "boss", seed=3)
    boss.handshake()
    refused(lambda: boss.call(SetPolicy(client="app1", rules=())), ErrorCode.FORBIDDEN)


def test_bootstrap_admin_is_a_root_issued_admin_certificate_until_the_first_admin_event(
    pki: Pki, sim_seed: int
) -> None:
    net = session_net(pki, sim_seed)  # a fresh network: no policy events at all
    boss, ops = Client(net, "boss", seed=1), Client(net, "ops", seed=2)
    boss.handshake()
    ops.handshake()
    boss.call(SetPolicy(client="ops", rules=()))
    refused(lambda: ops.call(SetPolicy(client="ops", rules=())), ErrorCode.FORBIDDEN)
    minion = Client(net, "minion", seed=3)  # issued by boss: a client, not an admin
    minion.handshake()
    refused(lambda: minion.call(SetPolicy(client="minion", rules=())), ErrorCode.FORBIDDEN)
    runtime = net.sim.node("n1").runtime
    runtime.deliver("sessions", Address("n1", "admin"), PolicyChanged((event(AdminGranted(client="ops")),)))
    net.sim.run_for(0.01)
    refused(lambda: boss.call(SetPolicy(client="ops", rules=())), ErrorCode.FORBIDDEN)
    ops.call(SetPolicy(client="app1", rules=()))


def test_key_list_goes_out_filtered_by_the_callers_policy(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, table=policy(APP1))
    client = Client(net, "app1")
    client.handshake()
    client.call(ListKeys())
    _, msg = net.keys_seen[-1]
    assert type(msg) is AuthorizedListKeys and msg.request == ListKeys()
    assert msg.allows("app1/a") and not msg.allows("app2/a")


def test_a_revoked_clients_handshake_is_refused(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, table=policy(APP1, ClientRevoked(client="gone")))
    error = refused(lambda: Client(net, "gone").handshake(), ErrorCode.UNAUTHENTICATED)
    assert "revoked" in error.message
    assert len(net.actor().table) == 0


def test_a_revocation_closes_the_clients_sessions_and_its_tickets(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, table=policy(APP1), domain_key=DomainKey(bytes(32)))
    client, other = Client(net, "app1", seed=1), Client(net, "app2", seed=2)
    client.handshake()
    other.handshake()
    runtime = net.sim.node("n1").runtime
    # From a peer: ignored (only this node's actors may say so).
    runtime.deliver("sessions", Address("n2", "admin"), PolicyChanged((event(ClientRevoked(client="app1")),)))
    net.sim.run_for(0.01)
    client.call(Echo(payload=b"still in"))
    runtime.deliver("sessions", Address("n1", "admin"), PolicyChanged((event(ClientRevoked(client="app1")),)))
    net.sim.run_for(0.01)
    client.send(client.seal(Echo(payload=b"out")))
    assert frames.decode_reply(client.receive()[0]).error.code is ErrorCode.UNAUTHENTICATED
    error = refused(lambda: client.resume("n1"), ErrorCode.UNAUTHENTICATED)
    assert "revoked" in error.message
    assert other.call(Echo(payload=b"unaffected")) == EchoResult(payload=b"unaffected", node="n1")


def test_revoking_an_admin_closes_the_sessions_of_clients_it_issued(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, domain_key=DomainKey(bytes(32)))
    Client(net, "boss", seed=1).handshake()  # this node learns boss's admin certificate
    minion = Client(net, "minion", seed=2)
    minion.handshake()
    runtime = net.sim.node("n1").runtime
    runtime.deliver("sessions", Address("n1", "admin"), PolicyChanged((event(ClientRevoked(client="boss")),)))
    net.sim.run_for(0.01)
    minion.send(minion.seal(Echo(payload=b"out")))
    assert frames.decode_reply(minion.receive()[0]).error.code is ErrorCode.UNAUTHENTICATED
    refused(lambda: minion.resume("n1"), ErrorCode.UNAUTHENTICATED)
    refused(lambda: Client(net, "minion", seed=3).handshake(), ErrorCode.UNAUTHENTICATED)


def test_the_policy_table_is_loaded_from_the_event_log_before_handshakes(pki: Pki, sim_seed: int) -> None:
    log = MemoryLog(node_id="n1", partitions=4)
    chain = OriginChain("n1", Signer(bytes(range(32))))
    log.append(chain.seal([draft(APP1, subject="", partitions=4),
                           draft(ClientRevoked(client="gone"), subject="", partitions=4)], 1_700_000_000_000))
    service = EventLogService(log)
    loaded = service.handle(LoadPolicy())
    assert type(loaded) is PolicyLoaded and len(loaded.events) == 2 and loaded.seq == 3  # the genesis is not policy
    assert service.handle(LoadPolicy(after_seq=loaded.seq)).events == ()
    net = session_net(pki, sim_seed, services=lambda node: {"event-log": service}, policy_service="event-log")
    net.sim.run_for(0.01)  # the service's modelled latency
    actor = net.actor()
    hint = net.sim.replay_hint()
    assert actor.gate.loaded and actor.gate.table.is_revoked("gone"), hint
    refused(lambda: Client(net, "gone", seed=1).handshake(), ErrorCode.UNAUTHENTICATED)
    app = Client(net, "app1", seed=2)
    app.handshake()
    app.call(Encrypt(name="app1/x", plaintext=b""))
    # A policy event appended later (a peer's, say) is found by the next poll.
    log.append(chain.seal([draft(ClientRevoked(client="app1"), subject="", partitions=4)], 1_700_000_001_000))
    net.sim.run_for(6.0)
    app.send(app.seal(Echo(payload=b"out")))
    assert frames.decode_reply(app.receive()[0]).error.code is ErrorCode.UNAUTHENTICATED, hint


def test_handshakes_wait_for_the_policy_table(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed, policy_service="event-log")  # no such service: never loads
    error = refused(lambda: Client(net, "app1").handshake(), ErrorCode.UNAVAILABLE)
    assert "policy" in error.message
    assert net.actor().counters["policy_load_failures"] >= 1


# --- bad input inside a session ----------------------------------------------------------


def test_malformed_and_oversized_inner_plaintexts_are_answered_sealed(pki: Pki, sim_seed: int) -> None:
    limits = RequestLimits(max_plaintext_bytes=4096, max_key_name_bytes=16, max_batch_items=4)
    net = session_net(pki, sim_seed, table=policy(APP1), limits=limits)
    client = Client(net, "app1")
    client.handshake()

    def sealed_error(plaintext_or_msg: object) -> frames.Reply:
        client.send(client.seal(plaintext_or_msg))
        data = client.receive()[0]
        assert parse_frame(data)[1] == client.session.session_id, "answered inside the session"
        reply = client.open(data)
        assert not reply.ok, reply
        return reply

    assert sealed_error(b"\xc1").error.code is ErrorCode.BAD_REQUEST  # not msgpack
    assert sealed_error(write_msgpack([1, "q", 7, {"op": "no.such.op"}])).error.code is ErrorCode.BAD_REQUEST
    reply = sealed_error(write_msgpack([2, "q", 8, {"op": "health"}]))
    assert reply.error.code is ErrorCode.UNSUPPORTED_VERSION and reply.request_id == 8
    assert sealed_error(Echo(payload=bytes(5000))).error.code is ErrorCode.TOO_LARGE
    assert sealed_error(Hello(versions=(1,), client_ephemeral=bytes(32), client_nonce=bytes(32))).error.code \
        is ErrorCode.BAD_REQUEST  # handshakes travel outside sessions
    many = EncryptBatch(items=tuple(EncryptItem(name="app1/a", plaintext=b"") for _ in range(5)))
    assert sealed_error(many).error.code is ErrorCode.TOO_LARGE
    assert sealed_error(Encrypt(name="app1/" + "x" * 20, plaintext=b"")).error.code is ErrorCode.BAD_REQUEST
    assert client.call(Echo(payload=b"after all that")) == EchoResult(payload=b"after all that", node="n1")
    assert not net.keys_seen


def test_garbage_session_frames_get_plain_errors_never_a_crash(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed)
    client = Client(net, "app2")
    client.handshake()
    for data in (
        write_msgpack([1, "s", 3, [b"short", b"x" * 20]]),  # a session id of the wrong length
        write_msgpack([1, "s", 4, [client.session.session_id, b"x"]]),  # shorter than a tag
        write_msgpack([1, "s", 5, "not a body"]),
        write_msgpack([1, "s", 6, [client.session.session_id, b"\x00" * 40]]),  # does not authenticate
    ):
        client.send(data)
        reply = frames.decode_reply(client.receive()[0])
        assert not reply.ok and reply.error.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNAUTHENTICATED), reply
    assert client.call(Echo(payload=b"fine")) == EchoResult(payload=b"fine", node="n1")
    stats = net.sim.node("n1").runtime.stats()["sessions"]
    assert stats["failures"] == 0, stats


def test_an_auth_for_an_unknown_handshake_is_unauthenticated(pki: Pki, sim_seed: int) -> None:
    net = session_net(pki, sim_seed)
    client = Client(net, "app2")
    error = refused(lambda: client.plain(Auth(handshake_id=bytes(16), sealed=b"x" * 40)), ErrorCode.UNAUTHENTICATED)
    assert "start over" in error.message


def test_twenty_thousand_half_open_handshakes_stay_bounded_and_others_still_connect(pki: Pki) -> None:
    net = session_net(pki, 1, pending_per_peer=8, pending_capacity=1000)  # one seed: 20,000 signatures take seconds
    flood = Client(net, "mallory", identity=b"flooder")
    hello = frames.encode_request(1, _hello(flood))
    sent = 0
    while sent < 20_000:
        for _ in range(1000):
            flood.send(hello)
        sent += 1000
        answers = flood.receive(1000, max_s=30.0)
        assert all(type(frames.decode_reply(a).value) is Challenge for a in answers[:3]), net.sim.replay_hint()
        actor = net.actor()
        assert len(actor.pending) <= 8 and not actor._asks and not actor._waiting, actor.stats()
    stats = actor.pending.stats()
    assert stats.started == 20_000 and stats.evicted_per_peer == 20_000 - 8 and stats.peers == 1, stats
    # Another client is served as if nothing happened, and the flooder's evicted handshakes are gone.
    Client(net, "app1", seed=9).handshake()
    assert len(actor.table) == 1 and len(actor.pending) <= 8
