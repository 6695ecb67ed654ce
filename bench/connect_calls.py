"""How many calls a connection by host ID makes on each side: counts, not time.

    python bench/connect_calls.py [--connections N] [--top K] [--plain]

Runs ``hostid_connect_rate``'s operation (connect by host ID to a paid echo service on a
LocalLedger file, one 100-byte round trip, close), or with ``--plain`` ``connect_rate``'s
(connect with a known key to bench/netpeers.py's blocking echo server, the same round
trip and close), N times and prints, per connection, the calls the client's process and
the paid server's process made (Python functions and builtins, counted with a profile
hook in every thread: bench/_call_counts.py), the server's calls inside each of its
``SERVER_PHASES`` (nested ones counted in each) and the K functions called most on each
side (``--inside``: the K with the most calls made inside them, nested ones included).
A count does not move with the machine's load, as a CPU reading does
(``bench/connect_phases.py``); under the hook each call costs far more than without,
so the hook is set only for the connections counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._call_counts import count, parse_args


def measure(connections: int, top: int, plain: bool = False) -> dict[str, Any]:
    """Each side's calls per connection."""
    from bench.net import _pingpong

    def connect(peer: Any, times: int) -> None:
        for _ in range(times):
            with peer.connect() as s:
                _pingpong(s, 1)

    return count(
        "echo",
        plain,
        connections,
        top,
        lambda peer: connect(peer, max(10, connections // 10)),  # (warm up)
        lambda peer: connect(peer, connections),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    args = parse_args(parser, 20, "connect_rate's operation")
    r = measure(args.connections, args.top, args.plain)
    for side in ("client", "server"):
        got = r[side]
        print(f"{side}: {got['calls']:.0f} calls per connection ({got['python']:.0f} Python)")
        if side == "server":
            for name, calls in got["phases"].items():
                print(f"  inside {name.lstrip(':'):42} {calls:8.0f}")
        for name, calls in got["top"]:
            print(f"  {calls:8.1f}  {name}")


if __name__ == "__main__":
    main()
