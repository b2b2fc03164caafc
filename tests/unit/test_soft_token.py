"""SoftToken: keys, signatures, ECDH, the key file's permissions, passphrase and bad-file handling."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from keyswarm.errors import AuthError, TokenAbsent, TokenError
from keyswarm.hardware import soft_token
from keyswarm.hardware.soft_token import MAX_FILE_BYTES, SoftToken, WrongPassphrase
from keyswarm.hardware.token import BadPeerKey, Token, TokenInfo, check_signature, generate_private_key

#: Cheap scrypt for tests; `test_default_scrypt_parameters_round_trip` runs the real cost once.
FAST_LOG2_N = 10
ALGORITHMS = ("ed25519", "p256")


def entropy(seed: int = 1):
    return random.Random(seed).randbytes


def create(path: Path, algorithm: str = "ed25519", passphrase: str | None = None, seed: int = 1) -> SoftToken:
    return SoftToken.create(
        path, algorithm=algorithm, passphrase=passphrase, entropy=entropy(seed), scrypt_log2_n=FAST_LOG2_N
    )


def peer_key_for(token: Token) -> X25519PrivateKey | ec.EllipticCurvePrivateKey:
    if isinstance(token.sealing_public_key(), X25519PublicKey):
        return X25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def raw_private_keys(token: SoftToken) -> list[bytes]:
    payload = token._payload
    assert payload is not None
    return [soft_token._private_bytes(payload.identity), soft_token._private_bytes(payload.sealing)]


# --- keys and operations ------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_created_token_signs_and_agrees_and_reopens_with_the_same_keys(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "node.key"
    token = create(path, algorithm)
    info = token.info()
    assert info == TokenInfo(
        kind="soft", serial=None, firmware=None, identity_algorithm=algorithm, hardware_protected=False
    )
    identity = token.identity_public_key()
    assert isinstance(identity, Ed25519PublicKey if algorithm == "ed25519" else ec.EllipticCurvePublicKey)
    signature = token.sign(b"transcript")
    assert check_signature(identity, signature, b"transcript")
    assert not check_signature(identity, signature, b"transcript!")
    if algorithm == "ed25519":
        assert len(signature) == 64
    else:
        assert signature[0] == 0x30  # DER ECDSA-Sig-Value

    peer = peer_key_for(token)
    ours = token.key_agreement(peer.public_key())
    if isinstance(peer, X25519PrivateKey):
        theirs = peer.exchange(token.sealing_public_key())
    else:
        theirs = peer.exchange(ec.ECDH(), token.sealing_public_key())
    assert ours == theirs and len(ours) == 32

    reopened = SoftToken.open(path)
    assert reopened.identity_public_key() == identity
    assert reopened.sealing_public_key() == token.sealing_public_key()
    assert check_signature(identity, reopened.sign(b"again"), b"again")


def test_same_entropy_gives_the_same_keys(tmp_path: Path) -> None:
    first = create(tmp_path / "a.key", "p256", seed=7)
    second = create(tmp_path / "b.key", "p256", seed=7)
    assert first.identity_public_key() == second.identity_public_key()
    assert first.sealing_public_key() == second.sealing_public_key()


def test_key_agreement_refuses_a_key_of_the_wrong_curve_or_a_degenerate_one(tmp_path: Path) -> None:
    x_token = create(tmp_path / "x.key", "ed25519")
    p_token = create(tmp_path / "p.key", "p256", seed=2)
    with pytest.raises(BadPeerKey, match="X25519"):
        x_token.key_agreement(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(BadPeerKey, match="P-256"):
        p_token.key_agreement(X25519PrivateKey.generate().public_key())
    with pytest.raises(BadPeerKey, match="P-256"):
        p_token.key_agreement(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(BadPeerKey, match="degenerate"):
        x_token.key_agreement(X25519PublicKey.from_public_bytes(bytes(32)))  # low-order point


def test_hmac_sha1_is_stable_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    token = create(path)
    response = token.hmac_sha1(b"challenge")
    assert len(response) == 20
    assert SoftToken.open(path).hmac_sha1(b"challenge") == response
    assert token.hmac_sha1(b"other") != response
    token.hmac_sha1(bytes(63))
    for bad in (b"", bytes(64)):
        with pytest.raises(TokenError, match="1..63"):
            token.hmac_sha1(bad)


def test_certificates_persist_and_unknown_slots_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    token = create(path, passphrase="pw")
    assert token.read_certificate("identity") is None
    token.write_certificate("identity", b"\x30\x03der")
    token.write_certificate("sealing", b"\x30\x01s")
    reopened = SoftToken.open(path, passphrase="pw")
    assert reopened.read_certificate("identity") == b"\x30\x03der"
    assert reopened.read_certificate("sealing") == b"\x30\x01s"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["t.key"], "a rewrite left a temporary file behind"
    with pytest.raises(TokenError, match="unknown certificate slot"):
        token.read_certificate("9a")
    with pytest.raises(TokenError, match="unknown certificate slot"):
        token.write_certificate("attestation", b"x")


def test_an_oversized_certificate_is_refused_and_the_file_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    token = create(path)
    before = path.read_bytes()
    with pytest.raises(TokenError, match="too large"):
        token.write_certificate("identity", bytes(MAX_FILE_BYTES))
    assert path.read_bytes() == before
    assert token.read_certificate("identity") is None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_generate_replaces_keys_and_clears_certificates(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "t.key"
    token = create(path, "ed25519")
    old = token.identity_public_key()
    token.write_certificate("identity", b"\x30\x00")
    token.generate(algorithm=algorithm)
    assert token.identity_public_key() != old
    assert token.info().identity_algorithm == algorithm
    assert token.read_certificate("identity") is None
    reopened = SoftToken.open(path)
    assert reopened.identity_public_key() == token.identity_public_key()
    with pytest.raises(TokenError, match="unknown algorithm"):
        token.generate(algorithm="rsa2048")


def test_closed_token_refuses_every_operation(tmp_path: Path) -> None:
    with create(tmp_path / "t.key") as token:
        pass
    for call in (token.info, token.identity_public_key, lambda: token.sign(b"x"), lambda: token.hmac_sha1(b"x")):
        with pytest.raises(TokenError, match="closed"):
            call()


def test_warning_says_keys_are_not_hardware_protected(tmp_path: Path) -> None:
    token = create(tmp_path / "t.key")
    assert "NOT hardware-protected" in token.warning()
    assert str(tmp_path / "t.key") in token.warning()


def test_token_info_rejects_unknown_kinds_and_algorithms() -> None:
    with pytest.raises(ValueError, match="kind"):
        TokenInfo(kind="hsm", serial=None, firmware=None, identity_algorithm="p256", hardware_protected=True)
    with pytest.raises(ValueError, match="algorithm"):
        TokenInfo(kind="soft", serial=None, firmware=None, identity_algorithm="rsa", hardware_protected=False)


def test_generate_private_key_refuses_a_short_entropy_read() -> None:
    with pytest.raises(AssertionError, match="entropy"):
        generate_private_key("ed25519", lambda n: bytes(n - 1))


# --- the file: permissions -------------------------------------------------------


def test_key_file_is_created_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        create(tmp_path / "t.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.key").stat().st_mode) == 0o600


def test_create_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    path.write_bytes(b"precious")
    with pytest.raises(TokenError, match="already exists"):
        create(path)
    assert path.read_bytes() == b"precious"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "t.key"
    create(path)
    path.chmod(mode)
    with pytest.raises(TokenError, match=f"permissions {mode:04o} are too open.*chmod 600") as info:
        SoftToken.open(path)
    assert str(path) in str(info.value)


def test_a_missing_file_is_token_absent(tmp_path: Path) -> None:
    with pytest.raises(TokenAbsent, match="no such key file"):
        SoftToken.open(tmp_path / "missing.key")


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(TokenError, match="not a regular file"):
        SoftToken.open(tmp_path / "dir")


# --- the file: passphrase ----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_passphrase_protects_the_keys(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "t.key"
    token = create(path, algorithm, passphrase="correct horse")
    data = path.read_bytes()
    for raw in raw_private_keys(token):
        assert raw not in data, "private key bytes stored in clear in a passphrase-protected file"
    assert SoftToken.open(path, passphrase="correct horse").identity_public_key() == token.identity_public_key()
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        SoftToken.open(path, passphrase="battery staple")
    with pytest.raises(WrongPassphrase, match="no passphrase was given"):
        SoftToken.open(path)


def test_wrong_passphrase_is_an_auth_error_not_a_token_error(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path, passphrase="a")
    with pytest.raises(AuthError) as info:
        SoftToken.open(path, passphrase="b")
    assert not isinstance(info.value, TokenError)


def test_a_passphrase_for_an_unprotected_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path)
    with pytest.raises(WrongPassphrase, match="not passphrase-protected"):
        SoftToken.open(path, passphrase="x")


def test_an_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="empty passphrase"):
        create(tmp_path / "t.key", passphrase="")
    assert not (tmp_path / "t.key").exists()


def test_passphrase_is_unicode_normalised(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path, passphrase="caf\u00e9")  # precomposed
    SoftToken.open(path, passphrase="cafe\u0301")  # combining accent


def test_default_scrypt_parameters_round_trip(tmp_path: Path) -> None:
    # The one test that pays the real scrypt cost (N = 2**15, r = 8, p = 1).
    path = tmp_path / "t.key"
    token = SoftToken.create(path, passphrase="pw")
    header = path.read_bytes()[10:13]
    assert header == bytes([15, 8, 1])
    assert SoftToken.open(path, passphrase="pw").identity_public_key() == token.identity_public_key()


# --- the file: damage ---------------------------------------------------------------


def rewrite(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def assert_names_file(path: Path, error: BaseException) -> None:
    assert str(path) in str(error), f"error does not name the file: {error}"


@pytest.mark.parametrize("passphrase", [None, "pw"])
def test_every_truncation_is_a_token_error_naming_the_file(tmp_path: Path, passphrase: str | None) -> None:
    path = tmp_path / "t.key"
    token = create(path, passphrase=passphrase)
    token.write_certificate("identity", b"\x30\x02ok")
    data = path.read_bytes()
    for length in range(len(data)):
        rewrite(path, data[:length])
        with pytest.raises(TokenError) as info:
            SoftToken.open(path, passphrase=passphrase)
        assert_names_file(path, info.value)


def test_any_flipped_byte_of_a_plain_file_opens_or_is_a_token_error(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path, "p256").write_certificate("sealing", b"\x30\x00")
    data = path.read_bytes()
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 0xFF
        rewrite(path, bytes(damaged))
        try:
            SoftToken.open(path)
        except TokenError as exc:
            assert_names_file(path, exc)


def test_damaged_ciphertext_with_the_right_passphrase_is_corrupt_not_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path, passphrase="pw")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    rewrite(path, bytes(data))
    with pytest.raises(TokenError, match="damaged") as info:
        SoftToken.open(path, passphrase="pw")
    assert_names_file(path, info.value)


def test_wrong_magic_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    rewrite(path, b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + bytes(100))
    with pytest.raises(TokenError, match="wrong magic"):
        SoftToken.open(path)


def test_a_newer_format_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path)
    data = bytearray(path.read_bytes())
    data[8] = 2
    rewrite(path, bytes(data))
    with pytest.raises(TokenError, match="version 2 is newer.*upgrade") as info:
        SoftToken.open(path)
    assert_names_file(path, info.value)


def test_an_oversized_file_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path)
    rewrite(path, path.read_bytes() + bytes(MAX_FILE_BYTES))
    with pytest.raises(TokenError, match="larger than 65536 bytes"):
        SoftToken.open(path)


def test_scrypt_parameters_past_the_bounds_are_refused_before_deriving(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path, passphrase="pw")
    data = bytearray(path.read_bytes())
    data[10] = 40  # N = 2**40 would never finish
    rewrite(path, bytes(data))
    with pytest.raises(TokenError, match="scrypt parameters out of range"):
        SoftToken.open(path, passphrase="pw")


def test_unknown_protection_scheme_and_algorithm_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path)
    data = path.read_bytes()
    rewrite(path, data[:9] + b"\x07" + data[10:])
    with pytest.raises(TokenError, match="unknown protection scheme 7"):
        SoftToken.open(path)
    rewrite(path, data[:10] + b"\x09" + data[11:])
    with pytest.raises(TokenError, match="unknown algorithm code 9"):
        SoftToken.open(path)


def test_an_invalid_p256_scalar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path, "p256")
    data = path.read_bytes()
    rewrite(path, data[:11] + bytes(32) + data[43:])  # scalar 0
    with pytest.raises(TokenError, match="not a valid keyswarm key file"):
        SoftToken.open(path)


def test_trailing_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    create(path)
    rewrite(path, path.read_bytes() + b"\x00")
    with pytest.raises(TokenError, match="trailing bytes"):
        SoftToken.open(path)


def test_unprotected_file_layout_is_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    token = create(path, "ed25519")
    data = path.read_bytes()
    identity_raw = token._payload.identity.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert data[:8] == b"KSWTOKEN" and data[8] == 1 and data[9] == 0
    assert data[10] == 1 and data[11:43] == identity_raw
    assert len(data) == 10 + 1 + 32 + 32 + 20 + 4 + 4
