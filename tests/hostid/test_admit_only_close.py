"""A metered client's close against a server that only admits through the ledger
(``create_server(..., ledger=...)``, README.md's host-ID snippet), which never settles:
the client's wait for the server's end of the carrier (MeteredClient.close_wait) ends
as soon as that server has read the CLOSE, also when its application holds the
connection open or never accepted it, not at the wait's end. The client then
half-closes the ledger connection itself. A paid server still settles before its end
closes: the client waits for it and sends no half-close of its own (one transaction for
the end, not two)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.payments._serving
import dtp.socket
from dtp.hostid._payment_hook import MeteredClient
from dtp.hostid.paid import PaidSocket
from dtp.ledger._objects import ConnectionState, EventFilter, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._settlement import claim_and_settle, publish_endpoint
from tests.support.ledger_server import identity_from_seed
from tests.support.paid_twins import hosted_ledger

PORT = 7
SERVER = identity_from_seed(0x81)
CLIENT = identity_from_seed(0x82)
# the client's wait for the server's end, made long here (3 s by default), so that a
# close bounded by it alone cannot pass for a prompt one even on a loaded machine
CLOSE_WAIT = 30.0
# a blocking server that does not read learns of the CLOSE at its timer's next pass,
# within a second: the bound leaves room for load
PROMPT = 10.0


@pytest.fixture(autouse=True)
def long_close_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MeteredClient, "close_wait", CLOSE_WAIT)


@pytest.fixture
def book(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host with a service on PORT; a funded client."""
    with hosted_ledger(tmp_path, SERVER, CLIENT, PORT, Sla(10, 5, 1000)) as hosted:
        yield hosted


def half_closes(ledger: LocalLedger, cid: str) -> list[str]:
    """Who half-closed ``cid`` on the ledger."""
    found, _ = ledger.events(filter=EventFilter(type="ConnectionHalfClosed"))
    return [e["by"] for e in found if e["connection"] == cid]


def _blocking_close(ledger: LocalLedger, host_id: str) -> tuple[str, float]:
    """A metered blocking connection, used once: its ID and how long its close took."""
    sock = dtp.socket.create_connection(
        f"dtp://{host_id}:{PORT}", timeout=10, ledger=ledger, identity=CLIENT, deposit=5000
    )
    sock.sendall(b"metered")
    assert sock.recv(7) == b"metered"
    cid = sock.connection_id
    assert cid is not None
    start = time.monotonic()
    sock.close()
    return cid, time.monotonic() - start


def _asyncio_close(ledger: LocalLedger, host_id: str) -> tuple[str, float]:
    """The same over dtp.aio, in an event loop of its own."""

    async def main() -> tuple[str, float]:
        reader, writer = await dtp.aio.open_connection(
            f"dtp://{host_id}:{PORT}", ledger=ledger, identity=CLIENT, deposit=5000, timeout=10
        )
        writer.write(b"metered")
        await writer.drain()
        assert await reader.readexactly(7) == b"metered"
        cid = writer.connection_id
        assert cid is not None
        start = time.monotonic()
        writer.close()
        await writer.wait_closed()
        return cid, time.monotonic() - start

    return asyncio.run(main())


CLIENTS: dict[str, Callable[[LocalLedger, str], tuple[str, float]]] = {
    "blocking": _blocking_close,
    "asyncio": _asyncio_close,
}


def _echo(sock: dtp.socket.DTPSocket) -> None:
    while data := sock.recv(1024):
        sock.sendall(data)


def _answer_once_then_hold(server: dtp.socket.DTPServer, done: threading.Event) -> None:
    """Accept one connection, answer its 7 bytes, then neither read nor close it until
    ``done`` (README.md's snippet accepts nothing at all)."""
    sock, _ = server.accept()
    try:
        sock.sendall(sock.recv(7))
        done.wait(30)
    finally:
        sock.close()


@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize("app", ["reading", "holding"])
def test_a_close_against_a_blocking_admit_only_server_is_prompt(
    book: tuple[LocalLedger, str], client: str, app: str
) -> None:
    ledger, host_id = book
    server = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER, ledger=ledger, host_id=host_id, port=PORT
    )
    publish_endpoint(ledger, SERVER, host_id, server.address)
    done = threading.Event()
    if app == "reading":
        thread = threading.Thread(target=server.serve_forever, args=(_echo,), daemon=True)
    else:
        thread = threading.Thread(target=_answer_once_then_hold, args=(server, done))
    thread.start()
    try:
        cid, took = CLIENTS[client](ledger, host_id)
        assert took < PROMPT
        # the server settles nothing: the client's own half-close starts the timeout
        assert half_closes(ledger, cid) == [CLIENT.sui_address]
        assert ledger.get_connection(cid).state == ConnectionState.HALF_CLOSED
    finally:
        done.set()
        server.close()
        thread.join(10)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_close_against_an_asyncio_admit_only_server_is_prompt(
    book: tuple[LocalLedger, str], client: str
) -> None:
    ledger, host_id = book
    ready = threading.Event()
    stop = threading.Event()
    address: list[Any] = []

    async def echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.write(await reader.readexactly(7))
        await writer.drain()
        await asyncio.to_thread(stop.wait, 30)  # (holds its end: neither reads nor closes)

    async def serve() -> None:
        server = await dtp.aio.start_server(
            echo, "127.0.0.1", 0, identity=SERVER, ledger=ledger, host_id=host_id, dtp_port=PORT
        )
        address.append(server.address)
        ready.set()
        await asyncio.to_thread(stop.wait, 30)
        server.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(10)
        publish_endpoint(ledger, SERVER, host_id, address[0])
        cid, took = CLIENTS[client](ledger, host_id)
        assert took < PROMPT
        assert half_closes(ledger, cid) == [CLIENT.sui_address]
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_paid_blocking_server_still_settles_before_its_end_closes(
    book: tuple[LocalLedger, str], client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow settlement: a client that did not wait for it would half-close meanwhile
    (and pay the gas of a transaction the settlement makes needless)."""
    ledger, host_id = book

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return claim_and_settle(*args, **kwargs)

    monkeypatch.setattr(dtp.payments._serving, "claim_and_settle", slow)

    def echo(sock: PaidSocket) -> None:
        while data := sock.recv(1024):
            sock.sendall(data)

    with dtp.socket.serve(host_id, PORT, echo, ledger=ledger, identity=SERVER) as server:
        cid, _ = CLIENTS[client](ledger, host_id)
        tc = ledger.get_connection(cid)
        assert tc.settled and tc.state == ConnectionState.CLOSED
        assert half_closes(ledger, cid) == []
        assert [c for c, _ in server.settlements] == [cid]
