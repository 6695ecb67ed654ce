"""Two graph peers on two machines of one LAN find each other and sync, with no ledger
and no address or key given (docs/graph.md, "LAN discovery").

Each peer is ``python -m dtp.graph serve --listen 0.0.0.0 --lan <namespace>`` (a
SQLite graph file of its own) in a network namespace of its own; the namespaces'
``eth0`` are ports of one bridge (tests/support/netns.py, :func:`lan`), which floods
multicast, so mDNS crosses it as on a LAN. Needs root and iproute2 (skipped otherwise,
with the reason). The peers run on this test's core backend (DTP_PUREPYTHON is passed
on).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import Lan, LanMachine, NetnsUnavailable, lan
from tests.support.paths import ROOT


@pytest.fixture
def segment() -> Iterator[Lan]:
    stack = contextlib.ExitStack()
    try:
        machines = stack.enter_context(lan(2))
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    with stack:
        yield machines


class Peer:
    """A graph peer process on one machine, driven through its stdin commands."""

    def __init__(self, segment: Lan, machine: LanMachine, db: Path, namespace: str) -> None:
        self.machine = machine
        self.proc = segment.popen(
            machine,
            [
                sys.executable, "-m", "dtp.graph", "serve", "--db", str(db),
                "--listen", "0.0.0.0", "--lan", namespace,
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the peer on {machine.name} did not start"
        self.info = json.loads(line)

    def __call__(self, *command: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(list(command)) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # (end of input: it closes its LAN sync and its graph)
        assert self.proc.wait(30) == 0


def eventually(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def test_two_peers_on_one_bridge_find_each_other_and_sync(segment: Lan, tmp_path: Path) -> None:
    one, two = segment.machines
    a = Peer(segment, one, tmp_path / "a.db", "notes")
    a("put", "note/a", {"text": "written on machine one", "by": one.address})
    b = Peer(segment, two, tmp_path / "b.db", "notes")
    b("put", "note/b", {"text": "written on machine two", "by": two.address})

    # each finds the other by mDNS alone: its LAN peer is the key the other printed
    eventually(lambda: a("peers")["peers"] == [b.info["key"]])
    eventually(lambda: b("peers")["peers"] == [a.info["key"]])
    eventually(lambda: a("get", "note/b")["node"] and b("get", "note/a")["node"])
    assert a("get", "note/b")["node"] == {"text": "written on machine two", "by": two.address}
    assert b("get", "note/a")["node"] == {"text": "written on machine one", "by": one.address}

    # and stay in sync: a later write crosses the live session
    b("put", "note/b", {"text": "edited", "by": two.address})
    eventually(lambda: a("get", "note/b")["node"]["text"] == "edited")
    assert a("digest") == b("digest")  # (the same table on both machines)

    # the peer that leaves says goodbye: the other sees it go
    b.stop()
    eventually(lambda: a("peers")["peers"] == [])
    a.stop()
