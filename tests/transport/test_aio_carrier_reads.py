"""The asyncio protocol reads its carrier into one reused buffer.

A fresh 256 KiB object per carrier read (``asyncio.Protocol.data_received``) is, by
glibc malloc's dynamic mmap threshold, an mmap and munmap or a heap top grown and
trimmed, each read: page faults for every page of the data, a third of an asyncio server's
time in a bulk transfer (bench/compare.py ``tcp_bulk_asyncio``). The protocol is an
``asyncio.BufferedProtocol`` now, as the blocking engine reads with ``recv_into``:
these tests check that the bytes stay intact when the buffer is reused under them,
and that it is reused. On a loop that reads synchronously (selector loops, uvloop) every
connection of a thread reads into one RECV_CHUNK buffer; elsewhere (a proactor loop,
here by patching :func:`reads_synchronously`) each has its own, which grows for a
transfer and is given back once the reads are small again.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os

import pytest

import dtp.aio as daio
from dtp.identity.keys import HostIdentity
from dtp.native import core as _core
from dtp.transport._session import FIRST_RECV_CHUNK, RECV_CHUNK
from dtp.transport.asyncio import _protocol
from dtp.transport.asyncio._protocol import Protocol


@pytest.fixture(params=[True, False], ids=["shared", "own"])
def shared(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether the connections read into the thread's shared buffer (a loop that reads
    synchronously) or each into its own (one that does not, as a proactor loop)."""
    if not request.param:
        monkeypatch.setattr(_protocol, "reads_synchronously", lambda loop: False)
    return bool(request.param)


def _send_and_digest(
    payload: bytes, pieces: list[int]
) -> tuple[str, list[memoryview], list[tuple[memoryview, int]]]:
    """Send ``payload`` in writes of the sizes in ``pieces`` (cycled) to a server that
    reads it all; returns the SHA-256 the server read, every buffer its carrier reads
    were given, and each read as (its buffer, the bytes it read)."""
    identity = HostIdentity.generate()
    buffers: list[memoryview] = []
    reads: list[tuple[memoryview, int]] = []
    get_buffer = Protocol.get_buffer
    buffer_updated = Protocol.buffer_updated

    def recording(self: Protocol, sizehint: int) -> memoryview:
        buf = get_buffer(self, sizehint)
        if self.session.conn.is_client is False:
            buffers.append(buf)
        return buf

    def updated(self: Protocol, nbytes: int) -> None:
        if self.session.conn.is_client is False:
            # (the buffer this read went into: the one get_buffer gives before it)
            reads.append((get_buffer(self, -1), nbytes))
        buffer_updated(self, nbytes)

    async def main() -> str:
        digest: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def handler(r: daio.DTPStreamReader, w: daio.DTPStreamWriter) -> None:
            h = hashlib.sha256()
            while chunk := await r.read(1 << 20):
                h.update(chunk)
            digest.set_result(h.hexdigest())
            w.close()

        server = await daio.start_server(handler, "127.0.0.1", 0, identity=identity)
        async with server:
            _, w = await daio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=10
            )
            view, i = memoryview(payload), 0
            while view:
                n = pieces[i % len(pieces)]
                w.write(view[:n])
                view = view[n:]
                i += 1
                if i % 16 == 0:
                    await w.drain()
            w.write_eof()
            await w.drain()
            got = await asyncio.wait_for(digest, 30)
            w.close()
            await w.wait_closed()
            return got

    mp = pytest.MonkeyPatch()
    mp.setattr(Protocol, "get_buffer", recording)
    mp.setattr(Protocol, "buffer_updated", updated)
    try:
        return asyncio.run(main()), buffers, reads
    finally:
        mp.undo()


@pytest.mark.parametrize(
    "pieces",
    [[64 * 1024], [1, 7, 16_000, 65_537, 300_000, 3]],
    ids=["64KiB-writes", "odd-writes"],
)
def test_bytes_read_into_a_reused_buffer_arrive_intact(pieces: list[int], shared: bool) -> None:
    # records split across reads, a partial record kept from one read to the next:
    # the connection must have copied what it keeps before the buffer is read into again
    payload = os.urandom(8 << 20)
    digest, buffers, reads = _send_and_digest(payload, pieces)
    assert digest == hashlib.sha256(payload).hexdigest()
    if shared:
        # every read went into the one buffer of the thread, RECV_CHUNK from the start
        # (a burst a little over 16 KiB is one read, not two)
        assert len({id(b.obj) for b in buffers}) == 1
        assert {len(b) for b in buffers} == {RECV_CHUNK}
        return
    # a new buffer only where the rule makes one (protocol.buffer_updated): after a
    # read that filled a buffer under RECV_CHUNK (doubled), or read under an eighth of
    # one above the first size (back to it); every other read reuses its buffer. How
    # many reads each size takes is the loop's and the machine's (uvloop reads in
    # other pieces than asyncio's selector loop; a loaded machine, smaller ones): the
    # rule is checked read by read, on either loop
    for (before, n), (after, _) in itertools.pairwise(reads):
        size = len(before)
        grew = n == size and size < RECV_CHUNK
        shrank = n < size >> 3 and size > FIRST_RECV_CHUNK
        if grew or shrank:
            assert after.obj is not before.obj
            assert len(after) == (min(2 * size, RECV_CHUNK) if grew else FIRST_RECV_CHUNK)
        elif size > FIRST_RECV_CHUNK:  # (a first-size one may be the thread's shared one)
            assert after.obj is before.obj, (size, n)
    sizes = sorted(len(b) for b in {id(b.obj): b for b in buffers}.values())
    # (it grew for the transfer: the rule above was held to reads of larger buffers)
    assert sizes[0] == FIRST_RECV_CHUNK < sizes[-1] <= RECV_CHUNK


