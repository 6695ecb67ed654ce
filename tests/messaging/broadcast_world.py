"""A broadcast on a LocalLedger with its caster serving DTP on 127.0.0.1 (``World``; the
``world`` fixture in conftest.py), a station's signed HELLO, and a station joined to a
listener: what the broadcast tests share."""

from __future__ import annotations

from dataclasses import dataclass

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging._framing import encode_frame
from dtp.messaging.broadcast import (
    HELLO,
    BroadcastListener,
    BroadcastStation,
    signed_hello,
)

PRICE = 100
SLOT_MS = 1000


@dataclass
class World:
    """A broadcast on a LocalLedger: its caster (serving DTP), two funded fans, and the
    connections made, aborted at the end."""

    ledger: LocalLedger
    caster: HostIdentity
    fans: list[HostIdentity]
    broadcast_id: str
    server: dtp.socket.DTPServer
    socks: list[dtp.socket.DTPSocket]

    def pair(self) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
        """A DTP connection: (station side, listener side)."""
        client = dtp.socket.create_connection(
            self.server.address, server_key=self.caster.noise_public, timeout=10
        )
        server_side, _ = self.server.accept(timeout=10)
        client.settimeout(None)
        server_side.settimeout(None)
        self.socks += [client, server_side]
        return server_side, client

    def conserved(self) -> None:
        audit = self.ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def hello_frame(
    signer: HostIdentity,
    broadcast_id: str,
    session: bytes = b"\x01" * 16,
    next_seq: int = 1,
    channel: str = "radio",
    started_ms: int = 1_700_000_000_000,
) -> bytes:
    """A station's HELLO, signed by ``signer`` (docs/messaging.md §5)."""
    signature = signer.sign(signed_hello(broadcast_id, channel, session, started_ms, next_seq))
    return encode_frame(
        [
            HELLO,
            broadcast_id,
            channel,
            signer.ed25519_public,
            True,
            next_seq,
            session,
            started_ms,
            signature,
        ]
    )


def station_and_listener(w: World, fan: int = 0) -> tuple[BroadcastStation, BroadcastListener]:
    """A station of ``w``'s broadcast and fan ``fan``'s listener, joined (HELLO heard)."""
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    s_side, l_side = w.pair()
    listener = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[fan], broadcast_id=w.broadcast_id
    )
    station.attach(s_side, f"fan{fan}")
    assert listener.wait_hello(10)
    return station, listener
