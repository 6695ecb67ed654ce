"""A reconnect flood cannot cost a legitimate client its connect (docs/protocol.md §8,
"Admission"; §16): 300 silent connections from 200 addresses, each opened again as soon
as the server closes it -- thousands of connects a second, in a process of its own
(tests/transport/lockout_attack.py) -- while a genuine client connects 50 times, each
connect (and one echo) within a second, against both servers; and each of the two
rules below alone: a suspect address's newcomer refused on a real server, and the
accept queue holding hundreds of connects nobody accepted yet.

Two rules hold it. The unproven connections' bound (``backlog``) makes the oldest give
way to each newcomer; so that a genuine client's connection is not the oldest at
thousands a second before the server reads its first record, an address whose
connections keep ending unproven is suspect, and its connections give way first, or are
refused (dtp.transport._admission.Strikes; the rule on a virtual clock in
tests/transport/test_handshake_gate.py). And the kernel's accept queue is at least
:data:`~dtp.transport.carriers._tcp.LISTEN_QUEUE` long, beyond the backlog (128), so
that the kernel does not drop the genuine client's SYN (a connect then takes the
retransmission's second)."""

from __future__ import annotations

import socket
import time

import pytest

from dtp.errors import DTPError
from dtp.transport.carriers._tcp import LISTEN_QUEUE, listen_tcp, widen_listen_queue
from tests.support.polling import wait_for
from tests.support.procs import server_process
from tests.support.timing import bound
from tests.transport.half_handshakes import silent
from tests.transport.test_lockout import SERVERS, attack, connect_and_echo, connect_and_echo_to

TRIES = 50
#: A genuine connect's bound. Closed by the admission, a connect fails (counted as
#: never); its SYN dropped by a full accept queue, it waits at least a second for the
#: retransmission. Beside the rest of the suite a connect is allowed three of those
#: seconds; alone (the timing probe, tests/support/timing.py) the second it promises.
CONNECT_BOUND = bound(1.0, 3.0)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_every_genuine_connect_completes_within_a_second_under_a_reconnect_flood(
    api: str,
) -> None:
    with server_process("echo", api=api) as srv:
        connect_and_echo_to(srv.endpoint, srv.key)  # (warm: keys made, threads started)
        took: list[float] = []
        with attack(srv.endpoint, 150, keep_open=300, rate=0, kinds="silent") as counts:
            started = time.monotonic()
            for _ in range(TRIES):
                try:
                    took.append(connect_and_echo_to(srv.endpoint, srv.key))
                except DTPError as exc:
                    took.append(float("inf"))
                    print("failed:", exc)
                time.sleep(0.05)
            seconds = time.monotonic() - started
        assert max(took) < CONNECT_BOUND, (api, sorted(took)[-5:])
        # it was a flood: the server closed many times the attacker's 300 connections
        # -- each twice at least (thousands a second on a quiet machine; a fraction
        # of that under load)
        assert counts.get("closed-by-server", 0) > 300 * 2, (counts, seconds)


def connected(socks: list[socket.socket], within: float) -> int:
    """How many of the non-blocking ``socks`` connected within ``within`` seconds."""
    deadline = time.monotonic() + within
    done: set[int] = set()
    while time.monotonic() < deadline and len(done) < len(socks):
        for i, sock in enumerate(socks):
            if i not in done and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                try:
                    sock.getpeername()
                except OSError:
                    continue
                done.add(i)
        time.sleep(0.01)
    return len(done)


def connect_many(address: tuple[str, int], count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(address)
        socks.append(sock)
    return socks


@pytest.mark.parametrize("widened", [False, True])
def test_the_accept_queue_holds_hundreds_of_connects_nobody_accepted_yet(widened: bool) -> None:
    # a listener of backlog 8 as the servers make it (listen_tcp), or as asyncio makes
    # it then widened (widen_listen_queue): 300 connects complete in the kernel's
    # queue, none accepted -- with a queue of 8, all but 9 would wait for their SYN's
    # retransmission
    if widened:
        listener = socket.create_server(("127.0.0.1", 0), backlog=8)
        widen_listen_queue(listener, 8)
    else:
        listener = listen_tcp(("127.0.0.1", 0), 8)
    socks = connect_many(listener.getsockname(), 300)
    try:
        assert connected(socks, 0.9) == 300
    finally:
        for sock in socks:
            sock.close()
        listener.close()
    assert LISTEN_QUEUE >= 300


def test_a_short_accept_queue_drops_connects_which_the_widened_one_holds() -> None:
    # (the test above could pass by accident if the kernel ignored the backlog: the
    # same 300 connects to a queue of 8 do not all complete)
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    socks = connect_many(listener.getsockname(), 300)
    try:
        assert connected(socks, 0.5) < 300
    finally:
        for sock in socks:
            sock.close()
        listener.close()


def closed_by_server(sock: socket.socket, within: float = 5.0) -> bool:
    """Whether the server closed ``sock`` (end of file, or a reset) within ``within``."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.parametrize("kind", list(SERVERS))
def test_a_suspect_address_is_refused_rather_than_make_others_give_way(kind: str) -> None:
    # the rule of tests/transport/test_handshake_gate.py on a real server: an address
    # twice caught sending what is not DTP is suspect; with the unproven bound (the
    # backlog, 4) reached by four other addresses' silent connections, its newcomer is
    # closed at once and the four stay; a genuine client still gets in
    with SERVERS[kind](backlog=4) as server:
        for _ in range(2):
            with silent(server.address, "127.0.0.50") as junk:
                junk.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert closed_by_server(junk)
        assert wait_for(lambda: server.handshakes_failed >= 2)
        held = [silent(server.address, f"127.0.0.{60 + i}") for i in range(4)]
        try:
            assert wait_for(lambda: server.unproven == 4)
            with silent(server.address, "127.0.0.50") as newcomer:
                assert closed_by_server(newcomer)
            assert server.unproven == 4
            assert not any(closed_by_server(sock, 0.05) for sock in held)
            # a genuine client's record is read (the blocking server: with its connect;
            # the asyncio one: after one of the four gave way to it)
            assert connect_and_echo(server.address) < CONNECT_BOUND
        finally:
            for sock in held:
                sock.close()
