"""What the daemon's readers (the live status, the metrics) see of a running daemon:
a :class:`typing.Protocol` that :class:`dtp.daemon._runner.Daemon` satisfies, so they
type against it and never import the runner that imports them (tests/project/test_layers.py).
"""

from __future__ import annotations

from typing import Protocol

from dtp.daemon._config import DaemonConfig
from dtp.daemon._forwarder import Forwarder
from dtp.daemon._gas import GasWatch
from dtp.daemon._ledger_calls import LedgerCalls
from dtp.daemon._refunds import Refunds
from dtp.daemon._services import ServiceHost
from dtp.daemon._state import StatusBook
from dtp.daemon._udp_forward import UdpForward
from dtp.identity.keys import HostIdentity

__all__ = ["DaemonView"]


class DaemonView(Protocol):
    """A running daemon, as :func:`dtp.daemon._live.live_status` and the metrics read it."""

    @property
    def config(self) -> DaemonConfig: ...
    @property
    def identity(self) -> HostIdentity: ...
    @property
    def host_id(self) -> str | None: ...
    @property
    def book(self) -> StatusBook: ...
    @property
    def ledger_calls(self) -> LedgerCalls: ...
    @property
    def gas(self) -> GasWatch: ...
    @property
    def refunds(self) -> Refunds: ...
    @property
    def services(self) -> ServiceHost | None: ...
    @property
    def forwarders(self) -> dict[str, Forwarder | UdpForward]: ...

    def refresh_live(self) -> None:
        """Bring the status book's live counters up to date."""
