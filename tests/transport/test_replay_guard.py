"""A replayed Noise IK first message must not hold a ledger connection.

Anyone who recorded a client's IK message 1 can send it again: it authenticates the
client a second time (inherent to IK). A server admitting through the ledger serves one
DTP connection per ledger connection, so a replay let through would reserve the client's
ledger connection until the server's connection timed out, and the real client,
reconnecting meanwhile, would be refused ("already served"). Both servers remember the
ephemeral keys of the IK first messages they saw and turn a repeat away before the
hooks run. The timeouts here are huge (600 s): a replay that held the connection would
hold it for the whole test.

The servers' handshake path: the replay guard (a replayed Noise IK message 1
refused on both servers, also while the original still waits for its verdict, from
many threads at once; a refused client's retry not refused; XX left alone) and the
per-address handshake slots under a flood of half-open connections. Real servers on
127.0.0.1, real handshakes; a replay writes captured bytes on a plain TCP socket.

The replay guard keeps accepted connections' keys apart from the others.

Authenticating costs a client nothing but a fresh static key: were the keys of every
authenticated IK first message kept in one pool, throw-away identities the ledger then
refused would push a real client's recorded key out, and its replay would hold the
client's ledger connection again (dtp.transport._admission). Only accepted connections
push out accepted keys: each test here checks that the replay reserves no ledger
connection (or, for the guard alone, that the key does not come through again)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

import dtp.socket
from dtp.errors import ConnectionRefused, DTPError
from dtp.identity._noise import PATTERN_IK
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol._state import ConnState
from dtp.protocol.connection import Connection, ConnectionConfig
from dtp.socket import DTPSocket
from dtp.transport._admission import DEFAULT_CAPACITY, ReplayGuard
from tests.support.polling import wait_for
from tests.transport.half_handshakes import closed_by_peer, idle
from tests.transport.server_drivers import BlockingDriver, Serve, ServerDriver

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
PORT = 443
HUGE = 600.0  # the server's handshake and idle timeouts: what a held slot would last
BOUND = 30.0  # how long the test waits for anything


@dataclass
class Opened:
    """A LocalLedger file with the server's host and service, and a ledger connection
    the client opened to it."""

    ledger: LocalLedger
    host_id: str
    client_config: ConnectionConfig
    server_config: ConnectionConfig


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Opened]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, PORT, "echo", Sla(10, 5, 1000))
    ledger.faucet(CLIENT.sui_address, 100_000)
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    connection = ledger.open_connection(CLIENT, host, PORT, cap, 1000)
    client = ConnectionConfig(
        identity=CLIENT,
        is_client=True,
        connection_id=bytes.fromhex(connection.connection_id[2:]),
        port=PORT,
    )
    server = ConnectionConfig(
        identity=SERVER, is_client=False, handshake_timeout=HUGE, idle_timeout=HUGE
    )
    try:
        yield Opened(ledger, host, client, server)
    finally:
        ledger.close()


class Recorder:
    """A TCP proxy to ``upstream`` for one connection at a time, which records what the
    client sent before the server's first reply: its handshake message 1."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.first_messages: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream, timeout=BOUND)
            server.settimeout(None)
            self._sockets += (client, server)
            self.first_messages.append(b"")
            self._relay(client, server, len(self.first_messages) - 1)

    def _relay(self, client: socket.socket, server: socket.socket, index: int) -> None:
        """Relay one connection both ways, recording its message 1 at ``index``."""
        replied = threading.Event()
        captured = bytearray()

        def up() -> None:
            # the client waits for message 2 before it sends anything more, so what comes
            # before the reply is message 1 (in one chunk or several)
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    if not replied.is_set():
                        captured.extend(data)
                        self.first_messages[index] = bytes(captured)
                    server.sendall(data)
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_WR)

        def down() -> None:
            with contextlib.suppress(OSError):
                while data := server.recv(65536):
                    replied.set()
                    client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        for target in (up, down):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop listening and end every proxied connection."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # (wakes the thread in accept)
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # (wakes the threads in recv)
        for thread in self._threads:
            thread.join(BOUND)
        for sock in self._sockets:
            sock.close()


