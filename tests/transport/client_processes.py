"""A client run as a process of its own against a blocking server in this one: what the
server read and how its reading ended, for the tests of what a process exit does."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import dtp.socket
from dtp.errors import DTPError, StreamReset
from tests.support.paths import ROOT


def run_client_process(
    server: dtp.socket.DTPServer, script: str, late: float, *args: str
) -> tuple[dict[str, object], str]:
    """Run ``script`` as a client process (``argv``: the server's port, its key, then
    ``args``); the server reads from ``late`` seconds after accepting. Returns how its
    reading ended and what it got, and the client's output."""
    outcome: dict[str, object] = {}

    def serve() -> None:
        try:
            sock, _ = server.accept(timeout=30)
        except DTPError as exc:
            outcome["end"] = exc
            return
        with sock:
            sock.settimeout(15)
            time.sleep(late)
            got = 0
            try:
                while data := sock.recv(1 << 20):
                    got += len(data)
                outcome["end"] = "EOF"
            except StreamReset as exc:
                outcome["end"] = f"reset {exc.code}"
            except DTPError as exc:
                outcome["end"] = exc
            outcome["got"] = got

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                str(server.address[1]),
                server.noise_public_key.hex(),
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        thread.join(30)
    assert proc.returncode == 0, proc.stderr
    return outcome, proc.stdout
