"""The handshake's wire rules (docs/protocol.md section 8): the counter of a handshake
record, the transport version a client offers and a server answers, and what each side
sends when the client's identity proof fails -- driven through real Connections in
memory, over a reliable and a lossy carrier."""

from __future__ import annotations

import os
import struct

import msgpack
import pytest

from dtp.errors import HandshakeError
from dtp.identity._noise import Handshake, make_auth_proof
from dtp.native import core as _core
from dtp.native.types import FRAME_CONTROL, REC_DATA, RawFrame
from dtp.protocol._events import PeerAuthenticated
from dtp.protocol.connection import (
    CloseCode,
    Connection,
    ConnectionConfig,
    _parse_params,
    error_for_termination,
)
from tests.support.pairs import CLIENT_ID, SERVER_ID, make_pair, sealed_by


def _with_counter(records: bytes, counter: int) -> bytes:
    """``records`` (whole handshake records) with the first one's counter replaced."""
    return records[:4] + struct.pack("<Q", counter) + records[12:]


def _records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(kind, counter, body) of each record in ``data``."""
    batch = _core.parse_records(data)
    return [
        (r.kind, r.counter, data[r.offset + 12 : r.offset + 12 + r.body_len]) for r in batch.records
    ]


# -- a handshake record's counter is 0 ------------------------------------------------------


@pytest.mark.parametrize(
    ("ik", "number"), [(True, 1), (True, 2), (False, 1), (False, 2), (False, 3)]
)
def test_a_handshake_record_with_a_counter_other_than_0_fails_the_handshake(
    ik: bool, number: int
) -> None:
    reader, record = _genuine(ik, number, reliable=True)
    reader.receive_data(_with_counter(record, 1), 0.0)
    term = reader.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED, term
    assert "counter 1" in term.reason
    # no session keys yet on the reading side: nothing can be sent, not even a CLOSE
    assert reader.data_to_send(0.0) == b""
    assert not any(isinstance(e, PeerAuthenticated) for e in iter(reader.next_event, None))


@pytest.mark.parametrize(
    ("ik", "number"), [(True, 1), (True, 2), (False, 1), (False, 2), (False, 3)]
)
def test_over_a_lossy_carrier_such_a_record_is_dropped_and_the_genuine_one_still_counts(
    ik: bool, number: int
) -> None:
    reader, record = _genuine(ik, number, reliable=False)
    before = reader.state
    reader.receive_data(_with_counter(record, 2**64 - 1), 0.0)
    assert reader.termination is None and reader.state is before
    reader.receive_data(record, 0.0)
    assert reader.state is not before and reader.termination is None


def _genuine(ik: bool, number: int, reliable: bool) -> tuple[Connection, bytes]:
    """The connection that reads handshake message ``number`` (1, 2, or 3 in XX), and
    that message's record alone, as the genuine peer sent it."""
    client, server = make_pair(ik=ik, reliable_carrier=reliable)
    flight = client.data_to_send(0.0)
    if number > 1:
        server.receive_data(flight, 0.0)
        if ik:
            server.accept()
        flight = server.data_to_send(0.0)
    if number > 2:
        client.receive_data(flight, 0.0)
        flight = client.data_to_send(0.0)
    reader = client if number == 2 else server
    kind, counter, body = _records(flight)[0]
    assert kind == number and counter == 0
    return reader, flight[: 12 + len(body)]


# -- the transport version ------------------------------------------------------------------


class _Offering(Connection):
    """A connection whose transport parameters say ``v`` = ``version`` (a peer of
    another version, as far as the parameters go)."""

    def __init__(self, config: ConnectionConfig, version: int) -> None:
        self.version = version  # (read by the constructor: a client writes message 1)
        super().__init__(config, ephemeral_key=os.urandom(32), now=0.0)

    def _transport_params(self) -> bytes:
        params = msgpack.unpackb(super()._transport_params())
        params["v"] = self.version
        packed: bytes = msgpack.packb(params)
        return packed


def _offering_pair(
    client_version: int, server_version: int, ik: bool
) -> tuple[Connection, Connection]:
    """A client and a server whose parameters say these versions."""
    client_cfg = ConnectionConfig(
        identity=CLIENT_ID, is_client=True, server_static=SERVER_ID.noise_public if ik else None
    )
    server_cfg = ConnectionConfig(identity=SERVER_ID, is_client=False)
    return _Offering(client_cfg, client_version), _Offering(server_cfg, server_version)


