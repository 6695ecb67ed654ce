"""Instructions (callgrind) and Python calls of one datagram's hop through a DTP
connection pair in one process: the sender's ``send_datagrams`` and ``data_to_send``,
the receiver's ``receive_data`` to its run handler (the handlers a session sets), 512
bytes each way. No sockets, timers or other processes: the counts do not move with the
machine's load, as the halves' of ``udp_tunnel_pps`` under valgrind do
(bench/udp_counts.py ``--mode callgrind``).

    python bench/datagram_hop.py [--mode callgrind|calls] [--count N]

``callgrind``: this script under ``valgrind --tool=callgrind`` for ``count`` and
``3 x count`` round trips, the difference per hop (two a round trip). ``calls``: Python
and built-in calls a hop, by ``sys.setprofile``, the same difference. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = 512


def round_trips(count: int) -> None:
    """``count`` round trips of a datagram through an established pair."""
    from tests.support.pairs import connect

    c, s, link = connect()
    c.drain()  # (an event waiting would send each datagram the general way)
    s.drain()
    got: list[bytes] = []
    for side in (c, s):
        side.conn.stream_data_handler = lambda sid, data, fin: None
        side.conn.datagram_handler = got.append
        side.conn.datagram_run_handler = got.extend
    payload = bytes(SIZE)
    now = link.now
    a, b = c.conn, s.conn
    for _ in range(count):
        a.send_datagrams([payload])
        b.receive_data(a.data_to_send(now), now)
        b.send_datagrams([payload])
        a.receive_data(b.data_to_send(now), now)
        got.clear()
    if a.closed or b.closed:
        raise RuntimeError("the pair closed")


def _instructions(count: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "-q",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--run",
                str(count),
            ],
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for line in Path(out).read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no total in callgrind's output")


def _calls(count: int) -> dict[str, float]:
    def counted(n: int) -> collections.Counter[str]:
        calls: collections.Counter[str] = collections.Counter()

        def hook(frame: types.FrameType, event: str, arg: Any) -> None:
            if event == "call":
                calls["python_calls"] += 1
            elif event == "c_call":
                calls["builtin_calls"] += 1

        sys.setprofile(hook)
        try:
            round_trips(n)
        finally:
            sys.setprofile(None)
        return calls

    round_trips(1)  # (imports outside the counts)
    low, high = counted(count), counted(3 * count)  # (the handshake cancels out)
    return {k: round((high[k] - low[k]) / (4 * count), 1) for k in high}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--run":
        round_trips(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("callgrind", "calls"), default="callgrind")
    parser.add_argument("--count", type=int, default=1000, help="round trips")
    args = parser.parse_args()
    if args.mode == "calls":
        print(json.dumps(_calls(args.count)))
        return
    round_trips(1)  # (compiled once, outside valgrind: the two runs then alike)
    low, high = _instructions(args.count), _instructions(3 * args.count)
    print(json.dumps({"instructions_a_hop": round((high - low) / (4 * args.count))}))


if __name__ == "__main__":
    main()
