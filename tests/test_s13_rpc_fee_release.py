"""ResponseFeePolicy forgets the escrow of a paid request that ended with no response
(its handler failed, it was cancelled or timed out): before, each left an entry in
``answered`` for good (a server's memory grew with every failed paid request)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import dtp.aio
from dtp.chain.local import LocalLedger
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, ResponseFeePolicy, ResponsePrepay
from tests.test_messaging_rpc import Served, make_rpc


def _ledger() -> tuple[LocalLedger, HostIdentity, HostIdentity]:
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 100_000)
    return ledger, server_id, client_id


def _unanswered_entries(policy: ResponseFeePolicy) -> int:
    return sum(1 for digest, _ in policy.answered.values() if not digest)


@pytest.mark.parametrize("workers", [0, 4])
def test_failed_paid_requests_leave_no_entry(workers: int) -> None:
    ledger, server_id, client_id = _ledger()
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    s = Served(make_rpc(workers=workers, response_fees=policy))
    try:
        prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
        client = s.connect(timeout=5, prepay=prepay)
        for i in range(5):
            with pytest.raises(E.InvalidParams):
                client.call("fail", i)
            with pytest.raises(E.InternalError):
                client.call("crash", i)
        assert client.call("echo", 1) == 1
        assert _unanswered_entries(policy) == 0
        assert len(policy.answered) + len(policy.acks) == 1  # the one answered call
    finally:
        s.close()


def test_failed_paid_requests_leave_no_entry_asyncio() -> None:
    ledger, server_id, client_id = _ledger()
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    rpc = AsyncRpcServer(response_fees=policy)

    def crash(p: Any) -> Any:
        raise RuntimeError("secret")

    rpc.register("crash", crash)
    rpc.register("echo", lambda p: p)

    async def main() -> None:
        server = await dtp.aio.start_server(rpc.serve, "127.0.0.1", 0, identity=server_id)
        host, port = server.sockets[0].getsockname()[:2]
        reader, writer = await dtp.aio.open_connection(
            host, port, server_key=server_id.noise_public, identity=client_id
        )
        prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
        client = AsyncRpcClient(reader, writer, timeout=5, prepay=prepay)
        try:
            for i in range(5):
                with pytest.raises(E.InternalError):
                    await client.call("crash", i)
            assert await client.call("echo", 1) == 1
        finally:
            await client.close()
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    assert _unanswered_entries(policy) == 0
