"""Paid calls that cannot be sent (a bad method name, params that cannot be encoded or
are too large, a closed client) are refused before they are paid for: no receipt counts
them, no response escrow locks a fee for them (or, when the client closed while the
escrow was made, it is kept for ResponsePrepay.refund_due)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.errors import InsufficientFunds
from dtp.escrow import Meter
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.rpc import AsyncRpcClient, ResponseFeePolicy, ResponsePrepay
from tests.test_messaging_rpc import Served, make_rpc

#: Calls that fail in the client, before anything is sent.
BAD_CALLS: list[tuple[Any, Any, type[BaseException]]] = [
    ("", 1, ValueError),  # no method name
    ("echo", object(), TypeError),  # params msgpack cannot encode
    ("echo", b"x" * (2 << 20), E.PayloadTooLarge),  # above the 1 MiB cap
]


def _setup() -> tuple[LocalLedger, HostIdentity, HostIdentity, Meter]:
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 1_000)
    sla = Sla(price_per_kib=0, price_per_request=7, min_deposit=0)
    host = ledger.create_host(server_id, server_id.noise_public)
    ledger.add_service(server_id, host, 9, "echo", sla)
    cap = ledger.create_spending_cap(client_id, 10_000)
    opened = ledger.open_connection(client_id, host, 9, cap, 100)
    meter = Meter(client_id, opened.connection_id, sla, 100, every_requests=1)
    return ledger, server_id, client_id, meter


def test_a_blocking_call_that_cannot_be_sent_is_not_paid_for() -> None:
    """Each such call locked its prepaid fee in an escrow nobody knew of (not in
    prepay.unanswered: lost to refund_due) and counted a request in the meter (the
    next receipt paid the server for it)."""
    ledger, server_id, client_id, meter = _setup()
    before = ledger.balance(client_id.sui_address)
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10, required=False)
    s = Served(make_rpc(response_fees=policy))
    try:
        prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
        client = s.connect(timeout=5, meter=meter, prepay=prepay)
        for method, params, error in BAD_CALLS:
            with pytest.raises(error):
                client.call(method, params)
            with pytest.raises(error):
                client.start(method, params)
        assert meter.total_requests == 0
        assert ledger.balance(client_id.sui_address) == before
        assert client.call("echo", 5) == 5  # and the client is as good as new
        assert meter.total_requests == 1
        client.close()
        with pytest.raises(E.RpcConnectionLost):
            client.call("echo", 6)
        assert meter.total_requests == 1
        assert ledger.balance(client_id.sui_address) == before - 10
        assert prepay.unanswered == []
    finally:
        s.close()


def test_an_async_call_that_cannot_be_sent_is_not_paid_for() -> None:
    ledger, server_id, client_id, meter = _setup()
    before = ledger.balance(client_id.sui_address)

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers: every call here fails before sending
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
        client = AsyncRpcClient(reader, writer, timeout=5, meter=meter, prepay=prepay)
        try:
            for method, params, error in BAD_CALLS:
                with pytest.raises(error):
                    await client.call(method, params)
        finally:
            await client.close()
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    assert meter.total_requests == 0
    assert ledger.balance(client_id.sui_address) == before


def test_a_refused_deposit_is_not_counted_in_the_meter() -> None:
    """With both fees, the meter counted the request before the ledger refused the
    escrow's deposit: the next receipt paid the server for a request never sent."""
    ledger, server_id, _client_id, meter = _setup()
    poor = HostIdentity.generate()  # pays the response fees: it has no funds
    s = Served(make_rpc())
    try:
        prepay = ResponsePrepay(ledger, poor, server_id.sui_address, 10)
        client = s.connect(timeout=5, meter=meter, prepay=prepay)
        with pytest.raises(InsufficientFunds):
            client.call("echo", 1)
        assert meter.total_requests == 0

        async def main() -> None:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await reader.read()
                writer.close()

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            aclient = AsyncRpcClient(reader, writer, timeout=5, meter=meter, prepay=prepay)
            try:
                with pytest.raises(InsufficientFunds):
                    await aclient.call("echo", 1)
            finally:
                await aclient.close()
                writer.close()
                await writer.wait_closed()
                server.close()
                await server.wait_closed()

        asyncio.run(main())
        assert meter.total_requests == 0
    finally:
        s.close()
