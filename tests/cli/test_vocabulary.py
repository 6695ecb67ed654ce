"""One vocabulary across the ``dtp`` commands (docs/cli.md): every command's ``--help``
parses; the options that name the same thing are spelled and parsed the same way
everywhere; exit statuses mean the same (0 done, 1 failed, 2 the command line, config or
environment cannot be used); errors are one line on stderr naming the typed error;
``--json`` output parses."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dtp.cli import build_parser, main
from dtp.cli._common import amount, duration, firewall_mode
from dtp.ledger._objects import FirewallMode
from tests.support.paths import ROOT

#: What every chain command takes (docs/cli.md "Options every chain command takes").
CHAIN_OPTIONS = {"--ledger", "--ledger-path", "--sui-package", "--identity", "--passphrase-env"}
_LOCAL = {"--ledger", "--ledger-path"}
_KEY = {"--identity", "--passphrase-env"}
#: The chain commands that take only those of CHAIN_OPTIONS they use (docs/cli.md): an
#: option taken and ignored lets a user believe the command acted on that ledger or key.
PART_OPTIONS: dict[tuple[str, ...], set[str]] = {
    ("keys", "new"): _KEY,
    ("keys", "show"): _KEY,
    ("localnet", "status"): _LOCAL,
    ("localnet", "faucet"): _LOCAL | _KEY,  # (the identity: the address it mints to)
    ("localnet", "advance-epoch"): _LOCAL,
    ("localnet", "advance-clock"): _LOCAL,
    ("deploy",): {"--passphrase-env"},
}
#: Commands that print no data of their own (a guided demo): the only ones without
#: --json (the daemon's output is its JSON ready line and logs, and its --json makes
#: its errors and --check's findings JSON too).
NO_JSON = {("demo",)}


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    found = []
    for name, child in subs[0].choices.items():
        found += _leaves(child, (*path, name))
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


LEAVES = _leaves(build_parser())


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"balance", "refund", "host set", "localnet faucet", "daemon", "status", "lan"} <= names
    assert len(names) >= 25, names


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=lambda p: " ".join(p))
def test_every_help_parses(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dtp {' '.join(path)}"), out


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=[" ".join(path) for path, _ in LEAVES])
def test_data_commands_take_json(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    if path in NO_JSON:
        return
    assert "--json" in _options(parser)


def test_the_chain_commands_share_their_options() -> None:
    chain = [(p, parser) for p, parser in LEAVES if "--sui-package" in _options(parser)]
    assert len(chain) >= 17
    for path, parser in chain:
        assert _options(parser) >= CHAIN_OPTIONS, path
    leaves = dict(LEAVES)
    for path, taken in PART_OPTIONS.items():
        assert _options(leaves[path]) & CHAIN_OPTIONS == taken, path


def test_one_spelling_per_thing() -> None:
    """No command spells a shared thing its own way."""
    every = set().union(*(_options(parser) for _, parser in LEAVES))
    for odd in ("--key", "--keyfile", "--ledger-spec", "--config-file", "--output-json"):
        assert odd not in every, odd
    for path, parser in LEAVES:
        if "--config" in _options(parser):
            assert path in {("daemon",), ("status",)}


def test_firewall_modes_are_the_daemon_configs_words() -> None:
    assert firewall_mode("open") is FirewallMode.ALLOW_ALL
    assert firewall_mode("allowlist") is FirewallMode.ALLOW_LISTED
    # the older spellings, kept for scripts (docs/cli.md: deprecated)
    assert firewall_mode("allow-all") is FirewallMode.ALLOW_ALL
    assert firewall_mode("allow-listed") is FirewallMode.ALLOW_LISTED
    with pytest.raises(argparse.ArgumentTypeError, match="open or allowlist"):
        firewall_mode("closed")


@pytest.mark.parametrize(
    ("text", "mist"),
    [
        ("1500", 1500),
        ("1500mist", 1500),
        ("1.5sui", 1_500_000_000),
        ("2 SUI", 2 * 10**9),
        ("0.000000001sui", 1),
        ("1_000", 1000),
        ("-1", -1),
    ],
)
def test_amounts_in_mist_or_sui(text: str, mist: int) -> None:
    # (-1 parses: the range is each command's to refuse, naming its option)
    assert amount(text) == mist


@pytest.mark.parametrize("text", ["", "abc", "0.0000000001sui", "1.5", "nansui", "1e3mist"])
def test_amounts_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"1\.5sui"):
        amount(text)


def test_durations_with_units() -> None:
    seconds, ms = duration("s"), duration("ms", whole=True)
    assert [seconds(t) for t in ("3", "1500ms", "2m", "0.5")] == [3.0, 1.5, 120.0, 0.5]
    assert [ms(t) for t in ("600000", "10m", "1.5s", "2h")] == [600_000, 600_000, 1500, 7_200_000]
    for bad in ("-1", "nan", "inf", "5 parsecs"):
        with pytest.raises(argparse.ArgumentTypeError):
            seconds(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="whole number of milliseconds"):
        ms("0.5ms")


# -- exit statuses and error lines ---------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # (argparse's usage errors)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_usage_errors_exit_2(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["no-such-command"],
        ["host", "set", "0x1", "--firewall", "closed"],
        ["localnet", "faucet", "--amount", "lots"],
        ["lan", "--timeout", "5 parsecs"],
        ["balance", "0x1", "--ledger", "sui:"],
        ["balance", "--ledger", "local", "--ledger-path", "x.sqlite"],
    ):
        code, out, err = _run(capsys, *argv)
        assert code == 2, (argv, err)
        assert "Traceback" not in err and out == "", argv


def test_a_failure_is_one_line_and_json_names_its_type(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "keys", "new", "--json")[0] == 0
    assert _run(capsys, "localnet", "faucet", "--amount", "1sui")[0] == 0
    missing = "0x" + "ab" * 32
    code, out, err = _run(capsys, "host", "show", missing)
    assert (code, out) == (1, "")
    assert err == f"dtp: No Host with ID {missing} exists on this ledger.\n"
    # with --json, the error too is JSON, naming its type (dtp.errors) and the status
    code, out, err = _run(capsys, "host", "show", missing, "--json")
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert json.loads(err) == {
        "error": "ObjectNotFound",
        "message": f"No Host with ID {missing} exists on this ledger.",
        "exit_status": 1,
    }
    code, _, err = _run(capsys, "balance", "0x1", "--ledger", "sui:", "--json")
    assert code == 2 and json.loads(err)["error"] == "LedgerSpecError"
    code, _, err = _run(capsys, "localnet", "faucet", "--amount", "-1", "--json")
    assert code == 1 and json.loads(err)["error"] == "CommandError"


def test_json_output_parses(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def as_json(*argv: str) -> Any:
        code, out, err = _run(capsys, *argv, "--json")
        assert code == 0, err
        return json.loads(out)

    assert as_json("version")["version"]
    made = as_json("keys", "new")
    assert as_json("keys", "show")["sui_address"] == made["sui_address"]
    got = as_json("localnet", "faucet", "--amount", "2.5sui")
    assert got["received_mist"] == 2_500_000_000
    assert as_json("balance")["balance_sui"] == "2.5"
    host = as_json("host", "create", "--endpoint", "127.0.0.1:7000")["host"]
    code, _, err = _run(capsys, "host", "set", host, "--firewall", "allowlist")
    assert code == 0, err
    assert as_json("host", "show", host)["firewall"]["mode"] == "allowlist"
    assert as_json("localnet", "advance-clock", "1m")["clock_ms"] >= 60_000
    assert as_json("connections")["connections"] == []
    assert "objects" in as_json("localnet", "status")


def test_daemon_check_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = home / "dtp.toml"
    config.write_text(
        '[daemon]\nledger = "ledger.sqlite"\nidentity = "id.key"\nstate_dir = "state"\n'
        '[[service]]\nname = "svc"\nport = 7000\nbackends = ["127.0.0.1:9"]\n'
    )
    code, out, err = _run(capsys, "daemon", "--check", "--json", "--config", str(config))
    report = json.loads(out)
    assert code == (0 if report["ok"] else 1), err
    assert report["config"] == str(config)
    problems = [f for f in report["findings"] if f["level"] == "problem"]
    assert report["problems"] == len(problems) and report["ok"] == (not problems)
    assert {f["level"] for f in report["findings"]} <= {"ok", "note", "warning", "problem"}
    if not report["ok"]:
        # and the summary of a failed test is the JSON error every command prints
        assert json.loads(err) == {
            "error": "ConfigCheckFailed",
            "message": f"{config}: test failed: {report['problems']} problem"
            + ("s" if report["problems"] != 1 else ""),
            "exit_status": 1,
        }


def _json_error(err: str, kind: str, status: int) -> str:
    """The message of the one JSON error line ``err`` holds, checked to be ``kind``."""
    assert err.count("\n") == 1, err
    error = json.loads(err)
    assert (error["error"], error["exit_status"]) == (kind, status), error
    return str(error["message"])


def test_daemon_and_status_errors_are_json_with_json(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(home / "missing.toml")
    broken = home / "broken.toml"
    broken.write_text("[daemon\n")
    # dtp daemon: its command line, a config it cannot read, --check of a broken one
    for argv, kind, status, says in [
        (["daemon", "--config", ""], "UsageError", 2, "--config is empty"),
        (["daemon", "--passphrase-env", "", "--check"], "UsageError", 2, "is empty"),
        (["daemon", "--config", missing], "DaemonConfigError", 2, "missing.toml"),
        (["daemon", "--check", "--config", str(broken)], "DaemonConfigError", 2, "broken.toml"),
    ]:
        code, out, err = _run(capsys, *argv, "--json")
        assert (code, out) == (status, ""), (argv, err)
        assert says in _json_error(err, kind, status), (argv, err)
        # and without --json, the one line it always was
        code, out, err = _run(capsys, *argv)
        assert (code, out) == (status, "") and err.startswith("dtp daemon: "), (argv, err)
        assert says in err and not err.startswith("{"), err
    # dtp status: no state directory to read, none there, a damaged status file
    state = home / "state"
    state.mkdir()
    for argv, kind, status, says in [
        (["status", "--state-dir", ""], "UsageError", 2, "--state-dir is empty"),
        (["status", "--config", missing], "DaemonConfigError", 2, "missing.toml"),
        (["status", "--state-dir", str(state)], "NoStatus", 1, "has the daemon run?"),
    ]:
        code, out, err = _run(capsys, *argv, "--json")
        assert (code, out) == (status, ""), (argv, err)
        assert says in _json_error(err, kind, status), (argv, err)
        code, out, err = _run(capsys, *argv)
        assert (code, out) == (status, "") and err.startswith("dtp status: "), (argv, err)
    # a start the daemon itself refuses (its identity file is no identity), in a
    # process of its own: the runner's failures take the same form
    config = home / "dtp.toml"
    config.write_text(
        '[daemon]\nledger = "l.sqlite"\nidentity = "id.key"\nstate_dir = "st"\n'
        '[[service]]\nname = "svc"\nport = 7000\nbackends = ["127.0.0.1:9"]\n'
    )
    (home / "id.key").write_text("not a key")
    (home / "id.key").chmod(0o600)
    for extra in (["--json"], []):
        done = subprocess.run(
            [sys.executable, "-m", "dtp", "daemon", "--config", str(config), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        if extra:
            assert "not a DTP identity file" in _json_error(done.stderr, "KeyFileError", 1)
        else:
            assert done.stderr.startswith("dtp daemon: ") and "identity" in done.stderr

    (state / "status.json").write_text("[1, 2]")
    code, out, err = _run(capsys, "status", "--state-dir", str(state), "--json", "--file")
    assert (code, out) == (1, "")
    assert "damaged" in _json_error(err, "StatusFileDamaged", 1)
