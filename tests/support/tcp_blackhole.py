"""A TCP address on 127.0.0.1 whose SYNs go unanswered, for connect timeouts."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def unanswered_address() -> Iterator[tuple[str, int]]:
    """A listener with a full accept queue (Linux then drops new SYNs, as a host behind
    a dropping firewall does); skips the test where the kernel answers every connect."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address: tuple[str, int] = listener.getsockname()
    fillers = []
    try:
        for _ in range(8):  # until one is left unanswered: the queue is full
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
            if not select.select([], [filler], [], 0.2)[1]:
                break
        else:
            pytest.skip("the kernel answered every connect")
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
