"""A self-contained run of the services daemon for ``dtp demo``.

:func:`run_daemon_step` starts, in a temporary directory on a fresh LocalLedger file:
a plain TCP echo server (the "existing" backend, in a thread), a ``dtp daemon``
process exposing it as a paid service, and a ``dtp daemon`` process forwarding a local
port to that service. An ordinary TCP client then sends data through the forwarder and
checks the echo; several clients run at once. Both daemons are stopped with SIGTERM
(they drain, the provider claims the client's last receipt, the rest is refunded), and
the numbers for the demo's summary are returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtp.daemon._state import read_status
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger

__all__ = ["DaemonStepResult", "run_daemon_step"]

SUI = 1_000_000_000
#: The demo service's prices: per KiB (both directions) and per tunnel (a request).
PRICE_PER_KIB = 10
PRICE_PER_TUNNEL = 100


@dataclass(frozen=True)
class DaemonStepResult:
    """What the demo prints about the daemon run."""

    host_id: str
    service: str
    """``dtp://0x…:7000``."""
    bytes_each_way: int
    seconds: float
    tunnels: int
    intact: bool
    """Every echo matched what was sent (SHA-256)."""
    fees_earned: int
    fees_claimed: int
    refunded: int
    conserved: bool
    provider_balance: tuple[int, int] = (0, 0)
    """The provider's MIST before the traffic and after settlement."""
    client_balance: tuple[int, int] = (0, 0)
    """The paying client's MIST before its connection opened and after settlement."""
    denied: bool = False
    """A client on the host's deny list got its TCP connection closed, no data through."""
    denied_paid_nothing: bool = False
    """The denied client's balance did not move (refused before any money moved)."""

    @property
    def megabytes_per_second(self) -> float:
        return 2 * self.bytes_each_way / 1e6 / self.seconds if self.seconds else 0.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := sock.recv(1 << 20):
            sock.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: the daemon connects a backend
    # connection per tunnel, all clients at once, and a SYN beyond the backlog is
    # dropped and sent again only after TCP's initial 1 s timeout
    request_queue_size = 128


_HELD = (signal.SIGINT, signal.SIGTERM)


def _start(config: Path, procs: list[subprocess.Popen[str]]) -> dict[str, Any]:
    """Start a daemon and return its ready line. It joins ``procs`` (which the caller
    stops) before the wait, so that an interrupt while it starts leaves no daemon
    running: SIGINT and SIGTERM are held from before the process is made until it is
    in ``procs``. (An interrupt inside Popen, after the fork, would lose the Popen
    object: the daemon would never be stopped, go on after the demo had removed its
    directory, recreate part of it and fail on the empty ledger it found there.)"""
    held: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _HELD:
            # (Python-level handlers: a child's caught signals go back to their
            # defaults at exec, so the daemon is not started with them held)
            previous[sig] = signal.signal(sig, lambda n, _f: held.append(n))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            # the demo's identities are unencrypted: a passphrase variable of the
            # caller's (set but empty: refused) is not theirs
            env={k: v for k, v in os.environ.items() if k != "DTP_PASSPHRASE"},
        )
        procs.append(proc)
    finally:
        for number, handler in previous.items():
            # (None: a handler not set from Python, the default to the interpreter)
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
    for caught in held[:1]:
        # delivered now, as it would have been: to the handler it found in place
        signal.raise_signal(caught)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise RuntimeError(f"dtp daemon --config {config} did not start")
    return dict(json.loads(line))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def _stop_all(procs: list[subprocess.Popen[str]]) -> None:
    """Stop the daemons, the last started first (the forwarders' final receipts reach
    the provider before it stops and claims them). A second interrupt while they drain
    (Ctrl-C pressed again, a supervisor's second SIGTERM) ends the waiting, not the
    stopping: those still running are killed before it goes on. (Breaking out of the
    loop would leave the daemons not yet stopped running after the demo had removed
    their directory, recreating part of it.)"""
    try:
        for proc in reversed(procs):
            _stop(proc)
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        raise


def _roundtrip(address: tuple[str, int], data: bytes) -> bool:
    with socket.create_connection(address, timeout=60) as sock:

        def send() -> None:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        digest = hashlib.sha256()
        received = 0
        while chunk := sock.recv(1 << 20):
            digest.update(chunk)
            received += len(chunk)
        sender.join()
    return received == len(data) and digest.digest() == hashlib.sha256(data).digest()


def _refused(address: tuple[str, int]) -> bool:
    """An ordinary TCP client's view of a refused tunnel: the connection ends with no
    echo (closed or reset)."""
    try:
        with socket.create_connection(address, timeout=30) as sock:
            sock.sendall(b"let me in")
            return sock.recv(64) == b""
    except ConnectionError:
        return True


