"""``dtp.aio.serve(..., billing="requests")``: the asyncio paid server bills each RPC
request by the receipt it carries, through the same engine as ``dtp.socket.serve``'s
(dtp.messaging.rpc._billed; tests/paid/test_serve_per_request.py is the blocking twin),
over a real socket and a LocalLedger file. Requests at the SLA's price and one at a
method's own price are billed exactly: the receipts kept, then the settlement at the
connection's end -- the provider's balance grows by the fee, the client gets the rest
of its deposit back. A request without a receipt is refused, as is a client its method
rules refuse (nothing charged); a callback that is not an AsyncRpcServer (a blocking
RpcServer included), or one with payments of its own, is refused before anything is
published."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.method_rules import MethodRule, MethodRules
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcServer, ledger_payments
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import Meter
from tests.support.paid_twins import ident

SLA = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)
PORT = 8545
DEPOSIT = 1_000
PROVIDER, ALICE, BOB = ident(0xD1), ident(0xD2), ident(0xD3)
RULES = MethodRules(
    [
        MethodRule("echo"),
        MethodRule("dear", price=125),
        MethodRule("admin", allow=[ALICE.sui_address]),
    ]
)


@contextlib.asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(PROVIDER, PROVIDER.noise_public)
    ledger.add_service(PROVIDER, host, PORT, "rpc", SLA)
    for key in (ALICE, BOB):
        ledger.faucet(key.sui_address, 100_000)
    rpc = AsyncRpcServer(rules=RULES)
    rpc.register("echo", lambda p: p)

    async def dear(p: Any) -> Any:
        await asyncio.sleep(0)
        return ["dear", p]

    rpc.register("dear", dear)
    rpc.register("admin", lambda p: "ok")
    server_ledger = LocalLedger(tmp_path / "ledger.db")
    server = await dtp.aio.serve(
        host,
        PORT,
        rpc,
        ledger=server_ledger,
        identity=PROVIDER,
        receipts=tmp_path / "receipts.db",
        billing="requests",
    )
    try:
        yield {"ledger": ledger, "host": host, "server": server}
    finally:
        server.close()
        await server.wait_released(10)
        server_ledger.close()
        ledger.close()


async def connect(w: dict[str, Any], key: HostIdentity) -> tuple[AsyncRpcClient, Meter, Any]:
    ledger = w["ledger"]
    reader, writer = await dtp.aio.open_connection(
        f"dtp://{w['host']}:{PORT}",
        ledger=ledger,
        identity=key,
        deposit=DEPOSIT,
        timeout=10,
        metering=MeteringConfig(enabled=False),
    )
    meter = Meter(key, ledger.receipt_scope(writer.connection_id), SLA, DEPOSIT, every_requests=1)
    return AsyncRpcClient(reader, writer, timeout=10, meter=meter), meter, writer


async def settled(server: Any, cid: str, within: float = 20.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while not any(c == cid for c, _ in server.settlements):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def close(writer: Any) -> None:
    writer.close()
    with contextlib.suppress(DTPError, OSError):
        await asyncio.wait_for(writer.wait_closed(), 10)


def run(tmp_path: Path, body: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            await body(w)

    asyncio.run(main())


def test_requests_are_billed_at_their_prices_and_settled(tmp_path: Path) -> None:
    async def body(w: dict[str, Any]) -> None:
        ledger, server = w["ledger"], w["server"]
        provider_before = ledger.balance(PROVIDER.sui_address)
        alice_before = ledger.balance(ALICE.sui_address)
        client, meter, writer = await connect(w, ALICE)
        for i in range(3):
            assert await client.call("echo", i) == i
        assert await client.call("dear", 1, requests=5) == ["dear", 1]
        assert await client.call("admin", None) == "ok"
        fee = 3 * 25 + 125 + 25
        assert meter.latest is not None and meter.latest.total_amount == fee
        cid = writer.connection_id
        await client.close()
        await close(writer)
        assert await settled(server, cid)
        assert ledger.balance(PROVIDER.sui_address) - provider_before == fee
        assert alice_before - ledger.balance(ALICE.sui_address) == fee  # (the rest refunded)

    run(tmp_path, body)


def test_unpaid_and_refused_requests_cost_nothing(tmp_path: Path) -> None:
    async def body(w: dict[str, Any]) -> None:
        ledger, server = w["ledger"], w["server"]
        provider_before = ledger.balance(PROVIDER.sui_address)
        bob_before = ledger.balance(BOB.sui_address)
        client, meter, writer = await connect(w, BOB)
        assert meter.latest is None
        reader2, writer2 = await writer.open_stream()
        meter_less = AsyncRpcClient(reader2, writer2, timeout=10)
        with pytest.raises(E.PaymentRequired):
            await meter_less.call("echo", 1)  # (no receipt covers it)
        with pytest.raises(E.MethodNotAllowed):
            await client.call("admin", None, requests=0)
        with pytest.raises(E.PaymentRequired) as short:
            await client.call("dear", 1)  # (metered as one request: it counts as five)
        assert short.value.data == {"requests": 5, "counted": 0}
        # its receipt was not kept (nothing pays for another stream's request), and
        # the meter took it back: the next receipt pays for the next call alone
        with pytest.raises(E.PaymentRequired):
            await meter_less.call("echo", 1)
        assert meter.latest is None
        assert await client.call("echo", 2) == 2
        assert meter.latest is not None and meter.latest.total_requests == 1
        cid = writer.connection_id
        await meter_less.close()
        await client.close()
        await close(writer)
        assert await settled(server, cid)
        assert ledger.balance(PROVIDER.sui_address) - provider_before == 25
        assert bob_before - ledger.balance(BOB.sui_address) == 25

    run(tmp_path, body)


def test_the_callback_must_be_an_async_rpc_server_without_payments(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(PROVIDER, PROVIDER.noise_public)
    ledger.add_service(PROVIDER, host, PORT, "rpc", SLA)
    common: dict[str, Any] = {"ledger": ledger, "identity": PROVIDER, "billing": "requests"}

    async def callback(reader: Any, writer: Any) -> None:
        pass

    async def main() -> None:
        with pytest.raises(TypeError, match="AsyncRpcServer"):
            await dtp.aio.serve(host, PORT, callback, **common)
        blocking = RpcServer()
        with pytest.raises(TypeError, match="AsyncRpcServer"):
            await dtp.aio.serve(host, PORT, blocking, **common)  # (the blocking kind)
        assert blocking.payments is None  # (left as it was)
        blocking.close()
        paid = AsyncRpcServer(payments=ledger_payments(ledger))
        with pytest.raises(ValueError, match="without payments"):
            await dtp.aio.serve(host, PORT, paid, **common)
        with pytest.raises(ValueError, match="billing"):
            await dtp.aio.serve(
                host, PORT, callback, ledger=ledger, identity=PROVIDER, billing="minutes"
            )  # type: ignore[arg-type]

    asyncio.run(main())
    assert ledger.get_host(host).endpoints == ()  # (nothing published)
    ledger.close()


def test_the_blocking_paid_server_refuses_an_async_rpc_server(tmp_path: Path) -> None:
    # (the other way round: its serve_billed is a coroutine, which a thread would call
    # and drop unawaited)
    import dtp.socket

    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(PROVIDER, PROVIDER.noise_public)
    ledger.add_service(PROVIDER, host, PORT, "rpc", SLA)
    with pytest.raises(TypeError, match="an RpcServer"):
        dtp.socket.serve(
            host, PORT, AsyncRpcServer(), ledger=ledger, identity=PROVIDER, billing="requests"
        )  # type: ignore[arg-type]
    assert ledger.get_host(host).endpoints == ()
    ledger.close()
