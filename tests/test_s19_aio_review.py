"""dtp.aio reviewed as an asyncio user expects it: a cancellation is never swallowed.

On Python 3.11 ``asyncio.wait_for`` returns its inner result when the cancel comes
after the inner task finished but before ``wait_for`` woke: a cancelled
``open_connection(..., timeout=...)`` returned a live connection, and a server's
connection task cancelled (the loop ending) as its handshake completed ran the client
callback on, so ``asyncio.run`` waited on it for good; a writer's close over an
acknowledging carrier, cancelled as a change arrived, went on for up to 30 s.
In-process server and client on 127.0.0.1; the cancel is landed at that instant by a
wrapper around the protocol's ``data_received`` / ``_notify`` (which still run): a real
race, made certain."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

import dtp.aio
from dtp.carriers.ledger_bridge import ledger_config
from dtp.connection import ConnectionConfig
from dtp.keys import HostIdentity


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _after_data(monkeypatch: pytest.MonkeyPatch, then: Callable[[dtp.aio._Protocol], None]) -> None:
    """Have ``then(protocol)`` run after each of the protocols' ``data_received``."""
    real = dtp.aio._Protocol.data_received

    def data_received(self: dtp.aio._Protocol, data: bytes) -> None:
        real(self, data)
        then(self)

    monkeypatch.setattr(dtp.aio._Protocol, "data_received", data_received)


def test_open_connection_cancelled_as_its_handshake_completes_raises_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The task is cancelled in the loop iteration the server's acceptance arrives:
    when ``cancel()`` says it reached the task, awaiting it raises CancelledError and
    no connection is left open (it returned the connection, the cancel swallowed)."""

    async def main() -> None:
        identity = HostIdentity.generate()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            loop = asyncio.get_running_loop()
            tasks: list[asyncio.Future[object]] = []
            reached: list[bool] = []

            def then(proto: dtp.aio._Protocol) -> None:
                if proto.conn.is_client and proto.session.accepted and not reached:
                    reached.append(False)  # (once)
                    loop.call_soon(lambda: reached.__setitem__(0, tasks[0].cancel()))

            _after_data(monkeypatch, then)
            before = _fds()
            tasks.append(
                asyncio.ensure_future(
                    dtp.aio.open_connection(
                        *server.address, server_key=identity.noise_public, timeout=600
                    )
                )
            )
            outcome: BaseException | None = None
            try:
                _reader, writer = await asyncio.wait_for(asyncio.shield(tasks[0]), 60)
            except asyncio.CancelledError as exc:
                outcome = exc
            else:
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 30)
            assert reached, "the acceptance never arrived"
            if reached[0]:
                assert isinstance(outcome, asyncio.CancelledError), "cancellation swallowed"
            async with asyncio.timeout(30):
                while _fds() > before:
                    await asyncio.sleep(0.01)

    asyncio.run(main())


def test_a_server_connection_cancelled_as_its_handshake_completes_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's task for a connection is cancelled (as asyncio.run does at its end)
    in the loop iteration the client's handshake completes: the task ends cancelled and
    the client sees its connection end. It ran the callback on, which waited for the
    client for good (asyncio.run hung on it)."""

    async def main() -> None:
        identity = HostIdentity.generate()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await reader.read()  # the client sends nothing: until it goes
            writer.close()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            loop = asyncio.get_running_loop()
            cancelled: list[asyncio.Task[None]] = []
            reached: list[bool] = []

            def cancel(task: asyncio.Task[None]) -> None:
                reached.append(task.cancel())

            # the server reads the client's first record as its handshake starts (its
            # first record was read before it took a slot): in IK it completes then,
            # the connection's task made right behind it
            real = server._start_serving

            def start_then_cancel(arrival: dtp.aio._Arrival) -> None:
                real(arrival)
                assert arrival.proto is not None and arrival.proto.session.authenticated_address
                if not cancelled:
                    (task,) = server._tasks
                    cancelled.append(task)
                    loop.call_soon(cancel, task)

            monkeypatch.setattr(server, "_start_serving", start_then_cancel)
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=60
            )
            try:
                async with asyncio.timeout(60):
                    while not reached:
                        await asyncio.sleep(0.01)
                assert reached == [True]
                (task,) = cancelled
                done, _ = await asyncio.wait([task], timeout=30)
                assert task in done, "the cancelled connection task runs on"
                assert task.cancelled()
                with pytest.raises(ConnectionError):
                    await asyncio.wait_for(reader.read(), 30)
            finally:
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 30)

    asyncio.run(main())


def test_a_close_over_an_acknowledged_carrier_cancelled_as_data_arrives_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """close() over a carrier that acknowledges (the ledger carrier's config, here over
    TCP) with bytes held by flow control: its close task, cancelled (as asyncio.run does
    at its end) as the peer's bytes arrive, ends cancelled and the connection is
    aborted. The cancel was swallowed: the close went on waiting for room for up to
    30 s (asyncio.run with it)."""

    async def main() -> None:
        identity = HostIdentity.generate()
        server_config = ledger_config(ConnectionConfig(identity=identity, is_client=False))
        client_config = ledger_config(ConnectionConfig(identity=identity, is_client=True))
        ended = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            # reads nothing (the client's bytes stay held by flow control), and keeps
            # sending: each arrival wakes the client's close
            try:
                for _ in range(60_000):
                    writer.write(b"t")
                    await asyncio.sleep(0.01)
            except ConnectionError:
                pass
            finally:
                ended.set()

        server = await dtp.aio.start_server(
            handle, "127.0.0.1", 0, identity=identity, config=server_config
        )
        async with server:
            loop = asyncio.get_running_loop()
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, config=client_config, timeout=60
            )
            armed: list[bool] = []
            reached: list[bool] = []
            real = dtp.aio._Protocol._notify

            def notify(self: dtp.aio._Protocol) -> None:
                real(self)
                task = writer._close_task
                if self is writer._proto and armed and not reached and task is not None:
                    reached.append(False)
                    loop.call_soon(lambda: reached.__setitem__(0, task.cancel()))

            monkeypatch.setattr(dtp.aio._Protocol, "_notify", notify)
            writer.write(b"x" * (4 << 20))  # beyond the window: held
            writer.close()
            task = writer._close_task
            assert task is not None
            # the close is in its wait for room by then
            loop.call_later(0.5, armed.append, True)
            async with asyncio.timeout(60):
                while not reached:
                    await asyncio.sleep(0.01)
            assert reached == [True]
            done, _ = await asyncio.wait([task], timeout=20)
            assert task in done, "the cancelled close goes on"
            assert task.cancelled()
            assert writer.is_closing()
            await asyncio.wait_for(ended.wait(), 30)
            with pytest.raises(ConnectionError):  # aborted: bytes were cut short
                await asyncio.wait_for(reader.read(), 30)

    asyncio.run(main())
