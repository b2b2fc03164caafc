"""The key service's actors on a real runtime: every operation, key semantics, dedupe, restarts.

Each test runs a `KeyNode` (tests/unit/key_node.py): the storage actor, the
`keys` router, the `admin` actor and the partition actors over a real
`EventLogService` and `MemoryLog`, driven by the test. Writes are durable
in the log before they are answered, so every assertion about a write can
also be checked on the log, and a "restart" is a new node on the same log.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from key_node import KeyNode

from keyswarm.actors.key_messages import (
    AuthorizedListKeys,
    ConfigureKey,
    CreateKey,
    DataKey,
    DataKeyResult,
    Decrypt,
    DecryptBatch,
    DecryptItem,
    DeleteKey,
    DeleteKeyResult,
    DisableKey,
    EnableKey,
    Encrypt,
    EncryptBatch,
    EncryptItem,
    GetKey,
    GetKeyStats,
    Hmac,
    HmacBatch,
    HmacItem,
    KeyInfo,
    ListKeys,
    PolicyChanged,
    RevokeClient,
    RevokeClientResult,
    Rewrap,
    RewrapBatch,
    RewrapItem,
    RotateKey,
    SetPolicy,
    SetPolicyResult,
    Sign,
    SignBatch,
    SignItem,
    Verify,
    VerifyBatch,
    VerifyItem,
)
from keyswarm.actors.messages import Failure
from keyswarm.actors.storage import AppendBatch, LoadPartitionState
from keyswarm.crypto import ciphertext as ct
from keyswarm.crypto.named_keys import AEAD_ALGORITHMS, ALGORITHMS, ECDSA_P256, ED25519, HMAC_SHA256
from keyswarm.errors import ErrorCode, StorageError
from keyswarm.policy import PolicyTable
from keyswarm.storage.bodies import KeyCreated, KeyVersionAdded
from keyswarm.storage.policy_bodies import ClientRevoked, PolicyRule, PolicySet
from keyswarm.transport import codec

SIGNING = (ED25519, ECDSA_P256)


def ok(answer: object, cls: type = object) -> object:
    assert not isinstance(answer, Failure), f"expected success, got {answer}"
    assert isinstance(answer, cls), f"expected {cls.__name__}, got {answer!r}"
    return answer


def failed(answer: object, code: ErrorCode, *, retryable: bool = False) -> Failure:
    assert isinstance(answer, Failure), f"expected {code}, got {answer!r}"
    assert answer.code is code, f"expected {code}, got {answer}"
    assert answer.retryable is retryable, answer
    return answer


def events_of(node: KeyNode, body_cls: type) -> list[object]:
    """Bodies of `body_cls` in the node's log, in log order."""
    tag = codec.tag_of(body_cls)
    out = []
    for partition in range(node.partitions):
        for _, event in node.log.read_partition(partition):
            if event.type == tag:
                out.append(codec.decode(event.body, expect=body_cls))
    return out


@pytest.fixture
def node() -> KeyNode:
    return KeyNode()


def create(node: KeyNode, name: str, algorithm: str = "aes256-gcm", **kw: object) -> KeyInfo:
    return ok(node.request(CreateKey(name=name, algorithm=algorithm, **kw)), KeyInfo)  # type: ignore[return-value]


# --- every operation for every algorithm -------------------------------------------------


