"""Rules on the Gun endpoint, spoken from Python on Gun's wire: a put with a field the
graph's rules refuse is answered ``err`` naming the rule, and nothing of it is stored
(nor sent to the Gun peers following the node, nor written to the SQLite file); a SEA
user's put shows the rule its signer and the value inside the signature."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.graph import Graph
from dtp.graph.gun import GunServerThread, serve_in_thread
from dtp.graph.rules import Update
from dtp.graph.sea import SeaPair
from tests.support.gun_wire import GunWireClient, node

NOW = 1.7e12


def short(update: Update) -> str | None:
    return None if isinstance(update.value, str) and len(update.value) <= 8 else "too long"


@pytest.fixture
def gun_dir(tmp_path: Path) -> Path:
    d = tmp_path / "gun"
    d.mkdir()
    (d / "gun.js").write_text("/* gun */")
    (d / "sea.js").write_text("/* sea */")
    return d


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[Graph]:
    g = Graph(tmp_path / "g.db", now_ms=lambda: NOW)
    g.rules.add("short", short, prefix="tags/")
    yield g
    g.close()


@pytest.fixture
def server(graph: Graph, gun_dir: Path) -> Iterator[GunServerThread]:
    with serve_in_thread(graph, gun_dir=gun_dir) as srv:
        yield srv


def test_a_put_a_rule_refuses_is_answered_err_and_nothing_is_stored(
    server: GunServerThread, graph: Graph, tmp_path: Path
) -> None:
    with GunWireClient(server.url) as writer, GunWireClient(server.url) as follower:
        assert "put" not in follower.get("tags/1")  # (follows the node from now on)
        ok = writer.put({"tags/1": node("tags/1", {"a": "fine"}, NOW - 5)})
        assert ok.get("ok") is True
        follower.wait_for(lambda m: "put" in m and "tags/1" in m["put"] and "@" not in m)
        ack = writer.put(
            {
                "tags/1": node("tags/1", {"b": "short"}, NOW - 4),
                "tags/2": node("tags/2", {"c": "a value far too long"}, NOW - 4),
            }
        )
        assert "ok" not in ack
        assert "refused by rule 'short': too long" in ack["err"]
        assert "'tags/2'.'c'" in ack["err"]
        # taken whole or not at all: tags/1.b, which the rule lets in, is not stored
        assert graph.get("tags/1") == {"a": "fine"} and "tags/2" not in graph
        assert graph.stats["refused_by_rule"] == {"short": 1}
        assert server.server.relay.stats["refused_puts"] == 1
        late = follower.quiet(0.3)
        assert not [m for m in late if "put" in m and "b" in m["put"].get("tags/1", {})]
    graph.close()
    reopened = Graph(tmp_path / "g.db")
    assert set(reopened.snapshot()) == {(b"tags/1", b"a")}
    reopened.close()


def test_a_sea_users_put_shows_the_rule_its_signer(server: GunServerThread, graph: Graph) -> None:
    seen: list[Update] = []

    def no_spam(update: Update) -> str | None:
        seen.append(update)
        return "no spam" if update.value == "spam" else None

    graph.rules.add("no-spam", no_spam, prefix="~")
    alice = SeaPair.generate()
    soul = alice.soul + "/profile"
    with GunWireClient(server.url) as peer:
        good = alice.sign(soul, "name", "Alice", NOW - 3)
        assert peer.put({soul: node(soul, {"name": good}, NOW - 3)}).get("ok") is True
        (update,) = seen
        assert (update.author, update.value, update.local) == (alice.pub, "Alice", False)
        spam = alice.sign(soul, "name", "spam", NOW - 2)
        ack = peer.put({soul: node(soul, {"name": spam}, NOW - 2)})
        assert "refused by rule 'no-spam': no spam" in ack["err"]
    assert graph.state_of(soul, "name") == NOW - 3
