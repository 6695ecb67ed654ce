"""The status file read back at start (a damaged one costs counters, never service) and by
`dtp status` (a damaged one is one line, never a traceback or output that is not JSON).

The daemon's operational parts: the status file's
writer thread, the loop's signals at their stop and a service renamed by a reload.
Each test fails on the code before it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

import dtp.daemon._state as state_module
from dtp.daemon._config import Backend, ServiceConfig
from dtp.daemon._services import ServiceHost
from dtp.daemon._signals import LoopSignals
from dtp.daemon._state import STATUS_FILE, StatusBook
from dtp.daemon._status import main as status_main
from dtp.errors import TunnelError
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from tests.support.cli_runs import child_env


def test_counters_of_the_wrong_type_are_dropped(tmp_path: Path) -> None:
    """A string, float, list, bool or negative number where a count goes was taken as
    it was: the daemon's first ``connections += 1`` raised TypeError, in the handler of
    every connection (each one refused)."""
    (tmp_path / STATUS_FILE).write_text(
        json.dumps(
            {
                "services": {
                    "svc": {
                        "connections": "x",
                        "tunnels": None,
                        "bytes_in": 1.5,
                        "bytes_out": 7,
                        "fees_earned": [1],
                        "denials": True,
                        "unavailable": -3,
                        "port": 80,
                    }
                },
                "forwards": {"f": {"tunnels": "z", "listen": 5, "target": "dtp://x", "errors": 2}},
            }
        )
    )
    book = StatusBook.open(tmp_path)
    row = book.service("svc")
    row.connections += 1
    row.tunnels += 1
    row.bytes_in += 10
    row.fees_earned += 1
    row.denials += 1
    row.unavailable += 1
    assert (row.connections, row.tunnels, row.bytes_in, row.bytes_out) == (1, 1, 10, 7)
    assert (row.fees_earned, row.denials, row.unavailable, row.port) == (1, 1, 1, 80)
    fwd = book.forward("f")
    fwd.tunnels += 1
    assert (fwd.tunnels, fwd.listen, fwd.target, fwd.errors) == (1, "", "dtp://x", 2)
    book.save(force=True)
    saved = json.loads((tmp_path / STATUS_FILE).read_text())
    assert saved["services"]["svc"]["connections"] == 1


@pytest.mark.parametrize(
    "text",
    ['{"pid": NaN, "services": {}}', '{"services": {"a": {"port": Infinity}}}', "[1]", "{"],
)
def test_dtp_status_on_a_file_that_is_not_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """NaN/Infinity were read and printed back by --json (output no JSON reader takes);
    a file that is not a JSON object was reported as missing ("has the daemon run?")."""
    (tmp_path / STATUS_FILE).write_text(text)
    message = f"{tmp_path / STATUS_FILE} is damaged: not a JSON object"
    assert status_main(None, str(tmp_path), as_json=False) == 1
    assert capsys.readouterr() == ("", f"dtp status: {message}\n")
    # with --json, the error too is one JSON object (docs/cli.md, "Errors")
    assert status_main(None, str(tmp_path), as_json=True) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err) == {"error": "StatusFileDamaged", "message": message, "exit_status": 1}


@pytest.mark.parametrize("as_json", [True, False])
def test_dtp_status_with_a_pid_beyond_any(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    """os.kill() raised OverflowError (a traceback) for a pid beyond a C long."""
    (tmp_path / STATUS_FILE).write_text('{"pid": 99999999999999999999, "services": {}}')
    assert status_main(None, str(tmp_path), as_json=as_json) == 0
    out, _ = capsys.readouterr()
    if as_json:
        assert json.loads(out)["running"] is False
    else:
        assert out.startswith("daemon: not running")


def test_a_status_file_that_cannot_be_written_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The OSError went up through the daemon's run loop: one unwritable status file
    (a full disk, a directory in its place) stopped the whole daemon (exit 1)."""
    target = tmp_path / STATUS_FILE
    target.mkdir()
    book = StatusBook(tmp_path)
    book.service("svc").connections += 1
    with caplog.at_level(logging.INFO, logger="dtp.daemon"):
        book.save(force=True)
        book.save(force=True)
        assert [r.getMessage() for r in caplog.records] == ["status file not written"]
        assert sorted(p.name for p in tmp_path.iterdir()) == [STATUS_FILE]  # no tmp left
        target.rmdir()
        book.save(force=True)
        assert caplog.records[-1].getMessage() == "status file written again"
    assert json.loads(target.read_text())["services"]["svc"]["connections"] == 1


# -- the status file -------------------------------------------------------------------


def _join_writers() -> None:
    """Wait for the status writer threads to end."""
    for thread in threading.enumerate():
        if thread.name == "dtp-status-writer":
            thread.join(5)
            assert not thread.is_alive()