@pytest.mark.parametrize("algorithm", AEAD_ALGORITHMS)
def test_aead_keys_encrypt_decrypt_rewrap_and_make_data_keys(node: KeyNode, algorithm: str) -> None:
    info = create(node, "app/k", algorithm)
    assert (info.algorithm, info.primary, len(info.versions), info.versions[0].public_key) == (algorithm, 1, 1, b"")
    sealed = ok(node.request(Encrypt(name="app/k", plaintext=b"attack at dawn", context=b"ctx")))
    assert ct.parse(sealed.ciphertext).name == "app/k" and sealed.version_id == info.primary_version_id
    opened = ok(node.request(Decrypt(ciphertext=sealed.ciphertext, context=b"ctx")))
    assert opened.plaintext == b"attack at dawn"
    assert ok(node.request(Decrypt(name="app/k", ciphertext=sealed.ciphertext, context=b"ctx"))).plaintext == b"attack at dawn"
    rewrapped = ok(node.request(Rewrap(ciphertext=sealed.ciphertext, context=b"ctx")))
    assert rewrapped.ciphertext != sealed.ciphertext
    assert ok(node.request(Decrypt(ciphertext=rewrapped.ciphertext, context=b"ctx"))).plaintext == b"attack at dawn"
    for bits in (128, 192, 256, 512):
        made = ok(node.request(DataKey(name="app/k", bits=bits, context=b"d")), DataKeyResult)
        assert len(made.plaintext) == bits // 8
        assert ok(node.request(Decrypt(ciphertext=made.ciphertext, context=b"d"))).plaintext == made.plaintext
    failed(node.request(DataKey(name="app/k", bits=100)), ErrorCode.BAD_REQUEST)
    for op in (Sign(name="app/k", message=b"m"), Hmac(name="app/k", message=b"m"),
               Verify(name="app/k", message=b"m", signature=b"s")):
        assert "cannot" in failed(node.request(op), ErrorCode.BAD_REQUEST).message


def test_a_large_plaintext_is_sealed_in_place_and_opens(node: KeyNode) -> None:
    create(node, "bulk")
    data = bytes(range(256)) * 4096  # 1 MiB
    sealed = ok(node.request(Encrypt(name="bulk", plaintext=data)))
    assert ok(node.request(Decrypt(ciphertext=bytes(sealed.ciphertext)))).plaintext == data


@pytest.mark.parametrize("algorithm", SIGNING)
def test_signing_keys_sign_and_verify_and_publish_their_public_keys(node: KeyNode, algorithm: str) -> None:
    create(node, "sig/k", algorithm)
    signed = ok(node.request(Sign(name="sig/k", message=b"hello")))
    assert ok(node.request(Verify(name="sig/k", message=b"hello", signature=signed.signature))).valid
    assert not ok(node.request(Verify(name="sig/k", message=b"hellO", signature=signed.signature))).valid
    assert not ok(node.request(Verify(name="sig/k", message=b"hello", signature=b"junk"))).valid
    info = ok(node.request(GetKey(name="sig/k")), KeyInfo)
    public = load_der_public_key(info.versions[0].public_key)
    if algorithm == ED25519:
        public.verify(signed.signature, b"hello")
        failed(node.request(Sign(name="sig/k", message=b"x" * 32, prehashed=True)), ErrorCode.BAD_REQUEST)
    else:
        public.verify(signed.signature, b"hello", ec.ECDSA(hashes.SHA256()))
        digest = hashlib.sha256(b"hello").digest()
        pre = ok(node.request(Sign(name="sig/k", message=digest, prehashed=True)))
        assert ok(node.request(Verify(name="sig/k", message=b"hello", signature=pre.signature))).valid
        failed(node.request(Sign(name="sig/k", message=b"short", prehashed=True)), ErrorCode.BAD_REQUEST)
    for op in (Encrypt(name="sig/k", plaintext=b"x"), Hmac(name="sig/k", message=b"m"), DataKey(name="sig/k")):
        failed(node.request(op), ErrorCode.BAD_REQUEST)


def test_hmac_keys_mac_and_verify(node: KeyNode) -> None:
    create(node, "mac/k", HMAC_SHA256)
    mac = ok(node.request(Hmac(name="mac/k", message=b"payload")))
    assert len(mac.mac) == 32
    assert ok(node.request(Verify(name="mac/k", message=b"payload", signature=mac.mac))).valid
    assert not ok(node.request(Verify(name="mac/k", message=b"payloaD", signature=mac.mac))).valid
    failed(node.request(Sign(name="mac/k", message=b"m")), ErrorCode.BAD_REQUEST)
    failed(node.request(Encrypt(name="mac/k", plaintext=b"m")), ErrorCode.BAD_REQUEST)


