"""Two edges of RPC's per-request fees found by a second reader.

- A stream task of the asyncio server cancelled while its connection's payments check
  is being resolved (a connection's first stream ending while its second resolves)
  leaves the connection counted as served for good, so a failure cached for it (its
  open still landing) refused every later stream: the count now drops once the
  resolution is done.
- A deposit re-read that fails with something other than a DTPError refuses the
  request as a typed failure does (logged), rather than raising into a shielded wait a
  cancelled request no longer retrieves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import types

import pytest

from dtp.chain.objects import Sla
from dtp.escrow import Meter
from dtp.keys import HostIdentity
from dtp.messaging.rpc import AsyncRpcServer, RequestPayments

CID = "0x" + "ab" * 32


def test_a_stream_cancelled_while_its_payments_resolve_is_released() -> None:
    release = threading.Event()
    calls: list[str | None] = []

    def source(connection_id: str | None) -> RequestPayments:
        calls.append(connection_id)
        assert release.wait(10)
        raise RuntimeError("the open has not landed yet")  # (refused, cached)

    server = AsyncRpcServer(payments=source)
    writer = types.SimpleNamespace(peer_connection_id=CID, peer_address="0x01")

    async def main() -> None:
        task = asyncio.ensure_future(server.serve(types.SimpleNamespace(), writer))
        while not calls:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()  # the resolution ends after the stream was cancelled
        for _ in range(500):
            if not server._payments._users:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert server._payments._users == {}  # released: no stream of it is served
    assert CID not in server._payments._by_connection  # the failure is forgotten


def test_a_deposit_read_failing_untyped_refuses_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = HostIdentity.generate()
    sla = Sla(price_per_kib=0, price_per_request=10, min_deposit=0)
    meter = Meter(client, CID, sla, 1000, every_requests=1)
    first, second = (meter.record(0, requests=1) or meter.flush(0) for _ in range(2))
    assert first is not None and second is not None
    payments = RequestPayments(CID, sla, client.ed25519_public, 10)  # deposit known: 10

    def read_deposit() -> int:
        raise RuntimeError("the ledger client failed")  # (not a DTPError)

    payments.read_deposit = read_deposit
    payments.admit({"r": first.encode()})
    with caplog.at_level(logging.ERROR, logger="dtp.messaging.rpc"):
        assert payments._read_deposit() is False
    assert payments._rereading is None
    assert "reading the deposit" in caplog.text
