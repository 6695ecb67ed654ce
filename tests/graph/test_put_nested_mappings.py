"""What put() does with nested mappings it cannot make nodes of: a mapping that holds
itself (gun.js links such a cycle back; here the caller writes the link) and an empty
one (a HAM table holds fields, not empty nodes) are refused whole, naming the field,
rather than recursing to the depth limit or blaming the whole put."""

from __future__ import annotations

from typing import Any

import pytest

from dtp.errors import LocalProtocolError
from dtp.graph import Graph, link


@pytest.fixture(params=["c", "python"])
def graph(request: pytest.FixtureRequest) -> Any:
    g = Graph(ham=request.param)
    yield g
    g.close()


def test_a_mapping_holding_itself_is_refused_naming_the_link_to_write(graph: Graph) -> None:
    node: dict[str, Any] = {"name": "mark"}
    node["self"] = node
    cycle = r"field 'self' of node 'mark'.*cycle.*link\('mark'\)"
    with pytest.raises(LocalProtocolError, match=cycle):
        graph.put("mark", node)
    assert graph.get("mark") is None
    del node["self"]
    node["self"] = link("mark")  # what the message says to write
    graph.put("mark", node)
    assert graph.get("mark") == {"name": "mark", "self": {"#": "mark"}}


def test_a_cycle_through_a_nested_node_names_the_node_it_returns_to(graph: Graph) -> None:
    root: dict[str, Any] = {"boss": {"name": "fluffy"}}
    root["boss"]["slave"] = root
    cycle = r"field 'slave' of node 'mark/boss'.*link\('mark'\)"
    with pytest.raises(LocalProtocolError, match=cycle):
        graph.put("mark", root)
    assert graph.souls() == []


def test_one_mapping_under_two_fields_is_no_cycle(graph: Graph) -> None:
    shared = {"v": 1}
    graph.put("two", {"a": shared, "b": shared})
    assert graph.get("two/a") == graph.get("two/b") == {"v": 1}


def test_an_empty_nested_mapping_is_refused_naming_its_field(graph: Graph) -> None:
    with pytest.raises(LocalProtocolError, match=r"field 'f' of node 'x/e' holds an empty mapping"):
        graph.put("x", {"a": 1, "e": {"f": {}}})
    assert graph.souls() == []
