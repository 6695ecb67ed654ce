"""Chain commands given an empty --ledger-path or --identity (``"$UNSET"`` in a
script): an error, not the default file acted on in their place.

The ``dtp`` command as a user meets it: empty option values, a gas budget
of zero, and the deployments record (written in place, read without checking its
entries, lost with the package ID when it could not be written)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtp.cli import main
from dtp.cli._ledger import register
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import FirewallMode
from dtp.ledger.local import LocalLedger
from tests.support.cli_runs import child_env, cli_env, error_lines, run_dtp


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dtp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_LEDGER", raising=False)
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (("localnet", "faucet", "--to", "0x1", "--ledger-path", ""), "--ledger-path"),
        (("localnet", "advance-epoch", "--ledger-path", ""), "--ledger-path"),
        (("keys", "new", "--identity", ""), "--identity"),
        (("keys", "show", "--identity", ""), "--identity"),
    ],
)
def test_an_empty_path_option_is_an_error(
    data_home: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], option: str
) -> None:
    """The faucet minted into the default ledger, keys new wrote the default identity."""
    assert run(*argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"dtp: {option} is empty: give a file, or leave the option out."
    ]
    assert not data_home.exists()  # neither default file was created


PUBLISHED = '{"digest": "D", "objectChanges": [{"type": "published", "packageId": "0xabc"}]}'

#: A record already on disk before each deploy: another network's, padded so that the
#: file is large enough for a write to stop part-way through it.
EARLIER = {"testnet": {"package_id": "0x" + "7" * 64, "digest": "E" * 2000}}


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch home and data home, a Move package of our own, and a fake ``sui`` (the
    real one cannot run here) that logs its arguments and marks a publish."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_LEDGER", raising=False)
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "Move.toml").write_text('[package]\nname = "dtp"\n')
    sui = tmp_path / "bin" / "sui"
    sui.parent.mkdir()
    sui.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path / "sui-calls"}\n'
        'case "$1 $2" in\n'
        '  "client active-env") echo localnet ;;\n'
        '  "move build") echo built ;;\n'
        f"  \"client publish\") touch {tmp_path / 'published'}; echo '{PUBLISHED}' ;;\n"
        "esac\n"
    )
    sui.chmod(0o755)
    return tmp_path


def _records(place: Path) -> Path:
    return place / "data" / "dtp" / "deployments.json"


def _deploy_argv(place: Path, *extra: str) -> list[str]:
    return [
        "deploy",
        "--network",
        "localnet",
        "--sui-bin",
        str(place / "bin" / "sui"),
        "--package-path",
        str(place / "pkg"),
        *extra,
    ]


# -- empty option values ---------------------------------------------------------------


def test_daemon_with_an_empty_config_is_a_usage_error(tmp_path: Path) -> None:
    """``dtp daemon --config "$UNSET"`` read ``.`` and said ".: cannot read the config
    file: Is a directory", naming neither the option nor the cause."""
    done = run_dtp("daemon", "--config", "", cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        "dtp daemon: --config is empty: give a path, or leave it out."
    ]


def test_daemon_with_an_empty_passphrase_env_is_a_usage_error(tmp_path: Path) -> None:
    """``--passphrase-env ""`` read no passphrase: the start failed with "… is encrypted;
    a passphrase is required (set $)", while $DTP_PASSPHRASE held the right one."""
    HostIdentity.generate().save(tmp_path / "id.json", "secret")
    (tmp_path / "dtp.toml").write_text(
        '[daemon]\nledger = "l.sqlite"\nidentity = "id.json"\n'
        '[[service]]\nname = "echo"\nport = 7\nbackends = ["127.0.0.1:9"]\n',
        encoding="utf-8",
    )
    env = dict(cli_env(tmp_path), DTP_PASSPHRASE="secret")
    done = run_dtp("daemon", "--passphrase-env", "", cwd=tmp_path, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        "dtp daemon: --passphrase-env is empty: name an environment variable, or leave it out."
    ]
    assert not (tmp_path / "l.sqlite").exists()  # nothing was started


