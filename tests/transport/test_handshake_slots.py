"""The per-address cap on handshakes in progress (slowloris hardening) and the line its
further connections wait in: the AddressSlots helper, then the blocking and asyncio
servers over real sockets. A connection takes a slot once it has sent its first
handshake record (dtp.transport._admission): the idle connections here are half-handshakes
(that record, then nothing).

Linux routes all of 127.0.0.0/8 to loopback, so idle connections bound to 127.0.0.2
come from a second client address while real clients connect from 127.0.0.1.

A 6to4 address (2002:V4ADDR::/48) is counted by its IPv4 address for the per-address
handshake cap: the owner of one IPv4 address holds the whole /48, and counted by /64 it
would have a cap for each of 65536 networks.

The handshake's server-side bounds: the per-address handshake cap, its
waiting line and the replay guard's capacity take ints only.

A bare comparison (``cap < 1``, ``max_waiting < 0``, ``capacity < 1``) lets a NaN
pass, and then every "at the cap" / "line full" / "more than the capacity" comparison
after it: ``max_handshakes_per_address=float("nan")`` would be no per-address cap at
all (one address holding every ``max_handshakes`` slot, the stall the cap exists to
stop), ``max_waiting_per_address=float("nan")`` an unbounded line, and
``ReplayGuard(float("nan"))`` a guard that never forgets a key; a float cap such as
1.5 would let two handshakes in. So each is refused unless an int, as
``max_handshakes`` (ServerSlots) is."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
import time
from typing import Any

import pytest

import dtp.aio
import dtp.socket
import dtp.transport.asyncio._server
from dtp.errors import ConnectionRefused, DTPError, HandshakeError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._admission import (
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    AddressSlots,
    ReplayGuard,
    ServerSlots,
    Verdict,
    address_key,
    check_count,
)
from tests.support.polling import async_wait_for, wait_for
from tests.transport.half_handshakes import (
    closed_by_peer,
    idle,
    silent,
)
from tests.transport.server_drivers import Serve, ServerDriver

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
DENIED = HostIdentity.generate()
OTHER_IP = "127.0.0.2"


# -- AddressSlots ----------------------------------------------------------------------


def test_take_up_to_the_cap_per_address() -> None:
    slots: AddressSlots[str] = AddressSlots(2)
    assert slots.try_take("10.0.0.1") and slots.try_take("10.0.0.1")
    assert not slots.try_take("10.0.0.1")  # at its cap
    assert slots.in_progress("10.0.0.1") == 2  # the refused take counted nothing
    assert slots.try_take("10.0.0.2")  # another address has its own share
    slots.release("10.0.0.1")
    assert slots.try_take("10.0.0.1")
    assert not slots.try_take("10.0.0.1")


def test_addresses_with_nothing_in_progress_are_dropped() -> None:
    slots: AddressSlots[str] = AddressSlots(3)
    for i in range(100):
        assert slots.try_take(f"10.0.0.{i}")
        assert slots.try_take(f"10.0.0.{i}")
    assert len(slots) == 100
    for i in range(100):
        slots.release(f"10.0.0.{i}")
        slots.release(f"10.0.0.{i}")
    assert len(slots) == 0
    assert slots._counts == {}  # no entry left behind at count 0


def test_release_without_take_and_a_cap_below_one_are_errors() -> None:
    slots: AddressSlots[str] = AddressSlots(1)
    with pytest.raises(ValueError):
        slots.release("10.0.0.1")
    assert slots.try_take("10.0.0.1")
    slots.release("10.0.0.1")
    with pytest.raises(ValueError):
        slots.release("10.0.0.1")  # once per take, not twice
    with pytest.raises(ValueError):
        AddressSlots(0)


def test_concurrent_takes_never_pass_the_cap() -> None:
    slots: AddressSlots[str] = AddressSlots(3)
    start = threading.Barrier(10, timeout=10)
    results: list[bool] = []

    def take() -> None:
        start.wait()  # all at once
        results.append(slots.try_take("10.0.0.1"))

    threads = [threading.Thread(target=take) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [False] * 7 + [True] * 3
    assert slots.in_progress("10.0.0.1") == 3


def test_take_and_release_from_many_threads_balance_out() -> None:
    slots: AddressSlots[str] = AddressSlots(2)
    over_cap: list[int] = []

    def churn(address: str) -> None:
        for _ in range(2000):
            if slots.try_take(address):
                if (n := slots.in_progress(address)) > 2:
                    over_cap.append(n)
                slots.release(address)

    threads = [threading.Thread(target=churn, args=(f"10.0.0.{i % 2}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert over_cap == []
    assert len(slots) == 0


def test_connections_beyond_the_cap_wait_in_line_and_take_the_slot_in_turn() -> None:
    slots: AddressSlots[str] = AddressSlots(1, max_waiting=2)
    assert slots.take_or_wait("10.0.0.1", "first", 10.0) is Verdict.TAKEN
    assert slots.take_or_wait("10.0.0.1", "second", 10.0) is Verdict.WAITING
    assert slots.take_or_wait("10.0.0.1", "third", 10.0) is Verdict.WAITING
    assert slots.take_or_wait("10.0.0.1", "fourth", 10.0) is Verdict.FULL  # line full
    assert slots.take_or_wait("10.0.0.2", "elsewhere", 10.0) is Verdict.TAKEN
    assert slots.waiting("10.0.0.1") == 2 and slots.in_progress("10.0.0.1") == 1
    # each release hands the slot to the next in line, in order
    assert slots.release("10.0.0.1", 1.0) == ("second", [])
    assert slots.in_progress("10.0.0.1") == 1 and slots.waiting("10.0.0.1") == 1
    assert slots.release("10.0.0.1", 1.0) == ("third", [])
    assert slots.release("10.0.0.1", 1.0) == (None, [])
    assert slots.in_progress("10.0.0.1") == 0 and slots.waiting("10.0.0.1") == 0
    slots.release("10.0.0.2")
    assert len(slots) == 0 and slots._waiting == {}


def test_a_connection_that_waited_past_its_deadline_is_handed_back_to_close() -> None:
    slots: AddressSlots[str] = AddressSlots(1)
    assert slots.take_or_wait("a", "holder", 0.0) is Verdict.TAKEN
    assert slots.take_or_wait("a", "stale", 5.0) is Verdict.WAITING
    assert slots.take_or_wait("a", "also stale", 6.0) is Verdict.WAITING
    assert slots.take_or_wait("a", "fresh", 20.0) is Verdict.WAITING
    assert slots.release("a", 10.0) == ("fresh", ["stale", "also stale"])
    assert slots.take_or_wait("a", "late", 30.0) is Verdict.WAITING
    assert slots.release("a", 40.0) == (None, ["late"])  # expired: the slot is free
    assert len(slots) == 0 and slots.waiting("a") == 0


def test_hand_on_skips_connections_that_cannot_start() -> None:
    slots: AddressSlots[str] = AddressSlots(1)
    slots.take_or_wait("a", "holder", 1e12)
    for name in ("gone", "next", "last"):
        assert slots.take_or_wait("a", name, 1e12) is Verdict.WAITING
    started: list[str] = []
    refused: list[list[str]] = []

    def start(item: str) -> bool:
        if item == "gone":
            return False  # e.g. its client left: the slot goes to the one after it
        started.append(item)
        return True

    slots.hand_on("a", start, refused.append)
    assert started == ["next"] and refused == []
    assert slots.in_progress("a") == 1 and slots.waiting("a") == 1
    slots.hand_on("a", start, refused.append)
    slots.hand_on("a", start, refused.append)
    assert started == ["next", "last"] and len(slots) == 0


def test_no_line_and_draining_it() -> None:
    slots: AddressSlots[str] = AddressSlots(1, max_waiting=0)
    assert slots.take_or_wait("a", "x", 1.0) is Verdict.TAKEN
    assert slots.take_or_wait("a", "y", 1.0) is Verdict.FULL
    line: AddressSlots[str] = AddressSlots(1)
    line.take_or_wait("a", "x", 1.0)
    line.take_or_wait("a", "y", 1.0)
    line.take_or_wait("b", "z", 1.0)
    line.take_or_wait("b", "w", 1.0)
    assert sorted(line.drain()) == ["w", "y"]
    assert line.waiting("a") == line.waiting("b") == 0
    with pytest.raises(ValueError):
        AddressSlots(1, max_waiting=-1)


def test_the_default_cap_leaves_room_for_other_clients() -> None:
    # a quarter of the blocking server's default max_handshakes (32)
    assert DEFAULT_MAX_HANDSHAKES_PER_ADDRESS == 8
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        assert server._address_slots is not None
        assert server._address_slots.cap == DEFAULT_MAX_HANDSHAKES_PER_ADDRESS
        assert server._admission.server_slots.cap == 32


# -- both servers (the server_driver fixture: tests/transport/conftest.py) --------------


def send_once(server: ServerDriver, data: bytes, timeout: float = 10.0) -> None:
    """A client of 127.0.0.1 connects, sends ``data`` and closes (raises what the
    connect raised)."""
    with dtp.socket.create_connection(
        server.address, timeout=timeout, server_key=server.noise_public_key, identity=CLIENT
    ) as sock:
        sock.sendall(data)


def served_once(server: ServerDriver, data: bytes, timeout: float = 10.0) -> bytes:
    """What the application was given of a client's ``data`` (see :func:`send_once`)."""
    send_once(server, data, timeout)
    return server.served(timeout)[1]