def test_unknown_algorithms_and_bad_names_are_bad_requests(node: KeyNode) -> None:
    failed(node.request(CreateKey(name="k", algorithm="rot13")), ErrorCode.BAD_REQUEST)
    for name in ("", "a//b", "/a", "a/", "sp ace", "é", "a" * 257, "a/../b?"):
        failed(node.request(CreateKey(name=name, algorithm="aes256-gcm")), ErrorCode.BAD_REQUEST)
        failed(node.request(Encrypt(name=name, plaintext=b"x")), ErrorCode.BAD_REQUEST)
    assert create(node, "A-z_0.9/x-y").name == "A-z_0.9/x-y"
    failed(node.request(Encrypt(name="no/such", plaintext=b"x")), ErrorCode.KEY_NOT_FOUND)
    assert events_of(node, KeyCreated) and len(events_of(node, KeyCreated)) == 1


# --- key semantics ---------------------------------------------------------------------------


def test_old_ciphertexts_open_after_a_rotation_and_rewrap_moves_them_to_the_primary(node: KeyNode) -> None:
    first = create(node, "app/r")
    old = ok(node.request(Encrypt(name="app/r", plaintext=b"v1 data")))
    rotated = ok(node.request(RotateKey(name="app/r")), KeyInfo)
    assert rotated.primary == 2 and rotated.version_id == rotated.primary_version_id != first.primary_version_id
    assert ok(node.request(Decrypt(ciphertext=old.ciphertext))).plaintext == b"v1 data"
    new = ok(node.request(Encrypt(name="app/r", plaintext=b"v2 data")))
    assert new.version_id == rotated.primary_version_id
    moved = ok(node.request(Rewrap(ciphertext=old.ciphertext)))
    assert moved.version_id == rotated.primary_version_id
    assert ct.parse(moved.ciphertext).version_id == rotated.primary_version_id
    assert ok(node.request(Decrypt(ciphertext=moved.ciphertext))).plaintext == b"v1 data"


@pytest.mark.parametrize("algorithm", SIGNING + (HMAC_SHA256,))
def test_verify_names_an_older_version_after_a_rotation(node: KeyNode, algorithm: str) -> None:
    create(node, "v/k", algorithm)
    op = Hmac(name="v/k", message=b"m") if algorithm == HMAC_SHA256 else Sign(name="v/k", message=b"m")
    first = ok(node.request(op))
    signature = getattr(first, "mac", None) or first.signature
    ok(node.request(RotateKey(name="v/k")))
    assert not ok(node.request(Verify(name="v/k", message=b"m", signature=signature))).valid  # the primary
    assert ok(node.request(Verify(name="v/k", message=b"m", signature=signature, version_id=first.version_id))).valid
    failed(node.request(Verify(name="v/k", message=b"m", signature=signature, version_id=b"\x01" * 16)),
           ErrorCode.KEY_NOT_FOUND, retryable=True)


def test_disabled_keys_refuse_every_use_until_enabled(node: KeyNode) -> None:
    create(node, "d/k")
    sealed = ok(node.request(Encrypt(name="d/k", plaintext=b"x")))
    assert ok(node.request(DisableKey(name="d/k")), KeyInfo).disabled
    for op in (Encrypt(name="d/k", plaintext=b"x"), Decrypt(ciphertext=sealed.ciphertext),
               Rewrap(ciphertext=sealed.ciphertext), DataKey(name="d/k"), RotateKey(name="d/k")):
        failed(node.request(op), ErrorCode.KEY_DISABLED)
    assert ok(node.request(GetKey(name="d/k")), KeyInfo).disabled
    assert not ok(node.request(EnableKey(name="d/k")), KeyInfo).disabled
    assert ok(node.request(Decrypt(ciphertext=sealed.ciphertext))).plaintext == b"x"


def test_min_decryption_version_retires_older_versions(node: KeyNode) -> None:
    create(node, "m/k")
    v1 = ok(node.request(Encrypt(name="m/k", plaintext=b"one")))
    ok(node.request(RotateKey(name="m/k")))
    v2 = ok(node.request(Encrypt(name="m/k", plaintext=b"two")))
    failed(node.request(ConfigureKey(name="m/k", min_decryption_version=3)), ErrorCode.BAD_REQUEST)
    failed(node.request(ConfigureKey(name="m/k")), ErrorCode.BAD_REQUEST)
    info = ok(node.request(ConfigureKey(name="m/k", min_decryption_version=2)), KeyInfo)
    assert info.min_decryption_version == 2
    failed(node.request(Decrypt(ciphertext=v1.ciphertext)), ErrorCode.KEY_DISABLED)
    failed(node.request(Rewrap(ciphertext=v1.ciphertext)), ErrorCode.KEY_DISABLED)
    assert ok(node.request(Decrypt(ciphertext=v2.ciphertext))).plaintext == b"two"
    ok(node.request(ConfigureKey(name="m/k", min_decryption_version=1)))
    assert ok(node.request(Decrypt(ciphertext=v1.ciphertext))).plaintext == b"one"


