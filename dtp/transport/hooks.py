"""The seam between the transport and the layers above it: what a server's admission
hook is given and may answer, and what the drivers call on a connection a layer above
rides on. The transport defines these and calls them; it imports nothing of the ledger,
of payments or of host IDs (``dtp.hostid`` implements them: docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "HOOK_FAILED",
    "NOT_PAID",
    "ConnectionHook",
    "HookCall",
    "Listener",
    "PeerInfo",
    "Reservations",
    "hook_calls",
    "peer_info",
    "refusal_reason",
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


def peer_info(
    address: str, connection_id: bytes | None, port: int | None, public_key: bytes | None
) -> PeerInfo:
    """A :class:`PeerInfo` from what the handshake carried."""
    return PeerInfo(
        address=address,
        connection_id=None if connection_id is None else "0x" + connection_id.hex(),
        port=port,
        public_key=public_key,
    )


NOT_PAID = "top_up: not a paid connection (connect by host ID with a deposit)"
"""What ``top_up()`` raises (LocalProtocolError) on a connection with no deposit: the
drivers' stub, and a connection by host ID whose deposit is not metered."""

HOOK_FAILED = "internal error in the server's accept hook"
"""The refusal a client gets when an accept or admit hook raised."""


def refusal_reason(verdict: object) -> str | None:
    """What an accept/admit hook's verdict means: None (or True) accepts; False refuses
    with a generic reason; anything else refuses with itself as the reason."""
    if verdict is None or verdict is True:
        return None
    if verdict is False:
        return "refused by the server"
    return str(verdict)


@dataclass(frozen=True)
class HookCall:
    """One hook call a server makes for a client it authenticated (:func:`hook_calls`)."""

    hook: Callable[[Any], Any]
    """The hook."""
    arg: object
    """What it is given: the client's address (``accept``) or its :class:`PeerInfo`
    (``admit``)."""
    admit: bool
    """Whether it is the ``admit`` hook (the asyncio server runs a plain one in a thread:
    it may call the ledger)."""


def hook_calls(
    peer: PeerInfo,
    accept: Callable[[Any], Any] | None,
    admit: Callable[[Any], Any] | None,
) -> list[HookCall]:
    """The hook calls for ``peer``, in the order both servers make them: ``accept`` first,
    then ``admit``. The first refusal (:func:`refusal_reason`) is the verdict and the
    rest are not called; a hook that raises refuses with :data:`HOOK_FAILED`."""
    calls = []
    if accept is not None:
        calls.append(HookCall(accept, peer.address, admit=False))
    if admit is not None:
        calls.append(HookCall(admit, peer, admit=True))
    return calls


class Reservations(Protocol):
    """What an admission hook counts while a server serves the connections it accepted
    (:class:`dtp.hostid.served.ServedConnections`: one DTP connection per ledger
    connection, within the Host's limits), given to the server by the layer that made
    it (``DTPServer(reservations=...)``)."""

    def take(self, peer: PeerInfo) -> tuple[str | None, Callable[[], None] | None]:
        """For ``peer``, which the hooks accepted: the refusal (and None), or None and
        the callable to run, from any thread or an event loop (it must not block),
        once its connection ends."""
        ...


class Listener(Protocol):
    """Another source of a server's connections, which hands each carrier to the
    server's ``handoff()`` (the ledger carrier's: ``dtp.hostid.ledger_carrier.bridge.
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
    connection by host ID (:class:`dtp.hostid.payment_hook.MeteredClient`). A plain
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
