"""bench/scale.py at 10 peers (a few seconds): every part runs, prints its tables and
its figures hold what the runs at 1,000 are held to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scale


def test_scale_runs_every_part_at_ten_peers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scale.json"
    assert scale.main(["--sizes", "10", "--workers", "1", "--check", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pub/sub (mesh D=6" in printed and "membership" in printed
    assert "graph sync" in printed and "rejoin: 10,000 changes missed" in printed
    results = json.loads(out.read_text())
    pub = {r["run"]: r for r in results if r["part"] == "pubsub"}
    assert set(pub) == {label for label, _, _ in scale.PUBSUB}
    for r in pub.values():
        assert r["peers"] == 10 and r["messages"] == 100
        assert r["delivery"] == 1.0
        assert 0.02 <= r["p50"] <= r["p99"] < 1.0  # a hop takes 20..100 ms
        assert r["bytes_per_peer"] > 128  # at least the message itself, once
    # the mesh bounds the copies a peer receives; flooding sends one per neighbour (at
    # 10 peers of degree 32, the complete graph: 9 neighbours, 8 copies)
    assert pub["regular-8"]["amplification"] <= 1.5 * 6
    assert pub["regular-32, flooding (no mesh)"]["amplification"] > 7.5
    [mem] = [r for r in results if r["part"] == "membership"]
    assert mem["members"] == 10
    assert mem["death_seen"] <= mem["bound"]
    assert 0 < mem["messages_per_period"] < 10
    [graph] = [r for r in results if r["part"] == "graph"]
    assert graph["reached"] == 1.0 and graph["bytes_per_peer"] > 0
    [back] = [r for r in results if r["part"] == "rejoin"]
    assert back["caught_up"] and back["missed"] == 10_000
    assert "ok   graph rejoin" in printed


def test_overlays_have_the_degree_asked_for() -> None:
    import random

    from bench.scale_sim import random_regular, small_world

    adj = random_regular(100, 8, random.Random(3))
    assert all(len(a) == 8 for a in adj)
    assert all(i not in a and all(i in adj[j] for j in a) for i, a in enumerate(adj))
    sw = small_world(100, 8, random.Random(3))
    assert sum(len(a) for a in sw) == 100 * 8  # rewiring keeps the number of links
    assert all(i not in a and all(i in sw[j] for j in a) for i, a in enumerate(sw))
