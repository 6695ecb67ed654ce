"""How many SQLite statements a connection by host ID runs on each side: counts, not time.

    python bench/connect_statements.py [--connections N]

Runs ``hostid_connect_rate``'s operation (connect by host ID to a paid echo service on a
LocalLedger file, one 100-byte round trip, close) N times and prints, per connection,
the statements the client's process and the paid server's process ran on each SQLite
file (the ledger's, the server's receipt store), each statement's text with its
literals as ``?`` (SQLite's trace callback on every connection either process opens).
A transaction is a ``BEGIN`` ... ``COMMIT`` in the list; the server's settlement runs
after the client's close, so a short wait follows the last connection.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_LITERAL = re.compile(r"'[^']*'|\b\d+\b")


class Statements:
    """The statements of every SQLite connection opened after :meth:`install`, counted
    by file and text while :attr:`on`."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on = False

    def install(self) -> None:
        connect = sqlite3.connect

        def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            db = connect(*args, **kwargs)
            name = os.path.basename(str(args[0] if args else kwargs.get("database")))
            name = name.split("?", 1)[0]

            def trace(statement: str) -> None:
                if self.on:
                    text = _LITERAL.sub("?", " ".join(statement.split()))
                    self.counts[(name, text)] += 1

            db.set_trace_callback(trace)
            return db

        sqlite3.connect = traced  # type: ignore[assignment]

    def start(self) -> None:
        self.counts.clear()
        self.on = True

    def report(self) -> list[tuple[str, str, int]]:
        self.on = False
        return [(name, text, n) for (name, text), n in self.counts.most_common()]


# -- the paid server: bench/hostid_rows.py's, with its statements counted, its report
# going to $DTP_STATEMENTS_REPORT --------------------------------------------------------


def _serve(report: str, args: list[str]) -> None:
    statements = Statements()
    statements.install()  # (before the server opens its ledger and receipt store)
    import bench.hostid_rows as rows

    def dump(*_: object) -> None:
        with open(report + ".tmp", "w") as f:
            json.dump(statements.report(), f)
        os.replace(report + ".tmp", report)

    signal.signal(signal.SIGUSR1, lambda *_: statements.start())
    signal.signal(signal.SIGUSR2, dump)
    spec, package, state, host_id, port, seed_hex, mode = args
    rows._serve(spec, package, state, host_id, int(port), seed_hex, mode)


def measure(connections: int) -> dict[str, list[tuple[str, str, int]]]:
    """Each side's statements over ``connections`` connections."""
    statements = Statements()
    statements.install()
    import bench.hostid_rows as rows
    from bench.net import _pingpong

    workdir = tempfile.mkdtemp(prefix="dtp-statements-")
    report = os.path.join(workdir, "server.json")
    rows_file = rows.__file__
    rows.__file__ = str(Path(__file__).resolve())  # (the server process runs this file)
    os.environ["DTP_STATEMENTS_REPORT"] = report
    try:
        paid = rows._PaidPeer("echo")
    finally:
        rows.__file__ = rows_file
        del os.environ["DTP_STATEMENTS_REPORT"]
    try:
        for _ in range(max(10, connections // 10)):  # (warm up)
            with paid.connect() as s:
                _pingpong(s, 1)
        time.sleep(0.3)
        os.kill(paid.proc.pid, signal.SIGUSR1)
        time.sleep(0.3)
        statements.start()
        for _ in range(connections):
            with paid.connect() as s:
                _pingpong(s, 1)
        client = statements.report()
        time.sleep(0.5)  # (the last settlement)
        os.kill(paid.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not os.path.exists(report):
            if time.monotonic() > deadline:
                raise RuntimeError("the paid server did not report its statements")
            time.sleep(0.05)
        with open(report) as f:
            server = [(name, text, int(n)) for name, text, n in json.load(f)]
    finally:
        paid.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"client": client, "server": server}


def main() -> None:
    report = os.environ.get("DTP_STATEMENTS_REPORT")
    if report is not None:
        _serve(report, sys.argv[1:8])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    args = parser.parse_args()
    n = args.connections
    for side, rows in measure(n).items():
        total = sum(count for _, _, count in rows)
        commits = sum(count for _, text, count in rows if text == "COMMIT")
        print(f"{side}: {total / n:.2f} statements per connection, {commits / n:.2f} commits")
        for name, text, count in rows:
            if count / n >= 0.05:  # (the rare ones: checkpoints, a batch's marks)
                print(f"  {count / n:6.2f}  {name:12} {text[:110]}")


if __name__ == "__main__":
    main()
