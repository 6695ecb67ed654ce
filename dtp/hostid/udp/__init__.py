"""UDP flows through DTP by host ID (docs/udp.md): what ``dtp.udp`` held, the blocking
relay and forwarder (:mod:`dtp.hostid.udp.blocking`) pumping the rules both drivers
share (:mod:`dtp.hostid.udp.engine`, :mod:`dtp.hostid.udp.flow_table`) over the UDP side
(:mod:`dtp.hostid.udp.sockets`); the asyncio driver is :mod:`dtp.hostid.udp.asyncio`.
"""

from dtp.hostid.udp.blocking import UdpForwarder, relay_udp
from dtp.hostid.udp.engine import (
    DEFAULT_LOSS_ALLOWANCE,
    MAX_UDP_PAYLOAD,
    FlowAccount,
    UdpBilling,
    UdpStats,
)
from dtp.hostid.udp.sockets import check_count, check_seconds

__all__ = [
    "DEFAULT_LOSS_ALLOWANCE",
    "MAX_UDP_PAYLOAD",
    "FlowAccount",
    "UdpBilling",
    "UdpForwarder",
    "UdpStats",
    "check_count",
    "check_seconds",
    "relay_udp",
]
