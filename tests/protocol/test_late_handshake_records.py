"""Handshake records that arrive once the handshake is over (docs/protocol.md 8.1, 8.6).

Over a reliable carrier any of them closes the connection with PROTOCOL_VIOLATION, and
its header is enough: the rest of its body need not come. Over a lossy carrier they are
repeats or forgeries, dropped, except that a server answers a copy of a message it took
while the client has acknowledged none of its records (the client repeats its message
until the verdict arrives): message 2 again for a message 1, and the verdict's record.
A late copy of every handshake message each side got, both patterns, both carrier
kinds; whole, cut short, and behind stream data."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dtp.native import core as _core
from dtp.native.types import REC_DATA, REC_HS_FINAL, REC_HS_INIT, REC_HS_RESP
from dtp.protocol.connection import CloseCode, Connection
from dtp.transport.carriers._memory import MemoryLink
from tests.support.pairs import Side, carries_both_ways, establish, make_pair, run

# a peer's bytes that loop forever would never return: the marker ends the test instead
pytestmark = pytest.mark.timeout(120)

Receive = Callable[[bytes, float], None]


def _handshake_records(blob: bytes) -> list[bytes]:
    batch = _core.parse_records(blob)
    records = [blob[r.offset : r.offset + 12 + r.body_len] for r in batch.records]
    return [record for record in records if record[0] != REC_DATA]


def established(ik: bool, reliable: bool) -> tuple[Side, Side, MemoryLink, dict[str, list[bytes]]]:
    """A pair run until both sides are established: (client, server, link, the
    handshake records each side received, by "client" and "server")."""
    client, server = make_pair(ik=ik, reliable_carrier=reliable)
    got: dict[str, list[bytes]] = {"client": [], "server": []}
    for name, conn in (("client", client), ("server", server)):
        genuine = conn.receive_data  # (receive_datagram hands each datagram to it)

        def receive(
            data: bytes, now: float, genuine: Receive = genuine, seen: list[bytes] = got[name]
        ) -> None:
            seen.extend(_handshake_records(bytes(data)))
            genuine(data, now)

        conn.receive_data = receive  # type: ignore[method-assign]
    c, s, link = establish(client, server)
    assert client.established and server.established
    for conn in (client, server):
        del conn.receive_data  # type: ignore[attr-defined]
    assert got["server"] and got["client"]
    return c, s, link, got


def established_in_the_lane() -> tuple[
    Side, Side, MemoryLink, dict[str, list[bytes]], list[bytes], int
]:
    """:func:`established` (IK, a reliable carrier), then a stream from the client
    whose data (b"first") went through the server's stream lane, which holds it:
    (client, server, link, the handshake records, what the server's handler got, the
    stream)."""
    c, s, link, got = established(True, True)
    delivered: list[bytes] = []
    s.conn.stream_data_handler = lambda sid, data, end: delivered.append(bytes(data))
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"first")
    run(link, c, s)
    assert delivered == [b"first"] and s.conn._lane_sid == sid
    return c, s, link, got, delivered, sid


def answer_to_a_copy(server: Connection, kind: int) -> list[int]:
    """The kinds of the records a lossy server answers a copy of the client's handshake
    message ``kind`` with (docs/protocol.md 8.6): none once the client acknowledged one
    of its records; else message 2 again for a message 1, and the verdict's record."""
    if not server.records.acknowledged_nothing():
        return []
    return ([REC_HS_RESP] if kind == REC_HS_INIT else []) + [REC_DATA]


def feed(conn: Connection, data: bytes, now: float) -> None:
    """``data`` as ``conn``'s carrier delivers it (a datagram on a lossy one)."""
    if conn.config.reliable_carrier:
        conn.receive_data(data, now)
    else:
        conn.receive_datagram(data, now)


def closed_for_the_late_record(victim: Side, peer: Side, link: MemoryLink) -> None:
    """``victim`` closed with PROTOCOL_VIOLATION, and told ``peer`` so in a CLOSE."""
    term = victim.conn.termination
    assert term is not None and term.error_code == CloseCode.PROTOCOL_VIOLATION, term
    assert not term.by_peer and "handshake record after the handshake" in term.reason
    run(link, victim, peer, lambda: peer.conn.closed)
    told = peer.conn.termination
    assert told is not None and told.by_peer, told
    assert told.error_code == CloseCode.PROTOCOL_VIOLATION


PAIRS = [
    pytest.param(ik, reliable, id=f"{'IK' if ik else 'XX'}-{'tcp' if reliable else 'lossy'}")
    for ik in (True, False)
    for reliable in (True, False)
]


