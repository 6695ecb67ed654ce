"""CPU time per round trip of the one-CPU rows, each side measured on its own.

    python bench/cpu_per_call.py [--rounds N] [--rows pingpong,pingpong_tls,rpc,rpc_tls]
    python bench/cpu_per_call.py --rounds 300 --rows connect,connect_tls,hostid_connect

The ``connect`` rows count one connection (connect, handshake, one 100-byte round trip,
close) as the operation: ``connect`` with a known key, ``connect_tls`` an ``ssl`` connect,
``hostid_connect`` by host ID through a LocalLedger file (``connect_rate`` and
``hostid_connect_rate``'s operations; the paid server on CPU 0 too). The ``ssl`` peer
serves each connection on a thread that ends with it, and an ended thread leaves
``/proc/PID/task``: read its server's usr + sys columns, not the schedstat figure.

A wall-clock ratio moves with whatever else the machine runs; the CPU a round trip
costs each process moves much less, so this is the figure to compare before and after
a change on a shared machine. Both processes run on CPU 0 (as the rows do); each side's
CPU is the sum of its threads' time on the CPU (``/proc/PID/task/*/schedstat``, ns),
split into user and system time from ``/proc/PID/stat``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dtp.socket
from bench.messaging_rows import PAYLOAD, _rpc_client, _Server, _tls_pingpong
from bench.net import Peer, _pingpong, _tls_connect
from dtp.messaging.rpc import RpcClient

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_ns(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # (a thread that ended since the listing)
    return total


def _user_sys(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def measure(op: Callable[[int], None], server_pid: int, rounds: int) -> dict[str, float]:
    op(max(1, min(rounds // 5, 500)))  # (warm up)
    me = os.getpid()
    before = _cpu_ns(me), _cpu_ns(server_pid), _user_sys(me), _user_sys(server_pid)
    start = time.perf_counter()
    op(rounds)
    wall = time.perf_counter() - start
    after = _cpu_ns(me), _cpu_ns(server_pid), _user_sys(me), _user_sys(server_pid)
    us = 1e6 / rounds
    return {
        "client_us": (after[0] - before[0]) / 1e3 / rounds,
        "client_user_us": (after[2][0] - before[2][0]) * us,
        "client_sys_us": (after[2][1] - before[2][1]) * us,
        "server_us": (after[1] - before[1]) / 1e3 / rounds,
        "server_user_us": (after[3][0] - before[3][0]) * us,
        "server_sys_us": (after[3][1] - before[3][1]) * us,
        "wall_us": wall * us,
    }


def row(name: str, rounds: int) -> dict[str, float]:
    if name in ("pingpong", "pingpong_tls"):
        peer = Peer("dtp-blocking" if name == "pingpong" else "tls-blocking", "echo", 0)
        try:
            if name == "pingpong":
                sock: object = dtp.socket.create_connection(peer.endpoint, server_key=peer.key)
            else:
                sock = _tls_connect(peer)
            try:
                return measure(lambda n: _pingpong(sock, n), peer.proc.pid, rounds)
            finally:
                sock.close()  # type: ignore[attr-defined]
        finally:
            peer.close()
    if name == "rpc":
        server = _Server("rpc", 0)
        try:
            dsock, rpc = _rpc_client(server)

            def calls(n: int, rpc: RpcClient = rpc) -> None:
                for _ in range(n):
                    rpc.call("echo", PAYLOAD)

            try:
                return measure(calls, server.proc.pid, rounds)
            finally:
                dsock.close()
        finally:
            server.close()
    if name == "rpc_tls":
        peer = Peer("tls-blocking", "echo", 0)
        try:
            tsock = _tls_connect(peer)
            try:
                return measure(lambda n: _tls_pingpong(tsock, n), peer.proc.pid, rounds)
            finally:
                tsock.close()
        finally:
            peer.close()
    if name in ("connect", "connect_tls"):
        peer = Peer("dtp-blocking" if name == "connect" else "tls-blocking", "echo", 0)

        def connects(n: int) -> None:
            for _ in range(n):
                if name == "connect":
                    s: object = dtp.socket.create_connection(peer.endpoint, server_key=peer.key)
                else:
                    s = _tls_connect(peer)
                with s:  # type: ignore[attr-defined]
                    _pingpong(s, 1)

        try:
            return measure(connects, peer.proc.pid, rounds)
        finally:
            peer.close()
    if name == "hostid_connect":
        from bench.hostid_rows import _PaidPeer

        paid = _PaidPeer("echo")
        os.sched_setaffinity(paid.proc.pid, {0})

        def paid_connects(n: int) -> None:
            for _ in range(n):
                with paid.connect() as s:
                    _pingpong(s, 1)

        try:
            return measure(paid_connects, paid.proc.pid, rounds)
        finally:
            paid.close()
    raise SystemExit(f"unknown row {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--rows", default="pingpong,pingpong_tls,rpc")
    args = parser.parse_args()
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        print(
            f"{'row':<14} {'client':>8} {'(usr':>6} {'sys)':>6} {'server':>8} {'(usr':>6} "
            f"{'sys)':>6} {'wall':>8}  µs per round trip"
        )
        for name in args.rows.split(","):
            r = row(name, args.rounds)
            print(
                f"{name:<14} {r['client_us']:8.1f} {r['client_user_us']:6.1f} "
                f"{r['client_sys_us']:6.1f} {r['server_us']:8.1f} {r['server_user_us']:6.1f} "
                f"{r['server_sys_us']:6.1f} {r['wall_us']:8.1f}"
            )
    finally:
        os.sched_setaffinity(0, previous)


if __name__ == "__main__":
    main()
