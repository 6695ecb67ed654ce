"""The forwarder when opening a tunnel fails in an unexpected way: the local client is
closed and the failure counted, instead of the client waiting forever.

The forwarder: its DTP connections, against a host in this
process.

* At the host's limit of streams per connection, where ``open_stream()`` waits for a
  slot, the forwarder spills over to a new connection: a local client beyond the limit
  does not wait for another tunnel to end.
* A forwarder retired by a reload while one of its connections is being opened retires
  that connection too once its tunnels end: not left paid and open (keepalives) until
  the daemon stops.
* A target that cannot be reached is tried once for all the local clients queued
  behind a failing open, not once each (10 s each against a silent host, an attempt
  per client on the ledger).
* drain() sends the final receipts after the tunnels it cancelled have ended, so the
  bytes they counted meanwhile are signed for.

Real sockets on 127.0.0.1, a real DTP server published on a LocalLedger file; the host
speaks the tunnel protocol itself (status byte, echo).

The forwarder's connections (its spill-over, retirement
and open backoff), against a host in this process.

* A deposit too small to pay for one tunnel backs the next open off, doubling each
  time: the successful open of the fresh connection just before does not reset the
  backoff, so a forwarder with a bad deposit does not open (and pay the ledger for) a
  connection every half second while clients come.
* Tunnels below the host's stream limit, one after another or several at once, stay on
  one connection (the spill-over's timeout of 0 fires only at the limit).

Real sockets on 127.0.0.1, a real DTP server published on a LocalLedger file; the host
speaks the tunnel protocol itself (status byte, echo)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.daemon._forwarder
from dtp.daemon._config import Backend, ForwardConfig
from dtp.daemon._forwarder import Forwarder
from dtp.daemon._state import StatusBook
from dtp.daemon._tunnel import STATUS_OK, PaidInPart
from dtp.errors import ChainError
from dtp.hostid._address import HostAddress
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import fee
from dtp.protocol.connection import ConnectionConfig
from tests.support.paid_inprocess import ident


def test_an_unexpected_error_opening_the_connection_closes_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with 1100 local clients at once, past 1024 descriptors, where the TCP
    carrier's select() raises ValueError: the tunnel task ends the local client and
    closes its socket, never dying with an exception nobody retrieves."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("filedescriptor out of range in select()")

    monkeypatch.setattr(dtp.daemon._forwarder, "connect_forward", broken)
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    book = StatusBook(tmp_path)
    config = ForwardConfig(
        "f", Backend("127.0.0.1", 0), HostAddress.parse("dtp://0x" + "ab" * 32 + ":80")
    )
    forwarder = Forwarder(config, ledger, HostIdentity.generate(), book)

    async def run() -> bytes:
        host, port = await forwarder.start()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"hello")
                with contextlib.suppress(ConnectionResetError):
                    return await asyncio.wait_for(reader.read(), 5)
                return b""
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        finally:
            await forwarder.drain(1.0)

    try:
        assert asyncio.run(run()) == b""
    finally:
        ledger.close()
    row = book.forwards["f"]
    assert (row.errors, row.tunnels, row.active_tunnels) == (1, 0, 0)


BOUND = 5.0
SERVER, CLIENT = ident(0x34), ident(0x35)
FREE = Sla(0, 0, 1000)


class _Host:
    """A DTP server answering every tunnel stream with STATUS_OK and an echo."""

    def __init__(self, max_streams: int = 1024) -> None:
        self.max_streams = max_streams
        self.connections: list[dtp.aio.DTPStreamWriter] = []
        self.ended: list[asyncio.Event] = []
        """Per connection: set once the host saw it end."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: dtp.aio.DTPServer | None = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _echo(self, reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        with contextlib.suppress(Exception):
            writer.write(STATUS_OK)
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.wait_closed()

    async def _handle(
        self, reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter
    ) -> None:
        self.connections.append(writer)
        ended = asyncio.Event()
        self.ended.append(ended)
        self._spawn(reader.read())  # stream 0: receipts, unread here
        try:
            while True:
                s_reader, s_writer = await writer.accept_stream()
                self._spawn(self._echo(s_reader, s_writer))
        except Exception:
            pass  # the connection ended
        finally:
            ended.set()

    async def start(self) -> int:
        config = ConnectionConfig(identity=SERVER, is_client=False, max_streams=self.max_streams)
        self.server = await dtp.aio.start_server(
            self._handle, "127.0.0.1", 0, identity=SERVER, config=config
        )
        return int(self.server.address[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()


class _Source(_Host):
    """Answers every tunnel with STATUS_OK and then bytes, without end."""

    async def _echo(self, reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        with contextlib.suppress(Exception):
            writer.write(STATUS_OK)
            chunk = bytes(1 << 16)
            while True:
                writer.write(chunk)
                await writer.drain()


@contextlib.asynccontextmanager
async def _forwarder(
    tmp_path: Path, host: _Host, sla: Sla = FREE, deposit: int | None = None
) -> AsyncIterator[tuple[Forwarder, LocalLedger]]:
    """A forwarder to ``host`` (published with ``sla`` on port 80), started. The host
    takes the forwarder's receipts without looking at them."""
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.faucet(CLIENT.sui_address, 1 << 40)
    port = await host.start()
    host_id = await asyncio.to_thread(
        ledger.create_host, SERVER, SERVER.noise_public, [f"tcp://127.0.0.1:{port}"]
    )
    await asyncio.to_thread(ledger.add_service, SERVER, host_id, 80, "raw", sla)
    config = ForwardConfig(
        "f",
        Backend("127.0.0.1", 0),
        HostAddress.parse(f"dtp://{host_id}:80"),
        deposit=max(sla.min_deposit, 1 << 30) if deposit is None else deposit,
    )
    forwarder = Forwarder(config, ledger, CLIENT, StatusBook(tmp_path / "state"))
    await forwarder.start()
    try:
        yield forwarder, ledger
    finally:
        await forwarder.drain(0.5)
        host.close()
        ledger.close()


async def _client(forwarder: Forwarder) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert forwarder.server is not None
    host, port = forwarder.server.sockets[0].getsockname()[:2]
    return await asyncio.open_connection(host, port)


async def _echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    assert await asyncio.wait_for(reader.readexactly(len(data)), BOUND) == data


def _close(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()


async def _spills_over(forwarder: Forwarder, host: _Host, held: int) -> None:
    """With ``held`` tunnels open (the host's limit on one connection), the next client
    is served on a second connection."""
    clients = [await _client(forwarder) for _ in range(held)]
    try:
        for reader, writer in clients:
            await _echoes(reader, writer, b"held")
        clients.append(await _client(forwarder))
        await _echoes(*clients[-1], b"next")
        assert forwarder.stats.connections == 2
        assert len(host.connections) == 2
    finally:
        _close(*(w for _, w in clients))


def test_a_tunnel_past_the_hosts_stream_limit_spills_over_to_a_new_connection(
    tmp_path: Path,
) -> None:
    """The host allows 3 streams per connection (stream 0 and two tunnels); two tunnels
    stay open and a third client comes: a new connection is opened for it
    (docs/daemon.md), not a wait for a slot until one of the first two ends."""

    async def run() -> None:
        host = _Host(max_streams=3)
        async with _forwarder(tmp_path, host) as (forwarder, _):
            await _spills_over(forwarder, host, held=2)

    asyncio.run(asyncio.wait_for(run(), 4 * BOUND))


def test_a_connection_opened_as_the_forwarder_retires_closes_after_its_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload retires the forwarder while a local client's connection is being opened:
    the new connection is retired with it, and closes after its tunnel ends (not kept
    open by keepalives, Open on the ledger with its deposit)."""
    real = dtp.daemon._forwarder.connect_forward
    entered, gate = asyncio.Event(), asyncio.Event()

    async def gated(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await gate.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(dtp.daemon._forwarder, "connect_forward", gated)

    async def run() -> None:
        host = _Host()
        async with _forwarder(tmp_path, host) as (forwarder, ledger):
            reader, writer = await _client(forwarder)
            try:
                await asyncio.wait_for(entered.wait(), BOUND)
                forwarder.retire()  # the reload
                gate.set()
                await _echoes(reader, writer, b"still served")  # its tunnel goes on
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), BOUND) == b""
            finally:
                _close(writer)
            # the tunnel ended: its connection closes, and is half-closed on the ledger
            await asyncio.wait_for(host.ended[0].wait(), BOUND)
            cid = host.connections[0].peer_connection_id
            assert cid is not None
            deadline = asyncio.get_running_loop().time() + BOUND
            while (await asyncio.to_thread(ledger.get_connection, cid)).state == (
                ConnectionState.OPEN
            ):
                assert asyncio.get_running_loop().time() < deadline, "left Open on the ledger"
                await asyncio.sleep(0.02)

    asyncio.run(asyncio.wait_for(run(), 4 * BOUND))


def test_a_failing_open_is_not_tried_again_for_each_waiting_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger fails every open (after 0.2 s, as an RPC timing out). Eight local
    clients come at once. The clients waiting on a failed open share its failure (not
    one open each in turn: eight attempts, 10 s each against a silent host), and the
    next attempt comes after a backoff; one comes then."""
    attempts: list[float] = []

    async def failing(*args: Any, **kwargs: Any) -> Any:
        attempts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.2)
        raise ChainError("ledger RPC timed out")

    monkeypatch.setattr(dtp.daemon._forwarder, "connect_forward", failing)
    # (a short first backoff keeps the test short)
    monkeypatch.setattr("dtp.daemon._outage.OPEN_BACKOFF_FIRST", 0.3)

    async def refused(forwarder: Forwarder) -> None:
        reader, writer = await _client(forwarder)
        try:
            writer.write(b"hello")
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), BOUND) == b""
        finally:
            _close(writer)

    async def run() -> None:
        host = _Host()
        async with _forwarder(tmp_path, host) as (forwarder, _):
            loop = asyncio.get_running_loop()
            start = loop.time()
            await asyncio.gather(*(refused(forwarder) for _ in range(8)))
            assert len(attempts) == 1, attempts
            assert loop.time() - start < 1.0
            assert forwarder.stats.errors == 8
            # after the backoff, a client gets an attempt of its own
            await asyncio.sleep(0.4)
            await refused(forwarder)
            assert len(attempts) == 2, attempts

    asyncio.run(asyncio.wait_for(run(), 4 * BOUND))


def test_the_final_receipt_of_a_drain_covers_the_cancelled_tunnels_usage(
    tmp_path: Path,
) -> None:
    """A paid tunnel receiving without pause when the daemon stops: drain() cut it and
    sent the connection's final receipt, after the cancelled tunnel ended, so that it
    covers what arrived in the meantime (up to a receipt's worth, 256 KiB: the host
    claims what it served). It takes bytes arriving in the same turn of the loop as
    the drain's last wake-up: about every other time, so five rounds."""
    sla = Sla(1, 1, 1000)  # 1 MIST per KiB and per tunnel

    async def round_(path: Path) -> None:
        async with _forwarder(path, _Source(), sla) as (forwarder, _):
            reader, writer = await _client(forwarder)
            received = asyncio.Event()

            async def read() -> None:
                with contextlib.suppress(OSError):
                    total = 0
                    while data := await reader.read(1 << 20):
                        total += len(data)
                        if total >= 2 << 20:
                            received.set()

            reading = asyncio.ensure_future(read())
            try:
                await asyncio.wait_for(received.wait(), BOUND)
                await forwarder.drain(0.05)
                assert forwarder.active_tunnels == 0  # no tunnel task left behind
                stats = forwarder.stats
                used = fee(sla, stats.bytes_in + stats.bytes_out, stats.tunnels)
                assert stats.fees_paid == used
                await asyncio.wait_for(reading, BOUND)  # the local client is cut
            finally:
                reading.cancel()
                _close(writer)

    async def run() -> None:
        for n in range(5):
            path = tmp_path / str(n)
            path.mkdir()
            await round_(path)

    asyncio.run(asyncio.wait_for(run(), 4 * BOUND))


async def _tunnel_once(forwarder: Forwarder, data: bytes) -> None:
    """One local client: an echo, then a clean end of its tunnel."""
    reader, writer = await _client(forwarder)
    try:
        await _echoes(reader, writer, data)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), BOUND) == b""
    finally:
        _close(writer)


