"""A paid server's credit holds for a handler that writes from several threads at once
and for writes the connection queues beyond the client's flow-control window
(docs/escrow.md §6.1: "each [call] moves at most what the remaining credit covers"),
while asyncio's ``PaidWriter.write()`` still never waits, and a read never waits for
writes the client has not read yet (those two on both drivers: the ``driver``
fixture). A client that pays nothing gets no more than the allowance's worth -- the last
call may take one byte past it -- and is then closed with CLOSE_PAYMENT_REQUIRED. Real
LocalLedger files, real DTP connections on 127.0.0.1, the server in this process."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import DTPError, DTPTimeoutError, PaymentRequired
from dtp.hostid.paid import PaidServer, PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import fee
from dtp.protocol.connection import ConnectionConfig
from tests.paid.conftest import Driver
from tests.support.paid_twins import PaidWorld, hosted_ledgers
from tests.support.polling import wait_for

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7000
ALLOWANCE = 1000  # MIST on credit: about 100 KiB
STINGY = ServicePolicy(allowance=ALLOWANCE, pause_timeout=1.0)
UNPAID = MeteringConfig(enabled=False)
STREAMS = 4  # besides the first


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x61), ident(0x62)


class World(PaidWorld):
    """The credit service of SERVER on PORT (SLA), CLIENT funded."""

    @property
    def receipts(self) -> Path:
        return self.tmp_path / "receipts.db"

    def serve_on(
        self, driver: Driver, handlers: tuple[Any, Any], policy: ServicePolicy, **options: Any
    ) -> Any:
        """The credit service on ``driver``'s server: (blocking handler, asyncio callback)."""
        return driver.serve(
            self.host_id,
            PORT,
            handlers,
            ledger=self.ledger,
            identity=SERVER,
            receipts=self.receipts,
            policy=policy,
            **options,
        )

    def serve(self, handler: Callable[[PaidSocket], None]) -> PaidServer:
        """The credit service on a blocking server with the STINGY policy."""
        return self.serve_blocking(PORT, handler, SERVER, receipts=self.receipts, policy=STINGY)

    def connect(
        self,
        deposit: int = SLA.min_deposit,
        *,
        timeout: float,
        metering: MeteringConfig | None = UNPAID,
        **options: Any,
    ) -> dtp.socket.DTPSocket:
        """CLIENT's connection (paying nothing unless ``metering`` says otherwise)."""
        return self.connect_as(CLIENT, PORT, deposit, metering=metering, timeout=timeout, **options)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA, kind="credit") as ledgers:
        yield World(*ledgers, tmp_path)


def read_all(sock: dtp.socket.DTPSocket, got: list[int], errors: list[DTPError]) -> None:
    try:
        while data := sock.recv(1 << 16):
            got.append(len(data))
    except DTPError as exc:
        errors.append(exc)


