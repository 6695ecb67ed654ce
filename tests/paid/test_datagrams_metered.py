"""Paid connections meter datagrams too (docs/escrow.md §6.1). Datagram payloads were
left out of ``Connection.usage``, so a client of a paid service moved any amount of
data for free through datagrams: its receipts never paid for them, and the server's
gate never paused it for them. Now both sides count a datagram's payload as it is
framed to go and as it is accepted, receipts pay for them, and the gate holds them as
it holds stream bytes. Blocking and asyncio servers, a real LocalLedger file, real
handshakes by host ID on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError, DTPTimeoutError, PaymentRequired
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.payments._settlement import ClientPayment
from dtp.payments.metering import CLOSE_PAYMENT_REQUIRED, MeteringConfig
from dtp.payments.receipts import fee
from tests.support.paid_twins import PaidWorld, hosted_ledgers, ident, loop_in_thread, stop
from tests.support.polling import wait_for
from tests.support.reads import recv_exactly
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7
SERVER = ident(0xA1)
CLIENT = ident(0xA2)
DEPOSIT = 200_000
WAIT = 30.0  # bound on anything the test waits for (a hang would be unbounded)
APIS = ["blocking", "asyncio"]
ALLOWANCE = 100  # MIST on credit: 9.5 KiB after the first request
STINGY = ServicePolicy(allowance=ALLOWANCE, pause_timeout=1.0)
UNPAID = MeteringConfig(enabled=False)


class World(PaidWorld):
    def connect(
        self, deposit: int = DEPOSIT, metering: MeteringConfig | None = None
    ) -> dtp.socket.DTPSocket:
        return self.connect_as(CLIENT, PORT, deposit, metering=metering, timeout=WAIT)

    def claimed_when_settled(self, cid: str) -> int:
        """What the server claimed from ``cid``'s escrow, once the connection settled."""
        assert wait_for(lambda: is_settled(self.ledger, cid), WAIT)
        return settled_escrow(self.ledger, cid).claimed


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA) as ledgers:
        yield World(*ledgers, tmp_path)


BlockingHandler = Callable[[PaidSocket], None]
AioHandler = Callable[[PaidReader, PaidWriter], Any]


@contextmanager
def paid_server(
    world: World,
    api: str,
    blocking: BlockingHandler,
    aio: AioHandler,
    policy: ServicePolicy | None = None,
) -> Iterator[None]:
    """A paid server of the kind ``api`` running ``blocking`` or ``aio`` as its handler
    (asyncio on a loop in a thread of its own), stopped at the end of the block."""
    receipts = world.tmp_path / "receipts.db"
    if api == "blocking":
        with dtp.socket.serve(
            world.host_id,
            PORT,
            blocking,
            ledger=world.server_ledger,
            identity=SERVER,
            receipts=receipts,
            policy=policy,
        ):
            yield
        return
    with loop_in_thread() as loop:
        server = world.serve_aio(
            loop, PORT, aio, SERVER, timeout=WAIT, receipts=receipts, policy=policy
        )
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(2 * WAIT)


# -- what moves as datagrams is paid for, and both sides count the same ----------------------


