"""A paid service on a LocalLedger file, served in this process (a thread), for tests
that look inside the server's paid layer while a real client connects by host ID."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dtp.socket
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.support.reads import recv_through


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


@dataclass
class PaidService:
    ledger: LocalLedger  # the client's view of the file
    address: str  # dtp://<host id>:<port>


@contextmanager
def paid_service(
    tmp_path: Path,
    server: HostIdentity,
    client: HostIdentity,
    port: int,
    sla: Sla,
    handle: Callable[[PaidSocket], None],
    policy: ServicePolicy | None = None,
) -> Iterator[PaidService]:
    """A host of ``server`` with a paid service on ``port`` (``sla``), ``client`` funded,
    served by ``handle`` until the block ends."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host_id, port, "paid", sla)
    ledger.faucet(client.sui_address, 1 << 40)
    served = dtp.socket.serve(
        host_id,
        port,
        handle,
        ledger=LocalLedger(tmp_path / "ledger.db"),
        identity=server,
        receipts=tmp_path / "receipts.db",
        policy=policy,
    )
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    try:
        yield PaidService(ledger, f"dtp://{host_id}:{port}")
    finally:
        served.close()
        thread.join(5)
        ledger.close()


def read_reply(service: PaidService, client: HostIdentity) -> bytes:
    """Connect to ``service`` as ``client`` (a deposit of 1 MiB), send b"g", read what
    the handler sends up to b"end", answer b"e", and return what came before b"end"."""
    with dtp.socket.create_connection(
        service.address, timeout=10, ledger=service.ledger, identity=client, deposit=1 << 20
    ) as sock:
        sock.sendall(b"g")
        got = recv_through(sock, b"end")
        sock.sendall(b"e")
    return got[:-3]
