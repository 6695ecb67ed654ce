"""A LocalLedger file holding one object of each kind -- a host with a service, an open
connection with a pipe, a broadcast on air, a response escrow, retention terms, a
subscription and a sponsor pool -- for the tests that bad arguments are refused."""

from __future__ import annotations

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x41), ident(0x42)
SLA = Sla(10, 5, 1000)


class World:
    """A file ledger with a host (service 7), an open connection with a pipe, a
    broadcast on air, a response escrow and retention terms."""

    def __init__(self, ledger: LocalLedger) -> None:
        self.ledger = ledger
        ledger.faucet(SERVER.sui_address, 10**9)
        ledger.faucet(CLIENT.sui_address, 10**9)
        self.host = ledger.create_host(SERVER, SERVER.noise_public, ["tcp://127.0.0.1:7000"])
        ledger.add_service(SERVER, self.host, 7, "echo", SLA)
        self.cap = ledger.create_spending_cap(CLIENT, 10**9)
        opened = ledger.open_connection(CLIENT, self.host, 7, self.cap, 1000)
        self.connection, self.escrow = opened.connection_id, opened.escrow_id
        self.pipe = ledger.create_pipe(CLIENT, self.connection, 1)
        self.broadcast = ledger.create_broadcast(SERVER, "news", 1, 1000)
        ledger.broadcast_contribute(CLIENT, self.broadcast, 10)
        self.response = ledger.response_escrow_deposit(
            CLIENT, SERVER.sui_address, b"req-1", 10, 10**6
        )
        self.terms = ledger.create_retention_terms(SERVER, self.host, 7, 5_000, 1)
        self.offer = ledger.create_subscription_offer(SERVER, self.host, 7, 10)
        self.subscription = ledger.subscribe(CLIENT, self.offer, 1)
        self.pool = ledger.create_sponsor_pool(SERVER, self.host, 7, 5000, max_pledge=10**9)
