"""Ed25519 verification for the ledger's checks (dtp.identity._ed25519): fastcrypto, as Sui
validators run it, and cryptography's OpenSSL agree on valid signatures, on every one-bit
change, and on the malformed and edge cases below; LocalLedger's transaction check
refuses what dtp.identity.keys.verify_transaction refuses."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.identity import _ed25519 as _ed25519
from dtp.identity.keys import HostIdentity, InvalidSignature, verify_transaction

VERIFIERS = [v for v in (_ed25519.verify_fastcrypto, _ed25519.verify_openssl) if v is not None]
# the group order of Ed25519
L = 2**252 + 27742317777372353535851937790883648493


def both(public: bytes, signature: bytes, message: bytes) -> bool:
    results = {verify(public, signature, message) for verify in VERIFIERS}
    assert len(results) == 1, (public.hex(), signature.hex(), message.hex())
    return results.pop()


def test_the_fast_verifier_is_in_use() -> None:
    assert _ed25519.verify_fastcrypto is not None  # pysui brings it
    assert _ed25519.verify is _ed25519.verify_fastcrypto


@settings(max_examples=40, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=200))
def test_valid_signatures_and_every_bit_flip(seed: bytes, message: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes_raw()
    signature = key.sign(message)
    assert both(public, signature, message)
    for index in range(0, 64, 7):
        bad = bytearray(signature)
        bad[index] ^= 1 << (index % 8)
        assert not both(public, bytes(bad), message)
    for index in range(0, 32, 5):
        bad = bytearray(public)
        bad[index] ^= 1 << (index % 8)
        assert not both(bytes(bad), signature, message)
    assert not both(public, signature, message + b"x")


def test_edge_cases_agree() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = key.public_key().public_bytes_raw()
    message = b"edge"
    signature = key.sign(message)
    s = int.from_bytes(signature[32:], "little")
    # S not reduced mod L (malleability): rejected
    assert not both(public, signature[:32] + (s + L).to_bytes(32, "little"), message)
    # public keys that are not points, or not canonically encoded: rejected
    assert not both(b"\xff" * 32, signature, message)
    assert not both((2**255 - 19 + 1).to_bytes(32, "little"), signature, message)
    # keys and R of small order (the neutral element, orders 4 and 2), where ZIP-215
    # and RFC 8032 part (under ZIP-215 the all-zero signature verifies every message
    # for a small-order key): rejected by both
    for small in (b"\x01" + bytes(31), bytes(32), (2**255 - 20).to_bytes(32, "little")):
        for tried in (b"edge", b"a", b"b", b"c", b"d"):
            assert not both(small, bytes(64), tried)
            assert not both(small, small + bytes(32), tried)
        assert not both(public, small + signature[32:], message)
    # malformed lengths: rejected, not raised
    assert not both(public, signature[:63], message)
    assert not both(public[:31], signature, message)
    assert not both(b"", b"", message)


def test_transaction_check_refuses_what_it_must() -> None:
    # LocalLedger checks every transaction's signature with dtp.identity.keys.verify_transaction,
    # whose Ed25519 step is dtp.identity._ed25519.verify
    identity = HostIdentity.from_private_bytes(bytes(32), bytes(range(32)))
    other = HostIdentity.from_private_bytes(bytes([1]) * 32, bytes(range(32)))
    tx = b"transaction bytes"
    signature = identity.sign_transaction(tx)
    assert verify_transaction(tx, signature) == identity.sui_address
    bad_cases = [
        (tx + b"!", signature),
        (tx, b""),
        (tx, b"\x01" + signature[1:]),  # another scheme
        (tx, signature[:-1]),
        (tx, signature[:65] + other.ed25519_public),  # someone else's key
        (tx, signature[:5] + bytes([signature[5] ^ 1]) + signature[6:]),
    ]
    for data, sig in bad_cases:
        with pytest.raises(InvalidSignature):
            verify_transaction(data, sig)
