"""Private data crossing peers that cannot read it (docs/graph.md, "Privacy tiers"): a
DTP graph peer between the author and a reader stores, merges and forwards the
ciphertexts -- live, and across a reader's removal -- refuses what the author did not
sign, and holds no plaintext in memory or on disk; Gun peers relay the same values as
the strings they are (dtp's Gun endpoint checks the author's signature first, gun's own
Node relay stores them blind)."""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import NotAReader
from dtp.graph import Graph, GraphServer, connect
from dtp.graph import _private as private
from dtp.graph.gun import GunServerThread, serve_in_thread
from dtp.graph.sync import sync_blocking
from dtp.identity.keys import HostIdentity
from tests.support.gun_wire import GunWireClient
from tests.support.polling import wait_for

SECRETS = ("the launch code is 0000", "meet at noon", "after bob left")


@pytest.fixture(scope="module")
def people() -> dict[str, HostIdentity]:
    return {name: HostIdentity.generate() for name in ("alice", "bob", "relay", "mallory")}


@pytest.fixture(params=["c", "python"])
def ham(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _wait(check: Callable[[], object]) -> bool:
    return wait_for(check, 60.0, 0.05)


@contextlib.contextmanager
def live(graph: Graph, server: GraphServer) -> Iterator[None]:
    """A live sync session of ``graph`` with ``server``, in a thread, for the block."""
    sock = dtp.socket.create_connection(server.address, 30, server_key=server.noise_public_key)
    sock.settimeout(None)

    def run() -> None:
        with contextlib.suppress(Exception):  # ended below
            sync_blocking(graph, sock)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sock.close()
        thread.join(30)


def _readable(graph: Graph, identity: HostIdentity, author: str, path: str) -> Any:
    try:
        return graph.private(path, identity, author=author).get()
    except NotAReader:
        return "not a reader"


def test_a_relay_that_is_no_reader_stores_and_forwards_over_dtp(
    tmp_path: Path, ham: str, people: dict[str, HostIdentity]
) -> None:
    alice, bob, mallory = people["alice"], people["bob"], people["mallory"]
    author = alice.sui_address
    relay = Graph(tmp_path / "relay.db", ham=ham)
    a, b, m = Graph(ham=ham), Graph(ham=ham), Graph(ham=ham)
    server = GraphServer(relay, ("127.0.0.1", 0), people["relay"])
    try:
        diary = a.private("diary", alice)
        diary.add_reader(bob)
        diary.put({"text": SECRETS[0], "day": {"text": SECRETS[1]}})
        connect(a, server.address, server_key=server.noise_public_key, timeout=30)

        with live(b, server):
            # bob, in a live session with the relay only, reads what alice wrote
            assert _wait(
                lambda: (
                    _readable(b, bob, author, "diary")
                    == {
                        "text": SECRETS[0],
                        "day": {"#": diary.soul + "/day"},
                    }
                )
            )
            assert _wait(lambda: _readable(b, bob, author, "diary/day") == {"text": SECRETS[1]})

            # the relay holds every field, and reads none
            assert sorted(relay.stored_node(diary.soul)) == sorted(a.stored_node(diary.soul))
            assert sorted(relay.stored_node(diary.key_soul)) == sorted(
                a.stored_node(diary.key_soul)
            )
            assert _readable(relay, people["relay"], author, "diary") == "not a reader"
            assert relay.private("diary", author=author).readers() == [bob.noise_public]

            # bob removed: alice's next write is forwarded to him live, unreadable
            diary.remove_reader(bob)
            diary.put({"later": SECRETS[2]})
            connect(a, server.address, server_key=server.noise_public_key, timeout=30)
            assert _wait(lambda: b.state_of(diary.soul, "later") is not None)
            bobs = b.private("diary", bob, author=author)
            with pytest.raises(NotAReader):
                bobs.get_field("later")
            assert bobs.get_field("text") == SECRETS[0]

            # mallory's forgery (her signature in alice's space), written past every local
            # check into her own graph, is refused by the relay and never reaches bob
            soul, field = diary.soul.encode(), b"text"

            class Forger:
                """Seals with mallory's key: what only a graph written by hand sends."""

                def seal(self, s: bytes, f: bytes, state: float, item: bytes) -> bytes:
                    raw = (
                        mallory.ed25519_public
                        + mallory.sign(private.signing_message(s, f, state, item))
                        + item
                    )
                    return b'"dtp/p1:' + base64.urlsafe_b64encode(raw).rstrip(b"=") + b'"'

                def open(self, s: bytes, f: bytes, state: float, stored: bytes) -> None:
                    raise AssertionError("no history is read here")

            body = bytes([private.VALUE]) + bytes(40) + bytes(48)
            m._write([(soul, field, body)], Forger())
            connect(m, server.address, server_key=server.noise_public_key, timeout=30)
            assert relay.stats["refused_by_reason"] == {private.WRONG_KEY: 1}
            assert sorted(relay.stored_node(diary.soul)) == sorted(a.stored_node(diary.soul))
            assert bobs.get_field("text") == SECRETS[0]
    finally:
        server.close()
        for g in (a, b, m):
            g.close()
    # nothing readable on the relay's disk either
    relay.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("relay.db*") if p.is_file())
    assert on_disk and not any(secret.encode() in on_disk for secret in SECRETS)


