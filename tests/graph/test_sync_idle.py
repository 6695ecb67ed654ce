"""A live graph sync survives idleness.

``sync_blocking`` read with the socket's timeout for the whole session: on a socket made
with ``create_connection(..., timeout=...)``, or through ``connect(..., until_synced=False,
timeout=...)``, a session in which nobody wrote for that long ended with DTPTimeoutError,
and later changes never arrived -- while docs/graph.md says a live session lasts until
the peer closes. The timeout now bounds the initial exchange (a peer that never answers
it still times out, typed) but not the quiet that follows.

Timings: a 1.5 s socket timeout and 5 s of quiet; what must arrive has 60 s.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

import dtp.socket
from dtp.errors import DTPTimeoutError, LocalProtocolError
from dtp.graph import Graph, GraphServer, SyncSession, connect, sync_blocking
from dtp.graph.sync import HELLO, VERSION
from dtp.identity.keys import HostIdentity
from tests.support.polling import wait_for

SOCKET_TIMEOUT = 1.5
QUIET = 5.0  # several socket timeouts with no change at all
PATIENCE = 60.0  # for anything that must happen (a loaded 2-core machine)


class _Run:
    """A call in a thread of its own: what it returned or raised, once it ended."""

    def __init__(self, call: Callable[[], SyncSession]) -> None:
        self.result: SyncSession | None = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None

        def run() -> None:
            try:
                self.result = call()
            except BaseException as exc:  # reported by the test's assertions
                self.error = exc
            finally:
                self.ended_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float = PATIENCE) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the session did not end"


@pytest.fixture
def graphs(tmp_path: Path) -> Iterator[tuple[Graph, Graph]]:
    served = Graph(tmp_path / "served.db")
    mine = Graph(tmp_path / "mine.db")
    yield served, mine
    mine.close()
    served.close()


def _seen(graph: Graph, soul: str, field: str, value: object) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return graph.get_field(soul, field) == value
        except LookupError:
            return False

    return check


def _assert_survives_quiet(run: _Run) -> None:
    time.sleep(QUIET)
    assert run.alive(), f"the live session ended while idle: {run.error!r}"


def test_sync_blocking_on_a_socket_with_a_timeout_survives_idleness(
    graphs: tuple[Graph, Graph],
) -> None:
    served, mine = graphs
    served.put("doc", {"title": "v1"})
    peer_socks: list[dtp.socket.DTPSocket] = []

    def handler(sock: dtp.socket.DTPSocket) -> None:
        peer_socks.append(sock)
        try:
            sync_blocking(served, sock)
        except Exception:  # the test ends this side (shutdown), then the client leaves
            pass
        finally:
            sock.close()

    server = dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate())
    threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
    sock = dtp.socket.create_connection(
        server.address, SOCKET_TIMEOUT, server_key=server.noise_public_key
    )
    try:
        run = _Run(lambda: sync_blocking(mine, sock))
        assert wait_for(_seen(mine, "doc", "title", "v1"), PATIENCE)
        _assert_survives_quiet(run)
        # both ways, after the quiet
        served.set("doc", "title", "v2")
        assert wait_for(_seen(mine, "doc", "title", "v2"), PATIENCE), run.error
        mine.set("doc", "note", "from mine")
        assert wait_for(_seen(served, "doc", "note", "from mine"), PATIENCE), run.error
        # the peer closing its side still ends the session, as it should: returned
        assert peer_socks
        peer_socks[0].shutdown(socket.SHUT_WR)
        run.join()
        assert run.error is None
        assert run.result is not None and run.result.synced
    finally:
        sock.close()
        server.close()


def test_connect_live_with_a_timeout_survives_idleness_and_ends_with_the_graph(
    graphs: tuple[Graph, Graph],
) -> None:
    served, mine = graphs
    served.put("doc", {"v": 1})
    with GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        run = _Run(
            lambda: connect(
                mine,
                server.address,
                server_key=server.noise_public_key,
                until_synced=False,
                timeout=SOCKET_TIMEOUT,
            )
        )
        assert wait_for(_seen(mine, "doc", "v", 1), PATIENCE)
        _assert_survives_quiet(run)
        served.set("doc", "v", 2)
        assert wait_for(_seen(mine, "doc", "v", 2), PATIENCE), run.error
        # closing our graph ends the session (typed), though the peer stays connected
        mine.close()
        run.join()
        assert isinstance(run.error, LocalProtocolError), repr(run.error)
        assert wait_for(lambda: server.counts()["active"] == 0, PATIENCE)


def test_a_peer_that_never_finishes_the_initial_sync_still_times_out() -> None:
    """Kept as it was (a guard, not the regression): the timeout still bounds the
    initial exchange of a live session -- a peer silent from the start, and one that
    sends its HELLO but never its END."""
    release = threading.Event()
    hello = msgpack.packb([HELLO, VERSION, b"\x01" * 16, 3, 12345], use_bin_type=True)

    def handler(sock: dtp.socket.DTPSocket) -> None:
        try:
            if sock.recv(1) and next(answers):  # the client's HELLO has come
                sock.sendall(struct.pack(">I", len(hello)) + hello)
            release.wait(PATIENCE)
        except Exception:
            pass
        finally:
            sock.close()

    answers = iter([False, True])  # the first client hears nothing, the second a HELLO
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate())
    threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
    try:
        for _ in range(2):
            with Graph() as graph:
                started = time.monotonic()
                with pytest.raises(DTPTimeoutError):
                    connect(
                        graph,
                        server.address,
                        server_key=server.noise_public_key,
                        until_synced=False,
                        timeout=SOCKET_TIMEOUT,
                    )
                assert time.monotonic() - started < PATIENCE
    finally:
        release.set()
        server.close()
