"""Credit returned while a stream stays lent (Connection.lent_credit): when the lane's read
stops with DUE, the connection seals the MAX_DATA / MAX_STREAM_DATA record in the loan
and goes on lending. The record must be the one the general path sends for the same
DUE (take_back, then data_to_send): the same bytes on the wire, and the same credit
accounted on both sides once the loan ends.

Two pairs run from the same keys (identities and ephemeral keys) are the same
connection twice: one returns credit in the loan, the other through the general path
and a new loan after each record; their records and final states are compared."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.native.types import DUE, FULL, NEED_MORE, OK, WAIT
from dtp.protocol.connection import Connection
from tests.support.pairs import establish, make_pair

KIB = 1 << 10


@dataclass
class Run:
    """What one transfer through the server's lane left."""

    credits: list[bytes]
    digest: str
    state: dict[str, Any]
    lends: int
    lent_credits: int = 0
    general: list[int] = field(default_factory=list)


def _pair(keys: tuple[bytes, bytes], **overrides: object) -> tuple[Connection, Connection]:
    made_client, made_server = make_pair(**overrides)
    client = Connection(made_client.config, ephemeral_key=keys[0], now=0.0)
    server = Connection(made_server.config, ephemeral_key=keys[1], now=0.0)
    establish(client, server)
    assert client.established and server.established
    return client, server


