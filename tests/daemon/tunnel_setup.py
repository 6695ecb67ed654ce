"""A provider's and a client's ``dtp daemon`` processes on one ledger (a LocalLedger file or
the Sui node stand-in) with their backends (Setup; the ``setup`` fixture is in
tests/daemon/conftest.py), the TOML of a service, and what the tests read back: echoes,
status rows, the ledger's connections and its conservation of MIST."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from dtp.daemon._state import read_status
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.support.daemon_procs import Proc, backend, daemon, write_forwarder

SUI = 1_000_000_000


def conserved(ledger: LocalLedger) -> bool:
    a = ledger.audit()
    return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]


@dataclass
class Setup:
    """Files of one scenario and the processes it started. With ``node`` (the Sui
    node stand-in) the daemons' ledger is that node, their identities funded by its
    faucet; without, a LocalLedger file they share."""

    tmp: Path
    provider: HostIdentity = field(default_factory=HostIdentity.generate)
    client: HostIdentity = field(default_factory=HostIdentity.generate)
    procs: list[Proc] = field(default_factory=list)
    node: SuiNodeStandIn | None = None

    def __post_init__(self) -> None:
        self.provider.save(self.tmp / "provider.key")
        self.client.save(self.tmp / "client.key")
        if self.node is not None:
            for identity in (self.provider, self.client):
                self.node.faucet(identity.sui_address, 10 * SUI)

    @property
    def ledger_path(self) -> Path:
        return self.tmp / "ledger.sqlite"

    @property
    def ledger_lines(self) -> str:
        """The ``[daemon]`` lines naming the ledger (and funding on a LocalLedger)."""
        if self.node is None:
            return f'ledger = "ledger.sqlite"\nfaucet = {SUI}'
        return f'ledger = "localnet@{self.node.url}"\nsui_package = "{self.node.package_id}"'

    def ledger(self) -> LocalLedger:
        return LocalLedger(self.ledger_path)

    def any_ledger(self) -> Ledger:
        """A ledger the test reads through: the node's, or the file."""
        if self.node is None:
            return self.ledger()
        return SuiLedger(SuiConfig(self.node.url, self.node.package_id, timeout=30.0))

    def conserved(self, ledger: Ledger) -> bool:
        """Every MIST accounted for (on Sui, the gas paid too)."""
        if self.node is None:
            assert isinstance(ledger, LocalLedger)
            return conserved(ledger)
        a = self.node.audit()
        return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"] + a["gas"]

    def start(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def backend(self, mode: str = "echo", port: int = 0) -> Proc:
        return self.start(backend(mode, port))

    def write_daemon(self, services: str, extra: str = "", name: str = "daemon") -> Path:
        """A provider's config; on Sui every end is settled, whatever its gas: the tests
        follow the fees through the settlement (the gas rule's are test_end_gas.py)."""
        path = self.tmp / f"{name}.toml"
        gas = "" if self.node is None else "gas_aware_ends = false"
        path.write_text(
            f"""[daemon]
{self.ledger_lines}
{gas}
identity = "provider.key"
state_dir = "{name}-state"
drain_timeout = 5
{extra}
{services}"""
        )
        return path

    def write_forwarder(self, host_id: str, port: int, extra: str = "") -> Path:
        ledger = None if self.node is None else self.ledger_lines
        return write_forwarder(self.tmp, host_id, port, extra, ledger)

    def daemon(self, config: Path) -> Proc:
        return self.start(daemon(config))

    def pair(
        self, services: str, port: int = 7000, forward_extra: str = ""
    ) -> tuple[Proc, Proc, tuple[str, int]]:
        d = self.daemon(self.write_daemon(services))
        f = self.daemon(self.write_forwarder(d.info["host_id"], port, forward_extra))
        host, fport = f.info["forwards"]["svc"].rsplit(":", 1)
        return d, f, (host, int(fport))


def service(backends: list[int], port: int = 7000, extra: str = "") -> str:
    listed = ", ".join(f'"127.0.0.1:{b}"' for b in backends)
    return f"""
[[service]]
name = "svc{port}"
port = {port}
backends = [{listed}]
health_interval = 0.3
{extra}
"""


def echo_roundtrip(address: tuple[str, int], data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` while reading the echo, as any TCP client would."""
    sock = socket.create_connection(address, timeout=timeout)
    with sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # a refused tunnel may close first
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        got = bytearray()
        # a refused tunnel closes the client's connection, with a reset when the
        # forwarder never read what the client sent
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                got += chunk
        sender.join()
    return bytes(got)


def status(state_dir: Path) -> dict[str, object]:
    found = read_status(state_dir)
    assert found is not None
    return found


def svc_row(setup: Setup, name: str = "svc7000", state: str = "daemon-state") -> dict[str, int]:
    return status(setup.tmp / state)["services"][name]  # type: ignore[index,no-any-return]


def fwd_row(setup: Setup) -> dict[str, int]:
    return status(setup.tmp / "forwarder-state")["forwards"]["svc"]  # type: ignore[index,no-any-return]


PAID = "price_per_kib = 10\nprice_per_request = 3\nmin_deposit = 2000000"


def ledger_connections(ledger: Ledger, setup: Setup) -> list[str]:
    """The client's ledger connections (from the ledger's events)."""
    events, _ = ledger.events()
    return [
        e["connection"]
        for e in events
        if e.name == "ConnectionOpened" and e["client"] == setup.client.sui_address
    ]