@pytest.mark.parametrize("api", APIS)
def test_a_datagram_echo_is_paid_for_both_ways(world: World, api: str) -> None:
    """A client echoes datagrams off a paid service: the server claims the fee of every
    payload both ways, and the client's count is the server's. No request: the
    connection's first stream carried nothing (docs/escrow.md §6.1)."""
    count, size = 40, 4000
    server_usage: queue.Queue[tuple[int, int]] = queue.Queue()

    def echo(sock: PaidSocket) -> None:
        try:
            while True:
                sock.send_datagram(sock.recv_datagram(timeout=None))
        except DTPError:
            pass  # the client closed
        finally:
            server_usage.put(sock._paid.engine.conn.usage)

    async def echo_aio(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            while True:
                writer.send_datagram(await writer.recv_datagram())
        except DTPError:
            pass
        finally:
            server_usage.put(writer._paid.conn.usage)

    with paid_server(world, api, echo, echo_aio):
        with world.connect() as sock:
            for i in range(count):
                payload = bytes([i]) * size
                sock.send_datagram(payload)
                assert sock.recv_datagram(timeout=WAIT) == payload
            client_usage = sock._engine.conn.usage
        cid = sock.connection_id
        assert cid is not None
        claimed = world.claimed_when_settled(cid)
        served = server_usage.get(timeout=WAIT)
    assert client_usage == served == (2 * count * size, 0)
    assert claimed == fee(SLA, 2 * count * size, 0)


@pytest.mark.parametrize("api", APIS)
def test_datagrams_the_server_sends_are_in_the_clients_final_receipt(
    world: World, api: str
) -> None:
    """A handler sends datagrams to the client: the client's receipts pay for them with
    the stream bytes, and the server claims that."""
    count, size = 50, 3000
    payloads = [os.urandom(size) for _ in range(count)]
    server_usage: queue.Queue[tuple[int, int]] = queue.Queue()

    def push(sock: PaidSocket) -> None:
        try:
            assert sock.recv(2) == b"go"
            assert sock.send_datagrams(payloads) == count
            sock.sendall(b"done")
            assert sock.recv(1) == b""  # until the client closes
        finally:
            server_usage.put(sock._paid.engine.conn.usage)

    async def push_aio(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            assert await reader.readexactly(2) == b"go"
            assert writer.send_datagrams(payloads) == count
            writer.write(b"done")
            await writer.drain()
            assert await reader.read(1) == b""
        finally:
            server_usage.put(writer._paid.conn.usage)

    stream_bytes = len(b"go") + len(b"done")
    with paid_server(world, api, push, push_aio):
        with world.connect() as sock:
            sock.sendall(b"go")
            assert recv_exactly(sock, 4) == b"done"
            received: list[bytes] = []
            while len(received) < count:
                received += sock.recv_datagrams(timeout=WAIT)
            assert received == payloads  # (over TCP: all of them, in order)
            client_usage = sock._engine.conn.usage
            payment = sock._engine.hook
            assert payment is not None
        final = payment.meter.latest
        cid = sock.connection_id
        assert cid is not None
        claimed = world.claimed_when_settled(cid)
        served = server_usage.get(timeout=WAIT)
    total = stream_bytes + count * size
    assert client_usage == served == (total, 1)
    assert final is not None and final.total_bytes == total
    assert claimed == fee(SLA, total, 1) == final.total_amount


# -- a client whose datagrams the deposit cannot pay ---------------------------------------


def _sinks(
    outcome: queue.Queue[tuple[int, BaseException | None]],
) -> tuple[BlockingHandler, AioHandler]:
    """Handlers that count the datagrams' bytes until the connection ends, then put
    (bytes, its error) in ``outcome``."""

    def sink(sock: PaidSocket) -> None:
        got = 0
        try:
            while True:
                got += len(sock.recv_datagram(timeout=None))
        except DTPError as exc:
            outcome.put((got, exc))

    async def sink_aio(reader: PaidReader, writer: PaidWriter) -> None:
        got = 0
        try:
            while True:
                got += len(await writer.recv_datagram())
        except DTPError as exc:
            outcome.put((got, exc))

    return sink, sink_aio


@pytest.mark.parametrize("api", APIS)
def test_datagrams_of_a_client_that_pays_nothing_pause_then_close_the_connection(
    world: World, api: str
) -> None:
    """A client that signs no receipt floods a paid datagram sink: as with stream bytes,
    the server serves its allowance, pauses, and closes with CLOSE_PAYMENT_REQUIRED
    after the pause timeout, claiming nothing. (The datagrams flowed for free before:
    the server never paused and the client waited for a close that never came.)"""
    size = 8000
    flood = 3 * SLA.min_deposit * 1024 // SLA.price_per_kib
    outcome: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
    payload = os.urandom(size)
    policy = ServicePolicy(pause_timeout=1.0)
    with paid_server(world, api, *_sinks(outcome), policy):
        sock = world.connect(SLA.min_deposit, UNPAID)
        cid = sock.connection_id
        assert cid is not None
        sent = 0
        deadline = time.monotonic() + WAIT
        with pytest.raises(PaymentRequired) as closed:
            while time.monotonic() < deadline:
                if sent < flood:
                    if sock.send_datagrams([payload]):
                        sent += size
                    else:
                        time.sleep(0.01)  # the carrier is backed up: it was dropped
                else:
                    # all sent: wait for the server's verdict
                    with contextlib.suppress(DTPTimeoutError):
                        sock.recv_datagram(timeout=1.0)
        sock.close()
        served, error = outcome.get(timeout=WAIT)
        claimed = world.claimed_when_settled(cid)
    assert closed.value.code == CLOSE_PAYMENT_REQUIRED
    assert "payment required" in closed.value.reason
    assert isinstance(error, PaymentRequired)
    # served no more than the allowance (min_deposit) covers: in bytes alone, as a
    # datagram-only client has opened no stream while it floods (a request is a stream
    # the client opens, docs/escrow.md §6.1; its stream 0 counts once a frame of it
    # arrives, its close's FIN at the latest)
    assert fee(SLA, served, 0) <= SLA.min_deposit
    assert served < sent
    assert claimed == 0


def test_a_batch_receive_hands_out_only_the_datagrams_the_allowance_covers(
    world: World,
) -> None:
    """A blocking handler read one datagram of a client that pays nothing (the gate
    looked, its credit cached), then takes the 69 that came after it in one batch: the
    first 63 go (64 with the first: the allowance to the byte), the 6 whose arrival took
    the usage past it stay queued, and the next receive waits for payment rather than
    take them. (The batch took them all before: the cached credit was trusted, and
    never spent on datagrams.)"""
    size, count = 8000, 70
    covered = SLA.min_deposit * 1024 // SLA.price_per_kib // size
    outcome: queue.Queue[tuple[int, int, int] | BaseException] = queue.Queue()
    first_read = threading.Event()

    def handler(sock: PaidSocket) -> None:
        try:
            sock.recv_datagram(timeout=WAIT)
            first_read.set()
            engine = sock._paid.engine
            assert wait_for(lambda: engine.conn.usage[0] >= count * size, WAIT)
            batch = sock.recv_datagrams(1024, timeout=WAIT)
            queued = len(engine.session.datagrams)
            with pytest.raises(DTPTimeoutError):
                sock.recv_datagram(timeout=0.3)
            outcome.put((1 + len(batch), queued, len(engine.session.datagrams)))
        except BaseException as exc:  # (reported to the test thread)
            outcome.put(exc)

    payload = os.urandom(size)
    with paid_server(world, "blocking", handler, _sinks(queue.Queue())[1]):
        sock = world.connect(SLA.min_deposit, UNPAID)
        sent = 0
        deadline = time.monotonic() + WAIT
        while sent < count and time.monotonic() < deadline:
            if sent == 1:
                assert first_read.wait(WAIT)
            if sock.send_datagrams([payload]):
                sent += 1
            else:
                time.sleep(0.01)  # the carrier is backed up: it was dropped
        got = outcome.get(timeout=WAIT)
        sock.close()
    assert not isinstance(got, BaseException), got
    assert covered == 64 and got == (covered, count - covered, count - covered)
    assert fee(SLA, covered * size, 0) <= SLA.min_deposit


@pytest.mark.parametrize("api", APIS)
def test_datagrams_past_the_allowance_at_an_unpaid_end_are_never_handed_out(
    world: World, api: str
) -> None:
    """A client that pays nothing sends 70 datagrams and leaves; the handler reads only
    then: the 64 the allowance covers come out, the rest are unpaid and the next
    receive reports the end (rather than take a datagram it put back again and
    again)."""
    size, count = 8000, 70
    covered = SLA.min_deposit * 1024 // SLA.price_per_kib // size
    outcome: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
    left = threading.Event()

    def handler(sock: PaidSocket) -> None:
        got = 0
        try:
            assert left.wait(WAIT) and wait_for(sock._paid.ended, WAIT)
            while True:
                got += 1 if sock.recv_datagram(timeout=WAIT) else 0
        except DTPError as exc:
            outcome.put((got, exc))
        except BaseException as exc:  # (reported to the test thread)
            outcome.put((got, exc))

    async def handler_aio(reader: PaidReader, writer: PaidWriter) -> None:
        got = 0
        try:
            assert await asyncio.to_thread(left.wait, WAIT)
            assert await asyncio.to_thread(wait_for, writer._paid.ended, WAIT)
            while True:
                async with asyncio.timeout(WAIT):
                    got += 1 if await writer.recv_datagram() else 0
        except BaseException as exc:  # (reported to the test thread)
            outcome.put((got, exc))

    payload = os.urandom(size)
    with paid_server(world, api, handler, handler_aio):
        sock = world.connect(SLA.min_deposit, UNPAID)
        engine = sock._engine
        sent = 0
        deadline = time.monotonic() + WAIT
        while sent < count and time.monotonic() < deadline:
            if sock.send_datagrams([payload]):
                sent += 1
            else:
                time.sleep(0.01)  # the carrier is backed up: it was dropped
        assert wait_for(lambda: engine.conn.send_buffered() == 0, WAIT)
        sock.close()
        left.set()
        got, error = outcome.get(timeout=WAIT)
    assert sent == count
    assert isinstance(error, DTPError) and not isinstance(error, DTPTimeoutError), error
    assert got == covered == 64


@pytest.mark.parametrize("api", APIS)
def test_datagrams_beyond_the_deposit_end_the_connection_at_once(world: World, api: str) -> None:
    """A metered client floods a paid datagram sink with a deposit that covers a third
    of it: the send its deposit cannot pay raises PaymentRequired at once, the
    connection ended by the client (its final receipt, then CLOSE_PAYMENT_REQUIRED),
    long before the server's pause timeout (30 s here) would have; the server's handler
    reads the same error, and the server claims the final receipt."""
    size = 8000
    deposit = SLA.min_deposit  # 500 KiB of bytes
    flood = 3 * deposit * 1024 // SLA.price_per_kib
    outcome: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
    payload = os.urandom(size)
    policy = ServicePolicy(pause_timeout=30.0)
    with paid_server(world, api, *_sinks(outcome), policy):
        sock = world.connect(deposit)
        cid = sock.connection_id
        payment = sock.layer.hook
        assert cid is not None and isinstance(payment, ClientPayment)
        sent = 0
        with pytest.raises(PaymentRequired) as closed:
            while sent < flood:
                if sock.send_datagrams([payload]):
                    sent += size
                else:
                    time.sleep(0.01)  # the carrier is backed up: it was dropped
        refused_at = time.monotonic()
        # the connection is over for every call, not only the refused one
        with pytest.raises(PaymentRequired):
            sock.recv_datagram(timeout=1.0)
        served, error = outcome.get(timeout=WAIT)
        handler_ended = time.monotonic() - refused_at
        sock.close()
        claimed = world.claimed_when_settled(cid)
    assert closed.value.code == CLOSE_PAYMENT_REQUIRED
    assert "cannot pay for this write" in closed.value.reason
    assert isinstance(error, PaymentRequired)
    assert handler_ended < policy.pause_timeout / 3  # ended by the client, not the pause
    final = payment.meter.latest
    assert final is not None
    # what went out is what the deposit covers, to within one datagram -- the room of
    # the request the first stream would make if it carried anything kept -- and paid:
    # datagrams alone, no request
    assert deposit - fee(SLA, size, 0) < fee(SLA, sent, 1) <= deposit
    assert served <= sent
    assert claimed == final.total_amount == fee(SLA, sent, 0)


def test_blocking_datagrams_to_a_client_that_pays_nothing_stop_at_the_allowance(
    world: World,
) -> None:
    """A blocking handler sends datagrams to a client that pays nothing: each goes only
    when the credit covers it whole, so the client gets the allowance's worth; then the
    handler's send pauses, and the connection closes with CLOSE_PAYMENT_REQUIRED, as a
    stream write's would. (All of them went before: the gate looked at a credit that
    datagrams never used up.)"""
    size, count = 1000, 200
    outcome: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()

    def push(sock: PaidSocket) -> None:
        sent = 0
        try:
            for _ in range(count):
                sock.send_datagram(os.urandom(size))
                sent += 1
        except DTPError as exc:
            outcome.put((sent, exc))
            return
        outcome.put((sent, None))

    got = 0
    with paid_server(world, "blocking", push, push_aio_unused, STINGY):
        with (
            world.connect(SLA.min_deposit, UNPAID) as sock,
            pytest.raises(DTPError) as ended,
        ):
            while True:
                got += len(sock.recv_datagram(timeout=WAIT))
        sent, error = outcome.get(timeout=WAIT)
    assert isinstance(error, PaymentRequired)
    assert isinstance(ended.value, PaymentRequired)
    assert got == sent * size
    assert fee(SLA, got, 0) <= ALLOWANCE < fee(SLA, got + size, 0)  # (no request made)


def test_asyncio_datagrams_to_a_client_that_pays_nothing_are_dropped_past_the_allowance(
    world: World,
) -> None:
    """The asyncio twin: send_datagram never waits, so those the credit does not cover
    are dropped and counted (as while paused), and the client gets the allowance's
    worth. (All of them went before.)"""
    size, count = 1000, 200
    outcome: queue.Queue[int] = queue.Queue()

    async def push_aio(reader: PaidReader, writer: PaidWriter) -> None:
        for _ in range(count):
            writer.send_datagram(os.urandom(size))
            await asyncio.sleep(0)
        outcome.put(writer.datagrams_send_dropped)
        with contextlib.suppress(DTPError):
            await reader.read(1)  # until the client closes

    got = 0
    with (
        paid_server(world, "asyncio", push_blocking_unused, push_aio, STINGY),
        world.connect(SLA.min_deposit, UNPAID) as sock,
    ):
        dropped = outcome.get(timeout=WAIT)
        with contextlib.suppress(DTPTimeoutError):
            while True:
                got += len(sock.recv_datagram(timeout=1.0))
    assert got + dropped * size == count * size
    assert fee(SLA, got, 0) <= ALLOWANCE < fee(SLA, got + size, 0)  # (no request made)


def push_aio_unused(reader: PaidReader, writer: PaidWriter) -> None:
    raise AssertionError("the blocking server runs the blocking handler")


def push_blocking_unused(sock: PaidSocket) -> None:
    raise AssertionError("the asyncio server runs the asyncio handler")
