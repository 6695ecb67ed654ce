"""CPU per operation of each process of the tunnel rows (bench/tunnel_rows.py): the
forwarder and serving daemons against the TLS relay pair, on the rows' own paths.

    python bench/tunnel_cpu.py requests|bulk [--rounds N] [--ours-only]

Each round runs the row's workload once through the daemons and once through the
relays, and reads every thread's run time of each process from
``/proc/PID/task/*/schedstat`` (nanoseconds, where ``/proc/PID/stat`` counts clock
ticks) around it: µs per request (3,000 HTTP keep-alive POSTs a round) or per MB
(256 MiB one way). The wall-clock rate of the rows follows the scheduler of a shared
machine more than this (docs/benchmarks.md, "The tunnel rows")."""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import tunnel_rows

NAMES = ("backend", "daemon", "forwarder", "relay-back", "relay-front")
OURS = ("daemon", "forwarder")
REQUESTS = 3000
BULK = 256 << 20


def run_time(pid: int) -> float:
    """Seconds on a CPU so far, summed over the threads of ``pid``."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # (a thread that ended meanwhile)
    return total / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("requests", "bulk"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ours-only", action="store_true", help="skip the relay pair")
    args = parser.parse_args()
    paths = tunnel_rows._Paths("http" if args.kind == "requests" else "sink")
    pids = {name: proc.proc.pid for name, proc in zip(NAMES, paths.procs, strict=True)}
    conns: dict[str, http.client.HTTPConnection] = {}
    try:
        runs: dict[str, Callable[[], None]]
        if args.kind == "requests":
            conns = {
                "ours": http.client.HTTPConnection(*paths.ours, timeout=30),
                "peer": http.client.HTTPConnection(*paths.peer, timeout=30),
            }
            runs = {
                side: (lambda s=side: tunnel_rows._requests(conns, s, REQUESTS)) for side in conns
            }
            per, unit = float(REQUESTS), "µs/request"
        else:
            runs = {
                "ours": lambda: tunnel_rows._bulk(paths.ours, BULK),
                "peer": lambda: tunnel_rows._bulk(paths.peer, BULK),
            }
            per, unit = BULK / 1e6, "µs/MB"
        sides = ("ours",) if args.ours_only else ("ours", "peer")
        for side in sides:
            runs[side]()  # warm up: the tunnel and the TLS session are opened here
        cpu: dict[str, list[float]] = {name: [] for name in NAMES[1:]}
        wall: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side in sides:
                before = {name: run_time(pid) for name, pid in pids.items()}
                start = time.perf_counter()
                runs[side]()
                wall[side].append((time.perf_counter() - start) / per * 1e6)
                for name in NAMES[1:]:
                    if (name in OURS) == (side == "ours"):
                        cpu[name].append((run_time(pids[name]) - before[name]) / per * 1e6)
        print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} rounds, {unit}")
        for name, values in cpu.items():
            if values:
                shown = ", ".join(f"{v:.1f}" for v in values)
                print(f"  {name:<12} {statistics.median(values):8.1f}   ({shown})")
        for side in sides:
            first, second = OURS if side == "ours" else NAMES[3:]
            pair = [a + b for a, b in zip(cpu[first], cpu[second], strict=True)]
            print(
                f"  {side} pair {statistics.median(pair):8.1f}, "
                f"wall {statistics.median(wall[side]):.1f}"
            )
    finally:
        for conn in conns.values():
            conn.close()
        paths.close()


if __name__ == "__main__":
    main()
