"""Small finds of the S32 review: a CLOSE reason cut inside a character, a RESET_STREAM
answering a STOP_SENDING for a stream whose sending was done (and a FIN sent twice),
``handshake_timeout`` taken unchecked, an empty passphrase variable taken as none (the
new key written unencrypted), ``host.json`` written in place, the passphrase handed to
``dtp deploy``'s ``sui`` children, and a ledger failure escaping the forwarder's
best-effort close. Connections are driven in memory with virtual clocks; a peer holding
its keys seals whatever frames it likes (_sealed_by)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sqlite3
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from dtp import _core
from dtp._types import FRAME_RESET_STREAM, FRAME_STOP_SENDING, FRAME_STREAM_FIN, RawFrame
from dtp.connection import CloseCode, ConnectionConfig
from dtp.errors import TunnelError
from dtp.events import ConnectionTerminated, StopSendingReceived
from dtp.keys import HostIdentity
from tests.protocol.test_connection import CLIENT_ID, Side, _sealed_by, connect, run
from tests.support.paths import ROOT

#: The tree under test (its ``dtp`` is the one a child process must import).


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    env.pop("DTP_PASSPHRASE", None)
    env.pop("DTP_LEDGER", None)
    env.update(extra)
    return env


# -- 1. a CLOSE reason cut at 1024 bytes -----------------------------------------------


def _peer_reason(c: Side, s: Side, link: Any) -> str:
    run(link, c, s, until=lambda: s.conn.closed)
    terms = s.of(ConnectionTerminated)
    assert len(terms) == 1
    return cast(ConnectionTerminated, terms[0]).reason


@pytest.mark.parametrize(
    "reason",
    ["a" * 1023 + "é", "ab" + "😀" * 300, "€" * 400],
    ids=["2-byte", "4-byte", "3-byte"],
)
def test_a_long_close_reason_is_cut_on_a_character_boundary(reason: str) -> None:
    # cut at byte 1024, a multi-byte character split there reached the peer as a
    # U+FFFD (it decodes with "replace")
    c, s, link = connect()
    c.conn.close(CloseCode.NO_ERROR, reason)
    got = _peer_reason(c, s, link)
    assert "\ufffd" not in got
    assert reason.startswith(got)
    assert 1024 - 3 <= len(got.encode("utf-8")) <= 1024


def test_a_failure_reason_is_cut_on_a_character_boundary() -> None:
    # the connection's own failures (_fail) cut their reason the same way
    c, s, link = connect()
    reason = "a" + "é" * 600
    c.conn._fail(CloseCode.PROTOCOL_VIOLATION, reason, link.now)
    got = _peer_reason(c, s, link)
    assert got == "a" + "é" * 511  # 1023 bytes: the 512th "é" did not fit whole


# -- 2. STOP_SENDING once our sending is done -------------------------------------------


def _feed(c: Side, s: Side, frames: list[RawFrame], reliable: bool, now: float) -> None:
    """Frames from the server (sealed with its keys) into the client."""
    record = _sealed_by(s.conn, _core.encode_frames(frames))
    if reliable:
        c.conn.receive_data(record, now)
    else:
        c.conn.receive_datagram(record, now)


def _sent(c: Side, s: Side, reliable: bool, now: float) -> list[RawFrame]:
    """The frames the client sends now, opened with the server's keys (not delivered)."""
    records = [c.conn.data_to_send(now)] if reliable else c.conn.datagrams_to_send(now)
    opened = [s.conn._recv_aead.open_frames(bytearray(r)) for r in records if r]
    return [frame for result in opened for record in result.records for frame in record.frames]


