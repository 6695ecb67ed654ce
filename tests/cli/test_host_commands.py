"""The ``dtp`` command as a user meets it: a host published with an endpoint
its clients cannot read, and ``dtp status`` given an empty path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtp.hostid._connect import tcp_endpoints
from dtp.ledger.local import LocalLedger
from tests.support.cli_runs import chain_argv


def _dtp(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(cwd), XDG_DATA_HOME=str(cwd / "data"))
    env.pop("DTP_LEDGER", None)
    env.pop("DTP_PASSPHRASE", None)
    return subprocess.run(
        [sys.executable, "-m", "dtp", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _errors(stderr: str) -> list[str]:
    """stderr without argparse's usage block."""
    return [line for line in stderr.splitlines() if not line.startswith(("usage:", " "))]


@pytest.fixture
def chain(tmp_path: Path) -> tuple[str, ...]:
    """The --ledger-path and --identity of a funded identity in tmp_path."""
    files = ("--ledger-path", str(tmp_path / "ledger.sqlite"), "--identity", str(tmp_path / "id"))
    for argv in (("keys", "new"), ("localnet", "faucet")):
        done = _dtp(*chain_argv(argv, files[:2], files[2:]), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    return files


@pytest.mark.parametrize("endpoint", ["127.0.0.1:99999", "localhost", "::1", "h:http"])
def test_host_create_refuses_an_endpoint_clients_skip(
    tmp_path: Path, chain: tuple[str, ...], endpoint: str
) -> None:
    """An endpoint every client skips (a port beyond 65535, none at all) is a usage
    error, and no Host is made (not an unreachable one, with nothing said)."""
    done = _dtp("host", "create", "--endpoint", endpoint, *chain, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert _errors(done.stderr) == [
        "dtp host create: error: argument --endpoint: expected host:port with a port in "
        f"0..65535 ([v6]:port for IPv6), got {endpoint!r}"
    ]
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    assert not [ref for ref in ledger.objects() if ref.type.endswith("::Host")]


def test_host_set_refuses_an_endpoint_clients_skip(tmp_path: Path, chain: tuple[str, ...]) -> None:
    """``host set --endpoint`` replaced the good endpoints with the unreadable one."""
    created = _dtp("host", "create", "--endpoint", "[::1]:7000", "--json", *chain, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    host_id = json.loads(created.stdout)["host"]
    done = _dtp("host", "set", host_id, "--endpoint", "127.0.0.1:70000", *chain, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "argument --endpoint: expected host:port" in done.stderr
    host = LocalLedger(tmp_path / "ledger.sqlite").get_host(host_id)
    assert tcp_endpoints(host) == [("::1", 7000)]  # what clients connect to, unchanged


def test_host_endpoints_that_clients_read_are_published(
    tmp_path: Path, chain: tuple[str, ...]
) -> None:
    """The accepted forms are the ones clients read; other carriers' schemes pass."""
    forms = ["127.0.0.1:7000", "tcp://example.org:443", "[::1]:0", "udp://127.0.0.1:53"]
    argv = [arg for form in forms for arg in ("--endpoint", form)]
    done = _dtp("host", "create", *argv, "--json", *chain, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    host = LocalLedger(tmp_path / "ledger.sqlite").get_host(json.loads(done.stdout)["host"])
    assert tcp_endpoints(host) == [("127.0.0.1", 7000), ("example.org", 443), ("::1", 0)]


@pytest.mark.parametrize("option", ["--state-dir", "--config"])
def test_status_with_an_empty_path_is_an_error(tmp_path: Path, option: str) -> None:
    """``dtp status --state-dir "$UNSET"`` fell back to ./dtp.toml and showed that other
    daemon's counters, exit 0, as if they were the ones asked for."""
    (tmp_path / "dtp.toml").write_text(
        '[daemon]\nledger = "l.sqlite"\nidentity = "id"\nstate_dir = "other-state"\n',
        encoding="utf-8",
    )
    state = tmp_path / "other-state"
    state.mkdir()
    status = {"pid": 1, "stopped": True, "services": {"other-daemon": {"port": 80}}}
    (state / "status.json").write_text(json.dumps(status), encoding="utf-8")
    assert _dtp("status", cwd=tmp_path).returncode == 0  # the default is still read

    done = _dtp("status", option, "", cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"dtp status: {option} is empty: give a path, or leave it out."
    ]


@pytest.mark.parametrize("kind", ["directory", "not a graph file"])
def test_graph_serve_with_a_bad_db_is_one_line(tmp_path: Path, kind: str) -> None:
    """``python -m dtp.graph serve --db`` naming a directory or a file that is not a
    graph database: one line and exit 1 (a traceback ending in GraphStorageError)."""
    if kind == "directory":
        db = tmp_path / "dir"
        db.mkdir()
    else:
        db = tmp_path / "notes.sqlite"
        db.write_bytes(b"these are not the pages of a SQLite database\n" * 100)
    done = subprocess.run(
        [sys.executable, "-m", "dtp.graph", "serve", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m dtp.graph: ")
    assert done.stdout == ""
