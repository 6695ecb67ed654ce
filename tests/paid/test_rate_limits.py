"""Edges of the rate limits on a paid connection's datagrams (docs/escrow.md §6.1):
what the limits are charged for, and who is woken when a datagram goes back.

- asyncio: a ``recv_datagram`` cancelled while the rate limits held it put its datagram
  back, but did not wake another task already waiting in ``recv_datagram``: that one
  waited for the connection to move again, the datagram there all along.
- blocking: ``send_datagrams`` charged the rate limits for every datagram it offered,
  those the socket's send backlog dropped too: a handler sending to a stalled client
  waited for bytes that never went.
- asyncio: ``send_datagram`` charged the rate limits only at the next ``drain()``, which
  a datagram sender has no reason to call: it sent past its bytes/s limit for good.

Each rule is one driver's own (cancellation, drain(), a send that waits), so these
tests are not run over the ``driver`` fixture. Real paid servers on 127.0.0.1, a real
LocalLedger file, real handshakes by host ID.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.hostid.paid import PaidServer, PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidAioServer, PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from tests.support.paid_twins import PaidWorld, hosted_ledgers, ident, loop_in_thread, stop

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7
SERVER = ident(0xB1)
CLIENT = ident(0xB2)
WAIT = 60.0  # bound on anything the tests wait for (a missed wake-up waits 600 s or more)
#: A client that signs no receipts: none comes to wake a waiting task by the way
UNPAID = MeteringConfig(enabled=False)
#: No Host refresh during a test: each one wakes every waiting task of the connection
QUIET = ServicePolicy(refresh_interval=600.0)

AioHandler = Callable[[PaidReader, PaidWriter], Any]


class World(PaidWorld):
    def limit(self, bytes_per_sec: int) -> None:
        """The Host limits each client to ``bytes_per_sec`` (read as the server starts)."""
        self.ledger.set_client_limits(SERVER, self.host_id, 0, bytes_per_sec, 0)

    def connect(self, deposit: int = SLA.min_deposit) -> dtp.socket.DTPSocket:
        return self.connect_as(CLIENT, PORT, deposit, metering=UNPAID, timeout=WAIT)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA) as ledgers:
        yield World(*ledgers, tmp_path)


@contextmanager
def aio_server(world: World, handler: AioHandler, policy: ServicePolicy) -> Iterator[PaidAioServer]:
    """An asyncio paid server running ``handler`` on a loop in a thread of its own,
    stopped at the end of the block."""
    with loop_in_thread() as loop:
        server = world.serve_aio(loop, PORT, handler, SERVER, timeout=WAIT, policy=policy)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(2 * WAIT)


def debt_of(server: PaidAioServer | PaidServer) -> float:
    """Seconds the client's bytes bucket holds it back now (0 when it has none)."""
    limiter = server.limiter
    buckets = limiter.clients.get(CLIENT.sui_address) or limiter.idle.get(CLIENT.sui_address)
    return 0.0 if buckets is None else buckets.bytes.delay(time.monotonic())


# -- asyncio: a datagram put back wakes a task waiting for one ---------------------------


def test_a_datagram_a_cancelled_read_put_back_reaches_a_waiting_reader(world: World) -> None:
    """Task A reads the client's datagram and waits for the rate limit; task B waits in
    recv_datagram meanwhile; A is cancelled and puts the datagram back. B gets it once
    the limit lets it (the debt of reading it twice: about 10 s), without waiting for
    the connection to move again (here it never would: the client signs no receipts
    and the Host is not read again). (asyncio only: a read cancelled while it waits is
    asyncio's concern.)"""
    size, rate = 16_000, 3000  # 16 kB at 3 kB/s: A is held about 5 s
    server_box: list[PaidAioServer] = []
    outcome: queue.Queue[bytes | BaseException] = queue.Queue()

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            assert await reader.readexactly(2) == b"go"  # (within the burst)
            first = asyncio.ensure_future(writer.recv_datagram())
            deadline = time.monotonic() + WAIT
            while not debt_of(server_box[0]):  # A took it: the limit holds it
                assert time.monotonic() < deadline and not first.done()
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(writer.recv_datagram())
            for _ in range(5):
                await asyncio.sleep(0)  # B looked at an empty queue: it waits
            assert not first.done() and not second.done()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            outcome.put(await asyncio.wait_for(second, WAIT))
        except BaseException as exc:  # (TimeoutError: a put-back that woke no one)
            outcome.put(exc)
            raise

    world.limit(rate)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    with aio_server(world, handler, QUIET) as server:
        server_box.append(server)
        with world.connect() as sock:
            sock.send_datagram(payload)
            sock.sendall(b"go")
            got = outcome.get(timeout=WAIT + 30)
    assert got == payload


