"""dtp.aio's server on the ledger carrier alone against asyncio.Server: wait_closed()
waits until it is closed, start_server(start_serving=False) starts its listener only
in start_serving(). On a LocalLedger file; the host publishes no endpoint."""

from __future__ import annotations

import asyncio
import threading

import pytest

import dtp.aio
from tests.support.ledger_carrier_world import (
    PORT,
    SERVER,
    Host,
    host,  # noqa: F401 (a fixture)
)
from tests.support.polling import wait_for


def _listeners(before: set[int | None]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.ident not in before and t.name == "dtp-ledger-listener"
    ]


def test_a_ledger_servers_wait_closed_waits_until_it_is_closed(
    host: Host,  # noqa: F811 (the fixture)
) -> None:
    book, host_id = host.ledger, host.host_id
    before = {t.ident for t in threading.enumerate()}

    async def main() -> None:
        server = await dtp.aio.start_server(
            lambda r, w: None,
            None,
            None,
            identity=SERVER,
            ledger=book,
            host_id=host_id,
            dtp_port=PORT,
            start_serving=False,
        )
        assert not server.is_serving() and not _listeners(before)
        await server.start_serving()
        assert server.is_serving() and _listeners(before)
        waiting = asyncio.ensure_future(server.wait_closed())
        with pytest.raises(TimeoutError):  # (it returned at once, the server open)
            await asyncio.wait_for(asyncio.shield(waiting), 0.2)
        server.close()
        await asyncio.wait_for(waiting, 5)
        assert not server.is_serving()
        await server.wait_closed()  # (closed: at once)

    asyncio.run(main())
    assert wait_for(lambda: not _listeners(before), 10), _listeners(before)


def test_close_does_not_hold_the_event_loop_for_a_slow_ledger_read(
    host: Host,  # noqa: F811 (the fixture)
) -> None:
    """close() joined the ledger listener's thread for up to 5 s, on the event loop,
    while that thread sat in a ledger read (a Sui node's event poll can take seconds);
    it now only tells the thread to stop, and wait_closed() joins it in a thread."""
    book, host_id = host.ledger, host.host_id
    before = {t.ident for t in threading.enumerate()}
    reading = threading.Event()
    release = threading.Event()
    real_wait_events = book.wait_events

    def slow_wait_events(*args: object, **kwargs: object) -> object:
        reading.set()
        release.wait(600)  # a ledger read that takes its time
        return real_wait_events(*args, **kwargs)  # type: ignore[arg-type]

    book.wait_events = slow_wait_events  # type: ignore[method-assign]

    async def main() -> None:
        server = await dtp.aio.start_server(
            lambda r, w: None,
            None,
            None,
            identity=SERVER,
            ledger=book,
            host_id=host_id,
            dtp_port=PORT,
        )
        assert await asyncio.to_thread(reading.wait, 30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        server.close()
        held = loop.time() - started
        release.set()
        await asyncio.wait_for(server.wait_closed(), 30)
        assert held < 2.5, f"close() held the event loop {held:.1f} s"

    try:
        asyncio.run(main())
    finally:
        release.set()
    assert wait_for(lambda: not _listeners(before), 10), _listeners(before)
