"""gun.js in Node.js, beside dtp's Gun endpoint: ``tools/gun-peer`` (the ``gun`` npm
package pinned by its package-lock, installed on first use by ``run.sh``).

- :func:`client` runs ``client.js`` (a gun.js client: put, get, watch, a SEA user and
  forgeries; its header says what a job is);
- :class:`GunRelayProcess` runs gun's own Node relay (``relay.js``);
- :class:`EndpointProcess` runs dtp's Gun endpoint, ``python -m dtp.graph gun``;
- :func:`bench` runs ``bench.js`` (gun.js clients putting, timed).

Used by tests/graph/test_gun_node.py, test_gun_browser.py and the ``gun_relay_puts``
row (bench/graph_rows.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.node_jobs import run_job

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gun-peer"
RUNNER = TOOL / "run.sh"
GUN_DIR = TOOL / "node_modules" / "gun"


def available() -> bool:
    """True when node and npm are here (the runner installs ``gun`` with npm once)."""
    return shutil.which("node") is not None and shutil.which("npm") is not None


def install() -> Path:
    """Install the pinned packages if they are not yet; the ``gun`` package's folder."""
    subprocess.run(["sh", str(RUNNER), "--install"], check=True, timeout=600)
    return GUN_DIR


def _node(script: str, job: dict[str, Any], timeout: float) -> Any:
    out = run_job(RUNNER, job, script, timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def client(job: dict[str, Any], timeout: float = 120.0) -> Any:
    """Run one ``client.js`` job and return its answer (RuntimeError if it fails)."""
    return _node("client.js", job, timeout)


def bench(job: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Run one ``bench.js`` job: ``{"puts", "seconds", "rate", "errors", "lost"}``, where
    ``lost`` counts the puts not acknowledged by the job's ``deadline`` (seconds, 60 by
    default; ``rate`` is None then)."""
    answer: dict[str, Any] = _node("bench.js", job, timeout)
    return answer


class _Process:
    """A server process that prints one JSON line once it listens (its stderr goes to a
    file, read when it fails: a pipe nobody reads would stop it once full)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            err = self.stderr()
            self._stderr.close()
            self.proc.stdout.close()
            raise RuntimeError(f"{argv[:4]} did not start: {err[-3000:]}")
        self.info: dict[str, Any] = json.loads(line)

    def stderr(self) -> str:
        """What the process wrote on stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> _Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GunRelayProcess(_Process):
    """gun's own Node relay on 127.0.0.1 (a free port), its files in a new folder."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="gun-relay-")
        super().__init__(["sh", str(RUNNER), "relay.js", "0", str(Path(self.dir) / "radata")])
        self.url = f"http://127.0.0.1:{self.info['port']}/"

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)


class EndpointProcess(_Process):
    """``python -m dtp.graph gun`` on 127.0.0.1 (a free port), with its options."""

    def __init__(self, *options: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        super().__init__(
            [sys.executable, "-m", "dtp.graph", "gun", "--listen", "127.0.0.1:0", *options], env
        )
        self.url: str = self.info["url"]


__all__ = [
    "GUN_DIR",
    "RUNNER",
    "EndpointProcess",
    "GunRelayProcess",
    "available",
    "bench",
    "client",
    "install",
]
