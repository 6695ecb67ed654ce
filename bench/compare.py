"""Run each benchmark next to its peer, in the same run, and print their ratio.

    python bench/compare.py [--quick] [--only NAME,NAME] [--json FILE] [--check]
                            [--sui-latency SECONDS]

Rates are "higher is better". Each row alternates ours and the peer several times and
reports the medians, and the median of the per-round ratios, because these machines are
noisy. A row may measure a figure once a round instead of a rate (``churn_memory``: a
server's memory after 80,000 connections, several minutes; ``--quick``: 4,000), its
ratio still "higher is better". A row's bar is a target, or a floor (``kind`` "floor"):
a row at the limit of the design's shape, which no change may read below. ``--check``
exits 1 when a row falls below its bar or its floor.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sui_rows import LATENCY_ENV
from bench.workload import bar_kind
from bench.workloads import ALL, Workload


def measure(op: Callable[[], object], units: float, seconds: float) -> float:
    """Units per second of ``op``, run repeatedly for about ``seconds``."""
    op()  # warm up (allocations, caches, lazy imports)
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        op()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return units * calls / (now - start)


def run_row(w: Workload, rounds: int, seconds: float) -> dict[str, object]:
    ours_rates: list[float] = []
    peer_rates: list[float] = []
    ratios: list[float] = []
    for _ in range(w.rounds or rounds):
        if w.measured:
            # (a figure measured once a round -- a memory size -- not a timed rate)
            assert w.peer is not None
            ours, peer = float(w.ours()), float(w.peer())  # type: ignore[arg-type]
            ours_rates.append(ours)
            peer_rates.append(peer)
            ratios.append(peer / ours if w.lower_is_better else ours / peer)
            continue
        ours = measure(w.ours, w.units, seconds)
        if w.peer_rate is not None:
            peer = w.peer_rate(seconds)
        else:
            assert w.peer is not None
            peer = measure(w.peer, w.peer_units or w.units, seconds)
        ours_rates.append(ours)
        peer_rates.append(peer)
        ratios.append(ours / peer)
    ratio = statistics.median(ratios)
    return {
        "name": w.name,
        "ours": statistics.median(ours_rates),
        "peer": statistics.median(peer_rates),
        "unit": w.unit,
        "ratio": ratio,
        "bar": w.bar,
        "kind": bar_kind(w.bar),
        "ok": None if w.bar is None else ratio >= w.bar,
        "note": w.note,
    }


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def cache_bytecode() -> None:
    """Write dtp's and bench's bytecode before any row runs, so that every process imports
    it cached, as users' do, whatever ``PYTHONDONTWRITEBYTECODE`` says: compiling a module
    at import frees a block as large as the module, which moves glibc malloc's mmap
    threshold and with it tcp_bulk_asyncio by up to 2x (docs/benchmarks.md)."""
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in ("dtp", "bench"):
        compileall.compile_dir(root / package, quiet=1, workers=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (a few s per row)")
    parser.add_argument("--only", help="comma-separated row names")
    parser.add_argument("--json", dest="json_path", help="also write the rows as JSON here")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a row reads below its bar or floor"
    )
    parser.add_argument(
        "--sui-latency",
        type=float,
        metavar="SECONDS",
        help="seconds a transaction takes on the Sui node stand-in of the *_sui rows "
        "(default $DTP_BENCH_SUI_LATENCY, else 0.3)",
    )
    args = parser.parse_args(argv)
    if args.sui_latency is not None:
        if not 0 <= args.sui_latency < 60:
            parser.error("--sui-latency: seconds from 0 to under 60")
        os.environ[LATENCY_ENV] = str(args.sui_latency)

    names = list(ALL) if not args.only else [n.strip() for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)} (known: {', '.join(ALL)})")
    rounds, seconds = (3, 0.4) if args.quick else (5, 1.5)
    cache_bytecode()

    rows = []
    header = f"{'name':<22} {'ours':>14} {'peer':>14} {'unit':<9} {'ratio':>7} {'bar':>6} kind"
    print(header)
    print("-" * len(header))
    failed: list[str] = []
    for name in names:
        factory = ALL[name]
        # (a row whose one run takes minutes has a short form of its own for --quick)
        quick = "quick" in inspect.signature(factory).parameters
        # A row that fails (a peer that hangs, a tool missing) is reported and the run
        # goes on: one row's trouble should not cost the readings of all that follow.
        try:
            workload = factory(quick=args.quick) if quick else factory()  # type: ignore[call-arg]
            try:
                row = run_row(workload, rounds, seconds)
            finally:
                if workload.close is not None:
                    workload.close()
        except Exception as exc:
            traceback.print_exc()
            failed.append(name)
            reason = f"{type(exc).__name__}: {exc}"
            print(f"{name:<22} FAILED: {reason}"[:200], flush=True)
            rows.append({"name": name, "failed": reason, "ok": None})
            continue
        rows.append(row)
        bar = "" if row["bar"] is None else f"{row['bar']:.2f}"
        below = f"  BELOW {str(row['kind']).upper()}"
        flag = "" if row["ok"] is None else ("  ok" if row["ok"] else below)
        print(
            f"{name:<22} {_fmt(row['ours']):>14} {_fmt(row['peer']):>14} "  # type: ignore[arg-type]
            f"{row['unit']:<9} {row['ratio']:>7.2f} {bar:>6} {row['kind']:<5}{flag}",
            flush=True,
        )
    if args.json_path:
        keys = ("name", "ours", "peer", "unit", "ratio", "bar", "kind", "failed")
        Path(args.json_path).write_text(
            json.dumps([{k: r[k] for k in keys if k in r} for r in rows], indent=2)
        )
    missed = [r for r in rows if r["ok"] is False]
    for kind in ("bar", "floor"):
        below = [str(r["name"]) for r in missed if r["kind"] == kind]
        if below:
            print(f"\nbelow {kind}: {', '.join(below)}")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
