"""`revoked_certificates` of AsyncClient.connect: what counts as a fingerprint, and what is refused."""

from __future__ import annotations

import pytest

from keyswarm.client.session import CredentialsError, revoked_fingerprints

FP = bytes(range(32))


def test_fingerprints_come_as_bytes_hex_or_openssls_colon_form() -> None:
    colon = ":".join(f"{b:02X}" for b in FP)
    assert revoked_fingerprints([FP, FP.hex(), FP.hex().upper(), colon, f"  {colon}  "]) == {FP}
    assert revoked_fingerprints([]) == frozenset()


@pytest.mark.parametrize("entry", ["", "zz" * 32, "ab" * 31, "ab" * 33, bytes(31), bytes(33), 12345, None,
                                   "sha1:" + "ab" * 20, "ab" * 32 + "\x00"])
def test_anything_else_is_a_credentials_error_naming_it(entry: object) -> None:
    with pytest.raises(CredentialsError, match="not a SHA-256 fingerprint"):
        revoked_fingerprints([entry])  # type: ignore[list-item]


@pytest.mark.parametrize("entries", [FP.hex(), FP])
def test_one_string_instead_of_a_collection_is_refused(entries: object) -> None:
    with pytest.raises(CredentialsError, match="collection"):
        revoked_fingerprints(entries)  # type: ignore[arg-type]
