"""Config values that validation refuses with a clear error, never a traceback of
`dtp daemon`: a NUL in a path or a host, ``~user`` for an unknown user, arrays nested
too deep for tomllib, a half-bracketed IPv6 host.

Config edge cases of the services daemon met only once it runs: a forward looping
through this very daemon's service."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._config import Backend, parse_config
from dtp.errors import DaemonConfigError
from dtp.identity.keys import HostIdentity
from tests.support.daemon_procs import SUI, daemon, run_daemon, wait_until
from tests.support.ports import free_port

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


def test_forward_through_its_own_service_is_refused(tmp_path: Path) -> None:
    """A forward to a service of this daemon whose backend is the forward's own
    listener: each tunnel opened another through itself, without end (the old daemon
    went from 20 to thousands of descriptors within seconds of one connection). It is
    a config error at start (exit 2) and a refused reload."""
    HostIdentity.generate().save(tmp_path / "provider.key")
    port = free_port()
    config = tmp_path / "daemon.toml"
    head = f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "state"
faucet = {SUI}

[[service]]
name = "web"
port = 80
backends = ["localhost:{port}"]
health_interval = 30
"""
    config.write_text(head)
    d = daemon(config)
    try:
        host_id = d.info["host_id"]
        config.write_text(
            head
            + f"""
[[forward]]
name = "loop"
listen = "127.0.0.1:{port}"
target = "dtp://{host_id}:80"
"""
        )
        d.send(signal.SIGHUP)
        wait_until(lambda: "reload refused" in d.log(), what="the reload refused")
        assert "forward[0].target" in d.log() and "a loop" in d.log()
        with socket.socket() as probe:  # no forward was started
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        assert d.stop() == 0
    finally:
        d.kill()
    done = run_daemon(config)
    assert done.returncode == 2, done.stderr
    assert "forward[0].target" in done.stderr and "a loop" in done.stderr
    assert "Traceback" not in done.stderr


CONFIG = """\
[daemon]
ledger = "ledger"
identity = "host.key"
{daemon}

[[service]]
name = "web"
port = 80
backends = [{backend}]
{service}
"""


def parse(daemon: str = "", service: str = "", backend: str = '"127.0.0.1:8080"') -> Any:
    text = CONFIG.format(daemon=daemon, service=service, backend=backend)
    return parse_config(text, Path("/etc/dtp/dtp.toml"))


@pytest.mark.parametrize(
    ("daemon", "service", "where"),
    [
        ("drain_timeout = 1" + "0" * 400, "", "dtp.toml:4: daemon.drain_timeout"),
        ("", "health_interval = 1" + "0" * 400, "dtp.toml:10: service[0].health_interval"),
        ("", "loss_allowance = 1" + "0" * 400, "dtp.toml:10: service[0].loss_allowance"),
    ],
)
def test_config_integer_beyond_the_float_range_is_a_config_error(
    daemon: str, service: str, where: str
) -> None:
    with pytest.raises(DaemonConfigError, match=re.escape(where)) as info:
        parse(daemon, service)
    assert len(str(info.value)) < 300  # the value is cut short in the message


def test_config_integer_literal_past_python_digit_limit_is_a_config_error() -> None:
    with pytest.raises(DaemonConfigError, match=r"dtp\.toml"):
        parse("faucet = 1" + "0" * 5000)


def test_config_port_of_thousands_of_digits_is_a_config_error() -> None:
    with pytest.raises(DaemonConfigError, match=r"dtp.toml:4: daemon.listen: port 9+\.\.\."):
        parse('listen = "127.0.0.1:' + "9" * 5000 + '"')
    # leading zeros as before
    assert parse('listen = "127.0.0.1:' + "0" * 5000 + '80"').daemon.listen.port == 80


@pytest.mark.parametrize(
    "backend", ['" 127.0.0.1:8080"', '"127.0.0.1 :8080"', '"web 1:8080"', '"web\\t1:8080"']
)
def test_config_host_with_whitespace_is_refused(backend: str) -> None:
    with pytest.raises(DaemonConfigError, match=r"service\[0\]\.backends: .*no valid host name"):
        parse(backend=backend)


@pytest.mark.parametrize("listen", ["[localhost]:80", "[[::1]]:80", "[127.0.0.1]:80", "[]:80"])
def test_config_brackets_hold_an_ipv6_address_alone(listen: str) -> None:
    with pytest.raises(DaemonConfigError, match=r"daemon\.listen: expected an IPv6 address"):
        parse(f'listen = "{listen}"')
    # (as before)
    config = parse('listen = "[::1]:7700"', backend='"[2001:db8::1]:8080"')
    assert config.daemon.listen == Backend("::1", 7700)
    assert config.services[0].backends == (Backend("2001:db8::1", 8080),)


def test_config_public_endpoint_port_zero_is_refused() -> None:
    with pytest.raises(DaemonConfigError, match=r"daemon\.public_endpoint: port 0"):
        parse('public_endpoint = "dtp.example.com:0"')
    # listening on port 0 (any free port) stays allowed
    assert parse('listen = "127.0.0.1:0"').daemon.listen.port == 0
    assert parse('public_endpoint = "dtp.example.com:7700"').daemon.public_endpoint == (
        "dtp.example.com:7700"
    )
