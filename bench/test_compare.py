"""bench/compare.py itself: a row that fails is reported and the rows after it still run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import compare
from bench.workload import Floor, Workload


def _broken() -> Workload:
    def hang_up() -> object:
        raise RuntimeError("the peer never answered")

    return Workload("broken", "ops/s", 1, lambda: None, peer=hang_up, bar=1.0)


def _fine() -> Workload:
    return Workload("fine", "ops/s", 1, lambda: None, peer=lambda: None, bar=0.5)


def test_a_failing_row_is_reported_and_the_next_one_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(compare, "ALL", {"broken": _broken, "fine": _fine})
    monkeypatch.setattr(compare, "cache_bytecode", lambda: None)
    monkeypatch.setattr(compare, "measure", lambda op, units, seconds: (op(), 100.0)[1])
    assert compare.main(["--quick", "--json", str(tmp_path / "rows.json")]) == 1
    out = capsys.readouterr().out
    assert "broken                 FAILED: RuntimeError: the peer never answered" in out
    fine = next(line for line in out.splitlines() if line.startswith("fine "))
    assert fine.endswith("ok")
    assert out.rstrip().endswith("failed: broken")
    broken, fine_row = json.loads((tmp_path / "rows.json").read_text())
    assert broken == {"name": "broken", "failed": "RuntimeError: the peer never answered"}
    assert fine_row["name"] == "fine" and fine_row["ratio"] == 1.0


def test_check_names_each_row_below_its_bar_or_its_floor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Every row reads 1.0 here: a target of 1.5 and a floor of 1.2 are missed and named as
    such, a floor of 0.8 holds, a row with no bar only reports; ``--check`` exits 1."""

    def row(name: str, bar: float | None) -> Callable[[], Workload]:
        return lambda: Workload(name, "ops/s", 1, lambda: None, peer=lambda: None, bar=bar)

    rows = {
        "target": row("target", 1.5),
        "low_floor": row("low_floor", Floor(1.2)),
        "held_floor": row("held_floor", Floor(0.8)),
        "report": row("report", None),
    }
    monkeypatch.setattr(compare, "ALL", rows)
    monkeypatch.setattr(compare, "cache_bytecode", lambda: None)
    monkeypatch.setattr(compare, "measure", lambda op, units, seconds: (op(), 100.0)[1])
    json_path = tmp_path / "rows.json"
    assert compare.main(["--quick", "--check", "--json", str(json_path)]) == 1
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[5:] for line in out.splitlines() if line}
    assert lines["name"] == ["bar", "kind"]
    assert lines["target"] == ["1.50", "bar", "BELOW", "BAR"]
    assert lines["low_floor"] == ["1.20", "floor", "BELOW", "FLOOR"]
    assert lines["held_floor"] == ["0.80", "floor", "ok"]
    assert lines["report"] == []
    assert "\nbelow bar: target\n" in out
    assert out.rstrip().endswith("below floor: low_floor")
    kinds = {r["name"]: (r["bar"], r["kind"]) for r in json.loads(json_path.read_text())}
    assert kinds == {
        "target": (1.5, "bar"),
        "low_floor": (1.2, "floor"),
        "held_floor": (0.8, "floor"),
        "report": (None, ""),
    }


def test_check_passes_when_every_row_holds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(compare, "ALL", {"fine": _fine})
    monkeypatch.setattr(compare, "cache_bytecode", lambda: None)
    monkeypatch.setattr(compare, "measure", lambda op, units, seconds: (op(), 100.0)[1])
    assert compare.main(["--quick", "--check"]) == 0
    assert "below" not in capsys.readouterr().out
