"""What the asyncio layer puts back, and what it does when a connection's start fails.

- a connection whose ``connection_made`` raises (tuning the socket, the first flush, a
  server's ``on_connected``) is aborted as a timer fault is (``_Protocol._fail``), not
  left half-made: the opener reads a typed error at once, rather than wait for its
  timeout.
- a paid ``accept_stream`` cancelled while the request rate holds it puts its stream
  back and wakes a task waiting in ``accept_stream`` meanwhile (as ``recv_datagram``'s
  put-back does).
- a paid ``recv_datagram`` cancelled while the bytes rate holds it puts its datagram
  back, and the next read does not charge its bytes to the rate limit a second time.
- a stream a cancelled paid ``accept_stream`` puts back is known as charged to the
  connection: accepted through another writer of it, it is not charged again.

The last two live in ``dtp/hostid/paid/_asyncio.py`` (``PaidWriter``), not in
``dtp/aio.py``, whose own ``accept_stream`` / ``recv_datagram`` take the item with no await
after the wait.

The faults are injected where they cannot be made to happen for real (a method of the
real server, the socket tuning); real sockets on 127.0.0.1, real handshakes, a real
LocalLedger file for the paid server.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
import dtp.transport.carriers._tcp
from dtp.errors import ConnectionClosed, HandshakeError
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid._aio import PaidAioServer, PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from dtp.protocol.connection import CloseCode, ConnectionConfig
from tests.support.paid_twins import PaidWorld, hosted_ledgers, ident, loop_in_thread, stop

SERVER_ID = HostIdentity.generate()
#: Bound on anything the tests wait for; a put-back that wakes no one waits 600 s or for good
WAIT = 60.0
#: What the opener and the server would wait for the handshake, had the fault hung it
LONG = 600.0


def _server_config() -> ConnectionConfig:
    return ConnectionConfig(identity=SERVER_ID, is_client=False, handshake_timeout=LONG)


def _client_config() -> ConnectionConfig:
    return ConnectionConfig(
        identity=HostIdentity.generate(), is_client=True, handshake_timeout=LONG
    )


async def _echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _open(server: dtp.aio.DTPServer) -> dtp.aio.DTPStreamWriter:
    """A connection to ``server`` that echoes: its writer (closed by the caller)."""
    reader, writer = await dtp.aio.open_connection(
        *server.address,
        server_key=SERVER_ID.noise_public,
        config=_client_config(),
        timeout=LONG,
    )
    writer.write(b"ping")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
    return writer


async def _close(writer: dtp.aio.DTPStreamWriter) -> None:
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), WAIT)


# -- connection_made: a fault aborts the connection --------------------------------------


def test_a_server_connection_whose_start_raises_is_aborted_not_left_unserved() -> None:
    """The server's taking in of a new connection (its admission, its handshake slot,
    its task) raises: the client reads a HandshakeError at once, not at its timeout
    (600 s). The server goes on serving."""
    fault = RuntimeError("a fault as the connection starts")
    raised: list[BaseException] = []

    async def main() -> None:
        server = await dtp.aio.start_server(
            _echo, "127.0.0.1", 0, identity=SERVER_ID, config=_server_config()
        )
        async with server:
            served = server._arrived

            def fail(arrival: Any) -> None:
                raised.append(fault)
                raise fault

            server._arrived = fail  # type: ignore[method-assign]
            with pytest.raises(HandshakeError):
                async with asyncio.timeout(WAIT):
                    await dtp.aio.open_connection(
                        *server.address,
                        server_key=SERVER_ID.noise_public,
                        config=_client_config(),
                        timeout=LONG,
                    )
            assert raised == [fault]
            server._arrived = served  # type: ignore[method-assign]
            await _close(await _open(server))

    asyncio.run(main())


def test_a_client_connection_whose_start_raises_fails_its_open_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client's ``connection_made`` raises (here the socket's tuning, before its
    first handshake message goes): ``open_connection`` raises ConnectionClosed
    (INTERNAL_ERROR, the fault its cause) at once, not at its timeout (600 s)."""
    fault = RuntimeError("a fault as the connection starts")
    raised: list[BaseException] = []
    tune = dtp.transport.carriers._tcp.tune

    async def main() -> None:
        server = await dtp.aio.start_server(
            _echo, "127.0.0.1", 0, identity=SERVER_ID, config=_server_config()
        )
        async with server:
            port = server.address[1]

            def tune_or_fail(sock: socket.socket) -> None:
                # the client's end only: the server's accepted socket is tuned as ever
                if sock.getpeername()[1] == port and not raised:
                    raised.append(fault)
                    raise fault
                tune(sock)

            monkeypatch.setattr(dtp.transport.carriers._tcp, "tune", tune_or_fail)
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(WAIT):
                    await dtp.aio.open_connection(
                        *server.address,
                        server_key=SERVER_ID.noise_public,
                        config=_client_config(),
                        timeout=LONG,
                    )
            assert closed.value.code == CloseCode.INTERNAL_ERROR
            assert closed.value.__cause__ is fault
            assert raised == [fault]
            await _close(await _open(server))  # the next one starts as ever

    asyncio.run(main())


