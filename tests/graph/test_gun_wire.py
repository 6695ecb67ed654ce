"""dtp's Gun endpoint (dtp.graph.gun) on Gun's wire, spoken from Python: acknowledgements,
answers, live updates, and every kind of put it must refuse -- with an error
acknowledgement and nothing stored (tests/graph/test_gun_node.py does the same with
gun.js itself; test_gun_browser.py with a browser)."""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.graph import Graph, link, namespace, sea
from dtp.graph.gun import GunServerThread, serve_in_thread
from dtp.graph.gun._relay import GunRelay
from dtp.identity.keys import HostIdentity
from tests.support.gun_wire import GunWireClient, node

NOW = 1.7e12


@pytest.fixture
def graph() -> Iterator[Graph]:
    g = Graph(None, now_ms=lambda: NOW)
    yield g
    g.close()


@pytest.fixture
def gun_dir(tmp_path: Path) -> Path:
    d = tmp_path / "gun"
    (d / "lib").mkdir(parents=True)
    (d / "gun.js").write_text("/* gun */")
    (d / "sea.js").write_text("/* sea */")
    (d / "lib" / "radix.js").write_text("/* radix */")
    (tmp_path / "secret.js").write_text("/* not served */")
    return d


@pytest.fixture
def server(graph: Graph, gun_dir: Path) -> Iterator[GunServerThread]:
    with serve_in_thread(graph, gun_dir=gun_dir) as srv:
        yield srv


def test_greeting_and_dam(server: GunServerThread) -> None:
    with GunWireClient(server.url) as peer:
        hello = peer.wait_for(lambda m: m.get("dam") == "?")
        assert isinstance(hello["pid"], str) and hello["#"]
        # a greeting is answered; an answer to ours is not
        peer.send({"#": "hi1", "dam": "?", "pid": "mypid"})
        answer = peer.answer("hi1")
        assert answer["dam"] == "?" and answer["pid"] == hello["pid"]
        peer.send({"#": "hi2", "dam": "?", "pid": "mypid", "@": hello["#"]})
        peer.send({"#": "hi3", "dam": "hi"})
        assert not [m for m in peer.quiet(0.3) if m.get("@") in ("hi2", "hi3")]


def test_put_ack_get_and_the_values_as_gun_writes_them(
    server: GunServerThread, graph: Graph
) -> None:
    values = {
        "text": "héllo 😀",
        "int": 42,
        "tiny": 1e-7,
        "big": 1e21,
        "frac": 0.5,
        "yes": True,
        "nothing": None,
        "friend": {"#": "user/2"},
    }
    with GunWireClient(server.url) as peer:
        ack = peer.put({"user/1": node("user/1", values, NOW - 5)})
        assert ack.get("ok") is True and "err" not in ack
        assert graph.get("user/1") == {**values, "friend": link("user/2")}
        assert graph.state_of("user/1", "tiny") == NOW - 5
        # the values are held in Gun's text (what gun's tie-break compares)
        stored = {f.decode(): v for f, _, v in graph.stored_node("user/1")}
        assert stored["tiny"] == b"1e-7" and stored["big"] == b"1e+21" and stored["int"] == b"42"

        answer = peer.get("user/1")
        got = answer["put"]["user/1"]
        assert got["_"]["#"] == "user/1"
        assert got["_"][">"] == dict.fromkeys(values, NOW - 5)
        assert {k: v for k, v in got.items() if k != "_"} == values
        one = peer.get("user/1", "text")["put"]["user/1"]
        assert {k for k in one if k != "_"} == {"text"}
        # nothing there: an answer with no put
        assert "put" not in peer.get("user/9")
        assert "put" not in peer.get("user/1", "nope")


def test_lex_gets(server: GunServerThread, graph: Graph) -> None:
    graph.put("list", {"a1": 1, "a2": 2, "b1": 3})
    graph.put("list2", {"x": 1})
    with GunWireClient(server.url) as peer:
        prefix = peer.get("list", {"*": "a"})["put"]["list"]
        assert {k for k in prefix if k != "_"} == {"a1", "a2"}
        ranged = peer.get("list", {">": "a2", "<": "b1"})["put"]["list"]
        assert {k for k in ranged if k != "_"} == {"a2", "b1"}
        souls = peer.get({"*": "list"})["put"]
        assert set(souls) == {"list", "list2"}


