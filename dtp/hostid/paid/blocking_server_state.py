"""What the blocking paid server holds, declared once for every part of
:class:`~dtp.hostid.paid.blocking_server.PaidServer` (its handing over, its policy
refresh, its lifetime and its serving), so that each part is checked against the same
attributes; the twin of :mod:`dtp.hostid.paid.asyncio_server_state`."""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dtp.hostid.admission import Admitted
    from dtp.hostid.paid.blocking import Handler, PaidConnection
    from dtp.hostid.paid.policy import ServicePolicy
    from dtp.hostid.paid.server_admission import PaidAdmission
    from dtp.hostid.paid.server_core import PaidServerCore
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.ledger.objects import Settlement
    from dtp.ledger.receipt import Receipt
    from dtp.payments.ends import EndLeft
    from dtp.payments.gate import ConnectionIds
    from dtp.payments.ratelimit import RateLimiter
    from dtp.payments.receipt_store import ReceiptStore
    from dtp.payments.receipt_writer import ReceiptWriter
    from dtp.payments.serving import DeferredEnds, Recovery, SettlementRetries
    from dtp.transport.blocking.server import DTPServer


class PaidServerState:
    """The attributes of a :class:`~dtp.hostid.paid.blocking_server.PaidServer`, set by
    its constructor (documented there)."""

    ledger: Ledger
    identity: HostIdentity
    host_id: str
    port: int
    handler: Handler
    policy: ServicePolicy
    core: PaidServerCore[PaidConnection]
    _serving: ConnectionIds
    _live_lock: threading.Lock
    _limit_lock: threading.Lock
    limiter: RateLimiter
    _closed: threading.Event
    _released: threading.Event
    _in_handler: threading.local
    _threads: list[threading.Thread]
    settlements: deque[tuple[str, Settlement]]
    store: ReceiptStore
    _own_store: bool
    receipt_writer: ReceiptWriter
    retries: SettlementRetries
    left: deque[tuple[str, EndLeft]]
    deferred: DeferredEnds
    server: DTPServer | None
    _recovery: Recovery | None
    recovered: list[tuple[str, Settlement]]
    admission: PaidAdmission[str | None]
    address: tuple[str, int]

    if TYPE_CHECKING:
        # what one part calls of another (defined in blocking_server.py and
        # blocking_server_lifetime.py)

        def _settle(
            self, cid: str, known: Admitted | None = None, final: Receipt | None = None
        ) -> None: ...

        def _release(self) -> None: ...
