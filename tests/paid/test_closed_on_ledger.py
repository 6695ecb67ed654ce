"""A client that half-closes its connection on the ledger while the paid server still
serves it gets the connection closed (CLOSE_LEDGER_CLOSED) and settled at once, the
server claiming its latest receipt. Claims came only at the end of a connection: once
the half-close timeout had passed, the client settled first and took the whole escrow
back, while it went on being served (here: a served connection and the ledger's clock
moved on).

Both paid servers, the blocking one and the asyncio one (the ``driver`` fixture).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ChainError, ConnectionClosed, ConnectionLost
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._settlement import collect_refund
from dtp.payments.metering import CLOSE_LEDGER_CLOSED, MeteringConfig
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=10_000)
DEPOSIT = 1 << 32  # (never used up here: 4 TiB at 1 MIST a KiB)
POLICY = ServicePolicy(refresh_interval=0.05, ledger_check_interval=0.1)
METERING = MeteringConfig(every_bytes=64 << 10)
SERVER, CLIENT = ident(0x91), ident(0x92)
CHUNK = bytes(16 << 10)
PORT = 7091


def _half_close_while_served(ledger: LocalLedger, sock: dtp.socket.DTPSocket) -> tuple[str, int]:
    """Read a while on ``sock`` (paying by receipts), half-close on the ledger and read
    on until the server closes (or 15 s: served on, as before); then, the ledger's clock
    moved past the half-close timeout, the client collects its refund -- settling itself
    when the server has not -- and closes the socket. (connection ID, bytes read before
    the half-close)."""
    cid = sock.connection_id
    assert cid is not None
    got = 0
    while got < 256 << 10:
        got += len(sock.recv(1 << 16))
    ledger.close_connection(CLIENT, cid)  # while still served
    # (a bound for a starved server: one that reacts ends this loop at once, so only a
    # server that serves on waits it all)
    until = time.monotonic() + 15.0
    # the server's CLOSE, or -- when the server's close found its carrier full of
    # what it was streaming, the CLOSE record queued behind -- the carrier's reset
    with contextlib.suppress(ConnectionClosed, ConnectionLost):
        while sock.recv(1 << 16) and time.monotonic() < until:
            pass
    if sock._engine.session.terminated is not None:
        error = sock._engine.session.error
        if type(error) is ConnectionClosed:
            assert error.code == CLOSE_LEDGER_CLOSED
        # (the settlement follows the close: the ten minutes the client would wait
        # before settling itself pass here at once)
        wait_for(lambda: is_settled(ledger, cid), 5.0)
    # still connected when the server serves on: the client settles itself
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS + 1)
    with contextlib.suppress(ChainError):  # (settled already: what it refunded)
        collect_refund(ledger, CLIENT, cid)
    sock.close()
    return cid, got


def _settled_with_a_claim(ledger: LocalLedger, cid: str, got: int) -> None:
    assert wait_for(lambda: is_settled(ledger, cid), 10.0)
    escrow = settled_escrow(ledger, cid)
    # the server claimed at least what the client read before its half-close (1 MIST
    # a KiB; the last receipt may lag a cadence), the rest refunded; the client that
    # settled first once the timeout passed had it all back, nothing claimed
    assert escrow.claimed >= got // 1024 - 64, (escrow.claimed, escrow.refunded)
    assert escrow.claimed + escrow.refunded == escrow.deposited
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def _streams(sock: PaidSocket) -> None:
    while True:
        sock.sendall(CHUNK)


async def _streams_aio(reader: PaidReader, writer: PaidWriter) -> None:
    while True:
        writer.write(CHUNK)
        await writer.drain()


def test_the_server_settles_a_connection_closed_on_the_ledger(
    tmp_path: Path, driver: Driver
) -> None:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        ledger.faucet(CLIENT.sui_address, DEPOSIT)
        with driver.connected(
            ledger,
            (_streams, _streams_aio),
            host=SERVER,
            client=CLIENT,
            port=PORT,
            sla=SLA,
            deposit=DEPOSIT,
            kind="stream",
            metering=METERING,
            policy=POLICY,
        ) as (_, sock):
            cid, got = _half_close_while_served(ledger, sock)
            _settled_with_a_claim(ledger, cid, got)
            assert ledger.get_connection(cid).state != ConnectionState.OPEN


def test_the_interval_is_checked() -> None:
    bad: list[Any] = [0, -1.0, float("nan"), "30"]
    for value in bad:
        with pytest.raises((ValueError, TypeError)):
            ServicePolicy(ledger_check_interval=value)
