"""Every local write goes one way: ``Graph.put``, ``Graph.set``, nested mappings, the
handles of the three tiers (``public``, ``protected`` with the graph's identity or its
own, ``private``) and a private space's reader changes all meet the graph's rules --
a refusal raises ``RuleRefused`` and leaves the table, the file and the counters of
history as they were, nothing of the write half-applied -- and a tracked node written
through any of them gets a version, which the handle's ``history()`` reads (a private
one in plaintext, for its readers only). Each case runs on both HAM tables (and again
under ``DTP_PUREPYTHON=1`` with the rest of tests/graph)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import NotAReader
from dtp.graph import Graph
from dtp.graph._history import heads_soul, record_text, version_soul
from dtp.graph.rules import RuleRefused, Update
from dtp.graph.values import encode_value
from dtp.identity.keys import HostIdentity

HAMS = ["c", "python"]
ALICE = HostIdentity.generate()  # the graph's own identity
CAROL = HostIdentity.generate()  # another author writing through a handle of her own
READER = HostIdentity.generate()


def refuse_bad(update: Update) -> str | None:
    """Refuses a field named ``bad``, wherever it is: every tier's update has a name
    the rule can read, encrypted or not."""
    return "no field named bad" if update.field == "bad" else None


@dataclass(frozen=True)
class Path_:
    """One way to write fields to a node: ``write(graph, fields)``; ``soul(graph)`` is
    the node written; ``history(graph)`` its versions read back through the same
    handle."""

    name: str
    write: Callable[[Graph, dict[str, Any]], float]
    soul: Callable[[Graph], str]
    history: Callable[[Graph], list[Any]]
    signer: str | None = None
    one_field: bool = False


def _set(g: Graph, fields: dict[str, Any]) -> float:
    ((field, value),) = fields.items()
    return g.set("pub/set", field, value)


PATHS = [
    Path_(
        "graph.put",
        lambda g, f: g.put("pub/put", f),
        lambda g: "pub/put",
        lambda g: g.history("pub/put"),
    ),
    Path_("graph.set", _set, lambda g: "pub/set", lambda g: g.history("pub/set"), one_field=True),
    Path_(
        "public()",
        lambda g, f: g.public("pub/handle").put(f),
        lambda g: "pub/handle",
        lambda g: g.public("pub/handle").history(),
    ),
    Path_(
        "graph.put to ~0x",
        lambda g, f: g.put(f"~{ALICE.sui_address}/doc", f),
        lambda g: f"~{ALICE.sui_address}/doc",
        lambda g: g.history(f"~{ALICE.sui_address}/doc"),
        ALICE.sui_address,
    ),
    Path_(
        "protected()",
        lambda g, f: g.protected("doc").put(f),
        lambda g: f"~{ALICE.sui_address}/doc",
        lambda g: g.protected("doc").history(),
        ALICE.sui_address,
    ),
    Path_(
        "protected(identity)",
        lambda g, f: g.protected("doc", CAROL).put(f),
        lambda g: f"~{CAROL.sui_address}/doc",
        lambda g: g.protected("doc", author=CAROL.sui_address).history(),
        CAROL.sui_address,
    ),
    Path_(
        "private()",
        lambda g, f: g.private("diary/doc").put(f),
        lambda g: g.private("diary/doc").soul,
        lambda g: g.private("diary/doc").history(),
        ALICE.sui_address,
    ),
    Path_(
        "private(identity)",
        lambda g, f: g.private("diary/doc", CAROL).put(f),
        lambda g: g.private("diary/doc", CAROL).soul,
        lambda g: g.private("diary/doc", CAROL).history(),
        CAROL.sui_address,
    ),
]
IDS = [p.name for p in PATHS]
MAPPINGS = [p for p in PATHS if not p.one_field]


def graph_with_rule(ham: str, path: Path | None = None) -> Graph:
    g = Graph(path, identity=ALICE, ham=ham)
    g.rules.add("no-bad", refuse_bad)
    return g


def counts(g: Graph) -> dict[str, int]:
    return dict(g.stats["refused_by_rule"])


@pytest.mark.parametrize("ham", HAMS)
@pytest.mark.parametrize("how", PATHS, ids=IDS)
def test_a_refused_write_writes_nothing_whatever_the_path(
    how: Path_, ham: str, tmp_path: Path
) -> None:
    g = graph_with_rule(ham, tmp_path / "g.db")
    g.history.track(how.soul(g))
    how.write(g, {"good": 1})
    before = g.snapshot()
    cases = [{"bad": 1}, {"good": 2, "bad": 1}, {"bad": 1, "good": 2}]
    if how.one_field:
        cases = [{"bad": 1}, {"bad": 2}, {"bad": None}]
    for fields in cases:
        with pytest.raises(RuleRefused) as refused:
            how.write(g, fields)
        assert refused.value.refusal.rule == "no-bad"
        assert refused.value.refusal.field == "bad"
        assert refused.value.refusal.soul == how.soul(g)
        assert g.snapshot() == before  # not even the "good" field, nor a version
    assert counts(g) == {"no-bad": 3}
    assert len(how.history(g)) == 1
    g.close()
    with Graph(tmp_path / "g.db") as again:  # and the file holds nothing of them
        assert again.snapshot() == before


@pytest.mark.parametrize("ham", HAMS)
@pytest.mark.parametrize("how", MAPPINGS, ids=[p.name for p in MAPPINGS])
def test_a_nested_mapping_refused_below_keeps_the_whole_write_out(how: Path_, ham: str) -> None:
    g = graph_with_rule(ham)
    before = g.snapshot()
    with pytest.raises(RuleRefused) as refused:
        how.write(g, {"title": "x", "child": {"bad": 1}})
    assert refused.value.refusal.soul == how.soul(g) + "/child"
    assert g.snapshot() == before
    how.write(g, {"title": "x", "child": {"ok": 1}})
    assert len(g.snapshot()) > len(before)


@pytest.mark.parametrize("ham", HAMS)
@pytest.mark.parametrize("how", PATHS, ids=IDS)
def test_a_tracked_node_gets_a_version_whatever_the_path(how: Path_, ham: str) -> None:
    g = Graph(identity=ALICE, ham=ham)
    soul = how.soul(g)
    g.history.track(soul)
    states = [how.write(g, {"title": "Draft"}), how.write(g, {"body": "hello"})]
    states.append(how.write(g, {"title": "Final"}))
    versions = how.history(g)
    assert [(v.state, v.fields) for v in versions] == [
        (states[0], {"title": "Draft"}),
        (states[1], {"body": "hello"}),
        (states[2], {"title": "Final"}),
    ]
    assert {v.soul for v in versions} == {soul}
    # each version follows the one before, and only it (a followed head is null)
    assert [v.parents for v in versions] == [(), (versions[0].id,), (versions[1].id,)]
    if how.signer is not None:
        assert {(v.author, v.verified) for v in versions} == {(how.signer, True)}


@pytest.mark.parametrize("ham", HAMS)
def test_reader_changes_meet_the_rules(ham: str) -> None:
    """add_reader and remove_reader write the space's key records: a rule over the
    space judges them as peers will, and a refusal leaves the readers as they were."""
    g = Graph(identity=ALICE, ham=ham)
    diary = g.private("diary")
    diary.put({"day1": "rain"})
    calls: list[str] = []

    def no_new_readers(update: Update) -> str | None:
        calls.append(update.field)
        if update.field.startswith("r:") and update.author == ALICE.sui_address:
            return "this space takes no readers"
        return None

    g.rules.add("closed", no_new_readers, prefix=diary.key_soul)
    before = g.snapshot()
    with pytest.raises(RuleRefused) as refused:
        diary.add_reader(READER)
    assert refused.value.refusal.soul == diary.key_soul
    assert g.snapshot() == before
    assert diary.readers() == []
    assert calls  # (the wraps and the reader record were judged)


@pytest.mark.parametrize("ham", HAMS)
def test_rules_see_a_private_value_as_every_peer_does(ham: str) -> None:
    """A rule over a private space sees the stored envelope and the author, on the
    author's graph as on a relay that cannot read: both judge alike."""
    seen: dict[str, list[tuple[Any, str | None]]] = {"author": [], "relay": []}

    def watcher(name: str) -> Callable[[Update], None]:
        def check(update: Update) -> None:
            seen[name].append((update.value, update.author))

        return check

    mine, relay = Graph(identity=ALICE, ham=ham), Graph(ham=ham)
    mine.rules.add("watch", watcher("author"), prefix="%")
    relay.rules.add("watch", watcher("relay"), prefix="%")
    mine.private("diary").add_reader(READER)
    mine.private("diary/day1").put({"text": "secret"})
    for batch in mine.export():
        relay.merge(batch)
    assert sorted(seen["author"]) == sorted(seen["relay"])  # (export: in the table's order)
    assert len(seen["author"]) == 4  # the reader, the key wrapped to it and the author, the value
    values = [value for value, _ in seen["author"]]
    assert all(isinstance(v, str) and v.startswith("dtp/p1:") for v in values)
    assert {author for _, author in seen["author"]} == {ALICE.sui_address}


