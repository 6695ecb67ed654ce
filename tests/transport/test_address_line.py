"""The blocking server's per-address line kept a connection whose wait had passed the
handshake timeout until its turn came -- which, behind a handshake whose accept hook
takes its time, is much later -- and every newcomer from that address meanwhile found
the line full and was closed. A newcomer that finds the line full now first closes
those that waited too long (counted in ``busy_refused``) and takes a place. Real
servers and sockets on 127.0.0.1.

The line purge's look at a waiting client (dtp.socket).

``_waiting_gone`` runs under a line's lock, in the server's threads: it must
neither wait nor call a live client gone. A waiting socket with a timeout (one that
``socket.setdefaulttimeout`` gave it at accept) whose client sent a TCP urgent byte
alone woke poll (POLLPRI) while a peek finds no data: CPython's recv then waited for
data up to the socket's timeout, MSG_DONTWAIT or not, and its TimeoutError counted the
live client as gone.

The blocking server's waits for one of its ``max_handshakes`` slots had no deadline: a
connection handed on from its address's line held a thread (and its address's slot)
until a slot came free or the server closed, and a ledger carrier connection held the
ledger listener's thread as long. Each now waits in the server's line, holding no
thread (dtp.transport._admission), until its connection's deadline (its accept plus its
handshake timeout): closed unserved, counted in ``busy_refused``, its address slot
handed on. And the paid servers' ``serve()`` take the handshake bounds the plain
servers take. Real servers and sockets on 127.0.0.1 (the waiting connections from
127.0.0.2, a second address)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.hostid.paid._aio
import dtp.socket
from dtp.hostid.paid import PaidSocket
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking._server import _Arrival, _waiting_gone
from dtp.transport.carriers._tcp import wait_ready
from tests.support.polling import wait_for
from tests.transport.address_lines import Held, held_address, holding
from tests.transport.half_handshakes import closed_by_peer, idle


def test_a_connection_that_waited_too_long_leaves_its_place_to_a_newcomer() -> None:
    # (the first client's handshake holds the address's slot in its accept hook; the
    # newcomer's own deadline, 1.5 s, leaves room to look at it on a loaded machine)
    with held_address(1, handshake_timeout=1.5) as (server, slots):
        stale = idle(server.address)  # waits in line, then past its deadline
        assert wait_for(lambda: slots.waiting("127.0.0.1") == 1)
        with stale:
            deadline = slots._waiting["127.0.0.1"][0][0]
            assert wait_for(lambda: time.monotonic() > deadline + 0.05)
            newcomer = idle(server.address)
            with newcomer:
                # the stale one is closed and counted; the newcomer waits in its place
                assert closed_by_peer(stale, within=3.0)
                assert not closed_by_peer(newcomer, within=0.3)
                assert server.busy_refused == 1
                assert slots.waiting("127.0.0.1") == 1


SOCKET_TIMEOUT = 3.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server side) of a loopback TCP connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    served, _ = listener.accept()
    listener.close()
    try:
        yield client, served
    finally:
        client.close()
        served.close()


def test_an_urgent_byte_alone_neither_waits_nor_makes_the_client_gone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, served = pair
    served.settimeout(SOCKET_TIMEOUT)  # (as setdefaulttimeout gives an accepted socket)
    client.send(b"!", socket.MSG_OOB)
    # the urgent byte has arrived once poll says so (POLLPRI): no sleep
    assert wait_ready([served], [], 2.0)[0] == [served]
    started = time.monotonic()
    config = ConnectionConfig(identity=HostIdentity.generate(), is_client=False)
    waited = _Arrival(served, ("127.0.0.1", 1), config, "k")
    gone = _waiting_gone(waited)
    took = time.monotonic() - started
    assert took < 0.5, f"the look under the line's lock waited {took:.2f} s"
    assert gone is False  # its client is still there
    assert served.gettimeout() == SOCKET_TIMEOUT  # (left as it was)
    # and its hanging up is still seen, nothing consumed on the way
    client.sendall(b"hello")
    client.shutdown(socket.SHUT_WR)
    assert served.recv(5, socket.MSG_PEEK) == b"hello"
    assert _waiting_gone(waited) is False  # (its first bytes came before the FIN)
    assert served.recv(5) == b"hello"
    assert wait_ready([served], [], 2.0)[0] == [served]
    assert _waiting_gone(waited) is True


OTHER_IP = "127.0.0.2"
TIMEOUT = 0.5  # the server's handshake timeout: each waiter's deadline is this after its accept
SLACK = 0.5  # how late past its deadline a waiter may still be open (the expiry's poll)


def handshake_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "dtp-handshake" and t.is_alive()}


@pytest.fixture
def held() -> Iterator[Held]:
    """A server with one handshake slot (``max_handshakes=1``), which a client from
    127.0.0.1 holds in its accept hook until ``release`` is set."""
    with holding(TIMEOUT, max_handshakes=1) as held:
        yield held


def test_a_waiter_handed_on_is_closed_at_its_deadline_and_the_next_one_too(held: Held) -> None:
    server = held.server
    slots = server._address_slots
    assert slots is not None
    # a handshake from OTHER_IP in progress (its global slot since handed back): its
    # further connections wait in its line
    assert slots.try_take(OTHER_IP)
    first, second = idle(server.address, OTHER_IP), idle(server.address, OTHER_IP)
    with first, second:
        assert wait_for(lambda: slots.waiting(OTHER_IP) == 2)
        deadlines = [deadline for deadline, _ in slots._waiting[OTHER_IP]]
        before = handshake_threads()
        # that handshake ends: the first in line takes the address slot and waits in the
        # server's line for the global one, which the hooked client holds all along
        server._admission._release_address(OTHER_IP, time.monotonic())
        assert wait_for(lambda: server.handshakes_waiting == 1, timeout=2.0)
        assert not handshake_threads() - before  # (no thread waits for it)
        for sock, deadline in zip((first, second), deadlines, strict=True):
            # (room for a loaded machine's scheduling: the old wait never ended at all)
            assert closed_by_peer(sock, within=max(deadline - time.monotonic(), 0) + SLACK + 2.0)
            assert time.monotonic() < deadline + SLACK + 1.5
        assert server.busy_refused == 2
        # the address slot was handed on from the first to the second, then freed
        assert wait_for(lambda: slots.in_progress(OTHER_IP) == 0, timeout=2.0)
        assert server.handshakes_waiting == 0
    # the hooked client, let go, is served as ever
    held.release.set()
    held.client.join(10)
    assert held.replies == [b"first"]
    assert server.busy_refused == 2


def test_a_ledger_connection_waits_for_a_slot_until_its_deadline(held: Held) -> None:
    server = held.server
    ours, theirs = socket.socketpair()
    with theirs:
        started = time.monotonic()
        # the ledger listener's thread (here, ours) is back at once: the connection
        # waits in the server's line, holding no thread
        assert server.handoff(ours, ("ledger", "0xabc"), server._config)
        assert time.monotonic() - started < 0.2
        assert server.handshakes_waiting == 1
        assert closed_by_peer(theirs, within=TIMEOUT + SLACK + 1.0)
        assert time.monotonic() - started >= TIMEOUT - 0.05
        assert server.busy_refused == 1
    held.release.set()
    held.client.join(10)
    assert held.replies == [b"first"]


# -- the paid servers ------------------------------------------------------------------

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7000
WAIT = 30.0  # seconds any wait of these tests may take at most (a loaded machine)


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


HOST = ident(0x5A)
#: a connection put in a line waits until its handshake timeout: this one is far beyond
#: WAIT, so "closed within WAIT" can only be "refused at once"
UNHURRIED = ConnectionConfig(identity=HOST, is_client=False, handshake_timeout=600.0)


@dataclass
class World:
    ledger: LocalLedger
    host_id: str
    receipts: Path


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(HOST, HOST.noise_public)
    ledger.add_service(HOST, host_id, PORT, "bounds", SLA)
    try:
        yield World(ledger, host_id, tmp_path / "receipts.db")
    finally:
        ledger.close()


def paid_echo(sock: PaidSocket) -> None:
    sock.sendall(sock.recv(100))


async def paid_aio_echo(reader: PaidReader, writer: PaidWriter) -> None:
    writer.write(await reader.read(100))
    await writer.drain()


def second_of_an_address_is_refused(address: tuple[str, int], busy: object) -> None:
    """With one handshake per address and no line: an idle connection holds the
    address's slot and the next one from there is closed at once, counted."""
    with idle(address) as first:
        # the address's slot goes with a proven first record, which the server may read
        # after a later connection's (in its reader thread): the second comes once the
        # first holds the slot
        assert wait_for(lambda: getattr(busy, "handshakes_in_progress", 0) == 1, timeout=WAIT)
        with idle(address) as second:
            assert closed_by_peer(second, within=WAIT)
            assert not closed_by_peer(first, within=0.1)
            assert wait_for(lambda: getattr(busy, "busy_refused", 0) == 1, timeout=WAIT)


