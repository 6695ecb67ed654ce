"""Datagrams sent to a peer that does not read: dropped and counted once the carrier is
backed up, never queued without bound and never waited for (docs/udp.md). The peer is
the blocking "slow" server of tests/support/servers.py, in its own process: it never reads its
carrier, so the kernel's buffers fill and then ours would."""

from __future__ import annotations

import asyncio
import time

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import LocalProtocolError
from dtp.protocol.connection import DATAGRAM_SEND_BACKLOG
from tests.support.procs import server_process

PAYLOAD = b"u" * 4000
MOST = 50_000  # 200 MB: far more than the kernel's buffers hold on 127.0.0.1
ROUND = 1000


def test_datagrams_to_a_stalled_peer_are_dropped_and_counted() -> None:
    with (
        server_process("slow") as srv,
        dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key) as sock,
    ):
        assert sock.datagrams_send_dropped == 0
        start = time.monotonic()
        # until the kernel's buffers are full too: then every datagram is dropped
        for _ in range(MOST // ROUND):
            before = sock.datagrams_send_dropped
            for _ in range(ROUND - 100):
                sock.send_datagram(PAYLOAD)
            sock.send_datagrams([PAYLOAD] * 100)
            if sock.datagrams_send_dropped == before + ROUND:
                break
        else:
            raise AssertionError(f"{sock.datagrams_send_dropped} dropped, never all of a round")
        assert time.monotonic() - start < 60  # nothing waited for the peer
        queued = sum(len(b) for b in sock._engine.out)
        assert queued <= DATAGRAM_SEND_BACKLOG + len(PAYLOAD) + 100
        before = sock.datagrams_send_dropped
        # the counter is the connection's, whichever stream's socket sends (until one is
        # dropped: the kernel may have taken more meanwhile, its buffers growing -- CI saw
        # the first one queued)
        stream = sock.open_stream()
        for _ in range(ROUND):
            stream.send_datagram(PAYLOAD)
            if stream.datagrams_send_dropped > before:
                break
        assert stream.datagrams_send_dropped == sock.datagrams_send_dropped == before + 1
        # bad datagrams still raise, dropped or not
        with pytest.raises(LocalProtocolError):
            sock.send_datagram(b"x" * (sock.max_datagram_size + 1))
        with pytest.raises(TypeError):
            sock.send_datagrams([PAYLOAD, "text"])  # type: ignore[list-item]
        assert sock.datagrams_send_dropped == before + 1
        stream.close()
        sock.abort()  # (a close would wait for the queue the peer never reads)


def test_datagrams_to_a_reading_peer_are_not_dropped() -> None:
    with (
        server_process("echo") as srv,
        dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key) as sock,
    ):
        for _ in range(200):
            sock.send_datagram(PAYLOAD)
        sock.send_datagrams([PAYLOAD] * 50)
        assert sock.datagrams_send_dropped == 0
        sock.sendall(b"still a stream\n")
        got = b""
        while not got.endswith(b"\n"):
            got += sock.recv(100)
        assert got == b"still a stream\n"


def test_asyncio_datagrams_to_a_stalled_peer_are_dropped_and_counted() -> None:
    async def main(srv) -> None:  # type: ignore[no-untyped-def]
        _reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", srv.port, server_key=srv.key, timeout=10
        )
        transport = writer.transport
        assert transport is not None
        assert writer.datagrams_send_dropped == 0
        for _ in range(MOST // ROUND):
            before = writer.datagrams_send_dropped
            for i in range(ROUND - 100):
                writer.send_datagram(PAYLOAD)
                if i % 100 == 0:
                    await asyncio.sleep(0)  # the transport writes what the kernel takes
            writer.send_datagrams([PAYLOAD] * 100)
            if writer.datagrams_send_dropped == before + ROUND:
                break
        else:
            raise AssertionError(f"{writer.datagrams_send_dropped} dropped, never all of a round")
        assert transport.get_write_buffer_size() <= DATAGRAM_SEND_BACKLOG + len(PAYLOAD) + 100
        writer.abort()
        await writer.wait_closed()

    with server_process("slow") as srv:
        asyncio.run(main(srv))


def test_asyncio_datagrams_to_a_reading_peer_are_not_dropped() -> None:
    async def main(srv) -> None:  # type: ignore[no-untyped-def]
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", srv.port, server_key=srv.key, timeout=10
        )
        for _ in range(200):
            writer.send_datagram(PAYLOAD)
        writer.send_datagrams([PAYLOAD] * 50)
        assert writer.datagrams_send_dropped == 0
        writer.write(b"still a stream\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"still a stream\n"
        writer.close()
        await writer.wait_closed()

    with server_process("echo", api="asyncio") as srv:
        asyncio.run(main(srv))


def test_the_udp_forwarder_counts_what_the_backed_up_carrier_dropped() -> None:
    """A forwarder whose relay does not read: the datagrams the connection drops (its
    carrier backed up) are counted in UdpStats.dropped_backlog, not as sent, so every
    datagram the forwarder read is accounted for once."""
    import socket

    from dtp.hostid.udp import UdpForwarder

    with server_process("slow") as srv:
        conns: list[dtp.socket.DTPSocket] = []

        def connect() -> dtp.socket.DTPSocket:
            sock = dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key)
            conns.append(sock)
            return sock

        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            with UdpForwarder(("127.0.0.1", 0), connect) as fwd:
                deadline = time.monotonic() + 60
                while fwd.stats.dropped_backlog == 0:
                    assert time.monotonic() < deadline, fwd.stats.snapshot()
                    for _ in range(200):
                        client.sendto(PAYLOAD, fwd.address)
                    time.sleep(0.001)
                # the forwarder catches up with what it has read (bounded: a loaded
                # machine may take a while)
                caught_up = time.monotonic() + 30
                while fwd.stats.dropped_backlog != conns[0].datagrams_send_dropped:
                    if time.monotonic() > caught_up:
                        break
                    time.sleep(0.05)
                stats = fwd.stats.snapshot()
                assert stats["dropped_backlog"] == conns[0].datagrams_send_dropped
                assert stats["bytes_out"] == stats["datagrams_out"] * len(PAYLOAD)
                for sock in conns:
                    sock.abort()  # (a close would wait for what the peer never reads)
        finally:
            client.close()
