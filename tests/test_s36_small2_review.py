"""Second reading of the small-modules fix (session 36): the daemon's own tasks, ended.

* ServiceHost's drain, connection handlers and UDP flows cancelled a helper task (the
  settlement retries, the firewall refresh, a connection's tunnel acceptor, a UDP flow's
  refuser) and awaited it in a ``suppress(CancelledError)``: a cancel of the *caller*
  while it waited was passed on to the helper, whose CancelledError was then swallowed,
  and the caller went on as if never cancelled (a drain cancelled or timed out went on
  draining; a handler went on to settle) -- the defect the fix mended in
  ``BackendPool.stop``, now one helper (``dtp.daemon._tasks.cancel_and_wait``).
* A rate of thousands of digits: its repr, taken for the error, raised a ValueError of
  its own ("Exceeds the limit (4300 digits)") that named no rate.
* A port with thousands of leading zeros out of range was shown whole in the config
  error (and the address error showed its zeros, not its digits).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import pytest

import dtp.aio
import dtp.daemon.services as services_module
from dtp.address import HostAddress, InvalidAddress
from dtp.admission import Admitted
from dtp.chain.objects import Sla
from dtp.daemon.config import Backend, ServiceConfig, parse_config
from dtp.daemon.fees import Settled
from dtp.daemon.services import ServiceHost, _Conn, _Retry
from dtp.errors import DaemonConfigError
from dtp.escrow import ConnectionTerms
from dtp.ratelimit import RateLimiter, TokenBucket
from tests.test_s26_daemon_unpaid_hold import host  # noqa: F401 (a fixture)

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
    host: ServiceHost,  # noqa: F811 (the fixture)
) -> None:
    async def main() -> None:
        slow = SlowEnd()
        host._retry_task = asyncio.ensure_future(slow.run())
        host._retries["0x1"] = _Retry(None, None, 1.0, 0.0)
        await asyncio.sleep(0)
        drainer = asyncio.ensure_future(host.drain(0.0))
        await cancel_while_ending(drainer, slow)
        assert drainer.cancelled()  # (old: it returned)
        # and it went no further: the retries it reports and forgets at the end are kept
        assert list(host._retries) == ["0x1"]

    asyncio.run(main())


def test_drain_cancelled_while_the_firewall_refresh_ends_is_cancelled(
    host: ServiceHost,  # noqa: F811 (the fixture)
) -> None:
    async def main() -> None:
        slow = SlowEnd()
        host._policy_task = policy = asyncio.ensure_future(slow.run())
        await asyncio.sleep(0)
        drainer = asyncio.ensure_future(host.drain(0.0))
        await cancel_while_ending(drainer, slow)
        assert drainer.cancelled()  # (old: it returned)
        await asyncio.wait({policy}, timeout=4)
        assert policy.cancelled()

    asyncio.run(main())


def test_drain_logs_a_firewall_refresh_that_died_and_goes_on(
    host: ServiceHost,  # noqa: F811 (the fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(as before, but for the raise: a refresh loop dead of a fault is logged; raised,
    it was the drain's own error)"""

    async def main() -> None:
        async def broken() -> None:
            raise RuntimeError("boom")

        host._policy_task = asyncio.ensure_future(broken())
        await asyncio.sleep(0)
        await host.drain(0.0)
        assert host._policy_task is None

    with caplog.at_level(logging.ERROR, logger="dtp.daemon.services"):
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
            self, connection_id: str, admitted: Admitted | None = None
        ) -> ConnectionTerms:
            return ConnectionTerms(connection_id, "0x2", FREE, bytes(32), 10_000)

    async def settle_served(conn: _Conn, *_: Any) -> Settled:
        settled.append(conn.connection_id)
        return Settled(0, 0, done=True)

    service_host.fees = cast(Any, Fees())
    monkeypatch.setattr(service_host, "_settle_served", settle_served)
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
    host: ServiceHost,  # noqa: F811 (the fixture)
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
    host: ServiceHost,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = ServiceConfig("dns", 7053, (Backend("127.0.0.1", 9),), protocol="udp")
    host.services[service.port] = service
    settled: list[str] = []
    relay_end = asyncio.Event()

    async def relay(*_: Any, **__: Any) -> None:
        await relay_end.wait()

    async def settle_served(conn: _Conn, *_: Any) -> Settled:
        settled.append(conn.connection_id)
        return Settled(0, 0, done=True)

    monkeypatch.setattr(services_module, "relay_udp_async", relay)
    monkeypatch.setattr(host, "_settle_served", settle_served)

    async def main() -> None:
        slow = SlowEnd()
        writer = FakeWriter(slow, service.port)
        terms = ConnectionTerms("0x1", "0x2", FREE, bytes(32), 10_000)
        conn = _Conn("0x1", service, terms, "0x3", cast(dtp.aio.DTPStreamWriter, writer))
        host.conns[conn.connection_id] = conn
        flow = asyncio.ensure_future(host._udp_flow(conn, cast(dtp.aio.DTPStreamReader, None)))
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
