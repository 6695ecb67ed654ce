"""A DAO vote on a replicated graph: a proposal with options, one signed vote per voter,
and a tally that every peer computes alike (docs/graph.md, "Rules").

Run it::

    python examples/dao_vote.py [--dir DIR]

Three voters -- alice, bob and carol -- each keep the graph in a SQLite file of their own
(in DIR, a temporary directory by default) and sync over DTP on 127.0.0.1: alice serves,
bob and carol stay connected to her. Alice proposes; everyone votes; bob changes his
mind; a forged vote and a vote for an option that does not exist are refused; every
peer prints the same tally.

How it holds together:

- **The proposal** is the node ``dao/proposals/<id>`` with one field, ``text``: the JSON
  text of ``{"options": [...], "title": ...}``, whose SHA-256 is ``<id>``. Nobody can
  change it (any other text does not hash to the id), and every peer checks it.
- **A vote** is the field ``option`` of ``~<voter's address>/dao/<id>``: the voter's own
  signed space, so only the voter's key can write it (docs/graph.md, "Signed
  namespaces") -- nobody votes for anyone else, and each voter has exactly one vote
  per proposal. Voting again writes the same field at a later state: HAM keeps the
  newest.
- **The rules** (``install_rules``) refuse, on every path in -- a local write (``put``,
  a tier's handle), a DTP sync peer, a Gun peer -- a proposal whose text is not its
  id's or not a proposal, and a vote that is malformed (another field, a value that is
  not a string) or names an option the proposal does not have.
- **The tally** (``tally``) is a function of the merged graph alone: the votes in the
  graph whose option is one of the proposal's, counted by option. Peers that hold the
  same graph print the same tally.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from dtp.graph import Graph, GraphServer, connect
from dtp.graph.namespace import seal
from dtp.graph.rules import RuleRefused, Update
from dtp.graph.values import encode_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

PROPOSALS = "dao/proposals/"
#: A vote's soul: the voter's signed space, then ``dao/<proposal id>``.
VOTE = re.compile(r"~(0x[0-9a-f]{64})/dao/([0-9a-f]{64})")


def proposal_text(title: str, options: list[str]) -> str:
    """A proposal's one canonical text (the one its id is the hash of)."""
    return json.dumps({"options": options, "title": title}, separators=(",", ":"))


def parse_proposal(text: object) -> dict[str, Any] | None:
    """A proposal read back from its text, or None when it is not one: a title, and 2
    to 16 distinct options, in the canonical text."""
    if not isinstance(text, str):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or sorted(data) != ["options", "title"]:
        return None
    title, options = data["title"], data["options"]
    if (
        not isinstance(title, str)
        or not isinstance(options, list)
        or not 2 <= len(options) <= 16
        or not all(isinstance(o, str) and o for o in options)
        or len(set(options)) != len(options)
        or proposal_text(title, options) != text
    ):
        return None
    return data


def propose(graph: Graph, title: str, options: list[str]) -> str:
    """Write a proposal; returns its id."""
    text = proposal_text(title, options)
    pid = hashlib.sha256(text.encode()).hexdigest()
    graph.put(PROPOSALS + pid, {"text": text})
    return pid


def options_of(graph: Graph, pid: str) -> list[str] | None:
    """The options of proposal ``pid``, or None when the graph does not hold it."""
    proposal = parse_proposal(graph.get_field(PROPOSALS + pid, "text"))
    return None if proposal is None else list(proposal["options"])


def vote(graph: Graph, pid: str, option: str) -> None:
    """Vote (or vote again) with the graph's identity: the field ``option`` of its
    protected node ``~<address>/dao/<pid>``, signed. The rules judge it here as every
    peer will (a write through a tier's handle meets them as ``graph.put`` does)."""
    assert graph.identity is not None, "a voter's graph has the voter's identity"
    graph.protected(f"dao/{pid}").put({"option": option})


def tally(graph: Graph, pid: str) -> dict[str, int]:
    """Votes per option of proposal ``pid``: a function of the merged graph alone (a
    vote whose option the proposal does not have counts nothing)."""
    options = options_of(graph, pid) or []
    counts = dict.fromkeys(options, 0)
    for soul in graph.souls():
        match = VOTE.fullmatch(soul)
        if match is None or match.group(2) != pid:
            continue
        option = graph.get_field(soul, "option")
        if isinstance(option, str) and option in counts:
            counts[option] += 1
    return counts