@pytest.mark.parametrize("ham", HAMS)
def test_a_private_history_reaches_readers_only(ham: str) -> None:
    """A tracked private node's versions are encrypted like its values: a reader reads
    them in plaintext, a relay that tracks the prefix merges them (its rule checks
    only the names) and reads none, and a version's id cannot be tested against
    guesses of its values (the record carries a salt)."""
    mine, bobs, relay = Graph(identity=ALICE, ham=ham), Graph(ham=ham), Graph(ham=ham)
    diary = mine.private("diary")
    diary.add_reader(READER)
    soul = diary.child("day1").soul
    for g in (mine, bobs, relay):
        g.history.track(soul)
    node = mine.private("diary/day1")
    state = node.put({"vote": "yes"})
    node.put({"vote": "no"})
    for batch in mine.export():
        assert relay.merge(batch).refused == 0
    for batch in relay.export():
        assert bobs.merge(batch).refused == 0
    theirs = bobs.private("diary/day1", READER, author=ALICE.sui_address).history()
    assert [v.fields for v in theirs] == [{"vote": "yes"}, {"vote": "no"}]
    assert theirs == node.history()
    assert relay.history(soul) == [] and relay.history.heads(soul) == []
    with pytest.raises(NotAReader):
        relay.private(f"diary/day1/.history/{theirs[0].id}", author=ALICE.sui_address).get()
    # the first version's record without a salt, whose hash an observer could compare
    guess = record_text(soul, state, ALICE.sui_address, [], [("vote", '"yes"')])
    assert hashlib.sha256(guess.encode()).hexdigest() != theirs[0].id
    assert theirs[0].state == state


@pytest.mark.parametrize("ham", HAMS)
def test_a_forged_private_version_is_left_out_by_its_reader(ham: str) -> None:
    """Only the names of a private version are checked on the way in; a reader checks
    the rest as it decrypts: a version whose record does not hash to its id (the
    author's own device writing junk there) is left out of history()."""
    g = Graph(identity=ALICE, ham=ham)
    soul = g.private("diary/doc").soul
    g.history.track(soul)
    node = g.private("diary/doc")
    node.put({"t": 1})
    (good,) = node.history()
    fake = "f" * 64
    # a heads field linking to a version whose record is another's
    g.private(f"diary/doc/.history/{fake}").put({"v": "not a record"})
    g.private("diary/doc/.history").put({fake: {"#": version_soul(soul, fake)}})
    assert node.history() == [good]
    heads = g.private("diary/doc/.history").get()
    assert heads is not None and set(heads) == {good.id, fake}
    assert heads_soul(soul) in g.souls()
    assert encode_value("not a record") not in [v for _, v in g.snapshot().values()]
