"""A deterministic in-memory network for testing DTP applications (docs/testing.md).

Hosts on links with loss, duplication, reordering, delay, jitter, bandwidth and
partitions (:class:`Link`, :class:`SimNetwork`), driven by a virtual clock
(:class:`VirtualEventLoop`) and a seed, so that a failing property replays exactly.
The asyncio API (``dtp.aio``, and asyncio's own streams) runs on it unchanged: a
connect or a server on one of its hosts reaches it instead of the operating system.
So does the blocking API (``dtp.socket``), under :meth:`SimNetwork.run_blocking`, whose
:class:`~dtp.testing.network._blocking.BlockingScheduler` runs every thread of the
program in turn on the virtual clock: its runs replay exactly too.

Processes (daemons, a Sui node stand-in) and blocking code in real threads reach the
same links in real time through :class:`~dtp.testing.network._relay.Relay`: real
sockets on 127.0.0.1 whose bytes cross the simulated links. Its draws come from the
seed too, but the operating system's timing is not the simulation's to fix, so a run
there does not replay exactly (docs/testing.md §3).
"""

from __future__ import annotations

from typing import Any

from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.testing.network._blocking import BlockingScheduler, SimulationEnded
from dtp.testing.network._links import Link
from dtp.testing.network._loop import SimulationDeadlock, VirtualEventLoop
from dtp.testing.network._network import NetworkStats, SimHost, SimNetwork, SimulationError
from dtp.testing.network._relay import Relay
from dtp.testing.network._transports import SimServer, SimTransport

__all__ = [
    "BlockingScheduler",
    "Link",
    "NetworkStats",
    "Relay",
    "SimHost",
    "SimNetwork",
    "SimServer",
    "SimTransport",
    "SimulationDeadlock",
    "SimulationEnded",
    "SimulationError",
    "VirtualEventLoop",
    "lossy",
]


def lossy(identity: HostIdentity, *, server: bool = False, **overrides: Any) -> ConnectionConfig:
    """The config of one end of a connection over a datagram link (``Link(datagrams=
    True)``): ``reliable_carrier=False``, so that it acknowledges and retransmits records
    (docs/protocol.md §9, as over the ledger carrier). Both ends need it: the client's
    ``open_connection(config=lossy(its identity))``, the server's ``start_server(config=
    lossy(its identity, server=True))``. ``overrides``: other ConnectionConfig fields."""
    return ConnectionConfig(
        identity=identity, is_client=not server, reliable_carrier=False, **overrides
    )