def served_from_threads(server: ServerDriver, prefix: bytes, n: int) -> list[bytes]:
    """``n`` clients sending ``prefix`` + their number at once, each in a thread; what
    the application was given, in the order it was."""
    clients = [
        threading.Thread(target=send_once, args=(server, b"%s%d" % (prefix, i))) for i in range(n)
    ]
    for t in clients:
        t.start()
    try:
        return [server.served(30)[1] for _ in range(n)]
    finally:
        for t in clients:
            t.join(30)


def test_a_connection_beyond_the_cap_waits_its_turn_and_beyond_the_line_is_closed(
    server_driver: Serve,
) -> None:
    driver = server_driver(
        max_handshakes=8, max_handshakes_per_address=2, max_waiting_per_address=1
    )
    server = driver.server
    slots = server._address_slots
    assert slots is not None
    held = [idle(driver.address), idle(driver.address)]
    try:
        assert wait_for(lambda: slots.in_progress("127.0.0.1") == 2)
        third = idle(driver.address)
        with third:
            # in line: neither closed nor holding a slot of any kind
            assert wait_for(lambda: slots.waiting("127.0.0.1") == 1)
            assert not closed_by_peer(third, within=0.3)
            assert slots.in_progress("127.0.0.1") == 2
            assert server.handshakes_in_progress == 2
            fourth = idle(driver.address)
            with fourth:
                started = time.monotonic()
                assert closed_by_peer(fourth, within=2.0)  # the line is full
                assert time.monotonic() - started < 2.0
            assert server.busy_refused == 1
            assert slots.in_progress("127.0.0.1") == 2
            # a real client that finds the line full is turned away the same way, quickly
            started = time.monotonic()
            with pytest.raises(HandshakeError, match="too many handshakes"):
                send_once(driver, b"turned away", timeout=5.0)
            assert time.monotonic() - started < 2.0
            assert server.busy_refused == 2
            held[0].close()  # its handshake ends: the third takes its slot
            assert wait_for(lambda: slots.waiting("127.0.0.1") == 0)
            assert slots.in_progress("127.0.0.1") == 2
            assert wait_for(lambda: server.handshakes_in_progress == 2)
    finally:
        for sock in held:
            sock.close()
    # the idle ones' handshakes end with their close: the address may connect again
    assert wait_for(lambda: len(slots) == 0)
    assert served_once(driver, b"after the idle ones left") == b"after the idle ones left"
    assert server.busy_refused == 2


