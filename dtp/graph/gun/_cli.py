"""``python -m dtp.graph gun``: a Gun peer over a graph, with DTP graph sync beside it
(see :mod:`dtp.graph.__main__` for the options)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import threading
from pathlib import Path

from dtp.errors import DTPError
from dtp.graph._store import Graph
from dtp.graph.gun._server import DEMO_SITE, GunServer
from dtp.graph.sync import GraphServer, connect
from dtp.identity.keys import HostIdentity

logger = logging.getLogger("dtp.graph.gun")

RETRY_SECONDS = 2.0
"""The wait before a live sync with ``--peer`` that ended is tried again."""


def _identity(path: str | None) -> HostIdentity:
    if path is None:
        return HostIdentity.generate()
    if Path(path).exists():
        return HostIdentity.load(path)
    identity = HostIdentity.generate()
    identity.save(path)
    return identity


def _follow(graph: Graph, address: tuple[str, int], key: bytes, stop: threading.Event) -> None:
    """Sync live with a DTP graph peer until ``stop``, connecting again whenever the
    session ends (the peer restarted, the network went away)."""
    while not stop.is_set():
        try:
            connect(graph, address, server_key=key, until_synced=False, timeout=10.0)
            logger.info("gun peer: the sync with %s:%d ended", *address)
        except (DTPError, OSError) as exc:
            if stop.is_set():
                return
            logger.warning("gun peer: sync with %s:%d: %s", address[0], address[1], exc)
        stop.wait(RETRY_SECONDS)


async def _serve(server: GunServer, ready: dict[str, object]) -> None:
    await server.start()
    try:
        print(json.dumps({"url": server.url, "gun": server.url + "gun", **ready}), flush=True)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
    finally:
        await server.close()


def run_gun_peer(args: argparse.Namespace) -> None:
    """Run the peer ``args`` describe until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    identity = _identity(args.key)
    graph = Graph(args.db, ham=args.ham, identity=identity)
    sync_server: GraphServer | None = None
    stop = threading.Event()
    follower: threading.Thread | None = None
    try:
        ready: dict[str, object] = {"sync": None, "key": None, "address": identity.sui_address}
        if args.sync is not None:
            sync_server = GraphServer(graph, args.sync, identity)
            ready["sync"] = list(sync_server.address)
            ready["key"] = sync_server.noise_public_key.hex()
        if args.peer is not None:
            follower = threading.Thread(
                target=_follow, args=(graph, args.peer, args.peer_key, stop), daemon=True
            )
            follower.start()
        site = None if args.no_site else (args.site or DEMO_SITE)
        server = GunServer(graph, args.listen[0], args.listen[1], gun_dir=args.gun_dir, site=site)
        asyncio.run(_serve(server, ready))
    finally:
        stop.set()
        if sync_server is not None:
            sync_server.close()
        with contextlib.suppress(DTPError):
            graph.close()  # (a live sync with --peer ends within a tick of this)
        if follower is not None:
            follower.join(5.0)
