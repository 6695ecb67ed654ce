"""zkLogin identity proofs, which a Sui node confirms (docs/protocol.md 8.4), through real
servers on TCP: the asyncio and the blocking server ask their ``zklogin_verifier`` after
the proof checked out otherwise and before their hooks, IK message 2 first; a client is
in when the node confirms it, and refused with HANDSHAKE_FAILED and the reason when the
node refuses, when the proof's last epoch is past, when no node answers within the
handshake, when the server has no verifier or only a LocalLedger (ZkLoginUnsupported).
A SuiLedger asks its node (the stand-in here, which answers VerifySignature for every
scheme but zkLogin's Groth16 proof, and says so); the node verifier's epoch rule alone."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError, HandshakeError, ZkLoginRefused, ZkLoginUnsupported
from dtp.identity._zklogin import (
    MAX_EPOCH_AHEAD,
    NodeVerifier,
    ZkLoginCheck,
    epoch_refusal,
)
from dtp.identity.wallets import MultiSigWallet, Secp256k1Wallet
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.protocol.connection import ConnectionConfig
from dtp.testing._loops import LoopThread
from dtp.testing.sui_node import SuiNodeStandIn
from tests.identity.zklogin_servers import (
    SERVER,
    ZK,
    Node,
    connect,
    refused,
    serve_aio,
    zklogin_wallet,
)


@pytest.fixture(params=["IK", "XX"])
def ik(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "IK")


def test_a_zklogin_client_the_node_confirms_is_served(ik: bool) -> None:
    node = Node()
    seen, stop = serve_aio(NodeVerifier(node))
    wallet = zklogin_wallet()
    try:
        assert connect(stop.port, wallet, ik) == b"hello"  # type: ignore[attr-defined]
    finally:
        stop()
    assert seen == [wallet.sui_address]
    ((message, signature, address),) = node.asked
    assert address == wallet.sui_address
    assert message.startswith(b"DTP-AUTH-IK-V1" if ik else b"DTP-AUTH-V1")
    assert signature == wallet.sign_personal_message(message)


def test_a_multisig_with_a_zklogin_member_goes_to_the_node_whole() -> None:
    node = Node()
    zk, k1 = zklogin_wallet(), Secp256k1Wallet(bytes([0x11] * 32))
    members = [(*MultiSigWallet.member_of(zk), 1), (*MultiSigWallet.member_of(k1), 1)]
    wallet = MultiSigWallet(members, 2, [k1, zk])
    seen, stop = serve_aio(NodeVerifier(node))
    try:
        assert connect(stop.port, wallet) == b"hello"  # type: ignore[attr-defined]
    finally:
        stop()
    assert seen == [wallet.sui_address]
    ((_message, signature, address),) = node.asked
    assert address == wallet.sui_address and signature[0] == 0x03
    # an offline-only multisig asks nobody
    plain = MultiSigWallet(members, 1, [k1])
    node.asked.clear()
    seen, stop = serve_aio(NodeVerifier(node))
    try:
        assert connect(stop.port, plain) == b"hello"  # type: ignore[attr-defined]
    finally:
        stop()
    assert seen == [plain.sui_address] and node.asked == []


def test_a_zklogin_proof_the_node_refuses_fails_the_handshake(ik: bool) -> None:
    node = Node(valid=False, reason="Groth16 proof verify failed")
    error = refused(NodeVerifier(node), "Groth16 proof verify failed", ik)
    assert "identity proof rejected: ZkLoginRefused" in str(error)
    assert len(node.asked) == 1


def test_an_expired_zklogin_proof_is_refused_without_asking(ik: bool) -> None:
    node = Node(epoch=ZK["max_epoch"] + 1)
    refused(NodeVerifier(node), "lasted to epoch 10, and the network is in epoch 11", ik)
    assert node.asked == []


def test_no_answer_within_the_handshake_refuses_the_proof() -> None:
    node = Node()
    node.release.clear()  # the node holds the call
    try:
        # (the server's handshake lasts 2 s, the client's 20: the server's refusal it is)
        refused(NodeVerifier(node), "no answer from the Sui node", handshake_timeout=2.0)
    finally:
        node.release.set()


def test_a_server_without_a_node_refuses_zklogin_proofs(ik: bool) -> None:
    refused(None, "a zkLogin proof is verified by a Sui node, and this server has none", ik)


def test_a_local_ledger_refuses_zklogin_proofs_with_its_typed_error() -> None:
    ledger = LocalLedger(":memory:")
    try:
        refused(ledger, "ZkLoginUnsupported: LocalLedger cannot verify the zkLogin proof")
        check = ZkLoginCheck(b"m", b"\x05", "0x" + "00" * 32, (1,))
        with pytest.raises(ZkLoginUnsupported, match="has none"):
            ledger.verify_zklogin(check)
    finally:
        ledger.close()


@pytest.fixture
def standin() -> Iterator[SuiNodeStandIn]:
    with SuiNodeStandIn(clock_ms=0) as node:
        yield node


def test_a_sui_ledger_asks_its_node(standin: SuiNodeStandIn) -> None:
    ledger = SuiLedger(SuiConfig(standin.url, standin.package_id, timeout=10.0))
    try:
        refused(ledger, "this node stand-in verifies no zkLogin proof")
        assert standin.calls["VerifySignature"] == 1 and standin.calls["GetEpoch"] >= 1
        # the node's VerifySignature of the other schemes, through the same request
        wallet = Secp256k1Wallet(bytes([0x11] * 32))
        node = ledger._node
        message = b"DTP-AUTH-V1" + bytes(32)
        proof = wallet.sign_personal_message(message)
        assert node.verify_signature(message, proof, wallet.sui_address) == (True, "")
        valid, reason = node.verify_signature(message + b"!", proof, wallet.sui_address)
        assert not valid and "does not verify" in reason
        valid, reason = node.verify_signature(message, proof, "0x" + "ab" * 32)
        assert not valid and "does not match derived address" in reason
    finally:
        ledger.close()


def test_the_blocking_server_asks_the_node_too() -> None:
    for node, words in ((Node(), None), (Node(valid=False, reason="bad proof"), "bad proof")):
        server = dtp.socket.create_server(
            ("127.0.0.1", 0),
            identity=SERVER,
            config=ConnectionConfig(
                identity=SERVER, is_client=False, zklogin_verifier=NodeVerifier(node)
            ),
        )
        port = server.address[1]
        served: list[str] = []

        def serve(server: Any = server, served: list[str] = served) -> None:
            with contextlib.suppress(DTPError):  # (after a refusal: the server's close)
                conn, address = server.accept(timeout=20)
                with conn:
                    served.append(address)
                    conn.sendall(conn.recv(100))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            if words is None:
                assert connect(port, zklogin_wallet()) == b"hello"
            else:
                with pytest.raises(HandshakeError, match=words):
                    connect(port, zklogin_wallet())
        finally:
            server.close()
            thread.join(30)
        assert served == ([zklogin_wallet().sui_address] if words is None else [])
        assert len(node.asked) == 1


def test_the_epoch_rule() -> None:
    assert epoch_refusal((10,), 10) is None and epoch_refusal((10, 12), 3) is None
    assert "lasted to epoch 9" in (epoch_refusal((10, 9), 10) or "")
    assert epoch_refusal((5 + MAX_EPOCH_AHEAD,), 5) is None
    assert "more than 30 epochs" in (epoch_refusal((6 + MAX_EPOCH_AHEAD,), 5) or "")
    with pytest.raises(ZkLoginRefused, match="lasted"):
        NodeVerifier(Node(epoch=50)).verify_zklogin(ZkLoginCheck(b"", b"", "0x0", (10,)))


def test_a_paid_server_asks_its_own_ledger(tmp_path: Any) -> None:
    """A paid server's zkLogin verifier is its ledger unless its config names another: on
    a LocalLedger, the typed refusal, before any ledger admission runs."""
    from dtp.hostid.paid._server_core import ServerOptions
    from dtp.ledger._objects import Sla

    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        ledger.faucet(SERVER.sui_address, 10**6)
        host = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host, 8, "echo", Sla(0, 25, 100))
        loops = LoopThread()

        async def handler(r: dtp.aio.DTPStreamReader, w: dtp.aio.DTPStreamWriter) -> None:
            w.close()

        served = loops.run(
            dtp.aio.serve(
                host,
                8,
                handler,
                ledger=ledger,
                identity=SERVER,
                receipts=tmp_path / "receipts.db",
                address=("127.0.0.1", 0),
            )
        )
        try:
            port = served.server.sockets[0].getsockname()[1]
            with pytest.raises(HandshakeError, match="ZkLoginUnsupported: LocalLedger"):
                connect(port, zklogin_wallet())
        finally:

            async def close() -> None:
                served.close()
                await served.wait_closed()

            loops.run(close())
            loops.close()
        # and a config naming a verifier keeps it
        mine = NodeVerifier(Node())
        options = ServerOptions.checked(
            SERVER,
            address=("127.0.0.1", 0),
            endpoint=None,
            policy=None,
            config=ConnectionConfig(identity=SERVER, is_client=False, zklogin_verifier=mine),
            backlog=8,
            max_handshakes=8,
            max_handshakes_per_address=None,
            max_waiting_per_address=8,
            open_grace=None,
            ledger=ledger,
        )
        assert options.config is not None and options.config.zklogin_verifier is mine
    finally:
        ledger.close()
