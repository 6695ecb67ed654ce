"""The daemon's logs in a file of their own (``[daemon] log_file``), rotated by size
(``log_max_bytes``, ``log_backups``), instead of stderr."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.daemon._logs import kv, setup_logging
from tests.daemon.tunnel_setup import Setup, service
from tests.support.daemon_procs import run_daemon


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The root logger as it was, afterwards (setup_logging takes it over)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_the_log_file_is_rotated_at_its_size(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    setup_logging("json", "info", path, max_bytes=2000, backups=2)
    log = logging.getLogger("dtp.daemon")
    for i in range(100):
        log.info("connection open", extra=kv(service="svc", n=i))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["daemon.log", "daemon.log.1", "daemon.log.2"]  # two kept, no more
    lines = []
    for name in reversed(names[1:]):
        text = (tmp_path / name).read_text()
        assert len(text.encode()) <= 2000
        lines += text.splitlines()
    lines += path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    numbers = [r["n"] for r in records]
    assert numbers == sorted(numbers) and numbers[-1] == 99  # the newest, in order
    assert {r["msg"] for r in records} == {"connection open"}


@pytest.mark.usefixtures("root_logging")
def test_no_rotation_keeps_one_growing_file(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    setup_logging("text", "info", path, max_bytes=0, backups=2)
    for i in range(50):
        logging.getLogger("dtp.daemon").info("line %d", i, extra=kv(client="0xab"))
    assert [p.name for p in tmp_path.iterdir()] == ["daemon.log"]
    assert path.read_text().splitlines()[-1].endswith("dtp.daemon: line 49 client=0xab")


def test_the_daemon_logs_to_its_file_not_stderr(setup: Setup) -> None:
    backend = setup.backend()
    config = setup.write_daemon(
        service([backend.info["port"]]), extra='log_file = "logs/daemon.log"'
    )
    (setup.tmp / "logs").mkdir()
    proc = setup.daemon(config)
    assert proc.stop() == 0
    records = [
        json.loads(line) for line in (setup.tmp / "logs" / "daemon.log").read_text().splitlines()
    ]
    assert [r["msg"] for r in records if r["msg"] in ("ready", "stopped")] == ["ready", "stopped"]
    assert proc.log() == ""  # stderr: nothing


def test_a_log_file_that_cannot_be_opened_is_a_config_error(setup: Setup) -> None:
    config = setup.write_daemon(service([9]), extra='log_file = "missing/daemon.log"')
    done = run_daemon(config)
    assert done.returncode == 2
    assert "daemon.log_file: cannot open it: No such file or directory" in done.stderr
    assert not (setup.tmp / "daemon-state").exists()  # nothing started
