"""``walk`` stops with KeyError at a field that holds no link; what a gun.js user chains
with ``.get()`` may be a value there, so the message says what the field holds and how
to read it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dtp.graph import Graph


@pytest.fixture(params=["c", "python"])
def graph(request: pytest.FixtureRequest) -> Iterator[Graph]:
    g = Graph(ham=request.param)
    g.put("mark", {"name": "Mark", "boss": {"name": "Fluffy"}, "left": "x"})
    g.put("mark", {"left": None})
    yield g
    g.close()


def _walk_error(graph: Graph, *path: str) -> str:
    with pytest.raises(KeyError) as raised:
        graph.walk("mark", *path)
    return str(raised.value.args[0])


def test_a_value_is_named_with_how_to_read_it(graph: Graph) -> None:
    message = _walk_error(graph, "boss", "name")
    assert message.startswith("mark/boss.name is not a link")
    assert "'Fluffy'" in message and "get_field('mark/boss', 'name')" in message
    assert graph.get_field(graph.walk("mark", "boss"), "name") == "Fluffy"


def test_a_missing_field_is_named_missing(graph: Graph) -> None:
    message = _walk_error(graph, "friend")
    assert message == "mark.friend is not a link: node 'mark' has no field 'friend'"
    message = _walk_error(graph, "boss", "friend")
    assert message == "mark/boss.friend is not a link: node 'mark/boss' has no field 'friend'"


def test_a_deleted_field_is_named_null(graph: Graph) -> None:
    assert _walk_error(graph, "left") == "mark.left is not a link: it holds null (deleted)"
