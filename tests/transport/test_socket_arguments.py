"""Bad arguments to a DTP socket (and to dtp.aio's streams) raise what a Python socket
(an asyncio stream) raises for them, whatever state the stream is in, before anything
moves, and leave the stream working.

A stream that carries data is lent to the C lane (``Engine.lend``), whose fast paths
took arguments unchecked: ``recv(1.5)`` raised TypeError on a stream that was not lent
but waited out the timeout (C) or failed inside the lane (pure Python) on a lent one;
``send_recv(b"x", 1.5)`` sent ``b"x"`` before raising, and sent one byte of a 4-byte
``array('i')``. Flags of the wrong type (``recv(4, 1.5)``) raised a formatting
ValueError, ``shutdown(1.0)`` shut the stream for writing, ``setblocking("x")`` was taken,
``settimeout(inf)`` was stored (a later wait overflows), and ``recv_datagram(timeout=nan)``
never returned. The reference is a real ``socket.socketpair()``; DTP's documented
differences stay (flags are refused with LocalProtocolError, ``shutdown(7)`` is a
ValueError). Real server and client on 127.0.0.1."""

from __future__ import annotations

import array
import asyncio
import math
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPTimeoutError, LocalProtocolError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from tests.support.polling import raised_within

SERVER_ID = HostIdentity.generate()
WAIT = 30.0  # seconds any wait of these tests may take at most (a loaded machine)
PATIENT = 600.0  # the clients' timeout: a call that waits for nothing waits that long
STRIDED = memoryview(b"abcdef")[::2]  # not contiguous: a socket's send() raises BufferError

# (name, call, the exception a socket.socket raises for it -- or DTP's documented one)
SOCKET_CASES: list[tuple[str, Callable[[dtp.socket.DTPSocket], object], type[Exception]]] = [
    ("recv(1.5)", lambda s: s.recv(1.5), TypeError),  # type: ignore[arg-type]
    ('recv("4")', lambda s: s.recv("4"), TypeError),  # type: ignore[arg-type]
    ("recv(None)", lambda s: s.recv(None), TypeError),  # type: ignore[arg-type]
    ("recv(-1)", lambda s: s.recv(-1), ValueError),
    ("recv(2**70)", lambda s: s.recv(2**70), OverflowError),
    ("recv(4, 1.5)", lambda s: s.recv(4, 1.5), TypeError),  # type: ignore[arg-type]
    ("recv(4, MSG_PEEK)", lambda s: s.recv(4, socket.MSG_PEEK), LocalProtocolError),
    ("recv_into(buf, -1)", lambda s: s.recv_into(bytearray(4), -1), ValueError),
    ("recv_into(buf, 5)", lambda s: s.recv_into(bytearray(4), 5), ValueError),
    ("recv_into(buf, 1.5)", lambda s: s.recv_into(bytearray(4), 1.5), TypeError),  # type: ignore[arg-type]
    ("recv_into(buf, 0, 1.5)", lambda s: s.recv_into(bytearray(4), 0, 1.5), TypeError),  # type: ignore[arg-type]
    ("recv_into(bytes)", lambda s: s.recv_into(b"abcd"), TypeError),
    ('send("str")', lambda s: s.send("str"), TypeError),
    ("send(None)", lambda s: s.send(None), TypeError),
    ("send(strided)", lambda s: s.send(STRIDED), BufferError),
    ("send(b'x', 1.5)", lambda s: s.send(b"x", 1.5), TypeError),  # type: ignore[arg-type]
    ('sendall("str")', lambda s: s.sendall("str"), TypeError),
    ("sendall(None)", lambda s: s.sendall(None), TypeError),
    ("sendall(strided)", lambda s: s.sendall(STRIDED), BufferError),
    ("sendall(b'x', 1.5)", lambda s: s.sendall(b"x", 1.5), TypeError),  # type: ignore[arg-type]
    ("send_recv(b'x', 1.5)", lambda s: s.send_recv(b"x", 1.5), TypeError),  # type: ignore[arg-type]
    ('send_recv("x", 4)', lambda s: s.send_recv("x", 4), TypeError),
    ("settimeout(-1)", lambda s: s.settimeout(-1), ValueError),
    ('settimeout("1")', lambda s: s.settimeout("1"), TypeError),  # type: ignore[arg-type]
    ("settimeout(nan)", lambda s: s.settimeout(math.nan), ValueError),
    ("settimeout(inf)", lambda s: s.settimeout(math.inf), OverflowError),
    ('setblocking("x")', lambda s: s.setblocking("x"), TypeError),  # type: ignore[arg-type]
    ("setblocking(1.5)", lambda s: s.setblocking(1.5), TypeError),  # type: ignore[arg-type]
    ("shutdown(1.0)", lambda s: s.shutdown(1.0), TypeError),  # type: ignore[arg-type]
    ('shutdown("x")', lambda s: s.shutdown("x"), TypeError),  # type: ignore[arg-type]
    ("shutdown(7)", lambda s: s.shutdown(7), ValueError),
    ('makefile("x")', lambda s: s.makefile("x"), ValueError),
    ("recv_datagram(timeout=nan)", lambda s: s.recv_datagram(math.nan), ValueError),
    ('recv_datagram(timeout="1")', lambda s: s.recv_datagram("1"), TypeError),  # type: ignore[arg-type]
    ("recv_datagrams(1.5)", lambda s: s.recv_datagrams(1.5, 0), TypeError),  # type: ignore[arg-type]
    ('send_datagram("x")', lambda s: s.send_datagram("x"), TypeError),  # type: ignore[arg-type]
]


