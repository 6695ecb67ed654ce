"""AsyncRpcServer: a paid request cancelled while its prepaid response escrow is being
checked (in a worker thread, which a cancel cannot stop) leaves no entry: before, the
check finished after the cancel and kept the escrow as used for good (a request naming
it again was refused, and each such request grew the server's memory)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from typing import Any

import dtp.aio
from dtp.chain.local import LocalLedger
from dtp.keys import HostIdentity
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, ResponseFeePolicy, ResponsePrepay


class _SlowFirstCheck(ResponseFeePolicy):
    """The first escrow check waits for ``proceed`` (a slow ledger)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.finished = threading.Event()
        self._first = True

    def admit(self, meta: Mapping[str, Any] | None, peer: str | None = None) -> str | None:
        first, self._first = self._first, False
        if not first:
            return super().admit(meta, peer)
        self.entered.set()
        self.proceed.wait(5)
        try:
            return super().admit(meta, peer)
        finally:
            self.finished.set()


def test_a_request_cancelled_during_its_fee_check_leaves_no_entry() -> None:
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 100_000)
    policy = _SlowFirstCheck(ledger, server_id, min_amount=10)
    rpc = AsyncRpcServer(response_fees=policy)
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
            first = asyncio.ensure_future(client.call("echo", 1))
            assert await asyncio.to_thread(policy.entered.wait, 5)
            first.cancel()  # (its CANCEL goes out)
            with contextlib.suppress(asyncio.CancelledError):
                await first
            # answered after the server took the CANCEL (the stream is in order)
            assert await client.call("echo", 2) == 2
            policy.proceed.set()
            assert await asyncio.to_thread(policy.finished.wait, 5)
            for _ in range(200):  # (the loop runs what the check's end leaves it)
                if len(policy.answered) + len(policy.acks) == 1:
                    break
                await asyncio.sleep(0.01)
            # only the answered call's entry: the cancelled one's escrow is free
            assert len(policy.answered) + len(policy.acks) == 1
        finally:
            policy.proceed.set()
            await client.close()
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
