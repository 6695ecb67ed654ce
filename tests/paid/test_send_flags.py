"""PaidSocket.send takes its flags as the socket's send does, and looks at them before it
waits for payment: a flag the socket refuses raises at once (it waited for a receipt
first, and a client that paid nothing saw the connection closed for want of payment),
and MSG_DONTWAIT waits for nothing, payment included: on a connection paused for a
receipt it asks for one and raises BlockingIOError, nothing sent or charged, as the
socket's send does when nothing fits. Sent again until it goes, nothing is lost.

Blocking servers only (asyncio's writer takes no flags); real connections on 127.0.0.1,
a LocalLedger file in tmp_path."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import dtp.socket
from dtp.errors import DTPError
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from tests.support.paid_inprocess import ident, paid_service, read_reply
from tests.support.reads import recv_exactly

#: the client's first bytes make its first request: with no allowance, unpaid at once
SLA = Sla(price_per_kib=1024, price_per_request=1, min_deposit=1000)
SERVER, CLIENT = ident(0x91), ident(0x92)
#: a pause long enough that the calls below, made within it, were not ended by it
POLICY = ServicePolicy(allowance=0, pause_timeout=3.0, final_receipt_timeout=0.2)
BAD_FLAGS: list[Any] = [socket.MSG_OOB, socket.MSG_PEEK, socket.MSG_DONTWAIT | 1, 1.0, None]


def _outcome(fn: Any, *args: Any) -> str:
    try:
        fn(*args)
    except Exception as exc:
        return type(exc).__name__
    return "sent"


def test_flags_are_checked_before_the_wait_for_payment(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def handle(sock: PaidSocket) -> None:
        paid = sock._paid
        engine = paid.engine
        with engine.lock:  # (the client's byte: its first request, unpaid)
            engine.pump(lambda: engine.conn.usage[1] > 0, 10)
        assert not paid.gate.serving(*engine.conn.usage)  # (paused from the start)
        seen["bad"] = [
            (flags, _outcome(sock._sock.send, b"", flags), _outcome(sock.send, b"x", flags))
            for flags in BAD_FLAGS
        ]
        usage = paid.engine.conn.usage
        # nothing to send is nothing to pay for: 0 at once, as the socket's send returns
        seen["empty"] = [_outcome(sock.send, b"", flags) for flags in (0, socket.MSG_DONTWAIT)]
        seen["dontwait"] = [_outcome(sock.send, b"y" * 1000, socket.MSG_DONTWAIT) for _ in "ab"]
        seen["usage"] = (usage, paid.engine.conn.usage)
        seen["held"] = (paid.credit.send, paid.credit.sending)
        seen["ended"] = paid.ended()
        # a falsy flag of another type is no flag: it waits for payment, as flags=0 does
        sock.settimeout(0.3)
        began = time.monotonic()
        seen["false"] = (_outcome(sock.send, b"z", False), time.monotonic() - began)

    with (
        paid_service(tmp_path, SERVER, CLIENT, 7091, SLA, handle, POLICY) as service,
        dtp.socket.create_connection(
            service.address,
            timeout=10,
            ledger=service.ledger,
            identity=CLIENT,
            deposit=10_000,
            metering=MeteringConfig(enabled=False),  # (pays nothing)
        ) as client,
    ):
        client.sendall(b"?")
        got = b""
        began = time.monotonic()
        try:
            while (data := client.recv(1 << 16)) and time.monotonic() - began < 10:
                got += data
        except DTPError:
            pass  # the connection's end, at the handler's close or the pause timeout
    assert got == b""  # nothing any of the sends took went out
    for flags, plain, paid_outcome in seen["bad"]:
        assert plain != "sent", flags
        assert paid_outcome == plain, (flags, plain, paid_outcome)
    assert seen["empty"] == ["sent", "sent"]
    assert seen["dontwait"] == ["BlockingIOError", "BlockingIOError"]
    before, after = seen["usage"]
    assert before == after
    assert seen["held"] == (0, 0)  # no credit taken, none held as under way
    assert not seen["ended"]  # (waiting for payment, the paused sends had closed it)
    outcome, waited = seen["false"]
    assert outcome == "DTPTimeoutError" and waited >= 0.29, seen["false"]


def test_a_send_without_waiting_made_again_until_it_goes_loses_nothing(tmp_path: Path) -> None:
    """A client that pays when asked: the handler's MSG_DONTWAIT sends, each made again
    on BlockingIOError, deliver every byte once and in order, and the usage counts each
    once."""
    size = 100_000
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    seen: dict[str, Any] = {}

    def handle(sock: PaidSocket) -> None:
        paid = sock._paid
        assert sock.recv(1) == b"g"
        before = paid.engine.conn.usage[0]
        view = memoryview(payload)
        refused = 0
        while view:
            try:
                view = view[sock.send(view, socket.MSG_DONTWAIT) :]
            except BlockingIOError:
                refused += 1
                time.sleep(0.005)
        seen["refused"] = refused
        seen["usage"] = paid.engine.conn.usage[0] - before
        seen["held"] = paid.credit.sending
        sock.recv(1)  # (until the client has it all)

    with (
        paid_service(
            tmp_path,
            SERVER,
            CLIENT,
            7092,
            Sla(price_per_kib=1, price_per_request=0, min_deposit=1000),
            handle,
            ServicePolicy(allowance=8, pause_timeout=10.0),
        ) as service,
        dtp.socket.create_connection(
            service.address, timeout=10, ledger=service.ledger, identity=CLIENT, deposit=1 << 20
        ) as client,
    ):
        client.sendall(b"g")
        got = recv_exactly(client, size)
        client.sendall(b"e")
    assert got == payload
    assert seen["usage"] == size  # each byte in the usage once
    assert seen["held"] == 0


def test_a_send_without_waiting_is_not_held_back_by_the_rate_limit(tmp_path: Path) -> None:
    """Under a bytes/s limit the sends go a take at a time; once the bucket must refill
    before the next, MSG_DONTWAIT raises BlockingIOError (it waited for the refill), and
    what went arrives whole."""
    seen: dict[str, Any] = {}

    def handle(sock: PaidSocket) -> None:
        paid = sock._paid
        assert sock.recv(1) == b"g"
        # 2,000 B/s: takes of 100 bytes, a burst of 500
        paid.buckets.bytes.set_rate(2000, time.monotonic())
        sent = 0
        outcome = "sent"
        for _ in range(40):  # (waiting, that is 2 s of the rate: far past the burst)
            try:
                sent += sock.send(bytes(1000), socket.MSG_DONTWAIT)
            except BlockingIOError:
                outcome = "BlockingIOError"
                break
        seen["outcome"] = outcome
        seen["sent"] = sent
        paid.buckets.bytes.set_rate(0, time.monotonic())
        sock.sendall(b"end")
        sock.recv(1)

    with paid_service(
        tmp_path,
        SERVER,
        CLIENT,
        7093,
        Sla(price_per_kib=1, price_per_request=0, min_deposit=1000),
        handle,
        ServicePolicy(pause_timeout=10.0),
    ) as service:
        got = read_reply(service, CLIENT)
    assert seen["outcome"] == "BlockingIOError"
    assert 0 < seen["sent"] < 40 * 1000
    assert got == bytes(seen["sent"])  # (what came before the handler's b"end")