def test_writers_on_several_streams_share_one_credit(world: World) -> None:
    # each writer looked at the gate before any of them had sent, so each took the whole
    # credit: with 5 streams a client paying nothing got 5x the allowance (its deposit)
    def handler(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        streams = [sock] + [sock.accept_stream() for _ in range(STREAMS)]
        for stream in streams[1:]:
            assert stream.recv(2) == b"go"
        start = threading.Barrier(len(streams))

        def write(stream: PaidSocket) -> None:
            start.wait()
            with pytest.raises(PaymentRequired):
                stream.sendall(b"x" * (1 << 20))

        threads = [threading.Thread(target=write, args=(s,)) for s in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    got: list[int] = []
    errors: list[DTPError] = []
    with (
        world.serve(handler),
        world.connect(timeout=20) as sock,
    ):
        sock.sendall(b"go")
        streams = [sock] + [sock.open_stream() for _ in range(STREAMS)]
        for stream in streams[1:]:
            stream.sendall(b"go")
        readers = [threading.Thread(target=read_all, args=(s, got, errors)) for s in streams]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        for stream in streams[1:]:
            stream.close()
    sent_by_client = 2 * len(streams)
    served = fee(SLA, sum(got) + sent_by_client, len(streams))
    assert served <= ALLOWANCE + STREAMS + 1, served  # a byte past it per writer at most
    assert sum(got) > 90 * 1024  # the allowance itself is served
    assert errors and all(isinstance(e, PaymentRequired) for e in errors)


def _written(server: Any) -> int:
    """What the server's handlers wrote so far: sent, or queued for the client's window
    (each driver's connection state, as the engine reads it)."""
    if isinstance(server, PaidServer):
        with server._live_lock:
            return sum(
                p.engine.conn.usage[0] + p.engine.conn.send_buffered() for p in server.core.live()
            )
    return sum(p.conn.usage[0] + p.conn.send_buffered() for p in server.core.live())


def test_writes_queued_beyond_the_clients_window_count_against_the_credit(
    world: World, driver: Driver
) -> None:
    # a write queues bytes beyond the client's window (a send up to 512 KiB per stream;
    # asyncio's write() never waits), and the usage counts them only once sent: each
    # look at the gate found the credit untouched, and a client paying nothing with a
    # 16 KiB window got 600 KiB, more than its deposit
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def handler(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        try:
            sock.sendall(b"x" * (2 << 20))
        except DTPError as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    async def handler_aio(reader: PaidReader, writer: PaidWriter) -> None:
        assert await reader.readexactly(2) == b"go"
        try:
            for _ in range(32):
                writer.write(b"x" * (64 << 10))  # never waits
                await writer.drain()
        except DTPError as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    window = 16 << 10
    config = ConnectionConfig(
        identity=CLIENT, is_client=True, stream_window=window, connection_window=window
    )
    got: list[int] = []
    errors: list[DTPError] = []
    with (
        world.serve_on(driver, (handler, handler_aio), STINGY) as server,
        world.connect(timeout=20, config=config) as sock,
    ):
        sock.sendall(b"go")
        # we read only once the handler wrote the allowance's worth, as a client that is
        # slow to read would (the server then writes into its queue)
        assert wait_for(lambda: _written(server) >= 90 * 1024)
        read_all(sock, got, errors)
        ended = outcome.get(timeout=20)
    served = fee(SLA, sum(got) + 2, 1)
    assert served <= ALLOWANCE + 1, served
    assert sum(got) > 90 * 1024
    assert len(errors) == 1 and isinstance(errors[0], PaymentRequired)
    assert isinstance(ended, PaymentRequired), ended


def test_a_read_does_not_wait_for_writes_the_client_has_not_read_yet(
    world: World, driver: Driver
) -> None:
    # the handler writes in one thread (task) and reads in another; the client uploads
    # all before it reads. Writes queued for the client hold the write credit, and a
    # read that waited for them to go would wait for good: the client reads only once
    # its upload is through, which needs the server to read.
    size = 1 << 20
    policy = ServicePolicy(pause_timeout=5.0)
    small = 64 << 10

    def handler(sock: PaidSocket) -> None:
        writer = threading.Thread(target=sock.sendall, args=(b"d" * size,))
        writer.start()
        got = 0
        while got < size:
            data = sock.recv(1 << 16)
            assert data
            got += len(data)
        writer.join()
        sock.sendall(b"!")

    async def handler_aio(reader: PaidReader, writer: PaidWriter) -> None:
        async def write_all() -> None:
            for _ in range(size // (64 << 10)):
                writer.write(b"d" * (64 << 10))
                await writer.drain()

        task = asyncio.ensure_future(write_all())
        got = 0
        while got < size:
            data = await reader.read(1 << 16)
            assert data
            got += len(data)
        await task
        writer.write(b"!")
        await writer.drain()

    server_config = ConnectionConfig(
        identity=SERVER, is_client=False, stream_window=small, connection_window=small
    )
    config = ConnectionConfig(
        identity=CLIENT, is_client=True, stream_window=small, connection_window=small
    )
    with (
        world.serve_on(driver, (handler, handler_aio), policy, config=server_config),
        world.connect(1_000_000, timeout=10, metering=None, config=config) as sock,
    ):
        sock.sendall(b"u" * size)
        got = 0
        while got < size + 1:
            data = sock.recv(1 << 16)
            assert data
            got += len(data)
    assert got == size + 1


def test_a_write_waiting_for_the_client_to_read_keeps_the_socket_timeout(world: World) -> None:
    # a write whose credit the queued bytes hold waits for the client to read them, as a
    # plain send waits for room: within the socket's timeout, not for good
    outcome: queue.Queue[BaseException | None] = queue.Queue()
    small = 16 << 10

    def handler(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        sock.settimeout(0.5)
        try:
            sock.sendall(b"x" * (2 << 20))
        except DTPError as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    config = ConnectionConfig(
        identity=CLIENT, is_client=True, stream_window=small, connection_window=small
    )
    with (
        world.serve(handler),
        world.connect(timeout=10, config=config) as sock,
    ):
        sock.sendall(b"go")
        error = outcome.get(timeout=5)  # we read nothing meanwhile
    assert isinstance(error, DTPTimeoutError), error
