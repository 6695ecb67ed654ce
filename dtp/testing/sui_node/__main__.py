"""``python -m dtp.testing.sui_node``: the Sui node stand-in as a process of its own.

It prints one line once it serves, and serves until SIGTERM or SIGINT:

    ready url=http://127.0.0.1:9000 package=0xd7d7… faucet=http://127.0.0.1:9123/v2/gas

``url`` is one a client on this machine can use (the loopback address when the node
listens on every interface, ``--host 0.0.0.0``; ``also=`` then lists the URLs of the
machine's other addresses, for processes in other network namespaces or on other
machines). With ``--grpc-web-port`` it also serves gRPC-web, what a browser and Mysten's
TypeScript SDK speak, on a port of its own (``web=URL``). With ``--print-url`` the line
is just ``URL PACKAGE``. With ``--state DIR`` its state (objects, coins, events, clock)
lives in DIR and survives a restart. SIGUSR1 makes it go away (refuse connections, drop
the open ones) and SIGUSR2 come back, state kept.

Funding: ``--fund ADDRESS=MIST`` (repeat it for more addresses) at start; afterwards,
through the HTTP faucet the ready line names (Sui's faucet API: ``POST /v2/gas``), from
any process that reaches it -- ``python -m dtp.testing.sui_node fund FAUCET_URL
ADDRESS=MIST ...``, or ``curl``.
"""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
from collections.abc import Sequence

from dtp.ledger._versions import PACKAGE_VERSION
from dtp.testing.sui_node._faucet import FaucetError, request_funds
from dtp.testing.sui_node._server import DEFAULT_PACKAGE, SuiNodeStandIn
from dtp.testing.sui_node._state import DAY_MS

PROG = "python -m dtp.testing.sui_node"


def _funding(text: str) -> tuple[str, int]:
    address, _, amount = text.partition("=")
    if not address or not amount.isdigit() or not amount.isascii():
        raise argparse.ArgumentTypeError(f"--fund takes ADDRESS=MIST, got {text!r}")
    return address, int(amount)


def parser() -> argparse.ArgumentParser:
    """The serving command's options."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface, for other namespaces or machines)",
    )
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
        "--fund",
        type=_funding,
        action="append",
        default=[],
        metavar="ADDRESS=MIST",
        help="give ADDRESS a coin of MIST at start; repeat for more (later: the faucet)",
    )
    p.add_argument(
        "--faucet-port",
        type=int,
        default=0,
        help="port of the HTTP faucet (Sui's faucet API, POST /v2/gas; 0: any free one)",
    )
    p.add_argument("--no-faucet", action="store_true", help="serve no HTTP faucet")
    p.add_argument(
        "--grpc-web-port",
        type=int,
        default=None,
        help="also serve gRPC-web (what Mysten's TypeScript SDK speaks) on this port "
        "(0: any free one); the ready line names it web=URL",
    )
    p.add_argument("--print-url", action="store_true", help="print only 'URL PACKAGE' when ready")
    p.add_argument(
        "--publisher",
        metavar="ADDRESS",
        help="give ADDRESS the package's AdminCap, as publishing does (ready line: admin_cap=)",
    )
    p.add_argument(
        "--package-version",
        type=int,
        default=PACKAGE_VERSION,
        help="the package version the node runs (a kept --state restarted with a higher one "
        "stands for the package upgraded)",
    )
    return p


def fund_parser() -> argparse.ArgumentParser:
    """``fund``'s arguments."""
    p = argparse.ArgumentParser(
        prog=f"{PROG} fund",
        description="Fund addresses on a running stand-in through its HTTP faucet.",
    )
    p.add_argument("faucet", help="the faucet's URL, as the ready line prints it (…/v2/gas)")
    p.add_argument("funds", nargs="+", type=_funding, metavar="ADDRESS=MIST")
    return p


def fund(argv: Sequence[str]) -> int:
    """``fund FAUCET_URL ADDRESS=MIST...``: one coin per address; prints their IDs."""
    args = fund_parser().parse_args(argv)
    for address, amount in args.funds:
        try:
            coin = request_funds(args.faucet, address, amount)
        except FaucetError as exc:
            print(f"{PROG} fund: {exc}", file=sys.stderr)
            return 1
        print(f"{address} {amount} {coin}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fund"]:
        return fund(argv[1:])
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
        faucet_port=None if args.no_faucet else args.faucet_port,
        grpc_web_port=args.grpc_web_port,
        package_version=args.package_version,
        publisher=args.publisher,
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
            line = f"ready url={node.url} package={node.package_id}"
            if node.faucet_url is not None:
                line += f" faucet={node.faucet_url}"
            if node.grpc_web_url is not None:
                line += f" web={node.grpc_web_url}"
            if node.admin_cap is not None:
                line += f" admin_cap={node.admin_cap}"
            others = node.urls[1:]
            if others:
                line += " also=" + ",".join(others)
            print(line, flush=True)
        while not stop.wait(0.2):
            while not requests.empty():
                if requests.get() == "away":
                    node.go_away()
                else:
                    node.come_back()
    return 0


if __name__ == "__main__":
    sys.exit(main())
