"""Rules on DTP graph sync, between real DTP peers: what the server's rules refuse of a
client's updates is not stored (not in its SQLite file either), is counted by rule, and
is reported to the client (REFUSED) -- a one-shot catch-up returns with the whole report,
a live session hears of refusals as they happen. An update refused only because it came
before what it depends on is let in once the peer's END is in. A peer that did not say
it reads REFUSED (an older one) is sent none. Malformed REFUSED messages end the session."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

import dtp.aio
import dtp.socket
from dtp.graph import Graph, GraphServer, GraphSyncError, SyncSession, connect, sync_stream
from dtp.graph.rules import Update
from dtp.graph.sync import DATA, END, HELLO, REFUSED, VERSION, WANT
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from tests.graph.wire import frame


def short(update: Update) -> str | None:
    return None if isinstance(update.value, str) and len(update.value) <= 8 else "too long"


def wait_for(test: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)


def test_a_one_shot_catch_up_returns_with_what_the_server_refused(tmp_path: Path) -> None:
    served = Graph(tmp_path / "server.db")
    served.rules.add("short", short, prefix="tags/")
    client = Graph(tmp_path / "client.db")
    client.put("tags/1", {"a": "ok", "b": "much too long"})
    client.put("tags/2", {"c": 12345})
    client.put("notes/1", {"text": "under no rule"})
    with GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        session = connect(client, server.address, server_key=server.noise_public_key, timeout=10)
    assert session.synced and session.peer_reports and session.peer_report_final
    got = sorted((r.soul, r.field, r.reason, r.rule, r.message) for r in session.peer_refusals)
    assert got == [
        ("tags/1", "b", "rule", "short", "too long"),
        ("tags/2", "c", "rule", "short", "too long"),
    ]
    assert session.stats["refused_by_peer"] == 2
    assert client.stats["refused_by_peers"] == 2
    assert served.stats["refused_by_rule"] == {"short": 2}
    assert served.stats["refused_by_reason"] == {"rule": 2}
    assert served.get("tags/1") == {"a": "ok"} and "tags/2" not in served
    assert served.get("notes/1") == {"text": "under no rule"}
    served.close()
    stored = Graph(tmp_path / "server.db").snapshot()
    assert (b"tags/1", b"b") not in stored and (b"tags/2", b"c") not in stored
    assert (b"tags/1", b"a") in stored
    client.close()


@pytest.mark.parametrize("ham", ["c", "python"])
def test_what_came_before_its_dependency_is_let_in_at_the_end(ham: str) -> None:
    """The comparison pushes the table in summary order, a batch of about 1 MiB at a
    time: a child may come before its parent, in the same batch or an earlier one. It
    is held back and tried again once the peer's END is in."""
    served = Graph(ham=ham)
    refused_first: list[str] = []

    def needs_parent(update: Update) -> str | None:
        parent = "parent/" + update.soul.split("/")[1]
        if parent in served:
            return None
        refused_first.append(update.soul)
        return "no parent yet"

    served.rules.add("parent", needs_parent, prefix="child/")
    client = Graph(ham=ham)
    pad = "x" * 1000  # (about 1.7 MB in all: the push takes two batches or more)
    for i in range(800):
        client.put(f"child/{i}", {"pad": pad})
        client.put(f"parent/{i}", {"pad": pad})
    with GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        session = connect(client, server.address, server_key=server.noise_public_key, timeout=30)
    assert refused_first, "no child came before its parent: the test proves nothing"
    assert list(session.peer_refusals) == [] and session.stats["refused_by_peer"] == 0
    assert served.stats["refused"] == 0 and served.stats["refused_by_rule"] == {}
    assert served.snapshot() == client.snapshot()


def test_a_live_session_hears_of_refusals_as_they_happen() -> None:
    served = Graph()
    served.rules.add("short", short, prefix="tags/")
    client = Graph()
    with GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        thread = threading.Thread(
            target=connect,
            args=(client, server.address),
            kwargs={"server_key": server.noise_public_key, "until_synced": False},
            daemon=True,
        )
        thread.start()
        client.put("tags/1", {"a": "ok"})
        wait_for(lambda: served.get("tags/1") == {"a": "ok"})
        client.put("tags/1", {"a": "now it is too long"})
        wait_for(lambda: client.stats["refused_by_peers"] == 1)
        assert served.get("tags/1") == {"a": "ok"}
        assert served.stats["refused_by_rule"] == {"short": 1}
    thread.join(10)
    assert not thread.is_alive()


