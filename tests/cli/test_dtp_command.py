"""The ``dtp`` command: the demo runs end to end and prints what it measured."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from dtp.cli import main
from dtp.daemon.state import StatusBook
from tests.support.demo_output import check_demo_output


def test_version(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["version"]) == 0
    assert "core backend" in capsys.readouterr().out


def test_python_dash_m_dtp_is_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dtp", "version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "core backend" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dtp", "no-such-command"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_no_command_prints_help(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dtp.cli", "demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    check_demo_output(result.stdout)


def test_a_reader_that_goes_away_is_no_traceback(tmp_path: Path) -> None:
    """`dtp status | head -1`: the pipe closes before dtp writes."""
    book = StatusBook.open(tmp_path)
    for i in range(2000):  # more than a pipe buffer holds
        book.service(f"service-{i}").bytes_in = i
    book.save(force=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtp", "status", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the interpreter has started
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 128 + signal.SIGPIPE
