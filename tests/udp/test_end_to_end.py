"""UDP through DTP: real UDP sockets on 127.0.0.1 on both ends, a DTP connection per
flow, loss tolerated, per-datagram metering exact."""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import DTPError, DTPTimeoutError, LocalProtocolError
from dtp.hostid.udp import UdpBilling, UdpForwarder, UdpStats, billing_from_ledger, relay_udp
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import Meter, Receipt, ReceiptScope, fee
from tests.support.scopes import scope_of
from tests.udp.world import DnsLikeBackend

OFF = MeteringConfig(enabled=False)  # billed per datagram instead (UdpBilling)

SERVER = HostIdentity.from_private_bytes(b"\x51" * 32, b"\x51" * 32)
CLIENT = HostIdentity.from_private_bytes(b"\x52" * 32, b"\x52" * 32)


def _serve(server: dtp.socket.DTPServer, handler: object) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    thread.start()
    return thread


def _client() -> socket.socket:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.settimeout(2.0)
    return c


def _taken(stats: UdpStats) -> int:
    """The datagrams a forwarder has taken from its UDP side: sent on, or dropped."""
    return (
        stats.datagrams_out
        + stats.dropped_oversized
        + stats.dropped_unpaid
        + stats.dropped_no_session
        + stats.dropped_backlog
        + stats.dropped_send_failed
        + stats.dropped_finishing
    )


def _relay_took(stats: UdpStats) -> int:
    """The datagrams a relay has taken off its DTP connection: delivered, or dropped
    (those the connection dropped before the relay read them too)."""
    return (
        stats.datagrams_in
        + stats.dropped_oversized
        + stats.dropped_unpaid
        + stats.dropped_rate_limited
        + stats.dropped_send_failed
        + stats.dropped_finishing
        + stats.dropped_unread
    )


def _replies_until(client: socket.socket, replies: dict[int, bytes], index: int | None) -> None:
    """Read ``client``'s replies into ``replies`` (by their query's index) until the one
    to query ``index`` came or the socket timed out (None: until it times out). A reply
    late past the timeout is another query's when it comes: matched by its index, not
    taken for the next query's (as a plain recvfrom per query did)."""
    while index is None or index not in replies:
        try:
            reply, _ = client.recvfrom(65535)
        except TimeoutError:
            return  # lost, or later than the wait: tolerated (and read later if it came)
        replies[struct.unpack(">H", reply[:2])[0]] = reply


def test_datagrams_on_the_socket_api() -> None:
    """send_datagram / recv_datagram; oversized is a clear local error."""
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:

        def echo(sock: dtp.socket.DTPSocket) -> None:
            sock.settimeout(5)
            with contextlib.suppress(DTPError):
                while True:
                    sock.send_datagram(sock.recv_datagram()[::-1])

        _serve(server, echo)
        with dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        ) as sock:
            for word in (b"abc", b"", b"x" * sock.max_datagram_size):
                sock.send_datagram(word)
                assert sock.recv_datagram() == word[::-1]
            with pytest.raises(LocalProtocolError, match="exceeds"):
                sock.send_datagram(b"y" * (sock.max_datagram_size + 1))
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv_datagram()
            assert sock.datagrams_dropped == 0


def test_datagram_arguments_are_checked_before_anything_is_sent() -> None:
    """Only bytes-like datagrams are taken (an int is not five zero bytes); a batch with
    a bad one sends none of it; recv_datagrams wants a count of at least 1."""
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        got: list[bytes] = []

        def collect(sock: dtp.socket.DTPSocket) -> None:
            sock.settimeout(5)
            with contextlib.suppress(DTPError):
                while True:
                    datagram = sock.recv_datagram()
                    got.append(datagram)
                    if datagram == b"end":
                        sock.sendall(b"done")

        _serve(server, collect)
        with dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        ) as sock:
            for bad in (5, "abc", None, 2.5):
                with pytest.raises(TypeError, match="bytes-like object is required"):
                    sock.send_datagram(bad)  # type: ignore[arg-type]
            too_big = b"y" * (sock.max_datagram_size + 1)
            with pytest.raises(LocalProtocolError, match="exceeds"):
                sock.send_datagrams([b"lost-1", too_big, b"lost-2"])
            with pytest.raises(TypeError):
                sock.send_datagrams([b"lost-3", 7])  # type: ignore[list-item]
            with pytest.raises(ValueError, match="at least 1"):
                sock.recv_datagrams(0)
            sock.send_datagrams([bytearray(b"kept"), memoryview(b"end")])
            assert sock.recv(4) == b"done"
        assert got == [b"kept", b"end"]


