"""bench/compare.py itself: a row that fails is reported and the rows after it still run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import compare
from bench.workload import Workload


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
