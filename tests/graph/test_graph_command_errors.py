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


@pytest.fixture
def gun_dir(tmp_path: Path) -> str:
    """A gun package to serve, so that the endpoint logs no warning of a missing one
    (whether npm's is installed here or not): stderr holds the error alone."""
    folder = tmp_path / "gun"
    folder.mkdir()
    (folder / "gun.js").write_text("// a stand-in: the tests here load no page\n")
    return str(folder)


@pytest.mark.parametrize("option", ["--listen", "--sync"])
def test_gun_on_a_taken_port_is_one_line(taken_port: int, option: str, gun_dir: str) -> None:
    pytest.importorskip("websockets")
    args = ["gun", "--no-site", "--gun-dir", gun_dir, "--listen", "127.0.0.1:0"]
    line = _one_line(_run(*args, option, f"127.0.0.1:{taken_port}"))
    assert "in use" in line and str(taken_port) in line


def test_gun_with_a_bad_key_file_is_one_line(tmp_path: Path, gun_dir: str) -> None:
    pytest.importorskip("websockets")
    key = tmp_path / "key"
    key.write_text("garbage\n")
    key.chmod(0o600)
    args = ["gun", "--no-site", "--gun-dir", gun_dir, "--listen", "127.0.0.1:0"]
    line = _one_line(_run(*args, "--key", str(key)))
    assert "is not a DTP identity file" in line
