"""docs/protocol.md 8.4's identity-proof vectors of every Sui scheme: each proves the
address it says (and no more: a zkLogin one waits on a Sui node), the refused ones are
refused for the rule they break, this package's wallets (dtp.identity.wallets) derive
the same keys and addresses from the same secrets -- byte for byte where the scheme is
deterministic --, and Mysten's TypeScript SDK still makes exactly these bytes
(web/dtp-client/scripts/wallet-vectors.mjs, where node and the SDK are installed).
Signatures Mysten's Rust SDK published (a browser passkey's transaction, a Secp256r1
personal message) verify too."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import pytest

from dtp.errors import HandshakeError
from dtp.identity._noise import check_auth_proof, verify_auth_proof
from dtp.identity._schemes import InvalidSignature, check_signature
from dtp.identity.keys import (
    HostIdentity,
    personal_message_digest,
    verify_personal_message,
    verify_transaction,
)
from dtp.identity.wallets import (
    MultiSigWallet,
    Secp256k1Wallet,
    Secp256r1Wallet,
    SoftwarePasskey,
    ZkLoginWallet,
)
from tests.support.vectors import load_vectors
from tests.web.browser_client import need_client, node_command

SCHEMES = {v["name"]: v for v in load_vectors("identity-proof-scheme")}
REFUSED = {v["name"]: v for v in load_vectors("identity-proof-refused")}
#: The IK binding every vector's message is made of (section 8.4's identity-proof-ik).
(IK,) = (v for v in load_vectors("identity-proof") if v["name"] == "identity-proof-ik")
BOUND = bytes.fromhex(IK["bound"])


def _fields(v: dict[str, Any]) -> tuple[bytes, bytes]:
    return bytes.fromhex(v["proof"]), bytes.fromhex(v["message"])


def test_there_is_a_vector_of_every_scheme_and_every_refusal() -> None:
    assert {v["scheme"] for v in SCHEMES.values()} == {
        "secp256k1",
        "secp256r1",
        "passkey",
        "multisig",
        "zklogin",
    }
    assert set(REFUSED) == {
        f"identity-proof-refused-{n}"
        for n in (
            "high-s",
            "flag",
            "another-key",
            "multisig-threshold",
            "multisig-extra-bit",
            "multisig-trailing",
        )
    }
    for v in [*SCHEMES.values(), *REFUSED.values()]:
        assert v["message"] == IK["message"]  # the IK message of the Ed25519 vector


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_each_scheme_vector_proves_its_address(name: str) -> None:
    v = SCHEMES[name]
    proof, message = _fields(v)
    digest = personal_message_digest(message)
    assert digest.hex() == v["digest"]
    signer = check_signature(proof, digest)
    assert signer.address == v["address"]
    assert signer.scheme == v["scheme"]
    assert signer.public_key.hex() == v["public_key"]
    assert (signer.node_check is not None) == v["node"]
    # as the handshake checks it (IK, version 2), and not under version 1
    proven = check_auth_proof(proof, BOUND, early=True)
    assert proven.address == v["address"]
    with pytest.raises(HandshakeError, match="transport version 1 takes only"):
        check_auth_proof(proof, BOUND, early=True, version=1)
    if v["node"]:
        # verified here in all but its Groth16 proof: no address without a node
        assert signer.node_check is not None and signer.node_check.address == v["address"]
        assert signer.node_check.max_epochs == (10,)
        with pytest.raises(HandshakeError, match="verified by a Sui node"):
            verify_auth_proof(proof, BOUND, early=True)
    else:
        assert verify_auth_proof(proof, BOUND, early=True) == v["address"]
        assert verify_personal_message(message, proof) == v["address"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_refused_vectors_are_refused(name: str) -> None:
    v = REFUSED[name]
    proof, message = _fields(v)
    words = {
        "identity-proof-refused-high-s": "high s",
        "identity-proof-refused-flag": "does not verify",
        "identity-proof-refused-another-key": "does not verify",
        "identity-proof-refused-multisig-threshold": "under its threshold",
        "identity-proof-refused-multisig-extra-bit": "2 signatures whose bitmap names 3",
        "identity-proof-refused-multisig-trailing": "1 bytes after the value",
    }[name]
    with pytest.raises(InvalidSignature, match=words):
        check_signature(proof, personal_message_digest(message))
    with pytest.raises(HandshakeError, match=words):
        check_auth_proof(proof, BOUND, early=True)


def _message() -> bytes:
    return bytes.fromhex(IK["message"])


def test_the_ecdsa_and_passkey_wallets_have_the_vectors_keys() -> None:
    digest = personal_message_digest(_message())
    for cls, name in (
        (Secp256k1Wallet, "identity-proof-secp256k1"),
        (Secp256r1Wallet, "identity-proof-secp256r1"),
    ):
        v = SCHEMES[name]
        wallet = cls(bytes.fromhex(v["secret_key"]))
        assert wallet.sui_address == v["address"]
        assert wallet.public_key.hex() == v["public_key"]
        # (its own nonce: another signature, proving the same address)
        proof = wallet.sign_personal_message(_message())
        assert len(proof) == 98 and proof[65:].hex() == v["public_key"]
        assert check_signature(proof, digest).address == v["address"]
    v = SCHEMES["identity-proof-passkey"]
    passkey = SoftwarePasskey(bytes.fromhex(v["secret_key"]), origin=v["origin"])
    assert passkey.sui_address == v["address"]
    assert check_signature(passkey.sign_personal_message(_message()), digest).scheme == "passkey"


def _members(v: dict[str, Any]) -> list[Any]:
    made = {
        "ed25519": lambda s: HostIdentity.from_private_bytes(s, bytes(32)),
        "secp256k1": Secp256k1Wallet,
        "secp256r1": Secp256r1Wallet,
    }
    return [made[m["scheme"]](bytes.fromhex(m["secret_key"])) for m in v["members"]]


def test_the_multisig_wallet_has_the_vectors_key_and_address() -> None:
    v = SCHEMES["identity-proof-multisig"]
    members = _members(v)
    signers = [members[i] for i in v["signers"]]
    wallet = MultiSigWallet(
        [
            (*MultiSigWallet.member_of(w), m["weight"])
            for w, m in zip(members, v["members"], strict=True)
        ],
        v["threshold"],
        signers[::-1],  # (in any order: they sign in the members' order)
    )
    assert wallet.sui_address == v["address"]
    assert wallet.public_key_bytes().hex() == v["public_key"]
    proof = wallet.sign_personal_message(_message())
    # the same layout: two signatures (tags 1 and 2), then the bitmap 0b110 and the key
    assert proof[:3] == bytes.fromhex(v["proof"])[:3] == bytes([3, 2, 1])
    assert proof.endswith(bytes([0b110, 0]) + bytes.fromhex(v["public_key"]))
    assert check_signature(proof, personal_message_digest(_message())).address == v["address"]


def _zklogin_wallet() -> ZkLoginWallet:
    v = SCHEMES["identity-proof-zklogin"]
    ephemeral = HostIdentity.from_private_bytes(
        bytes.fromhex(v["ephemeral_ed25519_seed"]), bytes(32)
    )
    return ZkLoginWallet(v["inputs"], v["max_epoch"], ephemeral)


def test_the_zklogin_wallets_make_the_vectors_bytes() -> None:
    v = SCHEMES["identity-proof-zklogin"]
    wallet = _zklogin_wallet()
    assert wallet.iss == v["iss"] == "https://id.twitch.tv/oauth2"
    assert wallet.sui_address == v["address"]
    assert wallet.public_identifier.hex() == v["public_key"]
    assert wallet.sign_personal_message(_message()).hex() == v["proof"]
    # the multisig of the zkLogin account and the Ed25519 key, signed by the former
    m = SCHEMES["identity-proof-multisig-zklogin"]
    ed = _members(SCHEMES["identity-proof-multisig"])[0]
    multisig = MultiSigWallet(
        [(*MultiSigWallet.member_of(wallet), 1), (*MultiSigWallet.member_of(ed), 1)], 1, [wallet]
    )
    assert multisig.sui_address == m["address"]
    assert multisig.sign_personal_message(_message()).hex() == m["proof"]


def test_mystens_sdk_makes_the_vectors_again() -> None:
    need_client()
    out = subprocess.run(
        node_command("scripts/wallet-vectors.mjs"), capture_output=True, timeout=120, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    made = {v["name"]: v for v in map(json.loads, out.stdout.splitlines())}
    assert made == {**SCHEMES, **REFUSED}


def test_signatures_from_mystens_rust_sdk_verify() -> None:
    """sui-crypto's fixtures: a transaction a browser passkey signed, and a Secp256r1
    personal-message signature (RFC 6979), which the Python wallet makes again."""
    tx = base64.b64decode(
        "AAAAACdZawPnpJRjmVcwDu6xrIumtq5NLO+6GHbs0iGdCoD7AQ0T0TolicYERdSvyCRjSSduDZLbSpBsZBoib+"
        "lF48EBcgAAAAAAAAAgpQr/Mudl9BdzyBdkbqTlqBw4/aJ21kAD/jpJKa05im4nWWsD56SUY5lXMA7usayLpra"
        "uTSzvuhh27NIhnQqA++gDAAAAAAAAgIQeAAAAAAAA"
    )
    passkey = base64.b64decode(
        "BiVJlg3liA6MaHQ0Fw9kdmBbj+SuuaKGMseZXPO6gx2XYx0AAAAAhgF7InR5cGUiOiJ3ZWJhdXRobi5nZXQiLCJj"
        "aGFsbGVuZ2UiOiJXellBZmVvbHcweU15bEFheDRvbzNjVC1rdEVaM0xmenZXcURqakxKZVRvIiwib3JpZ2luIjoi"
        "aHR0cDovL2xvY2FsaG9zdDo1MTczIiwiY3Jvc3NPcmlnaW4iOmZhbHNlfWICfOgpQ38QYao9Gj0/bqmWYNkuxvbu"
        "N3lz4uzFcXeVMEVivX41eC9H+tk+UnvUvKzThtf+uMLFzerU0zZLi8le4QJJsAUcyjsP/1UPAesax8UOC14M62Fj"
        "AqtqaR46wR7jCg=="
    )
    sender = "0x" + tx[4:36].hex()  # (TransactionData V1: kind, then the sender)
    assert verify_transaction(tx, passkey) == sender
    with pytest.raises(InvalidSignature):
        verify_transaction(tx[:-1] + b"\x01", passkey)
    key = bytes.fromhex("a72c740033ddfeb3d22c5dc47d9b555e1d290d3c3b844554b0d94d311971767d")
    r1 = base64.b64decode(
        "AlqWPdkIE2bZAUquKv2Tdh9i+Ih+rVSQXH/YsgvwkmeOJR0YLjL/kadivoPtiQkvZBQ1ZI8eDZxe8SaLniwoT88D"
        "h+/vAuGf1UrouFTdefpBEWn3apy8x3EexN5c5ESzGDc="
    )
    wallet = Secp256r1Wallet(key)
    assert verify_personal_message(b"hello", r1) == wallet.sui_address
    assert r1[65:] == wallet.public_key
