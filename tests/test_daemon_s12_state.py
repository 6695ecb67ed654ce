"""The status file read back at start (a damaged one costs counters, never service) and by
`dtp status` (a damaged one is one line, never a traceback or output that is not JSON)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dtp.daemon.state import STATUS_FILE, StatusBook
from dtp.daemon.status import main as status_main


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
    assert status_main(None, str(tmp_path), as_json=True) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"dtp status: {tmp_path / STATUS_FILE} is damaged: not a JSON object\n"


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
