"""The paid server (docs/escrow.md §6.1): how a paused call keeps its
socket's timeout, and what datagrams cost the rate limits.

- A handler's socket timeout (and non-blocking mode) was ignored while the connection
  was paused for payment: recv, send and recv_datagram blocked for the whole pause
  timeout, then closed the connection.
- Empty datagrams cost the rate limits nothing (each charged its payload, 0 bytes, and
  never as a request): a client sent them as fast as the connection carried them.

Real paid servers on 127.0.0.1 and real LocalLedger files.

A paid handler's recv_datagram(timeout) waits at most ``timeout`` in all: the wait
for payment comes out of it, not a pause and then the whole timeout again for the
datagram."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import DTPTimeoutError
from dtp.hostid.paid import PaidServer, PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidAioServer, PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import Receipt, fee
from tests.support.paid_twins import PaidWorld, hosted_ledgers, ident, loop_in_thread, stop

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7
SERVER = ident(0xC1)
CLIENT = ident(0xC2)
WAIT = 30.0  # bound on anything the tests wait for
#: A client that signs no receipts: a connection past its allowance stays paused
UNPAID = MeteringConfig(enabled=False)


class World(PaidWorld):
    def limit(self, bytes_per_sec: int) -> None:
        """The Host limits each client to ``bytes_per_sec`` (read as the server starts)."""
        self.ledger.set_client_limits(SERVER, self.host_id, 0, bytes_per_sec, 0)

    def connect(self, deposit: int = 1_000_000) -> dtp.socket.DTPSocket:
        return self.connect_as(CLIENT, PORT, deposit, metering=UNPAID, timeout=WAIT)

    def serve(self, handler: Any, policy: ServicePolicy) -> PaidServer:
        return self.serve_blocking(
            PORT, handler, SERVER, receipts=self.tmp_path / "receipts.db", policy=policy
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA) as ledgers:
        yield World(*ledgers, tmp_path)


def debt_of(server: PaidAioServer | PaidServer) -> float:
    """Seconds the client's bytes bucket holds it back now (0 when it has none)."""
    limiter = server.limiter
    buckets = limiter.clients.get(CLIENT.sui_address) or limiter.idle.get(CLIENT.sui_address)
    return 0.0 if buckets is None else buckets.bytes.delay(time.monotonic())


# -- a paused call keeps its socket's timeout -------------------------------------------


def _spend_allowance(sock: PaidSocket) -> None:
    """Send until the gate pauses the connection (the client reads, signing nothing)."""
    engine = sock._paid.engine
    while sock.gate.serving(*engine.conn.usage):
        sock.send(b"x" * 1024)


def _timed(call: Any, *args: Any) -> tuple[float, str]:
    began = time.monotonic()
    try:
        call(*args)
        outcome = "returned"
    except Exception as exc:
        outcome = type(exc).__name__
    return time.monotonic() - began, outcome


PAUSE = 4.0  # the pause timeout: what a call ignoring its own timeout waited


def _serve_paused(world: World, handler: Any) -> Any:
    """Run ``handler`` on a connection the client reads but never pays; its result."""
    out: queue.Queue[Any] = queue.Queue()

    def wrapped(sock: PaidSocket) -> None:
        try:
            _spend_allowance(sock)
            out.put(handler(sock))
        except BaseException as exc:
            out.put(exc)
            raise

    policy = ServicePolicy(allowance=100, pause_timeout=PAUSE)
    with world.serve(wrapped, policy) as server, world.connect() as client:
        client.settimeout(0.2)
        deadline = time.monotonic() + WAIT
        while out.empty() and time.monotonic() < deadline:
            try:
                if not client.recv(65536):
                    break
            except DTPTimeoutError:
                pass
            except Exception:
                break
        got = out.get(timeout=WAIT)
        server.close()
    assert not isinstance(got, BaseException), got
    return got


def test_a_paused_call_on_a_non_blocking_socket_raises_blocking_io_error(
    world: World,
) -> None:
    """Paused for payment, a non-blocking handler's recv, send and accept_stream raise
    BlockingIOError at once, as with nothing to move; the pause goes on meanwhile, and
    a handler trying again is closed once paused the pause timeout."""

    def handler(sock: PaidSocket) -> tuple[list[tuple[float, str]], float, str]:
        sock.setblocking(False)
        calls = [
            _timed(sock.recv, 100),
            _timed(sock.send, b"y" * 100),
            _timed(sock.recv_into, bytearray(100)),
        ]
        began = time.monotonic()
        outcome = "still paused"
        while time.monotonic() - began < PAUSE + 10:
            _, outcome = _timed(sock.recv, 100)
            if outcome != "BlockingIOError":
                break
            time.sleep(0.05)
        return calls, time.monotonic() - began, outcome

    calls, closed_after, outcome = _serve_paused(world, handler)
    for took, raised in calls:
        assert raised == "BlockingIOError"
        assert took < PAUSE / 2
    assert outcome == "PaymentRequired"  # the pause clock ran on across the calls
    assert closed_after < PAUSE + 5