def _resets(frames: list[RawFrame]) -> list[int]:
    return [f.a for f in frames if f.type == FRAME_RESET_STREAM]


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "lossy"])
def test_stop_sending_after_our_fin_was_acknowledged_sends_no_reset(reliable: bool) -> None:
    c, s, link = connect(reliable_carrier=reliable)
    # a stream still sending: the STOP_SENDING resets it, as ever
    busy = c.conn.open_stream()
    c.conn.send_stream_data(busy, b"more to come")
    # a stream whose data and FIN the server has (acknowledged, on a lossy carrier);
    # its receiving half stays open, so the client keeps it
    done = c.conn.open_stream()
    c.conn.send_stream_data(done, b"hello", end_stream=True)

    def acknowledged() -> bool:
        stream = c.conn._streams[done]
        return done in s.eof and stream.fin_acked and stream.base_offset == stream.end_offset

    assert run(link, c, s, until=acknowledged)
    _sent(c, s, reliable, link.now)  # (whatever was due: ACKs on a lossy carrier)
    c.events.clear()
    frames = [RawFrame(FRAME_STOP_SENDING, busy, 7), RawFrame(FRAME_STOP_SENDING, done, 9)]
    _feed(c, s, frames, reliable, link.now)
    c.drain()
    assert _resets(_sent(c, s, reliable, link.now)) == [busy]
    # nothing of ours was stopped on ``done``: no event saying our sending was reset
    stops = [cast(StopSendingReceived, e).stream_id for e in c.of(StopSendingReceived)]
    assert stops == [busy]
    assert not c.conn.closed and not s.conn.closed
    if not reliable:
        # a FIN not yet acknowledged may be lost: that stream is reset still (RFC 9000
        # 3.5: only "Data Recvd" needs no RESET_STREAM)
        sid = c.conn.open_stream()
        c.conn.send_stream_data(sid, b"x", end_stream=True)
        assert any(f.type == FRAME_STREAM_FIN for f in _sent(c, s, False, link.now))  # lost
        _feed(c, s, [RawFrame(FRAME_STOP_SENDING, sid, 9)], False, link.now)
        assert _resets(_sent(c, s, False, link.now)) == [sid]


def test_a_fin_sealed_with_the_data_is_sent_once() -> None:
    # send_stream_data's fast path sealed the FIN with the last byte, then queued it
    # again: a second, empty STREAM_FIN followed (and the stream was not "done" until)
    c, s, link = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"hello", end_stream=True)
    fins = [(f.a, f.b, f.data) for f in _sent(c, s, True, link.now) if f.type == FRAME_STREAM_FIN]
    assert fins == [(sid, 0, b"hello")]
    assert c.conn._streams[sid].send_state.value == "fin-sent"


# -- 3. handshake_timeout ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (0.0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (1e300, ValueError),  # beyond what a thread can wait for (OverflowError there)
        ("10", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
    ids=["zero", "zero-float", "negative", "nan", "inf", "huge", "str", "none", "bool"],
)
def test_a_bad_handshake_timeout_is_refused_when_the_config_is_made(
    value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="handshake_timeout"):
        ConnectionConfig(identity=CLIENT_ID, is_client=True, handshake_timeout=value)  # type: ignore[arg-type]
    good = ConnectionConfig(identity=CLIENT_ID, is_client=True, handshake_timeout=0.25)
    with pytest.raises(error, match="handshake_timeout"):
        replace(good, handshake_timeout=value)  # type: ignore[arg-type]


# -- 4. an empty passphrase variable -----------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_LEDGER", raising=False)
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    return tmp_path


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
    # --passphrase-env: then it is refused too (session 36), and only leaving the option
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
        env=_child_env(HOME=str(tmp_path), DTP_PASSPHRASE=""),
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


# -- 5. host.json written in place -------------------------------------------------------

