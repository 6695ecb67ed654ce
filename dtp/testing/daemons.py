"""A pair of ``dtp daemon`` processes for tests (docs/daemon.md): a provider exposing the
application's TCP backends as a paid DTP service, and a forwarder giving local clients a
TCP address that reaches it by host ID -- both on one ledger (a LocalLedger file they
share, funded by its faucet, or a Sui node such as the stand-in).

    with daemon_pair(tmp_path, backends=["127.0.0.1:8080"]) as pair:
        with socket.create_connection(pair.forward) as sock:   # plain TCP, paid on DTP
            ...
        pair.ledger().audit()

The daemons are real processes running the same ``dtp`` package as the test (its
directory leads their ``PYTHONPATH``); each prints one JSON line once it serves, which
:class:`Daemon` keeps as :attr:`Daemon.info`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import dtp
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.testing.identities import identity

__all__ = ["DEFAULT_DAEMON_SLA", "Daemon", "DaemonPair", "daemon_pair"]

#: The service's terms unless given (MIST): 10 a KiB, 3 a request, a deposit of 2,000,000.
DEFAULT_DAEMON_SLA: Final = Sla(price_per_kib=10, price_per_request=3, min_deposit=2_000_000)
#: MIST each daemon's identity gets from a LocalLedger file's faucet.
FUNDS: Final = 10 * 10**9
_START: Final = 60.0


def _environment() -> dict[str, str]:
    """The daemons' environment: this process's, with the directory holding the dtp
    package imported here first on the path (a checkout, a worktree or site-packages)."""
    home = str(Path(dtp.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k != "DTP_PASSPHRASE"}
    env["PYTHONPATH"] = home if not path else os.pathsep.join([home, path])
    return env


class Daemon:
    """A ``dtp daemon --config CONFIG`` process, started and waited for (its JSON line)."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log_path = config.with_suffix(".log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
                cwd=config.parent,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=_environment(),
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(_START)
            raise RuntimeError(
                f"dtp daemon ({config.name}) did not start (exit {self.proc.returncode}):\n"
                f"{self.log()}"
            )
        #: What the daemon announced: its host ID, forwards, services.
        self.info: dict[str, Any] = json.loads(line)

    def log(self) -> str:
        """What the daemon wrote on stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (its drain and settlements); kill after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return int(self.proc.returncode)


@dataclass
class DaemonPair:
    """The provider and the forwarder of :func:`daemon_pair`."""

    provider: Daemon
    forwarder: Daemon
    directory: Path
    ledger_path: Path | None
    provider_identity: HostIdentity
    client_identity: HostIdentity

    @property
    def host_id(self) -> str:
        """The provider's Host."""
        return str(self.provider.info["host_id"])

    @property
    def forward(self) -> tuple[str, int]:
        """Where local TCP clients connect (the forwarder's listener)."""
        host, port = str(self.forwarder.info["forwards"]["svc"]).rsplit(":", 1)
        return host, int(port)

    def ledger(self) -> LocalLedger:
        """A handle on the shared LocalLedger file (the caller closes it)."""
        if self.ledger_path is None:
            raise ValueError("these daemons run on a Sui node, not a LocalLedger file")
        return LocalLedger(self.ledger_path)


def _toml(value: object) -> str:
    return json.dumps(value)


@contextmanager
def daemon_pair(
    directory: str | Path,
    backends: Sequence[str],
    *,
    port: int = 7000,
    sla: Sla = DEFAULT_DAEMON_SLA,
    ledger: str | None = None,
    sui_package: str | None = None,
    provider: HostIdentity | None = None,
    client: HostIdentity | None = None,
    service_extra: str = "",
    forward_extra: str = "",
) -> Iterator[DaemonPair]:
    """Start a provider daemon exposing ``backends`` (``"host:port"`` each) as the paid
    DTP service ``port`` with ``sla``, and a forwarder daemon with one forward ``svc`` to
    it on 127.0.0.1; stop both (SIGTERM: they drain and settle) when the block ends.
    ``ledger``: the ledger spec both name (``localnet@http://…`` with ``sui_package``
    for a Sui node); by default a LocalLedger file in ``directory`` with a faucet.
    ``provider``/``client``: their identities (``identity(1)``, ``identity(2)``).
    ``service_extra``/``forward_extra``: more TOML lines for the service and the forward
    (docs/daemon.md)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    provider_id, client_id = provider or identity(1), client or identity(2)
    provider_id.save(root / "provider.key")
    client_id.save(root / "client.key")
    ledger_path = None if ledger is not None else root / "ledger.sqlite"
    if ledger is None:
        ledger_lines = f'ledger = "ledger.sqlite"\nfaucet = {FUNDS}'
    else:
        ledger_lines = f"ledger = {_toml(ledger)}"
        if sui_package is not None:
            ledger_lines += f"\nsui_package = {_toml(sui_package)}"
    listed = ", ".join(_toml(b) for b in backends)
    (root / "provider.toml").write_text(
        f"""[daemon]
{ledger_lines}
identity = "provider.key"
state_dir = "provider-state"
drain_timeout = 5

[[service]]
name = "svc"
port = {port}
backends = [{listed}]
price_per_kib = {sla.price_per_kib}
price_per_request = {sla.price_per_request}
min_deposit = {sla.min_deposit}
health_interval = 0.3
{service_extra}
"""
    )
    started: list[Daemon] = []
    try:
        started.append(Daemon(root / "provider.toml"))
        host_id = started[0].info["host_id"]
        (root / "forwarder.toml").write_text(
            f"""[daemon]
{ledger_lines}
identity = "client.key"
state_dir = "forwarder-state"

[[forward]]
name = "svc"
listen = "127.0.0.1:0"
target = "dtp://{host_id}:{port}"
{forward_extra}
"""
        )
        started.append(Daemon(root / "forwarder.toml"))
        yield DaemonPair(started[0], started[1], root, ledger_path, provider_id, client_id)
    finally:
        for daemon in reversed(started):
            daemon.stop()
