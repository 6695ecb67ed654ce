"""The ``dtp`` command as the README has users run it: exit codes, one-line errors for
bad arguments (no traceback), and output on terminals that cannot show every character.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _dtp(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = dict(os.environ)
    base["HOME"] = str(cwd)  # the default identity and ledger paths land in tmp_path
    base["XDG_DATA_HOME"] = str(cwd / "data")
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dtp", *argv],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=False,
    )


def test_status_on_a_terminal_without_the_characters(tmp_path: Path) -> None:
    """A service name the output encoding cannot show is escaped, not a traceback."""
    state = tmp_path / "state"
    state.mkdir()
    status = {"pid": 1, "stopped": True, "services": {"café": {"port": 80, "connections": 3}}}
    (state / "status.json").write_text(json.dumps(status), encoding="utf-8")
    done = _dtp(
        "status", "--state-dir", str(state), cwd=tmp_path, env={"PYTHONIOENCODING": "ascii"}
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "caf\\xe9" in done.stdout
    assert "daemon: stopped" in done.stdout


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (("bogus",), 2, "invalid choice"),
        (("demo", "--bogus"), 2, "unrecognized arguments"),
        (("localnet", "faucet", "--amount", "abc"), 2, "invalid int value"),
        (("host", "show", "zz"), 1, "No ledger at"),
        (("host", "create"), 1, "no identity file"),
        (("status", "--config", "missing.toml"), 2, "cannot read the config file"),
    ],
)
def test_bad_arguments_are_one_typed_line(
    argv: tuple[str, ...], code: int, says: str, tmp_path: Path
) -> None:
    """Bad input: the documented exit status and a short message naming the problem."""
    done = _dtp(*argv, cwd=tmp_path)
    assert done.returncode == code, (done.returncode, done.stderr)
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(errors) == 1, done.stderr
    assert done.stdout == ""
