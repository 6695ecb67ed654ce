"""dtp.aio.open_connection by host ID, cancelled while a worker thread makes what the
connect needs (a ledger carrier's bridge): what the thread makes once the await is
cancelled is released, not leaked with its thread. On a LocalLedger file; the host
publishes no endpoint, so the connection goes over the ledger carrier."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.hostid._asyncio
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.transport.asyncio._threads import threaded_or_released
from tests.support.admitting_servers import start_admitting
from tests.support.ledger_server import identity_from_seed
from tests.support.polling import wait_for

PORT = 7
SERVER = identity_from_seed(0x61)
CLIENT = identity_from_seed(0x62)


def _client_bridges() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dtp-ledger-client-")]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host with no endpoint and a service on PORT; a funded client."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 1000))
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    try:
        yield ledger, host_id
    finally:
        ledger.close()


def test_a_connect_cancelled_while_its_ledger_bridge_starts_leaks_no_bridge(
    ledger: tuple[LocalLedger, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled (asyncio.wait_for, task.cancel) while connect_ledger_carrier runs in
    its thread: the bridge it then returns is released (its socket closed, so its
    thread ends). It was dropped with its thread running and its sockets open."""
    book, host_id = ledger
    started = threading.Event()
    release = threading.Event()
    made = threading.Event()
    real = dtp.hostid._asyncio.connect_ledger_carrier

    def slow_bridge(*args: Any, **kw: Any) -> Any:
        started.set()
        release.wait(10)  # the cancel comes meanwhile
        try:
            return real(*args, **kw)
        finally:
            made.set()

    monkeypatch.setattr(dtp.hostid._asyncio, "connect_ledger_carrier", slow_bridge)

    async def main() -> None:
        task = asyncio.ensure_future(
            dtp.aio.open_connection(
                f"dtp://{host_id}:{PORT}", ledger=book, identity=CLIENT, deposit=5000, timeout=30
            )
        )
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        await asyncio.sleep(0)  # the cancel reaches the task, waiting for the thread
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the thread finishes after the cancel: let its result come in
        assert await asyncio.to_thread(made.wait, 10)
        # the bridge it made is released on the loop, and its thread ends
        async with asyncio.timeout(10):
            while _client_bridges():
                await asyncio.sleep(0.01)

    asyncio.run(main())


def test_threaded_or_released_releases_what_comes_after_a_cancel() -> None:
    """The helper both connects by host ID use (the ledger bridge, and the early TCP
    connect's socket): a value made after the await was cancelled is released."""
    made = threading.Event()
    go = threading.Event()
    released: list[socket.socket] = []
    a, b = socket.socketpair()
    b.close()

    def make() -> socket.socket:
        made.set()
        go.wait(10)
        return a

    def release(sock: socket.socket) -> None:
        sock.close()
        released.append(sock)

    async def main() -> None:
        task = asyncio.ensure_future(threaded_or_released(make, release))
        assert await asyncio.to_thread(made.wait, 10)
        task.cancel()
        await asyncio.sleep(0)
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(10):
            while not released:
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert released == [a] and a.fileno() == -1


def test_the_loop_ending_with_a_ledger_server_open_stops_its_listener(
    ledger: tuple[LocalLedger, str],
) -> None:
    """asyncio.run ends with a server on the ledger carrier still open: the listener's
    thread stops with the loop. It watched the ledger on for good (and would have
    handed connections to a closed loop)."""
    book, host_id = ledger
    before = {t.ident for t in threading.enumerate()}

    def listeners() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t.ident not in before and t.name == "dtp-ledger-listener"
        ]

    async def main() -> None:
        await dtp.aio.start_server(
            lambda r, w: None,
            None,
            None,
            identity=SERVER,
            ledger=book,
            host_id=host_id,
            dtp_port=PORT,
        )
        assert listeners()  # running; the server is left open as main returns

    asyncio.run(main())
    assert wait_for(lambda: not listeners(), 10), listeners()


def test_the_loop_ending_with_a_paid_server_open_closes_it(
    ledger: tuple[LocalLedger, str], tmp_path: Path
) -> None:
    """asyncio.run ends with a dtp.aio.serve() server still open: it is closed as
    close() does, so its receipt writer's thread stops and the receipt store it opened
    is closed (the thread ran on, the store and the listening socket stayed open)."""
    book, host_id = ledger
    before = {t.ident for t in threading.enumerate()}
    servers: list[Any] = []

    def writers() -> list[threading.Thread]:
        return [
            t for t in threading.enumerate() if t.ident not in before and t.name == "dtp-receipts"
        ]

    async def main() -> None:
        server = await dtp.aio.serve(
            host_id,
            PORT,
            lambda r, w: None,
            ledger=book,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
        )
        servers.append(server)
        assert writers()  # running; the server is left open as main returns

    asyncio.run(main())
    assert wait_for(lambda: not writers(), 10), writers()
    assert servers[0].server.sockets == ()


def test_a_server_whose_ledger_listener_fails_leaves_no_tcp_listener(
    ledger: tuple[LocalLedger, str],
) -> None:
    """start_server on TCP and the ledger carrier for a host the identity is not the
    authority of (though the Host publishes its Noise key): NotAuthorized, and the TCP
    listener it had started is closed (it listened on, unreachable through the server
    nobody got)."""
    from dtp.errors import NotAuthorized
    from tests.support.leaks import resource_warnings

    book, host_id = ledger
    stranger = identity_from_seed(0x63)
    book.set_noise_static_key(SERVER, host_id, stranger.noise_public)

    async def main() -> None:
        with pytest.raises(NotAuthorized):
            await start_admitting(stranger, book, host_id, PORT, carriers=("tcp", "ledger"))

    left = resource_warnings(lambda: asyncio.run(main()))
    assert [m for m in left if "unclosed" in m] == []
