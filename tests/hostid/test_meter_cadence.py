"""A metered client's receipts keep their cadence while it only sends, on the lent
stream's fast path (sendall: the meter's first check made in place, on the counts and
the clock the lane stamped the send with), by bytes and by time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.hostid.paid import PaidSocket
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from tests.support.paid_inprocess import PaidService, ident, paid_service

# 1 MIST per KiB; an allowance far above any receipt interval here, so the meter's
# "sooner than every_bytes" rule (a quarter of min_deposit) never cuts in
SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=1 << 30)
SERVER, CLIENT = ident(0x61), ident(0x62)


def _sink(sock: PaidSocket) -> None:
    while sock.recv(1 << 20):
        pass


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[PaidService]:
    with paid_service(tmp_path, SERVER, CLIENT, 80, SLA, _sink) as service:
        yield service


def _connect(sink: PaidService, metering: MeteringConfig) -> dtp.socket.DTPSocket:
    return dtp.socket.create_connection(
        sink.address,
        timeout=10,
        ledger=sink.ledger,
        identity=CLIENT,
        deposit=1 << 30,
        metering=metering,
    )


def test_receipts_every_n_bytes_while_only_sending(sink: PaidService) -> None:
    every = 256 << 10
    total = 8 << 20
    piece = bytes(64 << 10)
    with _connect(sink, MeteringConfig(every_bytes=every, every_ms=0)) as sock:
        payment = sock._engine.hook
        assert payment is not None
        lent = 0
        for _ in range(total // len(piece)):
            sock.sendall(piece)
            lent += sock._engine.conn.lent_lane is not None
        during = payment.receipts_sent
    # the sends went the lane's way (most of them: a receipt takes the stream back,
    # the next send lends it again)
    assert lent >= total // len(piece) // 2
    # one receipt per 256 KiB sent, each counted from the last: 32 when every check
    # lands on the 256 KiB mark, fewer when it lands past it (a sendall cut in two by a
    # full carrier, checked at the cut: up to a piece past), never more
    assert total // (every + len(piece)) - 1 <= during <= total // every
    # and the final one at the close, if anything was left unpaid
    assert during <= payment.receipts_sent <= during + 1


def test_receipts_every_n_ms_while_only_sending(sink: PaidService) -> None:
    every_ms = 50
    with _connect(sink, MeteringConfig(every_bytes=0, every_ms=every_ms)) as sock:
        payment = sock._engine.hook
        assert payment is not None
        start = time.monotonic()
        while time.monotonic() - start < 0.6:
            sock.sendall(b"x" * 1000)
            time.sleep(0.005)
        during = payment.receipts_sent
        elapsed = time.monotonic() - start
    # a receipt each 50 ms there was unpaid usage: about 12 in 0.6 s (a slow machine
    # may stretch a gap, never add receipts beyond the cadence)
    assert 4 <= during <= elapsed * 1000 / every_ms + 1
