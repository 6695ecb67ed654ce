"""Review of the daemon's operational parts (session 35): the balancer's health marks,
``dtp status``'s liveness check, the status file's writes, the text logs and the loop's
signals. Each test fails on the code before it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dtp.daemon.state as state_module
from dtp.daemon.balancer import BackendPool
from dtp.daemon.config import Backend
from dtp.daemon.logs import setup_logging
from dtp.daemon.loop_signals import LoopSignals
from dtp.daemon.state import STATUS_FILE, StatusBook, process_identity
from dtp.daemon.status import daemon_running
from dtp.errors import TunnelError
from tests.tcp_blackhole import unanswered_address

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
    record = logging.LogRecord("dtp.daemon.forwarder", logging.WARNING, "", 0, "refused", (), None)
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