@pytest.mark.parametrize(
    ("put", "why"),
    [
        ({"s": node("s", {"a": [1, 2]}, NOW)}, "no arrays"),
        ({"s": node("s", {"a": {"x": 1}}, NOW)}, "must be a link"),
        ({"s": node("s", {"a": "\ud800"}, NOW)}, "lone surrogate"),
        ({"s": node("s", {"a": 1}, {"a": "soon"})}, "state is not a number"),
        ({"s": node("s", {"a": 1}, {"a": True})}, "state is not a number"),
        ({"s": node("s", {"a": 1}, {})}, "no state"),
        ({"s": {"a": 1}}, "no meta"),
        ({"s": node("t", {"a": 1}, NOW)}, "soul not same"),
        ({"s": 5}, "no node"),
        ({"s": {"_": {"#": "s"}, "a": 1}}, "no state"),
        ({"s": node("s", {"": 1}, NOW)}, "1 to 1024 bytes"),
        ({"s" * 1025: node("s" * 1025, {"a": 1}, NOW)}, "1 to 1024 bytes"),
        ({"s": node("s", {"a": "x" * (1 << 20)}, NOW)}, "more than 1048576 bytes"),
        ({"#": "s", ".": "a", ":": 1, ">": NOW}, "one field"),
        ({}, "object of nodes"),
        ("text", "object of nodes"),
        ({"~0x" + "ab" * 32: node("~0x" + "ab" * 32, {"a": 1}, NOW)}, "dtp user space"),
    ],
)
def test_what_gun_cannot_hold_is_refused_with_an_error_ack(
    server: GunServerThread, graph: Graph, put: object, why: str
) -> None:
    with GunWireClient(server.url) as peer:
        # a valid node beside the bad one: the put is refused whole
        whole = {"ok": node("ok", {"a": 1}, NOW)}
        if isinstance(put, dict) and "#" not in put and put:
            whole.update(put)  # type: ignore[arg-type]
            message = whole
        else:
            message = put  # type: ignore[assignment]
        ack = peer.put(message)  # type: ignore[arg-type]
        assert "ok" not in ack and why in ack["err"]
    assert len(graph) == 0
    assert server.server.stats["refused_puts"] == 1


def test_numbers_json_cannot_hold_and_frames_that_are_not_json(
    server: GunServerThread, graph: Graph
) -> None:
    with GunWireClient(server.url) as peer:
        # 1e400 parses to infinity: refused as gun would refuse Infinity
        peer.send('{"#":"big","put":{"s":{"_":{"#":"s",">":{"a":1e400}},"a":1}}}')
        assert "not finite" in peer.answer("big")["err"]
        peer.send('{"#":"huge","put":{"s":{"_":{"#":"s",">":{"a":5}},"a":' + "9" * 400 + "}}}")
        assert "NaN or infinite" in peer.answer("huge")["err"]
        peer.send('{"#":"nan","put":{"s":{"_":{"#":"s",">":{"a":5}},"a":NaN}}}')
        peer.send("{nope")
        peer.send("[1, 2]")
        errors = peer.wait_for(lambda m: m.get("dam") == "!")
        assert errors["err"] == "DAM JSON parse error."
        peer.quiet(0.3)
        assert sum(1 for m in peer.received if m.get("dam") == "!") == 3
    assert len(graph) == 0


def test_a_batch_frame_is_answered_in_a_batch(server: GunServerThread, graph: Graph) -> None:
    with GunWireClient(server.url) as peer:
        peer.wait_for(lambda m: m.get("dam") == "?")
        peer.send(
            [
                {"#": "b1", "put": {"x": node("x", {"a": 1}, NOW)}},
                {"#": "b2", "put": {"y": node("y", {"a": [1]}, NOW)}},
                {"#": "b3", "get": {"#": "x"}},
            ]
        )
        assert peer.answer("b1")["ok"] is True
        assert "err" in peer.answer("b2")
        assert peer.answer("b3")["put"]["x"]["a"] == 1
        assert any(f.startswith("[") for f in peer.frames)  # answers batched as gun does
    assert graph.get("x") == {"a": 1} and "y" not in graph


def test_a_message_seen_twice_is_handled_once(server: GunServerThread, graph: Graph) -> None:
    with GunWireClient(server.url) as peer:
        msg = {"#": "same", "put": {"x": node("x", {"a": 1}, NOW)}}
        peer.send(msg)
        peer.send(msg)
        peer.answer("same")
        peer.quiet(0.3)
        assert sum(1 for m in peer.received if m.get("@") == "same") == 1
    assert server.server.stats["duplicates"] == 1


