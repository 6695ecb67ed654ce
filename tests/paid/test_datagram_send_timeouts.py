"""PaidSocket.send_datagram and send_datagrams keep the socket's timeout, as the paid
stream sends do (tests/paid/test_send_timeouts.py): a non-blocking socket waits for
nothing -- BlockingIOError when the rate limits are in debt or the credit is held by
writes under way, nothing sent or charged -- and a positive timeout bounds those waits
(DTPTimeoutError).

Blocking servers only (asyncio's datagram sends never wait); real connections on
127.0.0.1, a LocalLedger file in tmp_path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from tests.support.paid_inprocess import ident, paid_service, read_reply
from tests.support.reads import recv_through

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=1000)
SERVER, CLIENT = ident(0x95), ident(0x96)
RATE = 2000  # bytes/s: a burst of 500
SIZE = 500  # a datagram: a quarter of a second of the rate
COUNT = 12  # 3 s of the rate in all


def _outcome(fn: Callable[[], object]) -> str:
    try:
        fn()
    except Exception as exc:
        return type(exc).__name__
    return "sent"


def _under_rate(tmp_path: Path, port: int, timeout: float) -> dict[str, Any]:
    """A handler's COUNT datagram sends under the bytes/s limit, its socket's timeout
    ``timeout`` (0: set non-blocking), until one raises: how it ended, how many went,
    the usage they added and the credit left held."""
    seen: dict[str, Any] = {}

    def handle(sock: PaidSocket) -> None:
        paid = sock._paid
        assert sock.recv(1) == b"g"
        paid.buckets.bytes.set_rate(RATE, time.monotonic())
        sock.settimeout(timeout)
        before = paid.engine.conn.usage[0]
        went = 0
        outcome = "sent"
        for _ in range(COUNT):
            outcome = _outcome(lambda: sock.send_datagram(bytes(SIZE)))
            if outcome != "sent":
                break
            went += 1
        seen.update(
            outcome=outcome,
            went=went,
            usage=paid.engine.conn.usage[0] - before,
            held=paid.credit.sending,
        )
        paid.buckets.bytes.set_rate(0, time.monotonic())
        sock.settimeout(None)
        sock.sendall(b"end")
        sock.recv(1)

    with paid_service(
        tmp_path, SERVER, CLIENT, port, SLA, handle, ServicePolicy(pause_timeout=10.0)
    ) as service:
        read_reply(service, CLIENT)
    return seen


@pytest.mark.parametrize(("timeout", "raised"), [(0, "BlockingIOError"), (0.01, "DTPTimeoutError")])
def test_the_rate_limit_holds_a_datagram_send_no_longer_than_its_timeout(
    tmp_path: Path, timeout: float, raised: str
) -> None:
    """The first datagram goes on the bucket's burst, and its debt holds back the next
    for a quarter of a second: past a non-blocking socket's wait and a 10 ms timeout,
    so the send raises there, and the usage counts only the datagrams that went."""
    seen = _under_rate(tmp_path, 7085 if timeout == 0 else 7086, timeout)
    assert seen["outcome"] == raised
    assert 0 < seen["went"] < COUNT
    assert seen["usage"] == seen["went"] * SIZE  # nothing charged for what did not go
    assert seen["held"] == 0


class _Waits(threading.Condition):
    """The connection's credit condition, recording the timeout of every wait on it (over
    the connection's lock, which its methods take themselves)."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        return super().wait(timeout)


def test_a_datagram_send_waits_for_credit_held_by_a_write_within_its_timeout(
    tmp_path: Path,
) -> None:
    """A write under way holds all but 150 bytes of the credit of a client that pays
    nothing (8 KiB of allowance): on the non-blocking socket a batch of two datagrams
    of 100 bytes sends the first and returns 1 without waiting on the credit, and a
    datagram send then raises BlockingIOError without waiting; one with a 0.3 s timeout
    waits no longer than that for the credit (not the request interval, 5 s):
    DTPTimeoutError. The usage counts the one datagram that went. Once the write ends,
    the next datagram goes."""
    seen: dict[str, Any] = {}
    datagram = b"d" * 100

    def handle(sock: PaidSocket) -> None:
        paid = sock._paid
        assert sock.recv(1) == b"g"
        waits = _Waits(paid._lock)
        paid._cond = waits
        # the credit a sendall in another thread takes before it sends
        paid.wait_send(sock._sock)
        held = paid.reserve(paid.credit.send - 150)
        before = paid.engine.conn.usage[0]
        sock.setblocking(False)
        seen["batch"] = (sock.send_datagrams([datagram, datagram]), waits.timeouts[:])
        seen["nonblocking"] = (_outcome(lambda: sock.send_datagram(datagram)), waits.timeouts[:])
        sock.settimeout(0.3)
        seen["timed"] = (_outcome(lambda: sock.send_datagram(datagram)), waits.timeouts[:])
        seen["usage"] = paid.engine.conn.usage[0] - before
        paid.sent(held)  # (the write ended, sending nothing)
        sock.settimeout(None)
        seen["after"] = _outcome(lambda: sock.send_datagram(datagram))
        sock.sendall(b"end")
        sock.recv(1)

    with (
        paid_service(
            tmp_path,
            SERVER,
            CLIENT,
            7087,
            SLA,
            handle,
            ServicePolicy(allowance=8, pause_timeout=10.0, request_interval=5.0),
        ) as service,
        dtp.socket.create_connection(
            service.address,
            timeout=10,
            ledger=service.ledger,
            identity=CLIENT,
            deposit=1 << 20,
            metering=MeteringConfig(enabled=False),  # (pays nothing)
        ) as client,
    ):
        client.sendall(b"g")
        got = [client.recv_datagram(), client.recv_datagram()]
        recv_through(client, b"end")
        client.sendall(b"e")
    assert seen["batch"] == (1, [])
    assert seen["nonblocking"] == ("BlockingIOError", [])
    outcome, timeouts = seen["timed"]
    assert outcome == "DTPTimeoutError"
    assert timeouts and all(t is not None and t <= 0.3 for t in timeouts), timeouts
    assert seen["usage"] == len(datagram)
    assert seen["after"] == "sent"
    assert got == [datagram, datagram]