@pytest.mark.parametrize(("ik", "reliable"), PAIRS)
@pytest.mark.parametrize("receiver", ["server", "client"])
def test_a_late_copy_of_a_handshake_message(ik: bool, reliable: bool, receiver: str) -> None:
    c, s, link, got = established(ik, reliable)
    victim, peer = (s, c) if receiver == "server" else (c, s)
    for record in got[receiver]:
        feed(victim.conn, record, link.now)
        victim.drain()
        if reliable:
            closed_for_the_late_record(victim, peer, link)
            return
        assert victim.conn.established, victim.conn.termination
        if receiver == "server":
            # its reply was lost, as far as the server can tell: sent again
            expected = answer_to_a_copy(victim.conn, record[0])
        again = victim.conn.datagrams_to_send(link.now)
        if receiver == "server" and record[0] in (REC_HS_INIT, REC_HS_FINAL):
            assert [r[0] for r in again] == expected
        else:
            assert again == [], [r[0] for r in again]
    carries_both_ways(link, c, s)


@pytest.mark.parametrize(("ik", "reliable"), PAIRS)
def test_a_late_handshake_record_cut_short(ik: bool, reliable: bool) -> None:
    # its header and part of its body: over TCP the rest may come in a later read, and
    # the connection looped for good waiting for it (the opener stops at the header)
    c, s, link, got = established(ik, reliable)
    record = got["server"][0]
    feed(s.conn, record[:20], link.now)
    s.drain()
    if reliable:
        closed_for_the_late_record(s, c, link)
        return
    # a datagram's truncated end is damage: dropped, the connection goes on
    assert s.conn.established and not s.conn._inbuf
    carries_both_ways(link, c, s)


def test_a_late_handshake_record_cut_short_behind_stream_data() -> None:
    # the stream's own lane takes the records of the stream that got data last and
    # leaves the handshake record to the general path, which looped on it as well
    c, s, link, got, delivered, sid = established_in_the_lane()
    c.conn.send_stream_data(sid, b"second")
    data = c.conn.data_to_send(link.now)
    s.conn.receive_data(data + got["server"][0][:20], link.now)
    s.drain()
    assert delivered == [b"first", b"second"]
    closed_for_the_late_record(s, c, link)


@pytest.mark.parametrize(("ik", "reliable"), PAIRS)
def test_a_late_record_never_reaches_the_handshakes_own_path(
    ik: bool, reliable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # that path takes its Noise state as there (an assertion): the state goes only once
    # the receiving keys exist, and from then on every record is opened with them first
    c, s, link, got = established(ik, reliable)

    def never(self: Connection, now: float) -> bool:
        raise AssertionError("a record reached the handshake's path after the handshake")

    monkeypatch.setattr(Connection, "_process_handshake_records", never)
    for side in (c, s):
        assert side.conn._hs is None and side.conn._recv_aead is not None
    feed(s.conn, got["server"][0], link.now)
    s.drain()
    if reliable:
        closed_for_the_late_record(s, c, link)
        return
    expected = answer_to_a_copy(s.conn, REC_HS_INIT)
    assert [r[0] for r in s.conn.datagrams_to_send(link.now)] == expected
    carries_both_ways(link, c, s)


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_a_copy_after_the_client_acknowledged_the_verdict_is_not_answered(ik: bool) -> None:
    # the client had the verdict: its copy was one still on its way, and answering it
    # would send message 2 and the verdict again for nothing
    c, s, link, got = established(ik, False)
    carries_both_ways(link, c, s)  # (acknowledgements flow both ways)
    assert not s.conn.records.acknowledged_nothing()
    for record in got["server"]:
        feed(s.conn, record, link.now)
        s.drain()
        assert s.conn.datagrams_to_send(link.now) == []
    assert s.conn.established


@pytest.mark.parametrize("into", [False, True], ids=["handler", "take_fast"])
@pytest.mark.parametrize("behind", [False, True], ids=["alone", "behind-data"])
@pytest.mark.parametrize("split", [1, 5, 11])
def test_a_late_handshake_header_whole_at_the_end_of_a_read(
    split: int, behind: bool, into: bool
) -> None:
    # the stream's lane completes a header a read ended inside; one that then names a
    # handshake record went to the general path with nothing behind it, and waited in
    # the input for one byte more (or the idle timeout). Both of the lane's callers: the
    # handler's (receive_data) and a read's own buffer (take_fast)
    c, s, link, got, delivered, sid = established_in_the_lane()
    data = b""
    if behind:
        c.conn.send_stream_data(sid, b"second")
        data = c.conn.data_to_send(link.now)
    header = got["server"][0][:12]
    s.conn.receive_data(data + header[:split], link.now)
    assert s.conn.established and len(s.conn._inbuf) == split
    rest = header[split:]  # the header whole, and nothing more
    if into:
        assert s.conn.take_fast(rest, sid, bytearray(64), link.now) == (0, True)
    else:
        s.conn.receive_data(rest, link.now)
    s.drain()
    assert delivered == ([b"first", b"second"] if behind else [b"first"])
    closed_for_the_late_record(s, c, link)
