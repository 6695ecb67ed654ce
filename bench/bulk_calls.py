"""How many calls a bulk transfer makes on each side, per MB: counts, not time.

    python bench/bulk_calls.py [--mb N] [--transfers T] [--top K] [--plain] [--inside]

Runs ``paid_bulk``'s operation (a one-way transfer of N MiB through a metered
connection by host ID to a paid sink on a LocalLedger file), or with ``--plain`` its
peer's (the same through an unmetered DTP connection to bench/netpeers.py's blocking
sink), T times, and prints per MiB the calls the client's process and the server's
process made (Python functions and builtins, counted with a profile hook in every
thread) and the K functions called most on each side (``--inside``: the K with the most
calls made inside them, nested ones included). Connect and close are counted too: with
a large N they weigh little. Under the hook every call costs far more than without, so
the reads' sizes (and with them the counts) may differ somewhat from an unhooked run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.connect_calls import Counter, _wait_for

ROOT = str(Path(__file__).resolve().parent.parent) + "/"
MIB = 1 << 20


def _serve(report: str, args: list[str]) -> None:
    """A server with its calls counted between SIGUSR1 and SIGUSR2, per the MiB count
    written beside ``report``."""
    import bench.hostid_rows as rows
    from bench.netpeers import serve_dtp_blocking

    counter = Counter()
    box: dict[str, int] = {}

    def start(*_: object) -> None:
        box["n"] = int(Path(report + ".n").read_text())
        counter.start()

    def dump(*_: object) -> None:
        with open(report + ".tmp", "w") as f:
            json.dump(counter.report(box["n"], int(os.environ["DTP_CALLS_TOP"])), f)
        os.replace(report + ".tmp", report)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    counter.install()
    if args == ["plain"]:
        serve_dtp_blocking("sink")
        return
    spec, package, state, host_id, port, seed_hex, mode = args
    rows._serve(spec, package, state, host_id, int(port), seed_hex, mode)


class _PlainPeer:
    """bench/netpeers.py's blocking sink, run by this file with its calls counted."""

    def __init__(self) -> None:
        cmd = [sys.executable, __file__, "plain"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.endpoint = ("127.0.0.1", int(info["port"]))
        self.key = bytes.fromhex(info["key"])

    def connect(self) -> Any:
        import dtp.socket

        return dtp.socket.create_connection(self.endpoint, server_key=self.key)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


def measure(mib: int, transfers: int, top: int, plain: bool = False) -> dict[str, Any]:
    """Each side's calls per MiB."""
    import threading

    import bench.hostid_rows as rows
    from bench.net import _send_bulk

    workdir = tempfile.mkdtemp(prefix="dtp-bulk-calls-")
    report = os.path.join(workdir, "server.json")
    rows_file = rows.__file__
    rows.__file__ = str(Path(__file__).resolve())
    os.environ["DTP_CALLS_REPORT"] = report
    os.environ["DTP_CALLS_TOP"] = str(top)
    try:
        peer: Any = _PlainPeer() if plain else rows._PaidPeer("sink")
    finally:
        rows.__file__ = rows_file
        del os.environ["DTP_CALLS_REPORT"]
    total = mib * MIB
    try:
        with peer.connect() as s:  # (warm up)
            _send_bulk(s, total)
        Path(report + ".n").write_text(str(mib * transfers))
        os.kill(peer.proc.pid, signal.SIGUSR1)
        time.sleep(0.3)
        client = Counter()
        client.install()
        client.start()
        for _ in range(transfers):
            with peer.connect() as s:
                _send_bulk(s, total)
        result = {"client": client.report(mib * transfers, top)}
        sys.setprofile(None)
        threading.setprofile(None)
        time.sleep(0.5)  # (the last settlement's thread ends)
        os.kill(peer.proc.pid, signal.SIGUSR2)
        result["server"] = _wait_for(report)
    finally:
        peer.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    report = os.environ.get("DTP_CALLS_REPORT")
    if report is not None:
        _serve(report, sys.argv[1:8])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="MiB a transfer (default 64)")
    parser.add_argument("--transfers", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--plain", action="store_true", help="paid_bulk's peer (unmetered)")
    parser.add_argument(
        "--inside", action="store_true", help="rank functions by the calls made inside them"
    )
    args = parser.parse_args()
    if args.inside:
        os.environ["DTP_CALLS_INSIDE"] = "1"  # (the server's process, started below, too)
    r = measure(args.mb, args.transfers, args.top, args.plain)
    for side in ("client", "server"):
        got = r[side]
        print(f"{side}: {got['calls']:.1f} calls per MiB ({got['python']:.1f} Python)")
        for name, calls in got["top"]:
            print(f"  {calls:8.2f}  {name}")


if __name__ == "__main__":
    main()
