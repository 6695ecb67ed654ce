"""A server that admits a Host's clients through the ledger (``dtp.socket.create_server``
and ``dtp.aio.start_server`` with ``ledger``/``host_id``/``port``) checks first that the
Host exists and publishes the server's own Noise key (its services may come later, as
its endpoint does). A client takes the
key it handshakes with from the Host and opens its deposit before the handshake: a server
holding another key failed every client's handshake after the deposit went into escrow,
where it waited for the half-close timeout.

A real LocalLedger file; the servers would listen on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import HostConfigError, ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.support.admitting_servers import start_admitting
from tests.support.paid_twins import ident

PORT = 443
SERVER, OTHER = ident(0xC1), ident(0xC2)


def _make(kind: str, ledger: LocalLedger, host_id: str, port: int, identity: HostIdentity) -> None:
    """Start a server of ``kind`` with ledger admission, and close it again."""
    if kind == "create_server":
        dtp.socket.create_server(
            ("127.0.0.1", 0), identity=identity, ledger=ledger, host_id=host_id, port=port
        ).close()
        return

    async def start() -> None:
        server = await start_admitting(identity, ledger, host_id, port)
        server.close()
        await server.wait_closed()

    asyncio.run(start())


@pytest.mark.parametrize("kind", ["create_server", "start_server"])
def test_a_server_checks_the_host_it_admits_for(kind: str, tmp_path: Path) -> None:
    with LocalLedger(tmp_path / "ledger.db") as ledger:
        host_id = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 1000))
        _make(kind, ledger, host_id, PORT, SERVER)  # the Host's key, its service: served

        with pytest.raises(HostConfigError) as wrong_key:
            _make(kind, ledger, host_id, PORT, OTHER)
        message = str(wrong_key.value)
        assert SERVER.noise_public.hex() in message and OTHER.noise_public.hex() in message
        _make(kind, ledger, host_id, PORT + 1, SERVER)  # (a service may come once it listens)
        with pytest.raises(ObjectNotFound):
            _make(kind, ledger, "0x" + "ab" * 32, PORT, SERVER)

        # once the Host publishes the other key, the other identity serves it
        ledger.set_noise_static_key(SERVER, host_id, OTHER.noise_public)
        _make(kind, ledger, host_id, PORT, OTHER)
