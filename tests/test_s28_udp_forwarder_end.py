"""The blocking UDP forwarder sends nothing more on a flow once its end has begun: a
batch going out after the final-report request was never paid for (the relay's final
count was taken before it), one batch per flow end (found by a second reader)."""

from __future__ import annotations

import types
from typing import Any, cast

from dtp.socket import DTPSocket
from dtp.udp import UdpForwarder, UdpStats, _Session


def _forwarder() -> UdpForwarder:
    def connect() -> DTPSocket:
        raise AssertionError("not used")

    return UdpForwarder(("127.0.0.1", 0), connect)


def test_a_flow_that_is_ending_sends_nothing_more() -> None:
    sent: list[list[bytes]] = []

    def send_datagrams(out: list[bytes]) -> int:
        sent.append(list(out))
        return len(out)

    sock: Any = types.SimpleNamespace(max_datagram_size=1200, send_datagrams=send_datagrams)
    fwd = _forwarder()
    try:
        session = _Session(("127.0.0.1", 9), cast(DTPSocket, sock), None, UdpStats())
        with session.lock:
            assert fwd._send_locked(session, [b"a", b"b"])
        assert sent == [[b"a", b"b"]]
        with session.lock:
            session.closed = True  # (as _end_all marks it, before the final request)
            assert not fwd._send_locked(session, [b"c"])
        assert sent == [[b"a", b"b"]]
        assert fwd.stats.snapshot()["dropped_no_session"] == 1
    finally:
        fwd.close()
