"""An asyncio member's close() ends every connection it owns and returns once their
carriers are closed (docs/messaging.md §6.2): its links to the others, the connections
it serves -- one from a peer on another thread that never closes its side -- and one
still in its handshake, so that the event loop closed right after finds none of them
open: uvloop refuses to close a loop with one (OSError EBUSY, or a close that hangs),
and asyncio's warns of the transports wherever they are collected. Real sockets on
127.0.0.1, on both loops."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging._framing import encode_frame
from dtp.messaging._membership import MembershipConfig
from dtp.messaging._membership_aio import join_group_async
from tests.transport.half_handshakes import closed_by_peer, first_record, silent

# (a carrier left open made uvloop's loop.close() hang in C, where no signal reaches it)
pytestmark = pytest.mark.timeout(60, method="thread")

CONFIG = MembershipConfig(
    probe_interval=0.2, probe_timeout=0.1, suspicion_timeout=1.5, sync_interval=0.5
)


def test_a_closed_member_leaves_no_connection_open_for_its_loop() -> None:
    raw: list[socket.socket] = []
    peers: list[dtp.socket.DTPSocket] = []

    async def main() -> None:
        a = await join_group_async("a", HostIdentity.generate(), config=CONFIG)
        b = await join_group_async("b", HostIdentity.generate(), config=CONFIG, seeds=[a.seed()])
        assert await a.wait_until(lambda ms: len(ms) == 2, 10)
        assert await b.wait_until(lambda ms: len(ms) == 2, 10)
        # a peer in another thread, served by a, that never closes its side
        peer = await asyncio.to_thread(
            dtp.socket.create_connection,
            a.address,
            server_key=a.identity.noise_public,
            identity=HostIdentity.generate(),
            timeout=10,
        )
        peers.append(peer)
        await asyncio.to_thread(peer.sendall, encode_frame([1, 2, 3]))  # (refused: junk)
        # and a connection still in its handshake
        half = silent(a.address)
        raw.append(half)
        half.sendall(first_record())
        server = a._server
        assert server is not None
        async with asyncio.timeout(10):
            while a.engine.refused < 1 or server.handshakes_in_progress < 1:
                await asyncio.sleep(0.01)
        await a.close()
        await b.close()
        # (returning now: the loop is closed with no pass after this one)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()  # (uvloop: OSError EBUSY, or a hang, were a carrier still open)
    try:
        gc.collect()  # (asyncio's loop: an unclosed transport's warning, in this test)
        assert closed_by_peer(raw[0], within=5)  # at once, not at its handshake's timeout
        peers[0].settimeout(5)
        with pytest.raises(OSError):  # (dtp's errors are OSErrors)
            while peers[0].recv(100):
                pass
    finally:
        for sock in raw:
            sock.close()
        for peer in peers:
            peer.close()