# -- paid put-backs (dtp/hostid/paid/_asyncio.py) ----------------------------------

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7
PAID_SERVER = ident(0xC1)
CLIENT = ident(0xC2)
#: A client that signs no receipts: none comes to wake a waiting task by the way
UNPAID = MeteringConfig(enabled=False)
#: No Host refresh during a test: each one wakes every waiting task of the connection
QUIET = ServicePolicy(refresh_interval=600.0)

AioHandler = Callable[[PaidReader, PaidWriter], Any]


class World(PaidWorld):
    def limit(self, bytes_per_sec: int = 0, requests_per_sec: int = 0) -> None:
        """The Host's per-client limits (read as the server starts)."""
        self.ledger.set_client_limits(PAID_SERVER, self.host_id, 0, bytes_per_sec, requests_per_sec)

    def connect(self) -> dtp.socket.DTPSocket:
        return self.connect_as(CLIENT, PORT, SLA.min_deposit, metering=UNPAID, timeout=WAIT)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, PAID_SERVER, CLIENT, PORT, SLA) as ledgers:
        yield World(*ledgers, tmp_path)


@contextmanager
def aio_server(world: World, handler: AioHandler) -> Iterator[PaidAioServer]:
    """An asyncio paid server running ``handler`` on a loop in a thread of its own."""
    with loop_in_thread() as loop:
        server = world.serve_aio(loop, PORT, handler, PAID_SERVER, timeout=WAIT, policy=QUIET)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(2 * WAIT)


def bytes_debt(server: PaidAioServer) -> float:
    """Seconds the client's bytes bucket holds it back now (0 when it has none)."""
    buckets = server.limiter.clients.get(CLIENT.sui_address)
    return 0.0 if buckets is None else buckets.bytes.delay(time.monotonic())


async def _until(ready: Callable[[], bool], task: asyncio.Future[Any]) -> None:
    """Wait until ``ready()``, ``task`` still running meanwhile."""
    deadline = time.monotonic() + WAIT
    while not ready():
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)


def _in_request_debt(server: PaidAioServer) -> list[float]:
    """Put the client 600 s in debt on its request rate (as 600 requests just made
    would) and count what is charged to it from now on: the list of amounts, which a
    test watches to see an accept take its stream and wait for the rate."""
    requests = server.limiter.clients[CLIENT.sui_address].requests
    requests.charge(600, time.monotonic())
    charged: list[float] = []
    charge = requests.charge

    def counted(amount: float, now: float) -> float:
        charged.append(amount)
        return charge(amount, now)

    requests.charge = counted  # type: ignore[method-assign]
    return charged


