"""A paid DTP service for tests: a Host on a LocalLedger file, a service on one of its
ports with an SLA, served in this process by :func:`dtp.socket.serve` (metered, settled
as each connection ends), and funded clients that connect to it by host ID.

    with paid_service(tmp_path / "ledger.sqlite", echo) as service:
        with service.connect(deposit=10_000) as sock:     # a funded client, by host ID
            sock.sendall(b"hello"); assert sock.recv(5) == b"hello"
        service.wait_settled()
        service.check()                                    # MIST conserved on the ledger
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import dtp.socket
from dtp.hostid.paid import PaidServer, PaidSocket, ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.ledger._connections import find_connections
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.testing.identities import identity
from dtp.transport.blocking._socket import DTPSocket

__all__ = ["DEFAULT_PAID_SLA", "PaidService", "echo", "paid_service"]

#: The service's terms unless given: 10 MIST a KiB, 5 a request, a deposit of 1,000 at least.
DEFAULT_PAID_SLA: Final = Sla(price_per_kib=10, price_per_request=5, min_deposit=1_000)


def echo(sock: PaidSocket) -> None:
    """A handler sending back what it reads, until the client's end."""
    with sock:
        while data := sock.recv(65536):
            sock.sendall(data)


@dataclass
class PaidService:
    """A paid service (see the module docs): its ``ledger`` (the test's handle on the
    file), ``server`` identity (the Host's authority), ``host_id``, ``port``, ``sla`` and
    the running ``paid_server``."""

    ledger: LocalLedger
    server: HostIdentity
    host_id: str
    port: int
    sla: Sla
    paid_server: PaidServer
    clients: list[HostIdentity] = field(default_factory=list)

    @property
    def address(self) -> str:
        """``dtp://<host id>:<port>``."""
        return f"dtp://{self.host_id}:{self.port}"

    def client(self, funds: int = 10**9) -> HostIdentity:
        """A new client identity (deterministic: :func:`~dtp.testing.identities.identity`
        from 100 on), funded with ``funds`` MIST."""
        who = identity(100 + len(self.clients))
        self.ledger.faucet(who.sui_address, funds)
        self.clients.append(who)
        return who

    def connect(
        self, who: HostIdentity | None = None, *, deposit: int | None = None, timeout: float = 30.0
    ) -> DTPSocket:
        """Connect ``who`` (a new funded client when None) by host ID, depositing
        ``deposit`` (the SLA's minimum by default)."""
        return dtp.socket.create_connection(
            self.address,
            timeout=timeout,
            ledger=self.ledger,
            identity=who or self.client(),
            deposit=deposit,
        )

    def wait_settled(self, timeout: float = 30.0) -> bool:
        """Wait until every ledger connection opened to the Host so far is settled
        (the server settles each as it ends); whether they were in ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while find_connections(self.ledger, host=self.host_id).reports:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def check(self) -> None:
        """Assert that MIST is conserved on the ledger (its audit)."""
        audit = self.ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"], audit


@contextmanager
def paid_service(
    ledger_path: str | Path,
    handler: Callable[[PaidSocket], None] = echo,
    *,
    server: HostIdentity | None = None,
    port: int = 7,
    sla: Sla = DEFAULT_PAID_SLA,
    kind: str = "paid",
    policy: ServicePolicy | None = None,
    receipts: str | Path | None = None,
) -> Iterator[PaidService]:
    """Serve ``handler`` (each paid connection's stream, in a thread of its own) as the
    paid service ``port`` of a new Host of ``server`` (``identity(1)`` by default) on the
    LocalLedger file ``ledger_path``; stopped when the block ends. ``receipts``: the
    server's receipt store file (next to the ledger by default)."""
    path = Path(ledger_path)
    owner = server or identity(1)
    ledger = LocalLedger(path)
    serving_ledger = LocalLedger(path)  # (the server's own handle, as another process's)
    try:
        host_id = ledger.create_host(owner, owner.noise_public)
        ledger.add_service(owner, host_id, port, kind, sla)
        served = dtp.socket.serve(
            host_id,
            port,
            handler,
            ledger=serving_ledger,
            identity=owner,
            receipts=receipts or path.with_name(path.name + ".receipts"),
            policy=policy,
        )
        thread = threading.Thread(target=served.serve_forever, name="dtp-paid-service", daemon=True)
        thread.start()
        try:
            yield PaidService(ledger, owner, host_id, port, sla, served)
        finally:
            served.close()
            served.wait_released(30)
            thread.join(5)
    finally:
        serving_ledger.close()
        ledger.close()
