"""What the runners of a sync session share (:func:`~dtp.graph.sync.sync_blocking`,
:func:`~dtp.graph.sync.sync_stream`, :class:`~dtp.graph.sync.GraphServer`): the checks of
their deadlines, the default deadline of a peer's HELLO, how a read's ConnectionClosed
says the peer left cleanly, and what a run raises as it waits for its END and as it
ends: the rules both drivers apply, written once."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from dtp.errors import ConnectionClosed
from dtp.graph.sync._messages import GraphSyncError, SyncBacklogExceeded, _fail

if TYPE_CHECKING:
    from dtp.graph.sync._session import SyncSession

HELLO_TIMEOUT = 10.0
"""GraphServer's default deadline for a peer's HELLO, in seconds (DTP's handshake_timeout)."""

CONNECT_TIMEOUT = 10.0
""":func:`~dtp.graph.sync.connect`'s default bound on connecting and on each wait of the
initial exchange, in seconds: without one, an address that accepts and stays silent
held the sync for good."""


def _check_timeout(name: str, value: object) -> None:
    """A deadline in seconds: a finite number > 0 (TypeError / ValueError naming it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")


def _check_tick(tick: object) -> None:
    """The runners' tick: a finite number of seconds > 0 (NaN, 0 or less would spin)."""
    _check_timeout("tick", tick)


def _left_cleanly(exc: ConnectionClosed) -> bool:
    """True when ``exc``, raised by a read of the session stream, is the peer's clean
    close of the connection (code 0) before it ended that stream: the runners take it
    for the end of the stream, as they take a read of b"".

    The peer's clean close cuts a stream other than the connection's first short
    (``Session.cut_short``, as QUIC does): its reads raise this where they read b"".
    For a sync session that is no failure: a peer that closes the connection between
    messages has ended the session as cleanly as one that ends the stream (a live
    session returned then, and a catch-up not done raises GraphSyncError). Nor does
    a message the close cut look whole, as a reply cut short would: its bytes wait in
    the session for a rest that never comes, as at a FIN after them. Reads raise
    ConnectionClosed with code 0 only then: any other end of the connection carries
    its own code (it propagates, as a reset and a close here do), and after our own
    clean close they read b""."""
    return not exc.code


def _backlog_exceeded(session: SyncSession) -> SyncBacklogExceeded:
    """The error of a run whose session gave up on its peer (``session.lagging``)."""
    return SyncBacklogExceeded(f"the peer fell more than {session.max_backlog} bytes behind")


def _no_hello(hello_timeout: float | None) -> GraphSyncError:
    """The error of a run whose peer sent no HELLO within ``hello_timeout`` seconds."""
    return _fail(f"the peer sent no HELLO within {hello_timeout} s")


def _check_end_coming(session: SyncSession) -> None:
    """Raise GraphSyncError when the peer's END is in and nothing of ours is left to make
    that would send ours (``SyncSession._end_stalled``): a catch-up, which stops reading at
    the peer's END, would otherwise wait for our END without a deadline."""
    if session._end_stalled():
        raise _fail("the peer's END came before the exchange it ends")


def _check_run_ended(
    session: SyncSession,
    *,
    until_synced: bool,
    cut_off: bool,
    failure: BaseException | None = None,
) -> None:
    """Raise what a run that has ended raises, if anything: SyncBacklogExceeded when the
    session gave up on its peer; for a catch-up (``until_synced``), the write side's
    ``failure`` (also once both ENDs are through: ours was only queued, and a writer that
    failed left what we pushed undelivered), then GraphSyncError unless both ENDs went
    through and the write side was not ``cut_off`` by the connection's clean end (what it
    was sending did not all go). A catch-up that returned then would look complete and
    not be."""
    if session.lagging:
        raise _backlog_exceeded(session)
    if failure is not None and until_synced:
        raise failure
    if until_synced and (cut_off or not session.synced):
        raise _fail("the peer closed the stream before the sync completed")
