"""UDP flows through DTP by host ID (docs/udp.md): the blocking relay and forwarder
(:mod:`dtp.hostid.udp._blocking`) pumping the rules both drivers share
(:mod:`dtp.hostid.udp._engine`, :mod:`dtp.hostid.udp._flow_table`) over the UDP side
(:mod:`dtp.hostid.udp._sockets`, the counters in :mod:`dtp.hostid.udp._stats`, the
billing read from the ledger in :mod:`dtp.hostid.udp._billing`); the asyncio driver is
:mod:`dtp.hostid.udp._asyncio`.
"""

from dtp.hostid.udp._billing import billing_from_ledger
from dtp.hostid.udp._blocking import UdpForwarder, relay_udp
from dtp.hostid.udp._engine import (
    DEFAULT_LOSS_ALLOWANCE,
    MAX_UDP_PAYLOAD,
    FlowAccount,
    UdpBilling,
    check_count,
    check_seconds,
)
from dtp.hostid.udp._stats import UdpStats

__all__ = [
    "DEFAULT_LOSS_ALLOWANCE",
    "MAX_UDP_PAYLOAD",
    "FlowAccount",
    "UdpBilling",
    "UdpForwarder",
    "UdpStats",
    "billing_from_ledger",
    "check_count",
    "check_seconds",
    "relay_udp",
]
