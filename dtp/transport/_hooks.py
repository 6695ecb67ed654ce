"""The seam between the transport and the layers above it: what a server's admission
hook is given (:mod:`dtp.transport._session` calls the hooks and reads their verdict), and
what the drivers call on a connection a layer above rides on. The transport defines these
and calls them; it imports nothing of the ledger, of payments or of host IDs
(``dtp.hostid`` implements them: docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "NOT_PAID",
    "ConnectionHook",
    "Listener",
    "PeerInfo",
    "Reservations",
]


@dataclass(frozen=True)
class PeerInfo:
    """What a server knows of a client once its identity proof is verified."""

    address: str
    """The client's verified Sui address."""
    connection_id: str | None
    """The ledger connection ID the client named (``0x`` + 64 hex digits), if any."""
    port: int | None
    """The DTP port the client named, if any."""
    public_key: bytes | None = None
    """The client's Noise static key."""


NOT_PAID = "top_up: not a paid connection (connect by host ID with a deposit)"
"""What ``top_up()`` raises (LocalProtocolError) on a connection with no deposit: the
drivers' stub, and a connection by host ID whose deposit is not metered."""


class Reservations(Protocol):
    """What an admission hook counts while a server serves the connections it accepted
    (:class:`dtp.hostid._served.ServedConnections`: one DTP connection per ledger
    connection, within the Host's limits), given to the server by the layer that made
    it (``DTPServer(reservations=...)``)."""

    ends_carriers: bool
    """Whether nothing is left to do at a connection's end: the blocking server then
    half-closes its carrier as soon as the peer closed the connection, as the asyncio
    one closes it, rather than when its application closes the socket (a metered
    client waits for that end: ConnectionHook.close_wait). False where the layer above
    settles first (the paid server, ``settle_on_close``)."""

    def take(self, peer: PeerInfo) -> tuple[str | None, Callable[[], None] | None]:
        """For ``peer``, which the hooks accepted: the refusal (and None), or None and
        the callable to run, from any thread or an event loop (it must not block),
        once its connection ends."""
        ...


class Listener(Protocol):
    """Another source of a server's connections, which hands each carrier to the
    server's ``handoff()`` (the ledger carrier's: ``dtp.hostid.ledger_carrier._bridge.
    LedgerListener``); the server closes it as it closes (``attach()``)."""

    @property
    def running(self) -> bool:
        """Whether its thread still runs (it ends soon after :meth:`close`)."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Stop, waiting up to ``timeout`` seconds for its thread (0: not at all)."""
        ...


class ConnectionHook(Protocol):
    """A layer above riding on one client connection: the metered payment of a
    connection by host ID (:class:`dtp.hostid._payment_hook.MeteredClient`). A plain
    connection has none, and the drivers test for it once where they would call it.
    Called with the driver's lock held (on the event loop under asyncio), except
    :meth:`after_close`, which may block (a ledger transaction) and runs without it (in
    a worker thread under asyncio)."""

    max_timer_wait: float
    """The longest the timer may leave the connection alone (its output is looked at as
    often: :meth:`on_output` may have something due)."""
    close_wait: float
    """Seconds a close waits, after CLOSE, for the peer to close its end (a paid server
    closes its end once it settled the connection)."""
    keeps_clean_close: bool
    """A close whose linger ran out with bytes unsent still ends with a clean CLOSE
    (a paid server settles only after one), not with the error a plain one sends."""
    quiet_bytes: int
    """Below this total of sent bytes (``Connection.usage``)..."""
    quiet_until: float
    """...and before this time, :meth:`on_output` has nothing to do: the send paths
    skip the call."""
    payable_bytes: int
    """The usage (``Connection.usage``'s bytes) up to which what the layer pays covers
    the connection: a write that would take the usage, what is queued included, past
    it asks :meth:`refuse_write` first."""

    def refuse_write(self, nbytes: int, requests: int) -> str | None:
        """Whether the connection may send ``nbytes`` more bytes (what is queued
        included) and open ``requests`` more streams: None, or why not. The driver then
        ends the connection at once -- :meth:`before_close`'s frames, then CLOSE with
        :data:`dtp.errors.CLOSE_PAYMENT_REQUIRED` and that reason -- and raises
        :class:`dtp.errors.PaymentRequired` (docs/escrow.md §6.1)."""
        ...

    def on_output(self, now: float) -> None:
        """Before the connection's output is collected: may queue frames on it (a
        RECEIPT)."""
        ...

    def before_close(self) -> None:
        """The connection is about to send CLOSE: the last frames go ahead of it."""
        ...

    def after_close(self) -> None:
        """The connection ended (closed, aborted, or by the peer): what the layer does
        then (blocking). It may be called more than once (the blocking socket's close
        and its engine's both call it): only the first call may act."""
        ...
