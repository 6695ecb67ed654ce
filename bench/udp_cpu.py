"""CPU per echoed datagram of each half of the udp_tunnel_pps row (bench/udp_rows.py):
the DTP forwarder and relay against the plain UDP relay pair, on the row's own paths.

    python bench/udp_cpu.py [--spawns N] [--rounds N] [--count N] [--window N]

Each spawn starts the four halves afresh (which process waits for which on a shared
machine is settled per spawn, and it moves the figures more than any round does),
then runs ``--rounds`` interleaved rounds of ``--count`` datagrams a side, reading
every thread's run time of each half from ``/proc/PID/task/*/schedstat`` around
each (the kernel's time included; a far half's includes its echo backend's thread,
the same on either side). Printed: each spawn's medians, then the medians of those.
The halves' event loop is the daemon's default (``DTP_EVENT_LOOP`` chooses another).
``--window 1`` (a datagram echoed before the next goes) gives what a run costs each
hop whatever its length, against the row's windows of 32.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import udp_rows
from bench.tunnel_cpu import run_time

SIDES = ("ours", "peer")
HALVES = ("near", "far")


def spawn(rounds: int, count: int, window: int = udp_rows.WINDOW) -> dict[str, dict[str, float]]:
    """One spawn's medians: µs of CPU per datagram of each side's near and far half,
    and its rate in datagrams/s."""
    halves: dict[str, tuple[udp_rows._Side, udp_rows._Side]] = {}
    clients: list[socket.socket] = []
    try:
        far = udp_rows._Side("udp_far.py", "dtp-aio")
        halves["ours"] = (
            udp_rows._Side("udp_near.py", "dtp-aio", str(far.address[1]), far.key),
            far,
        )
        far = udp_rows._Side("udp_far.py", "plain")
        halves["peer"] = (udp_rows._Side("udp_near.py", "plain", str(far.address[1])), far)
        ops = {
            side: udp_rows._drive(halves[side][0].address, count, clients, window) for side in SIDES
        }
        got: dict[str, dict[str, list[float]]] = {
            side: {"near": [], "far": [], "rate": []} for side in SIDES
        }
        for _ in range(rounds):
            for side in SIDES:
                pids = [half.proc.pid for half in halves[side]]
                before = [run_time(pid) for pid in pids]
                start = time.perf_counter()
                ops[side]()
                wall = time.perf_counter() - start
                for name, pid, was in zip(HALVES, pids, before, strict=True):
                    got[side][name].append((run_time(pid) - was) / count * 1e6)
                got[side]["rate"].append(count / wall)
        return {
            side: {key: statistics.median(values) for key, values in got[side].items()}
            for side in SIDES
        }
    finally:
        for client in clients:
            client.close()
        for pair in halves.values():
            for half in pair:
                half.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--count", type=int, default=4096, help="datagrams a round a side")
    parser.add_argument("--window", type=int, default=udp_rows.WINDOW, help="datagrams a window")
    args = parser.parse_args()
    spawns = []
    for _ in range(args.spawns):
        load = os.getloadavg()[0]
        medians = spawn(args.rounds, args.count, args.window)
        spawns.append(medians)
        shown = "   ".join(
            f"{side} near {m['near']:.2f} far {m['far']:.2f} µs" for side, m in medians.items()
        )
        ratio = medians["ours"]["rate"] / medians["peer"]["rate"]
        print(f"load {load:.1f}: {shown}   rate ratio {ratio:.2f}", flush=True)
    print(
        f"medians of {args.spawns} spawns ({args.rounds} rounds of {args.count} a side, "
        f"windows of {args.window}):"
    )
    for side in SIDES:
        near = statistics.median(s[side]["near"] for s in spawns)
        far = statistics.median(s[side]["far"] for s in spawns)
        both = [s[side]["near"] + s[side]["far"] for s in spawns]
        print(
            f"  {side}: near {near:.1f}, far {far:.1f}, both {statistics.median(both):.1f} µs "
            f"({min(both):.1f}-{max(both):.1f})"
        )
    ratios = [s["ours"]["rate"] / s["peer"]["rate"] for s in spawns]
    print(f"  rate ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
