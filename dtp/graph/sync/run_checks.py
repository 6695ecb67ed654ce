"""What the runners of a sync session share (:func:`~dtp.graph.sync.sync_blocking`,
:func:`~dtp.graph.sync.sync_stream`, :class:`~dtp.graph.sync.GraphServer`): the checks of
their deadlines, the default deadline of a peer's HELLO, and how a read's
ConnectionClosed says the peer left cleanly."""

from __future__ import annotations

import math

from dtp.errors import ConnectionClosed

HELLO_TIMEOUT = 10.0
"""GraphServer's default deadline for a peer's HELLO, in seconds (DTP's handshake_timeout)."""


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