def test_the_asyncio_runner_waits_for_the_final_report() -> None:
    async def main() -> None:
        served, client = Graph(), Graph()
        served.rules.add("short", short, prefix="tags/")
        client.put("tags/1", {"a": "far too long"})
        identity = HostIdentity.generate()
        done = asyncio.Event()

        async def handle(reader: Any, writer: Any) -> None:
            await sync_stream(served, reader, writer)
            writer.close()
            done.set()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", server.address[1], server_key=identity.noise_public
        )
        session = await sync_stream(client, reader, writer, until_synced=True)
        assert session.peer_report_final
        assert [(r.soul, r.rule) for r in session.peer_refusals] == [("tags/1", "short")]
        writer.close()
        await asyncio.wait_for(done.wait(), 10)
        assert "tags/1" not in served
        server.close()
        await server.wait_closed()

    asyncio.run(main())


class RawPeer:
    """A DTP peer speaking graph sync by hand (what the messages are, not how a
    session makes them)."""

    def __init__(self, server: GraphServer) -> None:
        self.sock = dtp.socket.create_connection(
            server.address, 10, server_key=server.noise_public_key
        )
        self.buf = b""
        self.received: list[list[Any]] = []

    def send(self, *messages: list[Any]) -> None:
        self.sock.sendall(b"".join(frame(m) for m in messages))

    def read_until(self, test: Callable[[list[Any]], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(test(m) for m in self.received):
            assert time.monotonic() < deadline, f"not within the time: {self.received}"
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            assert data, "the server closed the stream"
            self.buf += data
            while len(self.buf) >= 4:
                size = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) < 4 + size:
                    break
                body, self.buf = self.buf[4 : 4 + size], self.buf[4 + size :]
                self.received.append(msgpack.unpackb(body, raw=False))

    def close(self) -> None:
        self.sock.close()


def bad_tag_batch() -> bytes:
    return encode_ham_batch([HamUpdate(b"tags/1", b"a", 1.0e12, b'"much too long"')])


def test_an_older_peer_is_sent_no_refused() -> None:
    """A peer of the first version-2 release sends no empty WANT and ends its session at
    a message type it does not know: it is told nothing, and the update is still
    refused."""
    served = Graph()
    served.rules.add("short", short, prefix="tags/")
    with GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        peer = RawPeer(server)
        peer.send([HELLO, VERSION, b"o" * 16, 0, 0], [DATA, bad_tag_batch()], [END])
        peer.read_until(lambda m: m[0] == END)
        time.sleep(0.3)
        peer.read_until(lambda m: True)
        assert [m[0] for m in peer.received if m[0] not in (HELLO, WANT, DATA)] == [END]
        assert served.stats["refused_by_rule"] == {"short": 1} and "tags/1" not in served
        peer.close()


def test_a_peer_that_reads_refused_hears_each_and_the_final_one() -> None:
    served = Graph()
    served.rules.add("short", short, prefix="tags/")
    with GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        peer = RawPeer(server)
        peer.send([HELLO, VERSION, b"n" * 16, 0, 0], [WANT, []], [DATA, bad_tag_batch()], [END])
        peer.read_until(lambda m: m[0] == REFUSED and m[3] is True)
        (report,) = [m for m in peer.received if m[0] == REFUSED]
        assert report == [REFUSED, 1, [[b"tags/1", b"a", 1.0e12, "rule:short", "too long"]], True]
        # its own capability announcement came right after its HELLO
        assert [m for m in peer.received if m[0] != DATA][:2] == [
            [HELLO, VERSION, served.replica_id, 0, 0],
            [WANT, []],
        ]
        peer.close()


def _session_after_hello(graph: Graph) -> SyncSession:
    session = SyncSession(graph)
    session.start()
    session.data_to_send()
    session.receive_data(frame([HELLO, VERSION, b"p" * 16, 0, 0]))
    return session


@pytest.mark.parametrize(
    "message",
    [
        [REFUSED, 0, []],
        [REFUSED, -1, [], False],
        [REFUSED, 0, [[b"s", b"f", 1.0, "rule:x", "m"]], False],  # count below the entries
        [REFUSED, 1, "entries", False],
        [REFUSED, 1, [[b"s", b"f", 1.0, "r", "m"]], 1],
        [REFUSED, 1, [[b"s", b"f", 1, "r", "m"]], False],  # an int state
        [REFUSED, 1, [[b"", b"f", 1.0, "r", "m"]], False],
        [REFUSED, 1, [[b"s", b"f", 1.0, "", "m"]], False],
        [REFUSED, 1, [[b"s", b"f", 1.0, "r" * 81, "m"]], False],
        [REFUSED, 1, [[b"s", b"f", 1.0, "r", "m" * 1025]], False],
        [REFUSED, 1, [["s", b"f", 1.0, "r", "m"]], False],
        [REFUSED, 65, [[b"s", b"f", 1.0, "r", "m"]] * 65, False],
        [REFUSED, 0, [], True],  # final before our END
    ],
)
def test_a_malformed_refused_ends_the_session(message: list[Any]) -> None:
    graph = Graph()
    graph.put("x", {"a": 1})  # (our END waits for our push: not sent yet)
    session = _session_after_hello(graph)
    with pytest.raises(GraphSyncError):
        session.receive_data(frame(message))


def test_a_refused_is_read_and_a_second_final_is_an_error() -> None:
    graph = Graph()
    session = _session_after_hello(graph)  # (an empty table: our END went at HELLO)
    assert session.end_sent
    session.receive_data(frame([REFUSED, 3, [[b"s", b"f", 1.0, "rule:r", "m"]], False]))
    session.receive_data(frame([REFUSED, 1, [[b"s2", b"f", 2.0, "wrong_key", "w"]], True]))
    got = [(r.soul, r.reason, r.rule, r.message) for r in session.peer_refusals]
    assert got == [("s", "rule", "r", "m"), ("s2", "wrong_key", None, "w")]
    assert session.stats["refused_by_peer"] == 4 and graph.stats["refused_by_peers"] == 4
    assert session.peer_report_final
    with pytest.raises(GraphSyncError):
        session.receive_data(frame([REFUSED, 0, [], True]))


def _sync(graph: Graph, served: Graph, identity: HostIdentity) -> SyncSession:
    with GraphServer(served, ("127.0.0.1", 0), identity) as server:
        return connect(graph, server.address, server_key=server.noise_public_key, timeout=10)


def test_a_peer_is_told_of_a_refused_version_once(tmp_path: Path) -> None:
    """The client pushes its refused value at every session (the tables differ); the
    server describes it once per version and peer, remembered in its file."""
    identity = HostIdentity.generate()
    served = Graph(tmp_path / "server.db")
    served.rules.add("short", short, prefix="tags/")
    client = Graph(tmp_path / "client.db")
    client.put("tags/1", {"a": "much too long"})
    first = _sync(client, served, identity)
    assert [(r.soul, r.field, r.rule) for r in first.peer_refusals] == [("tags/1", "a", "short")]
    second = _sync(client, served, identity)
    assert second.synced and second.peer_report_final
    assert list(second.peer_refusals) == [] and second.stats["refused_by_peer"] == 0
    assert client.stats["refused_by_peers"] == 1
    # refused each time all the same, and counted so
    assert served.stats["refused_by_rule"] == {"short": 2} and "tags/1" not in served

    served.close()  # a restart: the file remembers what was told
    served = Graph(tmp_path / "server.db")
    served.rules.add("short", short, prefix="tags/")
    third = _sync(client, served, identity)
    assert third.peer_report_final and list(third.peer_refusals) == []
    assert served.stats["refused_by_rule"] == {"short": 1}

    # a newer version of the field is another refusal, told
    state = client.put("tags/1", {"a": "longer still, and newer"})
    fourth = _sync(client, served, identity)
    assert [(r.field, r.state) for r in fourth.peer_refusals] == [("a", state)]
    assert list(_sync(client, served, identity).peer_refusals) == []
    # and another peer sending the same version is told too
    other = Graph()
    for batch in client.export():
        other.merge(batch)
    assert [(r.field, r.state) for r in _sync(other, served, identity).peer_refusals] == [
        ("a", state)
    ]
    assert client.stats["refused_by_peers"] == 2
    served.close()
    client.close()


def test_the_wire_says_nothing_of_what_the_peer_was_told() -> None:
    """A peer (known by the replica id of its HELLO) sending again what was refused is
    sent a final REFUSED that counts none of it; under another replica id it is told."""
    served = Graph()
    served.rules.add("short", short, prefix="tags/")
    told = [REFUSED, 1, [[b"tags/1", b"a", 1.0e12, "rule:short", "too long"]], True]
    with GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        for replica, expected in ((b"n" * 16, told), (b"n" * 16, [REFUSED, 0, [], True])):
            peer = RawPeer(server)
            peer.send([HELLO, VERSION, replica, 0, 0], [WANT, []], [DATA, bad_tag_batch()], [END])
            peer.read_until(lambda m: m[0] == REFUSED and m[3] is True)
            assert [m for m in peer.received if m[0] == REFUSED] == [expected]
            peer.close()
        peer = RawPeer(server)
        peer.send([HELLO, VERSION, b"o" * 16, 0, 0], [WANT, []], [DATA, bad_tag_batch()], [END])
        peer.read_until(lambda m: m[0] == REFUSED and m[3] is True)
        assert [m for m in peer.received if m[0] == REFUSED] == [told]
        peer.close()
    assert served.stats["refused_by_rule"] == {"short": 3}