# -- Gun peers ---------------------------------------------------------------------------


@pytest.fixture
def gun_dir(tmp_path: Path) -> Path:
    d = tmp_path / "gun"
    (d / "lib").mkdir(parents=True)
    (d / "gun.js").write_text("/* gun */")
    (d / "sea.js").write_text("/* sea */")
    return d


def _gun_node(answer: dict[str, Any], soul: str) -> dict[str, Any]:
    node = answer.get("put", {}).get(soul)
    assert node is not None, answer
    return dict(node)


def test_gun_peers_relay_private_values_and_the_endpoint_checks_them(
    gun_dir: Path, people: dict[str, HostIdentity]
) -> None:
    alice, bob = people["alice"], people["bob"]
    source, target = Graph(None), Graph(None)
    diary = source.private("diary", alice)
    diary.add_reader(bob)
    diary.put({"text": SECRETS[0], "n": 42})
    with (
        serve_in_thread(source, gun_dir=gun_dir) as here,
        serve_in_thread(target, gun_dir=gun_dir) as there,
        GunWireClient(here.url) as reader,
        GunWireClient(there.url) as writer,
    ):
        # a Gun peer reads the two nodes as strings and puts them to the other endpoint
        nodes = {s: _gun_node(reader.get(s), s) for s in (diary.key_soul, diary.soul)}
        assert all(
            isinstance(v, str) and v.startswith(private.TEXT_PREFIX)
            for node in nodes.values()
            for k, v in node.items()
            if k != "_"
        )
        ack = writer.put(nodes)
        assert ack.get("ok") is True, ack
        assert target.private("diary", bob, author=alice.sui_address).get() == {
            "text": SECRETS[0],
            "n": 42,
        }

        # moved to another field, or at another state: refused whole, nothing stored
        text_node = nodes[diary.soul]
        moved = {
            "_": {"#": diary.soul, ">": {"other": text_node["_"][">"]["text"]}},
            "other": text_node["text"],
        }
        later = {
            "_": {"#": diary.soul, ">": {"text": text_node["_"][">"]["text"] + 1}},
            "text": text_node["n"],
        }
        for forged in (moved, later):
            ack = writer.put({diary.soul: forged})
            assert "private_bad_signature" in ack.get("err", ""), ack
        assert sorted(target.stored_node(diary.soul)) == sorted(source.stored_node(diary.soul))
        assert isinstance(here, GunServerThread)
    source.close()
    target.close()


def test_gun_s_own_relay_stores_and_serves_private_values_blind(
    gun_dir: Path, people: dict[str, HostIdentity]
) -> None:
    from bench import gun_peer

    if not gun_peer.available():
        pytest.skip("node and npm are needed to run gun's relay (tools/gun-peer)")
    gun_peer.install()
    alice, bob = people["alice"], people["bob"]
    source, target = Graph(None), Graph(None)
    diary = source.private("diary", alice)
    diary.add_reader(bob)
    diary.put({"text": SECRETS[1]})
    with (
        gun_peer.GunRelayProcess() as gun,
        serve_in_thread(source, gun_dir=gun_dir) as here,
        serve_in_thread(target, gun_dir=gun_dir) as there,
    ):
        souls = (diary.key_soul, diary.soul)
        with GunWireClient(here.url) as peer:
            nodes = {s: _gun_node(peer.get(s), s) for s in souls}
        with GunWireClient(gun.url) as peer:
            assert peer.put(nodes).get("err") is None
        # a fresh client reads them back from gun's relay (its radisk files), as stored
        with GunWireClient(gun.url) as peer:
            relayed = {s: _gun_node(peer.get(s), s) for s in souls}
        for s in souls:
            assert {k: v for k, v in relayed[s].items() if k != "_"} == {
                k: v for k, v in nodes[s].items() if k != "_"
            }
        with GunWireClient(there.url) as peer:
            assert peer.put(relayed).get("ok") is True
    assert target.private("diary", bob, author=alice.sui_address).get() == {"text": SECRETS[1]}
    source.close()
    target.close()