def test_a_paused_call_with_a_timeout_raises_timeout_error(world: World) -> None:
    """Paused for payment, a handler's recv and send with a socket timeout of 0.2 s,
    and recv_datagram with its own timeout (0 and 0.2 s), raise DTPTimeoutError once it
    passed, as with nothing to move (not at the pause timeout)."""

    def handler(sock: PaidSocket) -> list[tuple[float, str]]:
        sock.settimeout(0.2)
        return [
            _timed(sock.recv, 100),
            _timed(sock.send, b"y" * 100),
            _timed(sock.recv_datagram),
            _timed(sock.recv_datagram, 0),
            _timed(sock.recv_datagrams, 8, 0.2),
        ]

    for took, raised in _serve_paused(world, handler):
        assert raised == "DTPTimeoutError"
        assert took < PAUSE / 2


def test_a_paused_call_with_a_bad_datagram_timeout_raises_as_the_socket_does(
    world: World,
) -> None:
    """recv_datagram checks its timeout while paused as the socket does, before any
    wait: a negative one is a ValueError, not a wait."""

    def handler(sock: PaidSocket) -> tuple[float, str]:
        return _timed(sock.recv_datagram, -1)

    took, raised = _serve_paused(world, handler)
    assert raised == "ValueError"
    assert took < PAUSE / 2


# -- datagrams cost the rate limits their framing too -----------------------------------

RATE = 100  # bytes/s: a burst of 25 bytes


def test_datagram_charge_counts_the_frame_header() -> None:
    """A datagram costs its payload and its DATAGRAM frame's type byte and varint
    length (docs/protocol.md)."""
    from dtp.payments._ratelimit import datagram_charge  # (new: the other tests run without it)

    assert [datagram_charge(n) for n in (0, 1, 63, 64, 16383, 16384)] == [
        2,
        3,
        65,
        67,
        16386,
        16389,
    ]


def test_empty_datagrams_read_are_charged_to_the_rate_limit(world: World) -> None:
    """The client sends 300 empty datagrams; the handler reads for 1 s under a limit of
    100 bytes/s: each costs its frame's 2 bytes, so it reads some 60 of them, not all
    300 at once."""
    out: queue.Queue[int | BaseException] = queue.Queue()

    def handler(sock: PaidSocket) -> None:
        try:
            assert sock.recv(2) == b"go"
            got = 0
            began = time.monotonic()
            while time.monotonic() - began < 1.0:
                try:
                    sock.recv_datagram(0.5)
                except DTPTimeoutError:
                    break  # all of them read
                got += 1
            out.put(got)
        except BaseException as exc:
            out.put(exc)
            raise

    world.limit(RATE)
    with world.serve(handler, ServicePolicy()), world.connect() as client:
        for _ in range(300):
            client.send_datagram(b"")
        client.sendall(b"go")
        got = out.get(timeout=WAIT)
    assert not isinstance(got, BaseException), got
    assert got < 200  # (at the rate: about 12 on the burst, 50 a second)


def test_empty_datagrams_sent_are_charged_to_the_rate_limit(world: World) -> None:
    """The handler sends 100 empty datagrams under a limit of 100 bytes/s: 200 bytes
    charged, the call waits for most of it (some 1.75 s)."""
    out: queue.Queue[float | BaseException] = queue.Queue()

    def handler(sock: PaidSocket) -> None:
        try:
            assert sock.recv(2) == b"go"
            began = time.monotonic()
            assert sock.send_datagrams([b""] * 100) == 100
            out.put(time.monotonic() - began)
        except BaseException as exc:
            out.put(exc)
            raise

    world.limit(RATE)
    with world.serve(handler, ServicePolicy()), world.connect() as client:
        client.sendall(b"go")
        took = out.get(timeout=WAIT)
    assert not isinstance(took, BaseException), took
    assert took > 1.0