def test_changes_reach_subscribed_peers_live_but_not_their_writer(
    server: GunServerThread, graph: Graph
) -> None:
    with GunWireClient(server.url) as alice, GunWireClient(server.url) as bob:
        assert "put" not in bob.get("room")  # nothing yet, and bob now follows "room"
        alice.get("room")
        assert alice.put({"room": node("room", {"topic": "gun"}, NOW)})["ok"]
        live = bob.wait_for(lambda m: "put" in m and "@" not in m)
        assert live["put"]["room"]["topic"] == "gun"
        assert live["put"]["room"]["_"][">"]["topic"] == NOW
        # a local write (or a DTP sync peer's) reaches both
        graph.put("room", {"topic": "dtp"})
        for peer in (alice, bob):
            peer.wait_for(lambda m: m.get("put", {}).get("room", {}).get("topic") == "dtp")
        # the writer did not hear its own write back
        assert not [
            m
            for m in alice.received
            if m.get("put", {}).get("room", {}).get("topic") == "gun" and "@" not in m
        ]
        # a peer that followed one field hears of that field only
        with GunWireClient(server.url) as carol:
            carol.get("room", "topic")
            graph.put("room", {"other": 1})
            graph.put("room", {"topic": "again"})
            got = carol.wait_for(lambda m: m.get("put", {}).get("room", {}).get("topic") == "again")
            assert "other" not in got["put"]["room"]
            assert not [m for m in carol.received if "other" in m.get("put", {}).get("room", {})]


def test_a_peer_that_leaves_is_forgotten(server: GunServerThread, graph: Graph) -> None:
    relay: GunRelay = server.server.relay
    with GunWireClient(server.url) as peer:
        peer.get("a")
        peer.get("b")
        assert relay.peer_count == 1
    deadline = time.monotonic() + 5
    while relay.peer_count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert relay.peer_count == 0 and not relay._subs
    graph.put("a", {"x": 1})  # nobody to tell: nothing breaks


def test_sea_user_space_through_the_endpoint(server: GunServerThread, graph: Graph) -> None:
    alice = sea.SeaPair.generate()
    soul = alice.soul + "/profile"
    with GunWireClient(server.url) as peer:
        good = alice.sign(soul, "name", "Alice", NOW - 1)
        assert peer.put({soul: node(soul, {"name": good}, NOW - 1)})["ok"]
        ack = peer.put({soul: node(soul, {"name": "Mallory"}, NOW)})
        assert ack["err"] == "Unverified data."
        ack = peer.put({alice.soul: node(alice.soul, {"pub": "someone.else"}, NOW)})
        assert ack["err"] == "Account not same!"
        # a content-addressed soul with its hash in mid-soul: gun guards it, so does the endpoint
        ack = peer.put({"posts#x": node("posts#x", {"h#nothash": "v"}, NOW)})
        assert ack["err"] == "Data hash not same as hash!"
    assert graph.get(soul) == {"name": good}
    assert alice.soul not in graph and "posts#x" not in graph


def test_future_states_wait_and_a_closed_graph_refuses(
    server: GunServerThread, graph: Graph
) -> None:
    with GunWireClient(server.url) as peer:
        ack = peer.put({"f": node("f", {"a": 1}, NOW + 1e9)})
        assert ack["ok"] and graph.deferred_count == 1 and "f" not in graph
        graph.close()
        ack = peer.put({"g": node("g", {"a": 1}, NOW)})
        assert "not stored" in ack["err"]
        assert "put" not in peer.get("f")


