"""Sealing to tokens (ECDH and HMAC-SHA1), HPKE to X25519 keys, and the domain key."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from keyswarm.crypto import sealing
from keyswarm.crypto.sealing import (
    DomainKey,
    UnsealFailed,
    WrongRecipient,
    open_domain_key_from_subkey,
    open_from_x25519,
    rfc9180_open,
    rfc9180_seal,
    seal_domain_key_to_subkey,
    seal_domain_key_to_token,
    seal_to_token,
    seal_to_x25519,
    unseal_domain_key_with_token,
    unseal_with_token,
)
from keyswarm.errors import ErrorCode, TokenAbsent
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.hardware.token import public_key_fingerprint

SECRET = b"node secret at rest"
CONTEXT = b"test/context"
TOKEN_METHODS = [("ed25519", "ecdh"), ("p256", "ecdh"), ("ed25519", "hmac")]


def entropy(seed: int = 1):
    return random.Random(seed).randbytes


@pytest.fixture(params=["ed25519", "p256"])
def token(request: pytest.FixtureRequest, tmp_path: Path) -> SoftToken:
    return SoftToken.create(tmp_path / "t.key", algorithm=request.param, entropy=entropy(3))


def make_token(tmp_path: Path, algorithm: str, seed: int) -> SoftToken:
    return SoftToken.create(tmp_path / f"{algorithm}-{seed}.key", algorithm=algorithm, entropy=entropy(seed))


# --- sealing to a token ---------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "method"), TOKEN_METHODS)
def test_seal_to_token_round_trips(tmp_path: Path, algorithm: str, method: str) -> None:
    token = make_token(tmp_path, algorithm, 1)
    envelope = seal_to_token(token, SECRET, context=CONTEXT, method=method)
    assert SECRET not in envelope
    assert unseal_with_token(token, envelope, context=CONTEXT) == SECRET
    # It survives the token being closed and reopened from its file.
    assert unseal_with_token(SoftToken.open(token.path), envelope, context=CONTEXT) == SECRET


@pytest.mark.parametrize(("algorithm", "scheme", "prefix"), [("ed25519", 1, 32), ("p256", 2, 65)])
def test_ecdh_envelope_layout_names_the_recipient_key(tmp_path: Path, algorithm: str, scheme: int, prefix: int) -> None:
    token = make_token(tmp_path, algorithm, 1)
    envelope = seal_to_token(token, SECRET, context=CONTEXT)
    assert envelope[:4] == b"KSSL" and envelope[4] == 1 and envelope[5] == scheme
    assert envelope[6:22] == public_key_fingerprint(token.sealing_public_key())[:16]
    assert len(envelope) == 22 + prefix + len(SECRET) + 16


def test_sealing_with_the_same_entropy_is_deterministic(tmp_path: Path) -> None:
    token = make_token(tmp_path, "p256", 1)
    first = seal_to_token(token, SECRET, context=CONTEXT, entropy=entropy(9))
    assert seal_to_token(token, SECRET, context=CONTEXT, entropy=entropy(9)) == first
    assert seal_to_token(token, SECRET, context=CONTEXT, entropy=entropy(10)) != first


@pytest.mark.parametrize(("algorithm", "method"), TOKEN_METHODS)
def test_another_token_is_told_it_is_the_wrong_recipient(tmp_path: Path, algorithm: str, method: str) -> None:
    envelope = seal_to_token(make_token(tmp_path, algorithm, 1), SECRET, context=CONTEXT, method=method)
    with pytest.raises(WrongRecipient):
        unseal_with_token(make_token(tmp_path, algorithm, 2), envelope, context=CONTEXT)


def test_a_token_of_the_other_curve_is_the_wrong_recipient(tmp_path: Path) -> None:
    envelope = seal_to_token(make_token(tmp_path, "p256", 1), SECRET, context=CONTEXT)
    with pytest.raises(WrongRecipient, match="sealed to key"):
        unseal_with_token(make_token(tmp_path, "ed25519", 1), envelope, context=CONTEXT)


@pytest.mark.parametrize(("algorithm", "method"), TOKEN_METHODS)
def test_every_tampered_byte_fails_to_open(tmp_path: Path, algorithm: str, method: str) -> None:
    token = make_token(tmp_path, algorithm, 1)
    envelope = seal_to_token(token, b"k", context=CONTEXT, method=method)
    for index in range(len(envelope)):
        damaged = bytearray(envelope)
        damaged[index] ^= 0x01
        with pytest.raises(UnsealFailed):
            unseal_with_token(token, bytes(damaged), context=CONTEXT)


@pytest.mark.parametrize(("algorithm", "method"), TOKEN_METHODS)
def test_every_truncation_fails_to_open(tmp_path: Path, algorithm: str, method: str) -> None:
    token = make_token(tmp_path, algorithm, 1)
    envelope = seal_to_token(token, SECRET, context=CONTEXT, method=method)
    for length in range(len(envelope)):
        with pytest.raises(UnsealFailed):
            unseal_with_token(token, envelope[:length], context=CONTEXT)


@pytest.mark.parametrize(("algorithm", "method"), TOKEN_METHODS)
def test_another_context_does_not_open(tmp_path: Path, algorithm: str, method: str) -> None:
    token = make_token(tmp_path, algorithm, 1)
    envelope = seal_to_token(token, SECRET, context=b"a", method=method)
    with pytest.raises(UnsealFailed, match="context"):
        unseal_with_token(token, envelope, context=b"b")


def test_a_forged_ephemeral_key_is_refused_as_unseal_failed(tmp_path: Path) -> None:
    x_token = make_token(tmp_path, "ed25519", 1)
    envelope = seal_to_token(x_token, SECRET, context=CONTEXT)
    low_order = envelope[:22] + bytes(32) + envelope[54:]
    with pytest.raises(UnsealFailed, match="ephemeral key is invalid"):
        unseal_with_token(x_token, low_order, context=CONTEXT)
    p_token = make_token(tmp_path, "p256", 1)
    envelope = seal_to_token(p_token, SECRET, context=CONTEXT)
    off_curve = envelope[:22] + b"\x04" + bytes(64) + envelope[87:]
    with pytest.raises(UnsealFailed, match="ephemeral key is invalid"):
        unseal_with_token(p_token, off_curve, context=CONTEXT)


def test_envelope_header_errors_are_clear(token: SoftToken) -> None:
    envelope = seal_to_token(token, SECRET, context=CONTEXT)
    with pytest.raises(UnsealFailed, match="wrong magic"):
        unseal_with_token(token, b"XXXX" + envelope[4:], context=CONTEXT)
    with pytest.raises(UnsealFailed, match="version 2 is not supported"):
        unseal_with_token(token, envelope[:4] + b"\x02" + envelope[5:], context=CONTEXT)
    with pytest.raises(UnsealFailed, match="unknown envelope scheme 9"):
        unseal_with_token(token, envelope[:5] + b"\x09" + envelope[6:], context=CONTEXT)
    with pytest.raises(UnsealFailed, match="larger than any sealed secret"):
        unseal_with_token(token, envelope + bytes(sealing.MAX_PLAINTEXT_BYTES), context=CONTEXT)
    hpke_envelope = seal_to_x25519(X25519PrivateKey.generate().public_key(), SECRET, context=CONTEXT)
    with pytest.raises(UnsealFailed, match="not sealed to a token"):
        unseal_with_token(token, hpke_envelope, context=CONTEXT)


def test_a_missing_token_is_reported_as_such_not_as_tampering(tmp_path: Path) -> None:
    token = make_token(tmp_path, "ed25519", 1)
    envelope = seal_to_token(token, SECRET, context=CONTEXT)

    class Unplugged(SoftToken):
        def key_agreement(self, peer_public):  # type: ignore[override]
            raise TokenAbsent("unplugged")

    unplugged = Unplugged.open(token.path)
    with pytest.raises(TokenAbsent):
        unseal_with_token(unplugged, envelope, context=CONTEXT)


def test_seal_refuses_oversized_input_and_unknown_methods(token: SoftToken) -> None:
    with pytest.raises(ValueError, match="cannot seal"):
        seal_to_token(token, bytes(sealing.MAX_PLAINTEXT_BYTES + 1), context=CONTEXT)
    with pytest.raises(ValueError, match="context label"):
        seal_to_token(token, SECRET, context=bytes(1000))
    with pytest.raises(ValueError, match="method"):
        seal_to_token(token, SECRET, context=CONTEXT, method="rsa")


# --- HPKE to an X25519 key -------------------------------------------------------------------


# RFC 9180 appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, base mode.
RFC_SK_E = "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600"
RFC_SK_R = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb"
RFC_PK_R = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a"
RFC_INFO = "4f6465206f6e2061204772656369616e2055726e"
RFC_AAD = "436f756e742d30"
RFC_PT = "4265617574792069732074727574682c20747275746820626561757479"
RFC_ENC = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a"
RFC_CT = "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28"


def test_builtin_hpke_matches_the_rfc_9180_test_vector() -> None:
    ephemeral = X25519PrivateKey.from_private_bytes(bytes.fromhex(RFC_SK_E))
    recipient = X25519PublicKey.from_public_bytes(bytes.fromhex(RFC_PK_R))
    sealed = rfc9180_seal(recipient, bytes.fromhex(RFC_INFO), bytes.fromhex(RFC_PT), ephemeral, bytes.fromhex(RFC_AAD))
    assert sealed.hex() == RFC_ENC + RFC_CT
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(RFC_SK_R))
    assert rfc9180_open(private, bytes.fromhex(RFC_INFO), sealed, bytes.fromhex(RFC_AAD)).hex() == RFC_PT


@pytest.mark.skipif(not sealing.HPKE_FROM_CRYPTOGRAPHY, reason="this cryptography has no hpke module")
def test_builtin_hpke_and_cryptography_hpke_open_each_others_envelopes() -> None:
    private = X25519PrivateKey.generate()
    from_library = seal_to_x25519(private.public_key(), SECRET, context=CONTEXT)
    from_builtin = seal_to_x25519(private.public_key(), SECRET, context=CONTEXT, entropy=entropy(4))
    info = sealing._info(CONTEXT) + from_library[:22]
    assert rfc9180_open(private, info, from_library[22:]) == SECRET
    assert sealing._HPKE_SUITE.decrypt(from_builtin[22:], private, info=info) == SECRET  # type: ignore[union-attr]


@pytest.mark.parametrize("deterministic", [False, True], ids=["library-or-builtin", "entropy"])
def test_seal_to_x25519_round_trips(deterministic: bool) -> None:
    private = X25519PrivateKey.generate()
    chosen = entropy(1) if deterministic else None
    envelope = seal_to_x25519(private.public_key(), SECRET, context=CONTEXT, entropy=chosen)
    assert envelope[5] == sealing.SCHEME_HPKE_X25519
    assert open_from_x25519(private, envelope, context=CONTEXT) == SECRET


@pytest.mark.parametrize("deterministic", [False, True], ids=["library-or-builtin", "entropy"])
def test_the_longest_context_label_works_on_both_hpke_paths(deterministic: bool) -> None:
    private = X25519PrivateKey.generate()
    context = bytes(range(256))
    chosen = entropy(1) if deterministic else None
    envelope = seal_to_x25519(private.public_key(), SECRET, context=context, entropy=chosen)
    assert open_from_x25519(private, envelope, context=context) == SECRET


def test_seal_to_x25519_with_entropy_is_deterministic() -> None:
    recipient = X25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    first = seal_to_x25519(recipient, SECRET, context=CONTEXT, entropy=entropy(1))
    assert seal_to_x25519(recipient, SECRET, context=CONTEXT, entropy=entropy(1)) == first


def test_the_builtin_path_is_used_without_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealing, "_HPKE_SUITE", None)
    private = X25519PrivateKey.generate()
    envelope = seal_to_x25519(private.public_key(), SECRET, context=CONTEXT)
    assert open_from_x25519(private, envelope, context=CONTEXT) == SECRET
    damaged = envelope[:-1] + bytes([envelope[-1] ^ 1])
    with pytest.raises(UnsealFailed, match="tampered"):
        open_from_x25519(private, damaged, context=CONTEXT)


def test_hpke_envelope_fails_for_another_key_tampering_and_another_context() -> None:
    private = X25519PrivateKey.generate()
    envelope = seal_to_x25519(private.public_key(), b"k", context=CONTEXT)
    with pytest.raises(WrongRecipient):
        open_from_x25519(X25519PrivateKey.generate(), envelope, context=CONTEXT)
    with pytest.raises(UnsealFailed, match="context"):
        open_from_x25519(private, envelope, context=b"other")
    for index in range(len(envelope)):
        damaged = bytearray(envelope)
        damaged[index] ^= 0x01
        with pytest.raises(UnsealFailed):
            open_from_x25519(private, bytes(damaged), context=CONTEXT)
    for length in range(len(envelope)):
        with pytest.raises(UnsealFailed):
            open_from_x25519(private, envelope[:length], context=CONTEXT)


def test_a_token_envelope_is_not_an_hpke_envelope(token: SoftToken) -> None:
    envelope = seal_to_token(token, SECRET, context=CONTEXT)
    with pytest.raises(UnsealFailed, match="not sealed to an X25519 key"):
        open_from_x25519(X25519PrivateKey.generate(), envelope, context=CONTEXT)


def test_seal_to_x25519_refuses_other_key_types(token: SoftToken) -> None:
    with pytest.raises(ValueError, match="X25519"):
        seal_to_x25519(token.identity_public_key(), SECRET, context=CONTEXT)  # type: ignore[arg-type]


# --- the domain key -----------------------------------------------------------------------------


def test_domain_key_generation_uses_the_entropy_given() -> None:
    key = DomainKey.generate(entropy(5), epoch=3)
    assert key == DomainKey.generate(entropy(5), epoch=3)
    assert key != DomainKey.generate(entropy(6), epoch=3)
    assert len(key.secret) == 32 and key.epoch == 3
    assert key.secret.hex() not in repr(key) and "secret" not in repr(key)
    assert DomainKey.from_bytes(key.to_bytes()) == key
    assert key.key_id != DomainKey(key.secret, 4).key_id, "the epoch is part of the key id"


def test_domain_key_rejects_bad_material() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DomainKey(bytes(31))
    with pytest.raises(ValueError, match="epoch"):
        DomainKey(bytes(32), -1)
    with pytest.raises(UnsealFailed, match="expected 36"):
        DomainKey.from_bytes(bytes(35))


def test_domain_key_derives_independent_subkeys() -> None:
    key = DomainKey.generate(entropy(5))
    assert key.derive(b"ticket") != key.derive(b"wrap")
    assert key.derive(b"ticket") == DomainKey(key.secret).derive(b"ticket")
    assert len(key.derive(b"x", 64)) == 64


def test_domain_key_wraps_material_bound_to_its_label() -> None:
    key = DomainKey.generate(entropy(5))
    wrapped = key.wrap(b"named key material", label=b"app1/orders v1", entropy=entropy(7))
    assert wrapped[:8] == key.key_id
    assert key.unwrap(wrapped, label=b"app1/orders v1") == b"named key material"
    with pytest.raises(UnsealFailed, match="tampered"):
        key.unwrap(wrapped, label=b"app1/orders v2")
    with pytest.raises(UnsealFailed, match="tampered"):
        key.unwrap(wrapped[:-1] + bytes([wrapped[-1] ^ 1]), label=b"app1/orders v1")
    with pytest.raises(WrongRecipient, match="wrapped under domain key"):
        DomainKey.generate(entropy(6)).unwrap(wrapped, label=b"app1/orders v1")
    with pytest.raises(UnsealFailed, match="truncated"):
        key.unwrap(wrapped[:20], label=b"app1/orders v1")


@pytest.mark.parametrize("method", ["ecdh", "hmac"])
def test_domain_key_sealed_at_rest_by_the_token(token: SoftToken, method: str) -> None:
    key = DomainKey.generate(entropy(5), epoch=2)
    envelope = seal_domain_key_to_token(token, key, method=method)
    assert unseal_domain_key_with_token(token, envelope) == key
    # The at-rest context keeps it from opening as any other sealed secret.
    with pytest.raises(UnsealFailed):
        unseal_with_token(token, envelope, context=CONTEXT)


def test_domain_key_handed_to_a_new_node_sealed_to_its_subkey() -> None:
    key = DomainKey.generate(entropy(5))
    agreement = X25519PrivateKey.generate()
    envelope = seal_domain_key_to_subkey(agreement.public_key(), key)
    assert key.secret not in envelope
    assert open_domain_key_from_subkey(agreement, envelope) == key
    with pytest.raises(WrongRecipient):
        open_domain_key_from_subkey(X25519PrivateKey.generate(), envelope)
    with pytest.raises(UnsealFailed):
        open_from_x25519(agreement, envelope, context=sealing.DOMAIN_KEY_AT_REST)


def test_unseal_errors_carry_the_decrypt_failed_code() -> None:
    assert UnsealFailed.code is ErrorCode.DECRYPT_FAILED
    assert issubclass(WrongRecipient, UnsealFailed)
