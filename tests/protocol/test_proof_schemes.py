"""The handshake with an identity proof of each Sui scheme (docs/protocol.md 8.2, 8.4):
a client whose wallet is Secp256k1, Secp256r1, a passkey or a multisig is proven as its
wallet's address in IK and in XX, under transport version 2, while an Ed25519 client
still offers version 1; a proof by another key, under a wrong scheme flag or of a
multisig under its threshold fails the handshake (no reply in IK, CLOSE 10 in XX); a
zkLogin proof leaves the server with what to ask a Sui node; the version rules hold
both ways, and a proof larger than IK's first message holds is refused by its client."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from dtp.errors import HandshakeError
from dtp.identity._noise import AUTH_CONTEXT, AUTH_EARLY_CONTEXT, MAX_AUTH_PROOF_SIZE
from dtp.identity._schemes import check_signature
from dtp.identity.keys import HostIdentity, personal_message_digest
from dtp.identity.wallets import (
    MultiSigWallet,
    Secp256k1Wallet,
    Secp256r1Wallet,
    SoftwarePasskey,
    ZkLoginWallet,
)
from dtp.protocol._events import PeerAuthenticated
from dtp.protocol.connection import CloseCode, Connection, ConnectionConfig, _parse_params
from tests.support.pairs import (
    CLIENT_ID,
    SERVER_ID,
    carries_both_ways,
    connect,
    establish,
    make_pair,
)
from tests.support.vectors import load_vectors

K1 = Secp256k1Wallet(bytes([0x11] * 32))
R1 = Secp256r1Wallet(bytes([0x22] * 32))
PASSKEY = SoftwarePasskey(bytes([0x33] * 32))
OTHER_K1 = Secp256k1Wallet(bytes([0x44] * 32))
MEMBERS = [
    (*MultiSigWallet.member_of(w), weight) for w, weight in ((CLIENT_ID, 1), (K1, 1), (R1, 2))
]
MULTISIG = MultiSigWallet(MEMBERS, 3, [K1, R1])
WALLETS: dict[str, Any] = {
    "secp256k1": K1,
    "secp256r1": R1,
    "passkey": PASSKEY,
    "multisig": MULTISIG,
}
(ZK,) = [v for v in load_vectors("identity-proof-scheme") if v["name"] == "identity-proof-zklogin"]


def _zklogin(seed: int | None = None) -> ZkLoginWallet:
    inputs = json.loads(json.dumps(ZK["inputs"]))
    if seed is not None:
        inputs["addressSeed"] = str(seed)
    ephemeral = HostIdentity.from_private_bytes(
        bytes.fromhex(ZK["ephemeral_ed25519_seed"]), bytes(32)
    )
    return ZkLoginWallet(inputs, ZK["max_epoch"], ephemeral)


class _Altered:
    """A wallet that sends another's proof, changed by ``change``."""

    def __init__(self, wallet: Any, change: Any) -> None:
        self.wallet, self.change = wallet, change
        self.sui_address = wallet.sui_address

    def sign_personal_message(self, message: bytes) -> bytes:
        return bytes(self.change(self.wallet.sign_personal_message(message)))


FORGERIES: dict[str, tuple[Any, str]] = {
    # the signature of K1, the key (and so the address) of another
    "another key": (_Altered(K1, lambda p: p[:65] + OTHER_K1.public_key), "does not verify"),
    # a Secp256k1 proof under the Secp256r1 flag
    "wrong flag": (_Altered(K1, lambda p: b"\x02" + p[1:]), "secp256r1"),
    # the multisig signed by its Secp256k1 member alone: weight 1 of 3
    "under threshold": (MultiSigWallet(MEMBERS, 3, [K1]), "under its threshold 3"),
}


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
@pytest.mark.parametrize("name", sorted(WALLETS))
def test_a_wallet_of_each_scheme_proves_its_address(name: str, ik: bool) -> None:
    wallet = WALLETS[name]
    c, s, link = connect(ik=ik, wallet=wallet)
    assert c.conn.established and s.conn.established
    (auth,) = s.of(PeerAuthenticated)
    assert isinstance(auth, PeerAuthenticated)
    assert auth.address == wallet.sui_address == s.conn.peer_address
    assert auth.scheme == name == s.conn.peer_scheme
    assert auth.zklogin is None
    assert auth.address != CLIENT_ID.sui_address  # the wallet's, not the Noise identity's
    assert c.conn.transport_version == s.conn.transport_version == 2
    assert s.conn.peer_params["v"] == 2 and c.conn.peer_params["v"] == 2
    carries_both_ways(link, c, s)


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_an_ed25519_client_still_offers_version_1(ik: bool) -> None:
    for wallet in (None, CLIENT_ID):  # its own key, or named as its wallet
        c, s, _link = connect(ik=ik, wallet=wallet)
        assert c.conn.established
        (auth,) = s.of(PeerAuthenticated)
        assert isinstance(auth, PeerAuthenticated)
        assert auth.scheme == "ed25519" and auth.public_key == CLIENT_ID.ed25519_public
        assert c.conn.transport_version == s.conn.transport_version == 1
        assert s.conn.peer_params["v"] == 1 and c.conn.peer_params["v"] == 1


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_proof_that_fails_fails_the_handshake(forgery: str, ik: bool) -> None:
    wallet, words = FORGERIES[forgery]
    c, s, _link = connect(ik=ik, wallet=wallet)
    assert not c.conn.established and not s.of(PeerAuthenticated)
    server_end = s.conn.termination
    assert server_end is not None and server_end.error_code == CloseCode.HANDSHAKE_FAILED
    assert "identity proof rejected" in server_end.reason and words in server_end.reason
    if ik:  # no keys yet: nothing goes back, the client hears nothing (8.6) and gives up
        assert s.conn.data_to_send(0.0) == b""
        client_end = c.conn.termination
        assert client_end is not None and not client_end.by_peer
        assert client_end.reason == "handshake timed out"
    else:  # a CLOSE under the transport keys, with the reason
        client_end = c.conn.termination
        assert client_end is not None and client_end.by_peer
        assert client_end.error_code == CloseCode.HANDSHAKE_FAILED
        assert words in client_end.reason


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_a_zklogin_proof_leaves_the_server_what_to_ask_a_sui_node(ik: bool) -> None:
    wallet = _zklogin()
    client, server = make_pair(ik=ik, wallet=wallet)
    _c, s, _link = establish(client, server, accept=False)
    (auth,) = s.of(PeerAuthenticated)
    assert isinstance(auth, PeerAuthenticated)
    assert auth.scheme == "zklogin" and auth.address == wallet.sui_address
    check = auth.zklogin
    assert check is not None and s.conn.peer_address == wallet.sui_address
    assert check.address == wallet.sui_address and check.max_epochs == (ZK["max_epoch"],)
    if ik:  # what the proof signs: the context, then the IK binding (32 bytes)
        assert check.message[:-32] == AUTH_EARLY_CONTEXT and len(check.message) == 46
    else:
        assert server.handshake_hash is not None
        assert check.message == AUTH_CONTEXT + server.handshake_hash
    # the proof the client sent, which signs exactly that message (all but its Groth16 part)
    assert check.signature == wallet.sign_personal_message(check.message)
    signer = check_signature(check.signature, personal_message_digest(check.message))
    assert signer.address == check.address
    assert not server.established  # the server's driver asks the node, then decides


