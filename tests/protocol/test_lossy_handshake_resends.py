"""The handshake over a lossy carrier (docs/protocol.md 8.6): the client sends its
handshake message again every 0.5 s until the server's verdict arrives, the rest of
its flight (XX: the AUTH's record) with it; the server answers an exact copy with
message 2 (for a message 1) and its verdict's record again, until the client has
acknowledged one of its records; and a server's first-message window covers the first
nine copies of message 1. Every time is the caller's (a virtual clock)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dtp.hostid.ledger_carrier._bridge import ledger_config
from dtp.native.types import REC_DATA, REC_HS_FINAL, REC_HS_INIT, REC_HS_RESP
from dtp.protocol._events import PeerAuthenticated
from dtp.protocol.connection import (
    FIRST_MESSAGE_COPIES,
    HANDSHAKE_RESEND_FIRST,
    Connection,
    ConnectionConfig,
    first_message_window,
)
from dtp.protocol.connection._config import FIRST_MESSAGE_TRANSIT
from tests.support.pairs import CLIENT_ID, SERVER_ID, make_pair


def kinds(records: list[bytes]) -> list[int]:
    return [record[0] for record in records]


def copies_unanswered(client: Connection) -> list[float]:
    """The times a client, whose every message is lost, sends its handshake message,
    until its handshake timeout ends the connection."""
    sent = [0.0] if kinds(client.datagrams_to_send(0.0)) else []
    now = 0.0
    while not client.closed:
        timer = client.get_timer()
        assert timer is not None and timer > now
        now = timer
        client.handle_timer(now)
        if REC_HS_INIT in kinds(client.datagrams_to_send(now)):
            sent.append(round(now, 9))
    assert now == client.config.handshake_timeout
    return sent


def lossy(is_client: bool) -> ConnectionConfig:
    identity = CLIENT_ID if is_client else SERVER_ID
    return ConnectionConfig(identity=identity, is_client=is_client, reliable_carrier=False)


def test_a_client_sends_message_1_every_half_second_through_its_handshake_timeout() -> None:
    client, _ = make_pair(reliable_carrier=False)
    assert copies_unanswered(client) == [k * HANDSHAKE_RESEND_FIRST for k in range(20)]


def test_the_first_message_window_covers_nine_copies_of_the_clients_schedule() -> None:
    client, _ = make_pair(reliable_carrier=False)
    ninth = copies_unanswered(client)[FIRST_MESSAGE_COPIES - 1]
    window = first_message_window(lossy(False), 3.0)
    assert window == ninth + FIRST_MESSAGE_TRANSIT == 5.0
    # a longer window asked for stays; over a reliable carrier the window is the one
    # asked for (a TCP client sends its message once, with its connect)
    assert first_message_window(lossy(False), 8.0) == 8.0
    assert first_message_window(ConnectionConfig(identity=SERVER_ID, is_client=False), 3.0) == 3.0
    # the schedule doubles up to handshake_resend_max: the window follows it, within the
    # handshake timeout (the ledger carrier's: 0.5, 1, 2, 4, 8, 8... s)
    slow = replace(lossy(True), handshake_resend_max=2.0, handshake_timeout=20.0)
    client = Connection(slow, ephemeral_key=bytes(32), now=0.0)
    assert copies_unanswered(client)[:9] == [0.0, 0.5, 1.5, 3.5, 5.5, 7.5, 9.5, 11.5, 13.5]
    assert first_message_window(replace(slow, is_client=False), 3.0) == 13.5 + 1.0
    ledger = ledger_config(lossy(False))
    assert first_message_window(ledger, 3.0) == ledger.handshake_timeout
    with pytest.raises(ValueError, match="handshake_resend_max"):
        replace(lossy(True), handshake_resend_max=0)


def test_ik_the_client_repeats_message_1_until_the_verdict_and_the_server_answers_with_it() -> None:
    client, server = make_pair(reliable_carrier=False)
    for record in client.datagrams_to_send(0.0):
        server.receive_datagram(record, 0.01)
    assert any(isinstance(e, PeerAuthenticated) for e in iter(server.next_event, None))
    server.accept()
    flight = server.datagrams_to_send(0.01)
    assert kinds(flight) == [REC_HS_RESP, REC_DATA]
    client.receive_datagram(flight[0], 0.02)  # message 2 arrives, the verdict is lost
    assert client.handshake_hash is not None and not client.established
    now = client.get_timer()
    assert now == HANDSHAKE_RESEND_FIRST
    client.handle_timer(now)
    copy = client.datagrams_to_send(now)
    assert REC_HS_INIT in kinds(copy)
    for record in copy:
        server.receive_datagram(record, now + 0.01)
    again = server.datagrams_to_send(now + 0.01)
    assert kinds(again) == [REC_HS_RESP, REC_DATA]
    for record in again:
        client.receive_datagram(record, now + 0.02)
    assert client.established
    # the verdict arrived: no more copies, and the client's acknowledgement of it ends
    # the server's answers to any copy still on its way
    client.handle_timer(now + 5.0)
    late = client.datagrams_to_send(now + 5.0)
    assert REC_HS_INIT not in kinds(late)
    for record in late:
        server.receive_datagram(record, now + 5.01)
    assert not server.records.acknowledged_nothing()
    for record in copy:
        server.receive_datagram(record, now + 5.02)
    assert server.datagrams_to_send(now + 5.02) == []


def test_xx_the_clients_lost_auth_goes_again_with_message_3_and_a_copy_brings_the_verdict() -> None:
    client, server = make_pair(ik=False, reliable_carrier=False)

    def cross(sender: Connection, receiver: Connection, now: float, lose: int = -1) -> list[int]:
        records = sender.datagrams_to_send(now)
        for i, record in enumerate(records):
            if i != lose:
                receiver.receive_datagram(record, now)
        return kinds(records)

    assert cross(client, server, 0.0) == [REC_HS_INIT]
    assert cross(server, client, 0.01) == [REC_HS_RESP]
    # message 3 (made as message 2 came) arrives, the AUTH's record (the client's first
    # DATA record) is lost
    assert cross(client, server, 0.01, lose=1) == [REC_HS_FINAL, REC_DATA]
    assert server.handshake_hash is not None and server.peer_address is None
    now = client.get_timer()
    assert now == pytest.approx(0.01 + HANDSHAKE_RESEND_FIRST)
    client.handle_timer(now)
    # the copy of message 3, and the AUTH's record again: the server has acknowledged
    # none of the client's records
    assert cross(client, server, now) == [REC_HS_FINAL, REC_DATA]
    assert server.peer_address == CLIENT_ID.sui_address
    assert any(isinstance(e, PeerAuthenticated) for e in iter(server.next_event, None))
    server.accept()
    assert REC_DATA in cross(server, client, now + 0.01, lose=0)  # the verdict is lost
    assert not client.established
    later = now + HANDSHAKE_RESEND_FIRST
    client.handle_timer(later)
    assert REC_HS_FINAL in cross(client, server, later)
    # the server answers the copy of message 3 with its verdict again
    assert REC_DATA in cross(server, client, later + 0.01)
    assert client.established
