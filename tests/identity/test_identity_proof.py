"""The identity proof functions take bytes only: an int digest or proof was turned into
that many zero bytes (bytes(32)) and signed or checked as such."""

from __future__ import annotations

import pytest

from dtp.identity._noise import AUTH_PROOF_SIZE, make_auth_proof, verify_auth_proof
from dtp.identity.keys import HostIdentity

ALICE = HostIdentity.from_private_bytes(bytes([7]) * 32, bytes([8]) * 32)


@pytest.mark.parametrize("digest", [32, None, "x" * 32])
def test_a_digest_that_is_not_bytes_is_a_type_error(digest: object) -> None:
    with pytest.raises(TypeError, match="session_digest"):
        make_auth_proof(ALICE, digest)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="session_digest"):
        verify_auth_proof(bytes(AUTH_PROOF_SIZE), digest)  # type: ignore[arg-type]


@pytest.mark.parametrize("proof", [AUTH_PROOF_SIZE, None, "x" * AUTH_PROOF_SIZE])
def test_a_proof_that_is_not_bytes_is_a_type_error(proof: object) -> None:
    with pytest.raises(TypeError, match="proof"):
        verify_auth_proof(proof, bytes(32))  # type: ignore[arg-type]


def test_bytes_like_still_work() -> None:
    digest = bytes(range(32))
    proof = make_auth_proof(ALICE, bytearray(digest), early=True)
    assert verify_auth_proof(memoryview(proof), digest, early=True) == ALICE.sui_address
