"""The replicated graph store: convergence over real DTP while both sides
write, a session cut mid-sync and resumed, a crash between merge and flush repaired by
sync, hostile peers (typed errors, the session ended, other peers unaffected), and the
two HAM backends agreeing on equal-state ties and ``null`` values at the graph level."""

from __future__ import annotations

import contextlib
import os
import random
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import DTPError
from dtp.graph import Graph, GraphServer, connect, link, user_soul
from dtp.graph.sync import DATA, HELLO, VERSION, SyncSession, sync_blocking
from dtp.graph.values import encode_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.reference._limits import HAM_BATCH_VERSION
from dtp.native.types import HamUpdate
from tests.graph.wire import frame
from tests.support.backends import require_native
from tests.support.paths import ROOT
from tests.support.polling import wait_for


def _wait(check: Callable[[], object], timeout: float = 60.0) -> bool:
    return wait_for(check, timeout, 0.05)


def _live(graph: Graph, server: GraphServer) -> tuple[dtp.socket.DTPSocket, threading.Thread]:
    """A live sync session of ``graph`` with ``server`` in a thread."""
    sock = dtp.socket.create_connection(server.address, 30, server_key=server.noise_public_key)
    sock.settimeout(None)

    def run() -> None:
        with contextlib.suppress(Exception):  # ended by the test (abort / close)
            sync_blocking(graph, sock)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return sock, thread


# -- convergence over DTP while both sides write -----------------------------------------------


def test_two_peers_writing_while_syncing_over_dtp_converge(tmp_path: Path) -> None:
    a = Graph(tmp_path / "a.db")
    b = Graph(tmp_path / "b.db")
    for i in range(200):  # different starting tables: the comparison has work to do
        a.put(f"a{i}", {"x": i})
        b.put(f"b{i}", {"x": i})
    server = GraphServer(a, ("127.0.0.1", 0), HostIdentity.generate())
    sock, thread = _live(b, server)
    try:

        def writer(graph: Graph, tag: str) -> None:
            rnd = random.Random(tag)
            for i in range(400):
                # shared fields, and null (the graph's "deleted") as a value among others
                value = None if rnd.random() < 0.3 else f"{tag}{i}"
                graph.put(f"shared{rnd.randrange(20)}", {"v": value, "by": tag})

        writers = [threading.Thread(target=writer, args=(g, t)) for g, t in ((a, "a"), (b, "b"))]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        assert _wait(lambda: a.root_summary() == b.root_summary())
        assert a.snapshot() == b.snapshot()
        assert len(a) == 200 + 200 + 40
    finally:
        sock.close()
        thread.join(30)
        server.close()
        a.close()
        b.close()
    # what each side merged reached its file: a restart holds the same table
    with Graph(tmp_path / "a.db") as a2, Graph(tmp_path / "b.db") as b2:
        assert a2.snapshot() == b2.snapshot()


def test_a_session_cut_mid_sync_resumes_without_loss_or_duplicates() -> None:
    a = Graph()
    for i in range(10000):  # about 2.4 MB: the push takes several batches
        a.put(f"n{i}", {"v": "x" * 200, "i": i})
    b = Graph()
    server = GraphServer(a, ("127.0.0.1", 0), HostIdentity.generate())
    try:
        # b's session, driven by hand so that the cut falls inside the server's push
        session = SyncSession(b)
        session.start()
        sock = dtp.socket.create_connection(server.address, 30, server_key=server.noise_public_key)
        sock.sendall(session.data_to_send())
        while not len(b):  # the first batch of the push (about 1 MiB) is in
            data = sock.recv(64 << 10)
            assert data
            session.receive_data(data)
        sock.abort("cut mid-sync")
        session.close()
        assert 0 < len(b) < len(a)  # a part arrived, not all
        assert not session.synced
        assert _wait(lambda: server.active == 0)  # the server's session ended with it
        a.put("after-cut", {"v": 1})  # written while b is away
        connect(b, server.address, server_key=server.noise_public_key, timeout=30)
        assert b.snapshot() == a.snapshot()
        assert len(b) == len(a) == 20001
    finally:
        server.close()
        a.close()
        b.close()


# -- a crash between merge and flush -----------------------------------------------------------


