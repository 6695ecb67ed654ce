"""A blocking server whose application takes connections with ``accept()`` never tells a
client it is in and then drops it: a client waits in its handshake for a place in the
accept queue (``max_pending``), and one that waits past its handshake timeout is refused
there, "server busy" (ConnectionRefused at the client, counted in ``busy_refused``),
even when the handshakes complete faster than a thread-per-client accept() loop takes
them, under a burst of 1,000 connects."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionRefused, DTPError, HandshakeError, SocketClosed
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from tests.support.polling import wait_for
from tests.support.timing import bound

SERVER, CLIENT = HostIdentity.generate(), HostIdentity.generate()


def accept_loop(server: dtp.socket.DTPServer, served: list[int]) -> None:
    """The README's application: accept(), then a thread per client (one exchange)."""

    def handle(sock: dtp.socket.DTPSocket) -> None:
        with sock:
            data = sock.recv(16)
            if data:
                sock.sendall(data)
                served.append(1)

    while True:
        try:
            sock, _ = server.accept()
        except SocketClosed:
            return
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


async def exchange(address: tuple[str, int], index: int) -> str:
    """One client: connect, one request and its answer. What happened: "served",
    "busy" (refused during its handshake), "closed" (closed unserved during its
    handshake: a line full, a first message later than the server's deadline -- a
    client thread starved on a loaded machine) or "dropped" (in, then cut off)."""
    try:
        reader, writer = await dtp.aio.open_connection(
            *address, timeout=60, identity=CLIENT, server_key=SERVER.noise_public
        )
    except ConnectionRefused as exc:
        assert exc.reason == "server busy"
        return "busy"
    except HandshakeError:
        return "closed"
    request = index.to_bytes(4, "big")
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read(16)
    except DTPError as exc:
        return f"dropped: {exc!r}"
    finally:
        writer.close()
        with contextlib.suppress(DTPError):
            await writer.wait_closed()
    return "served" if answer == request else f"dropped: answered {answer!r}"


async def burst(address: tuple[str, int], count: int) -> list[str]:
    """``count`` clients connecting at once (asyncio: one thread for them all)."""
    return await asyncio.gather(*(exchange(address, i) for i in range(count)))


@pytest.mark.timeout(180)
def test_a_burst_of_1000_connects_to_an_accept_loop_loses_no_client_it_let_in() -> None:
    served: list[int] = []
    # no per-address cap: every client comes from 127.0.0.1, and the accept queue
    # (max_pending, 128) alone is to decide who waits. A handshake timeout of 30 s,
    # and as long for the first message: on a loaded machine the 1,000 clients' own
    # handshakes (one thread) take longer than the default 10 s, their first messages
    # longer than the default 3 s (all 1,000 closed so, beside the rest of the suite),
    # and a server giving up on a slow handshake is no drop
    config = ConnectionConfig(identity=SERVER, is_client=False, handshake_timeout=30.0)
    with dtp.socket.create_server(
        ("127.0.0.1", 0),
        identity=SERVER,
        config=config,
        max_handshakes_per_address=None,
        backlog=1024,
        first_message_timeout=30.0,
    ) as server:
        app = threading.Thread(target=accept_loop, args=(server, served), daemon=True)
        app.start()
        outcomes = asyncio.run(burst(server.address, 1000))
        busy, closed = outcomes.count("busy"), outcomes.count("closed")
        dropped = [o for o in outcomes if o not in ("served", "busy", "closed")]
        assert dropped == []
        assert outcomes.count("served") == 1000 - busy - closed
        # the accept loop keeps up with all of them on an idle machine (the timing probe,
        # tests/support/timing.py: one in a hundred turned away at most); on a loaded one
        # the clients' single thread sends many first messages past the server's deadline
        # ("closed", 697 of 1,000 seen). A server turning nearly everyone away, however
        # counted, is not what is meant: at least one in ten gets in
        assert busy + closed <= bound(10, 900), (busy, closed)
        assert wait_for(lambda: len(served) == 1000 - busy - closed)
        # every client turned away is counted by the server, whichever way
        assert wait_for(
            lambda: (
                server.busy_refused + server.unproven_closed + server.half_handshakes_evicted
                == busy + closed
            )
        ), (busy, closed, server.busy_refused, server.unproven_closed)
        assert server.busy_refused >= busy
    app.join(10)


def test_a_client_waits_in_its_handshake_for_room_in_the_accept_queue() -> None:
    with dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, max_pending=1) as server:
        first = dtp.socket.create_connection(
            server.address, timeout=10, identity=CLIENT, server_key=SERVER.noise_public
        )
        done: list[float] = []
        started = time.monotonic()

        def second() -> None:
            with dtp.socket.create_connection(
                server.address, timeout=10, identity=CLIENT, server_key=SERVER.noise_public
            ) as sock:
                done.append(time.monotonic() - started)
                sock.sendall(b"hi")

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1.0)
        assert not done  # the queue's one place is the first's: the second waits, not in
        taken, _ = server.accept()  # room: the second's handshake completes
        waiter.join(10)
        assert done and done[0] >= 1.0
        other, _ = server.accept(timeout=5)
        assert other.recv(2) == b"hi"
        for sock in (first, taken, other):
            sock.close()
        assert server.busy_refused == 0


def test_a_client_nobody_takes_is_refused_busy_at_its_handshake_timeout_and_counted() -> None:
    config = ConnectionConfig(identity=SERVER, is_client=False, handshake_timeout=1.5)
    with dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, max_pending=1, config=config) as server:
        first = dtp.socket.create_connection(
            server.address, timeout=10, identity=CLIENT, server_key=SERVER.noise_public
        )
        started = time.monotonic()
        with pytest.raises(ConnectionRefused, match="server busy"):
            dtp.socket.create_connection(
                server.address, timeout=10, identity=CLIENT, server_key=SERVER.noise_public
            )
        # refused by the server at its handshake timeout (1.5 s): not at once, and well
        # before the client's own 10 s (alone: within 3 s; the deadline's rule on a
        # virtual clock: tests/transport/test_handshake_gate.py)
        assert 1.0 <= time.monotonic() - started <= bound(3.0, 8.0)
        assert server.busy_refused == 1
        first.close()