def test_delete_needs_deletion_allowed_and_a_deleted_name_is_never_reused(node: KeyNode) -> None:
    create(node, "del/k")
    sealed = ok(node.request(Encrypt(name="del/k", plaintext=b"x")))
    assert "deletion_allowed" in failed(node.request(DeleteKey(name="del/k")), ErrorCode.FORBIDDEN).message
    info = ok(node.request(ConfigureKey(name="del/k", deletion_allowed=True, auto_rotate_period_s=86400)), KeyInfo)
    assert (info.deletion_allowed, info.auto_rotate_period_s) == (True, 86400.0)
    assert ok(node.request(DeleteKey(name="del/k")), DeleteKeyResult).name == "del/k"
    for op in (GetKey(name="del/k"), Encrypt(name="del/k", plaintext=b"x"), Decrypt(ciphertext=sealed.ciphertext),
               DeleteKey(name="del/k"), RotateKey(name="del/k"), EnableKey(name="del/k")):
        failed(node.request(op), ErrorCode.KEY_NOT_FOUND)
    assert "never reused" in failed(node.request(CreateKey(name="del/k", algorithm="aes256-gcm")),
                                    ErrorCode.BAD_REQUEST).message
    assert "del/k" not in ok(node.request(ListKeys())).names


def test_creating_an_existing_key_is_refused(node: KeyNode) -> None:
    create(node, "dup")
    assert "already exists" in failed(node.request(CreateKey(name="dup", algorithm="ed25519")),
                                      ErrorCode.BAD_REQUEST).message


# --- ciphertexts that do not open -------------------------------------------------------------


def test_tampered_ciphertexts_fail_to_decrypt_and_never_leak_plaintext(node: KeyNode) -> None:
    create(node, "t/k")
    create(node, "t/other")
    sealed = ok(node.request(Encrypt(name="t/k", plaintext=b"secret plaintext", context=b"c"))).ciphertext
    header = len(ct.parse(sealed).header)
    for at in range(len(sealed)):
        for flip in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[at] ^= flip
            answer = node.request(Decrypt(ciphertext=bytes(bad), context=b"c"))
            assert isinstance(answer, Failure), f"byte {at} flipped still decrypts"
            expected = {ErrorCode.DECRYPT_FAILED} if at >= header else {
                ErrorCode.DECRYPT_FAILED, ErrorCode.BAD_REQUEST, ErrorCode.KEY_NOT_FOUND}
            assert answer.code in expected, (at, answer)
    failed(node.request(Decrypt(ciphertext=sealed, context=b"other")), ErrorCode.DECRYPT_FAILED)
    failed(node.request(Decrypt(ciphertext=sealed, context=b"c", name="t/other")), ErrorCode.DECRYPT_FAILED)
    for cut in (0, 5, len(sealed) - 17):
        failed(node.request(Decrypt(ciphertext=sealed[:cut], context=b"c")), ErrorCode.BAD_REQUEST)
    failed(node.request(Decrypt(ciphertext=b"ks\x02" + sealed[3:], context=b"c")), ErrorCode.BAD_REQUEST)


def test_a_ciphertext_of_a_version_this_node_has_not_seen_is_retryable(node: KeyNode) -> None:
    create(node, "u/k")
    sealed = ok(node.request(Encrypt(name="u/k", plaintext=b"x"))).ciphertext
    parsed = ct.parse(sealed)
    unknown = ct.encode_header("aes256-gcm", "u/k", b"\x07" * 16) + parsed.nonce + bytes(parsed.sealed)
    failed(node.request(Decrypt(ciphertext=unknown)), ErrorCode.KEY_NOT_FOUND, retryable=True)


# --- batches ----------------------------------------------------------------------------------