def test_a_short_connection_keeps_its_first_small_buffer(shared: bool) -> None:
    digest, buffers, _ = _send_and_digest(b"ping", [4])
    assert digest == hashlib.sha256(b"ping").hexdigest()
    # (shared: the thread's one buffer, which no connection holds as its own)
    assert buffers and {len(b) for b in buffers} == {RECV_CHUNK if shared else FIRST_RECV_CHUNK}


def test_a_connection_busy_once_gives_its_big_buffer_back(shared: bool) -> None:
    # a server keeps thousands of connections: one that moved a bulk transfer once must
    # not hold RECV_CHUNK for the rest of its life once its reads are small again
    identity = HostIdentity.generate()
    sizes: list[int] = []
    own: list[bool] = []  # (whether each read went into a buffer of the connection's)
    get_buffer = Protocol.get_buffer

    def recording(self: Protocol, sizehint: int) -> memoryview:
        buf = get_buffer(self, sizehint)
        if self.session.conn.is_client is False:
            sizes.append(len(buf))
            own.append(buf.obj is not _protocol._shared_buffer().obj)
        return buf

    async def main() -> None:
        after_ping: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def handler(r: daio.DTPStreamReader, w: daio.DTPStreamWriter) -> None:
            await r.readexactly(4 << 20)
            w.write(b"k")
            await w.drain()
            assert await r.readexactly(4) == b"ping"
            after_ping.set_result(len(sizes))
            assert await r.read() == b""  # (the client's end: one more small read)
            ended.set_result(None)
            w.close()

        server = await daio.start_server(handler, "127.0.0.1", 0, identity=identity)
        async with server:
            r, w = await daio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=10
            )
            w.write(os.urandom(4 << 20))
            assert await asyncio.wait_for(r.readexactly(1), 30) == b"k"
            w.write(b"ping")
            seen = await asyncio.wait_for(after_ping, 30)
            w.write_eof()
            await asyncio.wait_for(ended, 30)
            if shared:
                # no read went into a buffer of its own: it has none to give back
                assert not any(own) and set(sizes) == {RECV_CHUNK}
            else:
                assert max(sizes[:seen]) > FIRST_RECV_CHUNK  # (it grew for the transfer)
                # the read after the ping's small one goes into a first-size buffer again
                assert sizes[seen] == FIRST_RECV_CHUNK, sizes[seen - 2 :]
            w.close()
            await w.wait_closed()

    mp = pytest.MonkeyPatch()
    mp.setattr(Protocol, "get_buffer", recording)
    try:
        asyncio.run(main())
    finally:
        mp.undo()


def test_idle_connections_share_one_buffer() -> None:
    # a server keeps thousands of idle connections: on a loop that reads synchronously
    # (selector loops), none holds a read buffer of its own; both sides' bytes still
    # arrive intact through the one buffer of the thread
    identity = HostIdentity.generate()
    protos: list[Protocol] = []
    made = Protocol.connection_made

    def recording(self: Protocol, transport: asyncio.BaseTransport) -> None:
        protos.append(self)
        made(self, transport)

    async def main() -> None:
        async def handler(r: daio.DTPStreamReader, w: daio.DTPStreamWriter) -> None:
            while data := await r.read(1 << 20):
                w.write(data)
                await w.drain()
            w.close()

        server = await daio.start_server(handler, "127.0.0.1", 0, identity=identity)
        async with server:
            pairs = [
                await daio.open_connection(
                    *server.address, server_key=identity.noise_public, timeout=10
                )
                for _ in range(3)
            ]
            for i, (_, w) in enumerate(pairs):
                w.write(bytes([i]) * 1000)
            for i, (r, _) in enumerate(pairs):
                assert await asyncio.wait_for(r.readexactly(1000), 10) == bytes([i]) * 1000
            buffers = {id(p.get_buffer(-1).obj) for p in protos}
            assert len(protos) == 6 and len(buffers) == 1, (len(protos), len(buffers))
            # (each holds, at most, a reference to the thread's buffer)
            assert buffers == {id(_protocol._shared_buffer().obj)}
            for _, w in pairs:
                w.close()
                await w.wait_closed()

    mp = pytest.MonkeyPatch()
    mp.setattr(Protocol, "connection_made", recording)
    try:
        asyncio.run(main())
    finally:
        mp.undo()


def test_the_lane_takes_from_the_shared_buffer_through_one_pointer() -> None:
    # the shared buffer goes to the connection whole with the read's length: the native
    # lane makes its C pointer once (NativeLane.take's ``size``), not at every read
    if _core.Lane is not _core.NativeLane:
        pytest.skip("the pure-Python lane makes no pointer")
    shared = _protocol._shared_buffer()
    made: list[object] = []
    from_buffer = _core._from_buffer

    def counting(*args: object) -> object:
        if args[-1] is shared:
            made.append(args[-1])
        return from_buffer(*args)

    mp = pytest.MonkeyPatch()
    mp.setattr(_core, "_kept_src", [(None, None)])
    mp.setattr(_core, "_from_buffer", counting)
    try:
        payload = os.urandom(2 << 20)
        digest, _, reads = _send_and_digest(payload, [1, 7, 16_000, 65_537])
    finally:
        mp.undo()
    assert digest == hashlib.sha256(payload).hexdigest()
    assert len(reads) > 3 and len(made) == 1, (len(reads), len(made))
