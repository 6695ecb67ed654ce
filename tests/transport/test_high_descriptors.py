"""Sockets whose descriptors are 1024 or above (beyond select()'s FD_SETSIZE) work like
any other: a process holding a thousand sockets can still open and use connections."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from dtp.transport.carriers._tcp import wait_ready
from tests.support.paths import ROOT


def test_a_connection_on_high_descriptors_carries_data() -> None:
    # select() raised ValueError for these: the carrier was declared failed at the first
    # wait, and a host-ID connect's early TCP connect failed outright. In a process of
    # its own: here, another test's thread closing a descriptor would open a hole below
    # 1024 that the next socket takes.
    done = subprocess.run(
        [sys.executable, "-m", "tests.transport.high_descriptors"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    numbers = json.loads(done.stdout)
    assert numbers["carrier"] > 1024  # (and so are the connection's, opened after it)
    assert numbers["bytes"] == 3 << 20


def test_wait_ready_reports_as_select_does() -> None:
    a, b = socket.socketpair()
    try:
        assert wait_ready([a], [], 0) == ([], [])
        assert wait_ready([a], [a], 0) == ([], [a])  # writable at once, nothing to read
        b.send(b"x")
        assert wait_ready([a, b], [], 0.5) == ([a], [])
        b.close()  # a hang-up is readable: the read then says what happened
        ready, _ = wait_ready([a], [], 0.5)
        assert ready == [a] and a.recv(10) == b"x" and a.recv(10) == b""
    finally:
        a.close()
        b.close()
    with pytest.raises(ValueError):
        wait_ready([a], [], 0)  # closed: fileno() is -1, as select refuses it