def test_batches_answer_item_by_item_across_partitions(node: KeyNode) -> None:
    names = [f"b/{i}" for i in range(6)]  # several partitions of 8
    for name in names:
        create(node, name)
    create(node, "b/sig", ED25519)
    create(node, "b/mac", HMAC_SHA256)
    items = tuple(EncryptItem(name=n, plaintext=n.encode()) for n in names) + (
        EncryptItem(name="b/missing", plaintext=b"x"), EncryptItem(name="b/sig", plaintext=b"x"),
        EncryptItem(name="bad name", plaintext=b"x"))
    result = ok(node.request(EncryptBatch(items=items)))
    assert [i.ok for i in result.items] == [True] * 6 + [False] * 3
    assert [i.error.code for i in result.items[6:]] == [ErrorCode.KEY_NOT_FOUND, ErrorCode.BAD_REQUEST,
                                                        ErrorCode.BAD_REQUEST]
    sealed = [i.ciphertext for i in result.items[:6]]
    decrypted = ok(node.request(DecryptBatch(items=tuple(DecryptItem(ciphertext=c) for c in sealed) + (
        DecryptItem(ciphertext=sealed[0][:-1] + bytes([sealed[0][-1] ^ 1])), DecryptItem(ciphertext=b"junk")))))
    assert [i.plaintext for i in decrypted.items[:6]] == [n.encode() for n in names]
    assert [i.error.code for i in decrypted.items[6:]] == [ErrorCode.DECRYPT_FAILED, ErrorCode.BAD_REQUEST]
    rewrapped = ok(node.request(RewrapBatch(items=(RewrapItem(ciphertext=sealed[1]), RewrapItem(ciphertext=b"")))))
    assert rewrapped.items[0].ok and not rewrapped.items[1].ok
    signed = ok(node.request(SignBatch(items=(SignItem(name="b/sig", message=b"1"), SignItem(name="b/0", message=b"1")))))
    assert signed.items[0].ok and signed.items[1].error.code is ErrorCode.BAD_REQUEST
    verified = ok(node.request(VerifyBatch(items=(
        VerifyItem(name="b/sig", message=b"1", signature=signed.items[0].signature),
        VerifyItem(name="b/sig", message=b"2", signature=signed.items[0].signature),
        VerifyItem(name="b/nope", message=b"2", signature=b"")))))
    assert [(i.ok, i.valid) for i in verified.items] == [(True, True), (True, False), (False, False)]
    macs = ok(node.request(HmacBatch(items=(HmacItem(name="b/mac", message=b"1"), HmacItem(name="b/0", message=b"1")))))
    assert len(macs.items[0].mac) == 32 and not macs.items[1].ok
    assert ok(node.request(EncryptBatch(items=()))).items == ()


def test_a_batch_past_max_batch_items_is_refused_whole() -> None:
    node = KeyNode(settings={"max_batch_items": 3})
    create(node, "k")
    items = tuple(EncryptItem(name="k", plaintext=b"x") for _ in range(4))
    failed(node.request(EncryptBatch(items=items)), ErrorCode.BAD_REQUEST)
    assert all(i.ok for i in ok(node.request(EncryptBatch(items=items[:3]))).items)


# --- listing ---------------------------------------------------------------------------------------


def test_list_pages_through_every_partition_in_name_order(node: KeyNode) -> None:
    names = sorted(f"l/{i:02d}" for i in range(23)) + ["other"]
    for name in names:
        create(node, name)
    seen, cursor = [], ""
    while True:
        page = ok(node.request(ListKeys(prefix="l/", limit=5, cursor=cursor)))
        assert len(page.names) <= 5
        seen += page.names
        cursor = page.cursor
        if not cursor:
            break
    assert seen == names[:-1]
    assert ok(node.request(ListKeys())).names == tuple(names)
    failed(node.request(ListKeys(limit=0)), ErrorCode.BAD_REQUEST)
    only = ok(node.request(AuthorizedListKeys(ListKeys(limit=3), lambda n: n.endswith("1")), to="keys"))
    assert only.names == ("l/01", "l/11", "l/21")


# --- retried writes apply once ----------------------------------------------------------------------


