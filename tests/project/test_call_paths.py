"""The paths docs/architecture.md traces, run: each call is made under a profiler that
notes the modules of ``dtp/`` whose Python functions run on the side that matters, and
that set must be the list the doc names for the path ("Files crossed: ..."), so that the
doc and the code cannot drift apart; a path crosses at most six files.

What counts (docs/architecture.md, "What a path counts"): every module of ``dtp/`` one of
whose functions runs; the protocol layer as one entry, ``protocol/`` (the transport
calls it through ``protocol/connection/``); ``native/`` and ``identity/`` not at all (the
keys, the Noise handshake and the AEAD every path ends in: on the plain backend they are
C calls, on ``DTP_PUREPYTHON=1`` their twins in ``native/reference/``, and which of the
two runs is no step of the path).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import dtp
import dtp.socket
from dtp import HostIdentity
from dtp.messaging.rpc import RpcClient, RpcServer

ROOT = Path(dtp.__file__).resolve().parent
DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
LIMIT = 6

# the doc's section of each path, and the line in it that lists the files
SECTIONS = {
    "byte": "## The path of one byte",
    "call": "## The path of one call",
    "accept": "## The path of one accepted connection",
}
_FILES = re.compile(r"^Files crossed[^:]*:(?P<list>.*?)(?:\n\n|\Z)", re.M | re.S)


def documented(path: str) -> set[str]:
    """The files docs/architecture.md names for ``path``."""
    text = DOC.read_text()
    start = text.index(SECTIONS[path] + "\n")
    end = text.find("\n## ", start + 1)
    match = _FILES.search(text[start : end if end >= 0 else len(text)])
    assert match is not None, f"{SECTIONS[path]} has no 'Files crossed:' line"
    return set(re.findall(r"`([^`]+)`", match.group("list")))


def entry(filename: str) -> str | None:
    """The entry a module's file counts as on a path (None: not counted)."""
    try:
        rel = Path(filename).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None  # (not in dtp/: the standard library, a test, "<string>")
    top = rel.split("/", 1)[0]
    if top in ("native", "identity"):
        return None
    if top == "protocol":
        return "protocol/"
    return rel


class Trace:
    """The entries whose functions run while it is on, per thread name."""

    def __init__(self) -> None:
        self.on = False
        self.seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.on or event != "call":
            return
        name = entry(frame.f_code.co_filename)
        if name is not None:
            thread = threading.current_thread().name
            with self._lock:
                self.seen.setdefault(thread, set()).add(name)

    @contextmanager
    def installed(self) -> Iterator[Trace]:
        sys.setprofile(self._profile)
        threading.setprofile(self._profile)
        try:
            yield self
        finally:
            self.on = False
            threading.setprofile(None)  # type: ignore[arg-type]
            sys.setprofile(None)

    def of(self, keep: Callable[[str], bool]) -> set[str]:
        """The entries of the threads whose names ``keep`` keeps."""
        return set().union(*(seen for thread, seen in self.seen.items() if keep(thread)))


def _main(thread: str) -> bool:
    return thread == threading.main_thread().name


def _not_main(thread: str) -> bool:
    return not _main(thread)


@contextmanager
def _pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    """A connection's two first streams: the client's and the one the server accepted."""
    with dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as srv:
        client = dtp.socket.create_connection(srv.address, server_key=srv.noise_public_key)
        served, _ = srv.accept()
        try:
            yield client, served
        finally:
            client.close()
            served.close()


