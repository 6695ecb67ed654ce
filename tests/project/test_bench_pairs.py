"""bench/pairs.py: a row measured in interleaved pairs prints its median ratio, the
bootstrap interval around it and both rates; a row whose peer is not a call is refused
by name (its peer is a rate measured elsewhere)."""

from __future__ import annotations

import re

import pytest

from bench.pairs import bootstrap_median, main


def test_a_row_in_pairs_prints_its_median_ratio_and_interval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["receipt_verify", "--pairs", "3", "--warmup", "0", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"median ratio ([\d.]+) over 3 pairs, 95% interval ([\d.]+)-([\d.]+)", out)
    assert found, out
    ratio, low, high = (float(x) for x in found.groups())
    assert 0 < low <= ratio <= high, out
    assert "receipts/s" in out


def test_a_row_whose_peer_is_a_rate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["aead_seal_16k", "--pairs", "3"])
    assert "measured elsewhere" in capsys.readouterr().err


def test_the_bootstrap_interval_holds_the_median() -> None:
    import random

    values = [0.9, 0.95, 0.96, 0.97, 1.0, 0.94, 0.93]
    low, high = bootstrap_median(values, 500, random.Random(7))
    assert min(values) <= low <= 0.95 <= high <= max(values)
