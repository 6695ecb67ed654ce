"""UDP forwarding when a flow's relay stops answering: the other flows must go on.
Real UDP sockets and DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, DTPError
from dtp.hostid.udp import UdpBilling, UdpForwarder, UdpStats, relay_udp
from dtp.hostid.udp._asyncio import AsyncUdpForwarder
from dtp.hostid.udp._engine import USAGE, control_frame
from dtp.ledger._objects import Sla
from dtp.payments.receipts import Meter
from dtp.protocol.connection import ConnectionConfig
from tests.support.polling import wait_for
from tests.support.procs import server_process
from tests.support.scopes import scope_of
from tests.udp.conftest import UdpDriver
from tests.udp.world import CLIENT, CONNECTION_ID, DEPOSIT_DATAGRAMS, SERVER, DnsLikeBackend, meter

SLA = Sla(1, 1, 0)


def _client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def test_an_idle_flow_whose_relay_stopped_answering_does_not_stall_the_others(
    backend: DnsLikeBackend,
) -> None:
    """Ending an idle metered flow waits for the relay's final report (final_timeout):
    that wait used to run in the thread that forwards every flow, so a relay that had
    gone quiet held up all the others' datagrams for final_timeout."""
    release = threading.Event()
    # (billed, so that the healthy flow's end gets its final report at once)
    billing = UdpBilling(scope_of(CONNECTION_ID), SLA, CLIENT.ed25519_public, 10**6)

    def stalled(sock: dtp.socket.DTPSocket) -> None:  # holds the connection, answers nothing
        release.wait(120)
        sock.close()

    good = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    quiet = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    threads = [
        threading.Thread(
            target=good.serve_forever,
            args=(functools.partial(relay_udp, backend=backend.address, billing=billing),),
            daemon=True,
        ),
        threading.Thread(target=quiet.serve_forever, args=(stalled,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    first = itertools.count()

    def connect() -> dtp.socket.DTPSocket:
        server = quiet if next(first) == 0 else good
        return dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        )

    def meter_for(sock: dtp.socket.DTPSocket) -> Meter:
        return Meter(CLIENT, scope_of(CONNECTION_ID), SLA, 10**6)

    a, b = _client(), _client()
    fwd = UdpForwarder(
        ("127.0.0.1", 0), connect, meter_for=meter_for, idle_timeout=0.4, final_timeout=60.0
    )
    try:
        a.sendto(b"\x00\x01quiet", fwd.address)  # its flow goes to the quiet relay
        assert wait_for(lambda: fwd.sessions == 1, 5)
        worst = 0.0
        a_gone_at: float | None = None
        for i in itertools.count():
            start = time.monotonic()
            b.sendto(b"\x00\x02q%d" % i, fwd.address)
            assert b.recvfrom(65535)[0].startswith(b"\x00\x02q%d" % i)
            worst = max(worst, time.monotonic() - start)
            if a_gone_at is None and fwd.stats.sessions_opened == 2 and fwd.sessions == 1:
                a_gone_at = time.monotonic()  # a's flow is ending: its final report awaited
            if a_gone_at is not None and time.monotonic() - a_gone_at > 1.0:
                break
            time.sleep(0.02)
        # held up for final_timeout (60 s), its recvfrom would time out at 5 s instead
        assert worst < 4.0, f"a healthy flow waited {worst:.2f} s"
    finally:
        release.set()
        fwd.close()
        for server in (good, quiet):
            server.close()
        for thread in threads:
            thread.join(5)
        a.close()
        b.close()
    # close() waited for the flow that was ending
    assert fwd.stats.sessions_closed == 2
    assert billing.latest is not None  # the healthy flow settled its final receipt
    assert billing.refused_receipts == 0


PAYLOAD = b"u" * 4000


def _flood(address: tuple[str, int], stats: UdpStats) -> None:
    """Datagrams to the forwarder until it has dealt with the deposit's worth and more."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        deadline = time.monotonic() + 30
        while stats.datagrams_out + stats.dropped_backlog + stats.dropped_unpaid < (
            DEPOSIT_DATAGRAMS + 1000
        ):
            assert time.monotonic() < deadline, stats.snapshot()
            for _ in range(200):
                client.sendto(PAYLOAD, address)
            time.sleep(0.001)  # (the forwarder's socket buffer would overflow)
    finally:
        client.close()


def _check(stats: UdpStats) -> None:
    assert stats.dropped_backlog > 0  # the relay's carrier backed up
    assert stats.datagrams_out < DEPOSIT_DATAGRAMS
    # the deposit covers every datagram that went out: none is unpaid
    assert stats.dropped_unpaid == 0, stats.snapshot()


def test_datagrams_a_backed_up_carrier_dropped_do_not_use_up_the_deposit(
    driver: UdpDriver,
) -> None:
    """The forwarder counted the datagrams its stalled relay's connection dropped unsent
    as sent: the relay could bill them, and once they reached the deposit every later
    datagram was dropped as unpaid (1315 went out of a 5000-datagram deposit, 1045
    dropped as unpaid)."""
    with server_process("slow") as srv:
        connect = functools.partial(
            dtp.socket.create_connection, srv.endpoint, timeout=10, server_key=srv.key
        )
        with driver.forwarder(
            connect, srv.endpoint, meter_for=lambda _: meter(), final_timeout=0.1
        ) as fwd:
            try:
                _flood(fwd.address, fwd.stats)
                _check(fwd.stats)
            finally:
                driver.abort_flows(fwd)  # (a close would wait for what the peer never reads)


class QuietRelay:
    """A DTP server that holds each connection open and answers nothing (no final
    report) until :attr:`release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
        self.serving = threading.Thread(
            target=self.server.serve_forever, args=(self._quiet,), daemon=True
        )
        self.serving.start()

    def _quiet(self, sock: dtp.socket.DTPSocket) -> None:
        self.release.wait(120)
        sock.close()

    async def connect(self) -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
        return await dtp.aio.open_connection(
            *self.server.address, server_key=SERVER.noise_public, timeout=5
        )

    def close(self) -> None:
        self.release.set()
        self.server.close()
        self.serving.join(5)


@pytest.fixture
def quiet_relay() -> Iterator[QuietRelay]:
    relay = QuietRelay()
    try:
        yield relay
    finally:
        relay.close()


def test_a_second_async_close_waits_for_the_first(quiet_relay: QuietRelay) -> None:
    """The daemon retires a forward on reload (a close() task) and closes it again at
    drain: the second close() returned at once while the first still settled the
    flows, so the daemon went on (closed its ledger, exited) before they were settled
    and before the local port was closed."""
    connect = quiet_relay.connect

    async def main() -> None:
        fwd = await AsyncUdpForwarder.start(
            ("127.0.0.1", 0), connect, meter_for=lambda w: meter(), final_timeout=1.0
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"hello", fwd.address)
            for _ in range(500):
                if fwd.stats.sessions_opened:
                    break
                await asyncio.sleep(0.01)
        first = asyncio.get_running_loop().create_task(fwd.close())
        while fwd.sessions:  # the first close() is settling the flow
            await asyncio.sleep(0.01)
        await fwd.close()
        assert first.done()
        assert fwd.stats.sessions_closed == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(fwd.address)  # the port is free
        await first

    asyncio.run(main())


def test_a_relay_whose_client_resets_the_control_stream_ends_cleanly(driver: UdpDriver) -> None:
    """A client that resets stream 0 (it reads no usage reports): the asyncio relay's
    report, written from the connection's datagram sink, raised StreamReset into the
    connection's event handling, which aborted the carrier without a CLOSE (the client
    saw ConnectionLost, the relay its events cut off). Both relays end alike (the
    engine's control_ended): a logged end and a clean close."""
    backend = DnsLikeBackend()
    billing = UdpBilling(scope_of(CONNECTION_ID), SLA, CLIENT.ed25519_public, 10**9)
    stats = UdpStats()
    returned: list[UdpStats] = []
    raised: list[BaseException] = []

    def relay_kw() -> dict[str, Any]:
        return {"billing": billing, "stats": stats, "idle_timeout": 5}

    try:
        with (
            driver.serve_relay(
                SERVER, backend.address, relay_kw, [], raised=raised, returned=returned
            ) as address,
            dtp.socket.create_connection(
                address, server_key=SERVER.noise_public, timeout=5
            ) as sock,
        ):
            sock.shutdown(dtp.socket.SHUT_RD)  # STOP_SENDING on stream 0
            for i in range(40):  # a report is due after 32
                sock.send_datagram(b"\x00\x01q%d" % i)
            with pytest.raises(DTPError) as ended:
                while True:
                    sock.recv_datagram(5)
            assert type(ended.value) is ConnectionClosed, repr(ended.value)
            assert wait_for(lambda: bool(returned or raised), 5)
    finally:
        backend.close()
    assert raised == [] and returned == [stats]  # returned, not raised
    assert billing.datagrams == stats.datagrams_in >= 32


def test_receipts_go_on_after_a_pause_longer_than_the_socket_timeout() -> None:
    """The forwarder reads the relay's usage reports on the connection's socket, whose
    timeout is the connect's (docs/udp.md's example: timeout=5). A pause in traffic that
    long timed the read out, which ended the reading thread: no receipt was signed after
    it, and once the relay's credit ran out it dropped every datagram as unpaid."""
    backend = DnsLikeBackend()
    billing = UdpBilling(
        scope_of(CONNECTION_ID), SLA, CLIENT.ed25519_public, 10**6, credit_datagrams=20
    )
    relay_stats = UdpStats()
    handler = functools.partial(
        relay_udp, backend=backend.address, billing=billing, stats=relay_stats, report_every=4
    )
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    serving = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    serving.start()
    connect = functools.partial(
        dtp.socket.create_connection, server.address, server_key=SERVER.noise_public, timeout=0.5
    )

    def meter_for(sock: dtp.socket.DTPSocket) -> Meter:
        return Meter(CLIENT, scope_of(CONNECTION_ID), SLA, 10**6, every_requests=1)

    client = _client()
    try:
        with UdpForwarder(("127.0.0.1", 0), connect, meter_for=meter_for) as fwd:
            sent = 0

            def paid() -> int:
                latest = billing.latest
                return 0 if latest is None else latest.total_requests

            def exchange(n: int, tag: bytes) -> None:
                nonlocal sent
                for i in range(n):
                    # receipts may trail (a loaded machine), but within half the credit:
                    # without them going on after the pause, this wait fails
                    covered = functools.partial(lambda floor: paid() >= floor, sent - 10)
                    assert wait_for(covered, timeout=30), (sent, paid())
                    query = b"\x00\x01" + tag + b"%d" % i
                    client.sendto(query, fwd.address)
                    assert client.recvfrom(65535)[0].startswith(query)
                    sent += 1

            exchange(8, b"a")
            time.sleep(1.0)  # the pause: twice the socket's timeout
            exchange(60, b"b")  # three times the relay's credit
    finally:
        client.close()
        server.close()
        serving.join(5)
        backend.close()
    assert relay_stats.dropped_unpaid == 0
    assert billing.latest is not None and billing.latest.total_requests == 68


def test_a_relay_whose_connection_idles_out_ends_at_once(driver: UdpDriver) -> None:
    """The control stream's reader retries a read that timed out (a pause); the read
    that raises the connection's own idle timeout must end it, not be retried: it is
    raised again at once, forever (a core spun until relay_udp gave up waiting for the
    thread, 2 s later)."""
    backend = DnsLikeBackend()
    billing = UdpBilling(scope_of(CONNECTION_ID), SLA, CLIENT.ed25519_public, 10**6)
    quick = ConnectionConfig(
        identity=SERVER, is_client=False, idle_timeout=0.5, keepalive_interval=None
    )
    ended: list[float] = []
    started: list[float] = []

    def relay_kw() -> dict[str, Any]:
        started.append(time.monotonic())
        return {"billing": billing, "idle_timeout": 30}

    silent = ConnectionConfig(
        identity=CLIENT,
        is_client=True,
        server_static=SERVER.noise_public,
        keepalive_interval=None,
    )
    try:
        with (
            driver.serve_relay(SERVER, backend.address, relay_kw, ended, config=quick) as address,
            dtp.socket.create_connection(address, config=silent, timeout=5) as sock,
        ):
            sock.send_datagram(b"\x00\x01hello")
            assert sock.recv_datagram(5).startswith(b"\x00\x01hello")
            # then silence: the relay's side of the connection idles out
            assert wait_for(lambda: ended, 10)
    finally:
        backend.close()
    took = ended[0] - started[0]
    # before: the 0.5 s idle timeout and then 2 s for relay_udp to give up on the thread
    assert took < 2.2, f"the relay took {took:.2f} s"


def test_a_forwarded_flow_whose_connection_idles_out_ends_at_once(driver: UdpDriver) -> None:
    """The forwarder's reply reader took its connection's idle timeout (raised as a
    DTPTimeoutError by every read from then on) for a read that timed out, and spun on
    it until the flow's own idle_timeout ended the session."""
    release = threading.Event()

    def quiet(sock: dtp.socket.DTPSocket) -> None:  # says nothing, not even keepalives
        release.wait(10)
        sock.close()

    mute = ConnectionConfig(identity=SERVER, is_client=False, keepalive_interval=None)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER, config=mute)
    serving = threading.Thread(target=server.serve_forever, args=(quiet,), daemon=True)
    serving.start()
    short = ConnectionConfig(
        identity=CLIENT,
        is_client=True,
        server_static=SERVER.noise_public,
        idle_timeout=0.5,
        keepalive_interval=None,
    )
    connect = functools.partial(
        dtp.socket.create_connection, server.address, config=short, timeout=5
    )
    client = _client()
    try:
        with driver.forwarder(connect, server.address, idle_timeout=30) as fwd:
            client.sendto(b"\x00\x01hello", fwd.address)
            assert wait_for(lambda: fwd.stats.sessions_opened == 1, 5)
            assert wait_for(lambda: fwd.stats.sessions_closed == 1, 5)
            assert fwd.sessions == 0
    finally:
        release.set()
        client.close()
        server.close()
        serving.join(5)


STREAM = 60  # datagrams, one every 20 ms: never the 50 ms pause a forced report waits for


def _steady(address: tuple[str, int]) -> int:
    """A steady stream through the forwarder at ``address``; how many were answered."""
    client = _client()
    try:
        client.setblocking(False)
        answered = 0
        for i in range(STREAM):
            client.sendto(b"\x00\x01s%d" % i, address)
            deadline = time.monotonic() + 0.02
            while time.monotonic() < deadline:
                try:
                    client.recv(100)
                    answered += 1
                except BlockingIOError:
                    time.sleep(0.002)
        client.settimeout(1)
        with contextlib.suppress(TimeoutError):
            while answered < STREAM:
                client.recv(100)
                answered += 1
        return answered
    finally:
        client.close()


def test_a_steady_stream_goes_on_with_a_credit_below_report_every(driver: UdpDriver) -> None:
    """credit_datagrams below report_every (a daemon service may set any credit from 1):
    no report was due before the credit ran out and a steady stream never paused for
    the forced one, so 16 datagrams went through and every later one was dropped as
    unpaid although the client signs whatever is reported."""
    backend = DnsLikeBackend()
    billing = UdpBilling(
        scope_of(CONNECTION_ID), SLA, CLIENT.ed25519_public, 10**6, credit_datagrams=16
    )
    relay_stats = UdpStats()

    def relay_kw() -> dict[str, Any]:
        return {"billing": billing, "stats": relay_stats}

    def meter_for(sock: object) -> Meter:
        return Meter(CLIENT, scope_of(CONNECTION_ID), SLA, 10**6, every_requests=1)

    try:
        with driver.serve_relay(SERVER, backend.address, relay_kw, []) as address:
            connect = functools.partial(
                dtp.socket.create_connection, address, server_key=SERVER.noise_public, timeout=5
            )
            with driver.forwarder(connect, address, meter_for=meter_for) as fwd:
                answered = _steady(fwd.address)
    finally:
        backend.close()
    assert relay_stats.dropped_unpaid == 0
    assert answered == STREAM


def test_async_forwarder_whose_relay_resets_the_control_stream_ends_its_flow_promptly() -> None:
    """A relay that resets stream 0 and then reports usage: the forwarder's receipt
    write raised StreamReset, which ended its control task with the error (never
    retrieved) and without marking the final report as done, so ending the flow
    waited final_timeout for a report that could not come."""
    release = threading.Event()

    def resetting(sock: dtp.socket.DTPSocket) -> None:
        data = sock.recv_datagram(5)
        sock.shutdown(dtp.socket.SHUT_RD)  # STOP_SENDING on stream 0
        sock.sendall(control_frame(b"U", USAGE.pack(1, len(data))))
        release.wait(120)
        sock.close()

    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    serving = threading.Thread(target=server.serve_forever, args=(resetting,), daemon=True)
    serving.start()

    async def main() -> None:
        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            return await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=5
            )

        fwd = await AsyncUdpForwarder.start(
            ("127.0.0.1", 0), connect, meter_for=lambda w: meter(), final_timeout=60.0
        )
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"hello", fwd.address)
                for _ in range(300):
                    flows = list(fwd._flows.values())
                    if flows and flows[0].final.is_set():
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the control task never ended")
            start = time.monotonic()
        finally:
            await fwd.close()
        # waiting for the report that could not come would take final_timeout, 60 s
        assert time.monotonic() - start < 30

    try:
        asyncio.run(main())
    finally:
        release.set()
        server.close()
        serving.join(5)


def test_async_idle_flows_of_a_quiet_relay_end_together(quiet_relay: QuietRelay) -> None:
    """The sweeper ended idle flows one after the other, each waiting up to
    final_timeout for its relay's final report: with a relay that had gone quiet, the
    third idle flow was still open (holding its place under max_sessions) two
    final_timeouts later."""
    release = quiet_relay.release
    connect = quiet_relay.connect

    async def main() -> None:
        fwd = await AsyncUdpForwarder.start(
            ("127.0.0.1", 0),
            connect,
            meter_for=lambda w: meter(),
            idle_timeout=0.3,
            final_timeout=2.0,
        )
        clients = [_client() for _ in range(3)]
        try:
            for client in clients:
                client.sendto(b"hello", fwd.address)
            for _ in range(500):
                if fwd.stats.sessions_opened == 3:
                    break
                await asyncio.sleep(0.01)
            assert fwd.stats.sessions_opened == 3
            start = time.monotonic()
            while fwd.sessions and time.monotonic() - start < 5:
                await asyncio.sleep(0.01)
            # all three gone within one sweep of going idle, not after 2 x final_timeout
            assert time.monotonic() - start < 1.5, fwd.sessions
        finally:
            release.set()
            for client in clients:
                client.close()
            await fwd.close()

    asyncio.run(main())


def test_async_a_flow_idle_while_another_ends_is_swept_on_time(quiet_relay: QuietRelay) -> None:
    """The sweeper awaited the ends of the flows it found idle (each up to final_timeout
    for a quiet relay's final report) before it looked again: a flow going idle just
    after that sweep stayed open until they were done, here 600 s. Each end now runs on
    its own and close() waits for those still going."""
    release = quiet_relay.release
    connect = quiet_relay.connect

    async def until(done: Callable[[], bool]) -> None:
        for _ in range(3000):
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not within 30 s")

    async def main() -> None:
        fwd = await AsyncUdpForwarder.start(
            ("127.0.0.1", 0),
            connect,
            meter_for=lambda w: meter(),
            idle_timeout=0.3,
            final_timeout=600.0,
        )
        first, second = _client(), _client()
        try:
            first.sendto(b"first", fwd.address)
            await until(lambda: fwd.stats.sessions_opened == 1)
            # the first flow went idle: its end awaits the report
            await until(lambda: fwd.sessions == 0)
            second.sendto(b"second", fwd.address)
            await until(lambda: fwd.stats.sessions_opened == 2)
            start = time.monotonic()
            while fwd.sessions and time.monotonic() - start < 30:
                await asyncio.sleep(0.01)
            assert fwd.sessions == 0, "the second flow waited for the first one's end"
            assert fwd.stats.sessions_closed == 0  # the first is still ending
            release.set()  # the relay closes: the first flow's end completes
            await asyncio.wait_for(fwd.close(), 30)
            assert fwd.stats.sessions_closed == 2
        finally:
            release.set()
            first.close()
            second.close()
            await fwd.close()

    asyncio.run(main())


def test_datagrams_a_held_up_relay_left_unread_are_counted(backend: DnsLikeBackend) -> None:
    """A blocking relay held up while its client goes on sending: its connection keeps
    the newest 1024 datagrams unread and drops the others (its control stream's reader
    goes on reading the carrier), and the relay counts them in its UdpStats, where they
    were missing: its counters showed fewer datagrams in than the client sent, with no
    drop to say why."""
    billing = UdpBilling(
        scope_of(CONNECTION_ID), Sla(0, 1, 0), CLIENT.ed25519_public, 10**6, credit_datagrams=5000
    )
    backend.answer = False  # (the client's datagrams alone)
    relay_stats = UdpStats()
    relayed: list[dtp.socket.DTPSocket] = []

    def relay(sock: dtp.socket.DTPSocket) -> None:
        relayed.append(sock)
        relay_udp(sock, backend.address, billing=billing, stats=relay_stats, idle_timeout=10)

    holding, release = threading.Event(), threading.Event()

    def hold() -> None:  # (the relay's engine lock, held: its datagram loop waits)
        holding.set()
        release.wait(30)

    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        threading.Thread(target=server.serve_forever, args=(relay,), daemon=True).start()
        with dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        ) as sock:
            sock.send_datagram(b"first")
            assert wait_for(lambda: relay_stats.datagrams_in == 1)
            run_kept = billing.run_kept
            assert run_kept is not None
            holder = threading.Thread(target=run_kept, args=(hold,), daemon=True)
            holder.start()
            try:
                assert holding.wait(5)
                sent = 1
                for i in range(2000):
                    sent += sock.send_datagrams([i.to_bytes(4, "big") * 16])
                # the connection read them all: queued (the newest 1024), in the relay's
                # hands (one batch, waiting for the lock) or dropped unread
                assert wait_for(lambda: relayed[0].datagrams_dropped >= sent - 1 - 1024 - 256)
            finally:
                release.set()
                holder.join(5)
            # (the connection may go on dropping while the relay catches up: every
            # datagram ends delivered or counted, whatever the split)
            assert wait_for(
                lambda: relay_stats.datagrams_in + relay_stats.dropped_unread == sent
            ), (relay_stats, sent)
            assert relay_stats.dropped_unread == relayed[0].datagrams_dropped > 0
            assert billing.datagrams == relay_stats.datagrams_in
