"""examples/lan_notes.py, as a person runs it in two terminals with ``--loopback``: two
copies find each other over mDNS (on 127.0.0.1 only), a note typed into one is printed
by the other, and a copy started later gets what was written before it came."""

from __future__ import annotations

import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.paths import ROOT

EXAMPLE = ROOT / "examples" / "lan_notes.py"


class Copy:
    """One running copy of the example; its output lines in :attr:`lines`."""

    def __init__(self, db: Path, name: str, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), str(db), "--loopback", "--name", name,
             "--namespace", namespace],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout} s")

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def copies() -> Iterator[list[Copy]]:
    made: list[Copy] = []
    with ExitStack() as stack:
        stack.callback(lambda: [copy.kill() for copy in made])
        yield made


def test_two_copies_share_notes_over_the_lan(copies: list[Copy], tmp_path: Path) -> None:
    namespace = f"lan-notes-{secrets.token_hex(4)}"  # (other test runs share the loopback)
    alice = Copy(tmp_path / "a.db", "alice", namespace)
    copies.append(alice)
    alice.expect("listening on port")
    alice.type("written before bob came")
    alice.expect("alice: written before bob came")
    bob = Copy(tmp_path / "b.db", "bob", namespace)
    copies.append(bob)
    bob.expect("alice: written before bob came")  # (the catch-up)
    bob.type("hello from bob")
    alice.expect("bob: hello from bob")  # (live)
    bob.end()
    alice.end()
