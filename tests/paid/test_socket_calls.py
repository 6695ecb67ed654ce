"""PaidSocket.recv_into and recv take a size (and flags) exactly as the socket they wrap
does, whatever the gate's credit, and sendall its flags (it ignored them): the socket's
error for each bad argument, and a size
that is an int only through ``__index__`` read as that int. ``None`` or ``0.0`` as the
size read the whole buffer while the credit lasted (and raised TypeError once the gate
cut the read), and an ``__index__`` size raised TypeError from the comparison with the
credit. The asyncio server's PaidReader.read and readexactly likewise take a size as
dtp.aio's reader does."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import dtp.socket
from dtp.hostid.paid import PaidSocket
from dtp.ledger._objects import Sla
from tests.support.paid_inprocess import ident, paid_service
from tests.support.reads import recv_exactly

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=1 << 30)
SERVER, CLIENT = ident(0x81), ident(0x82)


class Idx:
    """An int only through ``__index__`` (a socket takes it as one)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


BAD_SIZES: list[Any] = [None, 0.0, 1.5, "4", -1, 1 << 70]
BAD_FLAGS: list[Any] = [None, 1.0, socket.MSG_PEEK]


def _outcome(fn: Any, *args: Any) -> str:
    try:
        fn(*args)
    except Exception as exc:
        return type(exc).__name__
    return "read"


def _compare(sock: PaidSocket) -> dict[str, list[tuple[Any, str, str]]]:
    """Each bad call on the plain socket and on the paid one: (argument, plain, paid)."""
    plain = sock._sock
    found: dict[str, list[tuple[Any, str, str]]] = {"recv_into": [], "recv": [], "sendall": []}
    for size in BAD_SIZES:
        found["recv_into"].append(
            (
                size,
                _outcome(plain.recv_into, bytearray(4), size),
                _outcome(sock.recv_into, bytearray(4), size),
            )
        )
        found["recv"].append((size, _outcome(plain.recv, size), _outcome(sock.recv, size)))
    for flags in BAD_FLAGS:
        found["recv_into"].append(
            (
                ("flags", flags),
                _outcome(plain.recv_into, bytearray(4), 0, flags),
                _outcome(sock.recv_into, bytearray(4), 0, flags),
            )
        )
        found["recv"].append(
            (("flags", flags), _outcome(plain.recv, 4, flags), _outcome(sock.recv, 4, flags))
        )
        # (nothing to send: a call that took the flags sends nothing either)
        found["sendall"].append(
            (
                ("flags", flags),
                _outcome(plain.sendall, b"", flags),
                _outcome(sock.sendall, b"", flags),
            )
        )
    return found


def test_sizes_and_flags_as_the_socket_takes_them(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def handle(sock: PaidSocket) -> None:
        paid = sock._paid
        first = bytearray(1)
        assert sock.recv_into(first) == 1  # (the gate looked at: the credit is set)
        seen["ample"] = _compare(sock)
        # an __index__ size reads that many bytes, as the socket's does
        buf = bytearray(8)
        seen["idx_paid"] = sock.recv_into(buf, Idx(2))
        seen["idx_plain"] = sock._sock.recv_into(buf, Idx(2))
        seen["idx_recv"] = len(sock.recv(Idx(3)))
        # the same with a credit that cuts every read short
        credit, paid.credit.read = paid.credit.read, 2
        paid.room = lambda nbytes: min(nbytes, 2)  # type: ignore[method-assign]
        seen["short"] = _compare(sock)
        seen["idx_short"] = sock.recv_into(bytearray(8), Idx(4))
        del paid.room
        paid.credit.read = credit
        sock.sendall(b"done")
        sock.recv(1)

    with (
        paid_service(tmp_path, SERVER, CLIENT, 7081, SLA, handle) as service,
        dtp.socket.create_connection(
            service.address, timeout=10, ledger=service.ledger, identity=CLIENT, deposit=1 << 30
        ) as client,
    ):
        client.sendall(bytes(64))
        assert recv_exactly(client, 4) == b"done"  # (an end first: the handler failed)
    for credit in ("ample", "short"):
        for call, rows in seen[credit].items():
            for argument, plain, paid_outcome in rows:
                assert plain != "read", (credit, call, argument)
                assert paid_outcome == plain, (credit, call, argument, plain, paid_outcome)
    assert seen["idx_paid"] == 2 and seen["idx_plain"] == 2
    assert 1 <= seen["idx_recv"] <= 3
    assert 1 <= seen["idx_short"] <= 2  # (cut to the credit, as an int size is)


def test_the_asyncio_reader_takes_sizes_as_dtp_aio_does(tmp_path: Path) -> None:
    """PaidReader.read and readexactly: TypeError at once for a size that is not an
    integer, as dtp.aio's reader raises, and an ``__index__`` size read as its int."""
    import asyncio

    import dtp.aio
    from dtp.hostid.paid._aio import PaidAioServer, PaidReader, PaidWriter
    from dtp.ledger.local import LocalLedger
    from tests.support.paid_twins import funded_ledger, loop_in_thread, stop

    seen: dict[str, Any] = {}

    async def outcome(call: Any) -> str:
        try:
            await call
        except Exception as exc:
            return type(exc).__name__
        return "read"

    async def handle(reader: PaidReader, writer: PaidWriter) -> None:
        plain = reader._reader
        rows = []
        for size in (None, 1.5, "4"):
            for name in ("read", "readexactly"):
                rows.append(
                    (
                        name,
                        size,
                        await outcome(getattr(plain, name)(size)),
                        await outcome(getattr(reader, name)(size)),
                    )
                )
        seen["rows"] = rows
        seen["read"] = len(await reader.read(Idx(3)))
        seen["readexactly"] = await reader.readexactly(Idx(2))
        writer.write(b"done")
        await writer.drain()
        await reader.read(1)

    with funded_ledger(tmp_path, CLIENT) as ledger, loop_in_thread() as loop:
        host_id = ledger.create_host(SERVER, SERVER.noise_public)
        # (funded_ledger's 10,000,000 MIST: a minimum that fits)
        ledger.add_service(SERVER, host_id, 7082, "sizes", Sla(1, 0, 100_000))
        server: PaidAioServer = asyncio.run_coroutine_threadsafe(
            dtp.aio.serve(
                host_id,
                7082,
                handle,
                ledger=LocalLedger(tmp_path / "ledger.db"),
                identity=SERVER,
                receipts=tmp_path / "receipts.db",
            ),
            loop,
        ).result(10)
        try:
            with dtp.socket.create_connection(
                f"dtp://{host_id}:7082",
                timeout=10,
                ledger=ledger,
                identity=CLIENT,
                deposit=1_000_000,
            ) as client:
                client.sendall(bytes(64))
                assert recv_exactly(client, 4) == b"done"  # (an end first: the handler failed)
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(10)
    for name, size, plain, paid_outcome in seen["rows"]:
        assert plain == "TypeError", (name, size, plain)
        assert paid_outcome == plain, (name, size, plain, paid_outcome)
    assert 1 <= seen["read"] <= 3
    assert seen["readexactly"] == bytes(2)
