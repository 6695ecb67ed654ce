"""The paid servers the top-up tests run on (tests/paid/test_top_up.py,
test_top_up_over_deposit.py, test_end_to_end.py's handler test and
tests/messaging/test_rpc_request_fees.py): a funded LocalLedger file, a paid server of
each kind on its own ledger handle that counts its escrow reads, and the dearer service
over whose deposit a few KiB in flight go (its ``host_id``). A test module names the
fixtures it uses (``ledger = paid_top_ups.ledger``); a module with a service of its
own defines its own ``host_id``."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidAioServer, PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from dtp.testing._loops import LoopThread
from tests.support.paid_twins import (
    funded_ledger,
    ident,
    stop,
    streams_forever,
    streams_forever_aio,
)

PORT = 7000
# the Host never read again by the policy loop: only the gate's own reads
POLICY = ServicePolicy(pause_timeout=2.0, refresh_interval=3600)
METERING = MeteringConfig(every_bytes=16 << 10)

SERVER, CLIENT = ident(0xA1), ident(0xA2)

# the dearer service: the deposit covers about 5 KiB, so a few KiB in flight go past it
DEAR_SLA = Sla(price_per_kib=1000, price_per_request=5, min_deposit=5000)
DEAR_DEPOSIT = 5000


def conserved(ledger: LocalLedger) -> bool:
    audit = ledger.audit()
    return bool(audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"])


class CountingLedger:
    """The server's ledger, counting escrow reads; ``after_settle`` runs right after
    each settlement transaction returns (before the server goes on). :meth:`lag` makes
    the next reads of an escrow show it as it is now: a Sui full node some checkpoints
    behind a top-up (which cannot exist here)."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.escrow_reads = 0
        self.after_settle: Callable[[], None] | None = None
        self.lag_reads = 0
        self._lagged: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def get_escrow(self, escrow_id: str) -> Any:
        self.escrow_reads += 1
        escrow = self._ledger.get_escrow(escrow_id)
        old = self._lagged
        if self.lag_reads and old is not None and old.id == escrow.id:
            self.lag_reads -= 1
            return dataclasses.replace(escrow, deposited=old.deposited, balance=old.balance)
        return escrow

    def lag(self, escrow_id: str, reads: int) -> None:
        """The next ``reads`` reads of the escrow show its deposit as it is now."""
        self._lagged = self._ledger.get_escrow(escrow_id)
        self.lag_reads = reads

    def _settled(self, result: Any) -> Any:
        hook = self.after_settle
        if hook is not None:
            hook()
        return result

    def settle(self, *args: Any, **kwargs: Any) -> Any:
        return self._settled(self._ledger.settle(*args, **kwargs))

    def settle_with_receipt(self, *args: Any, **kwargs: Any) -> Any:
        return self._settled(self._ledger.settle_with_receipt(*args, **kwargs))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


@pytest.fixture
def host_id(ledger: LocalLedger) -> str:
    """The Host, with the dearer service on PORT."""
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, PORT, "dear", DEAR_SLA)
    return host


@pytest.fixture(params=["blocking", "asyncio"])
def serve(
    request: pytest.FixtureRequest, tmp_path: Path, host_id: str
) -> Iterator[Callable[..., tuple[CountingLedger, Any]]]:
    """Start the paid server of the given kind (streams until cut off) on its own ledger
    handle, wrapped in a CountingLedger: (ledger, server)."""
    closers: list[Callable[[], None]] = []

    def start(
        handler: Any = None, aio_handler: Any = None, policy: ServicePolicy = POLICY
    ) -> tuple[CountingLedger, Any]:
        counting = CountingLedger(LocalLedger(tmp_path / "ledger.db"))
        closers.append(counting._ledger.close)
        options: dict[str, Any] = {
            "ledger": counting,
            "identity": SERVER,
            "receipts": tmp_path / "receipts.db",
            "policy": policy,
        }
        if request.param == "blocking":
            server = dtp.socket.serve(host_id, PORT, handler or streams_forever, **options)
            closers.insert(0, server.close)
            return counting, server
        loop = LoopThread()
        closers.insert(0, loop.close)
        aio_server: PaidAioServer = loop.run(
            dtp.aio.serve(host_id, PORT, aio_handler or streams_forever_aio, **options), 10
        )
        closers.insert(0, lambda: loop.run(stop(aio_server), 30))
        return counting, aio_server

    try:
        yield start
    finally:
        for close in closers:
            close()


def _paid_args(
    ledger: LocalLedger, cap: str | None, metering: MeteringConfig, deposit: int
) -> dict[str, Any]:
    """The client's side of a paid connection with ``deposit`` (and spending cap ``cap``)."""
    return {
        "timeout": 20,
        "ledger": ledger,
        "identity": CLIENT,
        "deposit": deposit,
        "cap_id": cap,
        "metering": metering,
    }


def paid_connect(
    ledger: LocalLedger,
    host_id: str,
    cap: str | None = None,
    metering: MeteringConfig = METERING,
    *,
    deposit: int = DEAR_DEPOSIT,
) -> dtp.socket.DTPSocket:
    """A blocking client's paid connection to the service on PORT of ``host_id`` (the
    dearer one, unless the module has its own), with ``deposit`` in escrow."""
    return dtp.socket.create_connection(
        f"dtp://{host_id}:{PORT}", **_paid_args(ledger, cap, metering, deposit)
    )


async def paid_open(
    ledger: LocalLedger, host_id: str, cap: str | None = None, *, deposit: int = DEAR_DEPOSIT
) -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
    """:func:`paid_connect` through the asyncio client."""
    return await dtp.aio.open_connection(
        f"dtp://{host_id}:{PORT}", **_paid_args(ledger, cap, METERING, deposit)
    )


def quiet_handlers(release: threading.Event) -> tuple[Any, Any]:
    """Handlers that read the client's b"go" and then nothing (no pause, so no read of
    the escrow while the connection is open) until ``release``."""

    def blocking(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        release.wait(60)

    async def aio(reader: PaidReader, writer: PaidWriter) -> None:
        assert await reader.readexactly(2) == b"go"
        await asyncio.to_thread(release.wait, 60)

    return blocking, aio
