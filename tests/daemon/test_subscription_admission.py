"""The services daemon admits a connection opened with a subscription (docs/escrow.md
§13) only while the subscription lasts: its admission is the library's
(:class:`~dtp.hostid._admission.LedgerAdmission`), which reads the subscription a
connection records and refuses one that is over with the reason the client raises as
:class:`~dtp.errors.SubscriptionRefused` (and then ends on the ledger at once)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dtp.daemon._config import Backend, ServiceConfig
from dtp.daemon._services import ServiceHost
from dtp.daemon._state import StatusBook
from dtp.errors import SubscriptionRefused, refusal_error
from dtp.hostid._admission import PeerInfo
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol._state import CloseCode


def test_the_daemon_refuses_a_connection_whose_subscription_is_over(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    server, client = HostIdentity.generate(), HostIdentity.generate()
    try:
        host_id = ledger.create_host(server, server.noise_public)
        ledger.add_service(server, host_id, 7000, "svc", Sla(1, 0, 100))
        ledger.faucet(client.sui_address, 10**6)
        offer = ledger.create_subscription_offer(server, host_id, 7000, 500)
        sub = ledger.subscribe(client, offer, 1)
        cap = ledger.create_spending_cap(client, 10**6)
        first = ledger.open_subscribed_connection(client, sub, cap).connection_id
        second = ledger.open_subscribed_connection(client, sub, cap).connection_id
        host = ServiceHost(ledger, server, StatusBook(tmp_path / "state"))
        host.host_id = host_id
        host.services[7000] = ServiceConfig("svc", 7000, (Backend("127.0.0.1", 9),))

        def admit(cid: str) -> str | None:
            return asyncio.run(host._admit(PeerInfo(client.sui_address, cid, 7000)))

        assert admit(first) is None  # live: admitted like any connection
        ledger.advance_epoch()
        reason = admit(second)
        assert reason is not None
        refused = refusal_error(reason, CloseCode.REFUSED)
        assert isinstance(refused, SubscriptionRefused)
        assert f"subscription {sub} covers epochs 0..0; it is epoch 1" in reason
    finally:
        ledger.close()
