"""The services daemon: signals while it starts.

A SIGTERM (or SIGINT) that reached ``dtp daemon`` before its ready line took Python's
default action: the process died on the spot (exit -15, 130 for SIGINT), the status
file never written, nothing it had started stopped. SIGHUP killed it the same way (-1).
Now a stop ends the start at its next step, stops what was started and exits 0; a
SIGHUP while starting is a reload once ready. Each case runs a real daemon process and
holds the ledger's write lock to catch it in the middle of its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.daemon._config import load_config
from dtp.daemon._runner import Daemon
from dtp.daemon._state import read_status
from dtp.errors import DaemonConfigError, HostConfigError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import FirewallMode
from dtp.ledger.local import LocalLedger
from tests.daemon.starting_daemons import ALLOWED, stop_daemon_script, write_slow_config
from tests.support.daemon_procs import ENV, ROOT, SUI, wait_until

"""Firewall entries in the slow config: one ledger transaction each at start."""


class Starting:
    """A ``dtp daemon`` process watched from its first moment (no ready line awaited)."""

    def __init__(self, config: Path) -> None:
        self.log_path = config.with_suffix(".log")
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=ENV,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float = 30) -> tuple[int, str]:
        """The exit status and what the process wrote on stdout."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        return self.proc.wait(timeout), out

    def ready(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"no ready line:\n{self.log()}"
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def procs() -> Iterator[list[Starting]]:
    started: list[Starting] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.close()


@contextlib.contextmanager
def ledger_held(path: Path) -> Iterator[None]:
    """Hold the ledger file's write lock (as another process's long transaction would):
    the daemon's next ledger write waits until the block ends."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def allowed_on_ledger(tmp: Path) -> int:
    host_id = json.loads((tmp / "state" / "host.json").read_text())["host_id"]
    ledger = LocalLedger(tmp / "ledger.sqlite")
    try:
        return ledger.get_host(host_id).firewall.allow_count
    finally:
        ledger.close()


def catch_in_sync(tmp: Path, proc: Starting, sig: int) -> None:
    """Send ``sig`` while the daemon publishes its firewall: its Host exists (host.json)
    and its next ledger write waits on a lock held meanwhile."""
    wait_until(lambda: (tmp / "state" / "host.json").exists(), 30, "the host to be created")
    with ledger_held(tmp / "ledger.sqlite"):
        proc.proc.send_signal(sig)
        time.sleep(0.3)  # the signal is handled while the ledger is still held
    assert proc.proc.poll() is None or proc.proc.returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_while_publishing_the_host(tmp_path: Path, procs: list[Starting], sig: int) -> None:
    """A stop in the middle of the ledger set-up: the sync ends at its next transaction
    (not after the thousand), the listener and health checks started so far are
    stopped, the status file says stopped, exit 0. It was exit -15 (SIGINT: 130) with
    no status written. (The daemon installs its own SIGINT handler, so an ignored
    SIGINT inherited from a CI runner does not matter here.)"""
    config = write_slow_config(tmp_path)
    proc = Starting(config)
    procs.append(proc)
    catch_in_sync(tmp_path, proc, sig)
    status, out = proc.wait()
    log = proc.log()
    assert status == 0, log
    assert out == ""  # no ready line: it never was
    assert "stop requested while starting" in log and '"stopped"' in log, log
    assert allowed_on_ledger(tmp_path) < ALLOWED  # stopped there, not at the end
    saved = read_status(tmp_path / "state")
    assert saved is not None and saved.get("stopped"), saved
    assert saved["pid"] == proc.proc.pid  # this run's, not the last one's

    # the state directory is free, and the next start completes the set-up
    again = Starting(config)
    procs.append(again)
    ready = again.ready()
    assert ready["host_id"] == json.loads((tmp_path / "state" / "host.json").read_text())["host_id"]
    assert allowed_on_ledger(tmp_path) == ALLOWED
    again.proc.send_signal(signal.SIGTERM)
    assert again.wait()[0] == 0


def test_stop_while_opening_the_ledger(tmp_path: Path, procs: list[Starting]) -> None:
    """A SIGTERM while the daemon waits for the ledger file (before its event loop
    runs): once the ledger opens it stops at once, creating no Host, and exits 0."""
    config = write_slow_config(tmp_path, entries=1)
    with ledger_held(tmp_path / "ledger.sqlite"):
        proc = Starting(config)
        procs.append(proc)
        lock = tmp_path / "state" / "daemon.lock"  # taken before the ledger is opened
        wait_until(
            lambda: lock.exists() and lock.read_text().strip() == str(proc.proc.pid),
            30,
            "the state directory's lock",
        )
        time.sleep(0.2)
        proc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.proc.poll() is None  # waiting for the ledger: not killed
    status, out = proc.wait()
    log = proc.log()
    assert status == 0 and out == "", log
    assert "stop requested while starting" in log and '"stopped"' in log, log
    assert not (tmp_path / "state" / "host.json").exists()


def test_sighup_while_starting_reloads_once_ready(tmp_path: Path, procs: list[Starting]) -> None:
    """A SIGHUP does not kill a starting daemon (its default action): the start goes
    on and the reload happens once it is ready."""
    config = write_slow_config(tmp_path)
    proc = Starting(config)
    procs.append(proc)
    catch_in_sync(tmp_path, proc, signal.SIGHUP)
    proc.ready()
    wait_until(lambda: '"reloaded"' in proc.log(), 10, "the deferred reload")
    assert "reload deferred: the daemon is starting" in proc.log()
    proc.proc.send_signal(signal.SIGTERM)
    status, _ = proc.wait()
    assert status == 0, proc.log()


# -- config errors the ledger would refuse: named by their key before the start -------


def _provider_config(tmp: Path, extra_daemon: str = "", extra: str = "") -> Path:
    if not (tmp / "provider.key").exists():
        HostIdentity.generate().save(tmp / "provider.key")
    config = tmp / "daemon.toml"
    config.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "state"
{extra_daemon}

[[service]]
name = "svc"
port = 7000
backends = ["127.0.0.1:9"]
health_interval = 30
{extra}"""
    )
    return config


