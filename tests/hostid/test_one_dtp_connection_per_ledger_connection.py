"""A server admitting through the ledger serves one DTP connection per ledger connection
at a time: more on one would each count once against the host's connection limits,
which the ledger checks only as a connection opens. Once the first ends, its ID may be
served again (the ledger connection is still Open: a client reconnecting)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionRefused
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol.connection import ConnectionConfig
from tests.support.polling import wait_for

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
PORT = 443


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dtp.socket.DTPServer, ConnectionConfig, list[int]]]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, PORT, "echo", Sla(10, 5, 1000))
    ledger.set_client_limits(SERVER, host, 1, 0, 0)  # one connection per client
    ledger.faucet(CLIENT.sui_address, 100_000)
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    opened = ledger.open_connection(CLIENT, host, PORT, cap, 1000)
    config = ConnectionConfig(
        identity=CLIENT,
        is_client=True,
        connection_id=bytes.fromhex(opened.connection_id[2:]),
        port=PORT,
    )
    live = [0]

    def echo(sock: dtp.socket.DTPSocket) -> None:
        live[0] += 1
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        finally:
            live[0] -= 1

    server = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER, ledger=ledger, host_id=host, port=PORT
    )
    thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        yield server, config, live
    finally:
        server.close()
        thread.join(10)
        ledger.close()


def _connect(server: dtp.socket.DTPServer, config: ConnectionConfig) -> dtp.socket.DTPSocket:
    return dtp.socket.create_connection(
        server.address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT, config=config
    )


def test_a_second_dtp_connection_on_one_ledger_connection_is_refused(
    served: tuple[dtp.socket.DTPServer, ConnectionConfig, list[int]],
) -> None:
    server, config, live = served
    with _connect(server, config) as first:
        first.sendall(b"x")
        assert first.recv(1) == b"x"
        with pytest.raises(ConnectionRefused, match="already served"):
            _connect(server, config)
        assert live[0] == 1
    # the first one ended: its ledger connection (still Open) may be served again
    assert wait_for(lambda: live[0] == 0)
    assert wait_for(lambda: len(server._serving) == 0)
    with _connect(server, config) as again:
        again.sendall(b"y")
        assert again.recv(1) == b"y"


def test_the_asyncio_server_serves_one_dtp_connection_per_ledger_connection(
    tmp_path: Path,
) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, PORT, "echo", Sla(10, 5, 1000))
    ledger.faucet(CLIENT.sui_address, 100_000)
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    opened = ledger.open_connection(CLIENT, host, PORT, cap, 1000)
    config = ConnectionConfig(
        identity=CLIENT,
        is_client=True,
        connection_id=bytes.fromhex(opened.connection_id[2:]),
        port=PORT,
    )

    async def echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await dtp.aio.start_server(
            echo, "127.0.0.1", 0, identity=SERVER, ledger=ledger, host_id=host, dtp_port=PORT
        )
        try:
            address = server.address

            async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
                return await dtp.aio.open_connection(
                    *address,
                    server_key=SERVER.noise_public,
                    identity=CLIENT,
                    config=config,
                    timeout=10,
                )

            reader, writer = await connect()
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            with pytest.raises(ConnectionRefused, match="already served"):
                await connect()
            writer.close()
            await writer.wait_closed()
            for _ in range(500):  # the server's end closes a moment later
                if not len(server._serving):
                    break
                await asyncio.sleep(0.01)
            reader, writer = await connect()  # served again once the first ended
            writer.write(b"y")
            assert await reader.readexactly(1) == b"y"
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    try:
        asyncio.run(main())
    finally:
        ledger.close()