def _echo(sock: dtp.socket.DTPSocket) -> None:
    """Echo every stream of the connection until its peer ends it."""

    def pump(stream: dtp.socket.DTPSocket) -> None:
        try:
            while data := stream.recv(65536):
                stream.sendall(data)
        except OSError:
            pass  # (the client aborted)

    def streams() -> None:
        try:
            while True:
                extra = sock.accept_stream()
                threading.Thread(target=pump, args=(extra,), daemon=True).start()
        except OSError:
            pass

    sock.settimeout(None)
    threading.Thread(target=streams, daemon=True).start()
    pump(sock)


def _quiet(identity: HostIdentity, is_client: bool) -> ConnectionConfig:
    """No keepalives and an hour of idle time: no timer ends a wait early (the old
    lane's wait with a float size ended only at one)."""
    return ConnectionConfig(
        identity=identity,
        is_client=is_client,
        server_static=SERVER_ID.noise_public if is_client else None,
        keepalive_interval=None,
        idle_timeout=3600,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[dtp.socket.DTPServer]:
    with dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER_ID, config=_quiet(SERVER_ID, False)
    ) as srv:
        threading.Thread(target=srv.serve_forever, args=(_echo,), daemon=True).start()
        yield srv


@pytest.fixture
def client(server: dtp.socket.DTPServer) -> Iterator[dtp.socket.DTPSocket]:
    sock = dtp.socket.create_connection(
        server.address,
        timeout=WAIT,
        server_key=SERVER_ID.noise_public,
        config=_quiet(HostIdentity.generate(), True),
    )
    sock.settimeout(PATIENT)
    yield sock
    sock.abort()


def _round_trip(sock: dtp.socket.DTPSocket, message: bytes = b"ping") -> None:
    sock.sendall(message)
    got = b""
    while len(got) < len(message):
        data = sock.recv(len(message) - len(got))
        assert data, "the echo ended"
        got += data
    assert got == message


def _lent(sock: dtp.socket.DTPSocket) -> bool:
    return sock._engine.conn.lent_stream_id == sock.stream_id


