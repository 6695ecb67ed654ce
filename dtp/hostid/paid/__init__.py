"""Paid connections by host ID (docs/escrow.md §6.1): the blocking paid
server and its streams; the asyncio ones are in :mod:`dtp.hostid.paid._aio`.

``_policy`` has what both drivers apply, ``_engine`` and ``_server_core`` the rules they
both pump (sans-I/O), ``_server_admission``, ``_server_steps`` and ``_server_books`` the
server's parts both drivers share; the drivers: ``_blocking`` the paid stream,
``_blocking_server`` the blocking server, ``_asyncio`` and ``_asyncio_server`` their
asyncio twins; the server's receipt store and settlements are the payments layer's
(:mod:`dtp.payments._serving`).
"""

from dtp.hostid.paid._blocking import Handler, PaidSocket
from dtp.hostid.paid._blocking_server import PaidServer
from dtp.hostid.paid._policy import (
    CLOSED_REFUSAL,
    ServicePolicy,
    check_address,
    datagram_sizes,
    gate_for,
)
from dtp.payments._serving import (
    RECOVERY_CLOSE_WAIT,
    RECOVERY_INTERVAL,
    RELEASE_WRITER_WAIT,
    RETRY_MAX_ROUNDS,
    SERVED_REFUSAL,
    UNKNOWN_RECEIPTS_REFUSAL,
    Recovery,
    SettlementRetries,
    closes_store,
    open_store,
    recover_store,
    release_receipts,
    served_refusal,
    settle_ended,
)
from dtp.payments._settlement import collect_refund
from dtp.payments.metering import MeteringConfig

__all__ = [
    "CLOSED_REFUSAL",
    "RECOVERY_CLOSE_WAIT",
    "RECOVERY_INTERVAL",
    "RELEASE_WRITER_WAIT",
    "RETRY_MAX_ROUNDS",
    "SERVED_REFUSAL",
    "UNKNOWN_RECEIPTS_REFUSAL",
    "Handler",
    "MeteringConfig",
    "PaidServer",
    "PaidSocket",
    "Recovery",
    "ServicePolicy",
    "SettlementRetries",
    "check_address",
    "closes_store",
    "collect_refund",
    "datagram_sizes",
    "gate_for",
    "open_store",
    "recover_store",
    "release_receipts",
    "served_refusal",
    "settle_ended",
]
