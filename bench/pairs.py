"""A row's ratio measured in interleaved pairs, without the drift between rounds.

``compare.py`` runs ours and the peer in alternating rounds of about 1.5 s each; on a
host whose speed swings (a shared VM, a disk whose sync time varies) a row near its
bar can read on either side of it from one run to the next. This runs one call of
``ours`` and one of the peer per pair, in random order, many pairs, and reports the
median of the pairs' ratios (peer time / our time: our rate over the peer's) with a
bootstrap interval of that median::

    .venv/bin/python bench/pairs.py paid_bulk --pairs 120
    .venv/bin/python bench/pairs.py hostid_connect_rate --pairs 100

Only rows whose peer is a callable (not a rate measured elsewhere) can be paired.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workload import bar_kind
from bench.workloads import ALL


def bootstrap_median(values: list[float], rounds: int, rng: random.Random) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the median of ``values`` resampled."""
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(rounds * 0.025)], medians[int(rounds * 0.975) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", choices=sorted(ALL), help="a row of bench/compare.py")
    parser.add_argument("--pairs", type=int, default=100, help="pairs to run (default 100)")
    parser.add_argument("--warmup", type=int, default=3, help="pairs run first, not counted")
    parser.add_argument("--seed", type=int, default=None, help="the order's random seed")
    args = parser.parse_args(argv)
    if args.pairs < 2:
        parser.error("--pairs must be at least 2")
    work = ALL[args.row]()
    try:
        if work.peer is None:
            parser.error(f"{args.row}: its peer is a rate measured elsewhere, not a call")
        rng = random.Random(args.seed)
        sides = [("ours", work.ours), ("peer", work.peer)]
        for _ in range(args.warmup):
            for _, op in sides:
                op()
        ratios: list[float] = []
        totals = {"ours": 0.0, "peer": 0.0}
        peer_units = work.peer_units if work.peer_units is not None else work.units
        for _ in range(args.pairs):
            took: dict[str, float] = {}
            for name, op in rng.sample(sides, 2):
                start = time.perf_counter()
                op()
                took[name] = time.perf_counter() - start
            totals["ours"] += took["ours"]
            totals["peer"] += took["peer"]
            ratios.append((work.units / took["ours"]) / (peer_units / took["peer"]))
        low, high = bootstrap_median(ratios, 2000, rng)
        ours_rate = work.units * args.pairs / totals["ours"]
        peer_rate = peer_units * args.pairs / totals["peer"]
        bar = f" ({bar_kind(work.bar)} {work.bar:g})" if work.bar is not None else ""
        print(
            f"{args.row}: median ratio {statistics.median(ratios):.3f} over {args.pairs} "
            f"pairs, 95% interval {low:.3f}-{high:.3f}{bar}; "
            f"ours {ours_rate:,.2f} / peer {peer_rate:,.2f} {work.unit}"
        )
    finally:
        if work.close is not None:
            work.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
