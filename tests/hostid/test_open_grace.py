"""``open_grace`` on the library servers (``dtp.socket.create_server``,
``dtp.aio.start_server`` and the paid ``serve`` of both): the seconds their ledger
admission looks for a connection a client names before refusing it as unknown (the
client's open may still be landing: it overlaps the handshake). By default
``LedgerAdmission.OPEN_GRACE``; on Sui a host may want longer (the daemon's
``open_grace``). A bad value is an InvalidArgument naming it, before anything listens
or the ledger is touched.

A real LocalLedger file and real servers on 127.0.0.1; the client names a connection
that does not exist, straight to the server's address."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.daemon._config as daemon_config
import dtp.socket
from dtp.errors import ConnectionRefused, InvalidArgument
from dtp.hostid._admission import LedgerAdmission
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import object_id_bytes
from dtp.protocol.connection import ConnectionConfig
from tests.support.paid_twins import echo, echo_aio, ident, loop_in_thread, stop

PORT = 443
SERVER, CLIENT = ident(0xB1), ident(0xB2)
KINDS = ["create_server", "start_server", "socket.serve", "aio.serve"]


@dataclass
class World:
    ledger: LocalLedger  # the client's
    server_ledger: LocalLedger
    host_id: str


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "ledger.db"
    ledger, server_ledger = LocalLedger(path), LocalLedger(path)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 1000))
    try:
        yield World(ledger, server_ledger, host_id)
    finally:
        ledger.close()
        server_ledger.close()


async def _plain_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


@contextmanager
def started(world: World, kind: str, **options: Any) -> Iterator[tuple[tuple[str, int], Any]]:
    """A server of ``kind`` on the host's port, admitting through the ledger with
    ``options``: (its TCP address, its ledger admission)."""
    if kind == "create_server":
        server = dtp.socket.create_server(
            ("127.0.0.1", 0),
            identity=SERVER,
            ledger=world.server_ledger,
            host_id=world.host_id,
            port=PORT,
            **options,
        )
        with server:
            yield server.address, server._admit_hook
        return
    if kind == "socket.serve":
        with dtp.socket.serve(
            world.host_id, PORT, echo, ledger=world.server_ledger, identity=SERVER, **options
        ) as paid:
            yield paid.address, paid.admission
        return
    with loop_in_thread() as loop:
        if kind == "start_server":
            made: Any = dtp.aio.start_server(
                _plain_echo,
                "127.0.0.1",
                0,
                identity=SERVER,
                ledger=world.server_ledger,
                host_id=world.host_id,
                dtp_port=PORT,
                **options,
            )
        else:
            made = dtp.aio.serve(
                world.host_id,
                PORT,
                echo_aio,
                ledger=world.server_ledger,
                identity=SERVER,
                **options,
            )
        server = asyncio.run_coroutine_threadsafe(made, loop).result(30)
        try:
            if kind == "start_server":
                yield server.sockets[0].getsockname()[:2], server._admit
            else:
                yield server.address, server.admission
        finally:
            if kind == "start_server":

                async def close() -> None:
                    server.close()
                    await server.wait_closed()

                asyncio.run_coroutine_threadsafe(close(), loop).result(30)
            else:
                asyncio.run_coroutine_threadsafe(stop(server), loop).result(60)


def _name_unknown_connection(address: tuple[str, int]) -> ConnectionRefused:
    """Connect to ``address`` naming a ledger connection that does not exist: the
    refusal."""
    config = ConnectionConfig(
        identity=CLIENT,
        is_client=True,
        connection_id=object_id_bytes("0x" + "cd" * 32),
        port=PORT,
    )
    with pytest.raises(ConnectionRefused) as info:
        dtp.socket.create_connection(
            address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT, config=config
        )
    return info.value


@pytest.mark.parametrize("kind", KINDS)
def test_the_servers_admission_looks_for_a_connection_as_long_as_open_grace(
    world: World, kind: str
) -> None:
    """With ``open_grace=0.05`` the admission refuses a connection that never lands
    once that grace is over, well within the default two seconds."""
    with started(world, kind, open_grace=0.05) as (address, admission):
        assert isinstance(admission, LedgerAdmission) and admission.OPEN_GRACE == 0.05
        start = time.monotonic()
        refusal = _name_unknown_connection(address)
        assert "unknown connection" in str(refusal)
        assert time.monotonic() - start < LedgerAdmission.OPEN_GRACE
    with started(world, kind) as (_, admission):
        assert admission.OPEN_GRACE == LedgerAdmission.OPEN_GRACE


def test_the_daemon_waits_as_the_library_does_except_longer_on_sui() -> None:
    """One default: the daemon's on a LocalLedger is the library's (repeated there by
    value, to keep its config's imports light); on Sui it is longer on purpose."""
    assert daemon_config.OPEN_GRACE == LedgerAdmission.OPEN_GRACE
    assert daemon_config.OPEN_GRACE_SUI > LedgerAdmission.OPEN_GRACE


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "2", True])
def test_a_bad_open_grace_is_refused_before_anything_starts(
    world: World, kind: str, value: object
) -> None:
    with (
        pytest.raises(InvalidArgument, match="open_grace must be a finite number"),
        started(world, kind, open_grace=value),
    ):
        pass
    # (the paid servers publish their endpoint once listening: nothing was)
    assert not world.ledger.get_host(world.host_id).endpoints


@pytest.mark.parametrize("kind", ["create_server", "start_server"])
def test_open_grace_without_ledger_admission_is_refused(kind: str) -> None:
    with pytest.raises(InvalidArgument, match="open_grace is the ledger admission's"):
        if kind == "create_server":
            dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER, open_grace=1.0)
        else:
            asyncio.run(
                dtp.aio.start_server(_plain_echo, "127.0.0.1", 0, identity=SERVER, open_grace=1.0)
            )