@pytest.mark.parametrize("lent", [False, True], ids=["not-lent", "lent"])
@pytest.mark.parametrize("extra", [False, True], ids=["first-stream", "extra-stream"])
@pytest.mark.parametrize(
    ("call", "expected"),
    [pytest.param(call, exc, id=name) for name, call, exc in SOCKET_CASES],
)
def test_a_bad_argument_raises_as_a_socket_and_leaves_the_stream_working(
    client: dtp.socket.DTPSocket,
    call: Callable[[dtp.socket.DTPSocket], object],
    expected: type[Exception],
    extra: bool,
    lent: bool,
) -> None:
    sock = client.open_stream() if extra else client
    _round_trip(sock)  # the stream carries data: lent to the lane from here
    if lent:
        # as a server's stream between requests: its last read waited for data (the
        # lane's next read then waits first: the old recv(1.5) waited out the timeout)
        sock.settimeout(0.05)
        with pytest.raises(DTPTimeoutError):
            sock.recv(1)
        sock.settimeout(PATIENT)
    else:
        assert sock.connection_stats  # (takes the loan back)
    assert _lent(sock) == lent
    raised = raised_within(lambda: call(sock), WAIT, sock.abort)
    assert type(raised) is expected or (
        expected is LocalProtocolError and isinstance(raised, expected)
    ), f"raised {raised!r}, a socket raises {expected.__name__}"
    assert sock.gettimeout() == PATIENT  # a rejected settimeout / setblocking changed nothing
    _round_trip(sock, b"still here")  # nothing sent, read, shut or lost
    _round_trip(sock)


@pytest.mark.parametrize("lent", [False, True], ids=["not-lent", "lent"])
def test_an_array_is_sent_as_its_bytes_by_every_send(
    client: dtp.socket.DTPSocket, lent: bool
) -> None:
    """As a socket's: the buffer's bytes, not its items (the C lane's exchange counted
    the items of an ``array('i')``: send_recv sent one byte of four)."""
    words = array.array("i", [0x676E6970, 0x21212121])
    raw = words.tobytes()
    for send in (
        lambda: client.sendall(words),
        lambda: client.send(words),
        lambda: client.sendall(memoryview(words)),
    ):
        _round_trip(client)
        if not lent:
            assert client.connection_stats  # (takes the loan back)
        assert _lent(client) == lent
        send()
        got = b""
        while len(got) < len(raw):
            got += client.recv(100)
        assert got == raw
    _round_trip(client)
    assert _lent(client)
    got = client.send_recv(words, 100)
    if got is None:  # not lent at that moment: nothing was sent
        client.sendall(words)
        got = b""
    while len(got) < len(raw):
        got += client.recv(100)
    assert got == raw
    _round_trip(client)


@pytest.mark.parametrize("lent", [False, True], ids=["not-lent", "lent"])
def test_a_view_of_rows_is_sent_whole_by_every_send(
    client: dtp.socket.DTPSocket, lent: bool
) -> None:
    """A C-contiguous view of bytes with two dimensions goes as all its bytes, as a
    socket sends it: ``len()`` counts its rows (4 of 8 bytes here), not what goes."""
    raw = bytes(range(32))
    rows = memoryview(raw).cast("B", (4, 8))

    def send_recv() -> bytes:
        got = client.send_recv(rows, 100)
        if got is None:  # not lent at that moment: nothing was sent
            client.sendall(rows)
            got = b""
        return got

    for send in (
        lambda: client.sendall(rows) or b"",
        lambda: b"" if client.send(rows) == len(raw) else b"short",
        send_recv,
    ):
        _round_trip(client)
        if not lent:
            assert client.connection_stats  # (takes the loan back)
        assert _lent(client) == lent
        got = send()
        while len(got) < len(raw):
            got += client.recv(100)
        assert got == raw
    _round_trip(client)


# -- dtp.aio: against asyncio's StreamReader / StreamWriter -------------------------------

Reader = dtp.aio.DTPStreamReader
Writer = dtp.aio.DTPStreamWriter

# (name, call, what asyncio raises; "at once": its TypeError for a float size comes only
# once bytes arrived, and a strided view failed its transport -- DTP raises before)
AIO_CASES: list[tuple[str, Callable[[Reader, Writer], Any], type[Exception]]] = [
    ("read(1.5)", lambda r, w: r.read(1.5), TypeError),  # type: ignore[arg-type]
    ('read("4")', lambda r, w: r.read("4"), TypeError),  # type: ignore[arg-type]
    ("readexactly(1.5)", lambda r, w: r.readexactly(1.5), TypeError),  # type: ignore[arg-type]
    ("readexactly(-1)", lambda r, w: r.readexactly(-1), ValueError),
    ("readexactly(None)", lambda r, w: r.readexactly(None), TypeError),  # type: ignore[arg-type]
    ("readuntil(None)", lambda r, w: r.readuntil(None), TypeError),  # type: ignore[arg-type]
    ('readuntil(b"")', lambda r, w: r.readuntil(b""), ValueError),
    ('readuntil("z")', lambda r, w: r.readuntil("z"), TypeError),  # type: ignore[arg-type]
    ('write("str")', lambda r, w: w.write("str"), TypeError),  # type: ignore[arg-type]
    ('write("")', lambda r, w: w.write(""), TypeError),  # type: ignore[arg-type]
    ("write(None)", lambda r, w: w.write(None), TypeError),  # type: ignore[arg-type]
    ("write(strided)", lambda r, w: w.write(STRIDED), BufferError),
    ('writelines(["a"])', lambda r, w: w.writelines(["a"]), TypeError),
]