def test_a_stream_a_cancelled_accept_put_back_reaches_a_waiting_accept(world: World) -> None:
    """Task A accepts the client's second stream and waits for the request rate (600 s
    in debt); task B waits in accept_stream meanwhile; A is cancelled and puts the
    stream back. B gets it at once (charged already), without waiting for the
    connection to move again (here it never would: the client signs no receipts and the
    Host is not read again)."""
    server_box: list[PaidAioServer] = []
    outcome: queue.Queue[bytes | BaseException] = queue.Queue()

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            assert await reader.readexactly(2) == b"go"
            charged = _in_request_debt(server_box[0])
            first = asyncio.ensure_future(writer.accept_stream())
            await _until(lambda: bool(charged), first)  # A took it: the rate holds it
            second = asyncio.ensure_future(writer.accept_stream())
            for _ in range(5):
                await asyncio.sleep(0)  # B looked at an empty line: it waits
            assert not first.done() and not second.done()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            stream_reader, _ = await asyncio.wait_for(second, WAIT / 2)
            outcome.put(await asyncio.wait_for(stream_reader.readexactly(2), WAIT))
        except BaseException as exc:  # (TimeoutError: a put-back that woke no one)
            outcome.put(exc)
            raise

    world.limit(requests_per_sec=1)
    with aio_server(world, handler) as server:
        server_box.append(server)
        with world.connect() as sock:
            sock.sendall(b"go")
            with sock.open_stream() as stream:
                stream.sendall(b"hi")
                got = outcome.get(timeout=WAIT + 30)
    if isinstance(got, BaseException):
        raise got
    assert got == b"hi"


def test_a_stream_put_back_is_not_charged_again_through_another_writer(world: World) -> None:
    """The stream a cancelled accept put back was charged already whichever writer of
    the connection accepts it next. The count of charged streams was the writer's
    own: accepted through another writer (one of an earlier stream), it was charged
    a second request -- here 600 s of the request rate's debt."""
    server_box: list[PaidAioServer] = []
    outcome: queue.Queue[bytes | BaseException] = queue.Queue()

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            assert await reader.readexactly(2) == b"go"
            first_reader, other_writer = await writer.accept_stream()  # a writer of its own
            assert await first_reader.readexactly(2) == b"s1"
            charged = _in_request_debt(server_box[0])
            first = asyncio.ensure_future(writer.accept_stream())
            await _until(lambda: bool(charged), first)  # it took s2: the rate holds it
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            stream_reader, _ = await asyncio.wait_for(other_writer.accept_stream(), WAIT / 2)
            outcome.put(await asyncio.wait_for(stream_reader.readexactly(2), WAIT))
        except BaseException as exc:  # (TimeoutError: a put-back that woke no one)
            outcome.put(exc)
            raise

    world.limit(requests_per_sec=1)
    with aio_server(world, handler) as server:
        server_box.append(server)
        with world.connect() as sock:
            sock.sendall(b"go")
            with sock.open_stream() as one, sock.open_stream() as two:
                one.sendall(b"s1")
                two.sendall(b"s2")
                got = outcome.get(timeout=WAIT + 30)
    if isinstance(got, BaseException):
        raise got
    assert got == b"s2"


def test_a_datagram_a_cancelled_read_put_back_is_not_charged_twice(world: World) -> None:
    """Task A reads the client's 15 kB datagram at 100 B/s (about 150 s of debt) and is
    cancelled while the rate holds it; the datagram goes back, and task C reads it
    again: its bytes are in the client's bucket once, not twice (300 s of debt: the
    client held back twice as long as its limit says)."""
    size, rate = 15_000, 100
    server_box: list[PaidAioServer] = []
    outcome: queue.Queue[tuple[float, float] | BaseException] = queue.Queue()

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            assert await reader.readexactly(2) == b"go"  # (within the burst)
            first = asyncio.ensure_future(writer.recv_datagram())
            await _until(lambda: bytes_debt(server_box[0]) > 0, first)  # A took it
            once = bytes_debt(server_box[0])
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            again = asyncio.ensure_future(writer.recv_datagram())
            # (its first step takes the datagram and charges for it, if it does)
            await asyncio.wait({again}, timeout=1.0)
            outcome.put((once, bytes_debt(server_box[0])))
            again.cancel()
        except BaseException as exc:
            outcome.put(exc)
            raise

    world.limit(bytes_per_sec=rate)
    with aio_server(world, handler) as server:
        server_box.append(server)
        with world.connect() as sock:
            sock.send_datagram(bytes(size))
            sock.sendall(b"go")
            got = outcome.get(timeout=WAIT + 30)
    if isinstance(got, BaseException):
        raise got
    once, after = got
    assert once > size / rate / 2  # its bytes, charged once (less the burst)
    # charged twice: once + size / rate (150 s more), less the little time between
    assert after < once + size / rate / 2, (once, after)