def test_asyncio_empty_datagrams_are_charged_to_the_rate_limit(world: World) -> None:
    """asyncio: the handler reads 60 empty datagrams the client sent (120 bytes charged:
    the reads wait for most of them, some 0.95 s), then sends 100 (200 bytes, charged
    as they go): the client's bytes/s limit holds debt for them."""
    done: queue.Queue[tuple[float, float] | BaseException] = queue.Queue()
    server_box: list[PaidAioServer] = []

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            assert await reader.readexactly(2) == b"go"
            began = time.monotonic()
            for _ in range(60):
                await asyncio.wait_for(writer.recv_datagram(), WAIT)
            read_took = time.monotonic() - began
            assert writer.send_datagrams([b""] * 100) == 100
            done.put((read_took, debt_of(server_box[0])))
        except BaseException as exc:
            done.put(exc)
            raise

    world.limit(RATE)
    with loop_in_thread() as loop:
        server = world.serve_aio(
            loop,
            PORT,
            handler,
            SERVER,
            timeout=WAIT,
            receipts=world.tmp_path / "receipts.db",
        )
        server_box.append(server)
        try:
            with world.connect() as client:
                for _ in range(60):
                    client.send_datagram(b"")
                client.sendall(b"go")
                got = done.get(timeout=WAIT)
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(WAIT)
    assert not isinstance(got, BaseException), got
    read_took, sent_debt = got
    assert read_took > 0.5
    assert sent_debt > 1.0  # 200 bytes at 100 a second (the burst spent by the reads)


def test_a_pause_after_payment_is_a_new_one(world: World) -> None:
    """A datagram send paused and timed out keeps its pause's start for the next try;
    the client then paid, and the connection was served again -- but the start stayed,
    so the next datagram pause, a pause timeout later, closed the connection at once
    (PaymentRequired) without asking the client for a receipt."""

    def pay(sock: PaidSocket, extra: int, nonce: int) -> None:
        paid = sock._paid
        used, requests = paid.engine.conn.usage
        total = used + extra
        receipt = Receipt(paid.gate.scope, total, requests, fee(SLA, total, requests), nonce)
        with paid.engine.lock:
            paid.on_receipt(receipt.sign(CLIENT).encode())  # as the client's RECEIPT frame
        deadline = time.monotonic() + WAIT
        while sock.gate.latest_nonce < nonce and time.monotonic() < deadline:
            time.sleep(0.01)

    def handler(sock: PaidSocket) -> tuple[tuple[float, str], ...]:
        sock.settimeout(0.2)
        first = _timed(sock.send_datagram, b"d" * 50)  # paused: times out
        pay(sock, 5_000, 1)
        served = _timed(sock.send_datagram, b"d" * 50)
        time.sleep(PAUSE + 0.5)
        _spend_allowance(sock)  # paused again
        sock.settimeout(30)
        second = _timed(sock.send_datagram, b"d" * 50)
        return first, served, second

    first, served, second = _serve_paused(world, handler)
    assert first[1] == "DTPTimeoutError" and served[1] == "returned"
    # the client gets the pause timeout to pay (it does not here: then closed)
    assert second[1] == "PaymentRequired" and second[0] >= PAUSE - 0.5, second


TIMEOUT = 1.5
PAYS_AFTER = 1.0  # the client takes in the server's receipt request only then
#: A client that signs a receipt only when the server asks for one
ON_REQUEST = MeteringConfig(every_bytes=0, every_ms=0)


@pytest.mark.parametrize("how", ["recv_datagram", "recv_datagrams"])
def test_the_pause_for_payment_comes_out_of_the_datagram_timeout(world: World, how: str) -> None:
    out: queue.Queue[Any] = queue.Queue()

    def handler(sock: PaidSocket) -> None:
        _spend_allowance(sock)
        began = time.monotonic()
        try:
            if how == "recv_datagram":
                sock.recv_datagram(TIMEOUT)
            else:
                sock.recv_datagrams(8, TIMEOUT)
            out.put(("returned", time.monotonic() - began, True))
        except DTPTimeoutError:
            paid = sock.gate.serving(*sock._paid.engine.conn.usage)
            out.put(("DTPTimeoutError", time.monotonic() - began, paid))

    policy = ServicePolicy(allowance=100, pause_timeout=WAIT, request_interval=1.0)
    with world.serve(handler, policy) as server:
        client = world.connect_as(CLIENT, PORT, 1_000_000, metering=ON_REQUEST, timeout=WAIT)
        with client:
            # nothing of the client's runs meanwhile (its timer thread would answer the
            # server's request within a fraction of a second): the pause lasts as long
            with client._engine.lock:
                time.sleep(PAYS_AFTER)
            client.settimeout(0.1)
            deadline = time.monotonic() + WAIT
            while out.empty() and time.monotonic() < deadline:
                try:
                    if not client.recv(65536):
                        break
                except DTPTimeoutError:
                    pass
            outcome, took, paid = out.get(timeout=WAIT)
        server.close()
    assert outcome == "DTPTimeoutError"
    assert paid  # the pause ended within the timeout: the wait for the datagram followed
    # (not TIMEOUT + the pause: about 2.5 s)
    assert took < TIMEOUT + PAYS_AFTER / 2, took
