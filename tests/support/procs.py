"""Start and stop the test servers of tests/support/servers.py in their own processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT


@dataclass
class ServerProc:
    proc: subprocess.Popen[str]
    port: int
    key: bytes
    address: str

    @property
    def endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@contextmanager
def server_process(
    mode: str, api: str = "blocking", deny: list[str] | None = None
) -> Iterator[ServerProc]:
    cmd = [sys.executable, "-m", "tests.support.servers", mode, "--api", api]
    if deny:
        cmd += ["--deny", *deny]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"test server failed to start: {proc.stderr.read() if proc.stderr else ''}"
            )
        info = json.loads(line)
        yield ServerProc(proc, info["port"], bytes.fromhex(info["key"]), info["address"])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def rss_kib(pid: int) -> int:
    """Process ``pid``'s resident memory (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def descriptors(pid: int) -> int:
    """How many file descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))
