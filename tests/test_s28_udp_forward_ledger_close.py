"""A UDP forward half-closes each flow's ledger connection once it ended, as the TCP
forwarder does: its billing is the flow's own, so the connection's close did nothing on
the ledger, and where the daemon did not settle (killed, its claim refused) the client
could never settle either (EConnectionOpen), its deposit held (found by a second
reader)."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import cast

import dtp.aio
from dtp.address import HostAddress
from dtp.chain.local import LocalLedger
from dtp.chain.objects import ConnectionState, Sla
from dtp.daemon.config import Backend, ForwardConfig
from dtp.daemon.state import StatusBook
from dtp.daemon.udp_forward import UdpForward
from dtp.keys import HostIdentity


def test_an_ended_flow_is_half_closed_on_the_ledger(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    server, client = HostIdentity.generate(), HostIdentity.generate()
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 53, "dns", Sla(0, 1, 10))
    ledger.faucet(client.sui_address, 10**6)
    cap = ledger.create_spending_cap(client, 10**6)
    cid = ledger.open_connection(client, host, 53, cap, 100).connection_id
    config = ForwardConfig(
        "dns", Backend("127.0.0.1", 0), HostAddress.parse(f"dtp://{host}:53"), protocol="udp"
    )
    forward = UdpForward(config, ledger, client, StatusBook(tmp_path / "state"))

    async def wait_closed() -> None:
        return None  # (the flow's connection has ended)

    writer = cast(
        dtp.aio.DTPStreamWriter, types.SimpleNamespace(connection_id=cid, wait_closed=wait_closed)
    )
    try:
        assert ledger.get_connection(cid).state == ConnectionState.OPEN
        asyncio.run(forward._close_when_ended(writer))
        tc = ledger.get_connection(cid)
        assert tc.state == ConnectionState.HALF_CLOSED
        assert tc.half_closed_by == client.sui_address
        asyncio.run(forward._close_when_ended(writer))  # (once is enough: again, nothing)
    finally:
        ledger.close()