def test_a_burst_beyond_the_cap_from_one_address_is_served_in_turn(server_driver: Serve) -> None:
    """Twelve clients of one address at once, with a cap of 2: all are served (those
    beyond the cap waited) and each gets its echo back, none refused, and the cap held
    throughout; on either server."""
    server = server_driver(max_handshakes_per_address=2, echo=True)
    slots = server.server._address_slots
    assert slots is not None
    # The handshakes in progress, read as each slot is taken (a handshake holds its
    # slot until after the take returns, so each reading is at least 1): a watcher
    # polling the count could miss every handshake on a loaded machine.
    peak = [0]
    take_or_wait = slots.take_or_wait

    def counted(address: str, item: Any, deadline: float) -> Verdict:
        verdict: Verdict = take_or_wait(address, item, deadline)
        if verdict is Verdict.TAKEN:
            peak[0] = max(peak[0], slots.in_progress(address))
        return verdict

    slots.take_or_wait = counted
    echoed: list[bytes] = []

    def client(i: int) -> None:
        with dtp.socket.create_connection(
            server.address, timeout=10, server_key=server.noise_public_key, identity=CLIENT
        ) as sock:
            sock.sendall(b"b%d" % i)
            sock.shutdown(socket.SHUT_WR)  # the server echoes what it read to the end
            reply = b""
            while chunk := sock.recv(100):
                reply += chunk
            echoed.append(reply)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in clients:
        t.start()
    try:
        got = sorted(server.served()[1] for _ in range(12))
    finally:
        for t in clients:
            t.join(30)
    assert got == sorted(b"b%d" % i for i in range(12))
    assert sorted(echoed) == got
    assert server.server.busy_refused == 0
    assert 1 <= peak[0] <= 2
    assert wait_for(lambda: len(slots) == 0)


