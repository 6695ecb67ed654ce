"""The services daemon holds a paying client's tunnels back while its receipts lag more
than ``unpaid_slack`` behind (back-pressure), rather than cutting them; the forwarder's
receipts keep their time cadence while no bytes move, so the held tunnels go on."""

from __future__ import annotations

import os
import time
from typing import cast

import pytest

import dtp.aio
from dtp.daemon._config import MIN_UNPAID_SLACK, Backend, ServiceConfig
from dtp.daemon._served import ServedConnection
from dtp.daemon._served_tunnels import UNPAID_PAUSE, UNPAID_WAIT
from dtp.daemon._services import ServiceHost
from dtp.errors import TunnelError
from dtp.ledger._objects import Sla
from dtp.payments.receipts import ConnectionTerms
from tests.daemon.tunnel_setup import (
    PAID,
    Setup,
    conserved,
    echo_roundtrip,
    fwd_row,
    service,
    svc_row,
)
from tests.support.scopes import TEST_PACKAGE


def test_tunnels_wait_for_lagging_receipts_instead_of_being_cut(setup: Setup) -> None:
    b = setup.backend()
    ledger = setup.ledger()
    # the smallest slack the daemon takes, and a forwarder that signs for bytes only
    # every 16 MiB: its receipts come by time (once a second), far behind the usage
    paid = service([b.info["port"]], extra=f"{PAID}\nunpaid_slack = {MIN_UNPAID_SLACK + 1}")
    _, _, address = setup.pair(paid, forward_extra=f"receipt_every = {16 << 20}")
    data = os.urandom(12 << 20)
    start = time.monotonic()
    # (cut at once, the tunnel was reset after the first 8 MiB or so: b"" or an error)
    assert echo_roundtrip(address, data, timeout=60) == data
    elapsed = time.monotonic() - start
    # 24 MiB counted both ways, at most 8 MiB past the receipts: held for at least one
    # receipt of the time cadence
    assert elapsed >= 0.9
    row = svc_row(setup)
    assert row["denials"] == 0 and row["tunnels"] == 1
    assert fwd_row(setup)["errors"] == 0
    assert conserved(ledger)


# -- the hold itself, on a ServiceHost with nothing running ----------------------------


def _conn(price_per_kib: int = 10) -> ServedConnection:
    service = ServiceConfig("svc", 7000, (Backend("127.0.0.1", 9),), unpaid_slack=1000)
    terms = ConnectionTerms(
        "0x1", "0x2", Sla(price_per_kib, 0, 10_000), bytes(32), 10_000, TEST_PACKAGE
    )
    writer = cast(dtp.aio.DTPStreamWriter, None)  # (not used by the hold)
    return ServedConnection("0x1", service, terms, "0x3", writer)


def test_the_hold_lasts_while_receipts_lag_then_cuts(host: ServiceHost) -> None:
    conn = _conn()
    service = conn.service
    charge = host.tunnels.charger(conn, service)  # what each tunnel calls per chunk
    assert charge(1000) is None  # within the slack
    assert charge(1) == UNPAID_WAIT  # one byte past it: held
    first = conn.unpaid_since
    assert first is not None
    assert charge(0) == UNPAID_WAIT  # looked at again: still held
    assert conn.unpaid_since == first  # (the pause is timed from its start)
    assert conn.bytes == 1001
    conn.paid_bytes = 1  # a receipt came: within the slack again
    assert charge(0) is None and conn.unpaid_since is None
    assert host.stats(service).denials == 0
    # behind again, and for UNPAID_PAUSE: cut, and counted
    assert charge(10) == UNPAID_WAIT
    assert conn.unpaid_since is not None
    conn.unpaid_since -= UNPAID_PAUSE
    with pytest.raises(TunnelError, match="not covered by receipts"):
        charge(0)
    assert host.stats(service).denials == 1


def test_a_free_service_never_holds(host: ServiceHost) -> None:
    conn = _conn(price_per_kib=0)
    assert host.tunnels.charger(conn, conn.service)(1 << 30) is None
    assert conn.unpaid_since is None and conn.bytes == 1 << 30
