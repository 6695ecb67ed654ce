"""Paid connections end to end: the service runs in its own OS process
(tests/paid/servers.py), clients here, all sharing one LocalLedger file. Every test
checks that MIST is conserved."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import (
    ConnectionClosed,
    ConnectionLost,
    ConnectionStateError,
    FirewallDenied,
    PaymentRequired,
    SpendingCapExceeded,
)
from dtp.hostid.paid import PaidSocket
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, EventFilter
from dtp.ledger.local import LocalLedger
from dtp.payments._refunds import refunds_for
from dtp.payments._settlement import collect_refund
from dtp.payments.metering import CLOSE_FIREWALL_DENIED, CLOSE_PAYMENT_REQUIRED, MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import fee
from tests.paid.servers import METERING, SERVER, SLA, World, fund, hosted_world, paid_server
from tests.support import paid_top_ups
from tests.support.paid_top_ups import conserved, paid_connect
from tests.support.paid_twins import ident
from tests.support.polling import wait_for
from tests.support.settlements import is_settled

# the paid server fixtures the handler test below runs on
ledger = paid_top_ups.ledger
host_id = paid_top_ups.host_id
serve = paid_top_ups.serve


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_world(tmp_path) as made:
        yield made


def echo_blocking(world: World, client: HostIdentity, nbytes: int, deposit: int = 20_000) -> str:
    """Connect by host ID, echo ``nbytes`` in 32 KiB pieces, close; returns the connection ID."""
    payload = os.urandom(nbytes)
    with world.connect(client, deposit) as sock:
        for i in range(0, nbytes, 32 * 1024):
            piece = payload[i : i + 32 * 1024]
            sock.sendall(piece)
            got = b""
            while len(got) < len(piece):
                got += sock.recv(len(piece) - len(got))
            assert got == piece
        assert sock.connection_id is not None
        return sock.connection_id


async def echo_asyncio(
    world: World, client: HostIdentity, nbytes: int, deposit: int = 20_000
) -> str:
    payload = os.urandom(nbytes)
    reader, writer = await dtp.aio.open_connection(
        world.address,
        ledger=world.ledger,
        identity=client,
        deposit=deposit,
        metering=METERING,
        timeout=15,
    )
    for i in range(0, nbytes, 32 * 1024):
        piece = payload[i : i + 32 * 1024]
        writer.write(piece)
        await writer.drain()
        assert await reader.readexactly(len(piece)) == piece
    writer.close()
    await writer.wait_closed()
    assert writer.connection_id is not None
    return writer.connection_id


# -- many clients, each paying exactly for what it used ----------------------------------------


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_paid_echo_many_clients_pay_exactly_their_usage(world: World, api: str) -> None:
    clients = [ident(0x60 + i) for i in range(6)]
    fund(world, *clients)
    sizes = [(96 + 32 * i) * 1024 for i in range(len(clients))]
    with paid_server(world, api=api):
        if api == "blocking":
            cids: list[str] = [""] * len(clients)
            errors: list[BaseException] = []

            def run(i: int) -> None:
                try:
                    cids[i] = echo_blocking(world, clients[i], sizes[i])
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
        else:

            async def run_all() -> list[str]:
                return list(
                    await asyncio.gather(
                        *(echo_asyncio(world, c, n) for c, n in zip(clients, sizes, strict=True))
                    )
                )

            cids = asyncio.run(run_all())
        for cid in cids:
            world.wait_settled(cid)
        # the server marks a claim in its store just after the settlement lands on the
        # ledger: wait for that before the server process is killed
        world.wait_marked(cids)
    earned = 0
    for client, cid, size in zip(clients, cids, sizes, strict=True):
        expected = fee(SLA, 2 * size, 1)  # both directions, one stream = one request
        assert world.claimed(cid) == expected
        assert world.ledger.balance(client.sui_address) == 100_000 - expected
        earned += expected
    assert world.ledger.balance(SERVER.sui_address) == earned
    with ReceiptStore(world.receipts) as store:
        assert list(store.unclaimed()) == []
        for cid, size in zip(cids, sizes, strict=True):
            stored = store.latest(cid)
            assert stored is not None and stored.claimed_amount == fee(SLA, 2 * size, 1)
    assert world.conserved()


def test_denied_client_moves_no_money(world: World) -> None:
    mallory = ident(0x6F)
    fund(world, mallory)
    world.ledger.deny(SERVER, world.host_id, mallory.sui_address)
    with paid_server(world), pytest.raises(FirewallDenied):
        echo_blocking(world, mallory, 1024)
    assert world.ledger.balance(mallory.sui_address) == 100_000
    assert world.conserved()


# -- running out of deposit --------------------------------------------------------------------


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_deposit_runs_out_service_pauses_then_closes_with_receipts_claimed(
    world: World, api: str
) -> None:
    """A write the deposit pays (400 KiB of the ~600 KiB it covers) whose echo runs the
    deposit out: the client's reads go past it (a read is never refused: a top-up from
    another thread may yet come), its meter signs for the whole deposit, and the server
    serves up to its allowance, pauses, and closes with CLOSE_PAYMENT_REQUIRED after the
    pause timeout."""
    client = ident(0x65)
    fund(world, client)
    deposit = 6000  # covers ~600 KiB; the echo of 400 KiB takes the usage to 800 KiB
    with paid_server(world, api=api, pause_timeout=1.0):
        sock = world.connect(client, deposit)
        cid = sock.connection_id
        assert cid is not None
        received = 0
        started = time.monotonic()
        sock.sendall(os.urandom(400 << 10))
        with pytest.raises(PaymentRequired) as closed:
            while True:
                data = sock.recv(1 << 16)
                assert data, "the server must not end the stream as if all were well"
                received += len(data)
        elapsed = time.monotonic() - started
        sock.close()
        assert closed.value.code == CLOSE_PAYMENT_REQUIRED
        assert "payment required" in closed.value.reason
        assert elapsed >= 1.0  # it paused for the pause timeout first
        # served at most the deposit plus the allowance (min_deposit) of echo
        assert fee(SLA, received, 0) <= deposit + SLA.min_deposit
        world.wait_settled(cid)
    claimed = world.claimed(cid)
    assert deposit - 10 <= claimed <= deposit  # the exhausted meter paid the whole deposit
    assert world.ledger.balance(SERVER.sui_address) == claimed
    assert world.ledger.balance(client.sui_address) == 100_000 - claimed
    assert world.conserved()


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_write_the_deposit_cannot_pay_fails_at_once(world: World, api: str) -> None:
    """A client echoes 32 KiB pieces until its deposit cannot pay the next: that
    ``sendall`` raises PaymentRequired at once, the connection ended by the client (its
    final receipt, then CLOSE_PAYMENT_REQUIRED), with nothing of the refused piece sent,
    long before the server's pause timeout (30 s here) would have ended it; the server
    claims the final receipt, and the client gets the rest back."""
    client = ident(0x67)
    fund(world, client)
    deposit = 6000  # ~600 KiB of echo: nine pieces each way, not ten
    piece = os.urandom(32 << 10)
    with paid_server(world, api=api, pause_timeout=30.0):
        sock = world.connect(client, deposit)
        cid = sock.connection_id
        payment = sock.layer.hook
        assert cid is not None and payment is not None
        pieces = 0
        with pytest.raises(PaymentRequired) as closed:
            while True:
                started = time.monotonic()
                sock.sendall(piece)
                got = 0
                while got < len(piece):
                    data = sock.recv(len(piece) - got)
                    assert data
                    got += len(data)
                pieces += 1
        refused_in = time.monotonic() - started
        with pytest.raises(PaymentRequired):  # every later call, too
            sock.recv(1)
        sock.close()
        world.wait_settled(cid)
    assert closed.value.code == CLOSE_PAYMENT_REQUIRED
    assert "cannot pay for this write" in closed.value.reason
    assert refused_in < 5.0  # at once, not after the pause timeout
    used = fee(SLA, 2 * pieces * len(piece), 1)
    assert used <= deposit < fee(SLA, (2 * pieces + 1) * len(piece), 1)
    final = payment.meter.latest  # type: ignore[attr-defined]
    assert final is not None and final.total_amount == used
    assert world.claimed(cid) == used
    assert world.ledger.balance(client.sui_address) == 100_000 - used
    assert world.conserved()


# -- the server crashes ------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_server_killed_mid_stream_keeps_its_fees_and_client_is_refunded(
    world: World, api: str
) -> None:
    client = ident(0x66)
    fund(world, client)
    deposit = 50_000
    with paid_server(world, api=api) as (proc, _):
        sock = world.connect(client, deposit)
        cid = sock.connection_id
        assert cid is not None
        piece = os.urandom(32 * 1024)
        for _ in range(20):  # 640 KiB each way
            sock.sendall(piece)
            got = 0
            while got < len(piece):
                got += len(sock.recv(len(piece) - got))
        # let the last receipts land (the server's writer may be slow to fsync: wait for
        # what the store holds, not a fixed time)
        least = fee(SLA, 2 * 18 * 32 * 1024, 1)
        with ReceiptStore(world.receipts) as store:

            def landed() -> bool:
                kept = store.latest(cid)
                return kept is not None and kept.receipt.total_amount >= least

            assert wait_for(landed, 15)
        proc.kill()  # SIGKILL: no settlement, no goodbye
        proc.wait(10)
        with pytest.raises((ConnectionLost, ConnectionClosed)):
            for _ in range(100):
                sock.sendall(piece)
                sock.recv(1 << 16)
        sock.close()  # the client half-closes on the ledger
    stored = ReceiptStore(world.receipts).latest(cid)
    assert stored is not None and stored.unclaimed == stored.receipt.total_amount
    assert least <= stored.receipt.total_amount <= deposit
    with pytest.raises(ConnectionStateError) as early:
        collect_refund(world.ledger, client, cid)
    assert early.value.name == "ETimeoutNotReached"
    assert world.conserved()
    # once the timeout has passed both may settle: the client's process collector (the
    # client half-closed) races the restarted server; stopped, the server's recovery is
    # what this test sees
    refunds_for(world.ledger, client).close(log_waiting=False)
    world.ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    with paid_server(world, api=api) as (_, info):  # the restart claims what the store holds
        assert info["recovered"] == 1
        world.wait_settled(cid)
    earned = stored.receipt.total_amount
    assert world.claimed(cid) == earned
    assert world.ledger.balance(SERVER.sui_address) == earned
    assert collect_refund(world.ledger, client, cid) == deposit - earned
    assert world.ledger.balance(client.sui_address) == 100_000 - earned
    assert world.conserved()


# -- the runtime firewall ----------------------------------------------------------------------


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_deny_applies_to_an_open_connection_within_the_refresh(world: World, api: str) -> None:
    client = ident(0x67)
    fund(world, client)
    with paid_server(world, api=api, refresh=0.3):
        sock = world.connect(client)
        cid = sock.connection_id
        assert cid is not None
        sock.sendall(b"before")
        assert sock.recv(10) == b"before"
        world.ledger.deny(SERVER, world.host_id, client.sui_address)
        denied_at = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                sock.sendall(b"x")
                assert sock.recv(10) == b"x"
                time.sleep(0.02)
        assert time.monotonic() - denied_at < 3.0  # the refresh interval plus slack
        assert closed.value.code == CLOSE_FIREWALL_DENIED
        sock.close()
        world.wait_settled(cid)
    assert world.claimed(cid) <= SLA.min_deposit
    assert world.conserved()


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_rate_limit_is_back_pressure_not_drops(world: World, api: str) -> None:
    client = ident(0x68)
    fund(world, client)
    world.ledger.set_client_limits(SERVER, world.host_id, 0, 200_000, 0)  # 200 kB/s
    total = 250_000
    with paid_server(world, api=api, mode="sink"):
        with world.connect(client) as sock:
            cid = sock.connection_id
            started = time.monotonic()
            sock.sendall(os.urandom(total))
            sock.shutdown(dtp.socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(64):
                reply += chunk
            elapsed = time.monotonic() - started
        assert int(reply) == total  # every byte arrived
        # at 200 kB/s with a 50 kB burst the last byte is read after >= 1 s
        assert 0.8 <= elapsed < 5.0
        assert cid is not None
        world.wait_settled(cid)
    assert world.conserved()


# -- spending caps and vanished clients ----------------------------------------------------


def test_a_spending_cap_below_the_deposit_refuses_the_open(world: World) -> None:
    """The open reserves the whole deposit on the cap (docs/escrow.md §4): a cap below
    it refuses the open before any money moves (before: the connection opened, and was
    served only what the cap let the server claim)."""
    client = ident(0x69)
    fund(world, client)
    cap = world.ledger.create_spending_cap(client, 3000)
    with paid_server(world, pause_timeout=1.0), pytest.raises(SpendingCapExceeded):
        world.connect(client, 8000, cap_id=cap)
    assert world.ledger.balance(client.sui_address) == 100_000
    assert world.ledger.get_cap(cap).spent == 0
    assert world.ledger.events(filter=EventFilter(type="ConnectionOpened"))[0] == []
    assert world.conserved()


def test_client_that_vanishes_is_settled_by_the_server(world: World) -> None:
    client = ident(0x6A)
    fund(world, client)
    with paid_server(world):
        sock = world.connect(client)
        cid = sock.connection_id
        assert cid is not None
        piece = os.urandom(100 * 1024)
        sock.sendall(piece)
        got = 0
        while got < len(piece):
            got += len(sock.recv(1 << 16))
        # the time cadence pays for the echo once the idle connection is next polled
        expected = fee(SLA, 2 * len(piece), 1)
        store = ReceiptStore(world.receipts)
        deadline = time.monotonic() + 10
        while (kept := store.latest(cid)) is None or kept.receipt.total_amount < expected:
            assert time.monotonic() < deadline, "no receipt for the echo"
            time.sleep(0.05)
        # the client vanishes: its TCP connection drops, no CLOSE, no ledger call
        sock._engine.sock.shutdown(socket.SHUT_RDWR)
        world.wait_settled(cid)
        sock.abort()
    claimed = world.claimed(cid)
    assert claimed == expected
    assert world.ledger.balance(client.sui_address) == 100_000 - claimed
    assert world.conserved()


def test_new_rate_limits_reach_an_open_connection(world: World) -> None:
    client = ident(0x6B)
    fund(world, client)
    world.ledger.set_client_limits(SERVER, world.host_id, 0, 100_000, 0)  # 100 kB/s

    def echo_timed(sock: dtp.socket.DTPSocket, nbytes: int) -> float:
        started = time.monotonic()
        piece = os.urandom(20_000)
        for _ in range(nbytes // len(piece)):
            sock.sendall(piece)
            got = 0
            while got < len(piece):
                got += len(sock.recv(len(piece) - got))
        return time.monotonic() - started

    with paid_server(world, refresh=0.3):
        with world.connect(client, 50_000) as sock:
            # 60 kB each way = 120 kB charged at 100 kB/s, 25 kB of burst
            assert echo_timed(sock, 60_000) >= 0.6  # the last write waits after it is sent
            world.ledger.set_client_limits(SERVER, world.host_id, 0, 0, 0)  # unlimited
            time.sleep(0.8)  # more than the refresh interval
            # 10x more would take >= 12 s at the old rate
            assert echo_timed(sock, 600_000) < 3.0
            cid = sock.connection_id
        assert cid is not None
        world.wait_settled(cid)
    assert world.conserved()


# -- the server asks for receipts ----------------------------------------------------------

ON_REQUEST_ONLY = MeteringConfig(every_bytes=0, every_ms=0)  # pays only when asked or at close


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_paused_server_asks_and_the_client_pays_on_request(world: World, api: str) -> None:
    client = ident(0x6C)
    fund(world, client)
    nbytes = 1 << 20  # 2 MiB of echo = 20480 MIST, four times the allowance
    with paid_server(world, api=api, pause_timeout=5.0):
        if api == "blocking":
            with world.connect(client, 50_000, metering=ON_REQUEST_ONLY) as sock:
                cid = sock.connection_id
                payload = os.urandom(nbytes)
                for i in range(0, nbytes, 32 * 1024):
                    sock.sendall(payload[i : i + 32 * 1024])
                    got = 0
                    while got < 32 * 1024:
                        got += len(sock.recv(32 * 1024 - got))
                assert sock._engine.hook is not None
                answered = sock._engine.hook.receipts_sent
        else:

            async def run() -> tuple[str | None, int]:
                reader, writer = await dtp.aio.open_connection(
                    world.address,
                    ledger=world.ledger,
                    identity=client,
                    deposit=50_000,
                    metering=ON_REQUEST_ONLY,
                    timeout=15,
                )
                piece = os.urandom(32 * 1024)
                for _ in range(nbytes // len(piece)):
                    writer.write(piece)
                    await writer.drain()
                    assert await reader.readexactly(len(piece)) == piece
                assert writer._proto.hook is not None
                sent = writer._proto.hook.receipts_sent
                writer.close()
                await writer.wait_closed()
                return writer.connection_id, sent

            cid, answered = asyncio.run(run())
        assert cid is not None
        world.wait_settled(cid)
    assert answered >= 3  # one per pause: usage reached the allowance at least 3 times
    assert world.claimed(cid) == fee(SLA, 2 * nbytes, 1)  # the close receipt paid the rest
    assert world.conserved()


def test_unmetered_client_is_closed_and_refunded_in_full(world: World) -> None:
    client = ident(0x6D)
    fund(world, client)
    with paid_server(world, pause_timeout=0.5):
        sock = world.connect(client, 9000, metering=MeteringConfig(enabled=False))
        cid = sock.connection_id
        assert cid is not None
        piece = os.urandom(64 * 1024)
        with pytest.raises(PaymentRequired) as closed:
            for _ in range(64):
                sock.sendall(piece)
                got = 0
                while got < len(piece):
                    data = sock.recv(len(piece) - got)
                    assert data
                    got += len(data)
        sock.close()
        assert closed.value.code == CLOSE_PAYMENT_REQUIRED
        world.wait_settled(cid)
    assert world.claimed(cid) == 0  # no receipt, nothing to claim
    assert world.ledger.balance(client.sui_address) == 100_000
    assert world.ledger.balance(SERVER.sui_address) == 0
    assert world.conserved()


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_server_that_closes_first_asks_for_a_final_receipt(world: World, api: str) -> None:
    client = ident(0x6E)
    fund(world, client)
    with paid_server(world, api=api, mode="sink"):  # replies with the count and closes
        with world.connect(client, 20_000, metering=ON_REQUEST_ONLY) as sock:
            cid = sock.connection_id
            sock.sendall(os.urandom(100_000))
            sock.shutdown(dtp.socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(64):
                reply += chunk
        assert cid is not None and int(reply) == 100_000
        world.wait_settled(cid)
    # the client's own close came after the server's, too late for a receipt: the one
    # the server asked for covers everything, the reply included
    assert world.claimed(cid) == fee(SLA, 100_000 + len(reply), 1)
    assert world.conserved()


def test_a_paid_handler_that_raises_ends_the_connection_with_an_error(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    def handler(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        sock.sendall(b"half a rep")
        raise RuntimeError("the handler's bug")

    async def aio_handler(reader: PaidReader, writer: PaidWriter) -> None:
        assert await reader.readexactly(2) == b"go"
        writer.write(b"half a rep")
        await writer.drain()
        raise RuntimeError("the callback's bug")

    serve(handler, aio_handler)  # type: ignore[operator]
    with paid_connect(ledger, host_id) as sock:
        cid = sock.connection_id
        assert cid is not None
        sock.sendall(b"go")
        got = b""
        with pytest.raises(ConnectionClosed) as info:
            while True:
                data = sock.recv(1024)
                assert data, f"a clean end after {got!r}"
                got += data
        assert info.value.reason == "internal error"
        assert got == b"half a rep"
    assert wait_for(lambda: is_settled(ledger, cid), 30)
    assert conserved(ledger)