def _transfer(
    keys: tuple[bytes, bytes],
    in_loan: bool,
    total: int,
    chunk: int,
    read: int,
    **overrides: object,
) -> Run:
    """``total`` bytes from the client, written ``chunk`` at a time as its credit lets
    them go, read by the server's lane ``read`` at a time from a socket pair; at each
    DUE the server returns credit in the loan (``in_loan``) or through the general path
    (which ends the loan: the next read lends the stream again)."""
    client, server = _pair(keys, **overrides)
    sid = client.open_stream()
    client.send_stream_data(sid, b"first")
    server.receive_data(client.data_to_send(1.0), 1.0)
    while (event := server.next_event()) is not None:
        server.acknowledge_read(sid, len(event.data))  # type: ignore[attr-defined]
    payload = hashlib.sha256(keys[0]).digest() * (chunk // 32 + 1)  # (the same in both runs)
    carrier, far = socket.socketpair()
    far.setblocking(False)
    run = Run([], "", {}, 0)
    got = bytearray()
    dst = bytearray(read)
    now, sent = 2.0, 0
    try:
        while len(got) < total:
            now += 0.001
            if sent < total:
                n = min(chunk, total - sent)
                client.send_stream_data(sid, payload[:n])
                sent += n
            out = client.data_to_send(now)
            if out:
                carrier.sendall(out)
            status = WAIT
            while True:
                lane = server.lent_lane
                if lane is None:
                    lane = server.lend(sid, now)
                    assert lane is not None
                    run.lends += 1
                taken = lane.recv(far.fileno(), dst)
                status = lane.status
                if status not in (OK, NEED_MORE, WAIT):
                    taken = lane.flow.rx.taken  # (DUE, FULL: what was taken is there)
                got += dst[:taken]
                if status == DUE:
                    record = server.lent_credit(now) if in_loan else None
                    if record is None:
                        run.general.append(len(run.credits))
                        server.take_back(now)
                        record = server.data_to_send(now)
                    else:
                        run.lent_credits += 1
                    assert record
                    run.credits.append(bytes(record))
                    client.receive_data(record, now)
                    continue
                if status == WAIT:
                    break
                if status not in (OK, NEED_MORE):
                    # a record that does not fit in what is left of dst (FULL), as the
                    # adapter hands it over: its rest to the connection, which delivers it
                    assert status == FULL, status
                    rx = lane.flow.rx
                    spill = lane.flow_spill() if rx.spill_len else b""
                    server.take_back(now, spill, lane.rview[rx.consumed : lane.io.end])
                    while (event := server.next_event()) is not None:
                        data = event.data  # type: ignore[attr-defined]
                        got += data
                        server.acknowledge_read(sid, len(data))
                    record = server.data_to_send(now)
                    if record:
                        run.credits.append(bytes(record))
                        client.receive_data(record, now)
            assert out or sent < total or len(got) == total, "the transfer stalled"
    finally:
        carrier.close()
        far.close()
    server.take_back(now)
    stream, table, records = server._streams[sid], server.streams, server.records
    run.digest = hashlib.sha256(got).hexdigest()
    run.state = {
        "recv_limit": stream.recv_limit,
        "consumed": stream.consumed,
        "delivered": stream.delivered,
        "conn_recv_limit": table.conn_recv_limit,
        "conn_consumed": table.conn_consumed,
        "conn_received": table.conn_received,
        "send_counter": records.send_counter,
        "records_sent": records.records_sent,
        "bytes_sent": server.bytes_sent,
        "last_sent": server._last_sent,
        "left_to_send": server.data_to_send(now),
        "client_credit": (client._streams[sid].send_credit, client.streams.conn_send_credit),
    }
    assert run.digest == hashlib.sha256(_expected(payload, chunk, total)).hexdigest()
    return run


def _expected(payload: bytes, chunk: int, total: int) -> bytes:
    out = bytearray()
    while len(out) < total:
        out += payload[: min(chunk, total - len(out))]
    return bytes(out)


def _both(total: int, chunk: int, read: int, **overrides: object) -> tuple[Run, Run]:
    keys = (os.urandom(32), os.urandom(32))
    in_loan = _transfer(keys, True, total, chunk, read, **overrides)
    general = _transfer(keys, False, total, chunk, read, **overrides)
    return in_loan, general


def _same(in_loan: Run, general: Run) -> None:
    assert in_loan.credits == general.credits  # byte for byte, record for record
    assert in_loan.digest == general.digest
    assert in_loan.state == general.state


@pytest.mark.parametrize(
    ("stream_window", "connection_window"),
    [
        pytest.param(64 * KIB, 96 * KIB, id="both-due"),
        pytest.param(32 * KIB, 1024 * KIB, id="stream-only"),
        pytest.param(256 * KIB, 48 * KIB, id="connection-only"),
    ],
)
def test_credit_sealed_in_the_loan_is_the_general_paths_record(
    stream_window: int, connection_window: int
) -> None:
    in_loan, general = _both(
        1 << 20,
        20_000,
        30_000,
        stream_window=stream_window,
        connection_window=connection_window,
    )
    _same(in_loan, general)
    assert len(in_loan.credits) >= 8
    # every record went in the one loan; the general path lent the stream anew after each
    assert in_loan.lent_credits == len(in_loan.credits) and not in_loan.general
    assert in_loan.lends == 1
    assert general.lends == len(general.credits) + 1


def test_the_peer_takes_the_credit_sealed_in_the_loan() -> None:
    in_loan, _ = _both(
        512 * KIB, 16_000, 16_000, stream_window=64 * KIB, connection_window=64 * KIB
    )
    # the client opened each record and raised its limits to what the server advertises
    state = in_loan.state
    assert state["client_credit"] == (state["recv_limit"], state["conn_recv_limit"])
    assert state["recv_limit"] >= 512 * KIB + 5  # (past all it sent, "first" included)


@settings(max_examples=25, deadline=None)
@given(
    stream_window=st.integers(16 * KIB, 192 * KIB),
    connection_window=st.integers(16 * KIB, 256 * KIB),
    chunk=st.integers(512, 40_000),
    read=st.integers(512, 70_000),
    total=st.integers(64 * KIB, 384 * KIB),
)
def test_credit_in_the_loan_matches_the_general_path(
    stream_window: int, connection_window: int, chunk: int, read: int, total: int
) -> None:
    in_loan, general = _both(
        total, chunk, read, stream_window=stream_window, connection_window=connection_window
    )
    _same(in_loan, general)
    assert not in_loan.general  # (a FULL read ends the loan: lent again after it)
    assert in_loan.lends <= general.lends