def install_rules(graph: Graph) -> None:
    """The DAO's rules: well-formed proposals, and votes for options that exist."""

    def check_proposal(update: Update) -> str | None:
        pid = update.soul[len(PROPOSALS) :]
        if update.field != "text":
            return "a proposal holds one field, 'text'"
        if parse_proposal(update.value) is None:
            return "not a proposal: a title and 2 to 16 distinct options, canonical JSON"
        assert isinstance(update.value, str)
        if hashlib.sha256(update.value.encode()).hexdigest() != pid:
            return "the proposal's text does not hash to its id"
        return None

    def check_vote(update: Update) -> str | None:
        match = VOTE.fullmatch(update.soul)
        assert match is not None  # (the rule's souls= pattern)
        if update.field != "option":
            return "a vote holds one field, 'option'"
        if not isinstance(update.value, str):
            return "a vote's option is a string"
        options = options_of(graph, match.group(2))
        if options is None:
            return "no such proposal here"
        if update.value not in options:
            return f"{update.value!r} is not an option of the proposal"
        return None

    graph.rules.add(
        "dao-proposal", check_proposal, prefix=PROPOSALS, souls=r"dao/proposals/[0-9a-f]{64}"
    )
    graph.rules.add("dao-vote", check_vote, prefix="~0x", souls=VOTE)


def wait_until(test: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise TimeoutError("the peers did not converge in time")
        time.sleep(0.05)


def forged_vote(victim: str, pid: str, option: str, forger: HostIdentity, state: float) -> bytes:
    """A HAM batch holding a vote in ``victim``'s space signed by ``forger``: what a
    hostile peer would send (``seal`` refuses to sign for another owner, so the
    envelope is made by hand here)."""
    soul = f"~{victim}/dao/{pid}".encode()
    value = encode_value(option)
    # the forger seals a vote in its own space, then moves the envelope to the victim's
    own = seal(forger, f"~{forger.sui_address}/dao/{pid}".encode(), b"option", state, value)
    return encode_ham_batch([HamUpdate(soul, b"option", state, own)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the three SQLite files go (default: a temp dir)")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        folder = Path(args.dir or stack.enter_context(tempfile.TemporaryDirectory()))
        names = ["alice", "bob", "carol"]
        ids = {name: HostIdentity.generate() for name in names}
        peers: dict[str, Graph] = {}
        for name in names:
            peers[name] = Graph(folder / f"{name}.db", identity=ids[name])
            stack.callback(peers[name].close)
            install_rules(peers[name])
        alice, bob, carol = (peers[n] for n in names)

        pid = propose(alice, "Where do we meet?", ["lisbon", "oslo", "rome"])
        print(f"proposal {pid[:12]}: {options_of(alice, pid)}", flush=True)

        sessions: list[threading.Thread] = []
        stack.callback(lambda: [t.join(10) for t in sessions])  # (after the server closes)
        server = stack.enter_context(GraphServer(alice, ("127.0.0.1", 0), HostIdentity.generate()))
        for graph in (bob, carol):
            # a live session each: every later change reaches the others through alice
            session = threading.Thread(
                target=connect,
                args=(graph, server.address),
                kwargs={"server_key": server.noise_public_key, "until_synced": False},
                daemon=True,
            )
            session.start()
            sessions.append(session)
        wait_until(lambda: all(options_of(g, pid) for g in peers.values()))

        vote(alice, pid, "lisbon")
        vote(bob, pid, "oslo")
        vote(carol, pid, "oslo")
        expected = {"lisbon": 1, "oslo": 2, "rome": 0}
        wait_until(lambda: all(tally(g, pid) == expected for g in peers.values()))
        print(f"tally: {tally(alice, pid)}", flush=True)

        vote(bob, pid, "lisbon")  # bob votes again: his newer vote replaces the old one
        expected = {"lisbon": 2, "oslo": 1, "rome": 0}
        wait_until(lambda: all(tally(g, pid) == expected for g in peers.values()))
        print(f"after bob votes again: {tally(alice, pid)}", flush=True)

        try:
            vote(carol, pid, "paris")
        except RuleRefused as exc:
            print(f"carol's vote for paris: refused by rule {exc.refusal.rule!r}", flush=True)

        # mallory forges a vote in carol's space, as a hostile sync peer would send it
        mallory = HostIdentity.generate()
        forged = forged_vote(ids["carol"].sui_address, pid, "rome", mallory, time.time() * 1000)
        report = alice.merge(forged)
        print(f"mallory's forged vote: refused ({report.refusals[0].reason})", flush=True)

        # dave's peer has no rules: his vote for an option that does not exist is refused
        # by alice's, and his session is told so
        dave = stack.enter_context(Graph(folder / "dave.db", identity=HostIdentity.generate()))
        vote(dave, pid, "atlantis")
        catch_up = connect(dave, server.address, server_key=server.noise_public_key)
        (refusal,) = catch_up.peer_refusals
        print(f"dave's vote for atlantis: refused by rule {refusal.rule!r}: {refusal.message}")

        for name, graph in peers.items():
            print(f"{name} counts {tally(graph, pid)}", flush=True)
        print(f"alice refused: {alice.stats['refused_by_reason']}", flush=True)


if __name__ == "__main__":
    main()