async def _aio_echo(reader: Reader, writer: Writer) -> None:
    async def pump(r: Reader, w: Writer) -> None:
        with_streams = asyncio.ensure_future(streams()) if r is reader else None
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass  # (the client went away)
        finally:
            if with_streams is not None:
                with_streams.cancel()

    async def streams() -> None:
        tasks = []
        try:
            while True:
                r, w = await writer.accept_stream()
                tasks.append(asyncio.ensure_future(pump(r, w)))
        except OSError:
            pass
        finally:
            for task in tasks:
                task.cancel()

    await pump(reader, writer)


@asynccontextmanager
async def _aio_connected() -> AsyncIterator[tuple[Reader, Writer]]:
    """An asyncio echo server and a connection to it (aborted at the end)."""
    server = await dtp.aio.start_server(_aio_echo, "127.0.0.1", 0, identity=SERVER_ID)
    async with server:
        host, port = server.address
        reader, writer = await dtp.aio.open_connection(
            host, port, server_key=SERVER_ID.noise_public, timeout=WAIT
        )
        try:
            yield reader, writer
        finally:
            writer.abort()


async def _aio_round_trip(reader: Reader, writer: Writer, message: bytes = b"ping") -> None:
    writer.write(message)
    assert await asyncio.wait_for(reader.readexactly(len(message)), WAIT) == message


@pytest.mark.parametrize("buffered", [False, True], ids=["empty", "buffered"])
@pytest.mark.parametrize("extra", [False, True], ids=["first-stream", "extra-stream"])
@pytest.mark.parametrize(
    ("call", "expected"),
    [pytest.param(call, exc, id=name) for name, call, exc in AIO_CASES],
)
def test_aio_a_bad_argument_raises_as_asyncio_at_once_and_leaves_the_stream_working(
    call: Callable[[Reader, Writer], Any],
    expected: type[Exception],
    extra: bool,
    buffered: bool,
) -> None:
    async def main() -> None:
        async with _aio_connected() as (reader, writer):
            if extra:
                reader, writer = await writer.open_stream()
            await _aio_round_trip(reader, writer)
            if buffered:
                writer.write(b"zz")
                loop = asyncio.get_running_loop()
                deadline = loop.time() + WAIT
                while len(reader._buffer()) < 2:
                    assert loop.time() < deadline, "the echo never came"
                    await asyncio.sleep(0.01)
            with pytest.raises(expected):
                result = call(reader, writer)
                if asyncio.iscoroutine(result):
                    # (the old read(1.5) of an empty stream waited for bytes)
                    await asyncio.wait_for(result, WAIT)
            if buffered:  # nothing consumed
                assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"zz"
            await _aio_round_trip(reader, writer, b"still here")

    asyncio.run(main())


def test_aio_write_takes_an_array_as_its_bytes() -> None:
    """As a socket's sendall (asyncio's transport refuses an array; DTP takes any
    bytes-like object, whole)."""

    async def main() -> None:
        async with _aio_connected() as (reader, writer):
            words = array.array("i", [0x676E6970, 0x21212121])
            writer.write(words)
            got = await asyncio.wait_for(reader.readexactly(8), WAIT)
            assert got == words.tobytes()
            rows = memoryview(bytes(range(32))).cast("B", (4, 8))  # (len(): 4 rows)
            writer.write(rows)
            got = await asyncio.wait_for(reader.readexactly(32), WAIT)
            assert got == bytes(range(32))
            await _aio_round_trip(reader, writer)

    asyncio.run(main())
