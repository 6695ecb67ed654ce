"""The paid servers' stream wrappers take a view of bytes as the socket they wrap does.

A strided view (``memoryview(b"abcdef")[::2]``) raises the socket's BufferError from
PaidSocket's send, sendall and unbuffered file write, and from PaidWriter's write and
write_eof (also while earlier bytes are held back), not the TypeError of a cast; a view
of rows goes out as its bytes, all of them. Both drivers (the ``driver`` fixture), a
real client over 127.0.0.1 and a LocalLedger file in tmp_path."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from dtp.hostid.paid import PaidSocket
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger
from tests.support.reads import recv_exactly

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=1000)
SERVER, CLIENT = ident(0xC1), ident(0xC2)
PORT = 7131


def bad_views() -> list[tuple[str, Any]]:
    """Views no socket sends: (name, view)."""
    return [
        ("strided", memoryview(b"abcdef")[::2]),
        ("strided rows", memoryview(bytearray(12)).cast("B", (3, 4))[::2]),
        ("a str", "abc"),
    ]


def rows() -> memoryview:
    """``abcdef`` as 2 rows of 3: 2 items long, 6 bytes to send."""
    return memoryview(b"abcdef").cast("B", (2, 3))


def outcome(call: Any, *args: Any) -> str:
    try:
        call(*args)
    except Exception as exc:
        return type(exc).__name__
    return "sent"


def socket_outcomes() -> dict[str, str]:
    """What a plain socket's sendall does with each bad view."""
    a, b = socket.socketpair()
    with a, b:
        return {name: outcome(a.sendall, view) for name, view in bad_views()}


Row = tuple[str, str, str, str]


def side_by_side(plain: Any, paid: Any, *calls: str) -> list[Row]:
    """What each of ``calls`` of ``plain`` and of ``paid`` did with each bad view: (the
    view's name, the call, the plain one's outcome, the paid one's)."""
    return [
        (name, call, outcome(getattr(plain, call), view), outcome(getattr(paid, call), view))
        for name, view in bad_views()
        for call in calls
    ]


def alone(what: str, call: Any) -> list[Row]:
    """What ``call``, which has no plain twin here, did with each bad view."""
    return [(name, what, "", outcome(call, view)) for name, view in bad_views()]


def handle(seen: dict[str, Any]) -> tuple[Any, Any]:
    """The (blocking, asyncio) handlers: each records what the wrapped and the paid call
    did with each bad view, then sends :func:`rows` through each paid call that takes
    it, three times in all (the client reads them)."""

    def blocking(sock: PaidSocket) -> None:
        with sock.makefile("wb", buffering=0) as raw:
            seen["found"] = side_by_side(sock._sock, sock, "send", "sendall")
            seen["found"] += alone("raw write", raw.write)
            seen["sent"] = sock.send(rows())  # (an empty stream with credit: all of it)
            sock.sendall(rows())
            seen["written"] = raw.write(rows())
        sock.recv(1)

    async def aio(reader: PaidReader, writer: PaidWriter) -> None:
        paid = writer._paid
        found = side_by_side(writer._writer, writer, "write", "write_eof")
        writer.write(rows())
        # nothing may go now: what is written is held, behind it what comes next
        paid.write_now = lambda nbytes, first=False: 0  # type: ignore[method-assign]
        writer.write(rows())
        assert writer._releasing is not None
        found += alone("write (held)", writer.write)
        writer.write(rows())
        del paid.write_now
        seen["found"] = found
        await writer.drain()
        await reader.read(1)

    return blocking, aio


def test_a_view_no_socket_sends_is_refused_as_the_socket_refuses_it(
    tmp_path: Path, driver: Driver
) -> None:
    seen: dict[str, Any] = {}
    want = b"abcdef" * 3
    with (
        funded_ledger(tmp_path, CLIENT) as ledger,
        driver.connected(
            ledger, handle(seen), host=SERVER, client=CLIENT, port=PORT, sla=SLA, deposit=1 << 20
        ) as (_, sock),
    ):
        sock.sendall(b"?")  # (the handler starts once the stream is opened)
        got = recv_exactly(sock, len(want))  # (the handler failed, when it ends first)
        sock.sendall(b".")
    assert got == want
    expected = socket_outcomes()
    assert expected["strided"] == "BufferError"
    for name, call, plain, paid in seen["found"]:
        assert paid == expected[name], (name, call, paid)
        assert plain in ("", paid), (name, call, plain)
    if driver.name == "blocking":
        assert seen["sent"] == 6 and seen["written"] == 6  # bytes, not the 2 rows