def _fetch(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def test_pages_are_served_from_the_same_port(server: GunServerThread) -> None:
    status, body, kind = _fetch(server.url)
    assert status == 200 and b"Shared chat" in body and kind.startswith("text/html")
    status, body, kind = _fetch(server.url + "demo.js")
    assert status == 200 and b"chat.map().on" in body and kind.startswith("text/javascript")
    assert _fetch(server.url + "gun.js")[:2] == (200, b"/* gun */")
    assert _fetch(server.url + "sea.js")[:2] == (200, b"/* sea */")
    assert _fetch(server.url + "gun/lib/radix.js")[:2] == (200, b"/* radix */")
    for path in [
        "gun/../secret.js",
        "gun/%2e%2e/secret.js",
        "../secret.js",
        "nope.html",
        "gun/lib",
    ]:
        assert _fetch(server.url + path)[0] == 404, path


def test_without_gun_installed_its_files_say_how_to_get_them(graph: Graph, tmp_path: Path) -> None:
    with serve_in_thread(graph, gun_dir=tmp_path / "none", site=None) as srv:
        srv.server.gun_dir = None
        status, body, _ = _fetch(srv.url + "gun.js")
        assert status == 404 and b"npm install gun" in body
        assert _fetch(srv.url)[0] == 404  # no pages


def test_server_arguments_are_checked(graph: Graph) -> None:
    from dtp.graph.gun import GunServer

    with pytest.raises(TypeError):
        GunServer("graph")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GunServer(graph, max_message=10)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            serve_in_thread(graph, "127.0.0.1", busy.getsockname()[1])


def test_a_peer_that_reads_nothing_is_cut_off(graph: Graph) -> None:
    with serve_in_thread(graph, max_backlog=1 << 20) as srv:
        relay = srv.server.relay
        with GunWireClient(srv.url) as slow:
            slow.get("big")  # follows the node, then reads nothing more
            started = time.monotonic()
            for i in range(100):  # 20 MB of changes for it
                graph.put("big", {"v": f"{i:03d}" + "x" * 200_000})
            assert time.monotonic() - started < 30  # the writes never waited for it
            deadline = time.monotonic() + 15
            while (relay.stats["cut_off"] == 0 or relay.peer_count) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert relay.stats["cut_off"] == 1 and relay.peer_count == 0
        # the endpoint serves on
        with GunWireClient(srv.url) as fresh:
            assert fresh.get("big", "v")["put"]["big"]["v"].startswith("099")


def test_peers_beyond_the_cap_are_turned_away(graph: Graph) -> None:
    from websockets.exceptions import ConnectionClosed

    with serve_in_thread(graph, max_peers=1) as srv, GunWireClient(srv.url) as first:
        first.wait_for(lambda m: m.get("dam") == "?")
        with GunWireClient(srv.url) as second:
            with pytest.raises(ConnectionClosed) as closed:
                second.ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert srv.server.stats["turned_away"] == 1
        assert first.put({"x": node("x", {"a": 1}, NOW)})["ok"]


def test_a_dtp_user_space_travels_as_its_gun_string(server: GunServerThread) -> None:
    """Served as its ``dtp/s1:`` string (answers and live updates); a peer's string is
    stored as the envelope it spells once the owner's signature verifies; forgeries
    are refused with the reason a sync peer's would be counted under."""
    me, mallory = HostIdentity.generate(), HostIdentity.generate()
    g = server.server.graph
    g.identity = me
    soul = namespace.user_soul(me, "notes")
    g.put(soul, {"a": 1})
    ((_, state, stored),) = g.stored_node(soul)
    with GunWireClient(server.url) as peer, GunWireClient(server.url) as watcher:
        served = peer.get(soul)["put"][soul]
        assert served["a"] == namespace.to_wire(stored) and served["a"].startswith("dtp/s1:")
        assert served["_"][">"]["a"] == state
        watcher.get(soul)
        # the owner's signed field, as a Gun peer sends it
        at = NOW - 5
        text = namespace.to_wire(namespace.seal(me, soul.encode(), b"b", at, b'"hi"'))
        assert peer.put({soul: node(soul, {"b": text}, at)})["ok"]
        assert g.get_field(soul, "b") == "hi"
        assert namespace.from_wire(text) == g.stored_node(soul)[1][2]
        live = watcher.wait_for(lambda m: "b" in m.get("put", {}).get(soul, {}))
        assert live["put"][soul]["b"] == text
        signed_by_mallory = namespace.to_wire(
            namespace.seal(mallory, namespace.user_soul(mallory, "x").encode(), b"c", at, b"1")
        )
        for value, at_, reason in [
            (text, at + 1, "bad_signature"),  # moved to another state
            ("hi", at, "unsigned"),
            (text[:-3] + 'ho"', at, "bad_signature"),
            (text[:-4] + "1.0", at, "unsigned"),  # no Gun text: one spelling only
            (signed_by_mallory, at, "wrong_key"),
        ]:
            err = peer.put({soul: node(soul, {"c": value}, at_)})["err"]
            assert f"dtp user space: only its owner's Ed25519 key signs there ({reason};" in err
        assert g.get_field(soul, "c") is None and g.state_of(soul, "c") is None
    # a value a format-1 file kept (no Gun text) has no Gun string: it is not served
    assert namespace.to_wire(stored[:96] + b"1.0") is None
    assert namespace.to_wire(stored[:95]) is None


def test_js_numbers_on_the_wire() -> None:
    from dtp.graph.gun import _wire as wire

    text = wire.node_json("s", [("a", 1700000000000.25, b"1e-7"), ("b", 5.0, b'"x"')])
    assert text == '"s":{"_":{"#":"s",">":{"a":1700000000000.25,"b":5}},"a":1e-7,"b":"x"}'
    parsed = json.loads("{" + text + "}", parse_int=float)
    assert parsed["s"]["a"] == 1e-7 and not math.isnan(parsed["s"]["_"][">"]["b"])
    assert wire.lex_match("abc", {"*": "ab"}) and not wire.lex_match("b", {"*": "a"})
    assert wire.lex_match("b", {">": "a"}) and not wire.lex_match("a", {">": "b", "<": "c"})
    # JavaScript compares strings in UTF-16 code units: U+FFFF sorts above U+1F600
    assert wire.lex_match("\uffff", {">": "\U0001f600"})
