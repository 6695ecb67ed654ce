"""The services daemon holds a paying client's tunnels back while its receipts lag more
than ``unpaid_slack`` behind (back-pressure), rather than cutting them; the forwarder's
receipts keep their time cadence while no bytes move, so the held tunnels go on."""

from __future__ import annotations

import os
import time

from dtp.daemon.config import MIN_UNPAID_SLACK
from tests.test_daemon_tunnels import (
    PAID,
    Setup,
    conserved,
    echo_roundtrip,
    fwd_row,
    service,
    setup,
    svc_row,
)

__all__ = ["setup"]  # the fixture, used by name below


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
