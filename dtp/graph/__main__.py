"""A graph peer in its own process, for tests, benchmarks and experiments.

    python -m dtp.graph serve [--db PATH] [--fill N] [--ham c|python]
                              [--listen HOST] [--lan NAMESPACE [--interface IP ...]]

Listens for graph sync on ``--listen`` (default 127.0.0.1; a free port), prints one JSON
line ``{"port", "key", "address"}``, then reads commands from stdin, one JSON array a
line, answering each with one JSON line:

- ``["put", soul, {fields}]`` -> ``{"state": s}``
- ``["get", soul]`` -> ``{"node": {...} | null}``
- ``["digest"]`` -> ``{"digest": hex, "count": n}`` (the root summary)
- ``["stats"]`` -> the graph's stats
- ``["peers"]`` -> ``{"peers": [key hex, ...]}``: with ``--lan``, the LAN peers in session

It stops at end of input. ``--fill N`` writes N fields first (10 per node). ``--lan
NAMESPACE`` announces the peer on the LAN (mDNS, on every interface or the
``--interface`` addresses) and keeps it in sync with the peers of that namespace it
finds (:func:`dtp.graph.sync_with_lan`): no address or key is given to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dtp.graph.persist import GraphStorageError
from dtp.graph.store import Graph
from dtp.graph.sync import GraphServer
from dtp.identity.keys import HostIdentity


def fill(graph: Graph, fields: int, prefix: str = "node") -> None:
    """Write ``fields`` fields, 10 per node ``<prefix>/<i>``, in puts of 100 nodes."""
    nodes = fields // 10
    for i in range(nodes):
        graph.put(f"{prefix}/{i}", {f"f{j}": f"value {i}.{j}" for j in range(10)})
    graph.flush()


def serve(args: argparse.Namespace) -> None:
    identity = HostIdentity.generate()
    graph = Graph(args.db, ham=args.ham, identity=identity)
    if args.fill:
        fill(graph, args.fill)
    graph.root_summary()  # build the summaries now, not in the first session
    lan: Any = None
    if args.lan is not None:
        from dtp.graph.sync.lan import LanSync

        lan = LanSync(
            graph,
            identity,
            namespace=args.lan,
            address=(args.listen, 0),
            interfaces=args.interface or None,
        )
        server = lan.server
    else:
        server = GraphServer(graph, (args.listen, 0), identity)
    print(
        json.dumps(
            {
                "port": server.address[1],
                "key": server.noise_public_key.hex(),
                "address": identity.sui_address,
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        reply: object
        if command[0] == "put":
            reply = {"state": graph.put(command[1], command[2])}
        elif command[0] == "get":
            reply = {"node": graph.get(command[1])}
        elif command[0] == "digest":
            digest, count = graph.root_summary()
            reply = {"digest": f"{digest:016x}", "count": count}
        elif command[0] == "stats":
            reply = graph.stats
        elif command[0] == "peers":
            peers = [] if lan is None else lan.peers()
            reply = {"peers": sorted(peer.key.hex() for peer in peers)}
        else:
            reply = {"error": f"unknown command {command[0]!r}"}
        print(json.dumps(reply), flush=True)
    if lan is not None:
        lan.close()
    else:
        server.close()
    graph.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dtp.graph")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve a graph over DTP on 127.0.0.1")
    p.add_argument("--db", default=None, help="SQLite file (default: in memory)")
    p.add_argument("--fill", type=int, default=0, help="write this many fields first")
    p.add_argument("--ham", choices=["c", "python"], default=None)
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    p.add_argument("--lan", metavar="NAMESPACE", help="find and sync with LAN peers (mDNS)")
    p.add_argument(
        "--interface", action="append", metavar="IP", help="mDNS on this address (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        serve(args)
    except GraphStorageError as exc:
        # a --db that is a directory or not a graph file: one line, not a traceback
        print(f"python -m dtp.graph: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
