"""A paid server killed (SIGKILL) as a client closes, at several moments of its
settlement, and restarted on the same receipt store (docs/escrow.md §6.1: "at start it
claims every receipt its store holds unclaimed"): every connection ends settled, the
server is paid what the client's receipts say (never more, never twice, never less than
the last one it kept), the client refunded the rest, and MIST is conserved. The server
runs in its own OS process (tests/paid/servers.py) on the LocalLedger file shared with
the clients here."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.errors import DTPError
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import fee
from tests.paid.servers import SERVER, SLA, World, fund, hosted_world, paid_server
from tests.support.paid_twins import ident
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_world(tmp_path) as made:
        yield made


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.05])
def test_server_killed_while_a_client_closes_is_paid_once_after_restart(
    world: World, delay: float, api: str
) -> None:
    client = ident(0x67)
    fund(world, client)
    deposit = 50_000
    piece = os.urandom(32 * 1024)
    with paid_server(world, api=api) as (proc, _):
        sock = world.connect(client, deposit)
        cid = sock.connection_id
        assert cid is not None
        for _ in range(8):  # 256 KiB each way
            sock.sendall(piece)
            got = 0
            while got < len(piece):
                got += len(sock.recv(len(piece) - got))
        with ReceiptStore(world.receipts) as store:
            assert wait_for(lambda: store.latest(cid) is not None)
            kept_before = store.latest(cid)
        assert kept_before is not None
        payment = sock._engine.hook
        assert payment is not None

        def close() -> None:
            # final receipt, CLOSE; settled by the server, or half-closed by us
            with contextlib.suppress(DTPError):
                sock.close()

        closer = threading.Thread(target=close)
        closer.start()
        time.sleep(delay)  # the moment of the kill is the variable here
        proc.kill()
        proc.wait(10)
        closer.join(30)
        assert not closer.is_alive()
    signed = payment.meter.latest
    assert signed is not None
    with paid_server(world, api=api) as (_, info):
        assert info["recovered"] in (0, 1)
        assert wait_for(lambda: is_settled(world.ledger, cid), 15)
        # (and its store says so before it stops: the asyncio server marks the receipt
        # claimed after the settlement's transaction, and the context's end kills it)
        with ReceiptStore(world.receipts) as store:
            assert wait_for(lambda: not list(store.unclaimed()), 30)
    escrow = settled_escrow(world.ledger, cid)
    # paid what a receipt says: the last one the store kept, or the final one
    assert kept_before.receipt.total_amount <= escrow.claimed <= signed.total_amount
    assert escrow.claimed <= fee(SLA, signed.total_bytes, signed.total_requests)
    assert escrow.refunded == deposit - escrow.claimed
    assert world.ledger.balance(SERVER.sui_address) == escrow.claimed
    assert world.ledger.balance(client.sui_address) == 100_000 - escrow.claimed
    with ReceiptStore(world.receipts) as store:
        assert not list(store.unclaimed())
    assert world.conserved()
