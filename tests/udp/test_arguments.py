"""The UDP forwarders and relays of both drivers check their numbers up front (one
test body each, over the ``driver`` fixture): ``UdpForwarder`` took an
``idle_timeout`` of None (its thread died silently at the first sweep), 0 or NaN, and a
float ``max_pending`` (every new source's datagrams lost, an "unexpected error" logged
per batch); ``relay_udp`` took ``idle_timeout=None`` and failed inside its loop.

The UDP number checks and closes in both APIs.

``dtp.hostid.udp.check_seconds`` takes infinity as "never", for both APIs' forwarders. The
asyncio forwarder's close() waits for a flow's final report with
``asyncio.wait_for(..., inf)``, which waits for good; the blocking one's with
``threading.Event.wait(inf)``, which raises OverflowError at once: its close() failed
past every session and the local port, all left open, and the flows' final reports were
never waited for.

The asyncio forwarder's close() spares the task it runs in when it cancels the flows'
tasks (a close() from ``connect()``, which the blocking twin supports), but it ends the
flows in gather()'s tasks, and each end cancelled its flow's tasks but its own: the
connect calling close() was cancelled, and the close with it, midway (the other flows'
ends and connects cut short, CancelledError raised into the connect).

Real UDP sockets and DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import InvalidArgument
from dtp.hostid.udp import UdpForwarder
from dtp.hostid.udp._asyncio import AsyncUdpForwarder
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.receipts import Meter
from tests.support.leaks import resource_warnings
from tests.support.polling import wait_for
from tests.support.scopes import scope_of
from tests.udp.conftest import UdpDriver
from tests.udp.world import CLIENT, CONNECTION_ID

#: Forwarder settings both forwarders refuse, each naming the setting.
BAD_FORWARDER_ARGS = [
    {"idle_timeout": 0},
    {"idle_timeout": -1.0},
    {"idle_timeout": None},
    {"idle_timeout": float("nan")},
    {"idle_timeout": True},
    {"max_pending": 1.5},
    {"max_pending": -1},
    {"max_sessions": 0},
    {"max_sessions": True},
    {"final_timeout": -1},
    {"retry_after": "1"},
]


@pytest.mark.parametrize("kw", BAD_FORWARDER_ARGS, ids=repr)
def test_a_forwarder_refuses_bad_numbers(kw: dict[str, Any], driver: UdpDriver) -> None:
    def connect() -> Any:
        raise AssertionError("no flow is made")

    def make() -> None:
        with (
            pytest.raises(InvalidArgument, match=next(iter(kw))),
            driver.forwarder(connect, ("127.0.0.1", 9), **kw),
        ):
            pass  # (a forwarder made with them fails the test: no InvalidArgument)

    assert resource_warnings(make) == []  # (refused before the bind)


@pytest.mark.parametrize(
    "kw", [{"idle_timeout": None}, {"idle_timeout": 0}, {"report_every": 0}], ids=repr
)
def test_a_relay_refuses_a_bad_number_and_closes_its_connection(
    kw: dict[str, Any], driver: UdpDriver
) -> None:
    """The asyncio relay given ``idle_timeout=None`` raised a TypeError after the
    backend socket was made and its reader registered: the socket, the reader and the
    connection were left open; the blocking one failed inside its loop."""
    _relay_refuses(driver, kw, next(iter(kw)))


def _relay_refuses(driver: UdpDriver, kw: dict[str, Any], setting: str) -> None:
    """A relay given ``kw`` raises InvalidArgument naming ``setting``, closes its
    connection and leaves no socket open."""
    identity = HostIdentity.generate()
    raised: list[BaseException] = []
    ended: list[float] = []
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    backend.bind(("127.0.0.1", 0))

    def run() -> None:
        with (
            driver.serve_relay(
                identity, backend.getsockname(), lambda: kw, ended, raised=raised
            ) as address,
            dtp.socket.create_connection(
                address, server_key=identity.noise_public, timeout=5
            ) as client,
        ):
            assert wait_for(lambda: bool(ended), 20)
            assert len(raised) == 1 and isinstance(raised[0], InvalidArgument), raised
            assert setting in str(raised[0])
            client.settimeout(10)
            with contextlib.suppress(ConnectionError):
                assert client.recv(1) == b""  # closed by the relay

    try:
        assert resource_warnings(run) == []
    finally:
        backend.close()


BOUND = 5.0
_FINAL_ASKED = 5  # the forwarder's control frame b"F": 4-byte length, then the kind


@pytest.mark.parametrize("final_timeout", [float("inf"), 1e300], ids=["inf", "1e300"])
def test_a_blocking_forwarder_with_an_endless_final_timeout_closes(final_timeout: float) -> None:
    """``final_timeout=float("inf")`` passes the check ("never" gives up waiting for the
    final report), as does a finite one past what a thread can wait for; the blocking
    close() raised OverflowError instead of waiting, and left the flow's connection and
    the local port open."""
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    reached = threading.Event()
    asked = threading.Event()
    relay_done = threading.Event()

    def relay(sock: dtp.socket.DTPSocket) -> None:
        # a relay that reads the request for the final report and ends the connection
        # (no receipt comes): the forwarder's wait for it ends with the control stream
        try:
            reached.set()
            got = b""
            while len(got) < _FINAL_ASKED:
                chunk = sock.recv(_FINAL_ASKED - len(got))
                if not chunk:
                    break
                got += chunk
            if got:
                asked.set()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            relay_done.set()

    threading.Thread(target=server.serve_forever, args=(relay,), daemon=True).start()

    def connect() -> dtp.socket.DTPSocket:
        return dtp.socket.create_connection(
            server.address, server_key=identity.noise_public, timeout=BOUND
        )

    def meter_for(sock: dtp.socket.DTPSocket) -> Meter:
        return Meter(CLIENT, scope_of(CONNECTION_ID), Sla(1, 1, 0), 10**9)

    fwd = UdpForwarder(("127.0.0.1", 0), connect, meter_for=meter_for, final_timeout=final_timeout)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raised: list[BaseException] = []
    closed = threading.Event()

    def close() -> None:
        try:
            fwd.close()
        except BaseException as exc:  # (the result looked at below)
            raised.append(exc)
        closed.set()

    try:
        client.sendto(b"x", fwd.address)
        assert reached.wait(BOUND)
        # the session is made once the connection is (its meter with it): no event
        # tells, so it is looked at
        deadline = time.monotonic() + BOUND
        while not fwd.sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fwd.sessions == 1
        closer = threading.Thread(target=close, daemon=True)
        closer.start()
        assert closed.wait(BOUND), "close() hung"
        assert raised == [], raised
        assert asked.is_set()  # the final report was asked for, and waited for
        assert relay_done.wait(BOUND)
        assert fwd.stats.sessions_closed == 1
        assert fwd._udp.fileno() == -1  # the local port is closed
    finally:
        client.close()
        with contextlib.suppress(BaseException):
            fwd._udp.close()
        server.close()


def test_an_asyncio_close_from_connect_is_not_cancelled_by_its_own_flow_end() -> None:
    """A connect() that closes the forwarder (the blocking twin's close() allows it:
    ``_own_thread``): the close ended every flow, its caller's too, and that end
    cancelled the caller -- and so the close itself, before it had waited for the other
    connect to unwind."""

    async def main() -> tuple[list[str], bool]:
        first_started = asyncio.Event()
        unwound = asyncio.Event()
        outcome: list[str] = []
        told = asyncio.Event()  # the close called from connect() ended
        fwd: AsyncUdpForwarder | None = None

        async def slow() -> None:
            first_started.set()
            try:
                await asyncio.Event().wait()  # (a connect that takes its time)
            finally:
                await asyncio.sleep(0.05)  # (undoing what it made takes a moment)
                unwound.set()

        async def closing() -> None:
            assert fwd is not None
            try:
                await fwd.close()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
            else:
                outcome.append(
                    "returned, the other connect unwound" if unwound.is_set() else "early"
                )
            finally:
                told.set()

        calls: list[int] = []

        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            calls.append(1)
            await (slow() if len(calls) == 1 else closing())
            raise OSError("the forwarder is closed")

        fwd = await AsyncUdpForwarder.start(("127.0.0.1", 0), connect)
        first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            first.sendto(b"x", fwd.address)
            await asyncio.wait_for(first_started.wait(), BOUND)
            second.sendto(b"y", fwd.address)
            await asyncio.wait_for(told.wait(), BOUND)
            await asyncio.wait_for(fwd.close(), BOUND)  # (done: returns at once)
            return outcome, fwd._sock is None
        finally:
            first.close()
            second.close()

    outcome, closed = asyncio.run(main())
    assert outcome == ["returned, the other connect unwound"]
    assert closed