def test_closing_the_server_closes_the_connections_waiting_in_line(server_driver: Serve) -> None:
    server = server_driver(max_handshakes_per_address=1)
    slots = server.server._address_slots
    assert slots is not None
    holder, waiting = idle(server.address), idle(server.address)
    with holder, waiting:
        assert wait_for(lambda: slots.waiting("127.0.0.1") == 1)
        server.close()
        assert closed_by_peer(waiting, within=2.0)
        assert slots.waiting("127.0.0.1") == 0


@pytest.mark.parametrize("cap", [None, 2], ids=["no-cap", "cap-2"])
def test_idle_connections_from_one_address_stall_nobody(
    server_driver: Serve, cap: int | None
) -> None:
    driver = server_driver(max_handshakes=4, max_handshakes_per_address=cap)
    server = driver.server
    # one client (127.0.0.2) opens as many half-handshakes as there are slots
    held = [idle(driver.address, OTHER_IP) for _ in range(4)]
    try:
        if cap is None:
            # all four hold a slot; a client that speaks makes the oldest give way
            # (before, the server waited for one to time out before it served more)
            assert wait_for(lambda: server.handshakes_in_progress == 4)
            started = time.monotonic()
            assert served_once(driver, b"not stalled", timeout=5.0) == b"not stalled"
            assert time.monotonic() - started < 2.0
            assert server.half_handshakes_evicted == 1
            assert server.busy_refused == 0
        else:
            # two hold a slot, the other two wait in their address's line
            slots = server._address_slots
            assert slots is not None
            assert wait_for(lambda: slots.waiting(OTHER_IP) == 2)
            assert slots.in_progress(OTHER_IP) == 2
            assert server.handshakes_in_progress == 2
            assert server.busy_refused == 0
            started = time.monotonic()
            assert served_once(driver, b"from 127.0.0.1", timeout=5.0) == b"from 127.0.0.1"
            assert time.monotonic() - started < 2.0  # promptly, not after a timeout
            assert slots.in_progress(OTHER_IP) == 2  # still held meanwhile
            assert slots.waiting(OTHER_IP) == 2
            assert server.half_handshakes_evicted == 0  # (a slot was free: none gave way)
    finally:
        for sock in held:
            sock.close()
    if cap is not None:
        assert wait_for(lambda: len(slots) == 0)


def test_the_count_returns_to_zero_however_a_handshake_ends(server_driver: Serve) -> None:
    config = ConnectionConfig(identity=SERVER, is_client=False, handshake_timeout=0.5)
    driver = server_driver(
        lambda address: address != DENIED.sui_address,
        identity=SERVER,
        max_handshakes_per_address=2,
        config=config,
    )
    server = driver.server
    slots = server._address_slots
    assert slots is not None

    def settled() -> bool:
        return wait_for(lambda: len(slots) == 0 and slots.in_progress("127.0.0.1") == 0)

    # success, one after another and two at once (as many as the cap)
    for i in range(3):
        assert served_once(driver, b"ok %d" % i) == b"ok %d" % i
    assert sorted(served_from_threads(driver, b"c", 2)) == [b"c0", b"c1"]
    assert settled()

    # garbage, then closed (it never took a slot: not a first record)
    with silent(driver.address) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
    assert wait_for(lambda: server.handshakes_failed == 1)
    assert settled()

    # closed before sending anything: no slot taken, no handshake failed
    silent(driver.address).close()
    assert wait_for(lambda: server.unproven == 0)
    assert settled()

    # its first record, then silent until the server's handshake timeout closes it
    with idle(driver.address) as raw:
        assert wait_for(lambda: slots.in_progress("127.0.0.1") == 1)
        assert closed_by_peer(raw, within=5.0)
    assert wait_for(lambda: server.handshakes_failed == 2)
    assert settled()

    # refused by the accept hook
    with pytest.raises(ConnectionRefused):
        dtp.socket.create_connection(
            driver.address, timeout=10, server_key=driver.noise_public_key, identity=DENIED
        )
    assert wait_for(lambda: server.refused == 1)
    assert settled()
    assert server.busy_refused == 0
    assert served_once(driver, b"still fine") == b"still fine"


