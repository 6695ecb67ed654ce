"""The WebSocket carrier's own framing of its common messages (a server's: one whole
binary frame read, records written; dtp.transport.carriers._websocket), against what
``websockets`` makes of the same bytes: a carrier over an in-memory TCP transport, its
upgrade done, fed reads split every way that matters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from dtp.transport.carriers._websocket import MAX_MESSAGE, WebSocketTransport, _between_frames
from tests.support.ws_carriers import MemoryTcp, Records, masked, record, upgraded_server


@pytest.fixture
def carrier() -> Iterator[tuple[WebSocketTransport, MemoryTcp, Records]]:
    loop = asyncio.new_event_loop()
    yield upgraded_server(loop)
    loop.close()


def test_whole_frames_in_one_read_each(carrier: Any) -> None:
    transport, tcp, protocol = carrier
    messages = [record(12 + 16), record(130), record(MAX_MESSAGE)]
    for message in messages:
        transport._receive(masked(Opcode.BINARY, message, b"\x9a\x00\xff\x31"))
        assert _between_frames(transport._ws)
    assert protocol.records == messages
    assert not tcp.out


def test_a_frame_split_across_reads_whose_rest_looks_like_a_frame(carrier: Any) -> None:
    """The second read is the first frame's payload, masked into the shape of a whole
    frame of its own: it is that payload, not a frame."""
    transport, _tcp, protocol = carrier
    message = record(100)
    # the mask makes the masked payload start 0x82, 0x80 | 94: a masked binary frame of
    # 94 bytes, after its four mask bytes exactly the 100 bytes read
    mask = bytes((message[0] ^ 0x82, message[1] ^ (0x80 | 94), 7, 9))
    frame = masked(Opcode.BINARY, message, mask)
    head, rest = frame[:6], frame[6:]
    assert rest[0] == 0x82 and rest[1] == 0x80 | 94 and len(rest) == 2 + 4 + 94
    transport._receive(head)
    assert not _between_frames(transport._ws)
    transport._receive(rest)
    assert protocol.records == [message]
    assert _between_frames(transport._ws)


def test_frames_split_and_joined_every_way(carrier: Any) -> None:
    """Two messages' frames cut at every byte: each read, whole or not, goes where it
    belongs, and the messages come whole and in order."""
    transport, _tcp, protocol = carrier
    messages = [record(40, 1), record(300, 2)]
    stream = b"".join(masked(Opcode.BINARY, m, b"\x11\x22\x33\x44") for m in messages)
    expected: list[bytes] = []
    for cut in range(1, len(stream)):
        transport._receive(stream[:cut])
        transport._receive(stream[cut:])
        expected += messages
    assert protocol.records == expected


def test_fragments_and_control_frames_go_through_websockets(carrier: Any) -> None:
    transport, tcp, protocol = carrier
    message = record(200)
    transport._receive(masked(Opcode.PING, b"hi", b"\x00\x00\x00\x01"))
    assert tcp.out == Frame(Opcode.PONG, b"hi").serialize(mask=False)  # (websockets answers)
    tcp.out.clear()
    transport._receive(masked(Opcode.BINARY, message[:50], b"\x05\x06\x07\x08", fin=False))
    transport._receive(masked(Opcode.CONT, message[50:], b"\x05\x06\x07\x08"))
    assert protocol.records == [message]
    # one final binary frame while a fragmented message is open: websockets fails it
    transport._receive(masked(Opcode.BINARY, message[:50], b"\x01\x01\x01\x01", fin=False))
    transport._receive(masked(Opcode.BINARY, message, b"\x01\x01\x01\x01"))
    assert protocol.records == [message] and transport._closing
    assert tcp.out[0] == 0x88 and tcp.out[2:4] == (1002).to_bytes(2, "big")  # (a close, 1002)


def test_an_unmasked_frame_from_a_client_fails_the_carrier(carrier: Any) -> None:
    transport, tcp, protocol = carrier
    transport._receive(Frame(Opcode.BINARY, record(30)).serialize(mask=False))
    assert not protocol.records and transport._closing
    assert tcp.out[0] == 0x88 and tcp.out[2:4] == (1002).to_bytes(2, "big")  # (a close, 1002)


def test_written_records_are_the_frames_websockets_writes(carrier: Any) -> None:
    transport, tcp, _protocol = carrier
    records = [record(28), record(125), record(126), record(MAX_MESSAGE)]
    transport.write(b"".join(records))
    assert bytes(tcp.out) == b"".join(
        Frame(Opcode.BINARY, r).serialize(mask=False) for r in records
    )


def test_every_write_frames_as_websockets_does(carrier: Any) -> None:
    """Writes one record each, several, and records split across writes (held until
    whole): the frames are websockets' own, whichever path framed them."""
    transport, tcp, _protocol = carrier
    records = [record(28), record(125), record(126), record(MAX_MESSAGE), record(40)]
    for r in records:
        transport.write(r)
    transport.write(b"".join(records))
    joined = b"".join(records)
    for cut in (5, 12, 30, len(joined) - 3):
        transport.write(memoryview(joined)[:cut])
        transport.write(memoryview(joined)[cut:])
    assert bytes(tcp.out) == b"".join(
        Frame(Opcode.BINARY, r).serialize(mask=False) for r in records * 6
    )


def test_a_ping_between_messages_keeps_both_paths_right(carrier: Any) -> None:
    """Control frames go through websockets (its answer goes out before what is
    written after); the messages around them are handed over whole and in order."""
    transport, tcp, protocol = carrier
    mask = b"\x01\x02\x03\x04"
    messages = [record(30, 1), record(31, 2), record(32, 3)]
    transport._receive(masked(Opcode.BINARY, messages[0], mask))
    transport.write(messages[0])
    transport._receive(masked(Opcode.PING, b"p", mask))
    transport.write(messages[1])
    transport._receive(masked(Opcode.BINARY, messages[1], mask))
    transport._receive(masked(Opcode.BINARY, messages[2], mask))
    transport.write(messages[2])
    assert protocol.records == messages
    assert bytes(tcp.out) == b"".join(
        [
            Frame(Opcode.BINARY, messages[0]).serialize(mask=False),
            Frame(Opcode.PONG, b"p").serialize(mask=False),
            Frame(Opcode.BINARY, messages[1]).serialize(mask=False),
            Frame(Opcode.BINARY, messages[2]).serialize(mask=False),
        ]
    )
