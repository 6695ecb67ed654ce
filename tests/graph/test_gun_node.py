"""gun.js itself as a client of dtp's Gun endpoint (tools/gun-peer: the pinned ``gun``
package in Node.js, installed on first use as ``tools/move-syntax`` does): puts and
their acknowledgements, gets, live updates from the Python side, and SEA -- a user made
and logged in by gun's own SEA writes its profile (taken), forged writes into that user's
space are refused, and what was taken reaches a DTP sync peer, which checks it again.
The same SEA run against gun's own Node relay shows where the two differ."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from bench import gun_peer
from dtp.graph import Graph, GraphServer, connect, link, sea
from dtp.graph.gun import GunServerThread, serve_in_thread
from dtp.identity.keys import HostIdentity

pytestmark = pytest.mark.skipif(
    not gun_peer.available(), reason="node and npm are needed to run gun.js (tools/gun-peer)"
)

FORGERIES_REFUSED = {
    "unsigned": "Unverified data.",
    "moved": "Unverified data.",
    "replayed": "Unverified data.",
    "other_key": sea.MESSAGES[sea.CERTIFICATE],
    "wrong_key": "Unverified data.",
    "account": "Account not same!",
    "alias": "Alias not same!",
}


@pytest.fixture
def graph() -> Iterator[Graph]:
    g = Graph(None)
    yield g
    g.close()


@pytest.fixture
def server(graph: Graph) -> Iterator[GunServerThread]:
    with serve_in_thread(graph, gun_dir=gun_peer.install()) as srv:
        yield srv


def test_gun_js_puts_and_gets_through_the_endpoint(server: GunServerThread, graph: Graph) -> None:
    peer = server.url + "gun"
    data = {
        "title": "hi",
        "n": 1.5,
        "count": 3,
        "yes": True,
        "none": None,
        "tiny": 1e-7,
        "emoji": "😀",
    }
    answer = gun_peer.client({"peer": peer, "do": "put", "soul": "note/1", "data": data})
    assert answer == {"ack": {"ok": True}}
    assert graph.get("note/1") == data
    assert graph.stored_node("note/1")  # in gun's text: 1e-7 stored as JavaScript writes it
    assert {f: v for f, _, v in graph.stored_node("note/1")}[b"tiny"] == b"1e-7"
    # a fresh gun.js client reads it back
    assert gun_peer.client({"peer": peer, "do": "get", "soul": "note/1"})["node"] == data
    # what Python writes, gun.js reads (a nested node is a link gun follows itself)
    graph.put("note/2", {"by": "python", "ref": link("note/1")})
    got = gun_peer.client({"peer": peer, "do": "get", "soul": "note/2"})["node"]
    assert got == {"by": "python", "ref": {"#": "note/1"}}


def test_gun_js_hears_python_writes_live(server: GunServerThread, graph: Graph) -> None:
    job = {
        "peer": server.url + "gun",
        "do": "watch",
        "soul": "live/1",
        "field": "msg",
        "value": "from python",
        "seconds": 30,
    }
    proc = subprocess.Popen(
        ["sh", str(gun_peer.RUNNER), "client.js"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        assert json.loads(proc.stdout.readline()) == {"ready": True}
        graph.put("live/1", {"msg": "from python", "n": 7})
        answer = json.loads(proc.stdout.readline())
        assert answer["node"] == {"msg": "from python", "n": 7}
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_sea_user_writes_are_taken_and_forgeries_refused(
    server: GunServerThread, graph: Graph
) -> None:
    alias = "alice-" + os.urandom(4).hex()
    answer = gun_peer.client(
        {
            "peer": server.url + "gun",
            "do": "sea",
            "alias": alias,
            "profile": {"name": "Alice", "bio": "hi"},
        }
    )
    pub = answer["pub"]
    assert sea.public_key(pub) is not None
    # gun's SEA made the user, logged in and wrote the profile: every put acknowledged ok
    assert answer["acks"] == {"profile": {"ok": True}}
    assert answer["forged"] == FORGERIES_REFUSED
    # a fresh gun.js client, checking every field with its own SEA, reads Alice's profile
    assert answer["read"] == {"name": "Alice", "bio": "hi"}

    # the graph holds what SEA signed, as SEA wrote it, and nothing forged
    soul = f"~{pub}/profile"
    name = graph.get_field(soul, "name")
    assert name == answer["signed_name"] and json.loads(name)[":"] == "Alice"
    assert set(graph.get(soul) or {}) == {"name", "bio"}
    assert graph.get(f"~{pub}")["pub"] == pub  # type: ignore[index]
    assert graph.get(f"~@{alias}") == {f"~{pub}": link(f"~{pub}")}
    assert server.server.stats["refused_puts"] == len(FORGERIES_REFUSED)

    # a DTP sync peer gets the user space and checks every signature again
    other = Graph(None)
    with GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate()) as sync:
        connect(other, sync.address, server_key=sync.noise_public_key, timeout=20)
    try:
        assert other.get(soul) == graph.get(soul)
        assert other.get(f"~{pub}") == graph.get(f"~{pub}")
        assert other.stats["refused"] == 0
    finally:
        other.close()


def test_gun_own_relay_takes_a_forgery_the_endpoint_refuses() -> None:
    """gun's relay verifies a value naming another signer (``"*"``) against that signer
    and, with no certificate, takes it: Mallory's name lands in Alice's profile and gun's
    own SEA reads it as Alice's. Every other forgery both refuse alike."""
    with gun_peer.GunRelayProcess() as relay:
        answer = gun_peer.client(
            {
                "peer": relay.url + "gun",
                "do": "sea",
                "alias": "alice-" + os.urandom(4).hex(),
                "profile": {"name": "Alice", "bio": "hi"},
            }
        )
    assert answer["acks"] == {"profile": {"ok": True}}
    assert answer["forged"] == {**FORGERIES_REFUSED, "other_key": "ok"}
    assert answer["read"]["name"] == "Mallory"
