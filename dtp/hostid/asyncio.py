"""Connecting by host ID with asyncio: the ledger preparation, the host's endpoints or
the ledger carrier, and the metered client payment."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING

from dtp._session import check_connect_timeout
from dtp.address import HostAddress
from dtp.admission import (
    CarrierChoice,
    PreparedConnection,
    abandon_host_connection,
    check_connect_options,
    pinned_host_key,
    prepare_connecting_early,
)
from dtp.carriers.ledger_bridge import LedgerCarrierOptions, connect_ledger_carrier
from dtp.carriers.tcp import PendingTcp, connect_any
from dtp.identity.keys import HostIdentity
from dtp.ledger.objects import OpenedConnection
from dtp.payments.metering import MeteringConfig
from dtp.payments.settlement import ClientPayment
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.asyncio import connect
from dtp.transport.asyncio.connect import check_limit
from dtp.transport.asyncio.protocol import LIMIT, Protocol
from dtp.transport.asyncio.streams import DTPStreamReader, DTPStreamWriter
from dtp.transport.asyncio.threads import threaded_or_released

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger


async def open_connection(
    host: str | HostAddress,
    *,
    ledger: Ledger | None,
    identity: HostIdentity | None,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    config: ConnectionConfig | None = None,
    timeout: float | None = None,
    deposit: int | None = None,
    cap_id: str | None = None,
    carrier: CarrierChoice = "auto",
    ledger_options: LedgerCarrierOptions | None = None,
    metering: MeteringConfig | None = None,
    subscription: str | None = None,
    sponsor_pool: str | None = None,
    limit: int = LIMIT,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """Connect to the DTP address ``host`` (``"dtp://0x<host id>:<port>"`` or a
    :class:`~dtp.address.HostAddress`) through ``ledger``, ``identity`` paying, and return
    the first stream's (reader, writer): :func:`dtp.aio.open_connection` for a DTP address
    (see there for the arguments)."""
    check_connect_timeout(timeout)
    check_limit(limit)
    address = HostAddress.parse(host) if isinstance(host, str) else host
    if ledger is None or identity is None:
        raise ValueError("connecting to a DTP address needs ledger=... and identity=...")
    reader, writer = await _open_by_host_id(
        address,
        ledger,
        identity,
        timeout,
        server_key=pinned_host_key(server_key, expected_server_key),
        config=config,
        deposit=deposit,
        cap_id=cap_id,
        carrier=carrier,
        ledger_options=ledger_options,
        metering=metering,
        subscription=subscription,
        sponsor_pool=sponsor_pool,
    )
    writer._proto.limit = limit
    return reader, writer


async def _open_by_host_id(
    address: HostAddress,
    ledger: Ledger,
    identity: HostIdentity,
    timeout: float | None,
    *,
    server_key: bytes | None,
    config: ConnectionConfig | None,
    deposit: int | None,
    cap_id: str | None,
    carrier: CarrierChoice,
    ledger_options: LedgerCarrierOptions | None,
    metering: MeteringConfig | None,
    subscription: str | None,
    sponsor_pool: str | None,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """open_connection for a DTP address, overlapping as dtp.socket does: the TCP
    connect starts as soon as the service is resolved (while the open is signed), and
    the open executes while the server works on the first handshake message."""
    # The preparation may open the connection on the ledger (paying by subscription or
    # sponsor pool, or over the ledger carrier), in a worker thread, which a cancelled
    # connect cannot stop: what it opened for a connect cancelled meanwhile is abandoned
    # (half-closed, so the deposit comes back), by the thread itself or, when the
    # result was ready but not yet taken, by another.
    check_connect_options(metering, ledger_options)
    handover = threading.Lock()
    taken: list[tuple[PreparedConnection, PendingTcp | None]] = []
    cancelled = False

    def prepare() -> tuple[PreparedConnection, PendingTcp | None]:
        result = prepare_connecting_early(
            ledger,
            address,
            identity,
            deposit=deposit,
            cap_id=cap_id,
            server_key=server_key,
            config=config,
            carrier=carrier,
            subscription=subscription,
            sponsor_pool=sponsor_pool,
        )
        with handover:
            if not cancelled:
                taken.append(result)
                return result
        _abandon_prepared(ledger, identity, address, result)
        return result

    try:
        prepared, early = await asyncio.to_thread(prepare)
    except asyncio.CancelledError:
        with handover:
            cancelled = True
            left = list(taken)
        for result in left:  # ready, but the cancel came before we took it
            threading.Thread(
                target=_abandon_prepared, args=(ledger, identity, address, result)
            ).start()
        raise
    pending_open = prepared.pending_open
    # the open runs in a worker thread, which a cancelled connect cannot stop: a failed
    # connect waits for it before it decides what to half-close
    landing: asyncio.Future[OpenedConnection] | None = None
    payments: list[ClientPayment] = []

    async def while_waiting(proto: Protocol) -> None:
        nonlocal landing
        opened = prepared.opened
        if pending_open is not None:
            landing = asyncio.ensure_future(asyncio.to_thread(pending_open.execute))
            opened = await asyncio.shield(landing)
        if metering is None or metering.enabled:
            payments.append(
                await asyncio.to_thread(
                    ClientPayment,
                    ledger,
                    identity,
                    address.host_id,
                    prepared.connection_id,
                    proto.conn,
                    metering,
                    now=proto.loop.time(),
                    opened=opened,
                )
            )

    try:
        if prepared.endpoint is None:
            bridge = await threaded_or_released(
                lambda: connect_ledger_carrier(
                    ledger,
                    identity,
                    prepared.connection_id,
                    prepared.server_address,
                    ledger_options,
                ),
                lambda bridge: bridge.socket.close(),  # (its thread ends with its socket)
            )
            reader, writer = await connect.open(
                *bridge.peername,
                prepared.config,
                timeout,
                sock=bridge.socket,
                while_waiting=while_waiting,
            )
            writer._proto.peername = bridge.peername
        else:
            # the host's endpoints in turn until one answers (each with the timeout)
            pending_tcp = early
            tcp, reached = await threaded_or_released(
                lambda: connect_any(pending_tcp, prepared.endpoints, timeout),
                lambda made: made[0].close(),
            )
            reader, writer = await connect.open(
                *reached, prepared.config, timeout, sock=tcp, while_waiting=while_waiting
            )
    except BaseException as exc:
        if early is not None:
            early.close()
        if landing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(landing)
        await asyncio.to_thread(abandon_host_connection, ledger, identity, address, prepared, exc)
        raise
    writer.connection_id = prepared.connection_id
    writer.escrow_id = prepared.escrow_id
    if payments:
        proto = writer._proto
        proto.payment = payments[0]
        proto.session.on_receipt = payments[0].on_server_receipt
    return reader, writer


def _abandon_prepared(
    ledger: Ledger,
    identity: HostIdentity,
    address: HostAddress,
    result: tuple[PreparedConnection, PendingTcp | None],
) -> None:
    """Abandon what :func:`prepare_connecting_early` made for a connect cancelled while
    it ran: its early TCP connect, and the connection if it opened one."""
    prepared, early = result
    if early is not None:
        early.close()
    abandon_host_connection(
        ledger, identity, address, prepared, asyncio.CancelledError("the connect was cancelled")
    )
