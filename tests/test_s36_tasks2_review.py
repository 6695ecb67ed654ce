"""Second reading of the daemon's task endings (session 36, dtp.daemon._tasks).

* The settlement retries waited for their wake in ``asyncio.wait_for``, which on
  Python 3.11 returns the wake's result when the cancel comes as the wake is set: the
  drain's cancel was swallowed, the loop went on, and the drain waited for it for good.
* A backend connect in ``asyncio.wait_for`` swallowed the tunnel's cancel (the drain
  cutting it) when it came as the connect ended: the tunnel went on.
* A connection's tunnel acceptor dying of a fault said nothing (the UDP flow's helpers
  were logged).
* A helper still ending when its waiter was cancelled ended unwatched: an error it died
  of then was lost (asyncio's "Task exception was never retrieved" at best).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any, cast

import pytest

from dtp.daemon._tasks import cancel_and_wait, end_for_cleanup
from dtp.daemon.balancer import BackendPool
from dtp.daemon.config import Backend
from dtp.daemon.fees import Settled
from dtp.daemon.services import ServiceHost, _Retry
from tests.test_s36_small2_review import (
    FakeWriter,
    SlowEnd,
    handling,
    host,  # noqa: F401 (a fixture)
    serve_free,
)

BOUND = 3.0  # (what a wait that should end at once is given before the test fails)


# -- the settlement retries ---------------------------------------------------------------


def test_drain_ends_the_settlement_retries_woken_as_it_cancels_them(
    host: ServiceHost,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tried: list[str] = []

    async def settle(connection_id: str, *_: Any, **__: Any) -> Settled:
        tried.append(connection_id)
        return Settled(0, 0)

    monkeypatch.setattr(host, "_settle", settle)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        host._retries["0x1"] = _Retry(None, None, 1.0, loop.time() + 1000.0)
        host._retry_task = retries = asyncio.ensure_future(host._retry_loop())
        for _ in range(5):  # (until it waits for its wake)
            await asyncio.sleep(0)
        # a failed settlement wakes it in the same turn as the drain begins
        host._retry_wake.set()
        async with asyncio.timeout(BOUND):  # (old: the drain waited for the loop)
            await host.drain(0.0)
        assert retries.cancelled()
        assert not tried

    asyncio.run(main())


# -- a backend connect --------------------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_backend_connect_cancelled_as_it_connects_is_cancelled() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        connecting = asyncio.Event()
        connected: asyncio.Future[None] = loop.create_future()
        transport = _Transport()

        async def create_connection(factory: Any, *_: Any) -> tuple[Any, Any]:
            connecting.set()
            try:
                await connected
            except asyncio.CancelledError:
                transport.close()  # (as the loop's closes its socket)
                raise
            return transport, factory()

        cast(Any, loop).create_connection = create_connection
        pool = BackendPool("svc", (Backend("127.0.0.1", 9),), 10.0, 5.0)
        tunnel = asyncio.ensure_future(pool.connect(asyncio.Protocol))
        await asyncio.wait_for(connecting.wait(), BOUND)
        connected.set_result(None)  # the connect ends ...
        tunnel.cancel()  # ... as the drain cuts the tunnel
        await asyncio.wait({tunnel}, timeout=BOUND)
        assert tunnel.cancelled()  # (old: it returned the connection, and went on)
        assert transport.closed

    asyncio.run(main())


# -- a connection's tunnel acceptor ------------------------------------------------------------


class _Writer(FakeWriter):
    """What a connection handler uses of a DTPStreamWriter; accepting a stream fails of
    a fault, and the connection ends when ``ended`` is set."""

    def __init__(self, port: int) -> None:
        super().__init__(SlowEnd(), port)
        self.ended = self.closed_by_handler

    async def accept_stream(self) -> Any:
        raise RuntimeError("accept broke")


def test_a_tunnel_acceptor_that_died_of_a_fault_is_logged(
    host: ServiceHost,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, settled = serve_free(host, monkeypatch)

    async def main() -> None:
        writer = _Writer(service.port)
        handler = await handling(host, writer)
        writer.ended.set()
        await asyncio.wait_for(handler, BOUND)
        assert settled and writer.closes == 1

    with caplog.at_level(logging.ERROR, logger="dtp.daemon.services"):
        asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage() == "tunnel acceptor failed"]
    assert len(failed) == 1  # (old: nothing said)
    assert "accept broke" in cast(Any, failed[0]).fields["error"]


# -- helpers still ending when their waiter is cancelled -----------------------------------


class _FailsSlowly:
    """A helper that, cancelled, takes until ``release`` to end, then fails."""

    def __init__(self) -> None:
        self.ending = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.ending.set()
            await self.release.wait()
            raise RuntimeError("failed while ending") from None


@pytest.mark.parametrize("ending", ["cancel_and_wait", "end_for_cleanup"])
def test_a_helper_failing_after_its_waiter_was_cancelled_is_logged(
    ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    unretrieved: list[dict[str, Any]] = []

    async def scenario() -> None:
        helper = _FailsSlowly()
        task = asyncio.ensure_future(helper.run(), loop=asyncio.get_running_loop())
        await asyncio.sleep(0)
        if ending == "cancel_and_wait":
            waiter: asyncio.Future[Any] = asyncio.ensure_future(cancel_and_wait(task))
        else:
            waiter = asyncio.ensure_future(end_for_cleanup(task))
        await asyncio.wait_for(helper.ending.wait(), BOUND)
        waiter.cancel()
        await asyncio.wait({waiter}, timeout=BOUND)
        assert waiter.done()
        if ending == "cancel_and_wait":
            assert waiter.cancelled()
        else:
            errors, cancelled = waiter.result()
            assert errors == [] and cancelled is not None
        helper.release.set()
        await asyncio.wait({task}, timeout=BOUND)
        assert task.done()

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: unretrieved.append(c))
        await scenario()
        gc.collect()  # (an error never retrieved is reported as its task goes)
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="dtp.daemon.tasks"):
        asyncio.run(main())
    failed = [r for r in caplog.records if r.name == "dtp.daemon.tasks"]
    assert len(failed) == 1  # (old: nothing said)
    assert "failed while ending" in cast(Any, failed[0]).fields["error"]
    assert not unretrieved
