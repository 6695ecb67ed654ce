"""Shared notes on a LAN, with no server, no ledger and no address to type.

Run it on two (or more) machines of one network, each with a file of its own:

    python examples/lan_notes.py notes.db

Each copy keeps its notes in a SQLite graph (``dtp.graph``), announces itself over mDNS
as a graph peer of the namespace ``lan-notes`` and syncs with every other copy it finds
(``dtp.graph.sync_with_lan``, docs/graph.md "LAN discovery"). Type a line to add a note;
every copy prints each note as it arrives, and what a copy wrote while it was away
arrives when it comes back. End with Ctrl-D.

On one machine, in two terminals: ``--loopback`` keeps mDNS and the peer on 127.0.0.1::

    python examples/lan_notes.py a.db --loopback
    python examples/lan_notes.py b.db --loopback
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import uuid

from dtp.graph import Change, Graph, sync_with_lan
from dtp.identity.keys import HostIdentity

NAMESPACE = "lan-notes"
#: The node that links every note (one field per note, named by the note's ID).
INDEX = "notes"


def show(change: Change) -> None:
    """Print a note as it arrives (a change of the index: a note was linked)."""
    print(f"[{change.field[:8]}] {change.value}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", help="this copy's SQLite file")
    parser.add_argument("--loopback", action="store_true", help="mDNS and the peer on 127.0.0.1")
    parser.add_argument("--name", default=socket.gethostname(), help="who writes the notes")
    parser.add_argument("--namespace", default=NAMESPACE, help="the notebook shared")
    args = parser.parse_args(argv)
    on_loopback = {"address": ("127.0.0.1", 0), "interfaces": ["127.0.0.1"]}
    graph = Graph(args.db)
    for field, value in sorted((graph.get(INDEX) or {}).items()):
        print(f"[{field[:8]}] {value}", flush=True)
    graph.subscribe(INDEX, show)
    with sync_with_lan(
        graph,
        HostIdentity.generate(),
        namespace=args.namespace,
        **(on_loopback if args.loopback else {}),
    ) as lan:
        print(
            f"listening on port {lan.address[1]}; looking for peers of {args.namespace!r}",
            flush=True,
        )
        for line in sys.stdin:
            text = line.strip()
            if text:
                # a note ID of its own: notes written at once on two copies both stay
                graph.put(INDEX, {uuid.uuid4().hex: f"{args.name}: {text}"})
        time.sleep(0.5)  # (the last notes leave before the sessions close)
    graph.close()


if __name__ == "__main__":
    main()
