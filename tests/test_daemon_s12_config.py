"""Config values that used to escape validation and crash `dtp daemon` with a traceback:
a NUL in a path or a host, ``~user`` for an unknown user, arrays nested too deep for
tomllib, a half-bracketed IPv6 host."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.daemon.config import parse_config
from dtp.errors import DaemonConfigError
from tests.daemon_procs import run_daemon

HEAD = '[daemon]\nledger = "l.sqlite"\nidentity = "k.key"\n'
SVC = '\n[[service]]\nname = "a"\nport = 80\nbackends = ["127.0.0.1:8080"]\n'


def error_of(text: str) -> str:
    with pytest.raises(DaemonConfigError) as info:
        parse_config(text, Path("dtp.toml"))
    return str(info.value)


@pytest.mark.parametrize("key", ["ledger", "identity", "state_dir"])
def test_a_nul_in_a_path_is_a_config_error(key: str) -> None:
    head = "".join(line for line in HEAD.splitlines(keepends=True) if not line.startswith(key))
    message = error_of(f'{head}{key} = "a\\u0000b"\n{SVC}')
    line = head.count("\n") + 1
    assert message.startswith(f"dtp.toml:{line}: daemon.{key}: ")
    assert "NUL" in message


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ('listen = "a\\u0000b:80"', "dtp.toml:4: daemon.listen"),
        ('public_endpoint = "a\\u0000:80"', "dtp.toml:4: daemon.public_endpoint"),
        ('listen = "[::1:80"', "dtp.toml:4: daemon.listen"),
        ('listen = "::1]:80"', "dtp.toml:4: daemon.listen"),
    ],
)
def test_a_bad_host_is_a_config_error(line: str, where: str) -> None:
    assert error_of(f"{HEAD}{line}\n{SVC}").startswith(f'{where}: expected "host:port"')


def test_a_nul_in_a_backend_is_a_config_error() -> None:
    text = HEAD + SVC.replace("127.0.0.1:8080", "127.0.0\\u0000.1:8080")
    assert error_of(text).startswith('dtp.toml:8: service[0].backends: expected "host:port"')


def test_bracketed_ipv6_still_parses() -> None:
    config = parse_config(f'{HEAD}listen = "[::1]:7700"\n{SVC}', Path("dtp.toml"))
    assert (config.daemon.listen.host, config.daemon.listen.port) == ("::1", 7700)


def test_home_of_an_unknown_user_is_a_config_error() -> None:
    head = HEAD.replace('"l.sqlite"', '"~no_such_user_s12qa/l.sqlite"')
    message = error_of(head + SVC)
    assert message.startswith("dtp.toml:2: daemon.ledger: cannot expand")


def test_values_nested_too_deep_are_a_syntax_error() -> None:
    text = HEAD + SVC + "kind = " + "[" * 5000 + "]" * 5000 + "\n"
    assert error_of(text) == "dtp.toml: TOML syntax error: values nested too deep"


def test_dtp_daemon_exits_2_with_one_line(tmp_path: Path) -> None:
    """End to end: the NUL reached Path.mkdir() and tracebacked with exit status 1."""
    config = tmp_path / "dtp.toml"
    config.write_text(f'{HEAD}state_dir = "s\\u0000"\n{SVC}')
    result = run_daemon(config, timeout=30, HOME=str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"dtp daemon: {config}:4: daemon.state_dir: a path cannot hold a NUL character, "
        "got 's\\x00'"
    ]
    assert list(tmp_path.iterdir()) == [config]


def test_credit_datagrams_must_be_positive() -> None:
    """0 was taken, and a paid UDP service then relayed nothing at all: a receipt only
    covers datagrams already relayed, and none could be relayed ahead of one."""
    text = HEAD + SVC + 'protocol = "udp"\ncredit_datagrams = 0\n'
    assert error_of(text) == (
        f"dtp.toml:10: service[0].credit_datagrams: expected an integer in 1..{2**64 - 1}, got 0"
    )
    config = parse_config(text.replace("= 0\n", "= 1\n"), Path("dtp.toml"))
    assert config.services[0].credit_datagrams == 1
