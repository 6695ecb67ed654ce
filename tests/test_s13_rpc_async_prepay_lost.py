"""AsyncRpcClient: a prepaid call that fails because the client closed (or the stream
ended) leaves its escrow in ``prepay.unanswered`` for ``refund_due``, as the blocking
client does; before, the escrow was forgotten and its fee locked for good."""

from __future__ import annotations

import asyncio

import pytest

from dtp.chain.local import LocalLedger
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, ResponseFeePolicy, ResponsePrepay


def test_a_prepaid_call_failed_by_close_keeps_its_escrow_for_refund() -> None:
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 1_000)
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    rpc = AsyncRpcServer(response_fees=policy)

    async def main() -> ResponsePrepay:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(p: object) -> object:
            started.set()
            await release.wait()
            return p

        rpc.register("slow", slow)
        served: list[asyncio.Task[None]] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served.append(asyncio.current_task())  # type: ignore[arg-type]
            # (a plain socket proves no identity: the client's escrows are served only
            # to their requester)
            writer.peer_address = client_id.sui_address  # type: ignore[attr-defined]
            try:
                await rpc.serve(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
        client = AsyncRpcClient(reader, writer, timeout=5, prepay=prepay)
        call = asyncio.ensure_future(client.call("slow", 1))
        await asyncio.wait_for(started.wait(), 5)
        await client.close()
        with pytest.raises(E.RpcConnectionLost):
            await call
        release.set()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.gather(*served, return_exceptions=True)
        return prepay

    prepay = asyncio.run(main())
    assert len(prepay.unanswered) == 1
    ledger.advance_clock(10_000)
    assert prepay.refund_due() == 10
    assert ledger.balance(client_id.sui_address) == 1_000
