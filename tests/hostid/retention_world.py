"""A LocalLedger file with a host whose service keeps its ledger-carrier records for a
retention fee (RETENTION_MS, PRICE), both sides funded and one connection open, for the
retention tests of the ledger carrier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtp.hostid.ledger_carrier._carrier import LedgerCarrier, LedgerLink
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.hostid.ledger_carrier_pairs import frozen_clock, stepper
from tests.support.ledger_carrier_world import PORT
from tests.support.pairs import CLIENT_ID, SERVER_ID, Side, make_pair

SLA = Sla(10, 5, 1000)
RETENTION_MS = 60_000
PRICE = 2  # MIST per stored byte


class World:
    """A LocalLedger file with the server's host, service and retention terms, both sides
    funded, and one opened connection."""

    def __init__(self, path: Path) -> None:
        self.ledger = LocalLedger(path, clock_ms=1_000_000)
        self.host = self.ledger.create_host(SERVER_ID, SERVER_ID.noise_public, [])
        self.ledger.add_service(SERVER_ID, self.host, PORT, "raw", SLA)
        for who in (CLIENT_ID, SERVER_ID):
            self.ledger.faucet(who.sui_address, 2_000_000)
        self.terms = self.ledger.create_retention_terms(
            SERVER_ID, self.host, PORT, RETENTION_MS, PRICE
        )
        cap = self.ledger.create_spending_cap(CLIENT_ID, 1_000_000)
        self.conn_id = self.ledger.open_connection(
            CLIENT_ID, self.host, PORT, cap, 1000
        ).connection_id

    def link(
        self, ledger: Any = None, **kw: Any
    ) -> tuple[Side, Side, LedgerLink, LedgerCarrier, LedgerCarrier]:
        led = self.ledger if ledger is None else ledger
        client, server = make_pair(
            reliable_carrier=False, stream_window=256 * 1024, handshake_timeout=60.0
        )
        carriers = [
            LedgerCarrier(
                led, me, self.conn_id, peer_address=peer.sui_address, clock=frozen_clock, **kw
            )
            for me, peer in ((CLIENT_ID, SERVER_ID), (SERVER_ID, CLIENT_ID))
        ]
        c, s = Side(client), Side(server)
        link = LedgerLink(client, server, *carriers)
        assert link.run(lambda: client.established and server.established, on_round=stepper(c, s))
        return c, s, link, carriers[0], carriers[1]
