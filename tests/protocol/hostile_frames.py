"""Frames a hostile or careless peer sends, sealed with its own keys and fed to the other
side of an in-memory pair (tests/support/pairs.py), for the protocol tests."""

from __future__ import annotations

from dtp.native import core as _core
from dtp.native.types import RawFrame
from dtp.protocol._state import ConnState
from dtp.protocol.connection import Connection, ConnectionTerminated
from tests.support.pairs import Side, connect, make_pair, sealed_by


def send_frames(
    c: Side, s: Side, frames: list[RawFrame], now: float
) -> ConnectionTerminated | None:
    """The client, as the hostile peer, seals ``frames`` in one record to the server."""
    s.conn.receive_data(sealed_by(c.conn, _core.encode_frames(frames)), now)
    s.drain()
    return s.conn.termination


def run_records(reliable: bool, records: list[list[RawFrame]]) -> tuple[Side, Side, float]:
    c, s, link = connect(reliable_carrier=reliable, stream_window=1000, connection_window=1500)
    for frames in records:
        if send_frames(c, s, frames, link.now) is not None:
            break
    return c, s, link.now


def xx_authenticated_server() -> tuple[Connection, Connection]:
    """An XX pair whose server has the client's proof but has not decided yet."""
    client, server = make_pair(ik=False)
    for _ in range(4):
        server.receive_data(client.data_to_send(0.0), 0.0)
        client.receive_data(server.data_to_send(0.0), 0.0)
    assert server.peer_address is not None and server.state is ConnState.AUTHENTICATING
    return client, server


def frames_sent_by_client(c: Side, s: Side, reliable: bool, now: float) -> list[RawFrame]:
    """The frames the client sends now, opened with the server's keys (not delivered)."""
    records = [c.conn.data_to_send(now)] if reliable else c.conn.datagrams_to_send(now)
    opened = [s.conn._recv_aead.open_frames(bytearray(r)) for r in records if r]
    return [frame for result in opened for record in result.records for frame in record.frames]