def run_daemon_step(
    quick: bool = False, say: Callable[[str], None] | None = None
) -> DaemonStepResult:
    """Run the daemon demo (see the module docs); ``say`` receives progress lines."""
    tell = say or (lambda _: None)
    size = (2 if quick else 16) << 20
    clients = 4 if quick else 8
    with tempfile.TemporaryDirectory(prefix="dtp-daemon-demo-") as tmp_name:
        tmp = Path(tmp_name)
        provider, client = HostIdentity.generate(), HostIdentity.generate()
        mallory = HostIdentity.generate()
        provider.save(tmp / "provider.key")
        client.save(tmp / "client.key")
        mallory.save(tmp / "mallory.key")
        backend = _EchoServer(("127.0.0.1", 0), _Echo)
        threading.Thread(target=backend.serve_forever, daemon=True).start()
        backend_port = backend.server_address[1]
        tell(f"an ordinary TCP echo server listens on 127.0.0.1:{backend_port}")
        (tmp / "provider.toml").write_text(
            f'[daemon]\nledger = "ledger.sqlite"\nidentity = "provider.key"\n'
            f'state_dir = "provider-state"\nfaucet = {SUI}\nlog_level = "warning"\n\n'
            f'[[service]]\nname = "echo"\nport = 7000\nbackends = ["127.0.0.1:{backend_port}"]\n'
            f"price_per_kib = {PRICE_PER_KIB}\nprice_per_request = {PRICE_PER_TUNNEL}\n"
            "min_deposit = 5000000\n\n"
            f'[firewall]\ndeny = ["{mallory.sui_address}"]\n'
        )
        procs: list[subprocess.Popen[str]] = []
        try:
            ready = _start(tmp / "provider.toml", procs)
            host_id = ready["host_id"]
            service = f"dtp://{host_id}:7000"
            tell(
                f"dtp daemon exposes it as {service[:24]}…:7000 ({PRICE_PER_KIB} MIST/KiB "
                f"both ways + {PRICE_PER_TUNNEL} MIST per tunnel)"
            )
            (tmp / "client.toml").write_text(
                f'[daemon]\nledger = "ledger.sqlite"\nidentity = "client.key"\n'
                f'state_dir = "client-state"\nfaucet = {SUI}\nlog_level = "warning"\n\n'
                f'[[forward]]\nname = "echo"\nlisten = "127.0.0.1:0"\ntarget = "{service}"\n'
                "deposit = 50000000\nreceipt_every = 2097152\n"
            )
            fready = _start(tmp / "client.toml", procs)
            ledger = LocalLedger(tmp / "ledger.sqlite")
            provider_before = ledger.balance(provider.sui_address)
            client_before = ledger.balance(client.sui_address)
            host, port = fready["forwards"]["echo"].rsplit(":", 1)
            address = (host, int(port))
            tell(f"a forwarder listens on {host}:{port}; plain TCP clients connect there")
            payloads = [os.urandom(size // clients) for _ in range(clients)]
            start = time.perf_counter()
            results: list[bool] = []
            threads = [
                threading.Thread(target=lambda d=d: results.append(_roundtrip(address, d)))
                for d in payloads
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - start
            intact = len(results) == clients and all(results)
            tell(f"{clients} clients echoed {size:,} bytes through the tunnel in {seconds:.2f} s")
            # a client on the host's deny list: its forwarder is refused before any money
            # moves, and its local TCP client just sees the connection closed
            (tmp / "mallory.toml").write_text(
                f'[daemon]\nledger = "ledger.sqlite"\nidentity = "mallory.key"\n'
                f'state_dir = "mallory-state"\nfaucet = {SUI}\nlog_level = "error"\n\n'
                f'[[forward]]\nname = "echo"\nlisten = "127.0.0.1:0"\ntarget = "{service}"\n'
            )
            mready = _start(tmp / "mallory.toml", procs)
            mallory_before = ledger.balance(mallory.sui_address)
            mhost, mport = mready["forwards"]["echo"].rsplit(":", 1)
            denied = _refused((mhost, int(mport)))
            denied_paid_nothing = ledger.balance(mallory.sui_address) == mallory_before
            tell("a client on the host's deny list is refused; it paid nothing")
        finally:
            try:
                _stop_all(procs)
            finally:
                backend.shutdown()
                backend.server_close()
        status = read_status(tmp / "provider-state") or {}
        row = status.get("services", {}).get("echo", {})
        provider_after = ledger.balance(provider.sui_address)
        client_after = ledger.balance(client.sui_address)
        audit = ledger.audit()
        conserved = audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
        ledger.close()
        return DaemonStepResult(
            host_id=host_id,
            service=service,
            bytes_each_way=size,
            seconds=seconds,
            tunnels=int(row.get("tunnels", 0)),
            intact=intact,
            fees_earned=int(row.get("fees_earned", 0)),
            fees_claimed=int(row.get("fees_claimed", 0)),
            refunded=int(row.get("refunded", 0)),
            conserved=conserved,
            provider_balance=(provider_before, provider_after),
            client_balance=(client_before, client_after),
            denied=denied,
            denied_paid_nothing=denied_paid_nothing,
        )


if __name__ == "__main__":
    print(run_daemon_step(quick="--quick" in sys.argv, say=print))