def test_firewall_list_over_the_ledger_cap_is_a_config_error(tmp_path: Path) -> None:
    """1025 allowed addresses: the ledger takes 1024 per list. A config error (exit 2,
    its line and key) before any transaction, not the ledger's "firewall list already
    holds its maximum" after 1024 of them, nor a reload failing half-way. A repeated
    address counts once."""
    config = write_slow_config(tmp_path, entries=0)
    text = config.read_text()
    many = ", ".join(f'"0x{i:064x}"' for i in range(1, 1026))
    config.write_text(text.replace("allow = []", f"allow = [{many}]"))
    with pytest.raises(DaemonConfigError, match=r"daemon\.toml:\d+: firewall\.allow: holds 1025"):
        load_config(config)
    same = ", ".join(['"0x1"'] * 2000)
    config.write_text(text.replace("allow = []", f"allow = [{same}]"))
    assert load_config(config).firewall.allow == (f"0x{1:064x}",)
    # the refused start touched nothing: no Host, no state
    config.write_text(text.replace("allow = []", f"allow = [{many}]"))
    done = run(config)
    assert done.returncode == 2, done.stderr
    assert "firewall.allow: holds 1025 addresses" in done.stderr
    assert not (tmp_path / "state" / "host.json").exists()


def test_public_endpoint_too_long_is_a_config_error(tmp_path: Path) -> None:
    """A public_endpoint over the ledger's 256 bytes: exit 2 naming the key, before the
    listener is up (not the ledger's "Too many endpoints or an endpoint is too long")."""
    config = _provider_config(tmp_path, f'public_endpoint = "{"h" * 260}:80"')
    done = run(config)
    assert done.returncode == 2, done.stderr
    assert re.search(r"daemon\.toml:\d+: daemon\.public_endpoint: is 263 bytes", done.stderr)


def test_host_not_on_the_ledger_names_its_source(tmp_path: Path) -> None:
    """A host_id (config, or host.json) the ledger does not hold: the error names where
    the ID came from, not only the ledger's bare "No Host with ID … exists"."""
    missing = f"0x{'2' * 64}"
    config = _provider_config(tmp_path, f'host_id = "{missing}"')
    done = run(config)
    assert done.returncode == 2, done.stderr
    assert re.search(r"daemon\.toml:\d+: daemon\.host_id: no Host 0x2+ on the ledger", done.stderr)

    config = _provider_config(tmp_path)
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "host.json").write_text(json.dumps({"host_id": missing}))
    done = run(config)
    assert done.returncode == 1, done.stderr
    assert "host.json names Host 0x2222" in done.stderr
    assert "remove the record to create a new Host" in done.stderr


def run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- reload refused by the ledger part-way ---------------------------------------------


