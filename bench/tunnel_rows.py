"""Tunnel rows of bench/compare.py: TCP through the services daemon against a
TLS-terminating Python relay pair, each hop its own process on 127.0.0.1.

    ours:  client → forwarder (dtp daemon) → DTP → daemon (dtp daemon) → backend
    peer:  client → relay-front → TLS 1.3 → relay-back → backend

Both paths end at the same backend process and are driven by the same client code.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.workload import Floor, Workload

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
CHUNK = 64 * 1024


class _Proc:
    """A benchmark process that prints one JSON line (or two for relay-back)."""

    def __init__(self, cmd: list[str], lines: int = 1) -> None:
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
        )
        assert self.proc.stdout is not None
        self.info: dict[str, Any] = {}
        for _ in range(lines):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"benchmark process {cmd[2:]} did not start")
            self.info.update(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _peer(*args: str, lines: int = 1) -> _Proc:
    return _Proc([sys.executable, str(ROOT / "bench" / "tunnelpeers.py"), *args], lines)


class _Paths:
    """The backend, the DTP tunnel and the TLS relay pair in front of it."""

    def __init__(self, backend_kind: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="dtp-bench-tunnel-"))
        self.procs: list[_Proc] = []
        try:
            backend = self._start(_peer(backend_kind))
            port = backend.info["port"]
            daemon_toml = self.tmp / "daemon.toml"
            daemon_toml.write_text(
                '[daemon]\nledger = "l.sqlite"\nidentity = "p.key"\nstate_dir = "d"\n'
                f'faucet = 1000000000\nlog_level = "warning"\n\n[[service]]\nname = "b"\n'
                f'port = 80\nbackends = ["127.0.0.1:{port}"]\n'
            )
            daemon = self._start(self._daemon(daemon_toml))
            forward_toml = self.tmp / "forward.toml"
            forward_toml.write_text(
                '[daemon]\nledger = "l.sqlite"\nidentity = "c.key"\nstate_dir = "f"\n'
                'faucet = 1000000000\nlog_level = "warning"\n\n[[forward]]\nname = "b"\n'
                f'listen = "127.0.0.1:0"\ntarget = "dtp://{daemon.info["host_id"]}:80"\n'
            )
            forward = self._start(self._daemon(forward_toml))
            host, fport = forward.info["forwards"]["b"].rsplit(":", 1)
            self.ours = (host, int(fport))
            back = self._start(_peer("relay-back", str(port), lines=2))
            front = self._start(_peer("relay-front", str(back.info["port"]), back.info["cert"]))
            self.peer = ("127.0.0.1", int(front.info["port"]))
        except BaseException:
            self.close()
            raise

    def _daemon(self, config: Path) -> _Proc:
        return _Proc([sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)])

    def _start(self, proc: _Proc) -> _Proc:
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _bulk(address: tuple[str, int], total: int) -> None:
    chunk = memoryview(os.urandom(CHUNK))
    with socket.create_connection(address) as sock:
        sock.sendall(total.to_bytes(8, "big"))
        for _ in range(total // CHUNK):
            sock.sendall(chunk)
        reply = sock.recv(64)
        assert int(reply) == total, reply


def tunnel_bulk(total: int = 256 << 20) -> Workload:
    """One-way ``total`` bytes through the tunnel, MB/s."""
    paths = _Paths("sink")
    return Workload(
        "tunnel_bulk",
        "MB/s",
        total / MB,
        lambda: _bulk(paths.ours, total),
        lambda: _bulk(paths.peer, total),
        bar=Floor(1.2),
        note="one-way 256 MiB: forwarder→DTP→daemon→backend vs TLS relay pair",
        close=paths.close,
    )


def _requests(state: dict[str, http.client.HTTPConnection], key: str, count: int) -> None:
    conn = state[key]
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    for _ in range(count):
        conn.request("POST", "/", body, {"Content-Type": "application/json"})
        reply = conn.getresponse().read()
        assert reply.startswith(b'{"jsonrpc"'), reply


def tunnel_requests(count: int = 2000) -> Workload:
    """Small HTTP requests per second on one kept-alive connection through the tunnel."""
    paths = _Paths("http")
    state = {
        "ours": http.client.HTTPConnection(*paths.ours, timeout=30),
        "peer": http.client.HTTPConnection(*paths.peer, timeout=30),
    }

    def close() -> None:
        for conn in state.values():
            conn.close()
        paths.close()

    def make(key: str) -> Callable[[], None]:
        return lambda: _requests(state, key, count)

    return Workload(
        "tunnel_requests",
        "req/s",
        count,
        make("ours"),
        make("peer"),
        bar=Floor(1.2),
        note="HTTP/1.1 keep-alive POSTs through forwarder→DTP→daemon vs TLS relay pair",
        close=close,
    )


TUNNEL_ROWS: dict[str, Callable[[], Workload]] = {
    "tunnel_bulk": tunnel_bulk,
    "tunnel_requests": tunnel_requests,
}
