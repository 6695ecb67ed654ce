"""The services daemon holds a connection's new tunnels while more than a few of them
(requests) are ahead of its receipts, as it holds bytes past ``unpaid_slack``, and the
forwarder signs for its tunnels every few: a service priced only by the request served
every tunnel free (the hold looked at bytes alone, and not at all without a byte price),
and a mixed one took receipts that covered the bytes only."""

from __future__ import annotations

from typing import cast

import pytest

import dtp.aio
from dtp.daemon._config import Backend, ServiceConfig
from dtp.daemon._fees import REQUESTS_PER_RECEIPT, ClientFees
from dtp.daemon._served import ServedConnection
from dtp.daemon._served_tunnels import UNPAID_PAUSE, UNPAID_REQUESTS, UNPAID_WAIT
from dtp.daemon._services import ServiceHost
from dtp.errors import TunnelError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.receipts import ConnectionTerms
from tests.support.scopes import TEST_PACKAGE, scope_of


def _conn(sla: Sla) -> ServedConnection:
    service = ServiceConfig("svc", 7000, (Backend("127.0.0.1", 9),), unpaid_slack=1 << 20)
    terms = ConnectionTerms("0x1", "0x2", sla, bytes(32), 10_000, TEST_PACKAGE)
    writer = cast(dtp.aio.DTPStreamWriter, None)  # (not used by the hold)
    return ServedConnection("0x1", service, terms, "0x3", writer)


@pytest.mark.parametrize("sla", [Sla(0, 5, 0), Sla(10, 5, 0)], ids=["by request", "mixed"])
def test_tunnels_ahead_of_the_receipts_are_held_then_cut(host: ServiceHost, sla: Sla) -> None:
    conn = _conn(sla)
    service = conn.service
    conn.requests = UNPAID_REQUESTS
    assert host.tunnels.unpaid_hold(conn, service) == 0.0  # within the slack
    conn.requests += 1
    assert host.tunnels.unpaid_hold(conn, service) == UNPAID_WAIT  # one past it: held
    conn.paid_requests = 1  # a receipt came (its bytes alone would not do)
    assert host.tunnels.unpaid_hold(conn, service) == 0.0 and conn.unpaid_since is None
    conn.requests += 1
    assert host.tunnels.unpaid_hold(conn, service) == UNPAID_WAIT
    assert conn.unpaid_since is not None
    conn.unpaid_since -= UNPAID_PAUSE
    with pytest.raises(TunnelError, match="tunnels not covered by receipts"):
        host.tunnels.unpaid_hold(conn, service)


def test_a_service_free_of_request_fees_never_holds_for_requests(host: ServiceHost) -> None:
    conn = _conn(Sla(10, 0, 0))
    conn.requests = 10 * UNPAID_REQUESTS
    assert host.tunnels.unpaid_hold(conn, conn.service) == 0.0


def test_the_forwarder_signs_for_its_tunnels_before_the_daemon_holds_them() -> None:
    assert REQUESTS_PER_RECEIPT < UNPAID_REQUESTS
    fees = ClientFees(
        HostIdentity.generate(), scope_of("0x" + "11" * 32), Sla(0, 5, 0), 10**6, 1 << 30
    )
    covered = 0
    for opened in range(1, 8 * REQUESTS_PER_RECEIPT + 1):
        receipt = fees.record(requests=1)
        if receipt is not None:
            covered = receipt.total_requests
        # never more than REQUESTS_PER_RECEIPT tunnels ahead of the receipts sent
        assert opened - covered < REQUESTS_PER_RECEIPT
