"""``DTPSocket.sendfile``: as :meth:`socket.socket.sendfile` -- offset, count, the file's
position afterwards, its argument errors -- through a real connection."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import DTPTimeoutError
from dtp.identity.keys import HostIdentity

SERVER_ID = HostIdentity.generate()
DATA = os.urandom((3 << 20) + 12345)  # several chunks and a ragged end


@pytest.fixture
def pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as srv:
        client = dtp.socket.create_connection(
            srv.address, timeout=10, server_key=srv.noise_public_key
        )
        with client:
            peer, _ = srv.accept(timeout=10)
            with peer:
                peer.settimeout(10)
                yield client, peer


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


def _receive(peer: dtp.socket.DTPSocket, out: bytearray) -> threading.Thread:
    """Read ``peer`` to its end into ``out``, in a thread."""

    def run() -> None:
        while chunk := peer.recv(1 << 20):
            out.extend(chunk)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize(("offset", "count"), [(0, None), (1000, None), (7, 2 << 20), (0, 1)])
def test_sendfile_sends_the_slice_and_leaves_the_position_after_it(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
    data_file: Path,
    offset: int,
    count: int | None,
) -> None:
    client, peer = pair
    got = bytearray()
    reader = _receive(peer, got)
    with data_file.open("rb") as f:
        sent = client.sendfile(f, offset, count)
        position = f.tell()
    client.shutdown(dtp.socket.SHUT_WR)
    reader.join(20)
    expected = DATA[offset:] if count is None else DATA[offset : offset + count]
    assert sent == len(expected)
    assert position == offset + sent
    assert bytes(got) == expected


def test_sendfile_takes_a_file_object_without_readinto(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    class Reader:
        mode = "rb"

        def __init__(self) -> None:
            self._io = io.BytesIO(b"abcdef" * 1000)

        def read(self, n: int) -> bytes:
            return self._io.read(n)

        def seek(self, pos: int) -> int:
            return self._io.seek(pos)

    client, peer = pair
    got = bytearray()
    reader = _receive(peer, got)
    assert client.sendfile(Reader(), 3) == 5997
    client.shutdown(dtp.socket.SHUT_WR)
    reader.join(20)
    assert bytes(got) == (b"abcdef" * 1000)[3:]


def test_sendfile_refuses_what_socket_sendfile_refuses(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], data_file: Path
) -> None:
    client, _ = pair
    with data_file.open("r", encoding="latin-1") as text, pytest.raises(ValueError, match="binary"):
        client.sendfile(text)
    with data_file.open("rb") as f:
        with pytest.raises(ValueError, match="positive"):
            client.sendfile(f, 0, 0)
        with pytest.raises(TypeError, match="positive"):
            client.sendfile(f, 0, 1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="offset"):
            client.sendfile(f, -1)
        with pytest.raises(TypeError, match="offset"):
            client.sendfile(f, 1.5)  # type: ignore[arg-type]
        client.setblocking(False)
        with pytest.raises(ValueError, match="non-blocking"):
            client.sendfile(f)


def test_sendfile_timeout_bounds_the_whole_call(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], tmp_path: Path
) -> None:
    client, _ = pair  # the peer never reads: the windows fill
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        f.truncate(64 << 20)  # sparse: beyond every window and buffer
    client.settimeout(0.5)
    with path.open("rb") as f:
        with pytest.raises(DTPTimeoutError):
            client.sendfile(f)
        # the position says how much went (at least the windows' worth)
        assert 0 < f.tell() < 64 << 20


def test_recv_into_checks_nbytes_as_a_socket_does(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    client, peer = pair
    client.sendall(b"abcdef")
    with pytest.raises(ValueError, match="negative"):
        peer.recv_into(bytearray(4), -1)  # it waited for good: all but the last byte
    with pytest.raises(ValueError, match="too small"):
        peer.recv_into(bytearray(2), 5)  # it read 2, not the 5 asked for
    buf = bytearray(8)
    assert peer.recv_into(buf, 3) == 3 and buf[:3] == b"abc"  # nothing was lost
