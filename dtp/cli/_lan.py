"""``dtp lan``: the DTP endpoints announced on the LAN (mDNS, docs/messaging.md §6.1),
as a browser finds them in a few seconds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from dtp.cli._common import EXIT_FAILURE, EXIT_USAGE, duration, print_error
from dtp.errors import DTPError, MissingExtra

if TYPE_CHECKING:
    from dtp.discovery.lan import LanPeer


def register(sub: Any) -> None:
    lan = sub.add_parser(
        "lan",
        help="list the DTP endpoints announced on the LAN (mDNS)",
        description="Browse the LAN for DTP endpoints (servers, graph peers, the daemon's "
        "services) for a few seconds, then list them. What they announce is unchecked: "
        "a connection holds each to its key.",
    )
    lan.add_argument(
        "--timeout",
        type=duration("s"),
        default=3.0,
        metavar="SECONDS",
        help="how long to browse: seconds, or a duration (1500ms, 5s); default 3, at most 600",
    )
    lan.add_argument("--graph", metavar="NAMESPACE", help="graph peers of this namespace only")
    lan.add_argument("--service", metavar="NAME", help="this service only")
    lan.add_argument("--host", metavar="HOST_ID", help="endpoints claiming this Host only")
    lan.add_argument(
        "--interface", action="append", metavar="IP", help="browse on this address (repeatable)"
    )
    lan.add_argument(
        "--json", action="store_true", help="machine-readable output: one object a line"
    )
    lan.set_defaults(func=_cmd_lan)


def describe(peer: LanPeer) -> dict[str, Any]:
    """What ``--json`` prints of a peer."""
    record = peer.record
    return {
        "name": peer.name,
        "endpoints": [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in peer.endpoints],
        "key": peer.key.hex(),
        "dtp": record.dtp,
        "host_id": record.host_id,
        "service": record.service,
        "port": record.port,
        "graph": record.graph,
        "graph_sync": record.graph_sync,
    }


def _cmd_lan(args: argparse.Namespace) -> int:
    if not 0 < args.timeout <= 600:
        print("dtp lan: --timeout must be above 0 and at most 600 seconds", file=sys.stderr)
        return EXIT_USAGE
    # (here, not at the top: the parser of every dtp command imports this module, and
    # mDNS is zeroconf's to import, which comes with the lan extra)
    try:
        from dtp.discovery.lan import browse
    except MissingExtra as exc:
        return print_error(exc, EXIT_FAILURE, as_json=args.json, command="lan")
    try:
        with browse(
            graph=args.graph,
            service=args.service,
            host_id=args.host,
            interfaces=args.interface,
        ) as browser:
            time.sleep(args.timeout)
            peers = sorted(browser.peers(), key=lambda p: p.name)
            refused = browser.refused
    except (ValueError, DTPError) as exc:  # (LanDiscoveryError is a DTPError)
        # (an --interface that is no address: the command line's)
        usage = isinstance(exc, ValueError) and not isinstance(exc, DTPError)
        status = EXIT_USAGE if usage else EXIT_FAILURE
        return print_error(exc, status, as_json=args.json, command="lan")
    for peer in peers:
        seen = describe(peer)
        if args.json:
            print(json.dumps(seen))
            continue
        what = [f"key {seen['key'][:16]}…"]
        if peer.host_id:
            what.append(f"host {peer.host_id[:10]}…")
        if peer.record.service is not None or peer.record.port is not None:
            what.append(f"service {peer.record.service}:{peer.record.port}")
        if peer.graph is not None:
            what.append(f"graph {peer.graph!r}")
        print(f"{peer.name}  {' '.join(seen['endpoints'])}  {', '.join(what)}")
    if not args.json:
        print(f"{len(peers)} found" + (f", {refused} malformed records refused" if refused else ""))
    return 0
