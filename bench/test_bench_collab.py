"""The body of bench/collab_rows.py's row, run once with few edits (compare.py times
it): both sides' two processes type at once and end with the same text (run_pair raises
otherwise), and each side reports a rate."""

from __future__ import annotations

import importlib.util

import pytest

from bench import collab_rows


@pytest.mark.skipif(
    importlib.util.find_spec("pycrdt") is None, reason="the collab extra (pycrdt) is needed"
)
@pytest.mark.parametrize("side", ["dtp", "ws"])
def test_collab_text_sync(side: str) -> None:
    if side == "ws" and importlib.util.find_spec("pycrdt.websocket") is None:
        pytest.skip("pycrdt-websocket (the bench extra) is needed for the peer")
    run = collab_rows.run_pair(side, edits=200)
    assert run["rate"] > 0
    assert run["seconds"] > 0


def test_collab_text_sync_is_a_row_of_compare() -> None:
    from bench.workloads import ALL

    row = ALL["collab_text_sync"]()
    assert (row.name, row.unit, row.bar, row.measured) == ("collab_text_sync", "edits/s", 1.0, True)
