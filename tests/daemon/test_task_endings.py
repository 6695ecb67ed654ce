"""The daemon's own tasks, ended.

* ServiceHost's drain, connection handlers and UDP flows cancel a helper task (the
  settlement retries, the firewall refresh, a connection's tunnel acceptor, a UDP
  flow's refuser) with one helper, ``dtp.daemon._tasks.cancel_and_wait``, as
  ``BackendPool.stop`` does: a cancel of the *caller* while it waits stays the
  caller's, never swallowed with the helper's CancelledError (where a drain cancelled
  or timed out would go on draining, a handler go on to settle).
* A rate of thousands of digits is named in the error, not lost to a ValueError of its
  repr ("Exceeds the limit (4300 digits)").
* A port with thousands of leading zeros out of range is shown by its digits in the
  config and address errors, not whole.

The daemon's task endings (dtp.daemon._tasks).

* The settlement retries' wait for their wake ends on the drain's cancel, also on
  Python 3.11, whose ``asyncio.wait_for`` returns the wake's result when the cancel
  comes as the wake is set.
* A backend connect ends on the tunnel's cancel (the drain cutting it), also when the
  cancel comes as the connect ends.
* A connection's tunnel acceptor dying of a fault is logged, as the UDP flow's helpers
  are.
* A helper still ending when its waiter is cancelled is watched to its end: an error it
  dies of then is logged, not lost."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any, cast

import pytest

import dtp.aio
import dtp.daemon._udp_flows as udp_flows_module
from dtp.daemon._balancer import BackendPool
from dtp.daemon._config import Backend, ServiceConfig, parse_config
from dtp.daemon._fees import Settled
from dtp.daemon._served import ServedConnection
from dtp.daemon._services import ServiceHost
from dtp.daemon._settlements import Retry
from dtp.daemon._tasks import cancel_and_wait, end_for_cleanup
from dtp.errors import DaemonConfigError
from dtp.hostid._address import HostAddress, InvalidAddress
from dtp.hostid._admission import Admitted
from dtp.ledger._objects import Sla
from dtp.payments._ratelimit import RateLimiter, TokenBucket
from dtp.payments.receipts import ConnectionTerms
from tests.support.scopes import TEST_PACKAGE

FREE = Sla(0, 0, 10_000)


class SlowEnd:
    """A coroutine that waits for good and, cancelled, takes until ``release`` to end
    (a helper task whose ending takes a moment: a stream's close, a ledger read)."""

    def __init__(self) -> None:
        self.ending = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.ending.set()
            await self.release.wait()
            raise


async def cancel_while_ending(caller: asyncio.Task[Any], slow: SlowEnd) -> None:
    """Cancel ``caller`` while it waits for ``slow``'s task to end, and wait for it."""
    await asyncio.wait_for(slow.ending.wait(), 4)
    caller.cancel()
    await asyncio.wait({caller}, timeout=4)
    slow.release.set()  # (the helper then ends in its own time)
    assert caller.done()


class FakeWriter:
    """What a connection handler uses of a DTPStreamWriter; the client never closes,
    nor opens a stream, and whatever waits for either ends slowly when cancelled."""

    def __init__(self, slow: SlowEnd, port: int) -> None:
        self.slow = slow
        self.peer_connection_id = "0x" + "c1" * 32
        self.peer_port = port
        self.closed_by_handler = asyncio.Event()
        self.closes = 0

    def get_extra_info(self, name: str) -> Any:
        return "0x" + "ee" * 32 if name == "peer_address" else None

    def set_datagram_sink(self, sink: Any) -> None:
        pass

    def abort(self, reason: str) -> None:
        raise AssertionError(f"aborted: {reason}")

    def close(self) -> None:
        self.closes += 1

    async def wait_closed(self) -> None:
        await self.closed_by_handler.wait()

    async def accept_stream(self) -> Any:
        return await self.slow.run()


# -- ServiceHost.drain -------------------------------------------------------------------


def test_drain_cancelled_while_the_settlement_retries_end_is_cancelled(
    host: ServiceHost,
) -> None:
    async def main() -> None:
        slow = SlowEnd()
        host.settlements._retry_task = asyncio.ensure_future(slow.run())
        host.settlements.retries["0x1"] = Retry(None, None, 1.0, 0.0)
        await asyncio.sleep(0)
        drainer = asyncio.ensure_future(host.drain(0.0))
        await cancel_while_ending(drainer, slow)
        assert drainer.cancelled()  # (old: it returned)
        # and it went no further: the retries it reports and forgets at the end are kept
        assert list(host.settlements.retries) == ["0x1"]

    asyncio.run(main())


def test_drain_cancelled_while_the_firewall_refresh_ends_is_cancelled(
    host: ServiceHost,
) -> None:
    async def main() -> None:
        slow = SlowEnd()
        host.policy._task = policy = asyncio.ensure_future(slow.run())
        await asyncio.sleep(0)
        drainer = asyncio.ensure_future(host.drain(0.0))
        await cancel_while_ending(drainer, slow)
        assert drainer.cancelled()  # (old: it returned)
        await asyncio.wait({policy}, timeout=4)
        assert policy.cancelled()

    asyncio.run(main())


def test_drain_logs_a_firewall_refresh_that_died_and_goes_on(
    host: ServiceHost,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(as before, but for the raise: a refresh loop dead of a fault is logged; raised,
    it was the drain's own error)"""

    async def main() -> None:
        async def broken() -> None:
            raise RuntimeError("boom")

        host.policy._task = asyncio.ensure_future(broken())
        await asyncio.sleep(0)
        await host.drain(0.0)
        assert host.policy._task is None

    with caplog.at_level(logging.ERROR, logger="dtp.daemon._services"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ["firewall refresh failed"]


# -- a connection's handler and a UDP flow -------------------------------------------------


def serve_free(
    service_host: ServiceHost, monkeypatch: pytest.MonkeyPatch
) -> tuple[ServiceConfig, list[str]]:
    """A free TCP service on ``service_host`` whose connections' settlements are only recorded:
    the service, and the list the settled connection IDs go to."""
    service = ServiceConfig("svc", 7000, (Backend("127.0.0.1", 9),))
    settled: list[str] = []

    class Fees:
        # (ServerFees.terms' signature: the handler passes what the admission read)
        async def terms(
            self, connection_id: str, admitted: Admitted | None = None, *, served: bool = False
        ) -> ConnectionTerms:
            return ConnectionTerms(connection_id, "0x2", FREE, bytes(32), 10_000, TEST_PACKAGE)

    async def settle_served(conn: ServedConnection, *_: Any) -> Settled:
        settled.append(conn.connection_id)
        return Settled(0, 0, done=True)

    service_host.fees = cast(Any, Fees())
    monkeypatch.setattr(service_host.settlements, "settle_served", settle_served)
    service_host.services[service.port] = service
    return service, settled


async def handling(service_host: ServiceHost, writer: FakeWriter) -> asyncio.Future[None]:
    """``service_host``'s handler of ``writer``'s connection, once it serves it."""
    handler = asyncio.ensure_future(
        service_host._handle(
            cast(dtp.aio.DTPStreamReader, None), cast(dtp.aio.DTPStreamWriter, writer)
        )
    )
    for _ in range(100):
        if service_host.conns:
            break
        await asyncio.sleep(0)
    assert service_host.conns
    return handler


def test_handler_cancelled_while_its_tunnel_acceptor_ends_cleans_up_and_is_cancelled(
    host: ServiceHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, settled = serve_free(host, monkeypatch)

    async def main() -> None:
        slow = SlowEnd()
        writer = FakeWriter(slow, service.port)
        handler = await handling(host, writer)
        writer.closed_by_handler.set()  # the connection ends: the handler cleans up
        await cancel_while_ending(handler, slow)
        assert handler.cancelled()  # (old: it returned)
        # the cleanup ran whole first: settled, closed, its slot given back
        assert settled and writer.closes == 1 and not host.conns

    asyncio.run(main())


def test_udp_flow_cancelled_while_its_refuser_ends_cleans_up_and_is_cancelled(
    host: ServiceHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = ServiceConfig("dns", 7053, (Backend("127.0.0.1", 9),), protocol="udp")
    host.services[service.port] = service
    settled: list[str] = []
    relay_end = asyncio.Event()

    async def relay(*_: Any, **__: Any) -> None:
        await relay_end.wait()

    async def settle_served(conn: ServedConnection, *_: Any) -> Settled:
        settled.append(conn.connection_id)
        return Settled(0, 0, done=True)

    monkeypatch.setattr(udp_flows_module, "relay_udp_async", relay)
    monkeypatch.setattr(host.settlements, "settle_served", settle_served)

    async def main() -> None:
        slow = SlowEnd()
        writer = FakeWriter(slow, service.port)
        terms = ConnectionTerms("0x1", "0x2", FREE, bytes(32), 10_000, TEST_PACKAGE)
        conn = ServedConnection("0x1", service, terms, "0x3", cast(dtp.aio.DTPStreamWriter, writer))
        host.conns[conn.connection_id] = conn
        flow = asyncio.ensure_future(
            host.udp_flows.serve(conn, cast(dtp.aio.DTPStreamReader, None))
        )
        await asyncio.sleep(0)
        relay_end.set()  # the flow ends: it stops its helpers
        await cancel_while_ending(flow, slow)
        assert flow.cancelled()  # (old: it returned)
        # the cleanup ran whole first: settled, closed, forgotten
        assert settled == ["0x1"] and writer.closes == 1 and not host.conns

    asyncio.run(main())


# -- errors that name what is wrong ----------------------------------------------------------


def test_rate_of_thousands_of_digits_is_refused_as_a_rate() -> None:
    with pytest.raises(ValueError, match="rate must be a finite number"):
        TokenBucket(10**5000, 0.0)
    with pytest.raises(ValueError, match="rate must be a finite number"):
        RateLimiter(0, -(10**5000))


CONFIG = """\
[daemon]
ledger = "ledger"
identity = "host.key"
listen = "{listen}"
"""


def test_config_port_shown_without_its_leading_zeros() -> None:
    def refusal(listen: str) -> str:
        with pytest.raises(DaemonConfigError) as info:
            parse_config(CONFIG.format(listen=listen), Path("/etc/dtp/dtp.toml"))
        return str(info.value)

    message = refusal("127.0.0.1:" + "0" * 5000 + "70000")
    assert message.endswith("daemon.listen: port 70000 is outside 0..65535")
    assert "port 1234567..." in refusal("127.0.0.1:" + "0" * 20 + "1234567")


def test_address_port_shown_without_its_leading_zeros() -> None:
    with pytest.raises(InvalidAddress, match=r"port 1234567\.\.\."):
        HostAddress.parse("dtp://0x1:" + "0" * 20 + "1234567")


BOUND = 3.0  # (what a wait that should end at once is given before the test fails)


# -- the settlement retries ---------------------------------------------------------------


def test_drain_ends_the_settlement_retries_woken_as_it_cancels_them(
    host: ServiceHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tried: list[str] = []

    async def settle(connection_id: str, *_: Any, **__: Any) -> Settled:
        tried.append(connection_id)
        return Settled(0, 0)

    monkeypatch.setattr(host.settlements, "settle", settle)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        host.settlements.retries["0x1"] = Retry(None, None, 1.0, loop.time() + 1000.0)
        host.settlements._retry_task = retries = asyncio.ensure_future(
            host.settlements._retry_loop()
        )
        for _ in range(5):  # (until it waits for its wake)
            await asyncio.sleep(0)
        # a failed settlement wakes it in the same turn as the drain begins
        host.settlements._retry_wake.set()
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
        assert tunnel.cancelled()  # (not the connection returned, the tunnel going on)
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
    host: ServiceHost,
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

    with caplog.at_level(logging.ERROR, logger="dtp.daemon._services"):
        asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage() == "tunnel acceptor failed"]
    assert len(failed) == 1  # (logged once, with the fault)
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

    with caplog.at_level(logging.ERROR, logger="dtp.daemon._tasks"):
        asyncio.run(main())
    failed = [r for r in caplog.records if r.name == "dtp.daemon._tasks"]
    assert len(failed) == 1  # (said once, by the helper that gave up waiting)
    assert "failed while ending" in cast(Any, failed[0]).fields["error"]
    assert not unretrieved
