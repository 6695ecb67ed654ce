"""The graph part of the demo: two peers edit one node offline, then converge over DTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from dtp.graph._store import Graph
from dtp.graph.sync import GraphServer, connect
from dtp.identity.keys import HostIdentity


def demo_graph_story(say: Callable[[str], None]) -> None:
    """Two replicas of a to-do list, edited apart, synced over DTP on 127.0.0.1."""
    alice, bob = Graph(), Graph()
    say("graph: alice and bob each hold a replica of node 'todo/1', no connection yet")
    alice.put("todo/1", {"title": "buy milk", "done": False, "by": "alice"})
    bob.put("todo/1", {"title": "buy oat milk", "priority": 2})
    bob.put("todo/1", {"by": "bob"})  # bob's later write: his 'by' is newer
    say(f"  alice (offline): {json.dumps(alice.get('todo/1'), sort_keys=True)}")
    say(f"  bob   (offline): {json.dumps(bob.get('todo/1'), sort_keys=True)}")

    identity = HostIdentity.generate()
    server = GraphServer(alice, ("127.0.0.1", 0), identity)
    converged = threading.Event()
    sub = alice.subscribe("todo/1", lambda change: converged.set())
    try:
        say(f"  bob connects to alice over DTP at 127.0.0.1:{server.address[1]} and syncs")
        session = connect(bob, server.address, server_key=server.noise_public_key)
        converged.wait(5)
    finally:
        sub.cancel()
        server.close()
    say(f"  alice (synced):  {json.dumps(alice.get('todo/1'), sort_keys=True)}")
    say(f"  bob   (synced):  {json.dumps(bob.get('todo/1'), sort_keys=True)}")
    same = alice.snapshot() == bob.snapshot()
    say(
        f"  converged: {same} -- each field keeps its latest write (HAM); "
        f"{session.stats['bytes_sent'] + session.stats['bytes_received']} bytes of sync messages"
    )


if __name__ == "__main__":
    demo_graph_story(print)
