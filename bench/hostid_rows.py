"""Benchmark rows for connections by host ID on a paid service (LocalLedger file):

- ``hostid_connect_rate`` — connect by host ID (ledger open, handshake naming the
  connection), one 100-byte round trip, close (final receipt, ledger half-close; the
  server settles); peer: ``ssl`` connect + handshake + one round trip.
- ``paid_bulk`` — one-way 256 MiB through a metered connection (receipts in-band,
  the server's receipt gate on every read); peer: the same through an unmetered DTP
  connection.

The paid server runs in its own process: ``python bench/hostid_rows.py LEDGER_SPEC
PACKAGE|- STATE_DIR HOST_ID PORT SEED_HEX {sink,echo}``.
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
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dtp.socket
from bench.deposits import take_back_deposits
from bench.net import MB, Peer, _pingpong, _send_bulk, _tls_connect
from bench.workload import Workload
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.payments.metering import MeteringConfig

if TYPE_CHECKING:
    from tests.support.sui_network import StandInProcess

__all__ = ["HOSTID_ROWS", "hostid_connect_rate", "paid_bulk"]

ROOT = Path(__file__).resolve().parent.parent
_PORT = 7000
# 1 MIST per KiB; the allowance (min_deposit) is far above what one receipt interval
# spans, so a client that pays on cadence is never paused
_SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=1 << 24)
_DEPOSIT = 1 << 26


class _PaidPeer:
    """A host and its paid service on a ledger, served by another process: a LocalLedger
    file, or with ``sui_latency`` (seconds a transaction takes) the Sui node stand-in
    as a process of its own (tests/support/sui_network.py), both parties funded by its faucet."""

    def __init__(self, mode: str, sui_latency: float | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="dtp-bench-hostid-")
        seed = os.urandom(32)
        server = HostIdentity.from_private_bytes(seed, seed)
        self.client = HostIdentity.generate()
        self.node: StandInProcess | None = None
        self.ledger: Ledger
        if sui_latency is None:
            path = os.path.join(self.dir, "ledger.db")
            local = LocalLedger(path)
            local.faucet(self.client.sui_address, 1 << 60)
            self.ledger, spec, package = local, f"local:{path}", "-"
        else:
            from tests.support.sui_network import StandInProcess

            funds = {self.client.sui_address: 10**15, server.sui_address: 10**12}
            self.node = StandInProcess("--tx-latency", str(sui_latency), fund=funds)
            self.ledger = SuiLedger(SuiConfig(self.node.url, self.node.package_id))
            spec, package = self.node.spec, self.node.package_id
        self.host_id = self.ledger.create_host(server, server.noise_public)
        self.ledger.add_service(server, self.host_id, _PORT, mode, _SLA)
        # one spending cap for all connections, as a client would keep
        self.cap = self.ledger.create_spending_cap(self.client, 1 << 62)
        cmd = [sys.executable, __file__, spec, package, self.dir, self.host_id, str(_PORT)]
        cmd += [seed.hex(), mode]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline():
            self.close()
            raise RuntimeError("the paid benchmark server did not start")
        self.address = f"dtp://{self.host_id}:{_PORT}"

    def connect(self, metering: MeteringConfig | None = None) -> dtp.socket.DTPSocket:
        return dtp.socket.create_connection(
            self.address,
            timeout=30,
            ledger=self.ledger,
            identity=self.client,
            deposit=_DEPOSIT,
            cap_id=self.cap,
            metering=metering,
        )

    def close(self) -> None:
        if hasattr(self, "proc"):
            self.proc.kill()
            self.proc.wait(10)
            if self.proc.stdout:
                self.proc.stdout.close()
        take_back_deposits(self.ledger, self.client)
        self.ledger.close()
        if self.node is not None:
            self.node.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def hostid_connect_rate(per_op: int = 10) -> Workload:
    paid = _PaidPeer("echo")
    tls = Peer("tls-blocking", "echo")

    def ours() -> None:
        for _ in range(per_op):
            with paid.connect() as sock:
                _pingpong(sock, 1)

    def peer() -> None:
        for _ in range(per_op):
            with _tls_connect(tls) as sock:
                _pingpong(sock, 1)

    def close() -> None:
        paid.close()
        tls.close()

    return Workload(
        "hostid_connect_rate",
        "conn/s",
        per_op,
        ours,
        peer,
        bar=0.8,
        note="dtp:// connect incl. ledger open/close, receipt, 1 round trip vs ssl connect",
        close=close,
    )


def paid_bulk(total: int = 256 << 20) -> Workload:
    paid = _PaidPeer("sink")
    plain = Peer("dtp-blocking", "sink")

    def ours() -> None:
        with paid.connect() as sock:
            _send_bulk(sock, total)

    def peer() -> None:
        with dtp.socket.create_connection(plain.endpoint, server_key=plain.key) as sock:
            _send_bulk(sock, total)

    def close() -> None:
        paid.close()
        plain.close()

    return Workload(
        "paid_bulk",
        "MB/s",
        total / MB,
        ours,
        peer,
        bar=0.95,
        note="one-way 256 MiB, metered by host ID (a receipt per 128 MiB) vs unmetered DTP",
        close=close,
    )


HOSTID_ROWS: dict[str, Callable[[], Workload]] = {
    "hostid_connect_rate": hostid_connect_rate,
    "paid_bulk": paid_bulk,
}


# -- the paid server process -----------------------------------------------------------------


def _serve(
    spec: str, package: str, state: str, host_id: str, port: int, seed_hex: str, mode: str
) -> None:
    from dtp.hostid.paid import PaidSocket
    from dtp.ledger import open_ledger

    seed = bytes.fromhex(seed_hex)
    identity = HostIdentity.from_private_bytes(seed, seed)

    def handle(sock: PaidSocket) -> None:
        buf = bytearray(1 << 20)
        if mode == "echo":
            while n := sock.recv_into(buf):
                sock.sendall(memoryview(buf)[:n])
            return
        header = b""
        while len(header) < 8:
            data = sock.recv(8 - len(header))
            if not data:
                return
            header += data
        expected, got = int.from_bytes(header, "big"), 0
        while got < expected:
            n = sock.recv_into(buf, min(len(buf), expected - got))
            if not n:
                return
            got += n
        sock.sendall(str(got).encode())
        sock.recv(1)  # until the client closes

    server = dtp.socket.serve(
        host_id,
        port,
        handle,
        ledger=open_ledger(spec, package=None if package == "-" else package),
        identity=identity,
        receipts=os.path.join(state, "receipts.db"),
    )
    print(json.dumps({"port": server.address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    spec, package, state, host_id, port, seed_hex, mode = sys.argv[1:8]
    _serve(spec, package, state, host_id, int(port), seed_hex, mode)
