"""Start and stop the test servers of tests/support/servers.py in their own processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """SIGSTOP ``proc`` and return once every thread of it is stopped: kill() returns
    as soon as the signal is pending, and a thread busy on the other CPU runs on a
    little, long enough to act on what another process does next."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{proc.pid}/task")
    while time.monotonic() < deadline:
        states = []
        for task in tasks.iterdir():
            try:
                # the state follows the ")" closing the command name (proc(5))
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)
    raise TimeoutError(f"process {proc.pid} did not stop within {timeout} s")


@contextmanager
def announcing(module: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """``python -m module args`` run from the checkout, and the JSON line it prints once
    ready (its stderr in the error when it prints none); killed at the end if alive."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
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
            proc.wait(10)
            raise RuntimeError(
                f"{module} {' '.join(args)} failed to start: "
                f"{proc.stderr.read() if proc.stderr else ''}"
            )
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def server_process(
    mode: str, api: str = "blocking", deny: list[str] | None = None
) -> Iterator[ServerProc]:
    args = [mode, "--api", api]
    if deny:
        args += ["--deny", *deny]
    with announcing("tests.support.servers", *args) as (proc, info):
        yield ServerProc(proc, info["port"], bytes.fromhex(info["key"]), info["address"])


def rss_kib(pid: int) -> int:
    """Process ``pid``'s resident memory (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def descriptors(pid: int) -> int:
    """How many file descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))
