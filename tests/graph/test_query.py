"""dtp.graph queries (docs/graph.md, "Queries"): traversals over links and Gun sets,
filters that compare as Gun values, indexes used by where and find, and the typed
errors of queries that cannot run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dtp.errors import LocalProtocolError
from dtp.graph import Graph, GraphValueError, Query, QueryError, link
from dtp.graph._query import comparable

HAMS = ["c", "python"]


@pytest.fixture(params=HAMS)
def forum(request: pytest.FixtureRequest) -> Graph:
    """alice's posts (a Gun set), their replies (sets), the replies' times."""
    g = Graph(None, ham=request.param)
    g.put(
        "user/alice",
        {"name": "alice", "posts": {"p1": link("post/1"), "p2": link("post/2")}},
    )
    g.put("post/1", {"time": 5, "replies": {"r1": link("reply/1"), "r2": link("reply/2")}})
    g.put("post/2", {"time": 7, "replies": {"r3": link("reply/3"), "note": "not a link"}})
    g.put("reply/1", {"time": 10, "author": link("user/bob")})
    g.put("reply/2", {"time": 20, "author": link("user/alice")})
    g.put("reply/3", {"time": "20"})  # a string: compares with strings only
    return g


def _replies(g: Graph) -> Query:
    return g.query("user/alice").out("posts").each().out("replies").each()


def test_a_traversal_follows_links_and_the_members_of_sets(forum: Graph) -> None:
    assert forum.query("user/alice").out("posts").souls() == ["user/alice/posts"]
    assert forum.query("user/alice").out("posts").each().souls() == ["post/1", "post/2"]
    assert _replies(forum).souls() == ["reply/1", "reply/2", "reply/3"]
    assert _replies(forum).out("author").souls() == ["user/alice", "user/bob"]
    # out(a, b) is out(a).out(b); a missing field or a non-link drops the node
    assert forum.query("post/1").out("replies").souls() == ["post/1/replies"]
    assert forum.query("user/alice").out("name").souls() == []
    assert forum.query("user/alice").out("nothing").souls() == []
    assert forum.query("post/1", "post/2").out("replies").each().count() == 3


def test_where_compares_numbers_with_numbers_and_strings_with_strings(forum: Graph) -> None:
    assert _replies(forum).where("time", ">", 12).souls() == ["reply/2"]
    assert _replies(forum).where("time", ">=", 10).souls() == ["reply/1", "reply/2"]
    assert _replies(forum).where("time", "==", 20).souls() == ["reply/2"]
    assert _replies(forum).where("time", "==", "20").souls() == ["reply/3"]
    # across kinds nothing matches, != included
    assert _replies(forum).where("time", "!=", 20).souls() == ["reply/1"]
    assert _replies(forum).where("time", "!=", "x").souls() == ["reply/3"]
    assert _replies(forum).where("time", "<", "3").souls() == ["reply/3"]
    # a missing field matches nothing
    assert _replies(forum).where("author", "!=", link("nobody")).souls() == [
        "reply/1",
        "reply/2",
    ]
    assert _replies(forum).where("author", "==", link("user/bob")).souls() == ["reply/1"]
    # wheres chain (all must hold)
    assert _replies(forum).where("time", ">", 5).where("time", "<", 15).souls() == ["reply/1"]


def test_the_start_may_be_filtered_and_a_query_with_no_step_gives_its_start(
    forum: Graph,
) -> None:
    assert forum.query("post/1", "post/2").where("time", ">", 6).souls() == ["post/2"]
    assert forum.query("b", "a", "b").souls() == ["a", "b"]  # (need not exist)
    assert forum.query("b").where("time", "==", None).souls() == []


def test_strings_compare_by_utf16_code_units_as_javascript_does() -> None:
    # U+FFFF is one code unit, 0xFFFF; U+1F600 is two, 0xD83D 0xDE00: in JavaScript
    # (and Gun) "\U0001f600" < "\uffff", though its code point is the larger
    g = Graph(None)
    g.put("set", {"a": link("a"), "b": link("b"), "c": link("c")})
    g.put("a", {"s": "\uffff"})
    g.put("b", {"s": "\U0001f600"})
    g.put("c", {"s": "\ue000"})
    members = g.query("set").each()
    assert members.where("s", "<", "\uffff").souls() == ["b", "c"]
    assert members.where("s", ">", "\U0001f600").souls() == ["a", "c"]
    g.create_index("s")
    assert members.where("s", "<", "\uffff").souls() == ["b", "c"]
    assert members.where("s", ">", "\U0001f600").souls() == ["a", "c"]
    assert g.find("s", ">=", "\ue000").souls() == ["a", "c"]


def test_numbers_compare_as_binary64_whatever_their_python_type() -> None:
    g = Graph(None)
    g.put("n", {"a": 1, "b": 1.0, "c": 2**60, "d": -0.0, "e": 1e-7, "f": True})
    for field in "abcdef":
        g.create_index(field)
    assert g.find("a", "==", 1.0).souls() == ["n"]
    assert g.find("b", "==", 1).souls() == ["n"]
    assert g.find("c", "==", float(2**60)).souls() == ["n"]
    assert g.find("d", "==", 0).souls() == ["n"]
    assert g.find("e", "<", 1e-6).souls() == ["n"]
    assert g.find("f", "==", 1).souls() == []  # a boolean is not a number
    assert g.find("f", "==", True).souls() == ["n"]
    assert g.query("n").where("f", "==", 1).souls() == []


def test_an_index_changes_how_a_where_runs_not_what_it_finds(forum: Graph) -> None:
    query = _replies(forum).where("time", ">", 12)
    plan = query.explain()
    assert "no index on 'time', in Python" in plan[-1]
    found = query.souls()
    assert forum.create_index("time") is True
    assert forum.create_index("time") is False
    assert forum.indexes() == ["time"]
    assert "index on 'time', in the same statement" in query.explain()[-1]
    assert query.souls() == found
    assert forum.find("time", ">", 6).souls() == ["post/2", "reply/1", "reply/2"]
    assert forum.find("time", ">", 6).out("author").souls() == ["user/alice", "user/bob"]
    assert forum.drop_index("time") is True
    assert forum.drop_index("time") is False
    assert forum.indexes() == []
    assert query.souls() == found


def test_nodes_reads_the_result_with_its_fields(forum: Graph) -> None:
    nodes = _replies(forum).where("time", ">", 12).nodes()
    assert nodes == {"reply/2": {"time": 20, "author": {"#": "user/alice"}}}
    assert forum.query("nobody").nodes() == {"nobody": {}}


def test_a_query_is_immutable_and_may_be_extended_both_ways(forum: Graph) -> None:
    posts = forum.query("user/alice").out("posts").each()
    early, late = posts.where("time", "<", 6), posts.where("time", ">", 6)
    assert (early.souls(), late.souls(), posts.souls()) == (
        ["post/1"],
        ["post/2"],
        ["post/1", "post/2"],
    )
    assert repr(early) == ("<Query ('user/alice',).out('posts').each().where('time', '<', 6)>")


def test_links_in_a_user_space_are_followed(tmp_path: Path) -> None:
    from dtp.graph import user_soul
    from dtp.identity.keys import HostIdentity

    me = HostIdentity.generate()
    home = user_soul(me.sui_address)
    g = Graph(tmp_path / "g.db", identity=me)
    g.put(home, {"friends": {"b": link("user/bob")}, "age": 30})
    g.create_index("age")
    assert g.query(home).out("friends").each().souls() == ["user/bob"]
    assert g.find("age", ">", 18).souls() == [home]
    g.close()


def test_values_only_a_format_1_graph_holds_match_no_where() -> None:
    assert comparable([1, 2]) is None
    assert comparable({"a": 1}) is None
    assert comparable(2**53 + 1) is None
    assert comparable(10**400) is None
    assert comparable(2**60) == (2, float(2**60))


# -- bad queries --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda g: g.query(), "at least one soul"),
        (lambda g: g.query(""), "non-empty"),
        (lambda g: g.query(5), "non-empty strs"),
        (lambda g: g.query("\ud800"), "lone surrogate"),
        (lambda g: g.query("a").out(), "at least one field"),
        (lambda g: g.query("a").out(""), "non-empty str"),
        (lambda g: g.query("a").out("_"), "'_'"),
        (lambda g: g.query("a").out(b"x"), "non-empty str"),
        (lambda g: g.query("a").where("t", "=", 1), "one of ==, !=, <, <=, >, >= as operator"),
        (lambda g: g.query("a").where("t", "like", 1), "operator"),
        (lambda g: g.query("a").where("t", ">", [1]), "no arrays"),
        (lambda g: g.query("a").where("t", ">", {"a": 1}), "link"),
        (lambda g: g.query("a").where("t", ">", math.nan), "NaN"),
        (lambda g: g.query("a").where("t", "==", 2**53 + 1), "binary64"),
        (lambda g: g.query("a").where("t", "==", "\udc00"), "surrogate"),
        (lambda g: g.query("a").where("t", "<", True), "not a boolean"),
        (lambda g: g.query("a").where("t", ">=", None), "not null"),
        (lambda g: g.query("a").where("t", ">", link("b")), "not a link"),
        (lambda g: g.query("a").live("print"), "callable"),
        (lambda g: g.find("t", ">", 1), r"create_index\('t'\) first"),
        (lambda g: g.create_index(""), "non-empty str"),
        (lambda g: g.create_index("_"), "'_'"),
        (lambda g: g.drop_index(3), "non-empty str"),
    ],
)
def test_a_bad_query_gets_a_typed_error_naming_what_is_wrong(make: object, match: str) -> None:
    g = Graph(None)
    g.put("a", {"t": 1})
    with pytest.raises(QueryError, match=match) as caught:
        make(g)  # type: ignore[operator]
    assert isinstance(caught.value, LocalProtocolError)
    assert isinstance(caught.value, ValueError)
    assert g.query("a").where("t", "==", 1).souls() == ["a"]  # the graph is untouched


def test_a_value_error_of_where_is_a_query_error_not_a_value_error_of_put() -> None:
    g = Graph(None)
    with pytest.raises(QueryError) as caught:
        g.query("a").where("t", "==", object())
    assert not isinstance(caught.value, GraphValueError)


def test_a_find_whose_index_was_dropped_gets_the_typed_error_when_run() -> None:
    g = Graph(None)
    g.put("a", {"t": 1})
    g.create_index("t")
    found = g.find("t", "==", 1)
    assert found.souls() == ["a"]
    g.drop_index("t")
    with pytest.raises(QueryError, match="create_index"):
        found.souls()


def test_a_closed_graph_refuses_queries(tmp_path: Path) -> None:
    g = Graph(tmp_path / "g.db")
    g.put("a", {"b": link("b")})
    query = g.query("a").out("b")
    assert query.souls() == ["b"]
    g.close()
    for run in (query.souls, query.count, query.nodes, query.explain, g.indexes):
        with pytest.raises(LocalProtocolError, match="closed"):
            run()
    with pytest.raises(LocalProtocolError, match="closed"):
        g.create_index("t")
    with pytest.raises(LocalProtocolError, match="closed"):
        query.live(print)