def replay(address: tuple[str, int], message: bytes) -> socket.socket:
    """A new TCP connection that sends ``message`` and then stays open, silent."""
    sock = socket.create_connection(address, timeout=BOUND)
    sock.sendall(message)
    return sock


def closed_within(sock: socket.socket, within: float = BOUND) -> bool:
    """Whether the peer ends ``sock`` (EOF or reset) within ``within`` seconds, whatever
    it sends first."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# -- the guard ---------------------------------------------------------------------------


def test_the_guard_refuses_a_key_seen_and_forgets_the_oldest_beyond_its_capacity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = ReplayGuard(capacity=3)
    keys = [bytes([i]) * 32 for i in range(5)]
    assert guard.first_sight(keys[0])
    with caplog.at_level(logging.INFO, logger="dtp.transport._admission"):
        assert not guard.first_sight(keys[0], "10.0.0.1")
        assert not guard.first_sight(keys[0], "10.0.0.1")  # a flood: one log line
    assert guard.refused == 2
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "10.0.0.1" in caplog.records[0].getMessage()
    for key in keys[1:4]:
        assert guard.first_sight(key)
    # keys[0], the oldest, was forgotten to keep three: it comes through again (as it
    # did before the guard); the three newest are still refused
    assert len(guard) == 3
    assert guard.first_sight(keys[0])
    assert not guard.first_sight(keys[3])
    assert len(guard) == 3


def test_a_guard_that_remembers_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReplayGuard(capacity=0)


# -- both servers (the server_driver fixture: tests/transport/conftest.py) ----------------


def ledger_server(start: Callable[..., ServerDriver], opened: Opened) -> ServerDriver:
    """``start``'s server (the ``server_driver`` fixture, or a driver class) admitting
    through ``opened``'s ledger, with its huge timeouts."""
    return start(
        None,
        identity=SERVER,
        ledger=opened.ledger,
        host_id=opened.host_id,
        service_port=PORT,
        config=opened.server_config,
    )


def served_through(
    server: ServerDriver, address: tuple[str, int], opened: Opened, data: bytes
) -> None:
    """The client connects to ``address`` (the server, or a proxy to it) on its ledger
    connection, sends ``data`` and closes; the server's application is given it."""
    with connect(address, opened) as sock:
        sock.sendall(data)
    assert server.served(BOUND)[1] == data


def connect(address: tuple[str, int], opened: Opened) -> DTPSocket:
    return dtp.socket.create_connection(
        address,
        timeout=BOUND,
        server_key=SERVER.noise_public,
        identity=CLIENT,
        config=opened.client_config,
    )


def recorded_first_message(server: ServerDriver, opened: Opened) -> bytes:
    """The client's IK first message, recorded on its way to ``server``, which serves
    it; returned once the client has left (its ledger connection is free again)."""
    proxy = Recorder(server.address)
    try:
        served_through(server, proxy.address, opened, b"first")
        first = proxy.first_messages[0]
        assert first
    finally:
        proxy.close()
    assert wait_for(lambda: len(server.server._serving) == 0, BOUND)
    return first


def test_a_replayed_first_message_does_not_hold_the_ledger_connection(
    opened: Opened, server_driver: Serve
) -> None:
    driver = ledger_server(server_driver, opened)
    server = driver.server
    first = recorded_first_message(driver, opened)
    replayed = replay(driver.address, first)
    try:
        # the server has decided on the replay: turned it away (never reserving the
        # client's ledger connection for it)
        assert wait_for(
            lambda: getattr(server, "replays_refused", 0) == 1 or len(server._serving) == 1,
            BOUND,
        )
        # the real client reconnects on the same ledger connection, with a new key
        served_through(driver, driver.address, opened, b"again")
        assert server.replays_refused == 1
        assert closed_within(replayed)  # the server ended the replayed connection
    finally:
        replayed.close()


def test_a_client_that_reconnects_sends_a_new_first_message_each_time(opened: Opened) -> None:
    # (what the client sends: one server is enough)
    driver = ledger_server(BlockingDriver, opened)
    proxy = Recorder(driver.address)
    try:
        for n in range(3):
            served_through(driver, proxy.address, opened, b"round %d" % n)
            assert wait_for(lambda: len(driver.server._serving) == 0, BOUND)
        messages = proxy.first_messages
    finally:
        proxy.close()
        driver.close()
    assert len(messages) == 3 and all(messages)
    assert len(set(messages)) == 3  # a fresh ephemeral key each time: none is a replay
    assert driver.server.replays_refused == 0