def test_reload_refused_by_the_ledger_part_way_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload whose ledger sync fails in the middle (here the ledger refuses one
    allow): the daemon keeps its old settings and publishes them again, so that the
    ledger does not keep the transactions before the refused one (a new service that
    clients would pay into, part of an allowlist). The ledger's refusal is the one edge
    faked here."""
    config = _provider_config(tmp_path, f"faucet = {SUI}")
    first, second = f"0x{1:064x}", f"0x{2:064x}"
    base = config.read_text()
    changed = base.replace(
        "[[service]]",
        f'[firewall]\nmode = "allowlist"\nallow = ["{first}", "{second}"]\n\n[[service]]',
    ) + ('\n[[service]]\nname = "more"\nport = 7001\nbackends = ["127.0.0.1:9"]\n')

    def refuse_second(self: LocalLedger, identity: HostIdentity, host_id: str, client: str) -> None:
        if client == second:
            raise HostConfigError("refused for the test")
        real_allow(self, identity, host_id, client)

    real_allow = LocalLedger.allow

    async def scenario() -> None:
        daemon = Daemon(load_config(config))
        try:
            await daemon.start()
            assert daemon.host_id is not None
            config.write_text(changed)
            monkeypatch.setattr(LocalLedger, "allow", refuse_second)
            with caplog.at_level(logging.INFO, logger="dtp.daemon"):
                await daemon.reload()
            host = daemon.ledger.get_host(daemon.host_id)
            assert set(host.services) == {7000}
            assert host.firewall.allow_count == 0
            assert host.firewall.mode == FirewallMode.ALLOW_ALL
            assert daemon.services is not None and set(daemon.services.services) == {7000}
            assert "reload refused by the ledger" in caplog.text
            assert "the settings in force are published again" in caplog.text
        finally:
            await daemon.drain()

    asyncio.run(scenario())


# -- dtp status ---------------------------------------------------------------------------


def test_status_with_a_config_broken_elsewhere(tmp_path: Path, procs: list[Starting]) -> None:
    """`dtp status --config` shows the status while the file holds an error unrelated
    to the state directory (the edit a running daemon has just refused at its reload),
    the config's error on stderr; a file that does not say where the state is fails."""
    config = _provider_config(tmp_path, f"faucet = {SUI}\ndrain_timeout = 1")
    proc = Starting(config)
    procs.append(proc)
    proc.ready()
    good = config.read_text()
    config.write_text(good.replace("port = 7000", "port = 70000"))
    proc.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in proc.log(), 30, "the refused reload")

    shown = status(config)
    assert shown.returncode == 0, shown.stderr
    assert "running (pid" in shown.stdout and "svc" in shown.stdout
    assert "service[0].port" in shown.stderr
    as_json = status(config, "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["running"] is True

    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait()[0] == 0
    config.write_text(good.replace('state_dir = "state"', "state_dir = 5"))
    refused = status(config)
    assert refused.returncode == 2 and "daemon.state_dir" in refused.stderr
    config.write_text(good + "[[service\n")
    refused = status(config)
    assert refused.returncode == 2 and "TOML syntax error" in refused.stderr


def status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtp.cli", "status", "--config", str(config), *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_signals_until_the_process_ends_keep_status_0(
    tmp_path: Path, procs: list[Starting]
) -> None:
    """A stop during start, then SIGHUP and SIGTERM again and again (a supervisor
    repeating itself) until the process is gone: every one lands while the daemon
    stops or exits, and none may take its default action. The handlers were put back
    to the defaults before the interpreter's own shutdown, and one such SIGHUP ended
    the process with -1 after "stopped" was logged."""
    config = write_slow_config(tmp_path)
    proc = Starting(config)
    procs.append(proc)
    catch_in_sync(tmp_path, proc, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while proc.proc.poll() is None and time.monotonic() < deadline:
        for sig in (signal.SIGHUP, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                proc.proc.send_signal(sig)
        time.sleep(0.002)
    status, _ = proc.wait()
    assert status == 0, proc.log()
    assert '"stopped"' in proc.log()


SIGNAL_AS_THE_LOOP_CLOSES = """
import os, signal, sys

real_set_wakeup_fd = signal.set_wakeup_fd


def set_wakeup_fd(fd, *args, **kwargs):
    # -1: the closing loop has just removed its last signal handler (the default
    # actions are back): a supervisor's SIGTERM lands right here
    old = real_set_wakeup_fd(fd, *args, **kwargs)
    if fd == -1:
        os.kill(os.getpid(), signal.SIGTERM)
    return old


signal.set_wakeup_fd = set_wakeup_fd
from dtp.cli import main

sys.exit(main(["daemon", "--config", sys.argv[1]]))
"""


def test_the_daemon_loops_workers_block_the_stop_signals() -> None:
    """The daemon loop's executor workers block the stop signals from their start:
    the main thread blocks them across the loop's close, but a worker just joined can
    outlive its join for a moment, and a SIGTERM it took while the default action was
    back would end the process (-15 after "stopping before ready")."""
    from dtp.daemon._runner import _signal_free_executor
    from dtp.daemon._signals import CAUGHT_SIGNALS

    with _signal_free_executor() as pool:
        blocked = pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result(30)
    assert set(CAUGHT_SIGNALS) <= blocked
    # (the main thread's own mask is left as it was)
    assert not set(CAUGHT_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_sigterm_as_the_loop_closes_keeps_status_0(tmp_path: Path) -> None:
    """A SIGTERM sent just as the event loop closes (placed there on purpose) leaves
    exit status 0: the loop's close puts SIGTERM's default action back, and the
    daemon's own handler must be in place again before a SIGTERM can end the process
    (exit -15 after "stopped")."""
    stop_daemon_script(tmp_path, SIGNAL_AS_THE_LOOP_CLOSES)