def _run(client: Connection, server: Connection) -> None:
    for _ in range(4):
        server.receive_data(client.data_to_send(0.0), 0.0)
        if server.peer_address is not None and not server.established and not server.closed:
            server.accept()
        client.receive_data(server.data_to_send(0.0), 0.0)


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_a_server_answers_a_later_version_with_its_own_and_the_connection_runs_in_it(
    ik: bool,
) -> None:
    client, server = _offering_pair(7, 1, ik)
    _run(client, server)
    assert client.established and server.established
    assert server.peer_params["v"] == 7  # what the client offered
    assert client.peer_params["v"] == 1  # what the server answered: version 1 it is


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_a_client_refuses_a_version_it_did_not_offer(ik: bool) -> None:
    client, server = _offering_pair(1, 2, ik)
    _run(client, server)
    term = client.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED, term
    assert "version 2" in term.reason


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_version_0_is_refused(ik: bool) -> None:
    client, server = _offering_pair(0, 1, ik)
    server.receive_data(client.data_to_send(0.0), 0.0)
    term = server.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED, term
    assert server.data_to_send(0.0) == b""  # no reply to a failed message 1


_PARAMS = {"v": 1, "md": 1 << 20, "msd": 1 << 20, "ms": 8, "it": 60000}


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb({**_PARAMS, b"x": 1}),  # a bytes key, once ignored as unknown
        msgpack.packb({**_PARAMS, 7: 1}),
        msgpack.packb(_PARAMS) + b"\xc0",  # something after the map
        msgpack.packb(list(_PARAMS.items())),
        b"",
    ],
    ids=["bytes-key", "int-key", "trailing", "array", "empty"],
)
def test_parameters_that_are_not_one_map_with_string_keys_fail(payload: bytes) -> None:
    with pytest.raises(HandshakeError, match="malformed"):
        _parse_params(payload, from_client=True)
    # and unknown string keys, whatever their values, are ignored
    assert _parse_params(msgpack.packb({**_PARAMS, "x": {"y": [1.5]}})) == _PARAMS


# -- an identity proof that fails ----------------------------------------------------------


def test_an_ik_message_1_whose_proof_fails_gets_no_reply() -> None:
    hs = Handshake.initiator(
        CLIENT_ID.noise_private_bytes(), os.urandom(32), remote_static=SERVER_ID.noise_public
    )
    good = make_auth_proof(CLIENT_ID, hs.auth_binding, early=True)
    # the client's public key, another key's signature over the right binding
    forged = good[:1] + make_auth_proof(SERVER_ID, hs.auth_binding, early=True)[1:65] + good[65:]
    params = {"v": 1, "md": 1 << 20, "msd": 1 << 20, "ms": 8, "it": 60000, "auth": forged}
    message = hs.write_message(msgpack.packb(params))
    _, server = make_pair()
    server.receive_data(_core.write_record_header(1, 0, len(message), 0) + message, 0.0)
    term = server.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED, term
    assert "identity proof" in term.reason
    assert server.data_to_send(0.0) == b""


@pytest.mark.parametrize(
    "proof", ["another-hash", "too-short", "bit-flipped"], ids=lambda p: str(p)
)
def test_an_xx_auth_whose_proof_fails_is_answered_with_close_10(proof: str) -> None:
    client, server = make_pair(ik=False)
    server.receive_data(client.data_to_send(0.0), 0.0)
    client.receive_data(server.data_to_send(0.0), 0.0)
    # message 3 goes as the client wrote it; its AUTH is replaced by a bad one
    flight = client.data_to_send(0.0)
    kind, _, body = _records(flight)[0]
    assert kind == 3
    server.receive_data(flight[: 12 + len(body)], 0.0)
    assert client.handshake_hash is not None
    if proof == "another-hash":
        data = make_auth_proof(CLIENT_ID, bytes(32))
    elif proof == "too-short":
        data = make_auth_proof(CLIENT_ID, client.handshake_hash)[:96]
    else:
        good = bytearray(make_auth_proof(CLIENT_ID, client.handshake_hash))
        good[10] ^= 1
        data = bytes(good)
    auth = _core.encode_frames([RawFrame(FRAME_CONTROL, 1, 0, 0, data)])
    client.records.send_counter = 0  # the AUTH's record is the client's first DATA record
    server.receive_data(sealed_by(client, auth), 0.0)
    term = server.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED, term
    # the server holds keys by now: its CLOSE tells the client why
    answer = server.data_to_send(0.0)
    assert [kind for kind, _, _ in _records(answer)] == [REC_DATA]
    client.receive_data(answer, 0.0)
    got = client.termination
    assert got is not None and got.by_peer and got.error_code == CloseCode.HANDSHAKE_FAILED
    assert isinstance(error_for_termination(got), HandshakeError)
