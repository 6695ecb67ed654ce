"""The client's metered payment as the transport's drivers see it: a
:class:`~dtp.transport._hooks.ConnectionHook` that a connection by host ID with a deposit
carries (``engine.hook`` / ``protocol.hook``). The rules are
:class:`dtp.payments._settlement.ClientPayment`'s; this names them as the hook does, and
holds the timings a paid connection needs of its driver (docs/architecture.md, one
deposit's path)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dtp.payments._settlement import ClientPayment

if TYPE_CHECKING:
    from dtp.hostid._connect import PreparedConnection
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import OpenedConnection
    from dtp.ledger.interface import Ledger
    from dtp.payments._settlement import MeteredConnection
    from dtp.payments.metering import MeteringConfig
    from dtp.transport._hooks import ConnectionHook

__all__ = ["METERED_MAX_WAIT", "PAID_CLOSE_WAIT", "MeteredClient", "PaidOpening"]

# seconds a paid client's close waits for the server's end of the carrier, which closes
# once the server settled: about a ledger transaction, the half-close it spares us
PAID_CLOSE_WAIT = 3.0

# a metered client is looked at more often than a plain one (the timer's MAX_WAIT): it
# must answer a closing server's ask for the final receipt within
# ServicePolicy.final_receipt_timeout (1 s), its application reading or not
METERED_MAX_WAIT = 0.25


class MeteredClient(ClientPayment):
    """:class:`ClientPayment` as a :class:`~dtp.transport._hooks.ConnectionHook`: the
    hook's methods call its own (looked up at each call, so that a patched
    ``finish`` is the one called), but for :meth:`on_output`, which is :meth:`tick`
    itself (no call is added on a send path)."""

    max_timer_wait = METERED_MAX_WAIT
    close_wait = PAID_CLOSE_WAIT
    # a paid server settles only after a clean CLOSE: a linger that ran out does not
    # turn it into an error
    keeps_clean_close = True

    on_output = ClientPayment.tick

    def on_receipt_frame(self, data: bytes) -> None:
        """The server's RECEIPT frame: it asks for a receipt now."""
        self.on_server_receipt(data)

    def before_close(self) -> None:
        """The final receipt, ahead of CLOSE."""
        self.closing()

    def after_close(self) -> None:
        """The half-close on the ledger, unless the server settled already."""
        self.finish()


class _Named(Protocol):
    """The first stream of a connection by host ID (a socket, a writer)."""

    connection_id: str | None
    escrow_id: str | None


class _Hooked(Protocol):
    """What a stream's connection takes a hook by (its ``layer``)."""

    def set_hook(
        self, hook: ConnectionHook | None, on_receipt: Callable[[bytes], None] | None = None
    ) -> None: ...


@dataclass
class PaidOpening:
    """A connection by host ID being made, both drivers' steps: the open lands while
    the server works on the first handshake message (:meth:`land`), the meter is set
    up (:meth:`meter`), and once made the meter rides on the connection
    (:meth:`hand_over`)."""

    ledger: Ledger
    identity: HostIdentity
    host_id: str
    prepared: PreparedConnection
    metering: MeteringConfig | None
    payment: MeteredClient | None = None

    @property
    def metered(self) -> bool:
        """Whether the connection is metered (unless ``MeteringConfig(enabled=False)``)."""
        return self.metering is None or self.metering.enabled

    def land(self) -> OpenedConnection | None:
        """What the open reported: executed now when it was deferred (a ledger
        transaction), else what the preparation's open did."""
        pending = self.prepared.pending_open
        return self.prepared.opened if pending is None else pending.execute()

    def meter(self, conn: MeteredConnection, now: float, opened: OpenedConnection | None) -> None:
        """Set up the meter of ``conn`` from ``opened`` (what :meth:`land` reported)."""
        self.payment = MeteredClient(
            self.ledger,
            self.identity,
            self.host_id,
            self.prepared.connection_id,
            conn,
            self.metering,
            now=now,
            opened=opened,
        )

    def hand_over(self, stream: _Named, layer: _Hooked) -> None:
        """The connection made: ``stream`` names its ledger objects, and the meter, if
        any, rides on ``layer`` (its RECEIPT frames go to it)."""
        stream.connection_id = self.prepared.connection_id
        stream.escrow_id = self.prepared.escrow_id
        if self.payment is not None:
            layer.set_hook(self.payment, self.payment.on_receipt_frame)