def test_established_connections_hold_no_handshake_slot(server_driver: Serve) -> None:
    """A connection's handshake slot is free once its handshake is over: with one slot
    per address and no line (a second handshake of 127.0.0.1 under way at once would be
    closed "busy"), three clients of that address connect one after another and stay
    connected together, each at once; a client the accept hook refuses holds none
    either while its carrier drains (its CLOSE is delivered first)."""
    driver = server_driver(
        lambda address: address != DENIED.sui_address,
        max_handshakes_per_address=1,
        max_waiting_per_address=0,
    )
    server = driver.server
    slots = server._address_slots
    assert slots is not None
    held = []
    try:
        for i in range(3):
            began = time.monotonic()
            with pytest.raises(ConnectionRefused):
                dtp.socket.create_connection(
                    driver.address, timeout=10, server_key=driver.noise_public_key, identity=DENIED
                )
            sock = dtp.socket.create_connection(
                driver.address, timeout=10, server_key=driver.noise_public_key, identity=CLIENT
            )
            held.append(sock)
            sock.sendall(b"c%d" % i)
            assert time.monotonic() - began < 5  # (a connect waiting for a slot: 10 s)
            assert wait_for(lambda: slots.in_progress("127.0.0.1") == 0)
        assert server.busy_refused == 0
        # (a refusal is counted before its CLOSE(REFUSED) goes out: no wait for it)
        assert server.refused == 3
    finally:
        for sock in held:
            sock.close()
    assert sorted(driver.served(10)[1] for _ in range(3)) == [b"c0", b"c1", b"c2"]


def test_a_refusal_is_counted_before_its_client_can_read_it(server_driver: Serve) -> None:
    """``server.refused`` includes a refusal as soon as its client has read it: a
    client that counts what it was refused and the server's count agree at every step
    (the blocking server counted just after its CLOSE(REFUSED) went out, and clients
    read their refusal first now and then)."""
    driver = server_driver(lambda address: address != DENIED.sui_address)
    server = driver.server
    for i in range(60):
        with pytest.raises(ConnectionRefused):
            dtp.socket.create_connection(
                driver.address, timeout=10, server_key=driver.noise_public_key, identity=DENIED
            )
        assert server.refused == i + 1
    assert server.handshakes_failed == 0  # (each counted once: refused, not failed too)


