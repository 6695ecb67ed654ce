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

from tests.netns import in_namespace

ROOT = Path(__file__).resolve().parent.parent
# (without the caller's passphrase variable: the test identities are unencrypted, and
# one set but empty is refused)
ENV = {
    **{k: v for k, v in os.environ.items() if k != "DTP_PASSPHRASE"},
    "PYTHONPATH": str(ROOT),
}
SUI = 1_000_000_000


class Proc:
    """A child process that announced itself with one JSON line on stdout; with
    ``netns``, run inside that network namespace (tests/netns.py)."""

    def __init__(
        self, cmd: list[str], stderr: Path | None = None, netns: str | None = None
    ) -> None:
        self.stderr_path = stderr
        err = open(stderr, "ab") if stderr is not None else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd if netns is None else in_namespace(netns, cmd),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=ENV,
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


def backend(mode: str, port: int = 0, host: str = "127.0.0.1", netns: str | None = None) -> Proc:
    cmd = [sys.executable, "-m", "tests.daemon_backends", mode, "--port", str(port)]
    return Proc([*cmd, "--host", host], netns=netns)


def daemon(config: Path, netns: str | None = None) -> Proc:
    return Proc(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
        stderr=config.with_suffix(".log"),
        netns=netns,
    )


def run_daemon(config: Path, timeout: float = 10, **env: str) -> subprocess.CompletedProcess[str]:
    """``dtp daemon`` expected to exit at once (a refused start): its status and output."""
    return subprocess.run(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
        cwd=ROOT,
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_forwarder(tmp: Path, host_id: str, port: int, extra: str = "") -> Path:
    """A forwarder's config (identity client.key) with one forward "svc" to
    ``dtp://host_id:port``; ``extra`` lines go into the [[forward]]."""
    path = tmp / "forwarder.toml"
    path.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "client.key"
state_dir = "forwarder-state"
faucet = {10 * SUI}

[[forward]]
name = "svc"
listen = "127.0.0.1:0"
target = "dtp://{host_id}:{port}"
{extra}
"""
    )
    return path


def forward_address(forwarder: Proc, name: str = "svc") -> tuple[str, int]:
    """The local address a forwarder listens on for its forward ``name``."""
    host, port = forwarder.info["forwards"][name].rsplit(":", 1)
    return host, int(port)


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