def test_a_retried_write_applies_once_and_gets_the_original_answer(node: KeyNode) -> None:
    first = create(node, "r/k", client_request_id=b"req-1")
    again = create(node, "r/k", client_request_id=b"req-1")
    assert again == first and len(events_of(node, KeyCreated)) == 1
    rotated = ok(node.request(RotateKey(name="r/k", client_request_id=b"req-2")), KeyInfo)
    ok(node.request(RotateKey(name="r/k", client_request_id=b"req-3")))
    retried = ok(node.request(RotateKey(name="r/k", client_request_id=b"req-2")), KeyInfo)
    assert retried.version_id == rotated.version_id and retried.primary == 3
    assert len(events_of(node, KeyVersionAdded)) == 2
    # Another client's id of the same bytes is another request; the same id for another write is refused.
    ok(node.request(RotateKey(name="r/k", client_request_id=b"req-2"), client="other"))
    assert len(events_of(node, KeyVersionAdded)) == 3
    assert "another" in failed(node.request(DisableKey(name="r/k", client_request_id=b"req-2")),
                               ErrorCode.BAD_REQUEST).message
    stats = ok(node.request(GetKeyStats()))
    assert stats.deduplicated == 2 and stats.writes == 4
    failed(node.request(RotateKey(name="r/k", client_request_id=b"x" * 65)), ErrorCode.BAD_REQUEST)


def test_a_retry_of_a_write_in_flight_joins_it() -> None:
    node = KeyNode(hold={AppendBatch})
    first = node.send(CreateKey(name="f/k", algorithm="aes256-gcm", client_request_id=b"x"))
    node.settle()
    second = node.send(CreateKey(name="f/k", algorithm="aes256-gcm", client_request_id=b"x"))
    node.settle()
    assert node.answer(first) is None and node.answer(second) is None, "nothing answered before it is durable"
    failed(node.request(DisableKey(name="f/k", client_request_id=b"x")), ErrorCode.BAD_REQUEST)  # id in use
    node.hold.clear()
    node.release()
    assert node.answer(first) == node.answer(second) and isinstance(node.answer(first), KeyInfo)
    assert len(events_of(node, KeyCreated)) == 1


def test_a_retried_write_applies_once_across_a_restart(node: KeyNode) -> None:
    first = create(node, "rs/k", client_request_id=b"c1")
    rotated = ok(node.request(RotateKey(name="rs/k", client_request_id=b"c2")), KeyInfo)
    ok(node.request(ConfigureKey(name="rs/k", deletion_allowed=True, client_request_id=b"c3")))
    ok(node.request(DeleteKey(name="rs/k", client_request_id=b"c4")))
    create(node, "rs/j", client_request_id=b"c5")
    restarted = node.restart()
    assert create(restarted, "rs/j", client_request_id=b"c5").primary_version_id == ok(
        restarted.request(GetKey(name="rs/j")), KeyInfo).primary_version_id
    assert restarted.request(DeleteKey(name="rs/k", client_request_id=b"c4")) == DeleteKeyResult(name="rs/k")
    assert len(events_of(restarted, KeyCreated)) == 2 and len(events_of(restarted, KeyVersionAdded)) == 1
    assert first.version_id != rotated.version_id


def test_restart_rebuilds_state_from_snapshot_and_tail() -> None:
    node = KeyNode(snapshot_every=3, partitions=2)
    sealed = {}
    for i in range(8):
        create(node, f"s/{i}")
        sealed[i] = ok(node.request(Encrypt(name=f"s/{i}", plaintext=b"p%d" % i))).ciphertext
    ok(node.request(RotateKey(name="s/0")))
    ok(node.request(DisableKey(name="s/1")))
    before = [node.request(GetKey(name=f"s/{i}")) for i in range(8)]
    assert node.service.snapshots_written >= 2
    restarted = node.restart()
    assert [restarted.request(GetKey(name=f"s/{i}")) for i in range(8)] == before
    for i in range(8):
        answer = restarted.request(Decrypt(ciphertext=sealed[i]))
        if i == 1:
            failed(answer, ErrorCode.KEY_DISABLED)
        else:
            assert ok(answer).plaintext == b"p%d" % i


# --- loading, storage failures, timeouts ----------------------------------------------------------------


