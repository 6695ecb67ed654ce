"""Sui personal-message signatures (dtp.identity.keys): round trips, rejections, and keys of
small order, which prove no one. (That the two Ed25519 verifiers agree is
tests/identity/test_ed25519.py's.)

dtp.identity.keys' signing and verifying helpers: arguments that are not bytes-like.

An int given where bytes belong is a TypeError: ``bytes(5)`` is five zero bytes, so
taken as bytes ``sign(64)`` would sign 64 zero bytes, a message of ``5`` would verify
against a signature over five zero bytes, and ``verify_transaction(tx, 97)`` would read
97 zero bytes as a signature by the all-zero key (of small order), which verifies for
any transaction and names a real address as its signer."""

from __future__ import annotations

import array
import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.errors import KeyFileError
from dtp.identity import keys
from dtp.identity.keys import (
    SUI_SIGNATURE_SIZE,
    HostIdentity,
    InvalidSignature,
    personal_message_digest,
    transaction_digest,
    verify_personal_message,
    verify_transaction,
)


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
# written out independently of dtp.identity.keys' own derivation.
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


TX = b"\x01transaction bytes"


@pytest.fixture(scope="module")
def alice() -> HostIdentity:
    """A fixed identity, so that failures are reproducible."""
    return HostIdentity.from_private_bytes(bytes(range(32)), bytes(range(32, 64)))


def test_an_int_signature_is_no_transaction_signature(alice: HostIdentity) -> None:
    # an int is never taken for that many zero bytes: 97 of them are the all-zero key's
    # all-zero signature, which verifies under Sui's (ZIP-215) rules
    with pytest.raises(TypeError, match="a Sui signature must be a bytes-like object"):
        verify_transaction(TX, SUI_SIGNATURE_SIZE)
    # bytes-likes of every kind are still read as the bytes they hold
    signature = alice.sign_transaction(TX)
    for form in (signature, bytearray(signature), memoryview(signature)):
        assert verify_transaction(TX, form) == alice.sui_address
    assert verify_transaction(array.array("B", TX), signature) == alice.sui_address


def test_signing_an_int_is_a_type_error(alice: HostIdentity) -> None:
    # an int is never signed as that many zero bytes
    with pytest.raises(TypeError, match="the message must be a bytes-like object, not 'int'"):
        alice.sign(64)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the message must be a bytes-like object"):
        alice.sign_personal_message(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the transaction bytes must be a bytes-like object"):
        alice.sign_transaction(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes-like"):
        personal_message_digest(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes-like"):
        transaction_digest(5)  # type: ignore[arg-type]
    assert alice.sign(bytearray(b"m")) == alice.sign(b"m")


def test_an_int_message_does_not_verify_as_zero_bytes(alice: HostIdentity) -> None:
    proof = alice.sign_personal_message(bytes(5))
    # 5 is not bytes(5): alice did not sign "the message 5"
    with pytest.raises(TypeError, match="the message must be a bytes-like object"):
        verify_personal_message(5, proof)  # type: ignore[arg-type]
    assert verify_personal_message(bytes(5), proof) == alice.sui_address


def test_a_wallet_base64_signature_string_is_named_as_such(alice: HostIdentity) -> None:
    text = base64.b64encode(alice.sign_personal_message(b"hello")).decode()
    # the error names the argument and what it should be (not bytes()'s "string
    # argument without an encoding")
    with pytest.raises(TypeError, match="a Sui signature must be a bytes-like object, not 'str'"):
        verify_personal_message(b"hello", text)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a Sui signature must be a bytes-like object"):
        verify_personal_message(b"hello", None)  # type: ignore[arg-type]
    assert verify_personal_message(b"hello", base64.b64decode(text)) == alice.sui_address


@pytest.mark.parametrize("version", ["true", "1.0"])
def test_an_identity_file_of_a_version_this_never_writes_is_refused(
    alice: HostIdentity, tmp_path: Path, version: str
) -> None:
    """``"version": true`` and ``1.0`` are == 1 in Python and loaded as version 1."""
    path = tmp_path / "id.json"
    alice.save(path, None)
    text = path.read_text(encoding="utf-8")
    assert text.count('"version": 1') == 1
    path.write_text(text.replace('"version": 1', f'"version": {version}'), encoding="utf-8")
    with pytest.raises(KeyFileError, match="identity file version"):
        HostIdentity.load(path, None)
