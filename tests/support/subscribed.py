"""A client's subscribed connection (docs/escrow.md §13) as the paid-server tests drive
it: served free for a while, then used until its server ends it."""

from __future__ import annotations

import time

import pytest

import dtp.socket
from dtp.errors import CLOSE_SUBSCRIPTION_ENDED, SubscriptionEnded


def served_free(sock: dtp.socket.DTPSocket, seconds: float = 0.5) -> None:
    """Echo pings on ``sock`` for ``seconds``: well past a few of the server's ledger
    checks, it is served (and no receipt is asked for)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"


def until_ended(sock: dtp.socket.DTPSocket, timeout: float) -> SubscriptionEnded:
    """Ping on ``sock`` until its server closes it for its subscription being over
    (within ``timeout`` seconds): the error, its code ``CLOSE_SUBSCRIPTION_ENDED``."""
    with pytest.raises(SubscriptionEnded) as ended:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.sendall(b"ping")
            sock.recv(16)
            time.sleep(0.02)
    assert ended.value.code == CLOSE_SUBSCRIPTION_ENDED
    return ended.value