#: the paid servers' serve(): the blocking one, and the asyncio one as dtp.hostid and
#: dtp.aio give it
SERVES: dict[str, Any] = {
    "blocking": dtp.socket.serve,
    "asyncio": dtp.hostid.paid._aio.serve,
    "asyncio-dtp.aio": dtp.aio.serve,
}


def run_paid_serve(serve: str, world: World, check: Any, **bounds: Any) -> None:
    """Starts ``SERVES[serve]``'s server for ``world`` with the handshake ``bounds``,
    hands it to ``check`` (in a thread of its own beside an asyncio server's loop) and
    closes it."""
    options: dict[str, Any] = {
        "ledger": world.ledger,
        "identity": HOST,
        "receipts": world.receipts,
        "config": UNHURRIED,
        **bounds,
    }
    if serve == "blocking":
        server = SERVES[serve](world.host_id, PORT, paid_echo, **options)
        try:
            check(server)
        finally:
            server.close()
        return

    async def main() -> None:
        server = await SERVES[serve](world.host_id, PORT, paid_aio_echo, **options)
        try:
            await asyncio.to_thread(check, server)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("serve", SERVES)
def test_paid_serve_takes_the_handshake_bounds(world: World, serve: str) -> None:
    def check(server: Any) -> None:
        assert server.server is not None
        assert server.server._admission.server_slots.cap == 3
        assert server.server._admission.server_slots.max_waiting == 5
        assert server.server.handshakes_in_progress == 0
        second_of_an_address_is_refused(server.address, server.server)

    bounds = {"max_handshakes": 3, "max_handshakes_per_address": 1, "max_waiting_per_address": 0}
    run_paid_serve(serve, world, check, backlog=5, **bounds)


@pytest.mark.parametrize(
    "bounds",
    [
        {"max_handshakes": 0},
        {"max_handshakes": True},
        {"max_handshakes_per_address": 0},
        {"max_waiting_per_address": -1},
    ],
)
@pytest.mark.parametrize("serve", SERVES)
def test_paid_serve_checks_the_bounds_before_the_ledger(
    world: World, bounds: dict[str, object], serve: str
) -> None:
    """A bad bound is refused (ValueError) before the paid server touches the ledger or
    opens its receipt store, on either API."""
    with pytest.raises(ValueError):
        run_paid_serve(serve, world, lambda server: None, **bounds)
    assert not world.receipts.exists()  # (the store is not even opened)
    assert world.ledger.get_host(world.host_id).endpoints == ()
