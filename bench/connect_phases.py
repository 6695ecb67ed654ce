"""Where a connection by host ID spends its CPU, phase by phase, on each side.

    python bench/connect_phases.py [--connections N] [--plain]

Runs ``hostid_connect_rate``'s operation (connect by host ID to a paid echo service on a
LocalLedger file, one 100-byte round trip, close) N times and prints, for the client
and for the paid server's process, the CPU of each thread in all and the CPU spent in
each phase: the functions named in ``CLIENT_PHASES`` and ``SERVER_PHASES``, each timed
with ``time.thread_time`` (its own thread's CPU, so waits and the other threads' work
are not counted; nested phases count in each). ``--plain`` runs ``connect_rate``'s
operation instead (a known key, no ledger; the client's phases only). A phase whose
function is no longer where it is named is reported as missing, not measured.
docs/benchmark-history.md ("CPU per connection, by side and phase") holds a reading.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (each module is imported before any is wrapped: see Phases.wrap)
CLIENT_PHASES = [
    ("dtp.hostid._connect", "prepare_connecting_early"),
    ("dtp.hostid._connect", "resolve_service"),
    ("dtp.ledger.local._ledger", "LocalLedger.prepare_open_connection"),
    ("dtp.ledger.interface", "PendingOpen.execute"),
    ("dtp.hostid._payment_hook", "MeteredClient.__init__"),
    ("dtp.transport.blocking._connect", "connect"),
    ("dtp.identity._noise", "Handshake.read_message"),
    ("dtp.identity._noise", "Handshake.write_message"),
    ("dtp.transport.blocking._socket", "DTPSocket.sendall"),
    ("dtp.transport.blocking._socket", "DTPSocket.recv"),
    ("dtp.transport.blocking._socket", "DTPSocket.close"),
]
SERVER_PHASES = [
    ("dtp.transport.blocking._server", "DTPServer._serve_one"),
    ("dtp.transport.blocking._server", "DTPServer._handshake"),
    ("dtp.transport.blocking._server", "DTPServer._run_hook"),
    ("dtp.hostid._admission", "while_opening"),
    ("dtp.ledger.local._reads", "LedgerReads.connection_view"),
    ("dtp.ledger.local._reads", "LedgerReads.change_marker"),
    ("dtp.identity._noise", "Handshake.read_message"),
    ("dtp.identity._noise", "Handshake.write_message"),
    ("dtp.hostid.paid._blocking_server", "served_refusal"),
    ("dtp.hostid.paid._blocking_server", "gate_for"),
    ("dtp.transport.blocking._socket", "DTPSocket.recv_into"),
    ("dtp.hostid.paid._blocking_server", "PaidServer._end"),
    ("dtp.payments._settlement", "_read_end"),
    ("dtp.ledger.local._ledger", "LocalLedger.settle_with_receipt"),
]


class Phases:
    """Thread CPU spent in wrapped functions, by name."""

    def __init__(self) -> None:
        self.cpu: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.missing: list[str] = []

    def wrap(self, module: str, qualname: str) -> None:
        try:
            owner: Any = importlib.import_module(module)
            *path, name = qualname.split(".")
            for part in path:
                owner = getattr(owner, part)
            fn = getattr(owner, name)
        except (ImportError, AttributeError):
            self.missing.append(f"{module}.{qualname}")
            return
        cpu, calls = self.cpu, self.calls

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu[qualname] += time.thread_time() - start
                calls[qualname] += 1

        setattr(owner, name, timed)
        if not path:
            # a function imported by name elsewhere (dtp.hostid._blocking's connect) is
            # called through that name: it is rebound there too
            for mod in list(sys.modules.values()):
                ours = getattr(mod, "__name__", "").startswith(("dtp.", "bench."))
                if ours and getattr(mod, name, None) is fn:
                    setattr(mod, name, timed)

    def clear(self) -> None:
        self.cpu.clear()
        self.calls.clear()

    def table(self, n: int) -> dict[str, tuple[float, float]]:
        """Phase -> (µs per connection, calls per connection)."""
        return {k: (v / n * 1e6, self.calls[k] / n) for k, v in self.cpu.most_common()}


def _threads_cpu_ns(pid: int) -> dict[str, int]:
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                out[task] = int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return out


# -- the paid server: this file run as bench/hostid_rows.py would be, with
# $DTP_PHASES_REPORT naming where its phases go ------------------------------------------


def _serve(report: str, args: list[str]) -> None:
    import bench.hostid_rows as rows
    import dtp.hostid.paid._blocking_server  # noqa: F401  (its imported names are rebound too)

    phases = Phases()
    for module, qualname in SERVER_PHASES:
        phases.wrap(module, qualname)

    def clear(*_: object) -> None:
        phases.clear()

    def dump(*_: object) -> None:
        names = {str(t.native_id): t.name for t in threading.enumerate()}
        with open(report, "w") as f:
            json.dump({"phases": phases.table(1), "missing": phases.missing, "names": names}, f)

    signal.signal(signal.SIGUSR1, clear)
    signal.signal(signal.SIGUSR2, dump)
    spec, package, state, host_id, port, seed_hex, mode = args
    rows._serve(spec, package, state, host_id, int(port), seed_hex, mode)


def _wait_for(path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return dict(json.load(f))
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise RuntimeError("the paid server did not report its phases")


def measure(connections: int, plain: bool = False) -> dict[str, Any]:
    """Each side's phases and threads, µs per connection (the server's only by host ID)."""
    import bench.hostid_rows as rows
    import dtp.hostid._blocking  # (its imported names are rebound too)
    import dtp.socket
    from bench.net import Peer, _pingpong

    client = Phases()
    for module, qualname in CLIENT_PHASES:
        client.wrap(module, qualname)
    result: dict[str, Any] = {}
    if plain:
        peer = Peer("dtp-blocking", "echo")

        def one() -> None:
            with dtp.socket.create_connection(peer.endpoint, server_key=peer.key) as s:
                _pingpong(s, 1)

        close: Callable[[], None] = peer.close
        server_pid = None
    else:
        workdir = tempfile.mkdtemp(prefix="dtp-phases-")
        report = os.path.join(workdir, "server.json")
        # the paid server process runs this file, with its phases wrapped
        rows_file = rows.__file__
        rows.__file__ = str(Path(__file__).resolve())
        os.environ["DTP_PHASES_REPORT"] = report
        try:
            paid = rows._PaidPeer("echo")
        finally:
            rows.__file__ = rows_file
            del os.environ["DTP_PHASES_REPORT"]

        def one() -> None:
            with paid.connect() as s:
                _pingpong(s, 1)

        def close() -> None:
            paid.close()
            shutil.rmtree(workdir, ignore_errors=True)

        server_pid = paid.proc.pid
        paid_report = report
    try:
        for _ in range(max(3, connections // 10)):  # (warm up)
            one()
        if server_pid is not None:
            os.kill(server_pid, signal.SIGUSR1)
            time.sleep(0.2)
            before = _threads_cpu_ns(server_pid)
        client.clear()
        start = time.thread_time()
        for _ in range(connections):
            one()
        result["client_us"] = (time.thread_time() - start) / connections * 1e6
        result["client"] = client.table(connections)
        result["missing"] = list(client.missing)
        if server_pid is not None:
            after = _threads_cpu_ns(server_pid)
            os.kill(server_pid, signal.SIGUSR2)
            got = _wait_for(paid_report)
            threads: collections.Counter[str] = collections.Counter()
            for task, ns in after.items():
                name = got["names"].get(task, f"thread {task} (ended)")
                threads[name] += (ns - before.get(task, 0)) / 1e3 / connections
            result["server_threads"] = dict(threads.most_common())
            result["server_us"] = sum(threads.values())
            result["server"] = {
                k: (v[0] / connections, v[1] / connections) for k, v in got["phases"].items()
            }
            result["missing"] += got["missing"]
    finally:
        close()
    return result


def _print(title: str, rows: dict[str, tuple[float, float]]) -> None:
    print(title)
    for name, (us, calls) in rows.items():
        print(f"  {name:48} {us:8.1f} µs  ({calls:.2f} calls)")


def main() -> None:
    report = os.environ.get("DTP_PHASES_REPORT")
    if report is not None:
        _serve(report, sys.argv[1:8])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    r = measure(args.connections, args.plain)
    _print(f"client: {r['client_us']:.1f} µs of its main thread per connection", r["client"])
    if "server" in r:
        print(f"server: {r['server_us']:.1f} µs per connection, by thread:")
        for name, us in r["server_threads"].items():
            print(f"  {name:48} {us:8.1f} µs")
        _print("server phases:", r["server"])
    for name in r["missing"]:
        print(f"missing (not measured): {name}")


if __name__ == "__main__":
    main()