def test_requests_wait_for_the_partition_to_load() -> None:
    node = KeyNode(hold={LoadPartitionState})
    request = node.send(Encrypt(name="w/k", plaintext=b"x"))
    node.settle()
    assert node.answer(request) is None
    node.hold.clear()
    node.release()
    failed(node.answer(request), ErrorCode.KEY_NOT_FOUND)


def test_a_failed_load_answers_unavailable_and_is_retried() -> None:
    node = KeyNode(hold={LoadPartitionState})
    request = node.send(Encrypt(name="w/k", plaintext=b"x"))
    node.settle()
    node.release(error=StorageError("disk gone"))
    failed(node.answer(request), ErrorCode.UNAVAILABLE, retryable=True)
    node.hold.clear()
    node.advance(5.0)  # the retry timers fire and the loads succeed
    assert ok(node.request(GetKeyStats())).partitions_loaded == node.partitions
    create(node, "w/k")


def test_a_failed_commit_is_unavailable_and_a_retry_applies_once() -> None:
    node = KeyNode(hold={AppendBatch})
    request = node.send(CreateKey(name="x/k", algorithm="aes256-gcm", client_request_id=b"id"))
    node.settle()
    node.release(error=StorageError("fsync failed"))
    failed(node.answer(request), ErrorCode.UNAVAILABLE, retryable=True)
    node.hold.clear()
    node.advance(1.0)  # the storage actor reloads its head
    create(node, "x/k", client_request_id=b"id")
    create(node, "x/k", client_request_id=b"id")
    assert len(events_of(node, KeyCreated)) == 1


def test_a_write_the_storage_never_confirms_times_out_and_its_late_commit_still_counts() -> None:
    node = KeyNode(hold={AppendBatch})
    request = node.send(CreateKey(name="late/k", algorithm="aes256-gcm", client_request_id=b"id"))
    node.settle()
    node.advance(11.0)
    failed(node.answer(request), ErrorCode.UNAVAILABLE, retryable=True)
    other = node.send(CreateKey(name="late/j", algorithm="aes256-gcm"))  # sent while the first is still owed
    node.settle()
    node.hold.clear()
    node.release()  # both commits land, the late one first
    assert isinstance(node.answer(other), KeyInfo)
    retried = create(node, "late/k", client_request_id=b"id")
    assert retried.version_id and len(events_of(node, KeyCreated)) == 2


# --- the key cache ----------------------------------------------------------------------------------


def test_cache_hits_and_misses_are_counted(node: KeyNode) -> None:
    create(node, "c/k")
    start = ok(node.request(GetKeyStats()))
    for _ in range(5):
        ok(node.request(Encrypt(name="c/k", plaintext=b"x")))
    stats = ok(node.request(GetKeyStats()))
    assert (stats.cache_misses - start.cache_misses, stats.cache_hits - start.cache_hits) == (1, 4)
    assert stats.cache_size == 1
    ok(node.request(RotateKey(name="c/k")))  # a write of the key drops its cached versions
    ok(node.request(Encrypt(name="c/k", plaintext=b"x")))
    assert ok(node.request(GetKeyStats())).cache_misses == stats.cache_misses + 1
    node.advance(3700.0)  # past max_age: the sweep drops it
    assert ok(node.request(GetKeyStats())).cache_size == 0


# --- admin writes ---------------------------------------------------------------------------------------