def test_tunnels_below_the_stream_limit_share_one_connection_and_the_next_spills(
    tmp_path: Path,
) -> None:
    """The host allows 4 streams per connection (stream 0 and three tunnels). Twenty
    tunnels one after the other, then rounds of three at once, all take the first
    connection (open_stream() does not suspend with a slot free, so the timeout of 0
    around it never fires there); with three held open, a fourth client is served on a
    second connection, not left waiting for a slot behind the held ones."""

    async def run() -> None:
        host = _Host(max_streams=4)
        async with _forwarder(tmp_path, host) as (forwarder, _):
            for n in range(20):
                await _tunnel_once(forwarder, b"one %d" % n)
            for _ in range(5):
                await asyncio.gather(*(_tunnel_once(forwarder, b"%d" % i) for i in range(3)))
            assert forwarder.stats.connections == 1
            assert len(host.connections) == 1
            assert forwarder.stats.tunnels == 35
            await _spills_over(forwarder, host, held=3)

    asyncio.run(asyncio.wait_for(run(), 4 * BOUND))


def test_a_deposit_too_small_for_one_tunnel_backs_off_longer_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deposit (100 MIST) cannot pay for one tunnel (1000 MIST a request): each
    connection opened for a client is retired at once, and the next open waits for a
    backoff doubling after each such failure: the fresh connection's successful open
    does not reset the backoff, which would keep it at its first step (a paid
    connection opened on the ledger every 0.5 s for as long as clients come)."""
    monkeypatch.setattr("dtp.daemon._outage.OPEN_BACKOFF_FIRST", 0.5)
    sla = Sla(0, 1000, 100)

    async def refused(forwarder: Forwarder) -> None:
        reader, writer = await _client(forwarder)
        try:
            writer.write(b"hello")
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), BOUND) == b""
        finally:
            _close(writer)

    async def run() -> None:
        host = _Host()
        async with _forwarder(tmp_path, host, sla, deposit=100) as (forwarder, _):
            await refused(forwarder)  # opens one, which cannot pay: backoff 0.5 s
            assert forwarder.stats.connections == 1
            await asyncio.sleep(0.6)
            await refused(forwarder)  # past the backoff: opens another; now 1 s
            assert forwarder.stats.connections == 2
            await asyncio.sleep(0.6)
            await refused(forwarder)  # within the doubled backoff: refused, no open
            assert forwarder.stats.connections == 2
            assert forwarder.stats.errors == 3

    asyncio.run(asyncio.wait_for(run(), 4 * BOUND))


def test_a_tunnels_count_adds_what_goes_on_to_its_own_direction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both directions of a tunnel count through one helper: a chunk the deposit covers
    counts whole, one it covers in part (PaidInPart, raised again to cut the tunnel)
    counts its covered part, each to its own stat alone."""
    config = ForwardConfig(
        "f", Backend("127.0.0.1", 0), HostAddress.parse("dtp://0x" + "ab" * 32 + ":80")
    )
    with contextlib.closing(LocalLedger(tmp_path / "ledger.sqlite")) as ledger:
        forwarder = Forwarder(config, ledger, HostIdentity.generate(), StatusBook(tmp_path))
        link = object()

        def meter(on: object, n: int) -> None:
            assert on is link
            if n > 100:
                raise PaidInPart("the deposit is used up", 40)

        monkeypatch.setattr(forwarder, "_meter", meter)
        stats = forwarder.stats
        forwarder._count(link, 100, stats, "bytes_in")  # type: ignore[arg-type]
        assert (stats.bytes_in, stats.bytes_out) == (100, 0)
        forwarder._count(link, 70, stats, "bytes_out")  # type: ignore[arg-type]
        with pytest.raises(PaidInPart):
            forwarder._count(link, 500, stats, "bytes_out")  # type: ignore[arg-type]
        assert (stats.bytes_in, stats.bytes_out) == (100, 110)
        with pytest.raises(PaidInPart):
            forwarder._count(link, 500, stats, "bytes_in")  # type: ignore[arg-type]
        assert (stats.bytes_in, stats.bytes_out) == (140, 110)
