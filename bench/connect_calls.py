"""How many calls a connection by host ID makes on each side: counts, not time.

    python bench/connect_calls.py [--connections N] [--top K] [--plain]

Runs ``hostid_connect_rate``'s operation (connect by host ID to a paid echo service on a
LocalLedger file, one 100-byte round trip, close), or with ``--plain`` ``connect_rate``'s
(connect with a known key to bench/netpeers.py's blocking echo server, the same round
trip and close), N times and prints, per connection,
the calls the client's process and the paid server's process made (Python functions and
builtins, counted with a profile hook in every thread), the server's calls inside each
of ``SERVER_PHASES`` (nested ones counted in each) and the K functions called most on
each side (``--inside``: the K with the most calls made inside them, nested ones
included). A count does not move with the machine's load, as a CPU reading does
(``bench/connect_phases.py``); under the hook each call costs far more than without,
so the hook is set only for the connections counted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = str(Path(__file__).resolve().parent.parent) + "/"

# (a suffix of "file:qualname", as the counter names functions)
SERVER_PHASES = [
    ":DTPServer._handshake",
    ":PaidAdmission.__call__",
    ":LedgerReads.connection_view",
    ":_serve.<locals>.handle",
    ":PaidServer._end",
    ":PaidServer._settle",
    ":Ledger.settle_with_receipt",
]


class Counter:
    """Calls by function, each also counted in every Python function on its thread's
    stack (``inside``), while :attr:`on`."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.inside: collections.Counter[str] = collections.Counter()
        self.on = False
        self._stacks = threading.local()

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        stack: list[str] | None = getattr(self._stacks, "stack", None)
        if stack is None:
            stack = self._stacks.stack = []
        if event == "call":
            code = frame.f_code
            name = f"{code.co_filename.replace(ROOT, '')}:{code.co_qualname}"
            stack.append(name)
        elif event == "return":
            if stack:
                stack.pop()
            return
        elif event == "c_call":
            name = f"<builtin>:{getattr(arg, '__qualname__', repr(arg))}"
        else:
            return
        if self.on:
            self.calls[name] += 1
            for outer in set(stack):
                self.inside[outer] += 1

    def install(self) -> None:
        threading.setprofile(self.hook)
        sys.setprofile(self.hook)

    def start(self) -> None:
        self.calls.clear()
        self.inside.clear()
        self.on = True

    def report(self, n: int, top: int) -> dict[str, Any]:
        self.on = False
        ranked = self.inside if os.environ.get("DTP_CALLS_INSIDE") else self.calls
        total = sum(self.calls.values())
        builtin = sum(c for k, c in self.calls.items() if k.startswith("<builtin>"))
        phases = {
            suffix: sum(c for k, c in self.inside.items() if k.endswith(suffix)) / n
            for suffix in SERVER_PHASES
        }
        return {
            "calls": total / n,
            "python": (total - builtin) / n,
            "phases": phases,
            "top": [(k, c / n) for k, c in ranked.most_common(top)],
        }


# -- the paid server: this file run as bench/hostid_rows.py would be, with
# $DTP_CALLS_REPORT naming where its counts go -------------------------------------------


def _serve(report: str, args: list[str]) -> None:
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
        serve_dtp_blocking("echo")
        return
    spec, package, state, host_id, port, seed_hex, mode = args
    rows._serve(spec, package, state, host_id, int(port), seed_hex, mode)


def _wait_for(path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                return dict(json.load(f))
        time.sleep(0.05)
    raise RuntimeError("the paid server did not report its counts")


class _PlainPeer:
    """bench/netpeers.py's blocking echo server, run by this file with its calls counted."""

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


def measure(connections: int, top: int, plain: bool = False) -> dict[str, Any]:
    """Each side's calls per connection."""
    import bench.hostid_rows as rows
    from bench.net import _pingpong

    workdir = tempfile.mkdtemp(prefix="dtp-calls-")
    report = os.path.join(workdir, "server.json")
    rows_file = rows.__file__
    rows.__file__ = str(Path(__file__).resolve())
    os.environ["DTP_CALLS_REPORT"] = report
    os.environ["DTP_CALLS_TOP"] = str(top)
    try:
        paid: Any = _PlainPeer() if plain else rows._PaidPeer("echo")
    finally:
        rows.__file__ = rows_file
        del os.environ["DTP_CALLS_REPORT"]
    try:
        for _ in range(max(10, connections // 10)):  # (warm up)
            with paid.connect() as s:
                _pingpong(s, 1)
        Path(report + ".n").write_text(str(connections))
        os.kill(paid.proc.pid, signal.SIGUSR1)
        time.sleep(0.3)
        client = Counter()
        client.install()
        client.start()
        for _ in range(connections):
            with paid.connect() as s:
                _pingpong(s, 1)
        result = {"client": client.report(connections, top)}
        sys.setprofile(None)
        threading.setprofile(None)
        time.sleep(0.5)  # (the last settlement's thread ends)
        os.kill(paid.proc.pid, signal.SIGUSR2)
        result["server"] = _wait_for(report)
    finally:
        paid.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    report = os.environ.get("DTP_CALLS_REPORT")
    if report is not None:
        _serve(report, sys.argv[1:8])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--plain", action="store_true", help="connect_rate's operation")
    parser.add_argument(
        "--inside", action="store_true", help="rank functions by the calls made inside them"
    )
    args = parser.parse_args()
    if args.inside:
        os.environ["DTP_CALLS_INSIDE"] = "1"  # (the server's process, started below, too)
    r = measure(args.connections, args.top, args.plain)
    for side in ("client", "server"):
        got = r[side]
        print(f"{side}: {got['calls']:.0f} calls per connection ({got['python']:.0f} Python)")
        if side == "server":
            for name, calls in got["phases"].items():
                print(f"  inside {name.lstrip(':'):42} {calls:8.0f}")
        for name, calls in got["top"]:
            print(f"  {calls:8.1f}  {name}")


if __name__ == "__main__":
    main()
