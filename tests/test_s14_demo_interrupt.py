"""``dtp demo`` stopped part-way (SIGTERM from ``timeout`` or a supervisor, SIGINT sent to
the demo alone) leaves nothing behind: the daemons it started are stopped -- one still
starting too, which was not yet in the list the step stops -- and its temporary
directories (ledger, throwaway keys) are removed. ``dtp status`` prints ports as
ports, not as amounts (8,545)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dtp.daemon.status import _table
from tests.support.paths import ROOT


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that name ``path`` (the demo's daemons do)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if str(path) in cmd:
            found.append(f"{pid}: {cmd}")
    return found


@pytest.mark.parametrize(
    ("signum", "after"),
    [
        # the forwarder's daemon is starting: not yet in the list the step stops
        (signal.SIGTERM, "dtp daemon exposes"),
        (signal.SIGINT, "dtp daemon exposes"),
        (signal.SIGINT, "a forwarder listens"),
    ],
)
def test_an_interrupted_demo_leaves_no_daemon_and_no_files(
    tmp_path: Path, signum: int, after: str
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    # (SIGINT is restored to Python's default in the child: a shell starting this suite
    # in the background, as CI may, has it ignored, and ignored signals are inherited)
    start = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['dtp', 'demo', '--quick']; runpy.run_module('dtp', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", start],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if after in line:
                break
        else:
            pytest.fail("the demo ended before the daemon step")
        proc.send_signal(signum)
        proc.communicate(timeout=60)
        assert proc.returncode != 0  # interrupted, and says so
        deadline = time.monotonic() + 10
        while _processes_under(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_under(tmp_path) == []
        assert list(tmp_path.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for line in _processes_under(tmp_path):  # (a failed run must not leave them)
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def test_status_prints_ports_plainly() -> None:
    rows = {"api": {"port": 8545, "bytes_in": 1234567}}
    lines = _table(rows, (("name", "name"), ("port", "port"), ("bytes in", "bytes_in")))
    assert "8545" in lines[-1] and "8,545" not in lines[-1]
    assert "1,234,567" in lines[-1]
