"""Shared set-up for the asyncio paid server's tests (test_final_receipt.py,
test_datagram_pause.py): a LocalLedger file, a host with a
service, an asyncio paid server and asyncio clients by host ID (the clients and the
server on separate LocalLedger handles of one file, as separate processes would be)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dtp.aio
from dtp.hostid.paid import PaidServer, ServicePolicy
from dtp.hostid.paid._aio import PaidAioServer
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.support.ledger_server import identity_from_seed
from tests.support.settlements import settled_escrow

PORT = 7
SERVER = identity_from_seed(0x51)
CLIENT = identity_from_seed(0x52)
FUNDS = 10_000_000
SLA = Sla(10, 5, 5000)


class World:
    """One ledger file with a funded client and a host serving :data:`PORT`."""

    def __init__(self, tmp_path: Path, sla: Sla = SLA) -> None:
        self.tmp = tmp_path
        self.book = LocalLedger(tmp_path / "ledger.db")
        self.host_id = self.book.create_host(SERVER, SERVER.noise_public)
        self.book.add_service(SERVER, self.host_id, PORT, "svc", sla)
        self.book.faucet(CLIENT.sui_address, FUNDS)
        self.server_book = LocalLedger(tmp_path / "ledger.db")

    def close(self) -> None:
        self.server_book.close()
        self.book.close()

    def claimed(self, connection_id: str) -> int:
        """What the settlement claimed from the connection's escrow."""
        return settled_escrow(self.book, connection_id).claimed

    async def serve(
        self, callback: Any, policy: ServicePolicy | None = None, **kw: Any
    ) -> PaidAioServer:
        return await dtp.aio.serve(
            self.host_id,
            PORT,
            callback,
            ledger=self.server_book,
            identity=SERVER,
            receipts=kw.pop("receipts", self.tmp / "receipts.db"),
            policy=policy or ServicePolicy(),
            **kw,
        )

    def serve_blocking(self, handler: Any, policy: ServicePolicy | None = None) -> PaidServer:
        import dtp.socket

        return dtp.socket.serve(
            self.host_id,
            PORT,
            handler,
            ledger=self.server_book,
            identity=SERVER,
            receipts=self.tmp / "receipts.db",
            policy=policy or ServicePolicy(),
        )

    async def connect(self, deposit: int = 200_000, metering: Any = None, **kw: Any) -> Any:
        return await dtp.aio.open_connection(
            f"dtp://{self.host_id}:{PORT}",
            ledger=self.book,
            identity=CLIENT,
            deposit=deposit,
            timeout=20,
            metering=metering,
            **kw,
        )

    def connect_blocking(self, deposit: int = 200_000, metering: Any = None) -> Any:
        import dtp.socket

        return dtp.socket.create_connection(
            f"dtp://{self.host_id}:{PORT}",
            timeout=20,
            ledger=self.book,
            identity=CLIENT,
            deposit=deposit,
            metering=metering,
        )
