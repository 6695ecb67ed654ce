"""``reset(code)`` on a stream, both APIs: as a TCP reset, the peer's reads raise
StreamReset with the code instead of seeing a clean end (a proxy cut short must not
pass a truncated response off as complete), and the stream is closed here."""

from __future__ import annotations

import asyncio

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import StreamReset
from dtp.identity.keys import HostIdentity

SERVER_ID = HostIdentity.generate()


@pytest.mark.parametrize("primary", [True, False], ids=["first-stream", "extra-stream"])
def test_a_blocking_reset_reaches_the_peer_as_stream_reset(primary: bool) -> None:
    with (
        dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server,
        dtp.socket.create_connection(
            server.address, timeout=10, server_key=server.noise_public_key
        ) as client,
    ):
        peer, _ = server.accept(timeout=10)
        with peer:
            peer.settimeout(10)
            if primary:
                ours, theirs = client, peer
            else:
                ours = client.open_stream()
                ours.sendall(b"!")
                theirs = peer.accept_stream()
                theirs.settimeout(10)
                assert theirs.recv(1) == b"!"
            ours.sendall(b"part of a response")
            assert theirs.recv(100) == b"part of a response"
            ours.reset(7)
            with pytest.raises(StreamReset) as caught:
                theirs.recv(100)
            assert caught.value.code == 7
            with pytest.raises(dtp.errors.LocalProtocolError):
                ours.sendall(b"more")  # closed here
    with pytest.raises(ValueError, match="reset code"):
        ours.reset(-1)


def test_an_asyncio_reset_reaches_the_peer_as_stream_reset() -> None:
    async def main() -> None:
        got: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            r2, _w2 = await writer.accept_stream()
            assert await r2.readexactly(5) == b"hello"
            try:
                await r2.read(100)
            except StreamReset as exc:
                got.set_result(exc)
            writer.close()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER_ID)
        try:
            _, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER_ID.noise_public, timeout=10
            )
            _r2, w2 = await writer.open_stream()
            w2.write(b"hello")
            await w2.drain()
            w2.reset(9)
            assert w2.is_closing()
            exc = await asyncio.wait_for(got, 10)
            assert isinstance(exc, StreamReset) and exc.code == 9
            with pytest.raises(ValueError):
                w2.reset(1 << 62)
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
