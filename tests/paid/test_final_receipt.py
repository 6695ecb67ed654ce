"""Paid serving (dtp.hostid.paid._aio, dtp.hostid.paid) at a connection's end: a callback
that closes the connection itself still asks for the final receipt; an asyncio datagram sender
learns that the client left; the loop's end still settles a connection in its end
phase; the canonical echo's close() + wait_closed() after the client's close does not
wait for the settlement; wait_released() from the callback raises; close() does not
wait for the receipt store on the loop; a paid stream can be reset; a wrong identity is
refused before anything starts. The handler's close and the stream reset are rules of
both servers and run over the ``driver`` fixture (a blocking client); the other tests are
about asyncio's own loop, tasks and callbacks. Real LocalLedger, real connections."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError, LocalProtocolError, StreamReset
from dtp.hostid.paid import ServicePolicy
from dtp.ledger._objects import ConnectionState
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import fee
from tests.paid.conftest import Driver
from tests.paid.world import PORT, SERVER, SLA, World

REPLY = 30_000


# -- 1. the callback closes the connection: the final receipt is asked for ------------


def _replies_and_closes(done: threading.Event) -> tuple[Any, Any]:
    """The handlers (blocking, asyncio): read 5 bytes, reply REPLY bytes and close the
    connection themselves (asyncio's usual end of a reply: close() and wait_closed());
    ``done`` set when the handler returns."""

    def blocking(sock: Any) -> None:
        try:
            data = b""
            while len(data) < 5:
                data += sock.recv(5 - len(data))
            sock.sendall(b"r" * REPLY)
            sock.close()
        finally:
            done.set()

    async def aio(reader: Any, writer: Any) -> None:
        try:
            await reader.readexactly(5)
            writer.write(b"r" * REPLY)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        finally:
            done.set()

    return blocking, aio


def test_a_handler_that_closes_asks_for_the_final_receipt(tmp_path: Path, driver: Driver) -> None:
    w = World(tmp_path)
    done = threading.Event()
    try:
        with driver.serve(
            w.host_id,
            PORT,
            _replies_and_closes(done),
            ledger=w.book,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=ServicePolicy(allowance=1_000_000),
        ) as server:
            sock = w.connect_blocking()
            cid = sock.connection_id
            sock.sendall(b"hello")
            # read to the end: the client answers the server's request for a receipt as
            # it reads (a blocking client that stopped calling would answer only at its
            # own close, too late)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
            assert len(got) == REPLY
            assert done.wait(30)
            usage = sock._engine.conn.usage
            sock.close()
            driver.close(server)
            assert driver.wait_released(server, 30)
        owed = fee(SLA, *usage)
        assert owed > 0
        assert w.claimed(cid) == owed
    finally:
        w.close()


# -- 2. an asyncio sender of datagrams alone learns that the client left ---------------


def test_aio_datagram_sender_ends_when_the_client_left(tmp_path: Path) -> None:
    w = World(tmp_path)
    out: dict[str, Any] = {}

    async def main() -> None:
        ended = asyncio.Event()

        async def callback(reader: Any, writer: Any) -> None:
            try:
                await reader.readexactly(2)
                while True:
                    writer.send_datagram(b"d" * 1000)
                    await asyncio.sleep(0.005)
            except DTPError as exc:
                out["raised"] = exc
                raise
            finally:
                ended.set()

        # allowance 300 MIST: some 30 KB of datagrams on credit, then the gate pauses
        # (the client does not meter) and every datagram is dropped
        server = await w.serve(callback, ServicePolicy(allowance=300))
        _, writer = await w.connect(metering=MeteringConfig(enabled=False))
        out["cid"] = writer.connection_id
        writer.write(b"go")
        await writer.drain()
        for _ in range(10):
            await asyncio.wait_for(writer.recv_datagram(), 20)
        await asyncio.sleep(1.0)  # the credit runs out
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(ended.wait(), 30)
        server.close()
        assert await server.wait_released(30)

    try:
        asyncio.run(main())
        assert isinstance(out.get("raised"), DTPError)
        assert w.book.get_connection(out["cid"]).settled
    finally:
        w.close()


# -- 3. the loop's end in the end phase still settles ----------------------------------


def test_loop_end_in_the_end_phase_settles(tmp_path: Path) -> None:
    w = World(tmp_path)
    started = threading.Event()
    out: dict[str, Any] = {}

    async def server_main() -> None:
        loop = asyncio.get_running_loop()
        returned = asyncio.Event()

        async def callback(reader: Any, writer: Any) -> None:
            await reader.readexactly(5)
            writer.write(b"hello")
            await writer.drain()
            loop.call_soon(returned.set)

        # the client does not meter: the server waits the whole final_receipt_timeout
        # for a final receipt that never comes, and the loop ends meanwhile
        await w.serve(callback, ServicePolicy(final_receipt_timeout=30))
        started.set()
        await returned.wait()
        await asyncio.sleep(0.5)
        # returns with the server open: asyncio.run cancels its tasks

    thread = threading.Thread(target=lambda: asyncio.run(server_main()))
    thread.start()
    try:
        assert started.wait(30)

        async def client() -> None:
            reader, writer = await w.connect(metering=MeteringConfig(enabled=False))
            out["cid"] = writer.connection_id
            writer.write(b"12345")
            await writer.drain()
            assert await reader.readexactly(5) == b"hello"
            await asyncio.to_thread(thread.join, 60)  # open until the server's loop ended
            writer.close()
            # (how the server's end looked to the client does not matter here)
            with contextlib.suppress(DTPError):
                await writer.wait_closed()

        asyncio.run(client())
        assert not thread.is_alive()
        assert w.book.get_connection(out["cid"]).settled
    finally:
        thread.join(60)
        w.close()


# -- 4. the echo's close() + wait_closed() after the client's close ----------------------


def test_echo_wait_closed_after_client_close_settles_first(tmp_path: Path) -> None:
    w = World(tmp_path)
    out: dict[str, Any] = {}

    async def main() -> None:
        async def callback(reader: Any, writer: Any) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
            out["callback_returned"] = True

        server = await w.serve(callback)
        reader, writer = await w.connect()
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 20) == b"ping"
        payment = writer._proto.hook
        finish = payment.finish

        def looked() -> None:
            # what the client finds on the ledger after its close: settled by the
            # server (Closed), not Open (it gave up waiting and half-closes itself)
            out["found"] = w.book.connection_state(payment.connection_id)
            finish()

        payment.finish = looked
        writer.close()
        await writer.wait_closed()
        server.close()
        assert await server.wait_released(30)

    try:
        asyncio.run(main())
        assert out.get("callback_returned")
        assert "found" in out
        assert out["found"] != ConnectionState.OPEN
    finally:
        w.close()


# -- 5. wait_released() in the callback -------------------------------------------------


def test_aio_wait_released_in_the_callback_raises(tmp_path: Path) -> None:
    w = World(tmp_path)
    seen: dict[str, Any] = {}

    async def main() -> None:
        box: dict[str, Any] = {}

        async def callback(reader: Any, writer: Any) -> None:
            await reader.readexactly(8)
            server = box["server"]
            server.close()
            try:
                seen["result"] = await asyncio.wait_for(server.wait_released(), 10)
            except LocalProtocolError:
                seen["result"] = "LocalProtocolError"
            except TimeoutError:
                seen["result"] = "hung"
            writer.write(b"bye")
            await writer.drain()

        server = await w.serve(callback)
        box["server"] = server
        reader, writer = await w.connect()
        writer.write(b"shutdown")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(3), 30) == b"bye"
        writer.close()
        await writer.wait_closed()
        assert await server.wait_released(30)  # (from outside the callback: fine)

    try:
        asyncio.run(main())
    finally:
        w.close()
    assert seen["result"] == "LocalProtocolError"


def test_aio_an_admin_stop_task_the_callback_started_may_wait_released(
    tmp_path: Path,
) -> None:
    """The refusal went by a context variable that the tasks
    a callback starts inherit, so an admin "stop" task (close, wait for the release,
    exit), started while the callback still ran, got LocalProtocolError and nothing
    after the release happened. Only the callback's own task is refused now."""
    w = World(tmp_path)
    out: dict[str, Any] = {}

    async def main() -> None:
        box: dict[str, Any] = {}

        async def shutdown() -> None:
            server = box["server"]
            server.close()
            try:
                out["released"] = await server.wait_released(30)
            except LocalProtocolError as exc:
                out["released"] = repr(exc)

        async def callback(reader: Any, writer: Any) -> None:
            await reader.readexactly(4)
            box["task"] = asyncio.ensure_future(shutdown())
            await asyncio.sleep(0)  # (it starts while the callback runs)
            writer.write(b"ok")
            await writer.drain()

        box["server"] = await w.serve(callback, ServicePolicy(allowance=1_000_000))
        reader, writer = await w.connect()
        writer.write(b"stop")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 30) == b"ok"
        writer.close()
        with contextlib.suppress(DTPError):
            await writer.wait_closed()
        await asyncio.wait_for(box["task"], 60)

    try:
        asyncio.run(main())
    finally:
        w.close()
    assert out["released"] is True


