"""scripts/sui-localnet.sh, as far as it runs without the sui binary: without it the
script says in one sentence what it needs and exits 2 having run nothing; it parses, is
shellcheck-clean, and its live suite names tests that exist and run either way
(tests/support/sui_network.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon_procs import ENV, ROOT

SCRIPT = ROOT / "scripts" / "sui-localnet.sh"
NEEDS = (
    "scripts/sui-localnet.sh needs the Sui CLI: install sui "
    "(https://docs.sui.io/guides/developer/getting-started/sui-install) and put it on PATH, "
    "or set SUI_BIN to its path.\n"
)
#: The daemon pair's tests: every one of them runs on Sui, so the selection picks them all.
DAEMON_PAIR = "tests/daemon/test_two_machines.py"
#: Commands the script would run first, were sui there: spies record any call.
_SPIED = ("python", "python3", "dirname", "mkdir", "seq", "sleep", "tail", "grep", "git", "curl")


def _spies(tmp: Path) -> tuple[Path, Path]:
    """A directory of commands that record that they ran, and the record."""
    bin_dir, ran = tmp / "bin", tmp / "ran"
    bin_dir.mkdir()
    for name in _SPIED:
        spy = bin_dir / name
        spy.write_text(f'#!/bin/sh\necho {name} >> "{ran}"\n')
        spy.chmod(0o755)
    return bin_dir, ran


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run(
        [bash, str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("sui_bin", [None, "/nonexistent/sui", "directory", "not-executable"])
def test_without_sui_it_says_what_it_needs_and_runs_nothing(
    tmp_path: Path, sui_bin: str | None
) -> None:
    bin_dir, ran = _spies(tmp_path)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    if sui_bin == "directory":
        env["SUI_BIN"] = str(tmp_path)
    elif sui_bin == "not-executable":
        plain = tmp_path / "sui"
        plain.write_text("#!/bin/sh\necho ran >> " + str(ran) + "\n")
        env["SUI_BIN"] = str(plain)
    elif sui_bin is not None:
        env["SUI_BIN"] = sui_bin
    done = _run(env)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", NEEDS)
    assert NEEDS.count(". ") == 0  # one sentence
    assert not ran.exists(), ran.read_text()


@pytest.mark.parametrize("version", ["sui 1.45.3-3c4d2e1", "sui 0.28.0"])
def test_a_sui_older_than_1_46_is_refused_before_anything_runs(
    tmp_path: Path, version: str
) -> None:
    """move/dtp's `#[error(code = N)]` constants need the 1.46 line's compiler
    (move/README.md): an older CLI is named and refused, no network started, nothing
    bootstrapped."""
    bin_dir, ran = _spies(tmp_path)
    calls = tmp_path / "sui-calls"
    sui = tmp_path / "sui"
    sui.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\necho "{version}"\n')
    sui.chmod(0o755)
    done = _run({"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "SUI_BIN": str(sui)})
    number = version.split()[1].split("-")[0]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "needs Sui CLI 1.46 or newer" in done.stderr and f"is {number}." in done.stderr
    assert done.stdout.endswith(f"sui-localnet: FAIL (sui {number} is older than 1.46)\n")
    assert "bootstrap" not in done.stdout
    assert calls.read_text() == "--version\n"  # (no `sui start`, no `sui client`)
    assert "python" not in (ran.read_text() if ran.exists() else "")


def test_it_parses_and_is_shellcheck_clean() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=30).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    done = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_its_live_suite_names_tests_that_run_on_either_node() -> None:
    """Every file of LIVE_TESTS exists and holds tests the selection picks; of
    tests/daemon/test_two_machines.py, every test (all of them run on Sui)."""
    text = SCRIPT.read_text()
    listed = re.search(r"LIVE_TESTS=\(\n(.*?)\n\)", text, re.S)
    selection = re.search(r'LIVE_SELECTION="([^"]+)"', text)
    assert listed is not None and selection is not None
    names = listed.group(1).split()
    assert (
        "tests/ledger/test_sui_transactions.py" in names
        and "tests/cli/test_funds_commands.py" in names
    )
    assert DAEMON_PAIR in names
    for name in names:
        assert (ROOT / name).is_file(), name
    picked = _collected(["-k", selection.group(1), *names])
    files = {test.split("::")[0] for test in picked}
    assert files == set(names), f"no test matches -k {selection.group(1)!r} in {set(names) - files}"
    daemon_pair = _collected([DAEMON_PAIR])
    assert daemon_pair and daemon_pair <= picked, daemon_pair - picked


def _collected(args: list[str]) -> set[str]:
    """The test IDs ``pytest --collect-only`` lists for ``args``."""
    collect = ["-p", "no:cacheprovider", "--collect-only", "-q", *args]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *collect],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {line for line in done.stdout.splitlines() if "::" in line}
