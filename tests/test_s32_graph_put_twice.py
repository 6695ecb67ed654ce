"""put() of nested mappings that reach one node's field by two paths is refused whole
(it wrote both at one state, and the merge kept one of them by its bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.errors import LocalProtocolError
from dtp.graph import Graph


def test_two_paths_to_one_child_field_are_refused(tmp_path: Path) -> None:
    graph = Graph(tmp_path / "g.db")
    try:
        with pytest.raises(LocalProtocolError, match="twice"):
            graph.put("a", {"b": {"c": {"x": "first"}}, "b/c": {"x": "second"}})
        assert graph.get("a/b/c") is None and graph.get("a") is None  # nothing written
        graph.put("a", {"b": {"c": {"x": "first"}}, "b/d": {"x": "second"}})
        assert graph.get("a/b/c") == {"x": "first"}
        assert graph.get("a/b/d") == {"x": "second"}
    finally:
        graph.close()
