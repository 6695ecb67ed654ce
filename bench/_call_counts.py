"""The call counting shared by bench/connect_calls.py and bench/bulk_calls.py.

A profile hook in every thread of each side's process (:class:`Counter`), the server
being this file run in a process of its own: ``plain SERVICE`` for bench/netpeers.py's
blocking server, or bench/hostid_rows.py's paid server's arguments, with
$DTP_CALLS_REPORT naming where its counts go. :func:`count` runs an operation N times
against it and returns each side's calls per operation.
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
from collections.abc import Callable
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


def _serve(report: str, args: list[str]) -> None:
    """A server with its calls counted between SIGUSR1 and SIGUSR2, per the operations'
    count written beside ``report``."""
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
    if args[0] == "plain":
        serve_dtp_blocking(args[1])
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
    """bench/netpeers.py's blocking ``service`` ("echo", "sink"), run by this file with
    its calls counted."""

    def __init__(self, service: str) -> None:
        cmd = [sys.executable, __file__, "plain", service]
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


def count(
    service: str,
    plain: bool,
    n: int,
    top: int,
    warm_up: Callable[[Any], None],
    operation: Callable[[Any], None],
) -> dict[str, Any]:
    """Each side's calls per operation: ``warm_up(peer)``, then ``operation(peer)``
    counted, against ``service`` served plain or paid; ``n`` is the operations (or units,
    as MiB) that ``operation`` does, to divide the counts by."""
    import bench.hostid_rows as rows

    workdir = tempfile.mkdtemp(prefix="dtp-calls-")
    report = os.path.join(workdir, "server.json")
    # the paid server's process runs this file, which counts its calls (see _serve)
    rows_file = rows.__file__
    rows.__file__ = str(Path(__file__).resolve())
    os.environ["DTP_CALLS_REPORT"] = report
    os.environ["DTP_CALLS_TOP"] = str(top)
    try:
        peer: Any = _PlainPeer(service) if plain else rows._PaidPeer(service)
    finally:
        rows.__file__ = rows_file
        del os.environ["DTP_CALLS_REPORT"]
    try:
        warm_up(peer)
        Path(report + ".n").write_text(str(n))
        os.kill(peer.proc.pid, signal.SIGUSR1)
        time.sleep(0.3)
        client = Counter()
        client.install()
        client.start()
        operation(peer)
        result = {"client": client.report(n, top)}
        sys.setprofile(None)
        threading.setprofile(None)
        time.sleep(0.5)  # (the last settlement's thread ends)
        os.kill(peer.proc.pid, signal.SIGUSR2)
        result["server"] = _wait_for(report)
    finally:
        peer.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def parse_args(parser: argparse.ArgumentParser, top: int, plain: str) -> argparse.Namespace:
    """``parser``'s arguments with the counting's own (``--top``, ``--plain`` with the
    help ``plain``, ``--inside``), ``--inside`` set for the server's process too."""
    parser.add_argument("--top", type=int, default=top)
    parser.add_argument("--plain", action="store_true", help=plain)
    parser.add_argument(
        "--inside", action="store_true", help="rank functions by the calls made inside them"
    )
    args = parser.parse_args()
    if args.inside:
        os.environ["DTP_CALLS_INSIDE"] = "1"  # (the server's process, started later, too)
    return args


if __name__ == "__main__":
    _serve(os.environ["DTP_CALLS_REPORT"], sys.argv[1:8])
