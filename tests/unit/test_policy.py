"""The policy table: patterns, authorisation, admin, revocation, and the convergent fold."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyswarm.errors import DecodeError, ErrorCode
from keyswarm.policy import (
    ADMIN_OPERATIONS,
    KEY_OPERATIONS,
    Forbidden,
    PolicyError,
    PolicyTable,
    authorize,
    compile_pattern,
    fold_policy,
    parse_rule,
    validate_rules,
)
from keyswarm.storage.bodies import KeyCreated, decode_body, tag_of_body
from keyswarm.storage.events import GENESIS_PREV, Event
from keyswarm.storage.policy_bodies import AdminGranted, AdminRevoked, ClientRevoked, PolicyRule, PolicySet
from keyswarm.transport import codec

PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FP_A, FP_B = b"\xaa" * 32, b"\xbb" * 32
_seqs: dict[str, int] = {}


def ev(body: object, *, origin: str = "n1", hlc: int | None = None, seq: int | None = None,
       partition: int = 0, subject: str = "") -> Event:
    if seq is None:
        seq = _seqs[origin] = _seqs.get(origin, 0) + 1
    return Event(partition=partition, origin=origin, origin_seq=seq, hlc=seq * 10 if hlc is None else hlc,
                 type=tag_of_body(body), subject=subject, body=codec.encode(body), prev=GENESIS_PREV)


def rules(*pairs: tuple[str, tuple[str, ...]]) -> tuple[PolicyRule, ...]:
    return tuple(PolicyRule(pattern=p, ops=ops) for p, ops in pairs)


def table(*bodies: object) -> PolicyTable:
    return fold_policy(ev(b) for b in bodies)


# --- patterns ---------------------------------------------------------------------------

MATCHES = [
    ("app1/db", "app1/db", True), ("app1/db", "app1/db2", False), ("app1/db", "App1/db", False),
    ("app1/*", "app1/a", True), ("app1/*", "app1/b-c", True), ("app1/*", "app1", False),
    ("app1/*", "app1/a/b", False), ("app1/*", "app2/a", False), ("app1/*", "app1x/a", False),
    ("app1", "app1/a", False), ("app1", "app1", True),
    ("app1/db-*", "app1/db-1", True), ("app1/db-*", "app1/db-", True), ("app1/db-*", "app1/db/1", False),
    ("app1/*-prod", "app1/x-prod", True), ("app1/*-prod", "app1/x-prod2", False),
    ("app1/a*b*c", "app1/abc", True), ("app1/a*b*c", "app1/aXbYc", True), ("app1/a*b*c", "app1/acb", False),
    ("app1/a*b*c", "app1/abcbc", True), ("app1/a*a", "app1/a", False), ("app1/a*a", "app1/aa", True),
    ("app1/**", "app1/a", True), ("app1/**", "app1/a/b/c", True), ("app1/**", "app1", False),
    ("app1/**", "app2/a", False), ("app1/**", "app1x/a", False),
    ("**/payments", "payments", True), ("**/payments", "x/payments", True), ("**/payments", "x/y/payments", True),
    ("**/payments", "payments/x", False), ("**/payments", "xpayments", False),
    ("a/**/z", "a/z", True), ("a/**/z", "a/b/z", True), ("a/**/z", "a/b/c/z", True), ("a/**/z", "a/zz", False),
    ("a/**/z", "z", False), ("a/**/z", "a", False),
    ("a/**/b/**", "a/b/c", True), ("a/**/b/**", "a/b", False), ("a/**/b/**", "a/x/b/y/z", True),
    ("a/**/b/*/c", "a/b/x/c", True), ("a/**/b/*/c", "a/q/b/b/x/c", True), ("a/**/b/*/c", "a/b/c", False),
    ("a*/**", "ab/c", True), ("a*/**", "ab", False), ("**/**", "x", True), ("a/**/**/b", "a/b", True),
    ("*", "anything", True), ("*", "a/b", False), ("**", "a", True), ("**", "a/b/c", True),
    ("*/*", "a/b", True), ("*/*", "a", False), ("*/*", "a/b/c", False),
    ("app?/x", "app?/x", True), ("app?/x", "app1/x", False), ("[ab]/x", "a/x", False), ("[ab]/x", "[ab]/x", True),
    (".*", "xyz", False), ("a.b", "axb", False),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), MATCHES)
def test_pattern_matching(pattern: str, name: str, expected: bool) -> None:
    assert compile_pattern(pattern).matches(name) is expected


@pytest.mark.parametrize(("pattern", "error"), [
    ("", "1..512 bytes"), ("x" * 513, "1..512 bytes"), ("/app1", "empty segment"), ("app1/", "empty segment"),
    ("app1//x", "empty segment"), ("app1/**x", "'\\*\\*' must be a whole segment"), ("a***", "whole segment"),
])
def test_invalid_patterns_are_bad_requests(pattern: str, error: str) -> None:
    with pytest.raises(PolicyError, match=error) as caught:
        compile_pattern(pattern)
    assert caught.value.code is ErrorCode.BAD_REQUEST


def test_a_pathological_pattern_matches_in_linear_time() -> None:
    """Backtracking globs take exponential time on this; greedy leftmost placement does not."""
    pattern = compile_pattern("/".join(["**", "a"] * 20) + "/b")
    assert not pattern.matches("/".join(["a"] * 100))
    assert not compile_pattern("x/" + "*a" * 30 + "b").matches("x/" + "a" * 200)


# --- authorisation --------------------------------------------------------------------------


def test_a_client_allowed_app1_cannot_touch_app2() -> None:
    t = table(PolicySet(client="alice", rules=rules(("app1/*", ("encrypt", "decrypt")), ("app9/secret", ("sign",)))))
    authorize(t, "alice", "encrypt", "app1/x")
    authorize(t, "alice", "decrypt", "app1/y")
    with pytest.raises(Forbidden) as caught:
        authorize(t, "alice", "encrypt", "app2/x")
    assert str(caught.value) == "client 'alice' may not encrypt key 'app2/x'"
    assert caught.value.code is ErrorCode.FORBIDDEN
    assert "app1" not in str(caught.value) and "app9" not in str(caught.value), "never say what is allowed"
    with pytest.raises(Forbidden, match="may not sign key 'app1/x'"):
        authorize(t, "alice", "sign", "app1/x")
    with pytest.raises(Forbidden, match="may not encrypt key 'app1/x/y'"):
        authorize(t, "alice", "encrypt", "app1/x/y")
    with pytest.raises(Forbidden, match="may not encrypt key 'app1'"):
        authorize(t, "alice", "encrypt", "app1")


def test_default_deny() -> None:
    t = table(PolicySet(client="alice", rules=()), AdminGranted(client="root"))
    for client in ("alice", "root", "nobody"):
        for op in KEY_OPERATIONS:
            with pytest.raises(Forbidden, match=f"client '{client}' may not {op} key 'k'"):
                authorize(t, client, op, "k")
    with pytest.raises(Forbidden):
        authorize(PolicyTable(), "anyone", "key.list", "")


def test_star_grants_every_key_operation_but_no_admin_operation() -> None:
    t = table(PolicySet(client="ops", rules=rules(("**", ("*",)))))
    for op in KEY_OPERATIONS:
        authorize(t, "ops", op, "any/key/name")
    for op in ADMIN_OPERATIONS:
        with pytest.raises(Forbidden, match=f"client 'ops' may not {op}: it is an admin operation"):
            authorize(t, "ops", op)


def test_admin_operations_need_admin_and_admin_grants_no_key_operation() -> None:
    t = table(AdminGranted(client="root"), PolicySet(client="alice", rules=rules(("**", ("*",)))))
    for op in ADMIN_OPERATIONS:
        authorize(t, "root", op)
    with pytest.raises(Forbidden, match="client 'alice' may not policy.set: it is an admin operation"):
        authorize(t, "alice", "policy.set")
    with pytest.raises(Forbidden, match="may not encrypt"):
        authorize(t, "root", "encrypt", "k")
    t2 = fold_policy([ev(AdminRevoked(client="root"))], t)
    with pytest.raises(Forbidden):
        authorize(t2, "root", "client.revoke")
    authorize(t, "root", "client.revoke")  # the fold did not change `t`


def test_a_revoked_client_is_refused_everything_forever() -> None:
    t = table(AdminGranted(client="mallory"), PolicySet(client="mallory", rules=rules(("**", ("*",)))),
              ClientRevoked(client="mallory", reason="laptop stolen"),
              PolicySet(client="mallory", rules=rules(("**", ("*",)))), AdminGranted(client="mallory"))
    for op in KEY_OPERATIONS + ADMIN_OPERATIONS:
        with pytest.raises(Forbidden, match="client 'mallory' is revoked"):
            authorize(t, "mallory", op, "k")
    assert t.is_revoked("mallory") and "mallory" not in t.clients and not t.allows("mallory", "encrypt", "k")


def test_a_revoked_key_of_a_client_is_refused_and_its_other_keys_are_not() -> None:
    t = table(PolicySet(client="bob", rules=rules(("app/*", ("encrypt",)))),
              ClientRevoked(client="bob", fingerprint=FP_A))
    with pytest.raises(Forbidden, match="client 'bob' is revoked"):
        authorize(t, "bob", "encrypt", "app/k", fingerprint=FP_A)
    authorize(t, "bob", "encrypt", "app/k", fingerprint=FP_B)
    assert t.is_revoked("bob", FP_A) and not t.is_revoked("bob", FP_B) and not t.is_revoked("bob")


def test_unknown_operations_are_bad_requests_and_stored_junk_grants_nothing() -> None:
    with pytest.raises(PolicyError, match="unknown operation 'encrypt.batch'"):
        authorize(PolicyTable(), "alice", "encrypt.batch", "k")
    # rules as a newer or broken writer may have stored them: they fail closed
    t = table(PolicySet(client="alice", rules=rules(("app1//x", ("*",)), ("a**", ("*",)),
                                                    ("app1/*", ("teleport", "policy.set")), ("app2/*", ()))))
    for name in ("app1//x", "app1/x", "app2/x", "a**"):
        with pytest.raises(Forbidden):
            authorize(t, "alice", "encrypt", name)
    with pytest.raises(Forbidden):
        authorize(t, "alice", "policy.set")


def test_later_policy_set_replaces_the_rules() -> None:
    t = fold_policy([ev(PolicySet(client="a", rules=rules(("x/*", ("encrypt",)))), hlc=10),
                     ev(PolicySet(client="a", rules=rules(("y/*", ("encrypt",)))), hlc=20, origin="n2")])
    authorize(t, "a", "encrypt", "y/1")
    with pytest.raises(Forbidden):
        authorize(t, "a", "encrypt", "x/1")


def test_an_empty_key_name_is_granted_by_no_pattern() -> None:
    t = table(PolicySet(client="a", rules=rules(("*", ("*",)), ("**", ("*",)), ("*/**", ("*",)))))
    with pytest.raises(Forbidden, match="may not encrypt key ''"):
        authorize(t, "a", "encrypt", "")
    authorize(t, "a", "encrypt", "k")


def test_allows_filters_key_list() -> None:
    t = table(PolicySet(client="a", rules=rules(("app1/*", ("key.list",)), ("app1/secret", ("encrypt",)))))
    names = ["app1/a", "app1/b/c", "app2/a", "app1/secret"]
    assert [n for n in names if t.allows("a", "key.list", n)] == ["app1/a", "app1/secret"]


# --- writing rules --------------------------------------------------------------------------


def test_validate_rules_normalises_and_refuses_with_reasons() -> None:
    assert validate_rules([("app1/*", ["encrypt", "decrypt", "encrypt"])]) == (
        PolicyRule(pattern="app1/*", ops=("decrypt", "encrypt")),)
    assert validate_rules([PolicyRule(pattern="**", ops=("*",))]) == (PolicyRule(pattern="**", ops=("*",)),)
    for bad, error in (
        ([("app1/*", ["policy.set"])], "policy.set is an admin operation; grant admin instead"),
        ([("app1/*", ["fly"])], "unknown operation 'fly'"),
        ([("app1/*", [])], "grants no operation"),
        ([("app1/*", "encrypt")], "not a string"),
        ([("app1/", ["encrypt"])], "empty segment"),
        ([("a", ["encrypt"])] * 257, "at most 256"),
    ):
        with pytest.raises(PolicyError, match=error):
            validate_rules(bad)


def test_parse_rule() -> None:
    assert parse_rule("app1/*: encrypt, decrypt") == PolicyRule(pattern="app1/*", ops=("decrypt", "encrypt"))
    assert parse_rule("**:*") == PolicyRule(pattern="**", ops=("*",))
    with pytest.raises(PolicyError, match="a rule reads 'pattern: op, op'"):
        parse_rule("app1/* encrypt")


# --- bodies and envelopes ---------------------------------------------------------------------


def test_policy_bodies_travel_as_event_bodies() -> None:
    for body in (PolicySet(client="a", rules=rules(("x/*", ("encrypt",)))), ClientRevoked(client="a", fingerprint=FP_A),
                 AdminGranted(client="a"), AdminRevoked(client="a")):
        assert 0x0420 <= tag_of_body(body) < 0x0440
        assert decode_body(ev(body)) == body


@pytest.mark.parametrize(("event", "error"), [
    (ev(AdminGranted(client="a"), partition=3), "network-wide"),
    (ev(AdminGranted(client="a"), subject="a"), "network-wide"),
    (ev(PolicySet(client="")), "empty client name"),
    (ev(ClientRevoked(client="a", fingerprint=b"short")), "fingerprint is 32 bytes, got 5"),
])
def test_policy_events_out_of_shape_are_refused_and_change_nothing(event: Event, error: str) -> None:
    t = table(AdminGranted(client="root"))
    before = t.copy()
    with pytest.raises(DecodeError, match=error):
        t.apply(event)
    assert t == before


def test_other_events_only_advance_covered() -> None:
    key_event = Event(partition=0, origin="n7", origin_seq=4, hlc=1, type=tag_of_body(KeyCreated(
        name="k", algorithm="aes256-gcm", version_id=b"v", material=b"m")), subject="k",
        body=codec.encode(KeyCreated(name="k", algorithm="aes256-gcm", version_id=b"v", material=b"m")),
        prev=GENESIS_PREV)
    t = fold_policy([key_event])
    assert t.covered == {"n7": 4} and not t.clients


# --- convergence ------------------------------------------------------------------------------

CLIENTS = ("alice", "bob", "carol")
ORIGINS = ("n1", "n2", "n3")
PATTERNS = ("app1/*", "app1/**", "app2/x", "**", "*/db", "a/**/z")
OPS = ("encrypt", "decrypt", "sign", "key.create", "*", "key.list")
GRID_NAMES = ("app1/a", "app1/a/b", "app2/x", "x/db", "a/q/z", "other")


@st.composite
def policy_bodies(draw: st.DrawFn) -> object:
    client = draw(st.sampled_from(CLIENTS))
    kind = draw(st.sampled_from(["set", "set", "set", "grant", "revoke_admin", "revoke", "revoke_key"]))
    if kind == "set":
        picked = draw(st.lists(st.tuples(st.sampled_from(PATTERNS), st.lists(st.sampled_from(OPS), min_size=1,
                                                                             max_size=3)), max_size=3))
        return PolicySet(client=client, rules=tuple(PolicyRule(pattern=p, ops=tuple(o)) for p, o in picked))
    if kind == "grant":
        return AdminGranted(client=client)
    if kind == "revoke_admin":
        return AdminRevoked(client=client)
    if kind == "revoke":
        return ClientRevoked(client=client)
    return ClientRevoked(client=client, fingerprint=draw(st.sampled_from([FP_A, FP_B])))


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """Per origin, seqs 1.. and strictly increasing HLCs; across origins HLCs collide often."""
    steps = draw(st.lists(st.tuples(st.sampled_from(ORIGINS), st.integers(0, 2), policy_bodies()), max_size=30))
    seq: dict[str, int] = {}
    hlc: dict[str, int] = {}
    events = []
    for origin, gap, body in steps:
        seq[origin] = seq.get(origin, 0) + 1
        hlc[origin] = hlc.get(origin, 100) + 1 + gap
        events.append(ev(body, origin=origin, hlc=hlc[origin], seq=seq[origin]))
    if draw(st.booleans()) and events:  # the network delivers some events twice
        events += draw(st.lists(st.sampled_from(events), max_size=5))
    return events


def decisions(t: PolicyTable) -> list[bool]:
    return [t.allows(c, op, name, fingerprint=fp) for c in CLIENTS for op in KEY_OPERATIONS + ADMIN_OPERATIONS
            for name in GRID_NAMES for fp in (None, FP_A)]


@PROPERTY
@given(events=histories(), seed=st.integers(0, 2**32))
def test_any_order_of_the_same_events_folds_to_the_same_table(events: list[Event], seed: int) -> None:
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    a, b = fold_policy(events), fold_policy(shuffled)
    assert a == b, f"seed={seed}"
    assert decisions(a) == decisions(b), f"seed={seed}"


@PROPERTY
@given(events=histories())
def test_folding_twice_changes_nothing_and_a_split_fold_equals_a_full_one(events: list[Event]) -> None:
    full = fold_policy(events)
    assert fold_policy(events + events) == full
    for split in range(0, len(events) + 1, 3):
        assert fold_policy(events[split:], fold_policy(events[:split])) == full


@PROPERTY
@given(events=histories())
def test_revocation_wins_whatever_comes_after(events: list[Event]) -> None:
    revoke = ev(ClientRevoked(client="alice"), origin="n9", hlc=1, seq=1)  # the oldest stamp of all
    t = fold_policy([revoke] + events)
    assert not any(t.allows("alice", op, n) for op in KEY_OPERATIONS + ADMIN_OPERATIONS for n in GRID_NAMES)
