"""``python -m tests.support.sui_node``: the Sui node stand-in as a process of its own.

It prints one line once it serves (``ready url=http://HOST:PORT package=0x…``; with
``--print-url`` just the URL and package ID) and serves until SIGTERM or SIGINT. With
``--state DIR`` its state (objects, coins, events, clock) lives in DIR and survives a
restart, so that two daemons in two network namespaces can share one node. SIGUSR1 makes
it go away (refuse connections, drop the open ones) and SIGUSR2 come back, state kept.
"""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
from collections.abc import Sequence

from tests.support.sui_node.server import DEFAULT_PACKAGE, SuiNodeStandIn
from tests.support.sui_node.state import DAY_MS


def _funding(text: str) -> tuple[str, int]:
    address, _, amount = text.partition("=")
    if not address or not amount.isdigit():
        raise argparse.ArgumentTypeError(f"--fund takes ADDRESS=MIST, got {text!r}")
    return address, int(amount)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.support.sui_node", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=0, help="port (0: any free one)")
    p.add_argument("--state", default=None, help="directory keeping the state (default: memory)")
    p.add_argument("--package", default=DEFAULT_PACKAGE, help="the package ID to stand for")
    p.add_argument("--clock-ms", type=int, default=None, help="freeze the clock at this time")
    p.add_argument("--epoch-ms", type=int, default=DAY_MS, help="epoch length in ms")
    p.add_argument("--gas-price", type=int, default=1000, help="reference gas price in MIST")
    p.add_argument("--tx-latency", type=float, default=0.0, help="seconds per transaction")
    p.add_argument("--read-latency", type=float, default=0.0, help="seconds per read")
    p.add_argument("--rate-limit", type=float, default=None, help="calls per second served")
    p.add_argument(
        "--contention",
        type=float,
        default=0.0,
        help="probability that a transaction writing a shared object in use is cancelled",
    )
    p.add_argument(
        "--index-lag",
        type=float,
        default=0.0,
        help="seconds an object a transaction created stays unknown to reads on other "
        "client connections (other full nodes)",
    )
    p.add_argument(
        "--fund", type=_funding, action="append", default=[], help="ADDRESS=MIST at start"
    )
    p.add_argument("--print-url", action="store_true", help="print only 'URL PACKAGE' when ready")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    node = SuiNodeStandIn(
        args.state,
        package=args.package,
        host=args.host,
        port=args.port,
        clock_ms=args.clock_ms,
        epoch_ms=args.epoch_ms,
        gas_price=args.gas_price,
        tx_latency=args.tx_latency,
        read_latency=args.read_latency,
        rate_limit=args.rate_limit,
        contention=args.contention,
        index_lag=args.index_lag,
    )
    stop = threading.Event()
    requests: queue.SimpleQueue[str] = queue.SimpleQueue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # acted on by the main loop, not in the handler: go_away waits for the server thread
    signal.signal(signal.SIGUSR1, lambda *_: requests.put("away"))
    signal.signal(signal.SIGUSR2, lambda *_: requests.put("back"))
    with node:
        for address, amount in args.fund:
            node.faucet(address, amount)
        if args.print_url:
            print(node.url, node.package_id, flush=True)
        else:
            print(f"ready url={node.url} package={node.package_id}", flush=True)
        while not stop.wait(0.2):
            while not requests.empty():
                if requests.get() == "away":
                    node.go_away()
                else:
                    node.come_back()
    return 0


if __name__ == "__main__":
    sys.exit(main())
