"""Bad arguments to the graph store and to LocalLedger's public methods are refused with
a typed error at the entry point, and change nothing: the graph's table and file, the
ledger's dump() stay as they were, and both keep working.

Among them: ``Graph.walk(None)``; ``subscribe("")``, which no change could reach;
``changes(3)`` outside an event loop; a non-callable given to ``add_listener``/``listen``
(refused there, not in the thread of a sync session); ``Graph(path)`` of another
application's SQLite file (left as it is: no WAL switch, no tables added); LocalLedger
calls given ``signer=None`` (or a str).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import DTPError, InvalidArgument, LocalProtocolError
from dtp.graph import Graph
from dtp.ledger.local import LocalLedger
from dtp.native.reference._ham import decode_ham_batch
from tests.support.object_world import CLIENT, SERVER, SLA, World


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[Graph]:
    with Graph(tmp_path / "g.sqlite") as g:
        g.put("a", {"x": 1, "child": {"y": 2}})
        g.flush()
        yield g


GRAPH_CASES: dict[str, tuple[type[Exception], Callable[[Graph], Any]]] = {
    # walks, subscriptions and listeners: a soul or field that names nothing, a
    # listener that cannot be called
    "walk soul None": (LocalProtocolError, lambda g: g.walk(None)),
    "walk soul int": (LocalProtocolError, lambda g: g.walk(3)),
    "subscribe empty soul": (LocalProtocolError, lambda g: g.subscribe("", print)),
    "subscribe empty field": (LocalProtocolError, lambda g: g.subscribe("a", print, field="")),
    "changes soul int": (LocalProtocolError, lambda g: g.changes(3)),  # type: ignore[arg-type]
    "changes empty field": (LocalProtocolError, lambda g: g.changes("a", field="")),
    "add_listener not callable": (LocalProtocolError, lambda g: g.add_listener(3, object())),
    "listen not callable": (LocalProtocolError, lambda g: g.listen(None, object())),
    # puts, gets and merges: souls, fields and values the graph cannot hold (and a
    # bool maxsize)
    "put soul int": (LocalProtocolError, lambda g: g.put(5, {"x": 1})),
    "put soul empty": (LocalProtocolError, lambda g: g.put("", {"x": 1})),
    "put soul huge": (LocalProtocolError, lambda g: g.put("s" * 100_000, {"x": 1})),
    "put soul surrogate": (LocalProtocolError, lambda g: g.put("a\ud800", {"x": 1})),
    "put field int": (LocalProtocolError, lambda g: g.put("a", {1: 1})),
    "put field empty": (LocalProtocolError, lambda g: g.put("a", {"": 1})),
    "put value set": (LocalProtocolError, lambda g: g.put("a", {"x": {1}})),
    "put value object": (LocalProtocolError, lambda g: g.put("a", {"x": object()})),
    "put value bytes": (LocalProtocolError, lambda g: g.put("a", {"x": b"ab"})),
    "put value NaN": (LocalProtocolError, lambda g: g.put("a", {"x": math.nan})),
    "put value -inf": (LocalProtocolError, lambda g: g.put("a", {"x": -math.inf})),
    "put value 10**5000": (LocalProtocolError, lambda g: g.put("a", {"x": 10**5000})),
    "put value too deep": (LocalProtocolError, lambda g: g.set("a", "x", _nested(80))),
    "put value 2 MiB": (LocalProtocolError, lambda g: g.set("a", "x", "v" * (2 << 20))),
    "put not a mapping": (LocalProtocolError, lambda g: g.put("a", [("x", 1)])),
    "get soul int": (LocalProtocolError, lambda g: g.get(1)),
    "get_field field None": (LocalProtocolError, lambda g: g.get_field("a", None)),
    "merge str": (LocalProtocolError, lambda g: g.merge("abc")),  # type: ignore[arg-type]
    "changes maxsize bool": (ValueError, lambda g: g.changes("a", maxsize=True)),
}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("name", sorted(GRAPH_CASES))
def test_graph_refuses_bad_arguments_and_changes_nothing(graph: Graph, name: str) -> None:
    error, call = GRAPH_CASES[name]
    before = graph.snapshot()
    with pytest.raises(error):
        call(graph)
    assert graph.snapshot() == before
    assert not graph._subs and not graph._listeners  # nothing half registered
    graph.put("a", {"z": 3})  # still works
    assert graph.get("a") == {"x": 1, "child": {"#": "a/child"}, "z": 3}


def test_graph_refuses_another_applications_database_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO accounts (name) VALUES ('alice')")
        db.commit()
    content = path.read_bytes()
    with pytest.raises(DTPError, match="not a graph database"):
        Graph(path)
    assert path.read_bytes() == content  # not switched to WAL, no graph tables added
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert tables == {"accounts"}
    with Graph(tmp_path / "g.sqlite") as g:  # a graph file of its own still opens
        g.set("a", "x", 1)
        assert g.get_field("a", "x") == 1


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ledger = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
    try:
        yield World(ledger)
    finally:
        ledger.close()


LEDGER_CASES: dict[str, Callable[[World, Any], Any]] = {
    "top_up": lambda w, s: w.ledger.top_up(s, w.escrow, 1),
    "set_max_per_epoch": lambda w, s: w.ledger.set_max_per_epoch(s, w.cap, 5),
    "create_spending_cap": lambda w, s: w.ledger.create_spending_cap(s, 5),
    "add_service": lambda w, s: w.ledger.add_service(s, w.host, 9, "x", SLA),
    "set_firewall_mode": lambda w, s: w.ledger.set_firewall_mode(s, w.host, 1),
    "allow": lambda w, s: w.ledger.allow(s, w.host, CLIENT.sui_address),
    "open_connection": lambda w, s: w.ledger.open_connection(s, w.host, 7, w.cap, 1000),
    "prepare_open_connection": lambda w, s: w.ledger.prepare_open_connection(
        s, w.host, 7, w.cap, 1000
    ),
    "response_escrow_deposit": lambda w, s: w.ledger.response_escrow_deposit(
        s, SERVER.sui_address, b"req-2", 10, 10**6
    ),
    "open_subscribed_connection": lambda w, s: w.ledger.open_subscribed_connection(
        s, w.subscription, w.cap
    ),
    "open_sponsored_connection": lambda w, s: w.ledger.open_sponsored_connection(
        s, w.pool, w.cap, 1000
    ),
}


@pytest.mark.parametrize("signer", [None, "0x" + "41" * 32, 7], ids=["None", "str", "int"])
@pytest.mark.parametrize("name", sorted(LEDGER_CASES))
def test_ledger_refuses_a_signer_that_is_not_an_identity(
    world: World, name: str, signer: Any
) -> None:
    before = world.ledger.dump()
    with pytest.raises(InvalidArgument, match="signer"):
        LEDGER_CASES[name](world, signer)
    assert world.ledger.dump() == before
    world.ledger.top_up(CLIENT, world.escrow, 1)  # still works


def test_graph_export_with_a_huge_batch_size(tmp_path: object) -> None:
    with Graph() as graph:
        graph.put("alice", {"name": "Alice", "age": 30})
        got = [u for batch in graph.export(1 << 40) for u in decode_ham_batch(batch)]
        assert {u.field for u in got if u.soul == b"alice"} >= {b"name", b"age"}
