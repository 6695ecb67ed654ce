"""The library servers' place for each connection under the Host's connection limits
(docs/escrow.md §2): a ledger-admitted server counts the DTP connections it serves and
refuses one beyond ``max_connections_per_client`` or a service's ``max_connections``.

- A connection's place is given back however its server-side socket goes, the garbage
  collector included (the blocking server: ``DTPSocket.__del__`` closes the carrier and
  hands the release to the timer thread; the asyncio server's abandoned writer closes).
- A server that settles (``settle_on_close``) closes and settles a connection it refuses
  at a limit as it refuses it: the client's deposit comes back whole at once, as the
  daemon's does. One that does not leaves it to the client: half-closed as it meets
  the refusal, refunded once the half-close timeout has passed (``collect_refund``,
  ``dtp refund``).

A real LocalLedger file, real servers on 127.0.0.1, real clients connecting by host ID;
each story runs on the blocking server and on the asyncio one."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionLimitReached, ConnectionStateError
from dtp.hostid._served import ServedConnections
from dtp.ledger._objects import ConnectionState, EventFilter, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._refunds import refunds_for
from dtp.payments._settlement import collect_refund
from tests.support.ledger_server import identity_from_seed
from tests.support.paid_twins import loop_in_thread
from tests.support.polling import wait_for
from tests.support.settlements import settled_escrow, settlement

PORT = 443
SLA = Sla(10, 5, 1000)
DEPOSIT = 5000
SERVER = identity_from_seed(0x91)
ALICE, BOB = identity_from_seed(0x92), identity_from_seed(0x93)
HALF_CLOSE_TIMEOUT_MS = 600_000


@dataclass
class World:
    ledger: LocalLedger  # the clients'
    server_ledger: LocalLedger
    host_id: str

    def connect(self, client: Any) -> dtp.socket.DTPSocket:
        """A DTP connection of ``client`` to the host's service (its own ledger
        connection, ``DEPOSIT`` in escrow), checked to be served by an echo."""
        sock = dtp.socket.create_connection(
            f"dtp://{self.host_id}:{PORT}",
            timeout=10,
            ledger=self.ledger,
            identity=client,
            deposit=DEPOSIT,
        )
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        return sock

    def refused(self, client: Any) -> str:
        """The ID of a new ledger connection of ``client`` whose DTP connection the
        server refuses at a connection limit."""
        with pytest.raises(ConnectionLimitReached):
            dtp.socket.create_connection(
                f"dtp://{self.host_id}:{PORT}",
                timeout=10,
                ledger=self.ledger,
                identity=client,
                deposit=DEPOSIT,
            )
        opened, _ = self.ledger.events(filter=EventFilter(type="ConnectionOpened"))
        assert opened[-1]["client"] == client.sui_address
        return str(opened[-1]["connection"])

    def publish(self, port: int) -> None:
        self.ledger.set_endpoints(SERVER, self.host_id, [f"tcp://127.0.0.1:{port}"])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "ledger.db"
    ledger, server_ledger = LocalLedger(path), LocalLedger(path)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    for client in (ALICE, BOB):
        ledger.faucet(client.sui_address, 1_000_000)
    try:
        yield World(ledger, server_ledger, host_id)
    finally:
        ledger.close()
        server_ledger.close()


def _echo(sock: dtp.socket.DTPSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


async def _echo_aio(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@contextmanager
def echo_server(world: World, api: str, *, settle_on_close: bool) -> Iterator[ServedConnections]:
    """An echo server of the kind ``api`` admitting through the ledger, its endpoint
    published, until the block ends: its count of the connections it serves."""
    if api == "blocking":
        server = dtp.socket.create_server(
            ("127.0.0.1", 0),
            identity=SERVER,
            ledger=world.server_ledger,
            host_id=world.host_id,
            port=PORT,
            settle_on_close=settle_on_close,
        )
        thread = threading.Thread(target=server.serve_forever, args=(_echo,), daemon=True)
        thread.start()
        world.publish(server.address[1])
        try:
            yield server._serving
        finally:
            server.close()
            thread.join(5)
        return
    with loop_in_thread() as loop:
        started = dtp.aio.start_server(
            _echo_aio,
            "127.0.0.1",
            0,
            identity=SERVER,
            ledger=world.server_ledger,
            host_id=world.host_id,
            dtp_port=PORT,
            settle_on_close=settle_on_close,
        )
        aio_server = asyncio.run_coroutine_threadsafe(started, loop).result(30)
        world.publish(aio_server.sockets[0].getsockname()[1])
        try:
            yield aio_server._serving
        finally:

            async def stop() -> None:
                aio_server.close()
                await aio_server.wait_closed()

            asyncio.run_coroutine_threadsafe(stop(), loop).result(30)


def _settled_refunded(world: World, cid: str) -> Callable[[], bool]:
    def check() -> bool:
        done = settlement(world.ledger, cid)  # (its client may have deleted it since)
        return done is not None and done.refunded == DEPOSIT

    return check


def test_an_accepted_socket_garbage_collected_unclosed_gives_its_place_back(
    world: World,
) -> None:
    """One connection per client; the application takes each connection, reads from it
    and drops it without close(). The garbage collector closes the carrier
    (``DTPSocket.__del__``), and the connection's place goes back as it would at a
    close: three times over, the client closes and reconnects, and is served each
    time (it was refused "already has 1 of 1 connections" from the second on, every
    refusal a new deposit locked for the half-close timeout)."""
    world.ledger.set_client_limits(SERVER, world.host_id, 1, 0, 0)
    server = dtp.socket.create_server(
        ("127.0.0.1", 0),
        identity=SERVER,
        ledger=world.server_ledger,
        host_id=world.host_id,
        port=PORT,
    )
    world.publish(server.address[1])
    read: list[bytes] = []

    def application() -> None:
        for _ in range(3):
            sock, _ = server.accept(timeout=30)
            read.append(sock.recv(10))
            del sock  # (not closed: the collector's, at once under reference counting)
            gc.collect()

    thread = threading.Thread(target=application, daemon=True)
    thread.start()
    try:
        for n in range(3):
            client = dtp.socket.create_connection(
                f"dtp://{world.host_id}:{PORT}",
                timeout=10,
                ledger=world.ledger,
                identity=ALICE,
                deposit=DEPOSIT,
            )
            client.sendall(b"ping")
            assert wait_for(lambda n=n: len(read) > n, timeout=10)  # (and dropped)
            client.close()
            assert wait_for(lambda: len(server._serving) == 0, timeout=5), "place never freed"
        thread.join(10)
        assert read == [b"ping"] * 3
    finally:
        server.close()
    # every ledger connection opened was served: none refused at the limit
    opened, _ = world.ledger.events(filter=EventFilter(type="ConnectionOpened"))
    assert [e["client"] for e in opened] == [ALICE.sui_address] * 3


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_settling_server_refunds_a_connection_refused_at_a_limit_at_once(
    world: World, api: str
) -> None:
    """``settle_on_close``: Alice is served, her second connection is refused at the
    per-client limit, Bob's second at the per-service one; each refused connection is
    closed and settled by the server as it refuses it -- nothing claimed, the deposit
    back whole -- not left half-closed for the half-close timeout. The connection
    served goes on meanwhile, and is settled in turn as it ends."""
    world.ledger.set_client_limits(SERVER, world.host_id, 1, 0, 0)
    world.ledger.update_service(SERVER, world.host_id, PORT, SLA, 2)
    with echo_server(world, api, settle_on_close=True) as serving:
        alice = world.connect(ALICE)
        refused = [world.refused(ALICE)]
        bob = world.connect(BOB)
        world.ledger.set_client_limits(SERVER, world.host_id, 0, 0, 0)
        refused.append(world.refused(BOB))  # (the service serves 2 of 2 now)
        for cid in refused:
            assert wait_for(_settled_refunded(world, cid), timeout=10), cid
            escrow = settled_escrow(world.ledger, cid)  # (closed by its settlement)
            assert escrow.claimed == 0 and escrow.settled
            assert wait_for(lambda c=cid: c not in serving, timeout=10)  # (given back once settled)
        alice.sendall(b"still")  # served on
        assert alice.recv(5) == b"still"
        alice.close()
        bob.close()

        def settlements() -> int:
            done, _ = world.ledger.events(filter=EventFilter(type="ConnectionSettled"))
            return len(done)

        # the two refused, and the two served as they ended
        assert wait_for(lambda: settlements() == 4, timeout=10)


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_server_that_does_not_settle_leaves_a_refused_connection_to_its_client(
    world: World, api: str
) -> None:
    """Without ``settle_on_close`` the server claims and settles nothing: the client
    half-closes the refused connection as it meets the refusal, and its deposit comes
    back through its own settlement once the half-close timeout has passed
    (``collect_refund``, the ``dtp refund`` command): refused before, whole after."""
    world.ledger.set_client_limits(SERVER, world.host_id, 1, 0, 0)
    with echo_server(world, api, settle_on_close=False):
        alice = world.connect(ALICE)
        cid = world.refused(ALICE)
        tc = world.ledger.get_connection(cid)
        assert tc.state is ConnectionState.HALF_CLOSED and tc.half_closed_by == ALICE.sui_address
        assert not tc.settled
        with pytest.raises(ConnectionStateError) as info:
            collect_refund(world.ledger, ALICE, cid)
        assert info.value.name == "ETimeoutNotReached"
        alice.close()
    # (the process's own refund collector would take it back as soon as it looked;
    # stopped, as when the process that connected has ended and `dtp refund` is used)
    refunds_for(world.ledger, ALICE).close(log_waiting=False)
    world.ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    assert collect_refund(world.ledger, ALICE, cid) == DEPOSIT