def _read(sock: dtp.socket.DTPSocket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "the stream ended early"
        got += chunk
    return got


def trace_byte_fast() -> set[str]:
    """``sendall`` on the connection's first stream, lent its lane (the usual case)."""
    with _pair() as (client, served), Trace().installed() as trace:
        client.sendall(b"w")
        assert _read(served, 1) == b"w"
        assert client._engine.conn.lent_stream_id == client._stream_id
        trace.on = True
        client.sendall(b"x")
        trace.on = False
        assert _read(served, 1) == b"x"
        return trace.of(_main)


def trace_byte_general() -> set[str]:
    """``sendall`` on a stream the lane is not lent to: the connection queues the bytes
    and the engine sends its records."""
    with _pair() as (client, served), Trace().installed() as trace:
        second = client.open_stream()
        try:
            client.sendall(b"w")  # (the first stream keeps the lane)
            assert _read(served, 1) == b"w"
            assert client._engine.conn.lent_stream_id != second._stream_id
            trace.on = True
            second.sendall(b"x")
            trace.on = False
            other = served.accept_stream()
            try:
                assert _read(other, 1) == b"x"
            finally:
                other.close()
        finally:
            second.close()
        return trace.of(_main)


HELD = threading.Event()  # what the "hold" method waits for


@contextmanager
def _rpc() -> Iterator[RpcClient]:
    rpc = RpcServer(workers=2)  # (one handler holds, the other answers)

    @rpc.method()
    def add(params: list[int]) -> int:
        return sum(params)

    @rpc.method()
    def hold(params: None) -> None:
        assert HELD.wait(60.0)

    with dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as srv:
        serving = threading.Thread(target=rpc.serve_forever, args=(srv,), name="test-rpc-serve")
        serving.start()
        try:
            with dtp.socket.create_connection(srv.address, server_key=srv.noise_public_key) as sock:
                client = RpcClient(sock, timeout=30.0)
                try:
                    assert client.call("add", [1, 2]) == 3
                    yield client
                finally:
                    client.close()
        finally:
            srv.close()
            serving.join(30.0)
            assert not serving.is_alive()


def trace_call_quiet() -> set[str]:
    """``RpcClient.call`` with no other call in flight: one send and one read."""
    with _rpc() as client, Trace().installed() as trace:
        trace.on = True
        assert client.call("add", [2, 40]) == 42
        trace.on = False
        return trace.of(_main)


def trace_call_busy() -> set[str]:
    """``RpcClient.call`` while another thread's call is in flight: the request is
    queued, and whichever waiting thread reads settles the call (leader/follower); the
    client's threads count."""
    HELD.clear()
    with _rpc() as client, Trace().installed() as trace:
        other = threading.Thread(
            target=client.call, args=("hold", None), name="test-rpc-other", daemon=True
        )
        other.start()
        try:
            deadline = time.monotonic() + 30.0
            while not client._reading:  # (the other call reads for its answer)
                assert time.monotonic() < deadline, "the other call never began"
                time.sleep(0.01)
            trace.on = True
            assert client.call("add", [2, 40]) == 42
            trace.on = False
        finally:
            HELD.set()
            other.join(30.0)
        assert not other.is_alive()
        return trace.of(lambda t: _main(t) or t == "test-rpc-other")


def trace_accept() -> set[str]:
    """A server accepting one connection, from before the client's connect until
    ``accept()`` returns its first stream: the server's threads (not the client's, which
    connects from the main thread)."""
    accepted: list[dtp.socket.DTPSocket] = []
    # (installed first: a thread is profiled only if it starts after, and the server's
    # accepting threads start with it)
    with (
        Trace().installed() as trace,
        dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as srv,
    ):
        taker = threading.Thread(
            target=lambda: accepted.append(srv.accept()[0]), name="test-accept"
        )
        trace.on = True
        taker.start()
        client = dtp.socket.create_connection(srv.address, server_key=srv.noise_public_key)
        taker.join(30.0)
        trace.on = False
        try:
            assert not taker.is_alive() and accepted
        finally:
            client.close()
            for sock in accepted:
                sock.close()
        return trace.of(_not_main)


RUNS: dict[str, list[Callable[[], set[str]]]] = {
    "byte": [trace_byte_fast, trace_byte_general],
    "call": [trace_call_quiet, trace_call_busy],
    "accept": [trace_accept],
}


@pytest.fixture(scope="module")
def traced() -> dict[str, set[str]]:
    """Each path's entries over its runs (both ways of a call where it has two)."""
    return {path: set().union(*(run() for run in runs)) for path, runs in RUNS.items()}


@pytest.mark.parametrize("path", sorted(RUNS))
def test_the_doc_names_the_files_a_path_crosses(path: str, traced: dict[str, set[str]]) -> None:
    doc = documented(path)
    assert traced[path] - doc == set(), "crossed, not in the doc"
    assert doc - traced[path] == set(), "in the doc, not crossed"


# The paths that cross more than six files still, and why (none now): each is a failure
# expected (strict: one that passes fails, so that its entry goes once it is fixed).
OVER: dict[str, str] = {}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, marks=pytest.mark.xfail(strict=True, reason=OVER[path]))
        if path in OVER
        else path
        for path in sorted(RUNS)
    ],
)
def test_a_path_crosses_at_most_six_files(path: str) -> None:
    doc = documented(path)
    assert len(doc) <= LIMIT, sorted(doc)
