"""The ``driver`` fixture: one paid-server test body run on both drivers, the blocking
server (``dtp.socket.serve``, handlers in its threads) and the asyncio one
(``dtp.aio.serve`` on an event loop in a thread of this process). The clients stay
blocking in both.

And what several test files here share: a receipt store whose disk stalls on demand,
and the store tests' service, ledger world and server runs in another process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.escrow import fee
from dtp.hostid.paid.aio import PaidAioServer
from dtp.hostid.paid.blocking_server import PaidServer
from dtp.keys import HostIdentity
from dtp.ledger.receipt import Receipt
from dtp.payments.receipt_store import ReceiptStore
from tests.support.paid_twins import (
    echo,
    echo_aio,
    ident,
    loop_in_thread,
    stop,
    streams_forever,
    streams_forever_aio,
    until_idle,
)
from tests.support.polling import wait_for

#: The handlers both drivers have, by name: (blocking, asyncio)
HANDLERS: dict[str, tuple[Any, Any]] = {
    "echo": (echo, echo_aio),
    "streams_forever": (streams_forever, streams_forever_aio),
}


class StallingStore(ReceiptStore):
    """A receipt store whose disk stalls on demand (writes block until ``resume`` is
    set): a disk that takes minutes to sync cannot be had on purpose here."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.stall = threading.Event()
        self.resume = threading.Event()
        self.stalled = threading.Event()  # a write is blocked now

    def _wait(self) -> None:
        if self.stall.is_set():
            self.stalled.set()
            self.resume.wait(600)

    def keep_many(
        self, receipts: Sequence[Receipt], claimed: Mapping[str, int] | None = None
    ) -> list[bool]:
        self._wait()
        return super().keep_many(receipts, claimed)

    def mark_claimed_many(self, claimed: Mapping[str, int]) -> None:
        self._wait()
        super().mark_claimed_many(claimed)


# -- receipt stores shared by server runs (test_shared_receipt_store.py,
# test_recovery*.py) ---------------------------------------------------------------

#: The service whose receipts the store tests keep
STORE_SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
STORE_PORT = 7000
STORE_DEPOSIT = 100_000
STORE_SERVER, STORE_CLIENT = ident(0x91), ident(0x92)

# A server run in another process: attached to the store, it keeps the receipts given
# (hex) as its live connections' and holds on until killed (or its stdin closes).
_RUN = (
    "import sys\n"
    "from dtp.escrow import Receipt\n"
    "from dtp.receipt_store import ReceiptStore\n"
    "store = ReceiptStore(sys.argv[1])\n"
    "store.attach_server()\n"
    "for encoded in sys.argv[2:]:\n"
    "    assert store.keep(Receipt.decode(bytes.fromhex(encoded)))\n"
    "print('serving', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def server_run(path: Path, *receipts: Receipt) -> Iterator[subprocess.Popen[str]]:
    """A server run in another process that kept ``receipts`` in the store at ``path``;
    killed at the end of the block if the test did not kill it."""
    run = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(path), *(r.encode().hex() for r in receipts)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None and run.stdout.readline() == "serving\n"
        yield run
    finally:
        if run.poll() is None:
            run.kill()
        run.wait(30)
        assert run.stdin is not None and run.stdout is not None
        run.stdin.close()
        run.stdout.close()


def kill(run: subprocess.Popen[str]) -> None:
    """SIGKILL: no detach, no clean-up; its locks go with the process."""
    os.kill(run.pid, signal.SIGKILL)
    run.wait(30)


@dataclass
class StoreWorld:
    """A ledger with the store tests' service and a client's spending cap, and where
    the store is."""

    ledger: LocalLedger
    host_id: str
    cap_id: str
    store_path: Path

    def receipt(self) -> Receipt:
        """A receipt of a new connection, for 100 KiB and one request."""
        cid = self.ledger.open_connection(
            STORE_CLIENT, self.host_id, STORE_PORT, self.cap_id, STORE_DEPOSIT
        ).connection_id
        return Receipt(cid, 102400, 1, fee(STORE_SLA, 102400, 1), 1).sign(STORE_CLIENT)

    def settled(self, receipt: Receipt) -> bool:
        return self.ledger.get_connection(receipt.connection_id).settled

    def claimed(self, receipt: Receipt) -> int:
        tc = self.ledger.get_connection(receipt.connection_id)
        return self.ledger.get_escrow(tc.escrow).claimed


@dataclass
class Driver:
    """One paid server driver: how a test serves on it, waits for it, and patches it."""

    name: str
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def server_module(self) -> str:
        """The module whose names (``settle_ended``...) the server calls."""
        if self.name == "blocking":
            return "dtp.hostid.paid.blocking_server"
        return "dtp.hostid.paid.asyncio_server"

    @contextmanager
    def serve(
        self,
        host_id: str,
        port: int,
        handler: str | tuple[Any, Any],
        *,
        ledger: LocalLedger,
        identity: HostIdentity,
        **options: Any,
    ) -> Iterator[PaidServer | PaidAioServer]:
        """The paid service ``port`` of ``host_id`` with the handler named ``handler``
        (:data:`HANDLERS`), or given as (blocking handler, asyncio callback); closed at
        the end once its connections ended and settled. The server gets a ledger
        handle of its own."""
        blocking, aio = HANDLERS[handler] if isinstance(handler, str) else handler
        # the server's own handle on the ledger file (as a server in another process
        # has), not the one the test's client uses
        server_ledger = LocalLedger(ledger.path)
        try:
            if self.loop is None:
                with dtp.socket.serve(
                    host_id, port, blocking, ledger=server_ledger, identity=identity, **options
                ) as server:
                    yield server
                return
            started = dtp.aio.serve(
                host_id, port, aio, ledger=server_ledger, identity=identity, **options
            )
            served: PaidAioServer = asyncio.run_coroutine_threadsafe(started, self.loop).result(10)
            try:
                yield served
            finally:
                asyncio.run_coroutine_threadsafe(stop(served), self.loop).result(10)
        finally:
            server_ledger.close()

    def close(self, server: PaidServer | PaidAioServer) -> None:
        """``server.close()`` (the asyncio one's on its loop: asyncio's server is not
        thread-safe)."""
        if isinstance(server, PaidAioServer):
            assert self.loop is not None

            async def close() -> None:
                server.close()

            asyncio.run_coroutine_threadsafe(close(), self.loop).result(60)
            return
        server.close()

    def wait_released(self, server: PaidServer | PaidAioServer, timeout: float) -> bool:
        """``server.wait_released(timeout)`` (the asyncio one's awaited on its loop)."""
        if isinstance(server, PaidAioServer):
            assert self.loop is not None
            released = asyncio.run_coroutine_threadsafe(server.wait_released(timeout), self.loop)
            return released.result(timeout + 30)
        return server.wait_released(timeout)

    def until_idle(self, server: PaidServer | PaidAioServer, timeout: float = 10.0) -> None:
        """Wait until the server's connections have ended and settled."""
        if isinstance(server, PaidAioServer):
            assert self.loop is not None
            asyncio.run_coroutine_threadsafe(until_idle(server), self.loop).result(timeout)
            return
        assert wait_for(lambda: server.core.working == 0, timeout), "the server never idled"


@pytest.fixture(params=["blocking", "asyncio"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """Each paid-server driver in turn (see :class:`Driver`)."""
    if request.param == "blocking":
        yield Driver("blocking")
        return
    with loop_in_thread() as loop:
        yield Driver("asyncio", loop)