_HOST_WRITE = """
import resource, signal, sys
from pathlib import Path
from types import SimpleNamespace
from dtp.daemon.runner import Daemon

state, crash = Path(sys.argv[1]), sys.argv[2] == "crash"
# Python ignores SIGXFSZ from its start: put the default (death) back for a crash
signal.signal(signal.SIGXFSZ, signal.SIG_DFL if crash else signal.SIG_IGN)

def create_host(identity, key, endpoints):
    # the Host is made; from here no file may grow past 16 bytes (a full disk)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))
    return "0x" + "ab" * 32

daemon = SimpleNamespace(
    config=SimpleNamespace(daemon=SimpleNamespace(host_id=None, state_dir=state)),
    ledger=SimpleNamespace(create_host=create_host),
    identity=SimpleNamespace(noise_public=b"k" * 32),
)
try:
    Daemon._host_id(daemon, "127.0.0.1:1")
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
        env=_child_env(),
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
    from dtp.daemon.runner import HOST_FILE, Daemon, _recorded_host_id

    record = state / HOST_FILE
    # the old record (none here) stays, whole: never a truncated one, which the next
    # start refuses as damaged
    if record.exists():
        _recorded_host_id(record)
    if not crash:
        assert os.listdir(state) == []  # no temporary file left behind either
    # and with room on the disk, the record is written whole
    record.unlink(missing_ok=True)
    host_id = "0x" + "cd" * 32
    daemon = types.SimpleNamespace(
        config=types.SimpleNamespace(daemon=types.SimpleNamespace(host_id=None, state_dir=state)),
        ledger=types.SimpleNamespace(create_host=lambda *_: host_id),
        identity=types.SimpleNamespace(noise_public=b"k" * 32),
    )
    assert Daemon._host_id(daemon, "127.0.0.1:1") == host_id  # type: ignore[arg-type]
    assert _recorded_host_id(record) == host_id


# -- 6. the passphrase in `dtp deploy`'s children ---------------------------------------


def test_deploy_hands_its_sui_children_no_passphrase(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtp.chain.cli import register

    (home / "pkg").mkdir()
    (home / "pkg" / "Move.toml").write_text('[package]\nname = "dtp"\n')
    seen = home / "env.txt"
    sui = home / "sui"
    sui.write_text(
        "#!/bin/sh\n"
        f"env >> {seen}\n"
        'case "$1 $2" in\n'
        '  "client active-env") echo localnet ;;\n'
        '  "move build") echo built ;;\n'
        '  "client publish") echo \'{"digest": "D", "objectChanges": '
        '[{"type": "published", "packageId": "0xabc"}]}\' ;;\n'
        "esac\n"
    )
    sui.chmod(0o755)
    monkeypatch.setenv("DTP_PASSPHRASE", "default-variable-secret")
    monkeypatch.setenv("MY_SECRET", "named-variable-secret")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    parser = argparse.ArgumentParser(prog="dtp")
    register(parser.add_subparsers(dest="command"))
    argv = ["deploy", "--network", "localnet", "--sui-bin", str(sui)]
    argv += ["--package-path", str(home / "pkg"), "--passphrase-env", "MY_SECRET"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    env = seen.read_text()
    assert env.count("SOMETHING_ELSE=kept") == 3  # each of the three calls ran
    assert "default-variable-secret" not in env and "named-variable-secret" not in env
    assert "DTP_PASSPHRASE" not in env and "MY_SECRET" not in env


# -- 7. the forwarder's ledger close -----------------------------------------------------


class _BrokenLedger:
    """A ledger whose reads fail below the chain layer (a database error)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_connection(self, connection_id: str) -> Any:
        raise self.error

    def get_escrow(self, escrow_id: str) -> Any:
        raise self.error

    def close_connection(self, *args: object) -> None:
        raise AssertionError("not reached")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(
    "error",
    [OSError(5, "Input/output error"), sqlite3.OperationalError("disk I/O error")],
    ids=["oserror", "sqlite"],
)
def test_a_ledger_failure_fails_the_link_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    import dtp.aio
    from dtp.address import HostAddress
    from dtp.chain.ledger import Ledger
    from dtp.daemon.config import Backend, ForwardConfig
    from dtp.daemon.forwarder import Forwarder, close_on_ledger
    from dtp.daemon.state import StatusBook

    identity = HostIdentity.generate()
    ledger = cast(Ledger, _BrokenLedger(error))
    closed: list[bool] = []
    writer = types.SimpleNamespace(
        connection_id="0x" + "ef" * 32,
        escrow_id="0x" + "ee" * 32,
        close=lambda: closed.append(True),
    )

    async def open_connection(*args: object, **kwargs: object) -> tuple[object, object]:
        return object(), writer

    monkeypatch.setattr(dtp.aio, "open_connection", open_connection)
    config = ForwardConfig("fwd", Backend("127.0.0.1", 0), HostAddress("0x" + "12" * 32, 7))
    forwarder = Forwarder(config, ledger, identity, StatusBook(tmp_path / "state"))
    records = _Records()
    log = logging.getLogger("dtp.daemon.forwarder")
    log.addHandler(records)
    try:
        # the close alone: logged, not raised (a watcher's task ended with it)
        asyncio.run(close_on_ledger(ledger, identity, writer.connection_id))
        assert [r.getMessage() for r in records.records] == ["ledger close failed"]
        # the link: the TunnelError _tunnel reports, not the ledger's exception
        with pytest.raises(TunnelError, match="cannot read connection"):
            asyncio.run(forwarder._open_link())
    finally:
        log.removeHandler(records)
    assert closed == [True]
    assert forwarder._links == set() and forwarder._watchers == set()