def test_policy_set_and_client_revoke_are_durable_events_passed_to_sessions(node: KeyNode) -> None:
    rules = (PolicyRule(pattern="app1/*", ops=("encrypt", "decrypt", "encrypt")),)
    answer = ok(node.request(SetPolicy(client="bob", rules=rules, client_request_id=b"p1"), client="admin"),
                SetPolicyResult)
    assert answer.rules == (PolicyRule(pattern="app1/*", ops=("decrypt", "encrypt")),)
    assert node.request(SetPolicy(client="bob", rules=rules, client_request_id=b"p1"), client="admin") == answer
    assert ok(node.request(RevokeClient(client="eve", reason="lost laptop")), RevokeClientResult).client == "eve"
    assert [type(b) for b in events_of(node, PolicySet) + events_of(node, ClientRevoked)] == [PolicySet, ClientRevoked]
    notices = [m for m in node.policy_notices if type(m) is PolicyChanged]
    table = PolicyTable()
    for notice in notices:
        for event in notice.events:
            table.apply(event)
    assert table.allows("bob", "encrypt", "app1/x") and not table.allows("bob", "sign", "app1/x")
    assert table.is_revoked("eve")
    failed(node.request(SetPolicy(client="bob", rules=(PolicyRule(pattern="a//b", ops=("encrypt",)),))),
           ErrorCode.BAD_REQUEST)
    failed(node.request(SetPolicy(client="bob", rules=(PolicyRule(pattern="a", ops=("policy.set",)),))),
           ErrorCode.BAD_REQUEST)
    failed(node.request(SetPolicy(client="", rules=())), ErrorCode.BAD_REQUEST)
    failed(node.request(RevokeClient(client="eve", fingerprint=b"short")), ErrorCode.BAD_REQUEST)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_key_get_describes_every_algorithm(node: KeyNode, algorithm: str) -> None:
    create(node, "g/k", algorithm)
    ok(node.request(RotateKey(name="g/k")))
    info = ok(node.request(GetKey(name="g/k")), KeyInfo)
    assert [v.number for v in info.versions] == [1, 2] and info.primary_version_id == info.versions[1].version_id
    assert all(v.created_by == "n1" and v.created_hlc > 0 for v in info.versions)
    assert all(bool(v.public_key) is (algorithm in SIGNING) for v in info.versions)
    assert info.version_id == b""


# --- routing ------------------------------------------------------------------------------------------


def test_requests_are_routed_to_the_partition_that_owns_their_key() -> None:
    from keyswarm.actors.key_messages import key_names_of
    from keyswarm.actors.key_router import KeyRouting
    from keyswarm.storage.events import partition_of

    routing = KeyRouting(64)
    for name in ("app/a", "app/b", "x", "a/b/c"):
        assert routing.actor_for(Encrypt(name=name, plaintext=b"")) == f"keys.{partition_of(name, 64)}"
    blob = ct.encode_header("aes256-gcm", "app/a", b"v") + bytes(28)
    assert routing.actor_for(Decrypt(ciphertext=blob)) == routing.actor_for(GetKey(name="app/a"))
    assert key_names_of(DecryptBatch(items=(DecryptItem(ciphertext=blob), DecryptItem(ciphertext=b"x")))) == ("app/a", "")
    assert routing.actor_for(Decrypt(ciphertext=b"junk")) == "keys.0"  # its actor answers BAD_REQUEST
    assert routing.actor_for(GetKey(name="bad name")) == "keys.0"
    one = EncryptBatch(items=(EncryptItem(name="app/a", plaintext=b""),) * 3)
    assert routing.actor_for(one) == routing.actor_for(GetKey(name="app/a"))
    spread = EncryptBatch(items=tuple(EncryptItem(name=f"k{i}", plaintext=b"") for i in range(20)))
    assert routing.actor_for(spread) is None and sum(map(len, routing.parts_of(spread).values())) == 20
    assert routing.actor_for(ListKeys()) is None


def test_durable_events_reported_before_the_load_are_folded_after_it() -> None:
    from keyswarm.actors.runtime import Address
    from keyswarm.actors.storage import EventsAppended
    from keyswarm.storage.events import partition_of

    source = KeyNode()
    create(source, "early/k")
    (event,) = [e for p in range(source.partitions) for _, e in source.log.read_partition(p)
                if e.type == codec.tag_of(KeyCreated)]
    node = KeyNode(hold={LoadPartitionState}, domain_key=source.domain_key)
    actor = f"keys.{partition_of('early/k', node.partitions)}"
    node.runtime.deliver(actor, Address("n1", "storage"), EventsAppended(
        origin=event.origin, first_seq=event.origin_seq, last_seq=event.origin_seq, local_seqs=(1,), events=(event,)))
    node.settle()
    node.hold.clear()
    node.release()
    version_id = codec.decode(event.body, expect=KeyCreated).version_id
    assert ok(node.request(GetKey(name="early/k")), KeyInfo).primary_version_id == version_id
    ok(node.request(Encrypt(name="early/k", plaintext=b"x")))
