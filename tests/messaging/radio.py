"""A broadcast on air on a LocalLedger file, its station serving DTP connections on
127.0.0.1 and a funded fan tuning in (Radio), with the casters and fans of the broadcast
money tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging.broadcast import BroadcastListener, BroadcastStation


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


CASTERS = [ident(0x51), ident(0x52)]
FANS = [ident(0x61), ident(0x62), ident(0x63)]
PRICE = 100
SLOT_MS = 1_000


@dataclass
class Radio:
    ledger: LocalLedger
    server: dtp.socket.DTPServer
    socks: list[dtp.socket.DTPSocket]
    b_id: str

    def pair(self) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
        """A real DTP connection on 127.0.0.1: (station side, listener side)."""
        client = dtp.socket.create_connection(
            self.server.address, server_key=CASTERS[0].noise_public, timeout=30
        )
        server_side, _ = self.server.accept(timeout=30)
        client.settimeout(None)
        server_side.settimeout(None)
        self.socks += [client, server_side]
        return server_side, client

    def tune_in(self, station: BroadcastStation) -> BroadcastListener:
        s_side, l_side = self.pair()
        listener = BroadcastListener(
            l_side, ledger=self.ledger, identity=FANS[1], broadcast_id=self.b_id
        )
        station.attach(s_side, "fan")
        assert listener.wait_hello(30)
        return listener


def radio_on_air(ledger: LocalLedger) -> Iterator[Radio]:
    """The Radio on ``ledger``: its broadcast created and FANS[1] funded; closed after."""
    ledger.faucet(FANS[1].sui_address, 100_000)
    b_id = ledger.create_broadcast(CASTERS[0], "radio", PRICE, SLOT_MS)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=CASTERS[0])
    radio = Radio(ledger, server, [], b_id)
    yield radio
    for sock in radio.socks:
        sock.abort("test over")
    server.close()