def test_aio_a_task_the_callback_awaits_waits_until_its_timeout(tmp_path: Path) -> None:
    """The one case the refusal cannot see (docs): a callback awaiting a task of its
    own that waits for the release. It waits for the callback's connection, so until
    its timeout (False); then the callback goes on and the connection settles."""
    w = World(tmp_path)
    seen: dict[str, Any] = {}

    async def main() -> None:
        box: dict[str, Any] = {}

        async def shutdown() -> bool:
            server = box["server"]
            server.close()
            return bool(await server.wait_released(0.5))

        async def callback(reader: Any, writer: Any) -> None:
            await reader.readexactly(8)
            seen["result"] = await asyncio.ensure_future(shutdown())
            writer.write(b"bye")
            await writer.drain()

        box["server"] = await w.serve(callback)
        reader, writer = await w.connect()
        writer.write(b"shutdown")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(3), 30) == b"bye"
        writer.close()
        with contextlib.suppress(DTPError):
            await writer.wait_closed()
        seen["after"] = await box["server"].wait_released(30)

    try:
        asyncio.run(main())
    finally:
        w.close()
    assert seen == {"result": False, "after": True}


# -- 6. close() does not wait for the receipt store on the loop ------------------------


def test_aio_close_does_not_block_the_loop_on_a_stalled_store(tmp_path: Path) -> None:
    w = World(tmp_path)
    out: dict[str, float] = {}

    async def main() -> None:
        async def callback(reader: Any, writer: Any) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

        server = await w.serve(callback)
        reader, writer = await w.connect(metering=MeteringConfig(every_ms=100))
        writer.write(b"x" * 1000)
        await writer.drain()
        await reader.readexactly(1000)
        await asyncio.sleep(0.3)
        # the store's write lock held elsewhere: the next receipt waits behind it (a
        # stalled disk, another process writing); the flush close() asks for takes 5 s
        blocker = sqlite3.connect(tmp_path / "receipts.db", timeout=1, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            writer.write(b"y" * 5000)
            await writer.drain()
            await reader.readexactly(5000)
            await asyncio.sleep(0.5)
            began = time.monotonic()
            server.close()
            out["close_s"] = time.monotonic() - began
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        writer.close()
        await writer.wait_closed()
        assert await server.wait_released(60)

    try:
        asyncio.run(main())
    finally:
        w.close()
    # (a flush on the loop waits its whole 5 s timeout here)
    assert out["close_s"] < 2.5, out


# -- 7. a paid stream can be reset -------------------------------------------------------


def _resets_the_stream(out: dict[str, Any]) -> tuple[Any, Any]:
    """The handlers (blocking, asyncio): accept the client's second stream, read 3
    bytes and reset it with code 42, then read the connection to its end. A missing
    ``reset`` is kept in ``out["server"]``."""

    def blocking(sock: Any) -> None:
        stream = sock.accept_stream()
        data = b""
        while len(data) < 3:
            data += stream.recv(3 - len(data))
        try:
            stream.reset(42)
        except AttributeError as exc:
            out["server"] = exc
            stream.close()
        while sock.recv(65536):
            pass

    async def aio(reader: Any, writer: Any) -> None:
        r2, w2 = await writer.accept_stream()
        await r2.readexactly(3)
        try:
            w2.reset(42)  # abandon this request
        except AttributeError as exc:
            out["server"] = exc
            w2.close()
        await reader.read()

    return blocking, aio


def test_a_paid_stream_is_reset(tmp_path: Path, driver: Driver) -> None:
    w = World(tmp_path)
    out: dict[str, Any] = {}
    try:
        with driver.serve(
            w.host_id,
            PORT,
            _resets_the_stream(out),
            ledger=w.book,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=ServicePolicy(),
        ) as server:
            sock = w.connect_blocking()
            stream = sock.open_stream()
            stream.sendall(b"req")
            try:
                out["client"] = stream.recv(100)  # (b"": a clean end, not the reset)
            except StreamReset as exc:
                out["client"] = exc
            sock.close()
            driver.close(server)
            assert driver.wait_released(server, 30)
    finally:
        w.close()
    assert "server" not in out, out
    assert isinstance(out["client"], StreamReset), out
    assert out["client"].code == 42


# -- 8. a wrong identity is refused first -----------------------------------------------


def test_aio_serve_refuses_a_wrong_identity_first(tmp_path: Path) -> None:
    w = World(tmp_path)

    async def main() -> None:
        with pytest.raises(TypeError):
            await dtp.aio.serve(
                w.host_id,
                PORT,
                lambda r, wr: None,
                ledger=w.server_book,
                identity=b"\x01" * 32,  # type: ignore[arg-type]
                receipts=tmp_path / "r.db",
            )

    try:
        asyncio.run(main())
        # refused before the store was opened (or the endpoint published)
        assert not (tmp_path / "r.db").exists()
        with pytest.raises(TypeError):
            dtp.socket.serve(
                w.host_id,
                PORT,
                lambda s: None,
                ledger=w.server_book,
                identity=b"\x01" * 32,  # type: ignore[arg-type]
                receipts=tmp_path / "r.db",
            )
    finally:
        w.close()