# -- blocking: the rate limits are charged for the datagrams queued, not those dropped ---


def test_blocking_datagrams_the_backlog_dropped_are_not_charged_to_the_rate_limit(
    world: World,
) -> None:
    """A handler sends datagrams to a client that stopped reading, until the carrier's
    backlog drops them, then offers 600 s worth of the client's bytes/s limit more: all
    of them dropped, the call returns at once, and the limit holds no debt for them
    (only what goes is charged). Blocking only: its send_datagrams waits for the limit,
    the asyncio one never waits and drops what the limit's debt holds back (the test
    below)."""
    rate = 4_000_000  # bytes/s: the backlog (some MB) fills in a few seconds
    outcome: queue.Queue[tuple[float, int, int, float] | BaseException] = queue.Queue()
    server_box: list[PaidServer] = []

    def push(sock: PaidSocket) -> None:
        try:
            assert sock.recv(2) == b"go"
            payload = bytes(min(16_000, sock.max_datagram_size))
            run = 64
            deadline = time.monotonic() + WAIT
            while sock.send_datagrams([payload] * run) == run:  # until the backlog drops
                assert time.monotonic() < deadline, "the backlog never filled"
            count = 600 * rate // len(payload)
            began = time.monotonic()
            queued = sock.send_datagrams([payload] * count)
            took = time.monotonic() - began
            outcome.put((took, count, queued, debt_of(server_box[0])))
        except BaseException as exc:
            outcome.put(exc)
            raise

    world.limit(rate)
    policy = ServicePolicy(allowance=200_000)  # 20 MB on credit: the backlog fills first
    with dtp.socket.serve(
        world.host_id, PORT, push, ledger=world.server_ledger, identity=SERVER, policy=policy
    ) as server:
        server_box.append(server)
        with world.connect(deposit=1_000_000) as sock:
            sock.sendall(b"go")
            # the client stops reading: its engine held, not even the timer thread reads
            # for it, so what the server sends piles up in the server's backlog
            with sock._engine.lock:
                got = outcome.get(timeout=WAIT + 30)
    # (before: the call waited until the server's idle timeout ended the connection)
    assert not isinstance(got, BaseException), got
    took, count, queued, debt = got
    assert queued < count // 100  # (the backlog full: next to none went)
    assert took < WAIT
    assert debt < 60


# -- asyncio: datagrams sent are charged to the rate limit as they go --------------------


def test_asyncio_datagrams_sent_without_drain_are_charged_to_the_rate_limit(
    world: World,
) -> None:
    """A handler sends 600 s worth of the client's bytes/s limit as datagrams, never
    draining (send_datagram never waits): the limit is charged as they go, so the
    client's bucket is in debt for them, and the next drain() waits for it: a sender
    that never drains does not send past its limit. asyncio only: drain() is its own,
    and the blocking send_datagrams waits for the limit before it sends (the test
    above)."""
    rate = 100  # bytes/s
    size, count = 15_000, 4  # 60 kB: 600 s at the rate
    server_box: list[PaidAioServer] = []
    outcome: queue.Queue[tuple[int, float, bool] | BaseException] = queue.Queue()

    async def push(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            assert await reader.readexactly(2) == b"go"
            sent = writer.send_datagrams([bytes(size)] * count)
            debt = debt_of(server_box[0])
            try:
                # a drain() now waits for the debt (600 s; cut short here)
                await asyncio.wait_for(writer.drain(), 1.0)
                held = False
            except TimeoutError:
                held = True
            outcome.put((sent, debt, held))
        except BaseException as exc:
            outcome.put(exc)
            raise

    world.limit(rate)
    with aio_server(world, push, QUIET) as server:
        server_box.append(server)
        with world.connect() as sock:
            sock.sendall(b"go")
            got = outcome.get(timeout=WAIT)
    assert not isinstance(got, BaseException), got
    sent, debt, held = got
    assert sent == count
    assert debt > 500  # seconds: all of them charged, less the burst and the time since
    assert held
