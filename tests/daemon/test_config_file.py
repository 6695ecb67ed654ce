"""The daemon's config file: validation errors name file:line: key; `dtp status`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._config import (
    MIN_UNPAID_SLACK,
    ForwardConfig,
    key_lines,
    load_config,
    parse_config,
)
from dtp.daemon._state import StatusBook, process_identity
from dtp.daemon._status import daemon_running, format_table
from dtp.daemon._status import main as status_main
from dtp.errors import DaemonConfigError, KeyFileError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from tests.support.daemon_procs import ENV, ROOT, daemon

EXAMPLE = ROOT / "examples" / "dtp.toml"
HEAD = '[daemon]\nledger = "l.sqlite"\nidentity = "k.key"\n'
SVC = '\n[[service]]\nname = "a"\nport = 80\nbackends = ["127.0.0.1:8080"]\n'


def error_of(text: str, name: str = "dtp.toml") -> str:
    with pytest.raises(DaemonConfigError) as info:
        parse_config(text, Path(name))
    return str(info.value)


def test_the_example_file_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert [s.port for s in config.services] == [80, 8545]
    web = config.services[0]
    assert [str(b) for b in web.backends] == ["127.0.0.1:8080", "127.0.0.1:8081"]
    assert web.paid and web.min_deposit == 10_000_000
    assert config.forwards[0].target.port == 5432
    assert config.daemon.ledger.path == EXAMPLE.parent / "dtp-ledger.sqlite"
    assert config.firewall.deny[0].endswith("bad01")


def test_the_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "daemon.md").read_text()
    block = text.split("```toml\n")[1].split("```")[0]
    config = parse_config(block, tmp_path / "dtp.toml")
    assert [s.name for s in config.services] == ["web", "rpc"]
    assert config == parse_config(block, tmp_path / "dtp.toml")
    assert config.services == load_config(EXAMPLE).services


def test_key_lines_follow_tables_arrays_and_multiline_values() -> None:
    text = '[daemon]\nledger = "x"\n\n[[service]]\nbackends = [\n  "a:1",\n  "b:2",\n]\nport = 3\n'
    text += '[[service]]\nport = 4 # comment\n[firewall]\n"mode" = "open"\n'
    lines = key_lines(text)
    assert lines[("daemon", "ledger")] == 2
    assert lines[("service", 0, "backends")] == 5
    assert lines[("service", 0, "port")] == 9
    assert lines[("service", 1, "port")] == 11
    assert lines[("firewall", "mode")] == 13


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEAD + SVC.replace("port = 80", 'port = "eighty"'), "dtp.toml:7: service[0].port: "),
        (HEAD + SVC.replace("port = 80", "port = 70000"), "dtp.toml:7: service[0].port: "),
        (HEAD + SVC.replace("port = 80\n", ""), "dtp.toml:5: service[0].port: is required"),
        (
            HEAD + SVC + SVC.replace('"a"', '"b"'),
            "dtp.toml:12: service[1].port: duplicate port 80 (also at dtp.toml:7)",
        ),
        (HEAD + SVC.replace("backends", "backend"), "dtp.toml:8: service[0].backend: unknown key"),
        (HEAD + SVC.replace("127.0.0.1:8080", "localhost"), "dtp.toml:8: service[0].backends:"),
        (HEAD + SVC + 'deny = ["0xzz"]\n', "dtp.toml:9: service[0].deny: '0xzz' is not"),
        (HEAD.replace('ledger = "l.sqlite"\n', "") + SVC, "dtp.toml:1: daemon.ledger: is required"),
        (HEAD + "listen = 7\n" + SVC, 'dtp.toml:4: daemon.listen: expected "host:port"'),
        (HEAD + 'log_format = "xml"\n' + SVC, "dtp.toml:4: daemon.log_format: expected one of"),
        (
            HEAD + '[[forward]]\nname = "f"\nlisten = "127.0.0.1:1"\ntarget = "http://x"\n',
            "dtp.toml:7: forward[0].target: ",
        ),
        (HEAD + SVC + "[firewall]\nmode = 'closed'\n", "dtp.toml:10: firewall.mode: expected one"),
        (
            HEAD + SVC + "[firewall]\nmax_bytes_per_sec = -5\n",
            "dtp.toml:10: firewall.max_bytes_per_sec: expected an integer",
        ),
        (HEAD + "port = = 3\n", "dtp.toml:4: TOML syntax error"),
        # isdigit() takes "²" for a digit; int() does not
        (
            HEAD + 'listen = "127.0.0.1:²"\n' + SVC,
            'dtp.toml:4: daemon.listen: expected "host:port"',
        ),
        (HEAD + SVC.replace("127.0.0.1:8080", "127.0.0.1:٨٠"), "dtp.toml:8: service[0].backends:"),
        # nan <= 0 is False: time settings must be finite
        (HEAD + "drain_timeout = nan\n" + SVC, "dtp.toml:4: daemon.drain_timeout: expected a pos"),
        (HEAD + "drain_timeout = inf\n" + SVC, "dtp.toml:4: daemon.drain_timeout: expected a pos"),
        (HEAD + SVC + "health_interval = nan\n", "dtp.toml:9: service[0].health_interval: "),
        (HEAD + SVC + "connect_timeout = -inf\n", "dtp.toml:9: service[0].connect_timeout: "),
        (HEAD + SVC + "idle_timeout = +nan\n", "dtp.toml:9: service[0].idle_timeout: expected"),
        (
            HEAD + '[[forward]]\nname = "f"\nlisten = "127.0.0.1:1"\n'
            'target = "dtp://0x' + "ab" * 32 + ':7"\nidle_timeout = inf\n',
            "dtp.toml:8: forward[0].idle_timeout: expected a positive number",
        ),
        # a slack within the connection window cuts every paid tunnel at once
        (HEAD + SVC + "unpaid_slack = 0\n", "dtp.toml:9: service[0].unpaid_slack: must exceed"),
        (
            HEAD + SVC + f"unpaid_slack = {MIN_UNPAID_SLACK}\n",
            f"dtp.toml:9: service[0].unpaid_slack: must exceed {MIN_UNPAID_SLACK} bytes",
        ),
        (HEAD, "dtp.toml: nothing to do"),
    ],
)
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected), error_of(text)


def test_the_unpaid_slack_floor_is_the_window_plus_the_default_receipt_interval() -> None:
    # the dataclasses' defaults, which the daemon's connections and forwards use
    assert ConnectionConfig.connection_window + ForwardConfig.receipt_every == MIN_UNPAID_SLACK
    config = parse_config(HEAD + SVC + f"unpaid_slack = {MIN_UNPAID_SLACK + 1}\n", Path("x"))
    assert config.services[0].unpaid_slack == MIN_UNPAID_SLACK + 1
    assert parse_config(HEAD + SVC, Path("x")).services[0].unpaid_slack == 16 << 20


def test_the_daemon_refuses_a_bad_config_with_exit_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(HEAD + SVC.replace("port = 80", "port = -1"))
    done = subprocess.run(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{bad}:7: service[0].port: expected an integer in 0..65535, got -1" in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert missing.returncode == 2 and "cannot read the config file" in missing.stderr


def run_daemon(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in ENV.items() if k != "DTP_PASSPHRASE"}, **env},
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The daemon's error: one line on stderr after any JSON log lines, no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith('{"ts"')]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_listen_address_that_cannot_be_bound_is_a_config_error(tmp_path: Path) -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    config = tmp_path / "dtp.toml"
    with busy:
        config.write_text(HEAD + f'listen = "127.0.0.1:{port}"\n' + SVC)
        done = run_daemon(config)
        assert done.returncode == 2
        assert one_line(done) == (
            f"dtp daemon: {config}:4: daemon.listen: cannot listen on 127.0.0.1:{port}: "
            "Address already in use"
        )
        config.write_text(
            HEAD + f'[[forward]]\nname = "f"\nlisten = "127.0.0.1:{port}"\n'
            'target = "dtp://0x' + "ab" * 32 + ':7"\n'
        )
        done = run_daemon(config)
        assert done.returncode == 2
        assert one_line(done).startswith(f"dtp daemon: {config}:6: forward[0].listen: cannot")
    config.write_text(HEAD + 'listen = "nonexistent.invalid:0"\n' + SVC)
    done = run_daemon(config)
    assert done.returncode == 2
    assert one_line(done).startswith(
        f"dtp daemon: {config}:4: daemon.listen: cannot listen on nonexistent.invalid:0: "
    )


@pytest.mark.parametrize(
    ("key", "line", "name"),
    [("state_dir", 4, "state"), ("identity", 3, "k.key"), ("ledger", 2, "l.sqlite")],
)
def test_a_path_under_a_file_is_a_config_error(
    tmp_path: Path, key: str, line: int, name: str
) -> None:
    # the setting's key and line and the file in the way, with nothing created: the
    # writes themselves fail with "File exists: PARENT" (the identity's and the
    # ledger's parent folders), which names neither
    config = tmp_path / "dtp.toml"
    (tmp_path / "afile").write_text("")
    text = HEAD + 'state_dir = "state"\n' + SVC
    config.write_text(text.replace(f'"{name}"', f'"afile/{name}"'))
    done = run_daemon(config)
    assert done.returncode == 2
    blocked = tmp_path / "afile" / name
    assert one_line(done) == (
        f"dtp daemon: {config}:{line}: daemon.{key}: {blocked} cannot be created: "
        f"{tmp_path / 'afile'} is not a directory"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dtp.toml"]


def test_a_ledger_that_is_not_sqlite_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "dtp.toml"
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    for ledger, reason in (("notes.txt", "file is not a database"), (".", "it is a directory")):
        config.write_text(HEAD.replace("l.sqlite", ledger) + SVC)
        done = run_daemon(config)
        assert done.returncode == 1
        assert one_line(done) == (
            f"dtp daemon: cannot open the ledger {tmp_path / ledger}: {reason}"
        )


def test_a_passphrase_protected_identity_is_read_with_dtp_passphrase(tmp_path: Path) -> None:
    config = tmp_path / "dtp.toml"
    config.write_text(HEAD + SVC)

    def start(passphrase: str) -> dict[str, Any]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**ENV, "DTP_PASSPHRASE": passphrase},
        )
        with proc:
            assert proc.stdout is not None
            ready: dict[str, Any] = json.loads(proc.stdout.readline())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        return ready

    # the first start creates the identity, encrypted with the passphrase
    first = start("correct horse")
    with pytest.raises(KeyFileError, match="a passphrase is required"):
        HostIdentity.load(tmp_path / "k.key")
    assert HostIdentity.load(tmp_path / "k.key", "correct horse").sui_address == first["address"]
    assert start("correct horse")["address"] == first["address"]
    done = run_daemon(config)
    assert done.returncode == 1
    assert one_line(done) == (
        f"dtp daemon: {tmp_path / 'k.key'} is encrypted; a passphrase is required "
        "(set $DTP_PASSPHRASE)"
    )
    wrong = run_daemon(config, DTP_PASSPHRASE="wrong")
    assert wrong.returncode == 1 and "passphrase" in one_line(wrong)


def test_status_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    book = StatusBook.open(tmp_path)
    row = book.service("web")
    row.port, row.bytes_in, row.fees_earned, row.denials = 80, 123_456, 789, 2
    row.rate_limited = 31_337
    book.forward("db").tunnels = 5
    book.info.update(pid=os.getpid(), host_id="0xabc", endpoint="127.0.0.1:7700")
    book.save(force=True)
    assert status_main(None, str(tmp_path), as_json=False) == 0
    table = capsys.readouterr().out
    assert f"running (pid {os.getpid()})" in table
    web = next(line for line in table.splitlines() if line.startswith("web"))
    assert "123,456" in web and "789" in web and "31,337" in web
    assert "rate-limited" in table
    assert status_main(None, str(tmp_path), as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is True
    assert data["services"]["web"]["bytes_in"] == 123_456
    assert data["forwards"]["db"]["tunnels"] == 5
    # cumulative counters carry over to the next run; live ones do not
    row.active_tunnels = 3
    book.save(force=True)
    again = StatusBook.open(tmp_path)
    assert again.services["web"].bytes_in == 123_456
    assert again.services["web"].active_tunnels == 0
    assert "web" in format_table(again.to_json())
    assert status_main(None, str(tmp_path / "nowhere"), as_json=False) == 1


def test_status_tells_a_reused_pid_from_the_daemon(tmp_path: Path) -> None:
    # after a crash (or a reboot) the recorded pid may name another, live process: its
    # start time (or boot) differs from the one the daemon recorded
    me = process_identity(os.getpid())
    assert me is not None and me == process_identity(os.getpid())
    boot, _, start = me.rpartition(":")
    assert daemon_running({"pid": os.getpid(), "process": me})
    assert not daemon_running({"pid": os.getpid(), "process": f"{boot}:{int(start) + 1}"})
    assert not daemon_running({"pid": os.getpid(), "process": f"another-boot:{start}"})
    # a record from before the field existed falls back to the pid alone
    assert daemon_running({"pid": os.getpid()})
    table = format_table({"pid": os.getpid(), "process": f"{boot}:{int(start) + 1}"})
    assert table.splitlines()[0].startswith("daemon: not running")


def test_status_of_a_killed_daemon_says_not_running(tmp_path: Path) -> None:
    config = tmp_path / "dtp.toml"
    config.write_text(HEAD + SVC)
    proc = daemon(config)
    pid = proc.info["pid"]
    assert proc.info["process"] == process_identity(pid)
    proc.kill()  # SIGKILL, and reaped: no clean stop is recorded
    done = subprocess.run(
        [sys.executable, "-m", "dtp", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == ""
    first = done.stdout.splitlines()[0]
    assert first == f"daemon: not running (pid {pid} ended without stopping cleanly)"
    as_json = subprocess.run(
        [sys.executable, "-m", "dtp", "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert json.loads(as_json.stdout)["running"] is False


def test_status_errors_go_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status_main(None, str(tmp_path / "nowhere"), as_json=False) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("dtp status: no daemon status in ")
    # with --json, one JSON object naming the kind of failure
    assert status_main(None, str(tmp_path / "nowhere"), as_json=True) == 1
    out, err = capsys.readouterr()
    assert out == "" and json.loads(err)["error"] == "NoStatus"
    assert status_main(str(tmp_path / "none.toml"), None, as_json=True) == 2
    out, err = capsys.readouterr()
    error = json.loads(err)
    assert out == "" and "cannot read the config file" in error["message"]
    assert (error["error"], error["exit_status"]) == ("DaemonConfigError", 2)
    for damaged, problem in (
        ({"services": {"a": 5}}, "services['a'] is not an object"),
        ({"forwards": ["x"]}, "'forwards' is not an object"),
    ):
        (tmp_path / "status.json").write_text(json.dumps(damaged))
        assert status_main(None, str(tmp_path), as_json=False) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == f"dtp status: {tmp_path / 'status.json'} is damaged: {problem}\n"
        # and a daemon starting over such a file starts afresh rather than failing
        assert StatusBook.open(tmp_path).forwards == {}
