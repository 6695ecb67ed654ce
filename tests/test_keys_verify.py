"""Sui personal-message signatures (dtp.keys): round trips, rejections, and keys of
small order, which prove no one. (That the two Ed25519 verifiers agree is
tests/test_ed25519.py's.)"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp import keys
from dtp.keys import HostIdentity, InvalidSignature, verify_personal_message


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
