"""PaidSocket.send and sendall keep the socket's timeout, as DTPSocket's do: a
non-blocking socket (``settimeout(0)``) waits for nothing, as MSG_DONTWAIT does
(tests/paid/test_send_flags.py) -- BlockingIOError when the rate limits would hold the
send back, nothing sent or charged -- and a positive timeout bounds the whole call,
the rate limits' waits included (DTPTimeoutError): at 2,000 B/s, a send of 6 kB would
otherwise wait 3 s.

Blocking servers only (asyncio's writer has no timeout); real connections on
127.0.0.1, a LocalLedger file in tmp_path."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.ledger._objects import Sla
from tests.support.paid_inprocess import ident, paid_service, read_reply

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=1000)
SERVER, CLIENT = ident(0x93), ident(0x94)
RATE = 2000  # bytes/s: takes of 100 bytes, a burst of 500
SIZE = 6000  # 3 s of the rate: far past the burst


def _served(
    tmp_path: Path, port: int, send: Callable[[PaidSocket], None]
) -> tuple[dict[str, Any], bytes]:
    """Run ``send`` in a handler under the bytes/s limit; what it raised (or "sent"),
    how many bytes the connection's usage counts as sent by it, and what the client
    got."""
    seen: dict[str, Any] = {}

    def handle(sock: PaidSocket) -> None:
        paid = sock._paid
        assert sock.recv(1) == b"g"
        paid.buckets.bytes.set_rate(RATE, time.monotonic())
        before = paid.engine.conn.usage[0]
        try:
            send(sock)
            seen["outcome"] = "sent"
        except Exception as exc:
            seen["outcome"] = type(exc).__name__
        seen["usage"] = paid.engine.conn.usage[0] - before
        seen["held"] = paid.credit.sending
        paid.buckets.bytes.set_rate(0, time.monotonic())
        sock.settimeout(None)
        sock.sendall(b"end")
        sock.recv(1)

    with paid_service(
        tmp_path, SERVER, CLIENT, port, SLA, handle, ServicePolicy(pause_timeout=10.0)
    ) as service:
        got = read_reply(service, CLIENT)
    return seen, got


def _sends(sock: PaidSocket) -> None:
    """Send until the sends have taken SIZE bytes."""
    sent = 0
    while sent < SIZE:
        sent += sock.send(bytes(SIZE - sent))


def _sending(call: str, timeout: float) -> Callable[[PaidSocket], None]:
    """A handler's send of SIZE bytes by ``call`` ("send": as many calls as it takes),
    with the socket's timeout ``timeout`` (0: set non-blocking)."""

    def send(sock: PaidSocket) -> None:
        if timeout == 0:
            sock.setblocking(False)
        else:
            sock.settimeout(timeout)
        if call == "send":
            _sends(sock)
        else:
            sock.sendall(bytes(SIZE))

    return send


def _assert_cut(seen: dict[str, Any], got: bytes, raised: str) -> None:
    """The send ended by ``raised`` part of the way, what went counted once, nothing
    left held for a send."""
    assert seen["outcome"] == raised
    assert 0 < len(got) < SIZE
    assert seen["usage"] == len(got)  # what went, each byte once: nothing else charged
    assert seen["held"] == 0


@pytest.mark.parametrize("call", ["send", "sendall"])
def test_a_non_blocking_send_is_not_held_back_by_the_rate_limit(tmp_path: Path, call: str) -> None:
    seen, got = _served(tmp_path, 7094 if call == "send" else 7095, _sending(call, 0))
    _assert_cut(seen, got, "BlockingIOError")


@pytest.mark.parametrize("call", ["send", "sendall"])
def test_a_timeout_bounds_the_wait_for_the_rate_limit(tmp_path: Path, call: str) -> None:
    """A send's timeout shorter than the wait for the bucket's next take (50 ms at the
    rate), a sendall's shorter than the 3 s of the whole: DTPTimeoutError, with what
    went counted once."""
    timeout = 0.01 if call == "send" else 0.5
    seen, got = _served(tmp_path, 7096 if call == "send" else 7097, _sending(call, timeout))
    _assert_cut(seen, got, "DTPTimeoutError")
