"""Benchmark rows on Sui: the Sui node stand-in (dtp/testing/sui_node) as a process of its own,
each transaction answered after ``--sui-latency`` seconds (compare.py's option, or
``$DTP_BENCH_SUI_LATENCY``; 0.3 by default, a busy network's order), against the same
workload on a LocalLedger file.

- ``hostid_connect_rate_sui`` — connect by host ID to a paid echo service, one 100-byte
  round trip, close (bench/hostid_rows.py's ``hostid_connect_rate``); no bar.
- ``daemon_bulk_sui`` — one-way 256 MiB through the paid daemon pair (forwarder → DTP →
  provider → backend, a priced service, a deposit that covers every round), the
  daemons' ledger on the stand-in vs on a LocalLedger file: bar 0.9, the ledger kept off
  the data path (docs/escrow.md §6.1).

The stand-in is not Sui (docs/sui.md "The node stand-in"): these rows measure what DTP
does around a slow ledger, not a network.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.hostid_rows import _PaidPeer
from bench.net import _pingpong
from bench.tunnel_rows import MB, _bulk, _peer, _Proc
from bench.workload import Floor, Workload
from dtp.identity.keys import HostIdentity

__all__ = ["SUI_ROWS", "daemon_bulk_sui", "hostid_connect_rate_sui", "sui_latency"]

#: The environment variable compare.py's ``--sui-latency`` sets.
LATENCY_ENV = "DTP_BENCH_SUI_LATENCY"
DEFAULT_LATENCY = 0.3
_SUI = 1_000_000_000


def sui_latency() -> float:
    """Seconds a stand-in transaction takes: ``$DTP_BENCH_SUI_LATENCY``, else 0.3."""
    text = os.environ.get(LATENCY_ENV, "").strip()
    if not text:
        return DEFAULT_LATENCY
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 60:
        raise ValueError(f"{LATENCY_ENV} must be seconds from 0 to under 60, got {text!r}")
    return value


def hostid_connect_rate_sui(per_op: int = 2, latency: float | None = None) -> Workload:
    """``per_op`` connections by host ID per call, on the stand-in (ours) and on a
    LocalLedger file (peer)."""
    latency = sui_latency() if latency is None else latency
    sui = _PaidPeer("echo", sui_latency=latency)
    try:
        local = _PaidPeer("echo")
    except BaseException:
        sui.close()
        raise

    def connect(paid: _PaidPeer) -> Callable[[], None]:
        def op() -> None:
            for _ in range(per_op):
                with paid.connect() as sock:
                    _pingpong(sock, 1)

        return op

    def close() -> None:
        sui.close()
        local.close()

    return Workload(
        "hostid_connect_rate_sui",
        "conn/s",
        per_op,
        connect(sui),
        connect(local),
        note=f"dtp:// connect + 1 round trip + close, ledger on the Sui stand-in at "
        f"{latency:g} s a transaction vs a LocalLedger file: the open (before the "
        "handshake: SuiLedger signs no open ahead) and the close's half-close, one "
        "transaction each, dominate",
        close=close,
    )


class _DaemonPair:
    """The backend, a provider daemon serving it as a priced service and a forwarder in
    front of it, each a process; their ledger is ``ledger`` (TOML lines)."""

    def __init__(self, tmp: Path, ledger: str, deposit: int) -> None:
        self.procs: list[_Proc] = []
        try:
            backend = self._start(_peer("sink"))
            provider = tmp / "provider.toml"
            provider.write_text(
                f'[daemon]\n{ledger}identity = "p.key"\nstate_dir = "p"\nlog_level = "warning"\n\n'
                '[[service]]\nname = "b"\nport = 80\n'
                f'backends = ["127.0.0.1:{backend.info["port"]}"]\n'
                f"price_per_kib = 1\nmin_deposit = {deposit // 2}\n"
            )
            daemon = self._start(self._daemon(provider))
            forwarder = tmp / "forwarder.toml"
            forwarder.write_text(
                f'[daemon]\n{ledger}identity = "c.key"\nstate_dir = "c"\nlog_level = "warning"\n\n'
                '[[forward]]\nname = "b"\nlisten = "127.0.0.1:0"\n'
                f'target = "dtp://{daemon.info["host_id"]}:80"\ndeposit = {deposit}\n'
            )
            forward = self._start(self._daemon(forwarder))
            host, port = forward.info["forwards"]["b"].rsplit(":", 1)
            self.address = (host, int(port))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _daemon(config: Path) -> _Proc:
        return _Proc([sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)])

    def _start(self, proc: _Proc) -> _Proc:
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.close()


def daemon_bulk_sui(total: int = 256 << 20, latency: float | None = None) -> Workload:
    """One-way ``total`` bytes through the paid daemon pair, MB/s: ledger on the stand-in
    (ours) vs on a LocalLedger file (peer)."""
    from tests.support.sui_network import StandInProcess

    latency = sui_latency() if latency is None else latency
    # 1 MIST a KiB: a deposit of 4 SUI covers 16 TiB, every round of any run
    deposit = 4 * _SUI
    tmp = Path(tempfile.mkdtemp(prefix="dtp-bench-daemon-sui-"))
    closers: list[Callable[[], None]] = [lambda: shutil.rmtree(tmp, ignore_errors=True)]

    def close() -> None:
        for closer in reversed(closers):
            closer()

    try:
        keys = {}
        for side in ("sui", "local"):
            (tmp / side).mkdir()
            for name in ("p", "c"):
                identity = HostIdentity.generate()
                identity.save(tmp / side / f"{name}.key")
                keys[side, name] = identity.sui_address
        funds = {keys["sui", "p"]: 10 * _SUI, keys["sui", "c"]: 10 * deposit}
        node = StandInProcess("--tx-latency", str(latency), fund=funds, state=tmp / "node")
        closers.append(node.close)
        sui = _DaemonPair(
            tmp / "sui", f'ledger = "{node.spec}"\nsui_package = "{node.package_id}"\n', deposit
        )
        closers.append(sui.close)
        local = _DaemonPair(
            tmp / "local", f'ledger = "l.sqlite"\nfaucet = {10 * deposit}\n', deposit
        )
        closers.append(local.close)
    except BaseException:
        close()
        raise
    return Workload(
        "daemon_bulk_sui",
        "MB/s",
        total / MB,
        lambda: _bulk(sui.address, total),
        lambda: _bulk(local.address, total),
        bar=Floor(0.95),
        note=f"one-way 256 MiB through the paid daemon pair, its ledger on the Sui stand-in "
        f"at {latency:g} s a transaction vs a LocalLedger file (the ledger off the data path)",
        close=close,
    )


SUI_ROWS: dict[str, Callable[[], Workload]] = {
    "hostid_connect_rate_sui": hostid_connect_rate_sui,
    "daemon_bulk_sui": daemon_bulk_sui,
}
