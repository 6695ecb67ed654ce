"""Graph sync at its edges: a HELLO racing a commit, and big messages refused undecoded.

- A session started while another thread commits a change sent that change's DATA
  before its HELLO (the listener was registered, the HELLO queued only after), and the
  peer failed the session: HELLO is now queued as the listener is registered.
- A message decoded whole before its type was looked at cost about 75 bytes of memory a
  byte (4 MiB of empty arrays: 300 MB), as the first message too: DATA, the one long
  message, is read without msgpack's decoder, and any other message above 256 KiB is
  refused undecoded.
"""

from __future__ import annotations

import struct
import threading
import tracemalloc
from typing import Any

import msgpack
import pytest

from dtp.graph import Graph
from dtp.graph.sync import MAX_MESSAGE, VERSION, GraphSyncError, SyncSession
from dtp.native.reference._limits import HAM_BATCH_VERSION


def _frames(data: bytes) -> list[Any]:
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        out.append(msgpack.unpackb(data[4 : 4 + n]))
        data = data[4 + n :]
    return out


def _sync(a: SyncSession, b: SyncSession) -> None:
    for _ in range(100):
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return
        if x:
            b.receive_data(x)
        if y:
            a.receive_data(y)


def test_a_change_while_the_session_starts_goes_out_after_hello(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = Graph(None), Graph(None)
    a.put("x", {"a": 1})
    real_listen = a.listen

    def listen(listener: Any, owner: object, then: Any = None) -> Any:
        root = real_listen(listener, owner, then=then) if then else real_listen(listener, owner)
        # another thread commits right as the listener is registered
        put = threading.Thread(target=a.put, args=("y", {"b": 2}))
        put.start()
        put.join()
        return root

    monkeypatch.setattr(a, "listen", listen)
    sa, sb = SyncSession(a), SyncSession(b)
    sa.start()
    sb.start()
    out = sa.data_to_send()
    assert _frames(out)[0][0] == 1  # HELLO first
    sb.receive_data(out)  # (refused before: "the first message must be HELLO")
    sa.receive_data(sb.data_to_send())
    _sync(sa, sb)
    assert b.get_field("y", "b") == 2 and b.get_field("x", "a") == 1


def test_a_long_message_that_is_not_data_is_refused_undecoded() -> None:
    n = MAX_MESSAGE - 5
    body = b"\xdd" + struct.pack(">I", n) + b"\x80" * n  # 4 MiB of empty maps, as one array
    session = SyncSession(Graph(None))
    session.start()
    tracemalloc.start()
    try:
        with pytest.raises(GraphSyncError, match="not DATA"):
            session.receive_data(struct.pack(">I", len(body)) + body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak  # (about 300 MB decoded)


@pytest.mark.parametrize("size", [10, 300, 70_000])
def test_data_in_each_bin_encoding_is_merged(size: int) -> None:
    """DATA as the msgpack of any batch size (bin 8, 16 and 32 headers) is read on the
    path that bypasses the decoder; a DATA whose length does not match is refused."""
    a, b = Graph(None), Graph(None)
    a.put("n", {"v": "x" * size})
    sa, sb = SyncSession(a), SyncSession(b)
    sa.start()
    sb.start()
    _sync(sa, sb)
    assert b.get_field("n", "v") == "x" * size
    bad = SyncSession(Graph(None))
    bad.start()
    hello = msgpack.packb([1, VERSION, b"r" * 16, 0, 0])
    data = msgpack.packb([3, bytes([HAM_BATCH_VERSION]) + bytes(4)])[:-1]  # one byte short
    with pytest.raises(GraphSyncError):
        bad.receive_data(
            struct.pack(">I", len(hello)) + hello + struct.pack(">I", len(data)) + data
        )


def test_one_large_change_does_not_end_a_session_that_keeps_up() -> None:
    """A put larger than the backlog goes out to a peer with nothing queued for it (it
    ended every live session, those keeping up too); a peer already behind by more than
    the backlog is given up."""
    graph = Graph(None)
    session = SyncSession(graph, max_backlog=1000)
    session.start()
    session.data_to_send()  # (the peer took the HELLO: nothing queued)
    graph.put("big", {"v": "x" * 5000})
    assert not session.lagging
    graph.put("more", {"v": "y"})  # 5000 bytes still queued, past the backlog
    assert session.lagging
