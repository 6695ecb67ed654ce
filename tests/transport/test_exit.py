"""The interpreter's exit waits for every close still under way, so the peer reads the
clean end and not a reset:
- the drain of a reset stream's carrier, which the timer thread runs: cut off, the peer
  lost what it had not read, the RESET_STREAM and the CLOSE;
- a close the timer thread had taken off its queue and not registered yet;
- a socket closed while a file of it was open, the file left open to the end (its
  finalizer runs in the teardown, after the exit's wait: its close never ran);
- a close that lingers longer than over TCP (the ledger carrier's 30 s): each close is
  waited for up to its own linger and a second.
Client processes exit right after their last call; real connections on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.transport.blocking import _engine as blocking_engine
from dtp.transport.blocking import sched
from dtp.transport.blocking._engine import TimerService
from tests.transport.client_processes import run_client_process

SERVER_ID = HostIdentity.generate()

_RESET = """
import sys
import dtp.socket
port, key = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
sock = dtp.socket.create_connection(("127.0.0.1", port), timeout=10, server_key=key)
sock.sendall(b"z" * (3 << 20))
sock.reset(3)
print("reset", flush=True)
"""

_FILE_LEFT_OPEN = """
import sys
import dtp.socket
port, key = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
mode, flush = sys.argv[3], sys.argv[4] == "flush"
sock = dtp.socket.create_connection(("127.0.0.1", port), timeout=10, server_key=key)
f = sock.makefile(mode)
sock.close()  # deferred: the file keeps the stream open
f.write(b"x" * 5000 if "b" in mode else "QUIT" * 1250)
if flush:
    f.flush()
print("written", flush=True)
# and the process exits with the file still open (a response object in a global)
"""


@pytest.fixture
def server() -> Iterator[dtp.socket.DTPServer]:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as srv:
        yield srv


def test_a_process_exiting_right_after_a_reset_lets_the_peer_read_it(
    server: dtp.socket.DTPServer,
) -> None:
    # (a reader that starts late: the drain of the reset stream's carrier is under way)
    outcome, _ = run_client_process(server, _RESET, 1.0)
    assert outcome == {"end": "reset 3", "got": 3 << 20}


@pytest.mark.parametrize("flush", ["flush", "no-flush"])
@pytest.mark.parametrize("mode", ["wb", "w"])
def test_a_file_left_open_at_exit_ends_the_connection_cleanly(
    server: dtp.socket.DTPServer, mode: str, flush: str
) -> None:
    """(The peer vanished: ConnectionLost after the data, where a socket's file ends
    with EOF. And what the file still held, unflushed, must go before the end: its
    finalizer flushes it only in the teardown, after the exit closed the socket -- the
    peer read a clean end without those bytes.)"""
    outcome, _ = run_client_process(server, _FILE_LEFT_OPEN, 0.0, mode, flush)
    assert outcome == {"end": "EOF", "got": 5000}


def test_a_socket_whose_last_file_closed_is_not_closed_again_at_exit(
    server: dtp.socket.DTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = TimerService()
    # (an engine takes the scheduler's timer service as it is made, for its socket too)
    monkeypatch.setattr(sched, "timers", service)
    sock = dtp.socket.create_connection(
        server.address, timeout=10, server_key=SERVER_ID.noise_public
    )
    closes: list[None] = []
    real_close = sock.close

    def close() -> None:
        closes.append(None)
        real_close()

    monkeypatch.setattr(sock, "close", close)
    f = sock.makefile("wb")
    sock.close()  # deferred: the file keeps the stream open
    f.close()  # the last file: the close is queued (close_later)
    service.finish_closes(10.0)
    # (counted among the sockets left open as well: closed twice, side by side)
    assert len(closes) == 2  # the application's deferred one, and the queued one


class _SlowClose:
    def __init__(self, seconds: float, linger: float = dtp.socket.LINGER) -> None:
        self.seconds = seconds
        self.closed = threading.Event()
        self._engine = type("Engine", (), {"linger": linger})()

    def close(self) -> None:
        time.sleep(self.seconds)
        self.closed.set()


def test_the_exit_waits_for_a_close_taken_off_the_queue_and_not_registered_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = TimerService()
    closing = _SlowClose(0.3)
    real_init = threading.Thread.__init__

    def slow_init(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("name") == "dtp-close":
            time.sleep(0.2)  # the window: off the queue, not among the closers yet
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "__init__", slow_init)
    service._closing.append(closing)  # type: ignore[arg-type]
    starter = threading.Thread(target=service._start_closes)
    starter.start()
    time.sleep(0.05)
    service.finish_closes(5.0)  # found neither a queued close nor a closer: returned
    assert closing.closed.is_set()
    starter.join(5)


def test_the_exit_waits_for_each_close_up_to_its_own_linger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At exit a close over the ledger carrier (30 s linger) was given LINGER + 1 s."""
    monkeypatch.setattr(blocking_engine, "LINGER", 0.1)
    service = TimerService()
    closing = _SlowClose(1.5, linger=2.0)
    service._closing.append(closing)  # type: ignore[arg-type]
    service.finish_closes()
    assert closing.closed.is_set()


@pytest.mark.parametrize(
    ("mode", "raw_mode"), [("r", "rb"), ("rb", "rb"), ("w", "wb"), ("wb", "wb"), ("b", "rb")]
)
def test_a_file_has_a_socket_files_mode_and_a_name(
    server: dtp.socket.DTPServer, mode: str, raw_mode: str
) -> None:
    """As socket.makefile's: ``mode`` (the text file's is the mode asked for, the
    binary one's its raw file's), and a ``name`` (the stream, not a descriptor)."""
    with dtp.socket.create_connection(
        server.address, timeout=10, server_key=SERVER_ID.noise_public
    ) as sock:
        with sock.makefile(mode) as f:
            assert f.mode == (mode if "b" not in mode else raw_mode)
            assert f.name == "<dtp stream 0>"
        raw = sock.makefile(mode, buffering=0) if "b" in mode else None
        if raw is not None:
            assert raw.mode == raw_mode
            raw.close()
