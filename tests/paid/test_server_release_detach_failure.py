"""A paid server's release whose detach from the store fails (an OSError closing the
run's lock file: EIO on a network file system): done by the receipt writer's last step
(a writer still writing after the release's wait) the failure is logged and the release
counts as done; done by the release itself (the writer finished in time), it raised out
of the release before ``_released`` was set, and wait_released() said False for good --
though the writer had stopped and a store the server opened was closed. Both servers;
real LocalLedger files, real ReceiptStore files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.hostid.paid._aio import PaidAioServer
from dtp.ledger._objects import Sla
from tests.support.paid_twins import PaidWorld, echo, echo_aio, hosted_ledgers, ident

PORT = 7
SERVER = ident(0xA1)
CLIENT = ident(0xA2)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PaidWorld]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, Sla(10, 5, 5000)) as ledgers:
        yield PaidWorld(*ledgers, tmp_path)


def _failing_detach() -> None:
    raise OSError(5, "Input/output error (test)")


def test_the_blocking_server_is_released_when_its_detach_fails(world: PaidWorld) -> None:
    server = dtp.socket.serve(
        world.host_id,
        PORT,
        echo,
        ledger=world.server_ledger,
        identity=SERVER,
        receipts=world.tmp_path / "receipts.db",
    )
    server.store.detach_server = _failing_detach  # type: ignore[method-assign]
    with contextlib.suppress(OSError):  # (raised out of close(), which ran the release)
        server.close()
    assert server.receipt_writer.stopped
    assert server.store.closed  # (closed all the same: release_receipts' finally)
    # (before: False, for any timeout: the release never said it was done)
    assert server.wait_released(5)


def test_the_asyncio_server_is_released_when_its_detach_fails_at_the_loop_s_end(
    world: PaidWorld,
) -> None:
    """asyncio.run ending with the server open releases it inline, on the loop."""

    async def start() -> PaidAioServer:
        server = await dtp.aio.serve(
            world.host_id,
            PORT,
            echo_aio,
            ledger=world.server_ledger,
            identity=SERVER,
            receipts=world.tmp_path / "receipts.db",
        )
        server.store.detach_server = _failing_detach  # type: ignore[method-assign]
        return server

    server = asyncio.run(start())  # (its end cancels the server's lifetime: the release)
    assert server.receipt_writer.stopped
    assert server.store.closed
    # (before: False: the release raised before it set _released)
    assert asyncio.run(server.wait_released(2))
