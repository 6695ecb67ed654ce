"""Connecting by host ID with the blocking transport: the ledger half
(:mod:`dtp.hostid.connect`) around the blocking connect, and the client's payment."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dtp.hostid.address import HostAddress
from dtp.hostid.connect import (
    CarrierChoice,
    abandon_host_connection,
    check_connect_options,
    prepare_connecting_early,
)
from dtp.hostid.ledger_carrier.bridge import LedgerCarrierOptions, connect_ledger_carrier
from dtp.identity.keys import HostIdentity
from dtp.payments.metering import MeteringConfig
from dtp.payments.settlement import ClientPayment
from dtp.protocol.connection import Connection, ConnectionConfig
from dtp.transport.blocking.connect import connect
from dtp.transport.blocking.socket import DTPSocket
from dtp.transport.carriers.tcp import connect_any

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger


def connect_by_host_id(
    address: HostAddress,
    timeout: float | None,
    *,
    server_key: bytes | None,
    identity: HostIdentity | None,
    config: ConnectionConfig | None,
    ledger: Ledger | None,
    deposit: int | None,
    cap_id: str | None,
    carrier: CarrierChoice = "auto",
    ledger_options: LedgerCarrierOptions | None = None,
    metering: MeteringConfig | None = None,
    subscription: str | None = None,
    sponsor_pool: str | None = None,
) -> DTPSocket:
    """:func:`dtp.socket.create_connection` for a DTP address (see there)."""
    if ledger is None:
        raise ValueError("connecting to a DTP address needs the ledger (ledger=...)")
    if identity is None:
        raise ValueError("connecting to a DTP address needs the paying identity (identity=...)")
    check_connect_options(metering, ledger_options)
    prepared, early = prepare_connecting_early(
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
    payments: list[ClientPayment] = []
    metered = metering is None or metering.enabled

    def while_waiting(conn: Connection) -> None:
        # While the server works on our first message: the open lands on the ledger (the
        # server's admission gives it a moment), then the meter is set up from it
        opened = prepared.opened
        if prepared.pending_open is not None:
            opened = prepared.pending_open.execute()
        if metered:
            payments.append(
                ClientPayment(
                    ledger,
                    identity,
                    address.host_id,
                    prepared.connection_id,
                    conn,
                    metering,
                    now=time.monotonic(),
                    opened=opened,
                )
            )

    try:
        if prepared.endpoint is None:
            bridge = connect_ledger_carrier(
                ledger, identity, prepared.connection_id, prepared.server_address, ledger_options
            )
            sock = connect(
                bridge.peername,
                timeout,
                prepared.config,
                str(address),
                bridge.socket,
                while_waiting=while_waiting,
                timer=False,
            )
        else:
            # the host's endpoints in turn until one answers (each with the timeout)
            tcp, reached = connect_any(early, prepared.endpoints, timeout)
            early = None  # (finished: what it made is tcp, or closed)
            sock = connect(
                reached,
                timeout,
                prepared.config,
                name=str(address),
                carrier=tcp,
                while_waiting=while_waiting,
                timer=False,
            )
    except BaseException as exc:
        if early is not None:
            early.close()
        abandon_host_connection(ledger, identity, address, prepared, exc)
        raise
    sock.connection_id = prepared.connection_id
    sock.escrow_id = prepared.escrow_id
    engine = sock._engine
    if payments:
        with engine.lock:
            engine.payment = payments[0]
            engine.session.on_receipt = payments[0].on_server_receipt
    engine.start_timer()  # (after the payment: a metered engine's passes come sooner)
    return sock
