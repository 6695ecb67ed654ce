"""The services daemon closes an open connection whose client half-closed it on the
ledger while it was served (its end then settles it, claiming what the receipts
cover): it read only the Host, and a client that half-closed mid-connection could,
once the half-close timeout passed, settle first and take its whole escrow back while
still served (dtp.hostid.paid's servers are held to the same)."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import cast

import dtp.aio
from dtp.daemon._config import Backend, ServiceConfig
from dtp.daemon._served import ServedConnection
from dtp.daemon._services import ServiceHost
from dtp.daemon._state import StatusBook
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import ConnectionTerms


def test_a_connection_closed_on_the_ledger_is_closed(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    server, client = HostIdentity.generate(), HostIdentity.generate()
    sla = Sla(1, 0, 100)
    host_id = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host_id, 7000, "svc", sla)
    ledger.faucet(client.sui_address, 10**6)
    cap = ledger.create_spending_cap(client, 10**6)
    opened = ledger.open_connection(client, host_id, 7000, cap, 1000)
    cid = opened.connection_id
    host = ServiceHost(ledger, server, StatusBook(tmp_path / "state"))
    host.host_id = host_id
    aborted: list[str] = []
    writer = cast(dtp.aio.DTPStreamWriter, types.SimpleNamespace(abort=aborted.append))
    service = ServiceConfig("svc", 7000, (Backend("127.0.0.1", 9),))
    terms = ConnectionTerms(
        cid, opened.escrow_id, sla, client.ed25519_public, 1000, ledger.package_id
    )
    conn = ServedConnection(cid, service, terms, client.sui_address, writer)
    host.conns[cid] = conn
    try:
        conn.ledger_check_due = 0.0
        asyncio.run(host.refresh_policy())
        assert aborted == []  # Open: served on
        ledger.close_connection(client, cid)  # the client half-closes, still served
        asyncio.run(host.refresh_policy())
        assert aborted == []  # (read again only once its interval passed)
        conn.ledger_check_due = 0.0
        asyncio.run(host.refresh_policy())
        assert aborted == ["the connection was closed on the ledger"]
    finally:
        ledger.close()
