"""The services daemon: load spreading, early signals, config errors.

* Round robin with a backend down: the pool rotated over all its backends and then
  skipped the ones down, so the healthy backend after a dead one took the dead one's
  turns too (3 backends, the middle one down: 200 of 300 tunnels to the third, 100 to
  the first). The healthy ones now rotate among themselves.
* A SIGTERM or SIGINT in the first few tenths of a second of ``dtp daemon`` killed it
  (exit 143, or 130 with a KeyboardInterrupt traceback): the handlers were installed
  after the runner's imports. ``dtp daemon`` now installs them before those imports,
  so a stop while it loads exits 0 having created nothing.
* A service ``kind`` longer than the ledger takes (16381 bytes) passed validation, and
  the start failed (exit 1) with the ledger's words, naming no file, line or key.
* An unknown dotted key (``health.interval = 2``) was reported at the line of its
  table's header, not its own.
* ``dtp --help`` said the daemon exposes TCP services; it does UDP ones too.

The signal cases run real ``dtp daemon`` processes; the rest are in-process.

The daemon's operational parts: the balancer's health marks,
``dtp status``'s liveness check, the status file's writes, the text logs and the loop's
signals. Each test fails on the code before it."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dtp.daemon._state as state_module
from dtp.daemon._balancer import BackendPool
from dtp.daemon._config import Backend, parse_config
from dtp.daemon._logs import setup_logging
from dtp.daemon._signals import CAUGHT_SIGNALS, LoopSignals
from dtp.daemon._state import STATUS_FILE, StatusBook, process_identity
from dtp.daemon._status import daemon_running
from dtp.errors import DaemonConfigError, DTPError, TunnelError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import MAX_PURE_BYTES, Sla
from dtp.ledger.local import LocalLedger
from tests.support.daemon_procs import ENV, ROOT, run_daemon
from tests.support.ports import free_port
from tests.support.tcp_blackhole import unanswered_address

# -- F5: round robin among the healthy backends -------------------------------------------

A, B, C = (Backend("127.0.0.1", port) for port in (8001, 8002, 8003))


@pytest.mark.parametrize("down", [A, B, C], ids=["first", "middle", "last"])
def test_round_robin_shares_evenly_when_a_backend_is_down(down: Backend) -> None:
    """Whichever of three backends is down, the other two take turns (150 each of 300
    first choices; before, the one after the dead one took 200), and the one down is
    still tried, last, for failover."""
    pool = BackendPool("web", (A, B, C), 2.0, 2.0)
    pool.healthy[down] = False
    orders = [pool.order() for _ in range(300)]
    firsts = collections.Counter(order[0] for order in orders)
    assert firsts == {b: 150 for b in (A, B, C) if b != down}
    assert all(order[-1] == down and sorted(order, key=str) == [A, B, C] for order in orders)


def test_round_robin_with_every_backend_up_or_down_visits_each_in_turn() -> None:
    """All up or all down, every backend comes first once per round, as before."""
    pool = BackendPool("web", (A, B, C), 2.0, 2.0)
    assert [pool.order()[0] for _ in range(6)] == [A, B, C, A, B, C]
    pool.healthy.update(dict.fromkeys((A, B, C), False))
    assert [pool.order()[0] for _ in range(3)] == [A, B, C]


class _Closing(asyncio.Protocol):
    """A tunnel's backend side closed as soon as it connects: only the choice counts."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def test_failover_past_a_dead_backend_keeps_the_live_ones_even() -> None:
    """Real connects: the middle of three backends refuses (nothing listens on its port)
    and is marked down by the first tunnel that tries it; the 60 tunnels then split
    between the two live backends within one (before: 40 and 20)."""

    def on_client(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def main() -> tuple[collections.Counter[int], int]:
        servers = [await asyncio.start_server(on_client, "127.0.0.1", 0) for _ in range(2)]
        first, third = (server.sockets[0].getsockname()[1] for server in servers)
        dead = Backend("127.0.0.1", free_port())
        pool = BackendPool(
            "web", (Backend("127.0.0.1", first), dead, Backend("127.0.0.1", third)), 30.0, 2.0
        )
        used: collections.Counter[int] = collections.Counter()
        try:
            for _ in range(60):
                _, backend = await pool.connect(_Closing)
                used[backend.port] += 1
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()
        assert not pool.healthy[dead]
        return used, dead.port

    used, dead = asyncio.run(main())
    assert dead not in used and len(used) == 2, used
    assert sorted(used.values()) in ([29, 31], [30, 30]), used


# -- F9: SIGTERM / SIGINT while ``dtp daemon`` loads ---------------------------------------

#: Run as ``python -c``: ``dtp daemon`` (through ``dtp.cli.main``, as the ``dtp`` script
#: runs it) sending itself ``argv[1]`` when it first imports the module ``argv[2]``:
#: the moment a supervisor's early signal lands, without racing the clock for it.
_SIGNAL_AT_IMPORT = """
import os, signal, sys
from importlib.abc import MetaPathFinder

SIG, TRIGGER, CONFIG = signal.Signals[sys.argv[1]], sys.argv[2], sys.argv[3]

class SignalAtImport(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == TRIGGER:
            sys.meta_path.remove(self)
            print("test: signal sent", file=sys.stderr, flush=True)
            os.kill(os.getpid(), SIG)
        return None  # the import goes on as usual

sys.meta_path.insert(0, SignalAtImport())
from dtp.cli import main
sys.exit(main(["daemon", "--config", CONFIG]))
"""


def _write_daemon_config(tmp: Path) -> Path:
    """A provider whose start would create its identity, ledger and state directory."""
    config = tmp / "dtp.toml"
    config.write_text(
        """[daemon]
ledger = "ledger.sqlite"
identity = "host.key"
state_dir = "state"
faucet = 1_000_000_000
drain_timeout = 1

[[service]]
name = "svc"
port = 7000
backends = ["127.0.0.1:9"]
health_interval = 30
"""
    )
    return config


@pytest.mark.parametrize("trigger", ["dtp.cli._ledger", "dtp.daemon._runner", "dtp.ledger.local"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stop_while_the_daemon_loads_exits_0_creating_nothing(
    tmp_path: Path, sig: str, trigger: str
) -> None:
    """A stop that arrives while ``dtp`` builds its parser (``dtp.cli._ledger``) or
    ``dtp daemon`` imports the runner (where the first few tenths of a second go) ends
    it with status 0, no ready line, no traceback, and no file created (before: SIGTERM
    killed it, 143; SIGINT exited 130)."""
    config = _write_daemon_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_AT_IMPORT, sig, trigger, str(config)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "test: signal sent" in done.stderr, done.stderr  # the trigger was reached
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout == ""  # no ready line
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert f'"msg": "stopped before start", "signal": "{sig}"' in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtp.toml"]


def _handlers_installed(pid: int) -> bool:
    """Whether the process catches SIGHUP: the last of the three signals the daemon's
    handlers take (Python itself catches only SIGINT; SIGTERM and SIGHUP are left to
    their default actions until ``dtp daemon`` installs its handlers)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone already
        return True
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGHUP - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4])
def test_stop_at_any_moment_after_the_handlers_exits_0(tmp_path: Path, delay: float) -> None:
    """A real ``python -m dtp.cli daemon`` stopped ``delay`` seconds after its handlers are
    in place (watched in /proc): whatever the start reached by then, the exit status is
    0 with no traceback, and what was created is cleaned up (the status written, the
    state directory's lock released). Nothing here depends on how fast the start is."""
    config = _write_daemon_config(tmp_path)
    sig = signal.SIGTERM if int(delay * 100) % 2 == 0 else signal.SIGINT
    with open(tmp_path / "daemon.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while not _handlers_installed(proc.pid):
            assert time.monotonic() < deadline, "the daemon never installed its handlers"
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(sig)
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    log = (tmp_path / "daemon.log").read_text()
    assert status == 0, (status, log)
    assert "Traceback" not in log, log
    if (tmp_path / "state").exists():  # the start had begun: it was stopped cleanly
        assert (tmp_path / "state" / "status.json").exists(), log
        assert '"msg": "stopped"' in log, log


# -- F11: a service kind the ledger cannot take -------------------------------------------

_KIND_CONFIG = """[daemon]
ledger = "ledger.sqlite"
identity = "host.key"
state_dir = "state"

[[service]]
name = "svc"
port = 7000
kind = "{kind}"
backends = ["127.0.0.1:9"]
"""


@pytest.mark.parametrize("kind", ["k" * (MAX_PURE_BYTES + 1), "é" * (MAX_PURE_BYTES // 2 + 1)])
def test_a_kind_over_the_ledgers_bound_is_a_config_error(kind: str) -> None:
    """Counted in UTF-8 bytes, as the ledger counts it: ``"é" * 8191`` is 8191
    characters but 16382 bytes."""
    with pytest.raises(DaemonConfigError) as caught:
        parse_config(_KIND_CONFIG.format(kind=kind), Path("dtp.toml"))
    message = str(caught.value)
    assert message.startswith("dtp.toml:9: service[0].kind: ")
    assert f"{MAX_PURE_BYTES + 1} bytes long; the ledger takes at most {MAX_PURE_BYTES}" in message


def test_the_config_bound_on_kind_is_the_ledgers(tmp_path: Path) -> None:
    """The longest kind the config accepts is one the ledger takes, and one byte more
    is refused by both (the same constant, not a copy of the number)."""
    longest = "k" * MAX_PURE_BYTES
    config = parse_config(_KIND_CONFIG.format(kind=longest), Path("dtp.toml"))
    assert config.services[0].kind == longest
    identity = HostIdentity.generate()
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        host_id = ledger.create_host(identity, identity.noise_public)
        ledger.add_service(identity, host_id, 7000, longest, Sla(0, 0, 0))
        with pytest.raises(DTPError, match="16381"):
            ledger.add_service(identity, host_id, 7001, longest + "k", Sla(0, 0, 0))
    finally:
        ledger.close()


def test_dtp_daemon_with_a_long_kind_exits_2_naming_the_key(tmp_path: Path) -> None:
    """``dtp daemon`` refuses the file before it starts anything (before: exit 1 with
    "argument 2 of host::add_service is 20000 bytes", after creating its identity,
    ledger and host)."""
    config = tmp_path / "dtp.toml"
    config.write_text(_KIND_CONFIG.format(kind="k" * 20000))
    done = run_daemon(config, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"{config}:9: service[0].kind: is 20000 bytes long" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtp.toml"]


# -- F12: the line of a dotted key ----------------------------------------------------------


def test_an_unknown_dotted_key_is_reported_at_its_own_line() -> None:
    text = """[daemon]
ledger = "l.db"
identity = "h.key"
[[service]]
name = "s"
port = 53
backends = ["127.0.0.1:5353"]
health.interval = 2
"""
    with pytest.raises(DaemonConfigError, match=r"^dtp\.toml:8: service\[0\]\.health: unknown key"):
        parse_config(text, Path("dtp.toml"))


def test_an_unknown_dotted_key_in_a_table_takes_its_first_line() -> None:
    """``log.level`` and ``log.format`` (lines 4 and 5) make one unknown key ``log``,
    reported where it first appears (before: at the [daemon] header, line 1)."""
    text = """[daemon]
ledger = "l.db"
identity = "h.key"
log.level = "debug"
log.format = "text"
[[forward]]
name = "f"
listen = "127.0.0.1:0"
target = "dtp://0x{host}:80"
""".replace("{host}", "1" * 64)
    with pytest.raises(DaemonConfigError, match=r"^dtp\.toml:4: daemon\.log: unknown key"):
        parse_config(text, Path("dtp.toml"))


def test_a_missing_key_is_still_reported_at_its_tables_header() -> None:
    """A key set nowhere has no line of its own (nor longer ones): its table's header."""
    text = """[daemon]
ledger = "l.db"
identity = "h.key"

[[service]]
name = "s"
backends = ["127.0.0.1:5353"]
"""
    with pytest.raises(DaemonConfigError, match=r"^dtp\.toml:5: service\[0\]\.port: is required"):
        parse_config(text, Path("dtp.toml"))


# -- the help text --------------------------------------------------------------------------


def test_help_says_the_daemon_serves_udp_too() -> None:
    top = subprocess.run(
        [sys.executable, "-m", "dtp.cli", "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(line for line in top.stdout.splitlines() if line.split()[:1] == ["daemon"])
    assert "TCP and UDP services" in line, top.stdout
    own = subprocess.run(
        [sys.executable, "-m", "dtp.cli", "daemon", "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert own.returncode == 0
    assert "TCP and UDP" in " ".join(own.stdout.split()), own.stdout


@pytest.mark.parametrize(
    "argv", [["daemon", "--no-such-option"], ["daemon", "--help"], ["-v", "daemon", "-h"]]
)
def test_the_early_daemon_handlers_are_put_back_when_the_daemon_never_runs(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``dtp daemon`` catches its stop signals before the parser is built; a usage error
    or --help (the daemon never ran) leaves the process's handlers as they were."""
    from dtp.cli import main

    before = {sig: signal.getsignal(sig) for sig in CAUGHT_SIGNALS}
    with pytest.raises(SystemExit):
        main(argv)
    capsys.readouterr()
    assert {sig: signal.getsignal(sig) for sig in CAUGHT_SIGNALS} == before


def test_other_commands_do_not_catch_the_daemon_signals() -> None:
    from dtp.cli import _early_stop_signals

    assert _early_stop_signals(["-v", "status", "--config", "daemon"]) is None
    assert _early_stop_signals(["demo"]) is None
    assert _early_stop_signals([]) is None


# -- balancer -----------------------------------------------------------------------------


def test_a_health_check_does_not_mark_up_a_backend_a_tunnel_found_down_since() -> None:
    """The checks marked every backend once all probes had ended: a backend that
    answered its probe, then failed a tunnel's connect while another backend's probe
    was still timing out, was marked up again by the old probe result (and tried first
    by the next tunnels) though the latest thing known of it was a failure."""

    async def main() -> None:
        probed = asyncio.Event()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # the probe's close
            probed.set()
            writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with unanswered_address() as (host, silent_port):
            live, silent = Backend("127.0.0.1", port), Backend(host, silent_port)
            pool = BackendPool("svc", (live, silent), 60.0, 0.5)
            check = asyncio.get_running_loop().create_task(pool.check_now())
            await asyncio.wait_for(probed.wait(), 5)
            server.close()
            await server.wait_closed()
            assert not check.done()  # the silent backend's probe still runs
            with pytest.raises(TunnelError):
                await pool.connect(asyncio.Protocol)  # the live one refuses now
            await check
        assert pool.healthy == {live: False, silent: False}

    asyncio.run(main())


# -- dtp status -------------------------------------------------------------------------


def test_a_pid_reused_by_another_users_process_is_not_the_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kill(pid, 0) failing with EPERM (the pid is another user's process) was taken
    for the daemon alive at once, before the recorded process identity was compared:
    a crashed daemon whose pid went to another user's program showed as running."""
    me = os.getpid()
    identity = process_identity(me)
    if identity is None:
        pytest.skip("no /proc to tell processes apart")

    def kill(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    # another process's identity recorded for this pid: the pid was reused
    assert not daemon_running({"pid": me, "process": identity + "0"})
    # the same process, of another user: running
    assert daemon_running({"pid": me, "process": identity})


# -- the status file -------------------------------------------------------------------


class _SlowDisk:
    """write_durably, held until released: a disk whose fsync takes long."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.release = threading.Event()
        self.entered = threading.Event()
        self.threads: list[str] = []

    def __call__(self, path: Path, data: bytes) -> None:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(5)
        self.real(path, data)


def test_a_periodic_status_write_does_not_hold_up_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's run loop saves the status every half second, on its event loop:
    the write's two fsyncs held up every tunnel for as long as the disk took. The
    periodic save now hands the write to a thread; the newest counters land."""
    disk = _SlowDisk(state_module.write_durably)
    monkeypatch.setattr(state_module, "write_durably", disk)
    book = StatusBook(tmp_path, interval=0.0)
    book.service("svc").connections = 1
    started = time.monotonic()
    book.save()
    assert disk.entered.wait(5)
    # returned while the disk is still busy
    assert time.monotonic() - started < 4
    book.service("svc").connections = 2
    book.save()  # waits for the write under way: the newest is written next
    assert disk.threads == ["dtp-status-writer"]
    writer = book._writer
    assert writer is not None
    disk.release.set()
    writer.join(5)  # (it writes the pending one before it ends)
    assert not writer.is_alive()
    saved = json.loads((tmp_path / STATUS_FILE).read_text())
    assert saved["services"]["svc"]["connections"] == 2


def test_the_forced_write_at_exit_lands_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forced save (the daemon's last, "stopped") waits for a periodic write under
    way, replaces the one waiting, and is not overwritten by either."""
    disk = _SlowDisk(state_module.write_durably)
    monkeypatch.setattr(state_module, "write_durably", disk)
    book = StatusBook(tmp_path, interval=0.0)
    book.service("svc").connections = 1
    book.save()
    assert disk.entered.wait(5)
    writer = book._writer
    book.service("svc").connections = 2
    book.save()  # pending behind the first
    book.info["stopped"] = 1.0
    book.service("svc").connections = 3
    releaser = threading.Timer(0.2, disk.release.set)
    releaser.start()
    try:
        book.save(force=True)
    finally:
        releaser.join()
    if writer is not None:
        writer.join(5)
    saved = json.loads((tmp_path / STATUS_FILE).read_text())
    assert (saved["services"]["svc"]["connections"], saved["stopped"]) == (3, 1.0)
    assert disk.threads[-1] == "MainThread"  # the forced one: written by the caller


# -- logs -------------------------------------------------------------------------------


def test_text_logs_keep_a_remote_reason_on_one_line() -> None:
    """``log_format = "text"`` wrote field values as they were: a refusal's reason,
    which the remote daemon writes, holding a newline started a log line of its own
    making (a forged entry)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("text", "info")
        formatter = root.handlers[0].formatter
        assert formatter is not None
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    forged = "no\n2030-01-01 00:00:00,000 ERROR dtp.daemon: identity leaked key=x"
    record = logging.LogRecord("dtp.daemon._forwarder", logging.WARNING, "", 0, "refused", (), None)
    record.fields = {"forward": "db", "reason": forged}
    text = formatter.format(record)
    assert "\n" not in text
    assert text.endswith(" forward=db reason=" + json.dumps(forged))


# -- signals ---------------------------------------------------------------------------


def test_a_signal_without_an_action_is_raised_again_at_the_stop() -> None:
    """LoopSignals with a recorder of its own: a signal it has no action for is only
    recorded while it runs, and raised again for the caller's handler at the stop (its
    docs). Only those caught during the stop were: a SIGINT while it ran was lost."""
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _: got.append(signum))
    try:

        async def main() -> None:
            hup = asyncio.Event()
            watch = LoopSignals(asyncio.get_running_loop(), {signal.SIGHUP: hup.set}, None)
            watch.start()
            try:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGHUP)
                await asyncio.wait_for(hup.wait(), 5)  # both were seen by the loop
                assert got == []  # recorded only, while it runs
            finally:
                watch.stop()

        asyncio.run(main())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert got == [signal.SIGINT]  # once, not the SIGHUP it acted on


def test_pool_stop_does_not_swallow_the_callers_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        pool = BackendPool("web", (Backend("127.0.0.1", 1),), 2.0, 2.0)
        cleaning = asyncio.Event()

        async def checks() -> None:
            # health checks whose end takes a moment (a probe's close, say)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cleaning.set()
                await asyncio.sleep(3)
                raise

        pool._task = asyncio.create_task(checks())
        await asyncio.sleep(0)
        stopper = asyncio.create_task(pool.stop())
        await cleaning.wait()
        stopper.cancel()
        await asyncio.wait({stopper}, timeout=4)
        assert stopper.done()
        assert stopper.cancelled()  # (old: it returned, the cancellation lost)

        # (as before) checks that died of a fault are logged, not raised; others are
        # cancelled and waited for
        async def broken() -> None:
            raise RuntimeError("boom")

        pool._task = asyncio.create_task(broken())
        await asyncio.sleep(0)
        await pool.stop()
        assert pool._task is None

        pool._task = waiting = asyncio.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        await pool.stop()
        assert waiting.cancelled()

    with caplog.at_level("ERROR", logger="dtp.daemon._balancer"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ["health checks failed"]
