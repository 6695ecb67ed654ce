"""What the zkLogin tests share: the zkLogin wallet of docs/protocol.md 8.4's vector, a Sui
node as NodeVerifier asks one (its answers set by the test), an asyncio echo server on
TCP with a zkLogin verifier, and a blocking client whose wallet signs its proof."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import HandshakeError
from dtp.identity.keys import HostIdentity
from dtp.identity.wallets import ZkLoginWallet
from dtp.protocol.connection import ConnectionConfig
from tests.support.polling import wait_for
from tests.support.vectors import load_vectors

(ZK,) = [v for v in load_vectors("identity-proof-scheme") if v["name"] == "identity-proof-zklogin"]
CLIENT = HostIdentity.generate()
SERVER = HostIdentity.generate()


def zklogin_wallet() -> ZkLoginWallet:
    ephemeral = HostIdentity.from_private_bytes(
        bytes.fromhex(ZK["ephemeral_ed25519_seed"]), bytes(32)
    )
    return ZkLoginWallet(json.loads(json.dumps(ZK["inputs"])), ZK["max_epoch"], ephemeral)


class Node:
    """A Sui node as NodeVerifier asks one: its epoch, and its answer to VerifySignature,
    both as the test sets them (what a real node would answer about Groth16 proofs is
    the live test's, tests/identity/test_zklogin_live.py); it records what it is asked,
    and can be held (a node that does not answer)."""

    endpoint = "test-node"

    def __init__(self, epoch: int = 3, valid: bool = True, reason: str = "") -> None:
        self.epoch, self.valid, self.reason = epoch, valid, reason
        self.asked: list[tuple[bytes, bytes, str]] = []
        self.release = threading.Event()
        self.release.set()

    def epoch_info(self) -> tuple[int, int]:
        return self.epoch, 1000

    def verify_signature(
        self, message: bytes, signature: bytes, address: str, *, jwks: Any = ()
    ) -> tuple[bool, str]:
        self.asked.append((message, signature, address))
        self.release.wait(30)
        return self.valid, self.reason


def serve_aio(verifier: Any, **config: Any) -> tuple[list[str], Any]:
    """An asyncio echo server with ``verifier`` in a loop thread: (addresses served, stop)."""
    seen: list[str] = []
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        seen.append(writer.get_extra_info("peer_address"))
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    cfg = ConnectionConfig(identity=SERVER, is_client=False, zklogin_verifier=verifier, **config)
    server = asyncio.run_coroutine_threadsafe(
        dtp.aio.start_server(echo, "127.0.0.1", 0, identity=SERVER, config=cfg), loop
    ).result(30)

    def stop() -> None:
        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    stop.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    stop.server = server  # type: ignore[attr-defined]
    return seen, stop


def connect(port: int, wallet: Any, ik: bool = True) -> bytes:
    """A blocking client whose proof ``wallet`` signs: what the echo sends back."""
    config = ConnectionConfig(identity=CLIENT, is_client=True, wallet=wallet)
    with dtp.socket.create_connection(
        ("127.0.0.1", port),
        identity=CLIENT,
        server_key=SERVER.noise_public if ik else None,
        config=config,
        timeout=20,
    ) as sock:
        sock.sendall(b"hello")
        return sock.recv(100)


def refused(verifier: Any, words: str, ik: bool = True, **config: Any) -> Any:
    """A server with ``verifier`` fails the zkLogin client's handshake, ``words`` in the
    reason the client reads, counting one failed handshake and serving nobody."""
    seen, stop = serve_aio(verifier, **config)
    try:
        with pytest.raises(HandshakeError, match=words) as caught:
            connect(stop.port, zklogin_wallet(), ik)  # type: ignore[attr-defined]
        server = stop.server  # type: ignore[attr-defined]
        assert wait_for(lambda: server.handshakes_failed == 1, timeout=10)
    finally:
        stop()
    assert seen == []
    return caught.value
