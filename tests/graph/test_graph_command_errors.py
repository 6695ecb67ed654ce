"""``python -m dtp.graph serve|gun`` meeting a port already taken or a ``--key`` that is
no key file: one line naming the cause and exit 1, not a traceback (as for a bad
``--db``, tests/cli/test_host_commands.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtp.graph", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m dtp.graph: "), lines
    return lines[0]


def test_serve_on_a_taken_port_is_one_line(taken_port: int) -> None:
    line = _one_line(_run("serve", "--listen", f"127.0.0.1:{taken_port}"))
    assert "in use" in line and str(taken_port) in line


@pytest.mark.parametrize("option", ["--listen", "--sync"])
def test_gun_on_a_taken_port_is_one_line(taken_port: int, option: str) -> None:
    pytest.importorskip("websockets")
    args = ["gun", "--no-site", "--listen", "127.0.0.1:0", option, f"127.0.0.1:{taken_port}"]
    line = _one_line(_run(*args))
    assert "in use" in line and str(taken_port) in line


def test_gun_with_a_bad_key_file_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("websockets")
    key = tmp_path / "key"
    key.write_text("garbage\n")
    key.chmod(0o600)
    line = _one_line(_run("gun", "--no-site", "--listen", "127.0.0.1:0", "--key", str(key)))
    assert "is not a DTP identity file" in line
