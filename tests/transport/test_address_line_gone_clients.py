"""The blocking server's per-address line and the paid servers' bound check.

A newcomer that found its address's line full purged only the connections that waited
past their deadline, not those whose client had hung up meanwhile (FIN or RST): a line
of connections nobody could serve turned newcomers away until the deadlines passed.
Those are now closed too, and, not being turned away by the server, are not counted in
``busy_refused`` (as the asyncio server's). And ``check_handshake_bounds`` let through a
``backlog`` listen() refuses (OverflowError), so a paid server failed only after its
ledger recovery. Real servers and raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import select
import socket
import struct
import warnings
from pathlib import Path
from typing import Any, cast

import pytest

import dtp.aio
import dtp.hostid.paid._aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.transport._admission import AddressSlots
from dtp.transport.blocking._server import check_handshake_bounds
from tests.support.polling import wait_for
from tests.transport.address_lines import HOST, SERVER, held_address
from tests.transport.half_handshakes import closed_by_peer, idle


def in_line(slots: AddressSlots[Any], count: int) -> list[socket.socket]:
    """The server's ends of the ``count`` connections now waiting in 127.0.0.1's line."""
    assert wait_for(lambda: slots.waiting(HOST) == count)
    with slots._lock:
        return [waited.tcp for _, waited in slots._waiting[HOST]]


def seen_closing(server_end: socket.socket) -> bool:
    """Whether the server's end has the client's FIN or RST (readable, nothing unread):
    waited for before the newcomer comes, so the test does not race the loopback."""
    return bool(select.select([server_end], [], [], 0)[0])


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST rather than a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_line_of_clients_that_hung_up_does_not_turn_a_newcomer_away() -> None:
    with held_address(waiting=2) as (server, slots):
        clients = [idle(server.address), idle(server.address)]
        server_ends = in_line(slots, 2)
        for sock in clients:
            sock.close()  # FIN: the client is gone before its turn
        assert wait_for(lambda: all(seen_closing(end) for end in server_ends))
        with idle(server.address) as newcomer:
            # it takes a place in line; the gone ones are closed, not counted as refused
            assert wait_for(lambda: slots.waiting(HOST) == 1)
            assert not closed_by_peer(newcomer, within=0.3)
            assert server.busy_refused == 0
            assert all(end.fileno() == -1 for end in server_ends)


def test_only_the_gone_leave_the_line_a_reset_one_among_them() -> None:
    with held_address(waiting=3) as (server, slots):
        silent = idle(server.address)
        talking = idle(server.address)
        talking.sendall(b"x")  # data waiting unread: its client is still there
        hung_up = idle(server.address)
        # the line's order is the order their first records were read, not of connects
        by_peer = {end.getpeername(): end for end in in_line(slots, 3)}
        server_ends = [by_peer[sock.getsockname()] for sock in (silent, talking, hung_up)]
        reset(hung_up)
        assert wait_for(lambda: seen_closing(server_ends[2]))
        with silent, talking, idle(server.address) as newcomer:
            assert wait_for(lambda: slots.waiting(HOST) == 3)
            assert not closed_by_peer(newcomer, within=0.3)
            # those still there keep their places (the peek consumed nothing)
            assert not closed_by_peer(silent, within=0.1)
            assert not closed_by_peer(talking, within=0.1)
            assert server_ends[2].fileno() == -1
            assert server_ends[0].fileno() != -1 and server_ends[1].fileno() != -1
            assert server_ends[1].recv(1, socket.MSG_PEEK) == b"x"
            assert server.busy_refused == 0


# -- the backlog listen() refuses, refused before the ledger ---------------------------

C_INT_MAX = 2 ** (8 * struct.calcsize("i") - 1) - 1
TOO_BIG = [C_INT_MAX + 1, 2**40, -C_INT_MAX - 2]


class UntouchableLedger:
    """A ledger that records any use (and fails it): a refused bound must not get here."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.touched.append(name)
        raise RuntimeError(f"the ledger was used ({name}) before the bounds were checked")


@pytest.mark.parametrize("backlog", TOO_BIG)
def test_the_bound_check_refuses_a_backlog_as_create_server_does(backlog: int) -> None:
    with pytest.raises(OverflowError) as listening:
        dtp.socket.create_server((HOST, 0), identity=SERVER, backlog=backlog)
    with pytest.raises(OverflowError) as checked:
        check_handshake_bounds(32, 8, 64, backlog)
    assert str(checked.value) == str(listening.value)
    # and no further: the largest and smallest a C int holds go through
    check_handshake_bounds(32, 8, 64, C_INT_MAX)
    check_handshake_bounds(32, 8, 64, -C_INT_MAX - 1)


@pytest.mark.parametrize("backlog", TOO_BIG)
def test_create_server_refuses_such_a_backlog_leaving_no_socket_open(backlog: int) -> None:
    # socket.create_server closes its socket on an OSError only: listen()'s
    # OverflowError left it bound, for the garbage collector (a ResourceWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dtp.socket.create_server((HOST, 0), identity=SERVER, backlog=backlog)
        except OverflowError:
            pass
        else:
            pytest.fail("create_server took a backlog listen() cannot take")
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize("backlog", TOO_BIG)
def test_a_paid_server_refuses_such_a_backlog_before_the_ledger(
    backlog: int, tmp_path: Path
) -> None:
    ledger = UntouchableLedger()
    with pytest.raises(OverflowError):
        dtp.socket.serve(
            "0x" + "11" * 32,
            80,
            lambda sock: None,
            ledger=cast(Any, ledger),
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            backlog=backlog,
        )
    assert ledger.touched == []


@pytest.mark.parametrize("backlog", TOO_BIG)
def test_a_paid_aio_server_refuses_such_a_backlog_before_the_ledger(
    backlog: int, tmp_path: Path
) -> None:
    ledger = UntouchableLedger()

    async def start() -> None:
        async def callback(reader: Any, writer: Any) -> None:
            writer.close()

        await dtp.hostid.paid._aio.serve(
            "0x" + "11" * 32,
            80,
            callback,
            ledger=cast(Any, ledger),
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            backlog=backlog,
        )

    with pytest.raises(OverflowError):
        asyncio.run(start())
    assert ledger.touched == []


@pytest.mark.parametrize("backlog", [2**31, 2**40])
def test_the_asyncio_server_refuses_such_a_backlog_leaving_no_socket_open(backlog: int) -> None:
    async def main() -> None:
        with pytest.raises(OverflowError):
            await dtp.aio.start_server(
                lambda r, w: None,  # type: ignore[arg-type,return-value]
                "127.0.0.1",
                0,
                identity=HostIdentity.generate(),
                backlog=backlog,
            )

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        asyncio.run(main())
        gc.collect()
