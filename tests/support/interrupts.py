"""A Python program run in a scratch TMPDIR and interrupted where a test chooses, for the
tests that an interrupted demo (or one of its steps) leaves no process and no file
behind: everything it starts (daemons, a browser) names that TMPDIR on its command line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT


def processes_under(path: Path) -> list[str]:
    """``"<pid>: <command line>"`` of each live process whose command line names a
    file under ``path``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if f"{path}{os.sep}" in cmd:  # (a file under it: not a folder named alike)
            found.append(f"{pid}: {cmd[:200]}")
    return found


def left_under(path: Path, timeout: float = 10.0) -> list[str]:
    """:func:`processes_under` once none is left, or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while (found := processes_under(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@contextlib.contextmanager
def run_until(
    code: str, tmp_path: Path, after: str, *, hup: str = "SIG_DFL", stderr: int = subprocess.PIPE
) -> Iterator[subprocess.Popen[str]]:
    """``python -c code`` with its temporary files in ``tmp_path``, unbuffered, its
    stdout read until a line holding ``after`` (the test fails if it ends before); on
    exit, it and every process under ``tmp_path`` are killed (a failed test leaves
    nothing running). SIGINT is Python's default in the child (a shell that starts the
    suite in the background has it ignored, and ignored signals are inherited); SIGHUP
    is ``hup``."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env["PYTHONUNBUFFERED"] = "1"
    start = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"signal.signal(signal.SIGHUP, signal.{hup}); {code}"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", start],
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        seen: list[str] = []
        for line in proc.stdout:
            seen.append(line)
            if after in line:
                break
        else:
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"the program ended before {after!r}:\n{''.join(seen)}\n{err}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for line in processes_under(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":")[0]), signal.SIGKILL)


def dtp_main(*argv: str) -> str:
    """The ``code`` for :func:`run_until` that runs ``dtp ARGV`` as the command does."""
    return f"import runpy, sys; sys.argv = ['dtp', *{list(argv)!r}]; " + (
        "runpy.run_module('dtp', run_name='__main__')"
    )
