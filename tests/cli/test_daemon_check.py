"""``dtp daemon --check``: a config tested as ``nginx -t`` tests one -- every problem
listed at once, exit 0 only when there is none, 2 for a file with an error -- and
nothing created or spent, on a LocalLedger file and on the Sui node stand-in."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.daemon.tunnel_setup import Setup
from tests.support.cli_runs import cli_env, run_dtp
from tests.support.daemon_procs import Proc, backend, daemon
from tests.support.paths import ROOT

SUI = 1_000_000_000


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[int]:
    proc = backend("echo")
    try:
        yield int(proc.info["port"])
    finally:
        proc.kill()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp: Path, ledger: str, *backends: int, extra: str = "", more: str = "") -> Path:
    listed = ", ".join(f'"127.0.0.1:{b}"' for b in backends)
    path = tmp / "dtp.toml"
    path.write_text(
        f"""[daemon]
{ledger}
identity = "host.key"
state_dir = "state"
connection_idle_timeout = 60
{extra}

[[service]]
name = "web"
port = 80
backends = [{listed}]
connect_timeout = 1.0
{more}"""
    )
    return path


def _check(config: Path, **env: str) -> tuple[int, str, str]:
    # (this checkout's dtp, wherever the installed one is)
    run_env = {**cli_env(config.parent), "PYTHONPATH": str(ROOT), **env}
    done = run_dtp("daemon", "--check", "--config", str(config), cwd=config.parent, env=run_env)
    return done.returncode, done.stdout, done.stderr


def test_a_good_config_passes_and_nothing_is_created(tmp_path: Path, echo: int) -> None:
    LocalLedger(tmp_path / "ledger.sqlite").close()
    HostIdentity.generate().save(tmp_path / "host.key")
    config = _config(tmp_path, 'ledger = "ledger.sqlite"', echo)
    code, out, err = _check(config)
    assert code == 0, out + err
    assert out.splitlines()[-1].endswith("dtp.toml: test is successful")
    assert "PROBLEM" not in out
    assert f"  ok       service web backend 127.0.0.1:{echo}: answers" in out
    assert "  ok       listen: 127.0.0.1:0 can be bound" in out
    assert "ledger file" in out and "answers" in out
    assert not (tmp_path / "state").exists()


def test_a_first_start_is_described_not_refused(tmp_path: Path, echo: int) -> None:
    """No identity, ledger file or state directory yet: notes, exit 0, none created."""
    config = _config(tmp_path, 'ledger = "ledger.sqlite"', echo)
    code, out, _ = _check(config)
    assert code == 0, out
    for what in ("state_dir", "identity", "ledger"):
        assert f"  note     {what}: " in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtp.toml"]


def test_every_problem_is_listed(tmp_path: Path, echo: int) -> None:
    LocalLedger(tmp_path / "ledger.sqlite").close()
    HostIdentity.generate().save(tmp_path / "host.key", "secret")
    down = _closed_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        config = _config(
            tmp_path,
            'ledger = "ledger.sqlite"',
            echo,
            down,
            extra=f'metrics_listen = "127.0.0.1:{busy}"',
            more=f'\n[[forward]]\nname = "out"\nlisten = "127.0.0.1:0"\n'
            f'target = "dtp://0x{"3" * 64}:80"\n',
        )
        code, out, err = _check(config)
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("  PROBLEM")]
    assert len(problems) == 4, out
    assert problems[0].startswith("  PROBLEM  identity: ")
    assert problems[0].endswith("(set $DTP_PASSPHRASE)")
    assert problems[1].startswith(f"  PROBLEM  forward out: target host 0x{'3' * 64}: ")
    assert problems[2] == (
        f"  PROBLEM  metrics_listen: cannot listen on 127.0.0.1:{busy}: Address already in use"
    )
    assert problems[3] == (
        f"  PROBLEM  service web backend 127.0.0.1:{down}: cannot connect: Connection refused"
    )
    assert err.splitlines()[-1].endswith("dtp.toml: test failed: 4 problems")
    # with the passphrase, the identity loads: three problems left
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", busy))
        taken.listen()
        code, out, err = _check(config, DTP_PASSPHRASE="secret")
    assert code == 1
    assert "  ok       identity: " in out
    assert err.splitlines()[-1].endswith("test failed: 3 problems")


def test_a_file_with_an_error_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "dtp.toml"
    config.write_text('[daemon]\nledger = "l.sqlite"\nidentity = "k"\nlisten = "nowhere"\n')
    code, out, err = _check(config)
    assert code == 2
    assert out == ""
    assert 'dtp.toml:4: daemon.listen: expected "host:port"' in err
    assert err.splitlines()[-1].endswith("dtp.toml: test failed")


def test_a_running_daemon_keeps_its_addresses(tmp_path: Path, echo: int) -> None:
    """Checked while the daemon runs (before a reload): its listen addresses are its
    own, not problems."""
    LocalLedger(tmp_path / "ledger.sqlite").close()
    config = _config(
        tmp_path, f'ledger = "ledger.sqlite"\nfaucet = {SUI}', echo, extra='listen = "127.0.0.1:0"'
    )
    proc: Proc = daemon(config)
    try:
        listen = proc.info["endpoint"]
        config.write_text(
            config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "{listen}"')
        )
        code, out, _ = _check(config)
        assert code == 0, out
        assert f"in use by a running daemon (pid {proc.info['pid']})" in out
        assert "can be bound" not in out
    finally:
        proc.kill()


@contextlib.contextmanager
def _node() -> Iterator[SuiNodeStandIn]:
    with SuiNodeStandIn() as node:
        yield node


def test_on_sui_the_gas_and_the_node_are_checked(tmp_path: Path, echo: int) -> None:
    with _node() as node:
        identity = HostIdentity.generate()
        identity.save(tmp_path / "host.key")
        spec = f'ledger = "localnet@{node.url}"\nsui_package = "{node.package_id}"'
        config = _config(tmp_path, spec, echo)
        code, out, _ = _check(config)
        assert code == 1
        assert "  PROBLEM  gas: " in out and "less than one transaction's budget" in out
        node.faucet(identity.sui_address, 10 * SUI)
        code, out, _ = _check(config)
        assert code == 0, out
        assert "  ok       gas: 10,000,000,000 MIST" in out
        assert "Sui localnet" in out
    # the node gone: the ledger cannot be read
    code, out, _ = _check(config, DTP_SUI_TIMEOUT="2", DTP_SUI_RETRIES="0")
    assert code == 1
    assert "  PROBLEM  ledger: " in out and "cannot be read" in out


def test_the_setup_of_the_daemon_tests_passes_its_own_check(tmp_path: Path, echo: int) -> None:
    """(The daemon tests' configs are what users write: they pass.)"""
    setup = Setup(tmp_path)
    LocalLedger(setup.ledger_path).close()
    config = setup.write_daemon(
        f'[[service]]\nname = "s"\nport = 1\nbackends = ["127.0.0.1:{echo}"]\n'
    )
    code, out, _ = _check(config)
    assert code == 0, out


def test_what_a_first_start_cannot_create_under_a_file_is_a_problem(
    tmp_path: Path, echo: int
) -> None:
    # a file where a folder must be: the start fails with "Not a directory", so the
    # check says so instead of "created at the first start"
    (tmp_path / "afile").write_text("")
    config = _config(tmp_path, 'ledger = "afile/ledger.sqlite"', echo)
    text = config.read_text()
    text = text.replace('state_dir = "state"', 'state_dir = "afile/state"')
    config.write_text(text.replace('identity = "host.key"', 'identity = "afile/host.key"'))
    code, out, err = _check(config)
    assert code == 1, out + err
    for what, name in (
        ("state_dir", "state"),
        ("identity", "host.key"),
        ("ledger", "ledger.sqlite"),
    ):
        blocker = tmp_path / "afile"
        assert (
            f"  PROBLEM  {what}: {blocker / name} cannot be created: {blocker} is not a directory"
        ) in out
    assert err.splitlines()[-1].endswith("test failed: 3 problems")
