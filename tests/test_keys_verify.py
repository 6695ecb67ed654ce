"""Ed25519 verification of Sui signatures (dtp.keys): fastcrypto, as Sui validators
run it, and cryptography's OpenSSL agree on valid signatures, on every one-bit change,
and on the malformed and edge cases below."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp import keys
from dtp.keys import HostIdentity, InvalidSignature, verify_personal_message

VERIFIERS = [keys._ed25519_verify_fastcrypto, keys._ed25519_verify_openssl]
# the group order of Ed25519
L = 2**252 + 27742317777372353535851937790883648493


def both(public: bytes, signature: bytes, message: bytes) -> bool:
    results = {verify(public, signature, message) for verify in VERIFIERS}
    assert len(results) == 1, (public.hex(), signature.hex(), message.hex())
    return results.pop()


def test_the_fast_verifier_is_in_use() -> None:
    assert keys._ed25519_verify is keys._ed25519_verify_fastcrypto


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
    # malformed lengths: rejected, not raised
    assert not both(public, signature[:63], message)
    assert not both(public[:31], signature, message)
    # The neutral element as a public key takes R = neutral, S = 0 for any message
    # under both rules (its Sui address is one nobody holds a key to).
    neutral = b"\x01" + bytes(31)
    assert both(neutral, neutral + bytes(32), message)


def test_personal_message_round_trip_and_rejections() -> None:
    identity = HostIdentity.from_private_bytes(bytes(32), bytes(range(32)))
    proof = identity.sign_personal_message(b"hello")
    assert verify_personal_message(b"hello", proof) == identity.sui_address
    with pytest.raises(InvalidSignature):
        verify_personal_message(b"hellO", proof)
    tampered = bytearray(proof)
    tampered[10] ^= 4
    with pytest.raises(InvalidSignature):
        verify_personal_message(b"hello", bytes(tampered))


# The eight points of small order, canonically encoded (y, with the sign of x on top),
# written out independently of dtp.keys' own derivation.
_P = 2**255 - 19
_ORDER_8_Y = 0x05FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826
SMALL_ORDER = [y.to_bytes(32, "little") for y in (1, _P - 1, 0, _ORDER_8_Y, _P - _ORDER_8_Y)] + [
    (y | 1 << 255).to_bytes(32, "little") for y in (0, _ORDER_8_Y, _P - _ORDER_8_Y)
]


def test_small_order_keys_are_recognised_in_every_encoding() -> None:
    for public in SMALL_ORDER:
        assert keys.has_small_order(public), public.hex()
        y = int.from_bytes(public, "little") & ((1 << 255) - 1)
        if y + _P < 1 << 255:  # the non-canonical encoding of the same y
            assert keys.has_small_order((y + _P).to_bytes(32, "little"))
    real = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not keys.has_small_order(real)


@settings(max_examples=200, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_no_real_key_has_small_order(seed: bytes) -> None:
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert not keys.has_small_order(public)


@pytest.mark.parametrize("public", SMALL_ORDER, ids=lambda b: b.hex()[:8])
def test_proofs_from_small_order_keys_are_rejected(public: bytes) -> None:
    # R = the key itself and S = 0 is what verifies for such keys without any secret
    # (always for the neutral element, often for the others); as a DTP proof or
    # receipt it must never count, whatever the Ed25519 library says.
    for r in (public, bytes(32), b"\x01" + bytes(31)):
        forged = bytes([keys.ED25519_FLAG]) + r + bytes(32) + public
        for message in (b"hello", b"DTP-AUTH-IK-V1" + bytes(32)):
            with pytest.raises(InvalidSignature, match="small order"):
                verify_personal_message(message, forged)
