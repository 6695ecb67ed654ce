"""Review of dtp.keys' signing and verifying helpers: arguments that are not bytes-like.

``bytes(5)`` is five zero bytes, so before the fix an int given where bytes belong was
taken as that many zero bytes: ``sign(64)`` signed 64 zero bytes, a message of ``5``
verified against a signature over five zero bytes, and ``verify_transaction(tx, 97)``
read 97 zero bytes as a signature by the all-zero key (of small order), which verifies
for any transaction and names a real address as its signer.
"""

from __future__ import annotations

import array
import base64
from pathlib import Path

import pytest

from dtp.errors import KeyFileError
from dtp.keys import (
    SUI_SIGNATURE_SIZE,
    HostIdentity,
    personal_message_digest,
    transaction_digest,
    verify_personal_message,
    verify_transaction,
)

TX = b"\x01transaction bytes"


@pytest.fixture(scope="module")
def alice() -> HostIdentity:
    """A fixed identity, so that failures are reproducible."""
    return HostIdentity.from_private_bytes(bytes(range(32)), bytes(range(32, 64)))


def test_an_int_signature_is_no_transaction_signature(alice: HostIdentity) -> None:
    # Before: 97 zero bytes, the all-zero key's all-zero signature, which verifies under
    # Sui's (ZIP-215) rules: the call returned that key's address instead of raising.
    with pytest.raises(TypeError, match="a Sui signature must be a bytes-like object"):
        verify_transaction(TX, SUI_SIGNATURE_SIZE)
    # bytes-likes of every kind are still read as the bytes they hold
    signature = alice.sign_transaction(TX)
    for form in (signature, bytearray(signature), memoryview(signature)):
        assert verify_transaction(TX, form) == alice.sui_address
    assert verify_transaction(array.array("B", TX), signature) == alice.sui_address


def test_signing_an_int_is_a_type_error(alice: HostIdentity) -> None:
    # Before: each returned a signature over that many zero bytes.
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
    # Before: returned alice's address, as if she had signed the message 5.
    with pytest.raises(TypeError, match="the message must be a bytes-like object"):
        verify_personal_message(5, proof)  # type: ignore[arg-type]
    assert verify_personal_message(bytes(5), proof) == alice.sui_address


def test_a_wallet_base64_signature_string_is_named_as_such(alice: HostIdentity) -> None:
    text = base64.b64encode(alice.sign_personal_message(b"hello")).decode()
    # Before: "string argument without an encoding", which names neither the argument
    # nor what it should be.
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