def test_status_refuses_both_a_config_and_a_state_dir(tmp_path: Path) -> None:
    """Given both, ``dtp status`` showed the state directory's daemon, exit 0, and the
    config file named (another daemon's) was ignored without a word."""
    for name in ("mine", "other"):
        state = tmp_path / name
        state.mkdir()
        status = {"pid": 1, "stopped": True, "services": {f"{name}-daemon": {"port": 80}}}
        (state / "status.json").write_text(json.dumps(status), encoding="utf-8")
    (tmp_path / "mine.toml").write_text(
        '[daemon]\nledger = "l.sqlite"\nidentity = "id"\nstate_dir = "mine"\n', encoding="utf-8"
    )
    done = run_dtp("status", "--config", "mine.toml", "--state-dir", "other", cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert error_lines(done.stderr) == [
        "dtp status: error: argument --state-dir: not allowed with argument --config"
    ]


def test_keys_new_with_an_empty_passphrase_env_is_refused(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dtp keys new --passphrase-env "$UNSET"`` wrote the secret key unencrypted."""
    identity = place / "id.json"
    with pytest.raises(SystemExit) as stop:
        main(["keys", "new", "--identity", str(identity), "--passphrase-env", ""])
    assert stop.value.code == 2
    assert error_lines(capsys.readouterr().err) == [
        "dtp keys new: error: argument --passphrase-env: is empty: name an environment variable"
    ]
    assert not identity.exists()


@pytest.mark.parametrize(
    ("option", "what"), [("--package-path", "a directory"), ("--sui-bin", "a file")]
)
def test_deploy_with_an_empty_path_publishes_nothing(
    place: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    what: str,
) -> None:
    """An empty --package-path published the default package instead; an empty
    --sui-bin ran whichever ``sui`` was first on PATH."""
    monkeypatch.setenv("PATH", f"{place / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    argv = _deploy_argv(place)
    argv[argv.index(option) + 1] = ""
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"dtp: {option} is empty: give {what}, or leave the option out."
    ]
    assert not (place / "published").exists()


def test_faucet_to_an_empty_address_mints_nothing(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``localnet faucet --to "$UNSET"`` minted to the identity's address instead."""
    files = ["--ledger-path", str(place / "ledger.sqlite"), "--identity", str(place / "id")]
    assert main(["keys", "new", *files[2:]]) == 0
    capsys.readouterr()
    assert main(["localnet", "faucet", "--to", "", *files]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "dtp: '' is not a valid address (0x followed by 1 to 64 hex digits)."
    ]
    assert LocalLedger(place / "ledger.sqlite").minted() == 0


def test_host_set_with_an_empty_authority_changes_nothing(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``host set H --authority "$UNSET" --firewall allow-listed`` skipped the hand-over
    and closed the firewall, exit 0: the rest done, the one change asked for left out."""
    files = ["--ledger-path", str(place / "ledger.sqlite"), "--identity", str(place / "id")]
    assert main(["keys", "new", *files[2:]]) == 0
    assert main(["localnet", "faucet", *files]) == 0
    capsys.readouterr()
    assert main(["host", "create", "--json", *files]) == 0
    host_id = json.loads(capsys.readouterr().out)["host"]
    argv = ["host", "set", host_id, "--authority", "", "--firewall", "allow-listed", *files]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        "dtp: '' is not a valid address (0x followed by 1 to 64 hex digits)."
    ]
    host = LocalLedger(place / "ledger.sqlite").get_host(host_id)
    assert host.firewall.mode == FirewallMode.ALLOW_ALL


# -- --gas-budget ----------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["0", "-5", str(2**64)])
def test_deploy_refuses_a_gas_budget_out_of_range(
    place: Path, capsys: pytest.CaptureFixture[str], budget: str
) -> None:
    """It went on to ``sui client publish --gas-budget 0`` (or -5) after the build."""
    with pytest.raises(SystemExit) as stop:
        main(_deploy_argv(place, "--gas-budget", budget))
    assert stop.value.code == 2
    assert error_lines(capsys.readouterr().err) == [
        "dtp deploy: error: argument --gas-budget: expected an integer from 1 to 2**64-1 "
        f"(MIST), got {budget!r}"
    ]
    assert not (place / "sui-calls").exists()  # sui was never run


def test_deploy_passes_a_good_gas_budget_on(place: Path) -> None:
    assert main(_deploy_argv(place, "--gas-budget", "1")) == 0
    calls = (place / "sui-calls").read_text().splitlines()
    assert "client publish --json --gas-budget 1" in calls


# -- the deployments record ------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        {"version": True},
        {"localnet": "0xabc"},
        {"testnet": {}},
        {"testnet": {"package_id": 5, "digest": "D"}},
        {"testnet": {"package_id": "", "digest": "D"}},
        {"testnet": {"package_id": "0x1", "digest": 7}},
    ],
)
def test_a_record_with_wrong_entries_is_refused_before_publishing(
    place: Path, capsys: pytest.CaptureFixture[str], content: dict[str, object]
) -> None:
    """Any JSON object passed, and its damage was carried into every later record."""
    _records(place).parent.mkdir(parents=True)
    _records(place).write_text(json.dumps(content))
    assert main(_deploy_argv(place)) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"dtp: {_records(place)} is not a deployments record (")
    assert not (place / "published").exists()  # nothing published (and paid for) in vain
    assert json.loads(_records(place).read_text()) == content


def test_a_directory_in_place_of_the_record_is_refused_before_publishing(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read as "no records"; the publish went through, then the write failed and the
    package ID was printed nowhere."""
    _records(place).mkdir(parents=True)
    assert main(_deploy_argv(place)) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"dtp: {_records(place)} is not a regular file; move it aside."
    ]
    assert not (place / "published").exists()


def _deploy_under_a_size_limit(place: Path, *, crash: bool) -> subprocess.CompletedProcess[str]:
    """``dtp deploy`` with every file it writes capped a few bytes above the current
    record's size, so the new record cannot be written whole: the process is killed by
    SIGXFSZ part-way (``crash``) or its write fails with EFBIG."""
    limit = _records(place).stat().st_size + 10
    script = (
        "import resource, signal, sys\n"
        "from dtp.cli import main\n"
        + ("" if crash else "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n")
        + f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *_deploy_argv(place)],
        cwd=place,
        env=cli_env(place),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _write_earlier_record(place: Path) -> str:
    _records(place).parent.mkdir(parents=True)
    text = json.dumps(EARLIER, indent=2, sort_keys=True) + "\n"
    _records(place).write_text(text)
    return text


def test_a_crash_while_recording_leaves_the_earlier_record_whole(place: Path) -> None:
    """The record was truncated, then rewritten in place: killed part-way, it held
    half a JSON document and the testnet deployment was gone."""
    before = _write_earlier_record(place)
    done = _deploy_under_a_size_limit(place, crash=True)
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert (place / "published").exists()  # the crash came after the publish
    assert _records(place).read_text() == before


def test_a_failed_write_names_the_published_package(place: Path) -> None:
    """The write failed with "dtp: File too large: …deployments.json": the package was
    published and paid for, and its ID printed nowhere; the earlier record was lost."""
    before = _write_earlier_record(place)
    done = _deploy_under_a_size_limit(place, crash=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"dtp: Published 0xabc on localnet, but could not record it in {_records(place)}: "
        "File too large"
    ]
    assert _records(place).read_text() == before
    assert sorted(p.name for p in _records(place).parent.iterdir()) == ["deployments.json"]


def test_a_deploy_adds_to_the_record_and_leaves_no_temporary_file(place: Path) -> None:
    _write_earlier_record(place)
    assert main(_deploy_argv(place)) == 0
    assert json.loads(_records(place).read_text()) == {
        **EARLIER,
        "localnet": {"package_id": "0xabc", "digest": "D"},
    }
    assert sorted(p.name for p in _records(place).parent.iterdir()) == ["deployments.json"]


def test_keys_new_with_a_passphrase_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """A passphrase the environment holds as Latin-1 bytes (os.environ gives them as lone
    surrogates, which the identity file's UTF-8 passphrase cannot be): a traceback
    before, now one line naming the variable, and no file."""
    identity = tmp_path / "id.json"
    env = {
        **{k.encode(): v.encode() for k, v in cli_env(tmp_path).items()},
        b"DTP_PASSPHRASE": b"caf\xe9",
    }
    out = subprocess.run(
        [sys.executable, "-m", "dtp", "keys", "new", "--identity", str(identity)],
        cwd=tmp_path,
        env=env,  # type: ignore[arg-type]  # (bytes: what a shell passes)
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    err = out.stderr.decode(errors="replace")
    assert out.returncode == 1, err
    assert "Traceback" not in err
    assert "$DTP_PASSPHRASE cannot be used as a passphrase" in err
    assert len(err.strip().splitlines()) == 1
    assert not identity.exists()


@pytest.mark.parametrize("variable", ["DTP_PASSPHRASE", "MY_SECRET"])
def test_keys_new_refuses_an_empty_passphrase_variable(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
) -> None:
    from dtp.cli import main

    identity = home / "id.json"
    monkeypatch.setenv(variable, "")
    argv = ["keys", "new", "--identity", str(identity)]
    if variable != "DTP_PASSPHRASE":
        argv += ["--passphrase-env", variable]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"${variable} is set but empty" in err
    assert not identity.exists()  # (it was written unencrypted)
    show = ["keys", "show", *argv[2:]]
    # unset, the key is stored unencrypted, as before, unless the variable was named with
    # --passphrase-env: then it is refused too, and only leaving the option
    # out stores it unencrypted
    monkeypatch.delenv(variable)
    if variable != "DTP_PASSPHRASE":
        assert main(argv) == 2
        assert "which is not set" in capsys.readouterr().err
        assert not identity.exists()
        argv = argv[:-2]
    assert main(argv) == 0
    HostIdentity.load(identity)  # no passphrase needed
    # and an empty one is refused for reading too (it cannot be anyone's passphrase)
    monkeypatch.setenv(variable, "")
    assert main(show) == 2
    assert f"${variable} is set but empty" in capsys.readouterr().err


def test_the_daemon_refuses_an_empty_passphrase_variable(tmp_path: Path) -> None:
    # its first start generated the identity and saved it unencrypted
    (tmp_path / "dtp.toml").write_text(
        '[daemon]\nledger = "l.sqlite"\nidentity = "id.json"\nstate_dir = "state"\n'
        '[[service]]\nname = "echo"\nport = 7\nbackends = ["127.0.0.1:9"]\n',
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtp", "daemon", "--config", "dtp.toml"],
        cwd=tmp_path,
        env=child_env(HOME=str(tmp_path), DTP_PASSPHRASE=""),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        # (a daemon that started would run on: the timeout fails the test, not hangs it)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (out, err)
        assert "$DTP_PASSPHRASE is set but empty" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert not (tmp_path / "id.json").exists()
    assert not (tmp_path / "l.sqlite").exists()  # nothing was started


def test_help_names_the_default_identity_and_ledger_files(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # "the DTP identity path" left a newcomer to find where a key lives; the help says it
    with pytest.raises(SystemExit):
        run("balance", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--identity IDENTITY identity file (default $XDG_DATA_HOME/dtp/identity.json," in text
    assert "~/.local/share/dtp/identity.json when it is unset" in text
    assert "local (the embedded one, $XDG_DATA_HOME/dtp/localnet.sqlite)" in text


@pytest.mark.parametrize(
    "option", [("--identity", "k.json"), ("--ledger", "testnet"), ("--sui-package", "0x1")]
)
def test_deploy_takes_no_identity_or_ledger(
    option: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # the sui CLI's active key publishes: an --identity taken and ignored let a user
    # believe another key paid
    with pytest.raises(SystemExit) as refused:
        run("deploy", "--network", "testnet", *option)
    assert refused.value.code == 2
    assert f"unrecognized arguments: {' '.join(option)}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("deploy", "--help")
    shown = " ".join(capsys.readouterr().out.split())
    assert "--identity" not in shown and "--ledger" not in shown
    assert "with the Sui CLI's active address and environment" in shown


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (("keys", "new"), ("--ledger", "testnet")),
        (("keys", "show"), ("--ledger-path", "l.sqlite")),
        (("keys", "show"), ("--sui-package", "0x1")),
        (("localnet", "status"), ("--identity", "k.json")),
        (("localnet", "advance-epoch"), ("--passphrase-env", "SECRET")),
        (("localnet", "faucet"), ("--sui-package", "0x1")),
    ],
)
def test_keys_and_localnet_take_only_the_options_they_use(
    command: tuple[str, ...],
    option: tuple[str, str],
    data_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the keys commands read no ledger; the localnet ones act on a LocalLedger file (its
    # package its own), and only faucet reads the identity: one taken and ignored let a
    # user believe the command acted on that ledger or key
    with pytest.raises(SystemExit) as refused:
        run(*command, *option)
    assert refused.value.code == 2
    assert f"unrecognized arguments: {' '.join(option)}" in capsys.readouterr().err
    assert not any(data_home.rglob("*"))  # (no identity, no ledger made)
