"""How a paid server ends a connection after its handler (PaidServerCore.handler_raised
and end_plan, one rule for both drivers): a handler that fails while the connection
goes on has it aborted, the client reading an error rather than a clean end; a handler
the gate closed for want of payment (PaymentRequired raised out of it) leaves the
client reading that close. Either way the connection is settled, no MIST lost, and the
server logs it with its own module's logger, in one text for both drivers. A step of
the end before the settlement that fails does not skip the settlement.

Both drivers (the ``driver`` fixture), real connections on 127.0.0.1, a LocalLedger
file in tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import dtp.hostid.paid._asyncio as paid_asyncio
import dtp.hostid.paid._blocking as blocking
from dtp.errors import ConnectionClosed, DTPError
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.payments.metering import CLOSE_PAYMENT_REQUIRED, MeteringConfig
from tests.paid.conftest import Driver, exchange
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=1024, price_per_request=1, min_deposit=1000)  # 1 MIST a byte
SERVER, CLIENT = ident(0xC1), ident(0xC2)
PORT = 7103
DEPOSIT = 5000


def _fails(sock: PaidSocket) -> None:
    sock.sendall(sock.recv(4))
    raise ValueError("a bug in the handler")


async def _fails_aio(reader: PaidReader, writer: PaidWriter) -> None:
    writer.write(await reader.readexactly(4))
    await writer.drain()
    raise ValueError("a bug in the handler")


def _unpaid(sock: PaidSocket) -> None:
    while sock.recv(1 << 16):  # (PaymentRequired once the pause timed out)
        pass


async def _unpaid_aio(reader: PaidReader, writer: PaidWriter) -> None:
    while await reader.read(1 << 16):
        pass


@pytest.mark.parametrize("case", ["failed", "unpaid"])
def test_the_client_reads_how_the_handler_ended(
    tmp_path: Path, driver: Driver, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    handlers = (_fails, _fails_aio) if case == "failed" else (_unpaid, _unpaid_aio)
    # the unpaid client pays nothing: with no allowance its first request pauses the
    # connection, closed after the pause timeout
    policy = ServicePolicy(allowance=0 if case == "unpaid" else None, pause_timeout=0.5)
    metering = MeteringConfig(enabled=False) if case == "unpaid" else None
    with (
        funded_ledger(tmp_path, CLIENT) as ledger,
        caplog.at_level(logging.INFO, logger=driver.server_module),
    ):
        with driver.connected(
            ledger,
            handlers,
            host=SERVER,
            client=CLIENT,
            port=PORT,
            sla=SLA,
            deposit=DEPOSIT,
            metering=metering,
            policy=policy,
        ) as (_, sock):
            cid = sock.connection_id
            assert cid is not None
            sock.sendall(b"ping")
            with pytest.raises(DTPError) as ended:
                got = b""
                while True:
                    data = sock.recv(1 << 16)
                    if not data:
                        break  # a clean end: the assertion below fails
                    got += data
                pytest.fail(f"a clean end after {got!r}: the client cannot tell it failed")
            error = ended.value
            assert isinstance(error, ConnectionClosed), error
            if case == "unpaid":
                assert error.code == CLOSE_PAYMENT_REQUIRED, error
            else:
                assert error.code != CLOSE_PAYMENT_REQUIRED and "internal error" in str(error)
            assert wait_for(lambda: is_settled(ledger, cid), 10.0)
        escrow = settled_escrow(ledger, cid)
        assert escrow.claimed + escrow.refunded == escrow.deposited == DEPOSIT
    # logged by the server's own module (where an operator filters for it), not the core's
    logged = [r for r in caplog.records if cid in r.getMessage()]
    if case == "failed":
        failure = [
            r for r in logged if r.getMessage() == f"the handler failed for connection {cid}"
        ]
        assert [(r.name, r.levelno) for r in failure] == [(driver.server_module, logging.ERROR)]
        assert failure[0].exc_info is not None and failure[0].exc_info[0] is ValueError
    else:
        ended_log = [r for r in logged if r.getMessage().startswith(f"connection {cid} ended: ")]
        assert [(r.name, r.levelno) for r in ended_log] == [(driver.server_module, logging.INFO)]
        assert ended_log[0].exc_info is None


ROUNDS = 3  # (exchange()'s 30,000 bytes each)


def _echoes_then_returns(sock: PaidSocket) -> None:
    for _ in range(ROUNDS):
        got = 0
        while got < 30_000:
            data = sock.recv(30_000 - got)
            got += len(data)
            sock.sendall(data)


async def _echoes_then_returns_aio(reader: PaidReader, writer: PaidWriter) -> None:
    for _ in range(ROUNDS):
        writer.write(await reader.readexactly(30_000))
        await writer.drain()


def test_a_failed_step_of_the_end_does_not_skip_the_settlement(
    tmp_path: Path,
    driver: Driver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A step of the end before the settlement (here the final receipt's request, which
    # raises once it is done) that fails with an error that is no DTPError: the error
    # is logged on the server's logger and the connection settled all the same, the
    # server's fee claimed (skipped, the connection stayed Open until the half-close
    # timeout, the fee unclaimed).
    module = blocking if driver.name == "blocking" else paid_asyncio
    original = module.PaidConnection.request_final_receipt

    if driver.name == "blocking":

        def fails(self: Any) -> None:
            original(self)
            raise RuntimeError("a bug in the end")

    else:

        async def fails(self: Any) -> None:  # type: ignore[misc]
            await original(self)
            raise RuntimeError("a bug in the end")

    monkeypatch.setattr(module.PaidConnection, "request_final_receipt", fails)
    # the top-up read that follows the final receipt still runs (skipped, a receipt the
    # client signed above the deposit after a top-up would go unclaimed)
    ending_reads: list[bool] = []
    read = module.PaidConnection.read_deposit
    if driver.name == "blocking":

        def reads(self: Any, *, ending: bool = False) -> None:
            ending_reads.append(ending)
            read(self, ending=ending)

    else:

        async def reads(self: Any, *, ending: bool = False) -> None:  # type: ignore[misc]
            ending_reads.append(ending)
            await read(self, ending=ending)

    monkeypatch.setattr(module.PaidConnection, "read_deposit", reads)
    with (
        funded_ledger(tmp_path, CLIENT) as ledger,
        caplog.at_level(logging.ERROR, logger=driver.server_module),
        driver.connected(
            ledger,
            (_echoes_then_returns, _echoes_then_returns_aio),
            host=SERVER,
            client=CLIENT,
            port=PORT,
            sla=SLA,
            deposit=DEPOSIT * 100,
        ) as (_, sock),
    ):
        cid = sock.connection_id
        assert cid is not None
        exchange(sock, ROUNDS)
        assert wait_for(lambda: is_settled(ledger, cid), 10.0)
        escrow = settled_escrow(ledger, cid)
        # (1 MIST a byte: the final receipt covers both directions of every round)
        assert escrow.claimed >= 2 * ROUNDS * 30_000
        assert escrow.claimed + escrow.refunded == escrow.deposited
    failed = [r for r in caplog.records if r.exc_info is not None and r.exc_info[0] is RuntimeError]
    assert [(r.name, r.getMessage()) for r in failed] == [
        (driver.server_module, f"connection {cid}: its end before the settlement failed")
    ]
    assert True in ending_reads
