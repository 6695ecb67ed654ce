"""The status file read back at start: a damaged one costs counters, never service."""

from __future__ import annotations

import json
from pathlib import Path

from dtp.daemon.state import STATUS_FILE, StatusBook


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
