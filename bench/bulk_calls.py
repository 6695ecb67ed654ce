"""How many calls a bulk transfer makes on each side, per MB: counts, not time.

    python bench/bulk_calls.py [--mb N] [--transfers T] [--top K] [--plain] [--inside]

Runs ``paid_bulk``'s operation (a one-way transfer of N MiB through a metered
connection by host ID to a paid sink on a LocalLedger file), or with ``--plain`` its
peer's (the same through an unmetered DTP connection to bench/netpeers.py's blocking
sink), T times, and prints per MiB the calls the client's process and the server's
process made (Python functions and builtins, counted with a profile hook in every
thread) and the K functions called most on each side (``--inside``: the K with the most
calls made inside them, nested ones included). Connect and close are counted too: with
a large N they weigh little. Under the hook every call costs far more than without, so
the reads' sizes (and with them the counts) may differ somewhat from an unhooked run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._call_counts import count, parse_args

MIB = 1 << 20


def measure(mib: int, transfers: int, top: int, plain: bool = False) -> dict[str, Any]:
    """Each side's calls per MiB."""
    from bench.net import _send_bulk

    def send(peer: Any, times: int) -> None:
        for _ in range(times):
            with peer.connect() as s:
                _send_bulk(s, mib * MIB)

    return count(
        "sink",
        plain,
        mib * transfers,
        top,
        lambda peer: send(peer, 1),  # (warm up)
        lambda peer: send(peer, transfers),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="MiB a transfer (default 64)")
    parser.add_argument("--transfers", type=int, default=2)
    args = parse_args(parser, 25, "paid_bulk's peer (unmetered)")
    r = measure(args.mb, args.transfers, args.top, args.plain)
    for side in ("client", "server"):
        got = r[side]
        print(f"{side}: {got['calls']:.1f} calls per MiB ({got['python']:.1f} Python)")
        for name, calls in got["top"]:
            print(f"  {calls:8.2f}  {name}")


if __name__ == "__main__":
    main()