def server_config(handshake_timeout: float = HUGE) -> ConnectionConfig:
    return ConnectionConfig(
        identity=SERVER, is_client=False, handshake_timeout=handshake_timeout, idle_timeout=HUGE
    )


def echo(sock: dtp.socket.DTPSocket) -> None:
    sock.sendall(sock.recv(100))


@pytest.fixture
def serve() -> Iterator[Callable[..., dtp.socket.DTPServer]]:
    """Start an echoing blocking DTPServer on 127.0.0.1 with the given keywords."""
    servers: list[dtp.socket.DTPServer] = []
    threads: list[threading.Thread] = []

    def start(**kw: Any) -> dtp.socket.DTPServer:
        kw.setdefault("config", server_config())
        server = dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, **kw)
        servers.append(server)
        thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
        thread.start()
        threads.append(thread)
        return server

    yield start
    for server in servers:
        server.close()
    for thread in threads:
        thread.join(BOUND)


@pytest.fixture
def recorders() -> Iterator[Callable[[tuple[str, int]], Recorder]]:
    """Recording proxies, closed at the end."""
    made: list[Recorder] = []

    def make(upstream: tuple[str, int]) -> Recorder:
        made.append(Recorder(upstream))
        return made[-1]

    yield make
    for recorder in made:
        recorder.close()


def echo_once(address: tuple[str, int], data: bytes, *, ik: bool = True) -> bytes:
    """Connect (IK, or XX without the server's key), echo ``data``, return the reply."""
    with dtp.socket.create_connection(
        address,
        timeout=BOUND,
        server_key=SERVER.noise_public if ik else None,
        identity=CLIENT,
    ) as sock:
        sock.sendall(data)
        return sock.recv(100)


# -- the replay guard, both servers ---------------------------------------------------------


def sent_through(address: tuple[str, int], data: bytes) -> None:
    """The client connects (IK) to ``address`` (a server, or a recorder in front of one),
    sends ``data`` and closes."""
    with dtp.socket.create_connection(
        address, timeout=BOUND, server_key=SERVER.noise_public, identity=CLIENT
    ) as sock:
        sock.sendall(data)


def test_a_replay_while_the_original_awaits_its_verdict_is_refused_before_the_hook(
    server_driver: Serve, recorders: Callable[[tuple[str, int]], Recorder]
) -> None:
    deciding = threading.Event()
    go = threading.Event()
    calls: list[str] = []
    verdicts: list[bool | str] = [True, "not yet"]

    def hook(address: str) -> bool | str:
        calls.append(address)
        verdict = verdicts.pop()
        if verdict is True:
            deciding.set()
            go.wait(BOUND)  # the original waits here for its verdict
        return verdict

    driver = server_driver(hook, identity=SERVER, config=server_config())
    server = driver.server
    recorder = recorders(driver.address)
    # refused first: the retry, with a new ephemeral key, is not taken for a replay
    with pytest.raises(DTPError):
        sent_through(recorder.address, b"first")
    original = threading.Thread(target=sent_through, args=(recorder.address, b"hi"))
    original.start()
    try:
        assert deciding.wait(BOUND)
        # the server read all of message 1 before its hook ran: the capture is whole
        assert len(recorder.first_messages) == 2
        # the original still awaits its verdict: its replay is refused meanwhile, and
        # so is a replay of the refused attempt
        for message in recorder.first_messages:
            with replay(driver.address, message) as replayed:
                assert closed_within(replayed)
        assert server.replays_refused == 2
        assert calls == [CLIENT.sui_address] * 2  # the replays never reached the hook
    finally:
        go.set()
        original.join(BOUND)
    assert driver.served(BOUND)[1] == b"hi"


# -- the replay guard, blocking server ------------------------------------------------------------


