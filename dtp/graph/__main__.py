"""A graph peer in its own process: for tests, benchmarks and experiments, and the Gun
peer that browsers use as their relay (``python -m dtp.graph serve|gun --help``).

``serve`` listens for graph sync and is driven by JSON commands on stdin, one a line,
each answered with one JSON line (docs/graph.md, "A peer in its own process", lists
them and their answers); a line that is no such command is answered ``{"error":
"..."}`` and the next line read, so whoever drives the pipe goes on. ``--lan
NAMESPACE`` keeps it in sync with the LAN peers of that namespace
(:func:`dtp.graph.sync_with_lan`).

``gun`` runs the Gun endpoint (:mod:`dtp.graph.gun`) over a graph, optionally serving
DTP graph sync (``--sync``) and syncing live with another DTP graph peer (``--peer``).
It prints one JSON line ``{"url", "gun", "sync", "key", "address"}`` once listening,
and runs until SIGINT or SIGTERM, then closes everything and flushes the graph.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from typing import Any

from dtp.errors import DTPError, KeyFileError, MissingExtra
from dtp.graph._persist import GraphStorageError
from dtp.graph._store import Graph
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
        from dtp.graph.sync._lan import LanSync

        lan = LanSync(
            graph,
            identity,
            namespace=args.lan,
            address=args.listen,
            interfaces=args.interface or None,
        )
        server = lan.server
    else:
        server = GraphServer(graph, args.listen, identity)
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
        # one bad line gets an error answer: whoever drives the pipe reads it and goes on
        try:
            reply = _answer(graph, lan, line)
        except DTPError as exc:
            reply = {"error": str(exc)}
        print(json.dumps(reply), flush=True)
    if lan is not None:
        lan.close()
    else:
        server.close()
    graph.close()


_USAGE = 'a command is a JSON array: ["put", soul, {fields}], ["get", soul], ["digest"], ...'
_ARITY = {"put": 3, "get": 2, "digest": 1, "stats": 1, "peers": 1}


def _answer(graph: Graph, lan: Any, line: str) -> object:
    """The JSON answer to one stdin line; a bad argument raises the graph's DTPError."""
    try:
        command = json.loads(line)
    except ValueError:
        return {"error": f"not JSON: {line.strip()[:80]!r}; {_USAGE}"}
    if not isinstance(command, list) or not command:
        return {"error": _USAGE}
    name = command[0]
    if not isinstance(name, str) or name not in _ARITY:
        return {"error": f"unknown command {name!r}"}
    if len(command) != _ARITY[name]:
        return {"error": f"{name} takes {_ARITY[name] - 1} argument(s); {_USAGE}"}
    if name == "put":
        return {"state": graph.put(command[1], command[2])}
    if name == "get":
        return {"node": graph.get(command[1])}
    if name == "digest":
        digest, count = graph.root_summary()
        return {"digest": f"{digest:016x}", "count": count}
    if name == "stats":
        return graph.stats
    peers = [] if lan is None else lan.peers()
    return {"peers": sorted(peer.key.hex() for peer in peers)}


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _listen_address(text: str) -> tuple[str, int]:
    """``serve --listen``: a host (a free port), or HOST:PORT as ``gun`` takes it."""
    try:
        ipaddress.ip_address(text.strip("[]"))  # an IPv6 address's colons are no port
        return text.strip("[]"), 0
    except ValueError:
        pass
    return _host_port(text) if ":" in text else (text, 0)


_SERVE_HELP = """\
Serves a graph over DTP graph sync and prints one JSON line {"port", "key", "address"}.
Then it reads commands on stdin, one JSON array a line, each answered with a JSON line:
["put", soul, {fields}], ["get", soul], ["digest"], ["stats"], ["peers"]; a bad line is
answered {"error": "..."}. It stops at
the end of stdin: keep stdin open to keep it serving (a stdin of /dev/null, as nohup
or a service manager may give, stops it at once)."""


def _peer_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise argparse.ArgumentTypeError("--peer-key is the peer's Noise key: 64 hex digits")
    return key


def gun(args: argparse.Namespace) -> None:
    from dtp.graph.gun._cli import run_gun_peer

    run_gun_peer(args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dtp.graph")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "serve",
        help="serve a graph over DTP, driven by JSON commands on stdin",
        description=_SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", default=None, help="SQLite file (default: in memory)")
    p.add_argument("--fill", type=int, default=0, help="write this many fields first")
    p.add_argument("--ham", choices=["c", "python"], default=None)
    p.add_argument(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 0),
        metavar="HOST[:PORT]",
        help="address to listen on (default 127.0.0.1; without a port, a free one)",
    )
    p.add_argument("--lan", metavar="NAMESPACE", help="find and sync with LAN peers (mDNS)")
    p.add_argument(
        "--interface", action="append", metavar="IP", help="mDNS on this address (repeatable)"
    )
    g = sub.add_parser(
        "gun", help="a Gun peer: browsers and gun.js apps use the graph as their relay"
    )
    g.add_argument("--db", default=None, help="SQLite file (default: in memory)")
    g.add_argument(
        "--listen",
        type=_host_port,
        default=("127.0.0.1", 8765),
        help="the Gun endpoint and its pages (default 127.0.0.1:8765; port 0: a free one)",
    )
    g.add_argument("--sync", type=_host_port, help="also serve DTP graph sync here")
    g.add_argument(
        "--key", help="the host key file for --sync (created if missing; default: a new key)"
    )
    g.add_argument("--peer", type=_host_port, help="sync live with this DTP graph peer")
    g.add_argument("--peer-key", type=_peer_key, help="that peer's Noise key (hex)")
    g.add_argument("--gun-dir", help="the gun npm package whose browser files are served")
    pages = g.add_mutually_exclusive_group()
    pages.add_argument("--site", help="a folder of pages served at / (default: the demo chat)")
    pages.add_argument(
        "--no-site", action="store_true", help="serve no pages (gun's browser files still are)"
    )
    g.add_argument("--ham", choices=["c", "python"], default=None)
    g.add_argument("-v", "--verbose", action="store_true", help="log what the peer does")
    args = parser.parse_args(argv)
    if args.command == "gun" and (args.peer is None) != (args.peer_key is None):
        parser.error("--peer and --peer-key go together")
    try:
        if args.command == "gun":
            gun(args)
            return
        serve(args)
    except (GraphStorageError, MissingExtra, KeyFileError, OSError) as exc:
        # a --db that is a directory or not a graph file, `gun` or `--lan` without their
        # extra, a --key that is no key file, a port taken: one line, not a traceback
        print(f"python -m dtp.graph: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
