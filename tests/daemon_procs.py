"""Real processes for the services daemon tests: backends (tests/daemon_backends.py)
and ``dtp daemon`` processes, each started, read and stopped by the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class Proc:
    """A child process that announced itself with one JSON line on stdout."""

    def __init__(self, cmd: list[str], stderr: Path | None = None) -> None:
        self.stderr_path = stderr
        err = open(stderr, "ab") if stderr is not None else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=ENV
        )
        if stderr is not None:
            err.close()  # type: ignore[union-attr]
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            log = stderr.read_text() if stderr is not None else ""
            raise RuntimeError(f"{cmd[3:]} did not start (exit {self.proc.returncode}):\n{log}")
        self.info: dict[str, Any] = json.loads(line)

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path is not None else ""


def backend(mode: str, port: int = 0) -> Proc:
    return Proc([sys.executable, "-m", "tests.daemon_backends", mode, "--port", str(port)])


def daemon(config: Path) -> Proc:
    return Proc(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
        stderr=config.with_suffix(".log"),
    )


@contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()


def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