def test_a_client_that_offered_version_1_cannot_prove_another_scheme() -> None:
    class OffersOne(Connection):
        def _offered_version(self) -> int:
            return 1

    config = ConnectionConfig(
        identity=CLIENT_ID, is_client=True, server_static=SERVER_ID.noise_public, wallet=K1
    )
    client = OffersOne(config, ephemeral_key=bytes(range(32)), now=0.0)
    _, server = make_pair()
    _c, s, _link = establish(client, server)
    end = s.conn.termination
    assert end is not None and end.error_code == CloseCode.HANDSHAKE_FAILED
    assert "transport version 1 takes only the 97-byte Ed25519 form" in end.reason


def test_a_version_1_server_is_found_out_before_message_3_in_xx() -> None:
    """A server that answers ``v`` = 1 to a client whose proof is Secp256k1: the client
    fails its handshake itself, before message 3 (its static key) goes out."""

    class VersionOne(Connection):
        def _offered_version(self) -> int:
            return 1

    client, _ = make_pair(ik=False, wallet=K1)
    server = VersionOne(
        ConnectionConfig(identity=SERVER_ID, is_client=False), ephemeral_key=bytes(32), now=0.0
    )
    c, s, _link = establish(client, server)
    end = c.conn.termination
    assert end is not None and end.error_code == CloseCode.HANDSHAKE_FAILED
    assert "transport version 1, which takes only Ed25519" in end.reason
    assert s.conn.handshake_hash is None and not s.of(PeerAuthenticated)  # no message 3


def test_a_proof_larger_than_ik_message_1_holds_is_refused_by_its_client() -> None:
    members = [_zklogin(seed) for seed in (1, 2, 3, 4, 5)]
    wallet = MultiSigWallet([(*MultiSigWallet.member_of(m), 1) for m in members], 5, members)
    assert len(wallet.sign_personal_message(b"x" * 46)) > MAX_AUTH_PROOF_SIZE == 3840
    # IK: the client's first message is written as it is made: it is never made
    with pytest.raises(HandshakeError, match="at most 3840"):
        make_pair(wallet=wallet)
    # XX: the proof is made from message 2; the handshake fails before message 3 goes out
    client, server = make_pair(ik=False, wallet=wallet)
    c, s, _link = establish(client, server)
    end = c.conn.termination
    assert end is not None and end.error_code == CloseCode.HANDSHAKE_FAILED
    assert "at most 3840" in end.reason
    assert s.conn.handshake_hash is None and not s.of(PeerAuthenticated)


def test_the_auth_parameter_takes_1_to_3840_bytes() -> None:
    base = {"v": 2, "md": 1, "msd": 1, "ms": 1, "it": 1}
    for size in (1, 97, 98, 3840):
        assert (
            len(
                _parse_params(msgpack.packb({**base, "auth": bytes(size)}), from_client=True)[
                    "auth"
                ]
            )
            == size
        )
    for size in (0, 3841):
        with pytest.raises(HandshakeError, match="'auth' must be 1 to 3840 bytes"):
            _parse_params(msgpack.packb({**base, "auth": bytes(size)}), from_client=True)
    # a client takes version 1 or the 2 it offered, no more
    assert _parse_params(msgpack.packb({**base, "v": 1}), offered=2)["v"] == 1
    with pytest.raises(HandshakeError, match="version 2"):
        _parse_params(msgpack.packb(base), offered=1)
