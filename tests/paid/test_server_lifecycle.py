"""What a paid server (blocking and asyncio) holds, and lets go of: the receipt writer's
thread and the receipt store's files after close() and after a failed start, with the
receipts it had still durable; and the arguments it refuses before anything starts."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import InvalidArgument, ReceiptStoreError, ServiceNotFound
from dtp.hostid.paid import PaidServer, PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, fee
from tests.paid.servers import PORT, SERVER, SLA, hosted_world
from tests.paid.servers import World as ServiceWorld
from tests.support.leaks import resource_warnings
from tests.support.paid_twins import ident
from tests.support.scopes import scope_of
from tests.support.settlements import is_settled

CID = "0x" + "ab" * 32
CLIENT = ident(0x62)


class World(ServiceWorld):
    """:class:`tests.paid.servers.World` (SERVER's echo service on PORT), read for the
    endpoints its Host publishes."""

    def endpoints(self) -> list[bytes]:
        return [bytes(e) for e in self.ledger.get_host(self.host_id).endpoints]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_world(tmp_path) as made:
        yield World(made.tmp, made.ledger, made.host_id)


def dtp_threads() -> list[str]:
    # not dtp-timers: one thread for the whole process, started by the first connection;
    # not dtp-refunds: the process's client-side refund collectors, which earlier tests'
    # clients start and end whenever their refunds fall due (no server makes one)
    return sorted(
        t.name
        for t in threading.enumerate()
        if t.name.startswith("dtp") and t.name not in ("dtp-timers", "dtp-refunds")
    )


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def loop_fds() -> set[str]:
    """:func:`open_fds` once the running loop has made what it keeps for its life from
    its first server on: uvloop's (libuv's) spare descriptor on /dev/null, its answer to
    EMFILE, opened at a loop's first listen and closed with the loop, not a server's."""
    warm = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    warm.close()
    await warm.wait_closed()
    return open_fds()


def assert_back_to(threads: list[str], fds: set[str], timeout: float = 10.0) -> None:
    """The DTP threads and the open files are those of before, within ``timeout`` (a
    closed server's idle handshake threads end on their own, a moment later)."""
    deadline = time.monotonic() + timeout

    def new_threads() -> Counter[str]:
        # (threads of before may end meanwhile: an earlier test's refund collector
        # finishing its wait; none may be added)
        return Counter(dtp_threads()) - Counter(threads)

    while (new_threads() or open_fds() - fds) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not new_threads(), new_threads()
    assert open_fds() - fds == set()


def a_receipt(nonce: int, total_bytes: int = 4096) -> Receipt:
    return Receipt(scope_of(CID), total_bytes, 1, fee(SLA, total_bytes, 1), nonce).sign(CLIENT)


def echo(sock: PaidSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


async def echo_aio(reader: PaidReader, writer: PaidWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


def serve_blocking(world: World, **kw: object) -> PaidServer:
    return dtp.socket.serve(
        world.host_id,
        kw.pop("port", PORT),  # type: ignore[arg-type]
        echo,
        ledger=world.ledger,
        identity=SERVER,
        **kw,  # type: ignore[arg-type]
    )


# -- the receipt writer ----------------------------------------------------------------------


def test_receipt_writer_close_writes_what_waits_then_ends_its_thread(tmp_path: Path) -> None:
    # (its own thread: another test's server, left open by that test's failure, may
    # still run one)
    before = set(threading.enumerate())
    with ReceiptStore(tmp_path / "r.db") as store:
        writer = ReceiptWriter(store)
        written: list[Receipt] = []
        writer.submit(a_receipt(1), written.append)
        writer.mark_claimed(CID, 10)  # a mark alone would wait MARK_DELAY for company
        writer.submit(a_receipt(2, 8192), written.append)
        assert writer.close(timeout=10.0) is True
        assert not any(t.name == "dtp-receipts" for t in set(threading.enumerate()) - before)
        with pytest.raises(RuntimeError):
            writer.submit(a_receipt(3), written.append)
    assert written and written[-1].nonce == 2
    with ReceiptStore(tmp_path / "r.db") as again:
        kept = again.latest(CID)
        assert kept is not None and kept.receipt.nonce == 2 and kept.claimed_amount == 10


# -- close() -----------------------------------------------------------------------------------


def test_blocking_close_ends_the_writer_and_closes_the_store_it_opened(world: World) -> None:
    threads, fds = dtp_threads(), open_fds()
    server = serve_blocking(world, receipts=world.receipts)
    assert "dtp-receipts" in dtp_threads()
    # a receipt on its way to the disk as the server closes is written, not lost
    server.receipt_writer.submit(a_receipt(1), lambda r: None)
    server.close()
    assert_back_to(threads, fds)
    with pytest.raises(ReceiptStoreError, match="it is closed"):  # it was the server's own
        server.store.latest(CID)
    with ReceiptStore(world.receipts) as store:
        kept = store.latest(CID)
        assert kept is not None and kept.receipt == a_receipt(1)
    server.close()  # again: nothing left to do


def test_blocking_close_leaves_a_store_passed_in_open(world: World) -> None:
    threads = dtp_threads()
    with ReceiptStore(world.receipts) as store:
        fds = open_fds()
        with serve_blocking(world, receipts=store) as server:
            server.receipt_writer.submit(a_receipt(1), lambda r: None)
        assert_back_to(threads, fds)
        kept = store.latest(CID)  # still open: the caller's
        assert kept is not None and kept.receipt == a_receipt(1)


def test_asyncio_close_ends_the_writer_and_closes_the_store_it_opened(world: World) -> None:
    async def main() -> None:
        threads, fds = dtp_threads(), await loop_fds()
        for i in range(3):
            server = await dtp.aio.serve(
                world.host_id,
                PORT,
                echo_aio,
                ledger=world.ledger,
                identity=SERVER,
                receipts=world.tmp / f"r{i}.db",
            )
            server.receipt_writer.submit(a_receipt(i + 1), lambda r: None)
            server.close()
            await server.wait_closed()
        assert_back_to(threads, fds)
        for i in range(3):
            with ReceiptStore(world.tmp / f"r{i}.db") as store:
                kept = store.latest(CID)
                assert kept is not None and kept.receipt == a_receipt(i + 1)
        with ReceiptStore(world.receipts) as store:
            fds = open_fds()
            async with await dtp.aio.serve(
                world.host_id, PORT, echo_aio, ledger=world.ledger, identity=SERVER, receipts=store
            ):
                pass
            assert_back_to(threads, fds)
            assert store.latest(CID) is None  # still open: the caller's

    asyncio.run(main())


def test_a_connection_open_at_close_settles_then_the_writer_ends(world: World) -> None:
    """close() leaves open connections to finish: the writer and the store stay until
    the last one has settled (its final receipt may need writing), then go."""
    world.ledger.faucet(CLIENT.sui_address, 100_000)
    threads, fds = dtp_threads(), open_fds()
    server = serve_blocking(world, receipts=world.receipts)
    with world.connect(CLIENT, metering=None) as sock:
        sock.sendall(b"x" * 100)
        assert sock.recv(100) == b"x" * 100
        server.close()
        assert "dtp-receipts" in dtp_threads()
        sock.sendall(b"y" * 100)  # still served
        assert sock.recv(100) == b"y" * 100
        cid = sock.connection_id
        assert cid is not None
    assert_back_to(threads, fds)
    assert is_settled(world.ledger, cid)
    assert [c for c, _ in server.settlements] == [cid]


def test_asyncio_connection_open_at_close_settles_then_the_writer_ends(world: World) -> None:
    world.ledger.faucet(CLIENT.sui_address, 100_000)

    async def main() -> None:
        threads, fds = dtp_threads(), await loop_fds()
        server = await dtp.aio.serve(
            world.host_id,
            PORT,
            echo_aio,
            ledger=world.ledger,
            identity=SERVER,
            receipts=world.receipts,
        )
        reader, writer = await dtp.aio.open_connection(
            f"dtp://{world.host_id}:{PORT}", ledger=world.ledger, identity=CLIENT, timeout=10
        )
        writer.write(b"x" * 100)
        await writer.drain()
        assert await reader.readexactly(100) == b"x" * 100
        server.close()
        await server.wait_closed()
        assert "dtp-receipts" in dtp_threads()
        writer.write(b"y" * 100)  # still served
        await writer.drain()
        assert await reader.readexactly(100) == b"y" * 100
        writer.close()
        await writer.wait_closed()
        cid = writer.connection_id
        assert cid is not None
        deadline = time.monotonic() + 10
        while "dtp-receipts" in dtp_threads() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the server's side settles on this loop
        assert_back_to(threads, fds)
        assert is_settled(world.ledger, cid)
        assert [c for c, _ in server.settlements] == [cid]

    asyncio.run(main())


# -- failed starts -----------------------------------------------------------------------------


def test_blocking_failed_start_leaves_nothing_behind(world: World) -> None:
    threads, fds = dtp_threads(), open_fds()
    with pytest.raises(ServiceNotFound):
        serve_blocking(world, port=PORT + 1, receipts=world.receipts)
    assert_back_to(threads, fds)
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        fds = open_fds()
        with pytest.raises(OSError):
            serve_blocking(world, receipts=world.receipts, address=busy.getsockname())
        assert_back_to(threads, fds)
    finally:
        busy.close()
    assert world.endpoints() == []


def test_asyncio_failed_start_leaves_nothing_behind(world: World) -> None:
    async def main() -> None:
        threads, fds = dtp_threads(), await loop_fds()
        with pytest.raises(ServiceNotFound):
            await dtp.aio.serve(
                world.host_id,
                PORT + 1,
                echo_aio,
                ledger=world.ledger,
                identity=SERVER,
                receipts=world.receipts,
            )
        assert_back_to(threads, fds)
        busy = socket.socket()
        try:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            fds = open_fds()
            with pytest.raises(OSError):
                await dtp.aio.serve(
                    world.host_id,
                    PORT,
                    echo_aio,
                    ledger=world.ledger,
                    identity=SERVER,
                    receipts=world.receipts,
                    address=busy.getsockname(),
                )
            assert_back_to(threads, fds)
        finally:
            busy.close()

    asyncio.run(main())
    assert world.endpoints() == []


# -- arguments refused up front -----------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"refresh_interval": 0},
        {"refresh_interval": -1.0},
        {"refresh_interval": math.nan},
        {"refresh_interval": math.inf},
        {"refresh_interval": 1e300},
        {"request_interval": 0.0},
        {"request_interval": "0.2"},
        {"pause_timeout": -0.5},
        {"pause_timeout": math.nan},
        {"pause_timeout": True},
        {"final_receipt_timeout": -1},
        {"allowance": -1},
        {"allowance": 2**64},
        {"allowance": 10.5},
        {"allowance": True},
    ],
)
def test_service_policy_refuses_bad_values(values: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        ServicePolicy(**values)  # type: ignore[arg-type]
    assert isinstance(refused.value, ValueError)  # what HostPolicy raised before
    assert next(iter(values)) in str(refused.value)


def test_service_policy_takes_edge_values() -> None:
    policy = ServicePolicy(
        allowance=0, pause_timeout=0, final_receipt_timeout=0, refresh_interval=0.01
    )
    assert policy.allowance == 0 and policy.refresh_interval == 0.01


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_bad_policy_or_address_starts_nothing(world: World, api: str) -> None:
    """Refused before the server listens or publishes anything (a zero refresh interval
    too): no server is left running."""
    threads, fds = dtp_threads(), open_fds()

    def start(**kw: object) -> None:
        if api == "blocking":
            serve_blocking(world, receipts=world.receipts, **kw)
        else:
            asyncio.run(
                dtp.aio.serve(
                    world.host_id,
                    PORT,
                    echo_aio,
                    ledger=world.ledger,
                    identity=SERVER,
                    receipts=world.receipts,
                    **kw,  # type: ignore[arg-type]
                )
            )

    def attempts() -> None:
        with pytest.raises(InvalidArgument):
            start(policy=ServicePolicy(refresh_interval=0))
        with pytest.raises(TypeError, match="address must be a"):
            start(address="127.0.0.1:0")
        with pytest.raises(TypeError, match="endpoint must be a"):
            start(endpoint=["127.0.0.1", 7000])
        with pytest.raises(InvalidArgument, match="65535"):
            start(address=("127.0.0.1", 70000))

    assert resource_warnings(attempts) == []
    assert_back_to(threads, fds)
    assert world.endpoints() == []
    assert not world.receipts.exists()


# -- the paying client's arguments ------------------------------------------------------------


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_paying_clients_bad_deposit_or_identity_is_a_typed_error(world: World, api: str) -> None:
    """Refused before any ledger write, with the ledger's own error for a bad amount (a
    plain ValueError before) and a TypeError naming HostIdentity for a key that is not
    one (an AttributeError before)."""
    world.ledger.faucet(CLIENT.sui_address, 100_000)
    address = f"dtp://{world.host_id}:{PORT}"

    def connect(**kw: object) -> None:
        args: dict[str, object] = {"ledger": world.ledger, "identity": CLIENT, "timeout": 5}
        args.update(kw)
        if api == "blocking":
            dtp.socket.create_connection(address, **args).close()  # type: ignore[arg-type]
        else:

            async def main() -> None:
                _, writer = await dtp.aio.open_connection(address, **args)  # type: ignore[arg-type]
                writer.close()
                await writer.wait_closed()

            asyncio.run(main())

    with serve_blocking(world):
        for deposit in ("6000", -1, True, 6000.5, 2**64):
            with pytest.raises(InvalidArgument, match="deposit"):
                connect(deposit=deposit)
        with pytest.raises(TypeError, match="HostIdentity"):
            connect(identity="0x1")
    assert world.ledger.balance(CLIENT.sui_address) == 100_000  # no money moved
