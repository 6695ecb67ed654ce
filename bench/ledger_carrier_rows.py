"""Benchmark row ``ledger_carrier_bulk``: what IP hiding costs.

One host process serves the same sink over both carriers (its TCP endpoint and the
ledger carrier) on one LocalLedger file. Ours: connect by host ID with
``carrier="ledger"`` and send ``total`` bytes one way (records through ``pipe::send``
on the ledger); peer: the same bytes, connecting by host ID over the direct TCP carrier.
Each op includes the ledger connect (open_connection, and for ours the pipes) and the
handshake. Report only (no bar).

    python -m bench.ledger_carrier_rows serve LEDGER_PATH   # the host process
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import dtp.socket
from bench.deposits import take_back_deposits
from bench.workload import Workload
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger

__all__ = ["ledger_carrier_bulk"]

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
CHUNK = 64 * 1024
PORT = 9
_SLA = Sla(0, 0, 1)
_HOST = HostIdentity.from_private_bytes(b"\x61" * 32, b"\x61" * 32)


def _sink(sock: dtp.socket.DTPSocket) -> None:
    """Read an 8-byte length, then that many bytes; reply with the count."""
    header = b""
    while len(header) < 8:
        data = sock.recv(8 - len(header))
        if not data:
            return
        header += data
    total, got = int.from_bytes(header, "big"), 0
    while got < total:
        data = sock.recv(1 << 20)
        if not data:
            break
        got += len(data)
    sock.sendall(str(got).encode())
    sock.recv(1)  # until the client closes


def serve(path: str) -> None:
    """The host: a Host and service on the ledger, one server on both carriers."""
    ledger = LocalLedger(path)
    host_id = ledger.create_host(_HOST, _HOST.noise_public)
    ledger.add_service(_HOST, host_id, PORT, "sink", _SLA)
    server = dtp.socket.create_server(
        ("127.0.0.1", 0),
        identity=_HOST,
        ledger=ledger,
        host_id=host_id,
        port=PORT,
        carriers=("tcp", "ledger"),
    )
    ledger.set_endpoints(_HOST, host_id, [f"tcp://127.0.0.1:{server.address[1]}"])
    print(json.dumps({"host_id": host_id}), flush=True)
    server.serve_forever(_sink)


def _send(sock: dtp.socket.DTPSocket, total: int) -> None:
    chunk = memoryview(os.urandom(CHUNK))
    sock.sendall(total.to_bytes(8, "big"))
    for _ in range(total // CHUNK):
        sock.sendall(chunk)
    reply = sock.recv(64)
    assert int(reply) == total // CHUNK * CHUNK, reply


def ledger_carrier_bulk(total: int = 4 << 20) -> Workload:
    """One-way ``total`` bytes by host ID over the ledger carrier vs the TCP carrier."""
    directory = tempfile.mkdtemp(prefix="dtp-bench-ledger-carrier-")
    path = os.path.join(directory, "ledger.sqlite")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ledger_carrier_rows", "serve", path],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("the ledger carrier benchmark host did not start")
    address = f"dtp://{json.loads(line)['host_id']}:{PORT}"
    ledger = LocalLedger(path)
    client = HostIdentity.generate()
    ledger.faucet(client.sui_address, 10**15)
    cap = ledger.create_spending_cap(client, 10**15)

    def op(carrier: str) -> Callable[[], object]:
        def run() -> None:
            with dtp.socket.create_connection(
                address,
                timeout=60,
                ledger=ledger,
                identity=client,
                deposit=1,
                cap_id=cap,
                carrier=carrier,  # type: ignore[arg-type]
            ) as sock:
                _send(sock, total)

        return run

    def close() -> None:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        take_back_deposits(ledger, client)
        ledger.close()
        shutil.rmtree(directory, ignore_errors=True)

    return Workload(
        "ledger_carrier_bulk",
        "MB/s",
        total / MB,
        op("ledger"),
        op("tcp"),
        bar=None,
        note=(
            f"report only: one-way {total >> 20} MiB by host ID through pipe::send on a "
            "LocalLedger file (IP hiding) vs the direct TCP carrier, connect included"
        ),
        close=close,
    )


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "serve":
        sys.exit(__doc__)
    serve(sys.argv[2])
