"""The bytes a paid connection meters (docs/escrow.md §6.1) come from one method,
Connection.used_bytes: :attr:`Connection.usage` and the paid client's check before
each send (blocking and asyncio) all read it, so the fee formula lives in one place."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from dtp.errors import PaymentRequired
from dtp.transport.asyncio._streams import DTPStreamWriter
from dtp.transport.blocking._socket import DTPSocket
from tests.support.pairs import connect, run


def test_used_bytes_is_the_usage_bytes() -> None:
    c, s, link = connect()
    stream_id = c.conn.open_stream()
    c.conn.send_stream_data(stream_id, b"hello", end_stream=True)
    run(link, c, s, until=lambda: s.eof)
    c.conn.send_datagram(b"abc")
    assert c.conn.used_bytes() == c.conn.usage[0] == 8
    assert s.conn.used_bytes() == s.conn.usage[0] == 5


class _Conn:
    """A connection that offers used_bytes() and nothing else of the usage: a check
    that recomputed the formula from the connection's parts fails on it."""

    def __init__(self, used: int) -> None:
        self.used = used

    def send_buffered(self) -> int:
        return 10

    def used_bytes(self) -> int:
        return self.used


class _Hook:
    payable_bytes = 1000

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []

    def refuse_write(self, queued: int, requests: int) -> str | None:
        self.asked.append((queued, requests))
        return "unpaid"


def _blocking(conn: _Conn, hook: _Hook) -> Any:
    sock = object.__new__(DTPSocket)
    ended = PaymentRequired("unpaid")
    sock._engine = SimpleNamespace(hook=hook, conn=conn, end_unpaid=lambda reason: ended)  # type: ignore[attr-defined]
    return sock


def _asyncio(conn: _Conn, hook: _Hook, monkeypatch: pytest.MonkeyPatch) -> Any:
    from dtp.transport.asyncio import _streams

    writer = object.__new__(DTPStreamWriter)
    writer._proto = SimpleNamespace(hook=hook)  # type: ignore[attr-defined]
    writer._conn = conn  # type: ignore[attr-defined]
    monkeypatch.setattr(_streams, "end_unpaid", lambda proto, reason: PaymentRequired(reason))
    return writer


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_the_per_send_check_reads_used_bytes(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for used, refused in ((1000 - 10 - 5, False), (1000 - 10 - 4, True)):
        hook = _Hook()
        conn = _Conn(used)
        side = _blocking(conn, hook) if kind == "blocking" else _asyncio(conn, hook, monkeypatch)
        if refused:
            with pytest.raises(PaymentRequired):
                side._check_payable(5)
            assert hook.asked == [(15, 0)]
        else:
            side._check_payable(5)  # within what is paid: the hook is not even asked
            assert hook.asked == []
