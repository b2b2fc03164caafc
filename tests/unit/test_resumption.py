"""Resumption and tickets: any node of the network resumes a session with no
signature; tampered, expired, foreign, revoked and too-old tickets are refused.

Uses the networks and the fake link of test_handshake.py.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest
from test_handshake import T, Net, Pair, build_net, foreign, net, refused  # noqa: F401 (fixtures)

from keyswarm.crypto.certificates import certificate_fingerprint
from keyswarm.crypto.handshake import ClientSession, LocalHandshakeError, NodeSettings, State, VersionMismatch
from keyswarm.crypto.handshake_messages import Resume, Resumed
from keyswarm.crypto.resumption import ClientResumption, accept_resume
from keyswarm.crypto.sealing import DomainKey
from keyswarm.crypto.session_table import ClientIdentity, Session
from keyswarm.crypto.tickets import (
    HEADER_BYTES,
    MAX_TICKET_BYTES,
    TicketBody,
    TicketKeys,
    TicketRejected,
    issue_ticket,
    open_ticket,
)
from keyswarm.transport.codec import read_msgpack
from keyswarm.transport.frames import decode_reply, decode_request, encode_reply, encode_request


@pytest.fixture
def session(net: Net) -> ClientSession:
    mine, _ = Pair(net, "admin-issued").run()
    return mine


def resume(
    net: Net,
    held: ClientSession,
    *,
    now: float = T + 60,
    settings: NodeSettings | None = None,
    tickets: TicketKeys | None = None,
    revoked: object = frozenset(),
    on_resume: Callable[[Resume], Resume] | None = None,
    on_resumed: Callable[[Resumed], Resumed] | None = None,
    wire: list[bytes] | None = None,
) -> tuple[ClientSession, Session]:
    """One resumption through the real envelope."""
    rng = random.Random(now)
    client = ClientResumption.from_session(held)
    data = encode_request(1, client.resume(rng.randbytes))
    _, msg = decode_request(data)
    msg = on_resume(msg) if on_resume else msg
    reply, session = accept_resume(
        msg, settings=settings or net.settings, tickets=tickets or net.tickets, now=now, entropy=rng.randbytes,
        revoked=revoked,  # type: ignore[arg-type]
    )
    back = encode_reply(1, reply)
    if wire is not None:
        wire += [data, back]
    got = decode_reply(back).value
    return client.receive_resumed(on_resumed(got) if on_resumed else got), session  # type: ignore[arg-type]


def ticket_body(net: Net, ticket: bytes, now: float) -> TicketBody:
    return open_ticket(net.tickets, ticket, now=now, network_id=net.settings.network_id)


# --- resumption that works --------------------------------------------------------


def test_any_node_of_the_network_resumes_a_session(net: Net, session: ClientSession) -> None:
    n2 = dataclasses.replace(net.settings, node_name="n2")
    # Another node: its own TicketKeys object over the same domain key.
    other_keys = TicketKeys(net.tickets._domain_key)
    wire: list[bytes] = []
    mine, theirs = resume(net, session, settings=n2, tickets=other_keys, wire=wire)
    assert mine.session_id == theirs.session_id != session.session_id
    assert mine.channel.keys != session.channel.keys
    assert theirs.open(mine.channel.seal(b"ping")) == (0, b"ping")
    assert mine.channel.open(theirs.seal(b"pong")) == (0, b"pong")
    assert mine.node == "n2" and theirs.client.name == "app3"
    assert mine.expires_at_s == theirs.expires_at_s == T + 60 + 3600
    assert [read_msgpack(frame)[3]["op"] for frame in wire] == ["handshake.resume", "handshake.resumed"]


def test_the_new_ticket_carries_the_identity_and_the_first_authentication_time(
    net: Net, session: ClientSession
) -> None:
    first = ticket_body(net, session.ticket, T)
    mine, theirs = resume(net, session, now=T + 600)
    second = ticket_body(net, mine.ticket, T + 600)
    assert mine.ticket != session.ticket and second.resumption_secret != first.resumption_secret
    assert second.authenticated_at_s == first.authenticated_at_s == T
    assert second.identity() == first.identity() == theirs.client
    assert mine.resumption_secret == second.resumption_secret
    # ... and it resumes again.
    third, _ = resume(net, mine, now=T + 1200)
    assert third.session_id not in (session.session_id, mine.session_id)


def test_a_ticket_of_the_previous_epoch_is_accepted_two_epochs_old_is_not(net: Net) -> None:
    long_tickets = dataclasses.replace(net.settings, ticket_lifetime_s=4 * 3600)
    held, _ = Pair(net, settings=long_tickets).run()
    assert held.ticket_expires_at_s == T + 4 * 3600
    resume(net, held, now=T + 3600 + 10)  # epoch E + 1: the previous epoch's ticket still opens
    refused(lambda: resume(net, held, now=T + 2 * 3600 + 10), "ticket", "epoch")


def test_a_ticket_from_the_next_epoch_is_accepted_for_clock_skew(net: Net, session: ClientSession) -> None:
    keys = net.tickets
    body = dataclasses.replace(ticket_body(net, session.ticket, T), expires_at_s=T + 9 * 3600)
    ahead = issue_ticket(keys, body, now=T + 3600, entropy=random.Random(1).randbytes)
    assert open_ticket(keys, ahead, now=T + 10, network_id=net.settings.network_id) == body
    further = issue_ticket(keys, body, now=T + 2 * 3600, entropy=random.Random(1).randbytes)
    with pytest.raises(TicketRejected, match="epoch"):
        open_ticket(keys, further, now=T + 10, network_id=net.settings.network_id)


# --- tickets that must not resume ---------------------------------------------------


def flip(ticket: bytes, index: int) -> bytes:
    return ticket[:index] + bytes([ticket[index] ^ 1]) + ticket[index + 1 :]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda t: flip(t, len(t) - 1), "forged"),  # the tag
        (lambda t: flip(t, HEADER_BYTES + 3), "forged"),  # the ciphertext
        (lambda t: flip(t, HEADER_BYTES - 1), "forged"),  # the nonce (authenticated header)
        (lambda t: flip(t, 12), "forged"),  # the epoch's low byte: E^1 is E+1 or E-1, another key
        (lambda t: flip(t, 5), "epoch"),  # the epoch's high byte
        (lambda t: flip(t, 0), "malformed"),  # the magic
        (lambda t: flip(t, 4), "malformed"),  # the version
        (lambda t: t[:30], "malformed"),
        (lambda t: t + b"\x00" * MAX_TICKET_BYTES, "malformed"),
        (lambda t: b"", "malformed"),
    ],
)
def test_a_damaged_ticket_is_refused(
    net: Net, session: ClientSession, damage: Callable[[bytes], bytes], reason: str
) -> None:
    error = refused(
        lambda: resume(net, session, on_resume=lambda r: dataclasses.replace(r, ticket=damage(r.ticket))),
        "ticket", reason,
    )
    assert "ticket" in str(error)


def test_an_expired_ticket_is_refused(net: Net, session: ClientSession) -> None:
    refused(lambda: resume(net, session, now=session.ticket_expires_at_s), "ticket", "expired")


def test_another_networks_ticket_is_refused(net: Net, foreign: Net, session: ClientSession) -> None:
    # Another domain key: the ticket does not even authenticate.
    refused(lambda: resume(net, session, settings=foreign.settings, tickets=foreign.tickets), "ticket", "forged")
    # The same domain key under another network id (a misconfiguration): the body names its network.
    refused(lambda: resume(net, session, settings=foreign.settings), "ticket", "wrong_network")


def test_a_revoked_client_cannot_resume(net: Net, session: ClientSession) -> None:
    client = net.clients["admin-issued"].cert
    admin = net.clients["admin"].cert
    for revoked in (
        {client.serial_number},
        {certificate_fingerprint(client)},
        {certificate_fingerprint(client).hex()},
        {certificate_fingerprint(admin)},
    ):
        refused(lambda: resume(net, session, revoked=revoked), "ticket", "revoked")

    def by_name(who: ClientIdentity) -> bool:
        return who.name == "app3"

    refused(lambda: resume(net, session, revoked=by_name), "ticket", "revoked")


def test_resumption_ends_max_age_after_the_last_real_authentication(net: Net) -> None:
    settings = dataclasses.replace(net.settings, resumption_max_age_s=5000)
    held, _ = Pair(net, settings=settings).run()
    held, _ = resume(net, held, now=T + 3000, settings=settings)
    assert held.ticket_expires_at_s == T + 5000  # not T + 3000 + 3600
    held, _ = resume(net, held, now=T + 4900, settings=settings)
    refused(lambda: resume(net, held, now=T + 5000, settings=settings), "ticket", "expired")
    # A node configured stricter than the issuer applies its own bound.
    strict = dataclasses.replace(net.settings, resumption_max_age_s=1000)
    refused(lambda: resume(net, held, now=T + 4950, settings=strict), "ticket", "expired")


def test_a_stolen_ticket_without_its_secret_opens_nothing(net: Net, session: ClientSession) -> None:
    thief = dataclasses.replace(session, resumption_secret=bytes(32))
    refused(lambda: resume(net, thief), "sealed")


def test_a_replayed_resume_gives_a_session_the_replayer_cannot_use(net: Net, session: ClientSession) -> None:
    rng = random.Random(4)
    client = ClientResumption.from_session(session)
    msg = client.resume(rng.randbytes)
    reply, real = accept_resume(msg, settings=net.settings, tickets=net.tickets, now=T + 5, entropy=rng.randbytes)
    _, replayed = accept_resume(msg, settings=net.settings, tickets=net.tickets, now=T + 6, entropy=rng.randbytes)
    mine = client.receive_resumed(reply)
    frame = mine.channel.seal(b"for the real session")
    assert real.open(frame)[1] == b"for the real session"
    assert replayed.keys != real.keys


@pytest.mark.parametrize("field", ["sealed", "node_ephemeral", "node_nonce"])
def test_a_resumed_reply_changed_in_flight_is_refused(net: Net, session: ClientSession, field: str) -> None:
    def damage(reply: Resumed) -> Resumed:
        value = getattr(reply, field)
        return dataclasses.replace(reply, **{field: bytes([value[0] ^ 0x40]) + value[1:]})

    refused(lambda: resume(net, session, on_resumed=damage), "sealed")


def test_a_resume_changed_in_flight_is_refused_by_the_client(net: Net, session: ClientSession) -> None:
    refused(lambda: resume(net, session, on_resume=lambda r: dataclasses.replace(r, client_nonce=bytes(32))), "sealed")


def test_resume_version_and_value_checks(net: Net, session: ClientSession) -> None:
    with pytest.raises(VersionMismatch):
        resume(net, session, on_resume=lambda r: dataclasses.replace(r, versions=(9,)))
    with pytest.raises(VersionMismatch):
        resume(net, session, on_resumed=lambda r: dataclasses.replace(r, version=9))
    refused(lambda: resume(net, session, on_resume=lambda r: dataclasses.replace(r, client_ephemeral=bytes(32))),
            "malformed")
    refused(lambda: resume(net, session, on_resume=lambda r: dataclasses.replace(r, client_nonce=b"")), "malformed")


def test_the_resumption_machine_refuses_calls_out_of_order(session: ClientSession) -> None:
    client = ClientResumption.from_session(session)
    with pytest.raises(LocalHandshakeError, match="cannot resumed in state start"):
        client.receive_resumed(Resumed(version=1, node_ephemeral=b"", node_nonce=b"", sealed=b""))
    client = ClientResumption.from_session(session)
    client.resume(random.Random(1).randbytes)
    with pytest.raises(Exception):
        client.receive_resumed(Resumed(version=1, node_ephemeral=b"", node_nonce=bytes(32), sealed=b""))
    assert client.state is State.FAILED
    with pytest.raises(ValueError, match="no ticket"):
        ClientResumption.from_session(dataclasses.replace(session, ticket=b""))


# --- tickets on their own -----------------------------------------------------------


def test_ticket_keys_differ_per_epoch_and_per_domain_key() -> None:
    a = TicketKeys(DomainKey(b"\x01" * 32))
    b = TicketKeys(DomainKey(b"\x02" * 32))
    assert a.key(5) != a.key(6) and a.key(5) != b.key(5) and a.key(5) == TicketKeys(DomainKey(b"\x01" * 32)).key(5)
    for epoch in range(100):
        a.key(epoch)
    assert len(a._cache) <= 8 and "01010101" not in repr(a)


def test_an_authentic_ticket_with_a_bad_secret_length_is_malformed(net: Net, session: ClientSession) -> None:
    body = dataclasses.replace(ticket_body(net, session.ticket, T), resumption_secret=b"short")
    ticket = issue_ticket(net.tickets, body, now=T, entropy=random.Random(2).randbytes)
    with pytest.raises(TicketRejected, match="malformed"):
        open_ticket(net.tickets, ticket, now=T, network_id=net.settings.network_id)


def test_tickets_are_small_and_opaque(net: Net, session: ClientSession) -> None:
    assert HEADER_BYTES + 16 < len(session.ticket) < 400
    assert b"app3" not in session.ticket


def test_build_net_is_deterministic_per_seed(tmp_path_factory: pytest.TempPathFactory) -> None:
    one = build_net(tmp_path_factory.mktemp("a"), "ed25519", seed=5)
    two = build_net(tmp_path_factory.mktemp("b"), "ed25519", seed=5)
    assert one.root == two.root and one.clients["p256"].certificate == two.clients["p256"].certificate
