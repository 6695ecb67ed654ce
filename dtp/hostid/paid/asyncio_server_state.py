"""What the asyncio paid server holds, declared once for every part of
:class:`~dtp.hostid.paid.asyncio_server.PaidAioServer` (its handing over, its policy
refresh, its lifetime and its serving), so that each part is checked against the same
attributes; the twin of :mod:`dtp.hostid.paid.blocking_server_state`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtp.hostid.admission import Admitted, PeerInfo
    from dtp.hostid.paid.asyncio import PaidCallback, PaidConnection
    from dtp.hostid.paid.policy import ServicePolicy
    from dtp.hostid.paid.request_billing import AsyncRequestServer
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
    from dtp.transport.asyncio.server import DTPServer
    from dtp.transport.asyncio.streams import DTPStreamReader, DTPStreamWriter


class PaidAioServerState:
    """The attributes of a :class:`~dtp.hostid.paid.asyncio_server.PaidAioServer`, set
    by its constructor (documented there) and its start."""

    ledger: Ledger
    _open_grace: float | None
    identity: HostIdentity
    host_id: str
    port: int
    callback: PaidCallback | AsyncRequestServer
    requests: AsyncRequestServer | None
    store: ReceiptStore
    _own_store: bool
    receipt_writer: ReceiptWriter
    policy: ServicePolicy
    core: PaidServerCore[PaidConnection]
    server: DTPServer | None
    admission: PaidAdmission[Awaitable[str | None]] | None
    _refunds: set[asyncio.Task[None]]
    limiter: RateLimiter
    recovered: list[tuple[str, Settlement]]
    settlements: deque[tuple[str, Settlement]]
    _callback_tasks: set[asyncio.Task[Any]]
    _serving: ConnectionIds
    retries: SettlementRetries
    left: deque[tuple[str, EndLeft]]
    deferred: DeferredEnds
    _policy_task: asyncio.Task[None] | None
    _recovery: Recovery | None
    _closing: asyncio.Event
    _lifetime: asyncio.Task[bool] | None
    _loop_ending: bool
    _released: asyncio.Event

    if TYPE_CHECKING:
        # what one part calls of another (defined in asyncio_server.py and the
        # asyncio_server_* parts)

        async def _admit(
            self, peer: PeerInfo, check: Callable[[PeerInfo], str | None]
        ) -> str | None: ...

        def _refused_at_limit(self, cid: str) -> None: ...

        async def _handle(self, reader: DTPStreamReader, writer: DTPStreamWriter) -> None: ...

        async def _settle(
            self, cid: str, final: Receipt | None, known: Admitted | None = None
        ) -> None: ...

        async def _policy_loop(self) -> None: ...

        def _release(self) -> None: ...
