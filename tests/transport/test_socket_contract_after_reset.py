"""The blocking sockets (``dtp.socket``) as a new user meets them:

* after the peer's ``reset()`` of a stream, ``sendall`` on it waited for good (the
  reset's close shut the stream for writing, which raised -- the reset had ended that
  side already -- so its read side was never shut: no STOP_SENDING, and what came
  after was held unread, its flow-control credit never returned);
* a ``serve_forever`` handler that raised closed the connection cleanly, so the client
  read ``b""``: a reply cut short looked complete (dtp.aio aborts: "internal error");
* ``create_server(identity=None)`` listened, and failed each client's handshake in a
  server thread, the client reading a misleading HandshakeError;
* ``recv_datagram(-1)`` took a negative timeout for "one look" (DTPTimeoutError), where
  ``settimeout`` refuses it; ``accept(nan)`` waited for good.

Real servers and clients on 127.0.0.1 with real handshakes."""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import (
    ConnectionClosed,
    ConnectionLost,
    DTPError,
    DTPTimeoutError,
    StreamReset,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol.connection import CloseCode
from tests.support.polling import raised_within

SERVER_ID = HostIdentity.generate()
WAIT = 60.0  # seconds any call of these tests may take at most (a loaded machine)
PATIENT = 600.0  # a timeout a call that missed the reset would wait out: far beyond WAIT
BULK = b"x" * (1 << 20)


@contextmanager
def connected() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    """(client, server side) of one connection, both with the PATIENT timeout."""
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server:
        client = dtp.socket.create_connection(
            server.address, server_key=server.noise_public_key, timeout=PATIENT
        )
        try:
            with client:
                client.sendall(b"?")  # (the server's first stream comes with it)
                peer, _ = server.accept(timeout=WAIT)
                with peer:
                    peer.settimeout(PATIENT)
                    assert peer.recv(1) == b"?"
                    yield client, peer
        finally:
            client.abort()  # (a no-op once closed: frees a sendall left waiting)


def sendall_until_it_fails(sock: dtp.socket.DTPSocket) -> Callable[[], None]:
    """A call that sends without end: only an error ends it."""

    def call() -> None:
        while True:
            sock.sendall(BULK)

    return call


# -- 1. sendall after the peer's reset ---------------------------------------------------


def _before_the_reset(
    state: str, sender: dtp.socket.DTPSocket, resetter: dtp.socket.DTPSocket
) -> None:
    """Put the stream in ``state`` before ``resetter`` resets it."""
    if state == "resetter-sent-its-end":
        resetter.shutdown(socket.SHUT_WR)  # (its end of stream is out: reset after FIN)
        assert sender.recv(10) == b""
    elif state == "resetter-has-data-queued":
        # more than the stream's window, which the sender never reads: the rest waits
        # queued here when the reset drops it
        resetter.settimeout(0)
        with pytest.raises(BlockingIOError):
            resetter.sendall(b"q" * (8 << 20))
        resetter.settimeout(PATIENT)
    elif state == "sender-stopped-reading":
        # the resetter's sending side ended already (at the sender's STOP_SENDING): its
        # close must still end the read half when the write half raises
        sender.shutdown(socket.SHUT_RD)
        stopped = raised_within(sendall_until_it_fails(resetter), WAIT, resetter.abort)
        assert isinstance(stopped, StreamReset), stopped


def extra_stream(
    client: dtp.socket.DTPSocket, peer: dtp.socket.DTPSocket
) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
    """A second stream the client opens and the peer accepts, carrying b"hi" already:
    (the client's end, the sender; the peer's end, the one that will reset)."""
    sender = client.open_stream()
    sender.sendall(b"hi")
    resetter = peer.accept_stream()
    resetter.settimeout(PATIENT)
    assert resetter.recv(10) == b"hi"
    return sender, resetter


@pytest.mark.parametrize(
    "state",
    [
        "open",
        "resetter-sent-its-end",
        "resetter-has-data-queued",
        "sender-stopped-reading",
    ],
)
def test_sendall_raises_stream_reset_after_the_peer_resets_an_extra_stream(state: str) -> None:
    with connected() as (client, peer):
        sender, resetter = extra_stream(client, peer)
        _before_the_reset(state, sender, resetter)
        resetter.reset(7)
        # no timeout (600 s): a sendall that missed the reset would send until the
        # window was used, then wait for credit that never comes
        raised = raised_within(sendall_until_it_fails(sender), WAIT, client.abort)
        assert isinstance(raised, StreamReset), raised
        assert raised.code == 7  # the reset's code (not 0), as the peer's reads get
        # the connection goes on: its first stream still works both ways
        client.sendall(b"still here")
        assert peer.recv(100) == b"still here"
        peer.sendall(b"and here")
        assert client.recv(100) == b"and here"


def test_sendall_fails_at_once_after_the_peer_resets_the_first_stream() -> None:
    with connected() as (client, peer):
        peer.reset(7)  # the first stream: the connection ends with it
        raised = raised_within(sendall_until_it_fails(client), WAIT, client.abort)
        # (the CLOSE, or the carrier closed under a write: the TCP race)
        assert isinstance(raised, (StreamReset, ConnectionClosed, ConnectionLost)), raised


def test_a_stream_reset_while_the_peer_is_blocked_sending_ends_its_sendall() -> None:
    with connected() as (client, peer):
        sender, resetter = extra_stream(client, peer)
        outcome: list[BaseException | None] = []
        started = threading.Event()

        def blocked() -> None:
            started.set()
            outcome.append(raised_within(sendall_until_it_fails(sender), WAIT, client.abort))

        thread = threading.Thread(target=blocked, daemon=True)
        thread.start()
        assert started.wait(WAIT)
        resetter.reset(3)
        thread.join(WAIT + 5)
        assert not thread.is_alive()
        assert isinstance(outcome[0], StreamReset), outcome


# -- 2. serve_forever's handler raising --------------------------------------------------


@contextmanager
def serving(handler: Callable[[dtp.socket.DTPSocket], None]) -> Iterator[dtp.socket.DTPServer]:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server:
        thread = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
        thread.start()
        yield server
    thread.join(WAIT)


def read_to_the_end(server: dtp.socket.DTPServer, request: bytes) -> tuple[bytes, Any]:
    """Send ``request``, then read until the end: (what came, the exception that ended
    the reads, or None for a clean end)."""
    got = bytearray()
    with dtp.socket.create_connection(
        server.address, server_key=server.noise_public_key, timeout=WAIT
    ) as client:
        client.sendall(request)
        try:
            while data := client.recv(65536):
                got += data
        except DTPError as exc:
            return bytes(got), exc
    return bytes(got), None


def failing_handler(sock: dtp.socket.DTPSocket) -> None:
    request = sock.recv(100)
    if request == b"echo":
        sock.sendall(b"ECHO")
        return
    sock.sendall(b"the first half of a reply, ")
    if request == b"misuse":
        sock.recv(100, socket.MSG_PEEK)  # LocalProtocolError: a bug of the handler's own
    raise RuntimeError("handler bug")


@pytest.mark.parametrize("request_", [b"crash", b"misuse"])
def test_a_raising_handler_aborts_the_connection_and_is_logged(
    request_: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dtp.transport.blocking")
    with serving(failing_handler) as server:
        got, ended = read_to_the_end(server, request_)
        # the client must not take the first half for the whole reply: an error, as
        # dtp.aio's server gives when its callback raises
        assert isinstance(ended, ConnectionClosed), (got, ended)
        assert ended.code == CloseCode.APPLICATION and ended.reason == "internal error"
        assert b"the first half of a reply, ".startswith(got)
        # the server serves on, and a handler that returns closes cleanly
        assert read_to_the_end(server, b"echo") == (b"ECHO", None)
    if request_ == b"crash":
        assert any(
            r.levelno == logging.ERROR and r.exc_info and "handler bug" in str(r.exc_info[1])
            for r in caplog.records
        ), caplog.records
    else:
        assert any(
            r.levelno == logging.INFO and "take no flags" in r.getMessage() for r in caplog.records
        ), caplog.records


# -- 3. a server's identity --------------------------------------------------------------


@pytest.mark.parametrize(
    "identity", [None, "x", 42, SERVER_ID.noise_public], ids=["None", "str", "int", "key-bytes"]
)
@pytest.mark.parametrize("make", ["create_server", "DTPServer"])
def test_a_server_identity_that_is_no_host_identity_is_refused(identity: Any, make: str) -> None:
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(TypeError, match=r"dtp\.identity\.keys\.HostIdentity"):
        if make == "create_server":
            dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
        else:
            dtp.socket.DTPServer(("127.0.0.1", 0), identity)
    # refused before listening: no server thread was left waiting for connections
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert not [t for t in started if t.name == "dtp-handshake"], started


def test_serve_refuses_an_identity_before_touching_the_ledger(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        host = ledger.create_host(SERVER_ID, SERVER_ID.noise_public)
        ledger.add_service(SERVER_ID, host, 443, "echo", Sla(10, 5, 1000))
        endpoint = ledger.get_host(host).endpoints
        with pytest.raises(TypeError, match=r"dtp\.identity\.keys\.HostIdentity"):
            dtp.socket.serve(
                host,
                443,
                lambda sock: None,
                ledger=ledger,
                identity=None,  # type: ignore[arg-type]
                receipts=tmp_path / "receipts.db",
            )
        assert ledger.get_host(host).endpoints == endpoint  # nothing was published
    finally:
        ledger.close()


# -- 4. timeouts given to a call ---------------------------------------------------------


def settimeout_verdict(value: Any) -> type[BaseException] | None:
    """What a real socket's settimeout raises for ``value`` (None: takes it)."""
    with socket.socket() as sock:
        try:
            sock.settimeout(value)
        except (TypeError, ValueError, OverflowError) as exc:
            return type(exc)
    return None


REFUSED = [-1, -0.5, math.nan, math.inf, -math.inf, "1", b"1"]
TAKEN = [0, False, 0.0]  # (taken, and they wait no time)


@pytest.mark.parametrize("value", REFUSED + TAKEN, ids=repr)
@pytest.mark.parametrize(
    "call",
    ["recv_datagram", "recv_datagrams", "accept", "wait_settled", "settimeout"],
)
def test_a_timeout_argument_is_refused_as_settimeout_refuses_it(value: Any, call: str) -> None:
    expected = settimeout_verdict(value)
    assert (expected is None) == (value in TAKEN)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server:
        client = dtp.socket.create_connection(
            server.address, server_key=server.noise_public_key, timeout=WAIT
        )
        server_side, _ = server.accept(timeout=WAIT)  # (none waits for accept() now)
        with client, server_side:
            calls: dict[str, Callable[[], object]] = {
                "recv_datagram": lambda: client.recv_datagram(value),
                "recv_datagrams": lambda: client.recv_datagrams(1, value),
                "accept": lambda: server.accept(value),
                "wait_settled": lambda: server.wait_settled(value),
                "settimeout": lambda: client.settimeout(value),
            }
            # (accept(nan) waited for good before: closing the server ends the wait)
            raised = raised_within(calls[call], WAIT, server.close)
            if expected is None:
                # taken: one look, nothing there (the timeout error of the call)
                assert raised is None or isinstance(raised, DTPTimeoutError), raised
            else:
                assert type(raised) is expected, raised
            # the connection is unharmed
            server_side.send_datagram(b"back")
            assert client.recv_datagram(WAIT) == b"back"


def test_recv_datagram_with_a_negative_timeout_is_refused_before_anything_is_read() -> None:
    with connected() as (client, peer):
        client.send_datagram(b"kept")
        with pytest.raises(ValueError, match="timeout"):
            peer.recv_datagram(-1)
        with pytest.raises(ValueError, match="timeout"):
            peer.recv_datagrams(10, -1)
        # the datagram was not taken by the refused calls
        assert peer.recv_datagram(WAIT) == b"kept"
