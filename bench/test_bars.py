"""The rows' bars and floors: each row states its figure once, in its definition; the
figures are the ones the project holds the rows to; README.md's and docs/benchmarks.md's
benchmark tables show the same figures. Read from the rows' source, so no workload runs
(most start servers)."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import FunctionType

import pytest

from bench.workload import Floor, Workload, bar_kind
from bench.workloads import ALL

ROOT = Path(__file__).resolve().parent.parent

#: targets: the rows where users feel the speed, each to reach its bar
BARS = {
    "hostid_connect_rate": 0.8,
    "rpc_roundtrip_uvloop": 0.8,
    "connect_rate": 1.4,
    "connections_10k": 1.5,
    "paid_bulk": 0.95,
    "udp_tunnel_pps": 0.85,
    # (a target of the web frontends' too, above the round-trip floor of 0.8)
    "ws_rpc_roundtrip": 0.9,
}

#: floors: rows at the limit of the design's shape, which no change may read below
FLOORS = {
    "pingpong_100b": 0.84,
    "rpc_roundtrip": 0.77,
    "rpc_roundtrip_zmq": 1.25,
    "aead_roundtrip_1k": 2.0,
    "tcp_bulk_blocking": 1.3,
    "tcp_bulk_asyncio": 1.0,
    "tunnel_bulk": 1.2,
    "tunnel_requests": 1.2,
    "idle_memory_10k": 15,
    "churn_memory": 1.0,
    "daemon_bulk_sui": 0.95,
}


def _literal_bar(node: ast.expr) -> float | None:
    """``0.8`` -> 0.8, ``Floor(0.84)`` -> Floor(0.84), ``None`` -> None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Floor":
        (figure,) = node.args
        return Floor(ast.literal_eval(figure))
    value = ast.literal_eval(node)
    assert value is None or isinstance(value, int | float), ast.unparse(node)
    return value


def stated_bars(factory: Callable[..., Workload]) -> list[float | None]:
    """Every ``bar=<figure>`` keyword in ``factory``'s source and in the bench functions it
    calls by name (a helper such as ``_with_peers`` that builds the Workload); a
    ``bar=bar`` that only passes the figure on is not a statement of it."""
    found: list[float | None] = []
    seen: set[FunctionType] = set()
    todo = [factory]
    while todo:
        func = todo.pop()
        if not isinstance(func, FunctionType) or func in seen:
            continue
        seen.add(func)
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg == "bar" and not isinstance(kw.value, ast.Name):
                    found.append(_literal_bar(kw.value))
            if isinstance(node.func, ast.Name):
                callee = func.__globals__.get(node.func.id)
                if isinstance(callee, FunctionType) and callee.__module__.startswith("bench."):
                    todo.append(callee)
    return found


def declared_bar(name: str) -> float | None:
    """Row ``name``'s bar as its definition states it (None: the row only reports)."""
    bars = stated_bars(ALL[name])
    assert len(bars) <= 1, f"{name} states its bar {len(bars)} times: {bars}"
    return bars[0] if bars else None


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_row_states_its_bar_at_most_once(name: str) -> None:
    declared_bar(name)


@pytest.mark.parametrize(("name", "figure"), sorted(BARS.items()))
def test_the_target_rows_carry_their_bars(name: str, figure: float) -> None:
    bar = declared_bar(name)
    assert (bar, bar_kind(bar)) == (figure, "bar")


@pytest.mark.parametrize(("name", "figure"), sorted(FLOORS.items()))
def test_the_floor_rows_carry_their_floors(name: str, figure: float) -> None:
    bar = declared_bar(name)
    assert (bar, bar_kind(bar)) == (figure, "floor")


def _helper_row(name: str, bar: float | None = None) -> Workload:
    return Workload(name, "ops/s", 1, lambda: None, peer=lambda: None, bar=bar)


def _row_through_a_helper() -> Workload:
    return _helper_row("helped", bar=Floor(0.5))


def _row_stated_twice() -> Workload:
    _helper_row("first", bar=0.7)
    return _helper_row("second", bar=0.9)


def test_the_reader_follows_helpers_and_counts_each_statement() -> None:
    (bar,) = stated_bars(_row_through_a_helper)  # (the helper's bar=bar is not counted)
    assert (bar, bar_kind(bar)) == (0.5, "floor")
    assert stated_bars(_row_stated_twice) == [0.7, 0.9]
    assert stated_bars(_helper_row) == []
    assert _row_through_a_helper().bar == bar


def test_the_reader_sees_the_bar_a_built_row_carries() -> None:
    """aead_roundtrip_1k starts no server: built, it carries the floor its source states."""
    row = ALL["aead_roundtrip_1k"]()
    assert row.bar == declared_bar("aead_roundtrip_1k") == 2.0
    assert bar_kind(row.bar) == "floor"


def _table_bars(path: Path, bar_column: int) -> dict[str, str]:
    """``path``'s benchmark table: each row's name and its bar cell."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) > bar_column else None
        if found and found.group(1) in ALL:
            rows[found.group(1)] = cells[bar_column]
    return rows


def _parse_cell(cell: str) -> tuple[float | None, str]:
    """A table's bar cell as (figure, kind): "report" -> (None, ""), "≥ 0.8" -> (0.8,
    "bar"), "≥ 0.84 (floor)" -> (0.84, "floor"); words after the figure are kept out."""
    if cell == "report":
        return None, ""
    found = re.match(r"≥ (\d+(?:\.\d+)?)( \(floor\b)?", cell)
    assert found, f"a bar cell that says neither 'report' nor '≥ N': {cell!r}"
    return float(found.group(1)), "floor" if found.group(2) else "bar"


@pytest.mark.parametrize(("doc", "bar_column"), [("README.md", 4), ("docs/benchmarks.md", 1)])
def test_the_benchmark_tables_show_the_rows_bars(doc: str, bar_column: int) -> None:
    table = _table_bars(ROOT / doc, bar_column)
    assert set(table) == set(ALL), f"{doc}: rows missing or extra"
    defined = {name: declared_bar(name) for name in table}
    wrong = {
        name: (cell, defined[name])
        for name, cell in table.items()
        if _parse_cell(cell) != (defined[name], bar_kind(defined[name]))
    }
    assert not wrong, f"{doc}: (table's cell, definition's bar): {wrong}"
