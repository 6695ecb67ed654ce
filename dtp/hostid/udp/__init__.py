"""UDP flows through DTP by host ID (docs/udp.md): the blocking relay and forwarder
(:mod:`dtp.hostid.udp.blocking`) pumping the rules both drivers share
(:mod:`dtp.hostid.udp.engine`, :mod:`dtp.hostid.udp.flow_table`) over the UDP side
(:mod:`dtp.hostid.udp.sockets`, the counters in :mod:`dtp.hostid.udp.stats`, the
billing read from the ledger in :mod:`dtp.hostid.udp.billing`); the asyncio driver is
:mod:`dtp.hostid.udp.asyncio`.
"""

from dtp.hostid.udp.billing import billing_from_ledger
from dtp.hostid.udp.blocking import UdpForwarder, relay_udp
from dtp.hostid.udp.engine import (
    DEFAULT_LOSS_ALLOWANCE,
    MAX_UDP_PAYLOAD,
    FlowAccount,
    UdpBilling,
)
from dtp.hostid.udp.sockets import check_count, check_seconds
from dtp.hostid.udp.stats import UdpStats

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
