"""ServiceHost hands its work to parts (dtp/daemon/_settlements.py, _served_tunnels.py,
_udp_flows.py, _host_policy.py), each given the few values it needs rather than the host.
What they share must stay the host's as it is now: a reload's service table (updated in
place), and the settlements the drain waits for."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

from dtp.daemon._config import Backend, ServiceConfig
from dtp.daemon._fees import Settled
from dtp.daemon._services import ServiceHost

BACKENDS = (Backend("127.0.0.1", 9),)
DEPOSIT = 1000
CID = "0x" + "c1" * 32


class _Fees:
    """The ledger side of a settlement: each refunds the deposit of a connection on
    port 7000, once ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.settled: list[str] = []

    def owed(self, connection_id: str) -> int:
        return 0  # (no receipts: refunds only)

    async def settle(self, connection_id: str, *_: Any, **__: Any) -> Settled:
        await self.release.wait()
        self.settled.append(connection_id)
        return Settled(0, DEPOSIT, port=7000, done=True)


def test_a_settlement_known_by_its_port_counts_under_the_service_a_reload_named(
    host: ServiceHost,
) -> None:
    """A reload renames the service on port 7000; a settlement that knows only the port
    (a refusal's refund, a restart's claim) counts under the new name: the settlements
    look services up in the host's table as configured now."""
    fees = _Fees()
    fees.release.set()
    host.fees = cast(Any, fees)

    async def main() -> None:
        await host.configure((ServiceConfig("echo", 7000, BACKENDS, protocol="udp"),))
        await host.configure((ServiceConfig("web", 7000, BACKENDS, protocol="udp"),))
        assert await host.settlements.settle(CID) == Settled(0, DEPOSIT)

    asyncio.run(main())
    assert fees.settled == [CID]
    # (the old name's row keeps port 7000 and sorts first: found by the port alone, the
    # refund would count there)
    assert host.book.service("web").refunded == DEPOSIT
    assert host.book.service("echo").refunded == 0


def test_the_drain_waits_for_a_refusals_refund_under_way(host: ServiceHost) -> None:
    """A connection refused at admission is refunded by a settlement of its own (no
    handler runs it): the drain waits for it, as for the handlers' settlements, so the
    refund lands and is counted before the daemon stops."""
    fees = _Fees()
    host.fees = cast(Any, fees)

    async def main() -> None:
        await host.configure((ServiceConfig("dns", 7000, BACKENDS, protocol="udp"),))
        host.settlements.settle_refused(CID, host.services[7000])
        drain = asyncio.ensure_future(host.drain(0.0))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not drain.done()  # (the refund is held)
        fees.release.set()
        await asyncio.wait_for(drain, 3.0)

    asyncio.run(main())
    assert fees.settled == [CID]
    assert host.book.service("dns").refunded == DEPOSIT
    assert not host.settlements.running


def test_connections_arriving_together_start_one_firewall_refresh_loop(
    host: ServiceHost,
) -> None:
    """Two connections arriving while the first read of the Host is still on the ledger
    start one refresh loop between them, and the drain's stop ends it: a second loop
    would go on reading the ledger after the daemon stopped."""
    reads: list[str] = []
    real = host.policy.ledger

    class SlowLedger:
        def get_host(self, host_id: str) -> Any:
            reads.append(host_id)
            time.sleep(0.2)
            return real.get_host(host_id)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    hid = real.create_host(host.identity, host.identity.noise_public)
    host.policy.ledger = cast(Any, SlowLedger())

    async def main() -> None:
        await asyncio.gather(host.policy.watch(hid), host.policy.watch(hid))
        assert len(reads) == 1  # the second waited for the first read, and made none
        loops = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "HostPolicy._loop"]
        assert len(loops) == 1
        await host.policy.stop()
        await asyncio.sleep(0)
        assert all(t.done() for t in loops)

    asyncio.run(main())


def test_a_firewall_read_under_way_at_stop_starts_no_loop(host: ServiceHost) -> None:
    """stop() while the first read of the Host is on the ledger, and a watch after
    stop(): neither starts a refresh loop, which nothing would then stop."""
    real = host.policy.ledger
    reading = threading.Event()

    class SlowLedger:
        def get_host(self, host_id: str) -> Any:
            reading.set()
            time.sleep(0.2)
            return real.get_host(host_id)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    hid = real.create_host(host.identity, host.identity.noise_public)
    host.policy.ledger = cast(Any, SlowLedger())

    def loops() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "HostPolicy._loop"]

    async def main() -> None:
        first = asyncio.ensure_future(host.policy.watch(hid))
        await asyncio.to_thread(reading.wait, 5)
        await host.policy.stop()
        await first
        assert loops() == []
        await host.policy.watch(hid)
        assert loops() == []

    asyncio.run(main())
