"""The daemon's own listeners closed while asyncio's selector loop holds a TCP
connection it accepted but has made no transport for yet (its accept task's first step
still to run), as tests/transport/test_aio_server_close_accepting.py does for dtp.aio's
server: a forwarder retired by a reload, and the status endpoint stopped. The
connection gets its transport and is dealt with as those accepted before (the
forwarder's tunnel is set up, here failing at once, so the client is closed; the
endpoint closes it unserved), not left half-made with its socket open until the
garbage collector finds it (a ResourceWarning). Real sockets on 127.0.0.1, on asyncio's
selector loop, where the accept task is."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.daemon._forwarder
from dtp.daemon._config import Backend, ForwardConfig
from dtp.daemon._forwarder import Forwarder
from dtp.daemon._state import StatusBook
from dtp.hostid._address import HostAddress
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from tests.daemon.test_status_endpoint import _endpoint
from tests.transport.half_handshakes import closed_by_peer
from tests.transport.test_aio_server_close_accepting import accept_pending


async def _accepted(address: tuple[str, int], clients: list[socket.socket]) -> None:
    """A client connects to ``address``; returns once the loop accepted it and its
    transport is still to be made."""
    clients.append(socket.create_connection(address, timeout=5))
    async with asyncio.timeout(10):
        while not accept_pending():
            await asyncio.sleep(0)


def _on_selector_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> list[str]:
    """Run ``main`` on asyncio's selector loop (whatever DTP_TEST_LOOP says: uvloop has
    no accept task), then collect the garbage; returns the ResourceWarnings seen."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop = asyncio.SelectorEventLoop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.fixture
def forwarder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Forwarder]:
    """A forwarder on a free port of 127.0.0.1 whose tunnels fail at once (their target
    cannot be reached): each client it accepts is closed."""

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OSError("unreachable")

    monkeypatch.setattr(dtp.daemon._forwarder, "connect_forward", unreachable)
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    config = ForwardConfig(
        "f", Backend("127.0.0.1", 0), HostAddress.parse("dtp://0x" + "ab" * 32 + ":80")
    )
    try:
        yield Forwarder(config, ledger, HostIdentity.generate(), StatusBook(tmp_path))
    finally:
        ledger.close()


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    """The test's client sockets, closed when it ends."""
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def test_a_client_accepted_as_a_reload_retires_the_forwarder_is_not_left_open(
    forwarder: Forwarder, clients: list[socket.socket]
) -> None:
    """Its tunnel fails (the target cannot be reached): the client is closed at once,
    as one accepted before the retirement is. Before, the half-made transport held its
    socket: the tunnel's close waited for a transport that never came."""
    closed: list[bool] = []

    async def main() -> None:
        await _accepted(await forwarder.start(), clients)
        forwarder.retire()  # the reload
        closed.append(await asyncio.to_thread(closed_by_peer, clients[0], 5))
        await forwarder.release()
        assert forwarder.server is not None and not forwarder.server.is_serving()
        await forwarder.drain(0.5)

    assert _on_selector_loop(main) == []
    assert closed == [True]
    assert forwarder.stats.errors == 1  # (its tunnel was tried)


def test_a_forwarder_released_frees_its_port_with_a_client_accepted_meanwhile(
    forwarder: Forwarder, clients: list[socket.socket]
) -> None:
    """release() (a reload trading ports): the port can be bound again on return."""

    async def main() -> None:
        address = await forwarder.start()
        await _accepted(address, clients)
        await forwarder.release()
        again = socket.socket()
        try:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(address)
            again.listen()
        finally:
            again.close()
        assert await asyncio.to_thread(closed_by_peer, clients[0], 5)
        await forwarder.drain(0.5)

    assert _on_selector_loop(main) == []


def test_a_client_accepted_as_the_status_endpoint_stops_is_closed_by_its_close(
    clients: list[socket.socket],
) -> None:
    """close() returns once that client is closed, so that an event loop closed right
    after finds it closed."""

    async def main() -> None:
        endpoint = _endpoint()
        await _accepted(await endpoint.listen_tcp("127.0.0.1", 0), clients)
        await endpoint.close()
        # (returning now: the loop is closed with no pass after this one)

    assert _on_selector_loop(main) == []
    assert closed_by_peer(clients[0], within=5)