def test_a_crash_before_the_flush_is_repaired_by_the_next_sync(tmp_path: Path) -> None:
    peer = Graph()
    server = GraphServer(peer, ("127.0.0.1", 0), HostIdentity.generate())
    path = tmp_path / "crash.db"
    child = textwrap.dedent(
        f"""
        import os
        from dtp.graph import Graph, connect
        g = Graph({str(path)!r}, flush_interval=3600)
        g.put("kept", {{"v": 0}})
        g.flush()  # on disk
        states = [g.put(f"lost{{i}}", {{"v": i}}) for i in range(5)]  # buffered only
        connect(g, ("127.0.0.1", {server.address[1]}),
                server_key=bytes.fromhex({server.noise_public_key.hex()!r}), timeout=30)
        print(max(states), flush=True)
        os._exit(0)  # no close(), no flush: the buffered writes die with the process
        """
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        lost_state = float(out.stdout.strip())
        assert _wait(lambda: len(peer) == 6)
        graph = Graph(path)
        try:
            assert graph.get("kept") == {"v": 0}
            assert graph.get("lost0") is None  # not flushed: gone from the file
            state = graph.put("lost0", {"v": "rewritten"})
            assert state > lost_state  # the clock reservation survived the crash
            connect(graph, server.address, server_key=server.noise_public_key, timeout=30)
            assert graph.snapshot() == peer.snapshot()  # the lost writes came back
            assert graph.get_field("lost0", "v") == "rewritten"
            assert peer.get_field("lost0", "v") == "rewritten"
            graph.flush()
        finally:
            graph.close()
        with Graph(path) as again:
            assert len(again) == 6
    finally:
        server.close()
        peer.close()


# -- hostile peers ---------------------------------------------------------------------------------


def _hostile(
    server: GraphServer, messages: list[bytes], until: Callable[[], bool] | None = None
) -> bytes:
    """Send ``messages`` after a HELLO; everything the server sent until it closed (or,
    with ``until``, until that holds: a session that is not ended stays open)."""
    sock = dtp.socket.create_connection(server.address, 30, server_key=server.noise_public_key)
    got = bytearray()
    try:
        sock.sendall(frame([HELLO, VERSION, os.urandom(16), 0, 0]) + b"".join(messages))
        if until is not None:
            assert _wait(until)
            return b""
        while True:
            try:
                data = sock.recv(1 << 16)
            except DTPError:
                break
            if not data:
                break
            got += data
    finally:
        sock.close()
    return bytes(got)


@pytest.mark.parametrize(
    "name, message",
    [
        ("malformed batch", frame([DATA, b"\x01\x05\x00\x00\x00junk"])),
        (
            "count beyond the limit",
            frame([DATA, bytes([HAM_BATCH_VERSION]) + struct.pack("<I", 4_000_001)]),
        ),
        ("DATA not bytes", frame([DATA, "text"])),
        ("SUM never asked for", frame([2, 1, 7, []])),
        ("oversized frame", struct.pack(">I", 64 << 20)),
    ],
)
def test_a_hostile_peer_ends_only_its_own_session(name: str, message: bytes) -> None:
    graph = Graph()
    graph.put("public", {"v": 1})
    server = GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate())
    try:
        honest = Graph()
        sock, thread = _live(honest, server)  # a live peer, connected throughout
        assert _wait(lambda: len(honest) == 1)
        _hostile(server, [message])
        assert _wait(lambda: server.errors == 1)
        graph.put("public", {"v": 2})
        assert _wait(lambda: honest.get_field("public", "v") == 2)
        assert len(graph) == 1
        sock.close()
        thread.join(30)
        honest.close()
    finally:
        server.close()
        graph.close()


def test_a_value_too_large_and_an_unsigned_user_space_write_are_refused() -> None:
    graph = Graph()
    server = GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate())
    try:
        owner = HostIdentity.generate()
        soul = user_soul(owner, "profile").encode()
        unsigned = encode_ham_batch([HamUpdate(soul, b"name", 1.0, encode_value("mallory"))])
        forged = encode_ham_batch(
            [HamUpdate(soul, b"name", 1.0, b"\x00" * 96 + encode_value("mallory"))]
        )
        _hostile(
            server,
            [frame([DATA, unsigned]), frame([DATA, forged])],
            until=lambda: graph.stats["refused"] == 2,
        )
        assert _wait(lambda: server.sessions == 1)
        assert len(graph) == 0
        assert graph.stats["refused"] == 2
        assert server.errors == 0  # refused, not a protocol error: the session went on

        big = b"\x01\x01\x00\x00\x00\x01s\x01f" + struct.pack("<d", 1.0)
        big += b"\x80\x10\x00\x01" + b"x" * ((1 << 20) + 1)  # a value of 1 MiB + 1
        _hostile(server, [frame([DATA, big])])
        assert _wait(lambda: server.errors == 1)
        assert len(graph) == 0
    finally:
        server.close()
        graph.close()


def test_a_hello_claiming_huge_counts_costs_a_bounded_exchange() -> None:
    graph = Graph()
    for i in range(100):
        graph.put(f"n{i}", {"v": i})
    session_out: list[bytes] = []
    session = SyncSession(graph)
    session.start()
    session.receive_data(frame([HELLO, VERSION, os.urandom(16), (1 << 32) - 1, 12345]))
    session_out.append(session.data_to_send())
    # it compares (one SUM of the root's children), it does not push the table blindly
    assert session.stats["summaries_sent"] == 1
    assert session.stats["batches_sent"] == 0
    assert sum(len(b) for b in session_out) < 64 << 10
    session.close()
    graph.close()


# -- the two backends, at the graph level --------------------------------------------------------


def test_c_and_python_backends_agree_on_ties_and_null_values() -> None:
    require_native()
    for seed in range(40):
        rnd = random.Random(seed)
        clock = [1000.0]
        cap = rnd.choice([0, 200, 1 << 20])

        def now(c: list[float] = clock) -> float:
            return c[0]

        graphs = [Graph(ham=h, now_ms=now, max_deferred_bytes=cap) for h in ("c", "python")]
        for _ in range(30):
            batch = encode_ham_batch(
                [
                    HamUpdate(
                        f"s{rnd.randrange(3)}".encode(),
                        f"f{rnd.randrange(2)}".encode(),
                        float(rnd.choice([0, 1, 2, 1500, 3000, -0.0])),  # equal states often
                        encode_value(rnd.choice([None, 1, "a", "b", 1.5, link("a")])),
                    )
                    for _ in range(rnd.randrange(6))
                ]
            )
            reports = [g.merge(batch) for g in graphs]
            assert reports[0] == reports[1]
            if rnd.random() < 0.2:
                clock[0] += 1000
                assert graphs[0].advance() == graphs[1].advance()
            assert graphs[0].snapshot() == graphs[1].snapshot()
            assert graphs[0].root_summary() == graphs[1].root_summary()
        for g in graphs:
            g.close()