def test_ledger_handoffs_are_not_capped_by_address(server_driver: Serve) -> None:
    # a ledger-carrier connection reaches the server as a local socket (no client IP)
    driver = server_driver(max_handshakes_per_address=1)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for ours, _ in pairs:
            driver.handoff(ours, ("ledger", "0xabc"))
        # after 0.3 s, the far ends are still open (their handshakes wait for us: none
        # was refused or closed) and no address slot was taken
        time.sleep(0.3)
        for _, theirs in pairs:
            theirs.setblocking(False)
            with pytest.raises(BlockingIOError):
                theirs.recv(1)
        assert driver.server.busy_refused == 0
        slots = driver.server._address_slots
        assert slots is not None and len(slots) == 0
    finally:
        for _, theirs in pairs:
            theirs.close()


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, max_handshakes_per_address=0)


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2", None])
def test_a_count_setting_that_is_no_int_of_at_least_one_is_refused_by_name(
    value: object,
) -> None:
    """One check for max_handshakes (ServerSlots) and the blocking server's max_pending."""
    for name in ("max_handshakes", "max_pending"):
        with pytest.raises(ValueError, match=f"^{name} must be an int of at least 1, not "):
            check_count(name, value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_handshakes must be an int of at least 1"):
        ServerSlots(value, 1)  # type: ignore[arg-type]
    check_count("max_handshakes", 1)
    assert ServerSlots(2, 1).cap == 2


# -- the asyncio server's own ------------------------------------------------------------


async def aio_echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()


async def aio_server(**kw: Any) -> dtp.aio.DTPServer:
    """An echoing asyncio server on 127.0.0.1 with the given keywords."""
    return await dtp.aio.start_server(aio_echo, "127.0.0.1", 0, identity=SERVER, **kw)


async def aio_echo_once(server: dtp.aio.DTPServer, data: bytes) -> bytes:
    host, port = server.address
    reader, writer = await dtp.aio.open_connection(
        host, port, server_key=server.noise_public_key, identity=CLIENT, timeout=10
    )
    writer.write(data)
    await writer.drain()
    reply = await reader.read(100)
    writer.close()
    return reply


def test_address_key_groups_ipv6_by_its_64_and_keeps_ipv4() -> None:
    """One IPv6 subscriber holds a /64: its addresses share one count; IPv4 addresses
    (and IPv4-mapped IPv6) count one by one."""
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    a, b = address_key("2001:db8:1:2::1"), address_key("2001:db8:1:2:ffff::9")
    assert a == b == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != a
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not an address") == "not an address"
    slots: AddressSlots[str] = AddressSlots(1)
    assert slots.try_take(address_key("2001:db8::1"))
    assert not slots.try_take(address_key("2001:db8::2"))  # the same /64
    assert slots.try_take(address_key("2001:db8:0:1::1"))


def test_sixtofour_addresses_count_as_their_ipv4_address() -> None:
    a = "2002:c000:204:1::1"  # 192.0.2.4, subnet 1
    b = "2002:c000:204:ffff::2"  # the same IPv4 address, another of its /64s
    assert address_key(a) == address_key(b) == "192.0.2.4"
    slots: AddressSlots[object] = AddressSlots(cap=1)
    assert slots.try_take(address_key(a))
    assert not slots.try_take(address_key(b))  # one cap for the whole /48
    assert not slots.try_take(address_key("192.0.2.4"))  # and the IPv4 address itself
    # an ordinary IPv6 client is still counted by its /64
    assert address_key("2001:db8:1:2::5") == "2001:db8:1:2::/64"


NAN = math.nan


@pytest.mark.parametrize("cap", [NAN, 1.5, True, "8"])
def test_a_per_address_cap_that_is_no_int_is_refused(cap: object) -> None:
    with pytest.raises(ValueError, match="per-address handshake cap"):
        AddressSlots(cap)  # type: ignore[arg-type]


def test_a_nan_cap_no_longer_lets_one_address_take_every_slot() -> None:
    # a NaN cap taken would let every try_take succeed, however many
    try:
        slots: AddressSlots[str] = AddressSlots(NAN)  # type: ignore[arg-type]
    except ValueError:
        return
    taken = sum(slots.try_take("192.0.2.1") for _ in range(100))
    pytest.fail(f"a NaN cap was accepted, and let one address take {taken} of 100")


@pytest.mark.parametrize("line", [NAN, 2.5, "64"])
def test_a_waiting_line_that_is_no_int_is_refused(line: object) -> None:
    with pytest.raises(ValueError, match="waiting line"):
        AddressSlots(1, line)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="waiting line"):
        ServerSlots(1, line)  # type: ignore[arg-type]


def test_int_likes_still_bound_the_line() -> None:
    # (the asyncio server's line is its listen backlog, any int-like listen() takes)
    slots: AddressSlots[int] = AddressSlots(1, True)
    assert slots.max_waiting == 1 and type(slots.max_waiting) is int


@pytest.mark.parametrize(
    "keywords",
    [
        {"max_handshakes_per_address": NAN},
        {"max_handshakes_per_address": 2.5},
        {"max_waiting_per_address": NAN},
    ],
)
def test_the_servers_refuse_them(server_driver: Serve, keywords: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        server_driver(**keywords)


@pytest.mark.parametrize("capacity", [NAN, 2.5, True])
def test_a_replay_guard_capacity_that_is_no_int_is_refused(capacity: object) -> None:
    with pytest.raises(ValueError, match="replay guard"):
        ReplayGuard(capacity)  # type: ignore[arg-type]


def test_aio_a_connection_that_cannot_be_served_gives_its_address_slot_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        server = await aio_server(max_handshakes_per_address=1)
        async with server:
            slots = server._address_slots
            assert slots is not None
            real = server._start_serving
            failures: list[str | None] = []

            def fails_once(arrival: dtp.transport.asyncio._server._Arrival) -> None:
                if not failures:
                    failures.append(arrival.key)
                    # (what a loop that no longer takes tasks raises)
                    raise RuntimeError("cannot start serving")
                real(arrival)

            server._start_serving = fails_once  # type: ignore[method-assign]
            with pytest.raises(DTPError):
                await aio_echo_once(server, b"first")
            assert failures == ["127.0.0.1"]
            assert await async_wait_for(lambda: slots.in_progress("127.0.0.1") == 0)
            # the address's one slot is free: the next connection is served at once
            assert await aio_echo_once(server, b"after") == b"after"
            assert server.busy_refused == 0

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