def test_a_fault_in_a_status_write_does_not_end_the_periodic_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write failing with anything but an OSError does not end the writer thread: the
    failed write is tried again, as one failing with an OSError is, and the later
    periodic saves are written."""
    real = state_module.write_durably
    failed, written = threading.Event(), threading.Event()

    def flaky(path: Path, data: bytes) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a fault")
        real(path, data)
        written.set()

    monkeypatch.setattr(state_module, "write_durably", flaky)
    book = StatusBook(tmp_path, interval=0.0)
    book.service("svc").connections = 1
    book.save()
    assert failed.wait(5)
    _join_writers()
    book.save()  # nothing changed since: the failed write is tried again
    assert written.wait(3)
    _join_writers()
    saved = json.loads((tmp_path / STATUS_FILE).read_text())
    assert saved["services"]["svc"]["connections"] == 1


# -- signals ---------------------------------------------------------------------------


def test_a_signal_its_action_never_saw_is_raised_again_at_the_stop() -> None:
    """LoopSignals with a recorder of its own: a signal with an action that came while
    it ran, but was still waiting on the wakeup fd for the loop when it stopped, never
    reached its action, and was not raised again for the caller's handler either (only
    those recorded during the stop were): lost."""
    got: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, _: got.append(signum))
    try:

        async def main() -> None:
            acted: list[int] = []
            loop = asyncio.get_running_loop()
            watch = LoopSignals(loop, {signal.SIGHUP: lambda: acted.append(1)}, None)
            watch.start()
            try:
                signal.raise_signal(signal.SIGHUP)  # (recorded; the loop has not run)
            finally:
                watch.stop()
            assert acted == []

        asyncio.run(main())
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert got == [signal.SIGHUP]


# -- a service renamed -----------------------------------------------------------------


def _refused_port() -> int:
    """A loopback port nothing listens on (a connect is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_renamed_service_counts_its_backend_errors_under_its_new_name(
    tmp_path: Path,
) -> None:
    """A reload renaming a service (same port, same backends) gives it a BackendPool
    under the new name: its health logs, its backend errors and its healthy backends
    count in the new name's status row, none in the old one's."""
    backends = (Backend("127.0.0.1", _refused_port()),)
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    book = StatusBook(tmp_path / "state")
    try:
        host = ServiceHost(ledger, HostIdentity.generate(), book)

        async def main() -> None:
            await host.configure((ServiceConfig("old", 7000, backends, health_interval=60),))
            try:
                book.service("old").healthy_backends = 1  # (as the run loop counts it)
                await host.configure((ServiceConfig("new", 7000, backends, health_interval=60),))
                pool = host.pools[7000]
                assert pool.name == "new"
                with pytest.raises(TunnelError):
                    await pool.connect(asyncio.Protocol)
            finally:
                for pool in host.pools.values():
                    await pool.stop()

        asyncio.run(main())
    finally:
        ledger.close()
    assert book.services["new"].backend_errors == 1
    assert book.services["old"].backend_errors == 0
    assert book.services["old"].healthy_backends == 0


_HOST_WRITE = """
import resource, signal, sys
from pathlib import Path
from types import SimpleNamespace
from dtp.daemon._host_setup import HostSetup

state, crash = Path(sys.argv[1]), sys.argv[2] == "crash"
# Python ignores SIGXFSZ from its start: put the default (death) back for a crash
signal.signal(signal.SIGXFSZ, signal.SIG_DFL if crash else signal.SIG_IGN)

def create_host(identity, key, endpoints):
    # the Host is made; from here no file may grow past 16 bytes (a full disk)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))
    return "0x" + "ab" * 32

setup = HostSetup(
    SimpleNamespace(create_host=create_host), SimpleNamespace(noise_public=b"k" * 32)
)
try:
    setup.host_id(SimpleNamespace(host_id=None, state_dir=state), "127.0.0.1:1")
except Exception as exc:  # (HostConfigError: the Host was made, its record not written)
    print("write failed:", exc)
"""


@pytest.mark.parametrize("crash", [False, True], ids=["write-error", "killed"])
def test_host_json_is_never_left_damaged(tmp_path: Path, crash: bool) -> None:
    state = tmp_path / "state"
    state.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _HOST_WRITE, str(state), "crash" if crash else "error"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode != 0 if crash else done.stdout.startswith("write failed"), done
    if not crash:
        # the error names the Host made, for [daemon] host_id (a next start without a
        # record would create another)
        assert "set [daemon] host_id = '0x" + "ab" * 32 + "'" in done.stdout, done
    from dtp.daemon._host_setup import HOST_FILE, HostSetup, recorded_host_id

    record = state / HOST_FILE
    # the old record (none here) stays, whole: never a truncated one, which the next
    # start refuses as damaged
    if record.exists():
        recorded_host_id(record)
    if not crash:
        assert os.listdir(state) == []  # no temporary file left behind either
    # and with room on the disk, the record is written whole
    record.unlink(missing_ok=True)
    host_id = "0x" + "cd" * 32
    setup = HostSetup(
        types.SimpleNamespace(create_host=lambda *_: host_id),  # type: ignore[arg-type]
        types.SimpleNamespace(noise_public=b"k" * 32),  # type: ignore[arg-type]
    )
    settings = types.SimpleNamespace(host_id=None, state_dir=state)
    assert setup.host_id(settings, "127.0.0.1:1") == host_id  # type: ignore[arg-type]
    assert recorded_host_id(record) == host_id