def test_dns_style_queries_through_the_tunnel(backend: DnsLikeBackend) -> None:
    relay_stats = UdpStats()
    handler = functools.partial(relay_udp, backend=backend.address, stats=relay_stats)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        _serve(server, handler)
        connect = functools.partial(
            dtp.socket.create_connection,
            server.address,
            server_key=SERVER.noise_public,
            timeout=5,
        )
        with UdpForwarder(("127.0.0.1", 0), connect) as fwd:
            clients = [_client() for _ in range(3)]
            replies: dict[int, bytes] = {}
            for i in range(150):
                client = clients[i % 3]
                query = struct.pack(">H", i) + f"host{i}.example".encode()
                client.sendto(query, fwd.address)
                _replies_until(client, replies, i)
            # late replies (a loaded machine: past a client's 2 s) count once read: every
            # one the forwarder delivered is read
            for client in clients:
                client.settimeout(0.1)
            deadline = time.monotonic() + 10
            while len(replies) < fwd.stats.datagrams_in and time.monotonic() < deadline:
                for client in clients:
                    _replies_until(client, replies, None)
            for i, reply in replies.items():
                query = struct.pack(">H", i) + f"host{i}.example".encode()
                assert reply[:-4] == query
                assert struct.unpack(">I", reply[-4:])[0] == sum(query) & 0xFFFFFFFF
            answers = len(replies)
            assert answers >= 140  # UDP may lose a few: tolerated
            assert fwd.sessions == 3  # one DTP connection per source address
            for c in clients:
                c.close()
        stats = fwd.stats.snapshot()
        assert stats["sessions_opened"] == stats["sessions_closed"] == 3
        assert stats["datagrams_in"] == answers
    # the relay delivered each query it got to the backend, and the backend saw them
    deadline = time.monotonic() + 5
    while relay_stats.datagrams_in < stats["datagrams_out"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert relay_stats.datagrams_in == stats["datagrams_out"]
    assert backend.received == relay_stats.datagrams_in


def test_bulk_stream_with_exact_metering_and_claim(tmp_path: Path) -> None:
    """A one-way bulk UDP stream through a paid host-ID service: the relay's count, the
    client's meter and the claimed receipt agree exactly; loss is tolerated; MIST is
    conserved."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    sla = Sla(price_per_kib=2, price_per_request=1, min_deposit=1000)
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, 53, "udp", sla)
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    sink = DnsLikeBackend()
    sink.answer = False
    billings: list[UdpBilling] = []
    kept: dict[str, Receipt] = {}
    relay_stats = UdpStats()

    def handler(sock: dtp.socket.DTPSocket) -> None:
        assert sock.peer_connection_id is not None
        billing = billing_from_ledger(
            ledger, sock.peer_connection_id, on_receipt=lambda r: kept.update({r.connection_id: r})
        )
        billings.append(billing)
        relay_udp(sock, sink.address, billing=billing, stats=relay_stats, idle_timeout=10)

    server = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER, ledger=ledger, host_id=host, port=53
    )
    ledger.set_endpoints(SERVER, host, [f"tcp://127.0.0.1:{server.address[1]}"])
    _serve(server, handler)
    meters: list[Meter] = []

    def meter_for(sock: dtp.socket.DTPSocket) -> Meter:
        assert sock.connection_id is not None and sock.escrow_id is not None
        scope = ReceiptScope(ledger.package_id, sock.escrow_id, sock.connection_id)
        meter = Meter(CLIENT, scope, sla, 50_000, every_requests=16)
        meters.append(meter)
        return meter

    connect = functools.partial(
        dtp.socket.create_connection,
        f"dtp://{host}:53",
        ledger=ledger,
        identity=CLIENT,
        deposit=50_000,
        timeout=5,
        metering=OFF,
    )
    sent = 2000
    burst = 64

    def burst_settled(end: int, fwd: UdpForwarder, whole_by: float) -> bool:
        """Whether the forwarder has taken the first ``end`` datagrams off its socket
        (or ``whole_by`` passed: the kernel may have dropped some before it), the relay
        all the forwarder passed on, and receipts cover all but half the relay's credit
        of them."""
        if not billings:
            return False  # (the flow's connection is not made yet)
        billing = billings[0]
        taken = _taken(fwd.stats)
        lost_before = taken - fwd.stats.datagrams_out
        paid = 0 if billing.latest is None else billing.latest.total_requests
        return (
            (taken >= end or time.monotonic() >= whole_by)
            and _relay_took(relay_stats) + lost_before >= taken
            and billing.datagrams - paid <= billing.credit_datagrams // 2
        )

    try:
        with UdpForwarder(("127.0.0.1", 0), connect, meter_for=meter_for) as fwd:
            client = _client()
            payload = bytes(range(256)) * 2
            # a paced stream, in bursts: each waits until the relay took it and receipts
            # kept up (paced by the forwarder alone, a loaded machine left the relay's
            # reader behind, past the 1,024 datagrams its connection queues and its
            # credit of 1,024 unpaid ones). One deadline for the stream: a flow never
            # paid for fails the checks below, not after a wait per burst
            deadline = time.monotonic() + 30
            for start in range(0, sent, burst):
                end = min(start + burst, sent)
                for i in range(start, end):
                    client.sendto(struct.pack(">I", i) + payload[4:], fwd.address)
                whole_by = time.monotonic() + 1.0
                while not burst_settled(end, fwd, whole_by) and time.monotonic() < deadline:
                    time.sleep(0.002)
            client.close()
            deadline = time.monotonic() + 10
            while fwd.stats.datagrams_out + fwd.stats.dropped_unpaid < sent and (
                time.monotonic() < deadline
            ):
                time.sleep(0.01)
            forwarded = fwd.stats.datagrams_out
        # closing settled the relay's final count; wait for its receipt to arrive
        (meter,) = meters
        (billing,) = billings
        deadline = time.monotonic() + 10
        while billing.latest != meter.latest and time.monotonic() < deadline:
            time.sleep(0.01)
        # loopback UDP and DTP datagrams may drop a few under load: tolerated, not billed
        assert sent * 0.9 <= billing.datagrams <= forwarded <= sent
        assert relay_stats.datagrams_in == billing.datagrams  # (delivered: each billed)
        assert meter.total_requests == billing.datagrams
        assert meter.total_bytes == billing.datagrams * 512 == billing.bytes
        assert billing.latest is not None and billing.latest == meter.latest
        assert billing.latest.total_amount == fee(sla, billing.bytes, billing.datagrams)
        assert billing.refused_receipts == 0
        deadline = time.monotonic() + 1  # the sink's own socket may drop: tolerated
        while sink.received < billing.datagrams and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.received <= billing.datagrams
        escrow = ledger.get_connection(billing.connection_id).escrow
        paid = ledger.claim(SERVER, escrow, kept[billing.connection_id])
        assert paid == fee(sla, billing.bytes, billing.datagrams)
    finally:
        server.close()
        sink.close()
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_unpaid_datagrams_are_dropped_and_counted(backend: DnsLikeBackend) -> None:
    """A client that sends no receipts gets credit_datagrams through, then drops."""
    connection_id = "0x" + "ab" * 32
    billing = UdpBilling(
        scope_of(connection_id), Sla(0, 1, 0), CLIENT.ed25519_public, 100, credit_datagrams=5
    )
    relay_stats = UdpStats()
    handler = functools.partial(
        relay_udp, backend=backend.address, billing=billing, stats=relay_stats
    )
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        _serve(server, handler)
        with dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        ) as sock:
            for i in range(12):
                sock.send_datagram(bytes([i]))
            sock.settimeout(2)
            replies = [sock.recv_datagram() for _ in range(5)]
            assert sorted(r[0] for r in replies) == [0, 1, 2, 3, 4]
            deadline = time.monotonic() + 5
            while relay_stats.dropped_unpaid < 7 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert relay_stats.dropped_unpaid == 7 and billing.datagrams == 5
            # a receipt covering 10 datagrams opens the way for 5 more (credit 5 + paid 10)
            meter = Meter(CLIENT, scope_of(connection_id), Sla(0, 1, 0), 100, every_requests=0)
            meter.record(0, requests=10)
            receipt = meter.flush(0)
            assert receipt is not None
            assert billing.receipt(receipt.encode())
            assert not billing.receipt(receipt.encode())  # replayed: refused
            assert billing.refused_receipts == 1
            for i in range(12, 22):
                sock.send_datagram(bytes([i]))
            got = {sock.recv_datagram()[0] for _ in range(10)}
            assert got == set(range(12, 22))


def test_forwarder_limits_and_idle_sessions(backend: DnsLikeBackend) -> None:
    handler = functools.partial(relay_udp, backend=backend.address, idle_timeout=5)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        _serve(server, handler)
        connect = functools.partial(
            dtp.socket.create_connection, server.address, server_key=SERVER.noise_public, timeout=5
        )
        with UdpForwarder(("127.0.0.1", 0), connect, idle_timeout=0.5, max_sessions=1) as fwd:
            a, b = _client(), _client()
            a.sendto(b"\x00\x01first", fwd.address)
            assert a.recvfrom(65535)[0].startswith(b"\x00\x01first")
            b.sendto(b"\x00\x02second", fwd.address)  # over the session limit: dropped
            deadline = time.monotonic() + 5
            while fwd.stats.dropped_no_session < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert fwd.stats.dropped_no_session == 1
            # oversized for a DTP datagram: dropped before it is sent or metered
            a.sendto(b"z" * 20_000, fwd.address)
            deadline = time.monotonic() + 5
            while fwd.stats.dropped_oversized < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert fwd.stats.dropped_oversized == 1
            # the idle session is closed, freeing the slot for b
            deadline = time.monotonic() + 5
            while fwd.sessions and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fwd.sessions == 0
            b.sendto(b"\x00\x03again", fwd.address)
            assert b.recvfrom(65535)[0].startswith(b"\x00\x03again")
            a.close()
            b.close()


def test_asyncio_relay_and_forwarder_paid_by_host_id(
    tmp_path: Path, backend: DnsLikeBackend
) -> None:
    """The asyncio twins: DNS-style queries through AsyncUdpForwarder → DTP (by host
    ID, metered) → relay_udp_async → backend; the receipt pays exactly the relay's count."""
    import asyncio

    import dtp.aio
    from dtp.hostid.udp._asyncio import AsyncUdpForwarder, relay_udp_async

    ledger = LocalLedger(tmp_path / "ledger.db")
    sla = Sla(price_per_kib=3, price_per_request=2, min_deposit=500)
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, 53, "udp", sla)
    ledger.faucet(CLIENT.sui_address, 100_000)
    billings: list[UdpBilling] = []
    meters: list[Meter] = []

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        assert writer.peer_connection_id is not None
        billing = await asyncio.to_thread(billing_from_ledger, ledger, writer.peer_connection_id)
        billings.append(billing)
        await relay_udp_async(reader, writer, backend.address, billing=billing, idle_timeout=10)
        writer.close()

    async def main() -> int:
        server = await dtp.aio.start_server(
            handle,
            "127.0.0.1",
            0,
            identity=SERVER,
            ledger=ledger,
            host_id=host,
            dtp_port=53,
        )
        await asyncio.to_thread(
            ledger.set_endpoints, SERVER, host, [f"tcp://127.0.0.1:{server.address[1]}"]
        )

        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            return await dtp.aio.open_connection(
                f"dtp://{host}:53",
                ledger=ledger,
                identity=CLIENT,
                deposit=20_000,
                timeout=10,
                metering=OFF,
            )

        def meter_for(writer: dtp.aio.DTPStreamWriter) -> Meter:
            assert writer.connection_id is not None and writer.escrow_id is not None
            scope = ReceiptScope(ledger.package_id, writer.escrow_id, writer.connection_id)
            meter = Meter(CLIENT, scope, sla, 20_000)
            meters.append(meter)
            return meter

        fwd = await AsyncUdpForwarder.start(("127.0.0.1", 0), connect, meter_for=meter_for)
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                answers.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
        replies: dict[int, bytes] = {}

        async def replies_until(index: int | None, wait: float) -> None:
            # (by the query's index: a reply later than the wait is another query's
            # when it comes, not the next one's)
            while index is None or index not in replies:
                try:
                    reply = await asyncio.wait_for(answers.get(), wait)
                except TimeoutError:
                    return  # lost or late: tolerated (and read later if it came)
                replies[struct.unpack(">H", reply[:2])[0]] = reply

        for i in range(100):
            transport.sendto(struct.pack(">H", i) + b"name.example", fwd.address)
            await replies_until(i, 2)
        deadline = loop.time() + 10  # what the forwarder delivered late is read too
        while len(replies) < fwd.stats.datagrams_in and loop.time() < deadline:
            await replies_until(None, 0.1)
        for i, reply in replies.items():
            assert reply[:-4] == struct.pack(">H", i) + b"name.example"
        got = len(replies)
        transport.close()
        await fwd.close()
        stats = fwd.stats.snapshot()
        assert stats["sessions_opened"] == stats["sessions_closed"] == 1
        # the final receipt reaches the relay
        for _ in range(200):
            if billings and billings[0].latest == meters[0].latest:
                break
            await asyncio.sleep(0.01)
        server.close()
        return got

    got = asyncio.run(main())
    assert got >= 95
    (billing,), (meter,) = billings, meters
    assert billing.latest is not None and billing.latest == meter.latest
    assert billing.datagrams == meter.total_requests >= got
    assert billing.latest.total_amount == fee(sla, billing.bytes, billing.datagrams)
    escrow = ledger.get_connection(billing.connection_id).escrow
    assert ledger.claim(SERVER, escrow, billing.latest) == billing.latest.total_amount
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_recv_datagram_without_waiting() -> None:
    """On a non-blocking socket recv_datagram(s) raise BlockingIOError at once, as
    recv() and the socket module do; an explicit timeout of 0 is one look, then
    DTPTimeoutError."""
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:

        def echo(sock: dtp.socket.DTPSocket) -> None:
            sock.settimeout(5)
            with contextlib.suppress(DTPError):
                while True:
                    sock.send_datagram(sock.recv_datagram())

        _serve(server, echo)
        with dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        ) as sock:
            sock.setblocking(False)
            start = time.monotonic()
            with pytest.raises(BlockingIOError):
                sock.recv_datagram()
            with pytest.raises(BlockingIOError):
                sock.recv_datagrams()
            # a recv_datagram(0) that fell back to the socket's timeout would wait 10 min
            sock.settimeout(600)
            with pytest.raises(DTPTimeoutError):
                sock.recv_datagram(0)
            assert time.monotonic() - start < 30
            sock.settimeout(5)
            sock.send_datagram(b"back")
            assert sock.recv_datagram() == b"back"
