"""examples/dao_vote.py: run as a person runs it (on both HAM backends), its three SQLite
files read back after; and its parts in a scene of its own -- three voters on three
peers in live DTP sessions, a re-vote, a forged vote sent by a hostile DTP peer speaking
the sync protocol by hand, a malformed vote -- every peer ending with the same tally."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest

import dtp.socket
from dtp.graph import Graph, GraphServer, connect
from dtp.graph.rules import RuleRefused
from dtp.graph.sync import DATA, END, HELLO, REFUSED, VERSION, WANT
from dtp.identity.keys import HostIdentity
from tests.graph.wire import frame
from tests.support.paths import ROOT

EXAMPLE = ROOT / "examples" / "dao_vote.py"


@pytest.fixture(scope="module")
def dao() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dao_vote", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["c", "python"])
def test_the_example_as_a_person_runs_it(backend: str, tmp_path: Path, dao: ModuleType) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if backend == "python":
        env["DTP_PUREPYTHON"] = "1"
    else:
        env.pop("DTP_PUREPYTHON", None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    final = "{'lisbon': 2, 'oslo': 1, 'rome': 0}"
    assert "tally: {'lisbon': 1, 'oslo': 2, 'rome': 0}" in lines
    assert f"after bob votes again: {final}" in lines
    assert "carol's vote for paris: refused by rule 'dao-vote'" in lines
    assert "mallory's forged vote: refused (wrong_key)" in lines
    assert any(
        line.startswith("dave's vote for atlantis: refused by rule 'dao-vote'") for line in lines
    )
    assert [line for line in lines if " counts " in line] == [
        f"{name} counts {final}" for name in ("alice", "bob", "carol")
    ]
    assert "alice refused: {'wrong_key': 1, 'rule': 1}" in lines
    # the files hold what was printed: one tally, and neither refused vote
    pid = lines[0].split()[1].rstrip(":")
    for name in ("alice", "bob", "carol"):
        with Graph(tmp_path / f"{name}.db") as graph:
            (full_pid,) = [
                s.rsplit("/", 1)[1] for s in graph.souls() if s.startswith("dao/proposals/")
            ]
            assert full_pid.startswith(pid)
            assert dao.tally(graph, full_pid) == {"lisbon": 2, "oslo": 1, "rome": 0}
            stored = b"".join(value for _, value in graph.snapshot().values())
            # (the proposal's options are inside a string there: "rome" is \"rome\")
            assert b'"atlantis"' not in stored and b'"rome"' not in stored


def wait_until(test: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "the peers did not converge in time"
        time.sleep(0.05)


def raw_sync(server: GraphServer, batch: bytes) -> list[list[Any]]:
    """A hostile DTP peer: sends ``batch`` as DATA in a sync session spoken by hand,
    and returns what the server says until its final REFUSED."""
    sock = dtp.socket.create_connection(server.address, 10, server_key=server.noise_public_key)
    try:
        sock.sendall(
            frame([HELLO, VERSION, b"m" * 16, 0, 0])
            + frame([WANT, []])
            + frame([DATA, batch])
            + frame([END])
        )
        buf, out = b"", []
        while not any(m[0] == REFUSED and m[3] for m in out):
            data = sock.recv(1 << 16)
            assert data, "the server closed the stream"
            buf += data
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                size = int.from_bytes(buf[:4], "big")
                out.append(msgpack.unpackb(buf[4 : 4 + size], raw=False))
                buf = buf[4 + size :]
        return out
    finally:
        sock.close()


@pytest.fixture
def three_peers(tmp_path: Path, dao: ModuleType, request: pytest.FixtureRequest) -> Iterator[Any]:
    ham = request.param
    names = ("alice", "bob", "carol")
    graphs = {
        n: Graph(tmp_path / f"{n}.db", identity=HostIdentity.generate(), ham=ham) for n in names
    }
    for graph in graphs.values():
        dao.install_rules(graph)
    server = GraphServer(graphs["alice"], ("127.0.0.1", 0), HostIdentity.generate())
    threads = []
    for name in ("bob", "carol"):
        thread = threading.Thread(
            target=connect,
            args=(graphs[name], server.address),
            kwargs={"server_key": server.noise_public_key, "until_synced": False},
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    yield graphs, server
    server.close()
    for thread in threads:
        thread.join(10)
    for graph in graphs.values():
        graph.close()


@pytest.mark.parametrize("three_peers", ["c", "python"], indirect=True)
def test_three_voters_on_three_peers_reach_one_tally(
    three_peers: Any, dao: ModuleType, tmp_path: Path
) -> None:
    graphs, server = three_peers
    alice, bob, carol = graphs["alice"], graphs["bob"], graphs["carol"]
    pid = dao.propose(alice, "Lunch?", ["pizza", "sushi", "salad"])
    wait_until(lambda: all(dao.options_of(g, pid) for g in graphs.values()))

    def converged(expected: dict[str, int]) -> Callable[[], bool]:
        return lambda: all(dao.tally(g, pid) == expected for g in graphs.values())

    dao.vote(alice, pid, "pizza")
    dao.vote(bob, pid, "sushi")
    dao.vote(carol, pid, "sushi")
    wait_until(converged({"pizza": 1, "sushi": 2, "salad": 0}))
    dao.vote(carol, pid, "salad")  # a re-vote replaces carol's first vote
    wait_until(converged({"pizza": 1, "sushi": 1, "salad": 1}))

    # malformed votes never leave the voter's peer
    for bad in ({"option": "burgers"}, {"option": 3}, {"option": "pizza", "weight": 100}):
        with pytest.raises(RuleRefused):
            bob.put(f"~{bob.identity.sui_address}/dao/{pid}", bad)
    assert bob.stats["refused_by_rule"] == {"dao-vote": 3}

    # a forged vote in carol's space, from a hostile DTP peer
    mallory = HostIdentity.generate()
    forged = dao.forged_vote(carol.identity.sui_address, pid, "pizza", mallory, time.time() * 1000)
    said = raw_sync(server, forged)
    reports = [m for m in said if m[0] == REFUSED]
    assert sum(m[1] for m in reports) == 1 and reports[-1][3] is True
    assert [e[3] for m in reports for e in m[2]] == ["wrong_key"]
    assert alice.stats["refused_by_reason"]["wrong_key"] == 1
    # ... and a well-signed vote for an option that does not exist, from a peer with no rules
    rogue = Graph(identity=HostIdentity.generate())
    dao.vote(rogue, pid, "burgers")
    session = connect(rogue, server.address, server_key=server.noise_public_key, timeout=10)
    assert [(r.rule, r.message) for r in session.peer_refusals] == [
        ("dao-vote", "'burgers' is not an option of the proposal")
    ]
    assert alice.stats["refused_by_rule"] == {"dao-vote": 1}

    final = {"pizza": 1, "sushi": 1, "salad": 1}
    time.sleep(0.5)  # (anything that got through would have reached bob and carol by now)
    wait_until(converged(final))
    assert alice.snapshot() == bob.snapshot() == carol.snapshot()
    for graph in graphs.values():
        assert all(b"burgers" not in value for _, value in graph.snapshot().values())


@pytest.mark.parametrize("three_peers", ["c", "python"], indirect=True)
def test_a_vote_through_the_tier_handle_meets_the_rules(three_peers: Any, dao: ModuleType) -> None:
    """The voter's own peer judges a vote written through ``graph.protected(...)`` as
    every other peer does: refused there, it never replaces the voter's valid vote, and
    every peer counts the same tally."""
    graphs, _server = three_peers
    alice, bob = graphs["alice"], graphs["bob"]
    pid = dao.propose(alice, "Lunch?", ["pizza", "sushi", "salad"])
    wait_until(lambda: all(dao.options_of(g, pid) for g in graphs.values()))
    dao.vote(bob, pid, "sushi")
    expected = {"pizza": 0, "sushi": 1, "salad": 0}
    wait_until(lambda: all(dao.tally(g, pid) == expected for g in graphs.values()))

    ballot = bob.protected(f"dao/{pid}")
    before = bob.snapshot()
    with pytest.raises(RuleRefused) as refused:
        ballot.put({"option": "maybe"})
    assert refused.value.refusal.rule == "dao-vote"
    assert bob.snapshot() == before  # nothing of the put stored
    assert ballot.get() == {"option": "sushi"}
    assert bob.stats["refused_by_rule"] == {"dao-vote": 1}

    time.sleep(0.3)  # (a vote that got out would have reached alice and carol by now)
    assert [dao.tally(g, pid) for g in graphs.values()] == [expected] * 3
    assert alice.snapshot() == bob.snapshot() == graphs["carol"].snapshot()