def test_concurrent_handshakes_and_concurrent_replays_are_counted_exactly(
    serve: Callable[..., dtp.socket.DTPServer],
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    server = serve(max_handshakes_per_address=None)
    clients = 16
    replies: list[bytes] = []
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait(BOUND)
        replies.append(echo_once(server.address, b"c%d" % i))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND * 2)
    assert sorted(replies) == sorted(b"c%d" % i for i in range(clients))
    assert server.replays_refused == 0
    assert len(server._replays) == clients  # one key each, none mistaken for another

    recorder = recorders(server.address)
    assert echo_once(recorder.address, b"original") == b"original"
    message = recorder.first_messages[0]
    replays = 12
    closed: list[bool] = []
    start = threading.Barrier(replays)

    def replayer() -> None:
        start.wait(BOUND)
        with replay(server.address, message) as sock:
            closed.append(closed_within(sock))

    threads = [threading.Thread(target=replayer) for _ in range(replays)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND * 2)
    assert closed == [True] * replays
    assert server.replays_refused == replays
    assert server._replays.capacity == DEFAULT_CAPACITY


def test_a_refused_client_is_served_on_its_retry_and_its_refused_message_stays_refused(
    serve: Callable[..., dtp.socket.DTPServer],
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    verdicts = ["not yet"]  # the firewall refuses once, then lets the client in

    def hook(address: str) -> str | None:
        return verdicts.pop() if verdicts else None

    server = serve(accept=hook)
    recorder = recorders(server.address)
    with pytest.raises(DTPError):
        echo_once(recorder.address, b"first")
    # the retry opens with a new ephemeral key: the refusal did not poison the guard
    assert echo_once(server.address, b"retry") == b"retry"
    assert server.replays_refused == 0
    # a replay of the refused first message is still a replay
    with replay(server.address, recorder.first_messages[0]) as sock:
        assert closed_within(sock)
    assert server.replays_refused == 1
    assert echo_once(server.address, b"again") == b"again"


def test_an_xx_handshake_leaves_the_guard_alone_and_its_replay_never_authenticates(
    serve: Callable[..., dtp.socket.DTPServer],
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    calls: list[str] = []

    def hook(address: str) -> None:
        calls.append(address)

    # a replayed XX message 1 only gets message 2 back: it waits for a message 3 that
    # never comes, until the handshake timeout
    server = serve(accept=hook, config=server_config(handshake_timeout=2.0))
    recorder = recorders(server.address)
    assert echo_once(recorder.address, b"xx", ik=False) == b"xx"
    assert len(server._replays) == 0  # XX: nothing to remember
    assert calls == [CLIENT.sui_address]
    with replay(server.address, recorder.first_messages[0]) as sock:
        assert closed_within(sock)
    assert calls == [CLIENT.sui_address]  # never authenticated: no hook ran
    assert server.replays_refused == 0
    assert wait_for(lambda: server.handshakes_failed == 1, BOUND)


# -- half-open handshakes -------------------------------------------------------------------------

FLOOD = "127.0.0.2"  # another address on the loopback network


def partial_first_message(address: tuple[str, int], message: bytes) -> socket.socket:
    """A connection that sends the first part of a message 1, then nothing."""
    sock = idle(address, FLOOD)
    sock.sendall(message[: len(message) // 2])
    return sock


def test_a_flood_of_half_open_handshakes_is_timed_out_and_others_are_served(
    server_driver: Serve, recorders: Callable[[tuple[str, int]], Recorder]
) -> None:
    driver = server_driver(identity=SERVER, config=server_config(handshake_timeout=3.0))
    recorder = recorders(driver.address)
    sent_through(recorder.address, b"x")
    assert driver.served(BOUND)[1] == b"x"
    message = recorder.first_messages[0]
    flood = [idle(driver.address, FLOOD) for _ in range(30)]
    flood += [partial_first_message(driver.address, message) for _ in range(30)]
    try:
        # the flood holds its own address's slots, not the others'
        sent_through(driver.address, b"served")
        assert driver.served(BOUND)[1] == b"served"
        # and every one of its connections is closed, at the latest once it waited
        # past the handshake timeout
        for sock in flood:
            assert closed_by_peer(sock, BOUND)
        sent_through(driver.address, b"after")
        assert driver.served(BOUND)[1] == b"after"
    finally:
        for sock in flood:
            sock.close()


__all__ = ["opened"]  # (the fixture, imported for the tests below)

CAPACITY = 2
THROWAWAY = 3  # more than the guard's capacity


def test_keys_of_accepted_connections_are_pushed_out_only_by_accepted_ones() -> None:
    guard = ReplayGuard(capacity=CAPACITY)
    kept = b"k" * 32
    assert guard.first_sight(kept)
    guard.accept(kept)
    for i in range(10):  # throw-away identities: authenticated, never accepted
        assert guard.first_sight(bytes([i]) * 32)
    assert not guard.first_sight(kept)  # still remembered: a replay
    assert len(guard) == 1 + CAPACITY  # the accepted key, and the newest others
    # accepted connections do push it out, oldest first
    for i in range(CAPACITY):
        key = bytes([100 + i]) * 32
        assert guard.first_sight(key)
        guard.accept(key)
    assert guard.first_sight(kept)


def test_accepting_a_key_the_flood_pushed_out_still_keeps_it() -> None:
    guard = ReplayGuard(capacity=1)
    key = b"a" * 32
    assert guard.first_sight(key)
    assert guard.first_sight(b"b" * 32)  # pushes ``key`` out of the unaccepted pool
    guard.accept(key)  # (the verdict came after)
    assert not guard.first_sight(key)


def _throwaway_config(opened: Opened) -> tuple[HostIdentity, ConnectionConfig]:
    """A new identity naming the real client's ledger connection: authenticated by the
    handshake, then refused by the ledger admission (the connection names another)."""
    identity = HostIdentity.generate()
    config = ConnectionConfig(
        identity=identity,
        is_client=True,
        connection_id=opened.client_config.connection_id,
        port=PORT,
    )
    return identity, config


def test_throwaway_identities_do_not_unlock_a_replay(opened: Opened, server_driver: Serve) -> None:
    driver = ledger_server(server_driver, opened)
    server = driver.server
    server._replays = ReplayGuard(capacity=CAPACITY)  # (before any connection came)
    first = recorded_first_message(driver, opened)
    for _ in range(THROWAWAY):
        identity, config = _throwaway_config(opened)
        with pytest.raises(ConnectionRefused):
            dtp.socket.create_connection(
                driver.address,
                timeout=BOUND,
                server_key=SERVER.noise_public,
                identity=identity,
                config=config,
            ).close()
    # (counted once the refusal is out: the client may read it first)
    assert wait_for(lambda: server.refused >= THROWAWAY, BOUND)
    replayed = replay(driver.address, first)
    try:
        assert wait_for(lambda: server.replays_refused == 1 or len(server._serving) == 1, BOUND)
        assert server.replays_refused == 1
        assert len(server._serving) == 0  # the client's ledger connection is free
        served_through(driver, driver.address, opened, b"again")
        assert closed_within(replayed)
    finally:
        replayed.close()


class _Conn:
    """What the guard reads of a server connection: its state and its message 1."""

    def __init__(self, key: bytes) -> None:
        self.state = ConnState.SERVER_DECIDING
        self.first_handshake_message = bytes([PATTERN_IK]) + key + b"rest of message 1"


def _sight(guard: ReplayGuard, conn: _Conn) -> bool:
    """Whether the guard refuses ``conn`` as a replay."""
    return guard.is_replay(cast(Connection, conn))


def test_a_key_under_decision_survives_a_flood_and_its_replay_is_refused() -> None:
    capacity = 4
    guard = ReplayGuard(capacity=capacity)
    held = _Conn(b"h" * 32)
    assert not _sight(guard, held)
    held.state = ConnState.AUTHENTICATING  # message 2 went out; the ledger decides
    flood = [_Conn(i.to_bytes(32, "big")) for i in range(10 * capacity)]
    for conn in flood:
        assert not _sight(guard, conn)
        conn.state = ConnState.CLOSED  # refused
    # the old guard had pushed the held key out of its unaccepted pool by now
    assert _sight(guard, _Conn(b"h" * 32))
    # accepted at last: kept among the accepted keys, which no refused flood pushes out
    held.state = ConnState.ESTABLISHED
    guard.accepted(cast(Connection, held))
    for i in range(10 * capacity):
        conn = _Conn((1000 + i).to_bytes(32, "big"))
        assert not _sight(guard, conn)
        conn.state = ConnState.CLOSED
    assert _sight(guard, _Conn(b"h" * 32))
    assert guard.refused == 2
    # the refused ones went on to the unaccepted pool: its capacity bounds them again
    assert len(guard) <= 1 + capacity + 2 * 1 + 2


def test_keys_under_decision_stay_about_the_admissions_in_progress() -> None:
    guard = ReplayGuard(capacity=8)
    deciding = [_Conn(b"d" + bytes([i]) * 31) for i in range(5)]
    for conn in deciding:
        assert not _sight(guard, conn)
    for i in range(1000):
        conn = _Conn(i.to_bytes(32, "big"))
        assert not _sight(guard, conn)
        conn.state = ConnState.CLOSED
        # (those in progress now: the five, and this one until the next comes)
        assert len(guard._deciding) <= 2 * (len(deciding) + 1) + 2
    for conn in deciding:  # none was pushed out meanwhile
        assert _sight(guard, _Conn(conn.first_handshake_message[1:33]))
    # a refused one, decided, is forgotten with the unaccepted pool as before
    deciding[0].state = ConnState.CLOSED
    for i in range(100):
        _sight(guard, _Conn((5000 + i).to_bytes(32, "big")))
    assert not _sight(guard, _Conn(deciding[0].first_handshake_message[1:33]))


def test_a_connection_gone_undecided_leaves_the_keys_under_decision() -> None:
    guard = ReplayGuard(capacity=8)
    gone = _Conn(b"g" * 32)
    assert not _sight(guard, gone)
    del gone  # (no reference kept by the guard: its key leaves for the unaccepted pool)
    assert not _sight(guard, _Conn(b"n" * 32))
    assert list(guard._deciding) == [b"n" * 32]
    assert _sight(guard, _Conn(b"g" * 32))  # still remembered


@pytest.fixture
def server() -> Iterator[tuple[dtp.socket.DTPServer, threading.Event, threading.Event]]:
    """A blocking server with a small guard whose accept hook holds CLIENT's admission
    (``entered`` set, until ``release``) and refuses every other identity."""
    entered, release = threading.Event(), threading.Event()

    def hook(address: str) -> str | None:
        if address != CLIENT.sui_address:
            return "a throw-away identity"
        entered.set()
        release.wait(BOUND)
        return None

    def echo(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(sock.recv(100))

    config = ConnectionConfig(
        identity=SERVER, is_client=False, handshake_timeout=BOUND, idle_timeout=BOUND
    )
    server = dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, config=config, accept=hook)
    server._replays = ReplayGuard(capacity=2)
    thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        yield server, entered, release
    finally:
        release.set()
        server.close()
        thread.join(BOUND)


def _throwaway(address: tuple[str, int]) -> None:
    with pytest.raises(ConnectionRefused):
        dtp.socket.create_connection(
            address, timeout=BOUND, server_key=SERVER.noise_public, identity=HostIdentity.generate()
        ).close()


def test_a_flood_while_a_client_is_admitted_does_not_unlock_its_replay(
    server: tuple[dtp.socket.DTPServer, threading.Event, threading.Event],
) -> None:
    srv, entered, release = server
    recorder = Recorder(srv.address)
    replies: list[bytes] = []

    def client() -> None:
        with dtp.socket.create_connection(
            recorder.address, timeout=BOUND, server_key=SERVER.noise_public, identity=CLIENT
        ) as sock:
            sock.sendall(b"held")
            replies.append(sock.recv(100))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    replayed: list[socket.socket] = []
    try:
        assert entered.wait(BOUND)  # its admission runs, its message 1 recorded
        message = recorder.first_messages[0]
        for _ in range(3):  # more than the guard's capacity
            _throwaway(srv.address)
        assert wait_for(lambda: srv.refused >= 3, BOUND)
        replayed.append(replay(srv.address, message))
        # (the old guard let it through to the hook, where it waited with the original)
        assert wait_for(lambda: srv.replays_refused == 1, 5.0)
        assert closed_within(replayed[0])
        release.set()
        thread.join(BOUND)
        assert replies == [b"held"]
        for _ in range(3):
            _throwaway(srv.address)
        replayed.append(replay(srv.address, message))
        assert closed_within(replayed[1])
        assert srv.replays_refused == 2
    finally:
        release.set()
        for sock in replayed:
            sock.close()
        thread.join(BOUND)
        recorder.close()
