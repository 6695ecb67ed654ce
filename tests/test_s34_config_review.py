"""S34 review of ConnectionConfig: the windows, the stream limit, the record size, the
port and the connection ID were checked only by ``Connection()`` (LocalProtocolError),
so a bad config was taken when made and failed only at a connection -- inside a
server's accept, or after a ledger deposit for a connect by host ID -- and a
``max_datagram_size`` of 0 or less was taken, refusing every datagram. Each is now
refused when the config is made (and by ``dataclasses.replace``), with the TypeError /
ValueError the config's other values raise. Connections are driven in memory."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from dtp.connection import Connection, ConnectionConfig
from dtp.errors import LocalProtocolError
from dtp.events import DatagramReceived
from tests.test_connection import CLIENT_ID, SERVER_ID, Side, connect, run

# (field values, error, what the message says besides the field's name)
BAD: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"stream_window": -1}, ValueError, "from 0 to 2**62 - 1"),
    ({"stream_window": 2**62}, ValueError, "from 0 to 2**62 - 1"),
    ({"stream_window": 4.0}, TypeError, "int"),
    ({"connection_window": -1}, ValueError, "from 0 to 2**62 - 1"),
    ({"connection_window": 2**64}, ValueError, "from 0 to 2**62 - 1"),
    ({"connection_window": "8"}, TypeError, "int"),
    ({"max_streams": -1}, ValueError, "from 0 to 2**62 - 1"),
    ({"max_streams": 2**62}, ValueError, "from 0 to 2**62 - 1"),
    ({"max_streams": True}, TypeError, "int"),
    ({"reliable_carrier": False, "stream_window": 0}, ValueError, "from 1 to 2**32 - 1"),
    ({"reliable_carrier": False, "stream_window": 1 << 32}, ValueError, "2**32 - 1"),
    ({"max_record_plaintext": 0}, ValueError, "from 1 to 16384"),
    ({"max_record_plaintext": 16385}, ValueError, "from 1 to 16384"),
    ({"max_record_plaintext": "1000"}, TypeError, "int"),
    ({"reliable_carrier": False, "max_record_plaintext": 21}, ValueError, "from 22 to 16384"),
    ({"port": -1}, ValueError, "from 0 to 65535"),
    ({"port": 65536}, ValueError, "from 0 to 65535"),
    ({"port": "443"}, TypeError, "int"),
    ({"port": True}, TypeError, "int"),
    ({"connection_id": b"x" * 31}, ValueError, "32 bytes"),
    ({"connection_id": b"x" * 33}, ValueError, "32 bytes"),
    ({"connection_id": "0x" + "01" * 32}, TypeError, "bytes"),
    ({"connection_id": memoryview(b"x" * 32)}, TypeError, "bytes"),
    ({"max_datagram_size": 0}, ValueError, "at least 1"),
    ({"max_datagram_size": -5}, ValueError, "at least 1"),
]


def _name(values: dict[str, object]) -> str:
    return next(name for name in values if name != "reliable_carrier")


def _id(values: dict[str, object]) -> str:
    name = _name(values)
    value = values[name]
    shown = (
        f"{type(value).__name__}{len(value)}"
        if isinstance(value, bytes | memoryview)
        else repr(value)
    )
    return f"{name}={shown:.12}" + ("-lossy" if "reliable_carrier" in values else "")


@pytest.mark.parametrize(
    ("values", "error", "accepted"),
    BAD,
    ids=[_id(values) for values, _, _ in BAD],
)
@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_a_bad_value_is_refused_when_the_config_is_made(
    values: dict[str, object], error: type[Exception], accepted: str, client: bool
) -> None:
    # each was taken here, and refused (a LocalProtocolError) only by Connection()
    name = _name(values)
    with pytest.raises(error, match=name) as caught:
        ConnectionConfig(identity=CLIENT_ID, is_client=client, **values)  # type: ignore[arg-type]
    assert accepted in str(caught.value)
    assert not isinstance(caught.value, LocalProtocolError)
    # dataclasses.replace makes the config anew: refused there too
    good = ConnectionConfig(identity=CLIENT_ID, is_client=client)
    with pytest.raises(error, match=name):
        replace(good, **values)  # type: ignore[arg-type]


def test_the_limits_of_each_range_are_taken_and_work() -> None:
    # the same limits as Connection() had (only max_datagram_size's is new): the
    # largest windows and stream limit go to the peer, and it takes them
    c, s, _link = connect(
        stream_window=2**62 - 1, connection_window=2**62 - 1, max_streams=2**62 - 1
    )
    assert c.conn.established and s.conn.established
    assert s.conn.peer_params["msd"] == s.conn.peer_params["md"] == 2**62 - 1
    assert s.conn.peer_params["ms"] == 2**62 - 1
    for values in (
        {"stream_window": 0, "connection_window": 0, "max_streams": 0},
        {"max_record_plaintext": 1, "port": 0, "connection_id": bytes(32)},
        {"max_record_plaintext": 16384, "port": 65535},
        {"reliable_carrier": False, "stream_window": 1, "max_record_plaintext": 22},
        {"reliable_carrier": False, "stream_window": (1 << 32) - 1},
    ):
        ConnectionConfig(identity=CLIENT_ID, is_client=True, **values)  # type: ignore[arg-type]
    # and what was not, is not
    with pytest.raises(ValueError, match="max_datagram_size"):
        ConnectionConfig(identity=CLIENT_ID, is_client=True, max_datagram_size=0)


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "lossy"])
def test_the_smallest_max_datagram_size_sends_a_byte(reliable: bool) -> None:
    # the 3 bytes of the DATAGRAM frame's header come on top of the size: 1 byte goes
    # (over a lossy carrier too, with its smallest records), 2 do not; 0 is refused
    record = {} if reliable else {"max_record_plaintext": 22}
    c, s, link = connect(reliable_carrier=reliable, max_datagram_size=1, **record)  # type: ignore[arg-type]
    assert c.conn.max_datagram_size == 1
    c.conn.send_datagram(b"d")
    with pytest.raises(LocalProtocolError, match="datagram"):
        c.conn.send_datagram(b"dd")
    assert run(link, c, s, until=lambda: bool(s.of(DatagramReceived)))
    assert [e.data for e in s.of(DatagramReceived)] == [b"d"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="max_datagram_size"):
        replace(c.conn.config, max_datagram_size=0)


def test_a_bytearray_connection_id_is_kept_as_it_was_checked() -> None:
    # a bytearray was kept as given: changed after the config was made, the change
    # reached Connection() (refused there), or the peer's handshake
    cid = bytearray(b"\x01" * 32)
    config = ConnectionConfig(
        identity=CLIENT_ID,
        is_client=True,
        server_static=SERVER_ID.noise_public,
        connection_id=cid,  # type: ignore[arg-type]
        port=7,
    )
    cid[:] = b"\x02" * 5
    assert config.connection_id == b"\x01" * 32 and type(config.connection_id) is bytes
    client = Connection(config, ephemeral_key=os.urandom(32), now=0.0)
    server = Connection(
        ConnectionConfig(identity=SERVER_ID, is_client=False), ephemeral_key=os.urandom(32), now=0.0
    )
    s = Side(server)
    server.receive_data(client.data_to_send(0.0), 0.0)
    s.drain()
    assert server.peer_connection_id == b"\x01" * 32
    assert server.peer_params["port"] == 7
    assert not client.closed and not server.closed
