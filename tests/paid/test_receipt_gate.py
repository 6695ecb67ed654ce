"""The receipt gate holds for every call of a paid stream that moves data (docs/escrow.md
§6.1: "before every read and write ... above [the allowance], the connection pauses"),
blocking and asyncio: makefile, send_recv, one big sendall, write / writelines without
or with drain, read to EOF, readexactly. A client that pays nothing (metering off) gets
no more than the allowance's worth -- the last call may take one byte past it, and an
upload may fill the flow-control window the server gave before it paused -- and is then
closed with CLOSE_PAYMENT_REQUIRED; a paying client gets everything. Real LocalLedger
files, real DTP connections on 127.0.0.1, servers in this process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError, PaymentRequired
from dtp.hostid.paid import PaidServer, PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import fee
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7000
ALLOWANCE = 100  # MIST on credit: 9.5 KiB of stream bytes after the first request
STINGY = ServicePolicy(allowance=ALLOWANCE, pause_timeout=1.0)
GENEROUS = ServicePolicy(pause_timeout=5.0)  # the SLA's min_deposit: 5000 MIST
BIG = 4 << 20
UNPAID = MeteringConfig(enabled=False)


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x71), ident(0x72)


@dataclass
class World:
    ledger: LocalLedger
    host_id: str
    receipts: Path

    @property
    def address(self) -> str:
        return f"dtp://{self.host_id}:{PORT}"

    def claimed(self, cid: str) -> int:
        return settled_escrow(self.ledger, cid).claimed


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "gate", SLA)
    ledger.faucet(CLIENT.sui_address, 10_000_000)
    try:
        yield World(ledger, host_id, tmp_path / "receipts.db")
    finally:
        ledger.close()


def within_allowance(nbytes: int) -> bool:
    """Whether the fee of ``nbytes`` and the first request is within the allowance, but
    for the one byte the last call may take past it (1 MIST at most)."""
    return fee(SLA, nbytes, 1) <= ALLOWANCE + 1


# -- blocking --------------------------------------------------------------------------------


def serve_blocking(
    world: World, handler: Callable[[PaidSocket], None], policy: ServicePolicy
) -> PaidServer:
    return dtp.socket.serve(
        world.host_id,
        PORT,
        handler,
        ledger=world.ledger,
        identity=SERVER,
        receipts=world.receipts,
        policy=policy,
    )


def download(world: World, *, paying: bool, expect: int = BIG) -> tuple[int, DTPError | None]:
    """Connect, say go, read what comes (up to ``expect``): (bytes, the error if any)."""
    with dtp.socket.create_connection(
        world.address,
        timeout=20,
        ledger=world.ledger,
        identity=CLIENT,
        deposit=1_000_000 if paying else SLA.min_deposit,
        metering=None if paying else UNPAID,
    ) as sock:
        sock.sendall(b"go")
        got = 0
        try:
            while got < expect:
                data = sock.recv(1 << 16)
                if not data:
                    break
                got += len(data)
        except DTPError as exc:
            return got, exc
        return got, None


def writes_big(how: str) -> Callable[[PaidSocket], None]:
    payload = os.urandom(BIG)

    def handler(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        if how == "makefile":
            with sock.makefile("wb") as f:
                f.write(payload)
        elif how == "makefile-unbuffered":
            f = sock.makefile("wb", buffering=0)
            f.write(payload)
        elif how == "makefile-text":
            with sock.makefile("w", encoding="latin-1") as text:
                text.write(payload.decode("latin-1"))
        else:
            sock.sendall(payload)
        sock.recv(1)  # until the client closes

    return handler


@pytest.mark.parametrize("how", ["sendall", "makefile", "makefile-unbuffered", "makefile-text"])
def test_blocking_big_write_stops_at_the_allowance_for_a_client_that_pays_nothing(
    world: World, how: str
) -> None:
    # sendall sent 256 KiB slices whatever the credit left (24x the allowance); the file
    # of makefile() was the unwrapped socket's: all 4 MiB, nothing claimed
    with serve_blocking(world, writes_big(how), STINGY):
        got, error = download(world, paying=False)
    assert within_allowance(got), got
    assert got > 9 * 1024  # the allowance itself is served
    assert isinstance(error, PaymentRequired)


@pytest.mark.parametrize("how", ["sendall", "makefile"])
def test_blocking_big_write_reaches_a_paying_client_whole(world: World, how: str) -> None:
    with serve_blocking(world, writes_big(how), GENEROUS):
        got, error = download(world, paying=True)
    assert (got, error) == (BIG, None)


def test_blocking_makefile_reads_through_the_gate(world: World) -> None:
    # the client uploads far more than the allowance; the handler reads with a file
    results: queue.Queue[object] = queue.Queue()

    def handler(sock: PaidSocket) -> None:
        total = 0
        try:
            with sock.makefile("rb") as f:
                while data := f.read(1 << 16):
                    total += len(data)
        except PaymentRequired as exc:
            results.put(exc)
        results.put(total)

    with serve_blocking(world, handler, STINGY):
        with (
            dtp.socket.create_connection(
                world.address,
                timeout=20,
                ledger=world.ledger,
                identity=CLIENT,
                deposit=SLA.min_deposit,
                metering=UNPAID,
            ) as sock,
            pytest.raises(DTPError),
        ):
            sock.sendall(os.urandom(4 * BIG))
            sock.shutdown(dtp.socket.SHUT_WR)
            sock.recv(1)
        first = results.get(timeout=20)
        total = results.get(timeout=20)
    assert isinstance(first, PaymentRequired)
    assert isinstance(total, int) and within_allowance(total), total


def test_blocking_send_recv_and_unknown_attributes_do_not_pass_the_gate(world: World) -> None:
    results: queue.Queue[object] = queue.Queue()

    def handler(sock: PaidSocket) -> None:
        try:
            # the socket's one-call exchange skipped the gate: a paid stream has none,
            # and says so as the contract allows (None, nothing sent)
            results.put(sock.send_recv(b"unpaid" * 1000, 1 << 16))
            for name in ("set_sink", "_engine", "no_such_thing"):
                try:
                    getattr(sock, name)
                except AttributeError:
                    results.put(name)
            # what moves no data is the socket's
            sock.settimeout(7.0)
            results.put(sock.gettimeout())
            results.put(sock.peer_connection_id)
            assert sock.recv(2) == b"go"
            sock.sendall(b"ok")
        except Exception as exc:  # pragma: no cover - reported to the test
            results.put(exc)

    with serve_blocking(world, handler, GENEROUS):
        with dtp.socket.create_connection(
            world.address, timeout=20, ledger=world.ledger, identity=CLIENT, deposit=100_000
        ) as sock:
            cid = sock.connection_id
            sock.sendall(b"go")
            assert sock.recv(2) == b"ok"  # nothing of the exchange came first
        seen = [results.get(timeout=20) for _ in range(6)]
    assert seen == [None, "set_sink", "_engine", "no_such_thing", 7.0, cid]


def test_blocking_datagrams_wait_for_payment_too(world: World) -> None:
    results: queue.Queue[object] = queue.Queue()
    payload = os.urandom(64 << 10)

    def handler(sock: PaidSocket) -> None:
        try:
            sent = sock.send(payload)  # all the credit: the allowance's worth
            sent += sock.send(payload)  # the byte the gate still lets past
            results.put(sent)
            sock.send_datagram(b"unpaid")  # paused: no datagram either
            results.put("sent")
        except PaymentRequired as exc:
            results.put(exc)

    with (
        serve_blocking(world, handler, STINGY),
        dtp.socket.create_connection(
            world.address,
            timeout=20,
            ledger=world.ledger,
            identity=CLIENT,
            deposit=SLA.min_deposit,
            metering=UNPAID,
        ) as sock,
    ):
        sent = results.get(timeout=20)
        outcome = results.get(timeout=20)
        with pytest.raises(DTPError):
            while True:
                sock.recv_datagram(timeout=0.2)
    assert isinstance(sent, int) and within_allowance(sent) and not within_allowance(sent + 1024)
    assert isinstance(outcome, PaymentRequired)


# -- asyncio -------------------------------------------------------------------------------


AioHandler = Callable[[PaidReader, PaidWriter], Awaitable[None]]


async def serve_aio(world: World, handler: AioHandler, policy: ServicePolicy) -> object:
    return await dtp.aio.serve(
        world.host_id,
        PORT,
        handler,
        ledger=world.ledger,
        identity=SERVER,
        receipts=world.receipts,
        policy=policy,
    )


async def download_aio(world: World, *, paying: bool) -> tuple[int, DTPError | None]:
    reader, writer = await dtp.aio.open_connection(
        world.address,
        timeout=20,
        ledger=world.ledger,
        identity=CLIENT,
        deposit=1_000_000 if paying else SLA.min_deposit,
        metering=None if paying else UNPAID,
    )
    writer.write(b"go")
    await writer.drain()
    got = 0
    error: DTPError | None = None
    try:
        while got < BIG:
            data = await reader.read(1 << 16)
            if not data:
                break
            got += len(data)
    except DTPError as exc:
        error = exc
    writer.close()
    with contextlib.suppress(DTPError):  # (the server closed it, when it did)
        await writer.wait_closed()
    return got, error


def aio_writes_big(how: str) -> AioHandler:
    payload = os.urandom(BIG)

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        assert await reader.readexactly(2) == b"go"
        if how == "writelines":
            writer.writelines([payload[: BIG // 2], payload[BIG // 2 :]])
        elif how == "small-writes":
            for i in range(0, BIG, 1 << 16):
                writer.write(payload[i : i + (1 << 16)])
        else:
            writer.write(payload)
        if how == "close":
            # what is held goes out before the connection closes (as a transport's)
            writer.close()
            await writer.wait_closed()
            return
        if how != "no-drain":
            await writer.drain()
        await reader.read(1)  # until the client closes

    return handler


def run_aio(
    world: World, handler: AioHandler, policy: ServicePolicy, paying: bool
) -> tuple[int, DTPError | None]:
    async def main() -> tuple[int, DTPError | None]:
        server = await serve_aio(world, handler, policy)
        try:
            return await download_aio(world, paying=paying)
        finally:
            server.close()  # type: ignore[attr-defined]
            await server.wait_closed()  # type: ignore[attr-defined]

    return asyncio.run(main())


@pytest.mark.parametrize("how", ["write", "writelines", "small-writes", "no-drain", "close"])
def test_asyncio_big_write_stops_at_the_allowance_for_a_client_that_pays_nothing(
    world: World, how: str
) -> None:
    # write() went to the wire at once and drain() looked at the gate only afterwards;
    # writelines reached the unwrapped writer: all 4 MiB, nothing claimed
    got, error = run_aio(world, aio_writes_big(how), STINGY, paying=False)
    assert within_allowance(got), got
    assert got > 9 * 1024
    assert isinstance(error, PaymentRequired)


@pytest.mark.parametrize("how", ["write", "writelines", "small-writes", "no-drain", "close"])
def test_asyncio_big_write_reaches_a_paying_client_whole(world: World, how: str) -> None:
    got, error = run_aio(world, aio_writes_big(how), GENEROUS, paying=True)
    assert (got, error) == (BIG, None)


def upload_aio(world: World, handler: AioHandler, policy: ServicePolicy, paying: bool) -> object:
    """Once the handler answered "go" with "ok" (so that it reads with all its credit),
    the client uploads 4 x 4 MiB and half-closes; what came back, or the handler's
    error."""

    async def main() -> object:
        seen: asyncio.Queue[object] = asyncio.Queue()

        async def wrapped(reader: PaidReader, writer: PaidWriter) -> None:
            try:
                assert await reader.readexactly(2) == b"go"
                writer.write(b"ok")
                await writer.drain()
                await handler(reader, writer)
            except BaseException as exc:
                seen.put_nowait(exc)
                raise

        server = await serve_aio(world, wrapped, policy)
        try:
            reader, writer = await dtp.aio.open_connection(
                world.address,
                timeout=20,
                ledger=world.ledger,
                identity=CLIENT,
                deposit=1_000_000 if paying else SLA.min_deposit,
                metering=None if paying else UNPAID,
            )
            writer.write(b"go")
            assert await reader.readexactly(2) == b"ok"
            with contextlib.suppress(DTPError):
                for _ in range(4):
                    writer.write(os.urandom(BIG))
                    await writer.drain()
                writer.write_eof()
                result = await reader.read()
                seen.put_nowait(result)
            writer.close()
            with contextlib.suppress(DTPError):
                await writer.wait_closed()
            return await asyncio.wait_for(seen.get(), 20)
        finally:
            server.close()  # type: ignore[attr-defined]
            await server.wait_closed()  # type: ignore[attr-defined]

    return asyncio.run(main())


@pytest.mark.parametrize("how", ["read", "readexactly"])
def test_asyncio_read_to_eof_is_gated_per_chunk(world: World, how: str) -> None:
    # reader.read() (and readexactly) looked at the gate once, then took the whole
    # upload: the read returned 16 MiB to a client that paid nothing
    taken: list[int] = []

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        if how == "read":
            data = await reader.read()
        else:
            data = await reader.readexactly(4 * BIG)
        taken.append(len(data))
        writer.write(str(len(data)).encode())
        await writer.drain()

    outcome = upload_aio(world, handler, STINGY, paying=False)
    assert isinstance(outcome, PaymentRequired), outcome
    assert taken == []  # the read itself paused, and ended with the connection
    outcome = upload_aio(world, handler, GENEROUS, paying=True)
    assert outcome == str(4 * BIG).encode()
    assert taken == [4 * BIG]


def test_asyncio_unknown_attributes_and_push_delivery_are_refused(world: World) -> None:
    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        refused = []
        for obj, name in ((reader, "set_sink"), (writer, "set_datagram_sink"), (writer, "_proto")):
            try:
                getattr(obj, name)
            except AttributeError:
                refused.append(name)
        lines = [line async for line in reader]
        # what moves no data is forwarded, datagram room included
        assert writer.max_datagram_size > 1000
        writer.write(repr((refused, lines, writer.get_extra_info("stream_id"))).encode())
        await writer.drain()

    async def main() -> bytes:
        server = await serve_aio(world, handler, GENEROUS)
        try:
            reader, writer = await dtp.aio.open_connection(
                world.address, timeout=20, ledger=world.ledger, identity=CLIENT, deposit=100_000
            )
            writer.write(b"a\nb\n")
            writer.write_eof()
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            return answer
        finally:
            server.close()
            await server.wait_closed()

    answer = asyncio.run(main())
    assert (
        answer == repr((["set_sink", "set_datagram_sink", "_proto"], [b"a\n", b"b\n"], 0)).encode()
    )


def test_asyncio_loop_ending_during_a_settlement_leaves_the_store_to_it(world: World) -> None:
    # Found while testing the above: when asyncio.run ends the loop as a connection
    # settles, the server's task is cancelled but the settlement thread goes on; the
    # store and the receipt writer were closed under it (once a segfault in SQLite; here
    # the claim's mark in the store is lost). The settlement is held up in the ledger's
    # write lock (another SQLite connection), after it read the store.
    held = threading.Event()
    let_go = threading.Event()

    def hold_ledger() -> None:
        db = sqlite3.connect(world.ledger.path, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            held.set()
            let_go.wait(20)
            time.sleep(0.5)  # the loop ends meanwhile
            db.execute("ROLLBACK")
        finally:
            db.close()

    async def echo(reader: PaidReader, writer: PaidWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()

    async def main() -> str:
        server = await serve_aio(world, echo, GENEROUS)
        reader, writer = await dtp.aio.open_connection(
            world.address, timeout=20, ledger=world.ledger, identity=CLIENT, deposit=100_000
        )
        cid = writer.connection_id
        assert cid is not None
        piece = os.urandom(64 << 10)
        store = ReceiptStore(world.receipts)
        try:
            # past the client's cadence (a quarter of min_deposit's worth), so that the
            # server stores a receipt
            for _ in range(4):
                writer.write(piece)
                await writer.drain()
                assert await reader.readexactly(len(piece)) == piece
            for _ in range(200):
                if store.latest(cid) is not None:
                    break
                await asyncio.sleep(0.05)
            assert store.latest(cid) is not None
        finally:
            store.close()
        holder.start()
        assert await asyncio.to_thread(held.wait, 20)
        writer.close()  # the server settles, and waits in the lock
        await asyncio.sleep(0.5)
        server.close()  # type: ignore[attr-defined]
        let_go.set()
        return cid  # the loop ends: its tasks are cancelled

    holder = threading.Thread(target=hold_ledger)
    cid = asyncio.run(main())
    holder.join(20)
    assert is_settled(world.ledger, cid)
    with ReceiptStore(world.receipts) as store:
        kept = store.latest(cid)
    assert kept is not None and kept.unclaimed == 0, kept
