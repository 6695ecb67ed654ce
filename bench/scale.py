"""Scale runs: pub/sub, membership and graph sync at 10, 100 and 1,000 peers, in one
process per run on a virtual clock (docs/scale.md).

    python bench/scale.py                  # every run, a table per part
    python bench/scale.py pubsub --sizes 10,100
    python bench/scale.py --check          # the bars; exit status 1 if one fails
    python bench/scale.py --plot scale.png # the curves (needs matplotlib: the bench extra)
    python bench/scale.py --json f.json    # the figures, to draw or check again later:
    python bench/scale.py --from f.json --plot scale.png --check

Peers are sans-I/O engines over the link model of the deterministic network
(bench/scale_sim.py); the runs go two at a time, one per core, the longest first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale_graph import GraphRun, rejoin
from bench.scale_membership import MembershipRun
from bench.scale_pubsub import PubSubRun
from dtp.messaging._pubsub_mesh import MeshParams

SIZES = (10, 100, 1000)
#: The pub/sub runs: (label, PubSubRun keyword arguments, largest size run). Degree 32
#: shows what the mesh saves on a well-connected overlay; flooding it at 1,000 peers
#: (31 copies of each message at each peer) is left out of the run's ten minutes.
PUBSUB: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("regular-8", {"overlay": "regular"}, 1000),
    ("small-world", {"overlay": "small"}, 1000),
    ("regular-8, frames lost", {"overlay": "regular", "frame_loss": True}, 1000),
    ("regular-8, flooding (no mesh)", {"overlay": "regular", "flood": True}, 1000),
    ("regular-32", {"overlay": "regular", "degree": 32}, 100),
    ("regular-32, flooding (no mesh)", {"overlay": "regular", "degree": 32, "flood": True}, 100),
)
LOSS = 0.05
CHURN = 0.01  # of the peers replaced each second


def _pubsub(n: int, label: str, kw: dict[str, Any]) -> dict[str, Any]:
    result = PubSubRun(n, loss=LOSS, churn=CHURN, **kw).run()
    return {"part": "pubsub", "run": label, **dataclasses.asdict(result)}


def _membership(n: int) -> dict[str, Any]:
    return {"part": "membership", **dataclasses.asdict(MembershipRun(n, loss=LOSS).run())}


def _graph(n: int) -> dict[str, Any]:
    return {"part": "graph", **dataclasses.asdict(GraphRun(n, loss=LOSS).run())}


def _rejoin() -> dict[str, Any]:
    return {"part": "rejoin", **dataclasses.asdict(rejoin())}


def jobs(
    parts: list[str], sizes: list[int]
) -> list[tuple[float, Callable[..., Any], tuple[Any, ...]]]:
    """(rough cost, function, arguments) of each run asked for."""
    out: list[tuple[float, Callable[..., Any], tuple[Any, ...]]] = []
    for n in sizes:
        if "pubsub" in parts:
            out += [(15.0 * n, _pubsub, (n, label, kw)) for label, kw, top in PUBSUB if n <= top]
        if "membership" in parts:
            out.append((0.25 * n * n, _membership, (n,)))
        if "graph" in parts:
            out.append((10.0 * n, _graph, (n,)))
    if "graph" in parts:
        out.append((500.0, _rejoin, ()))
    return sorted(out, key=lambda job: -job[0])


def run(parts: list[str], sizes: list[int], workers: int = 2) -> list[dict[str, Any]]:
    todo = jobs(parts, sizes)
    if workers <= 1:
        return [fn(*args) for _, fn, args in todo]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, *args) for _, fn, args in todo]
        return [f.result() for f in futures]


# -- the tables -------------------------------------------------------------------------------


def _fmt(value: float, unit: str = "") -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:,.3f}{unit}" if abs(value) < 10 else f"{value:,.0f}{unit}"


def tables(results: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    pub = sorted(
        (r for r in results if r["part"] == "pubsub"), key=lambda r: (r["run"], r["peers"])
    )
    if pub:
        d = MeshParams().d
        lines += [
            f"pub/sub (mesh D={d}; links 20-100 ms, {LOSS:.0%} loss, {CHURN:.0%} of the peers "
            "replaced a second; 100 messages of 128 bytes)",
            "| overlay | peers | delivery | p50 | p99 | copies/msg/peer | bytes/peer/msg | "
            "CPU/msg | mesh degree | left/joined |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in pub:
            lines.append(
                f"| {r['run']} | {r['peers']:,} | {r['delivery']:.4%} | {r['p50'] * 1000:.0f} ms | "
                f"{r['p99'] * 1000:.0f} ms | {r['amplification']:.2f} | "
                f"{r['bytes_per_peer']:,.0f} | {r['cpu_per_message'] * 1000:.1f} ms | "
                f"{r['mesh_degree']:.1f} | {r['left']}/{r['joined']} |"
            )
        lines.append("")
    mem = sorted((r for r in results if r["part"] == "membership"), key=lambda r: r["members"])
    if mem:
        lines += [
            f"membership (SWIM engine; pairs 20-100 ms, {LOSS:.0%} loss as retransmission)",
            "| members | all views full | msgs/member/period | bytes/member/period | "
            "first suspect | first dead | seen dead by all | bound | CPU |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in mem:
            lines.append(
                f"| {r['members']:,} | {_fmt(r['converged'], ' s')} | "
                f"{r['messages_per_period']:.2f} | {r['bytes_per_period']:,.0f} | "
                f"{_fmt(r['first_suspect'], ' s')} | {_fmt(r['first_dead'], ' s')} | "
                f"{_fmt(r['death_seen'], ' s')} | {r['bound']:,.0f} s | {r['cpu']:.1f} s |"
            )
        lines.append("")
    graph = sorted((r for r in results if r["part"] == "graph"), key=lambda r: r["peers"])
    if graph:
        lines += [
            f"graph sync (random regular degree 8; links 20-100 ms, {LOSS:.0%} loss as "
            "retransmission; 20 changes)",
            "| peers | reached | all have it, p50 | max | bytes/peer/change | CPU/change |",
            "|---|---|---|---|---|---|",
        ]
        for r in graph:
            lines.append(
                f"| {r['peers']:,} | {r['reached']:.2%} | {r['all_p50'] * 1000:.0f} ms | "
                f"{r['all_max'] * 1000:.0f} ms | {r['bytes_per_peer']:,.0f} | "
                f"{r['cpu_per_change'] * 1000:.1f} ms |"
            )
        lines.append("")
    for r in results:
        if r["part"] == "rejoin":
            lines.append(
                f"rejoin: {r['missed']:,} changes missed, {r['neighbours']} neighbours: "
                f"{r['cpu']:.2f} s of CPU, {r['seconds']:.2f} s, "
                f"{r['bytes_received']:,} bytes received, caught up: {r['caught_up']}"
            )
    return "\n".join(lines)


# -- the bars ---------------------------------------------------------------------------------


def check(results: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """Each bar: (what, held, the figures)."""
    out: list[tuple[str, bool, str]] = []
    d = MeshParams().d
    pub = {r["peers"]: r for r in results if r["part"] == "pubsub" and r["run"] == "regular-8"}
    if 1000 in pub:
        r = pub[1000]
        out.append(("pub/sub delivery >= 99.9 %", r["delivery"] >= 0.999, f"{r['delivery']:.4%}"))
        out.append(("pub/sub p99 <= 1 s", r["p99"] <= 1.0, f"{r['p99']:.3f} s"))
        out.append(
            (
                f"pub/sub copies per message per peer <= 1.5 x D = {1.5 * d}",
                r["amplification"] <= 1.5 * d,
                f"{r['amplification']:.2f}",
            )
        )
        if 100 in pub:
            ratio = r["amplification"] / pub[100]["amplification"]
            out.append(
                (
                    "pub/sub copies flat within 20 % (100 -> 1,000)",
                    abs(ratio - 1) <= 0.2,
                    f"x{ratio:.3f}",
                )
            )
    member = {r["members"]: r for r in results if r["part"] == "membership"}
    if 1000 in member:
        r = member[1000]
        out.append(
            (
                "membership: a death seen by all within the documented bound",
                r["death_seen"] <= r["bound"],
                f"{r['death_seen']:.1f} s (guaranteed {r['bound']:.0f} s, typical "
                f"{r.get('spread', float('nan')):.1f} s)",
            )
        )
        if 100 in member:
            ratio = r["messages_per_period"] / member[100]["messages_per_period"]
            out.append(
                (
                    "membership messages per member per period flat within 20 % (100 -> 1,000)",
                    abs(ratio - 1) <= 0.2,
                    f"x{ratio:.3f}",
                )
            )
    graph = {r["peers"]: r for r in results if r["part"] == "graph"}
    if 1000 in graph and 100 in graph:
        ratio = graph[1000]["bytes_per_peer"] / graph[100]["bytes_per_peer"]
        out.append(
            (
                "graph bytes per peer per change flat within 20 %",
                abs(ratio - 1) <= 0.2,
                f"x{ratio:.3f}",
            )
        )
    for r in results:
        if r["part"] == "rejoin":
            out.append(
                (
                    "graph rejoin after 10,000 changes <= 2 s of CPU",
                    r["cpu"] <= 2.0 and r["caught_up"],
                    f"{r['cpu']:.2f} s",
                )
            )
    return out


def plot(results: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'dtp-sui[bench]'") from None
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    pub = [r for r in results if r["part"] == "pubsub"]
    for label in sorted({r["run"] for r in pub}):
        rows = sorted((r for r in pub if r["run"] == label), key=lambda r: r["peers"])
        ns = [r["peers"] for r in rows]
        axes[0][0].plot(ns, [r["p99"] * 1000 for r in rows], "o-", label=label)
        axes[0][1].plot(ns, [r["amplification"] for r in rows], "o-", label=label)
        axes[0][2].plot(ns, [r["bytes_per_peer"] for r in rows], "o-", label=label)
    axes[0][0].set_title("pub/sub p99 propagation (ms)")
    axes[0][1].set_title("pub/sub copies per message per peer")
    axes[0][2].set_title("pub/sub bytes per peer per message")
    mem = sorted((r for r in results if r["part"] == "membership"), key=lambda r: r["members"])
    if mem:
        ns = [r["members"] for r in mem]
        axes[1][0].plot(ns, [r["messages_per_period"] for r in mem], "o-", label="messages")
        axes[1][0].plot(ns, [r["death_seen"] for r in mem], "s-", label="death seen by all (s)")
        axes[1][0].set_title("membership, per member per period")
        axes[1][1].plot(ns, [r["bytes_per_period"] for r in mem], "o-")
        axes[1][1].set_title("membership bytes per member per period")
    graph = sorted((r for r in results if r["part"] == "graph"), key=lambda r: r["peers"])
    if graph:
        ns = [r["peers"] for r in graph]
        axes[1][2].plot(ns, [r["bytes_per_peer"] for r in graph], "o-", label="bytes/peer/change")
        axes[1][2].plot(ns, [r["all_max"] * 1000 for r in graph], "s-", label="all have it (ms)")
        axes[1][2].set_title("graph sync")
    for row in axes:
        for ax in row:
            ax.set_xscale("log")
            ax.set_xlabel("peers")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", default=[], help="pubsub, membership, graph")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--check", action="store_true", help="check the bars")
    parser.add_argument("--plot", metavar="FILE", help="draw the curves to FILE")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    parser.add_argument(
        "--from", dest="source", metavar="FILE", help="read the figures of --json (no runs)"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    parts = args.parts or ["pubsub", "membership", "graph"]
    for part in parts:
        if part not in ("pubsub", "membership", "graph"):
            parser.error(f"unknown part {part!r}")
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    if args.source:
        results = json.loads(Path(args.source).read_text())
    else:
        results = run(parts, sizes, args.workers)
    print(tables(results))
    if not args.source:
        print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)
    if args.check:
        bars = check(results)
        for what, held, figure in bars:
            print(f"{'ok  ' if held else 'FAIL'} {what}: {figure}")
        if not all(held for _, held, _ in bars):
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
