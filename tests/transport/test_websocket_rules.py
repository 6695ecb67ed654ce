"""The WebSocket carrier's rules as docs/protocol.md section 13 states them, on a
carrier over an in-memory TCP transport (tests/support/ws_carriers.py) fed exact bytes:

- the answer to each kind of upgrade request (101, or the refusal's status), every
  refusal reported as one (a server counts it in ``handshakes_failed``), a version the
  server does not speak answered with the one it does;
- where the 16 KiB bound on a request head is counted: every byte read before the
  answer, 16384 of them taken, one more refused;
- which close code a message breaking two rules gets: the checks' order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from dtp.transport.carriers._websocket import MAX_MESSAGE, MAX_REQUEST_HEAD, origin_rule
from tests.support.ws_carriers import (
    UPGRADE,
    close_codes,
    frame_head,
    masked,
    record,
    server_carrier,
    upgraded_server,
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _without(header: bytes) -> bytes:
    start = UPGRADE.index(header)
    return UPGRADE[:start] + UPGRADE[UPGRADE.index(b"\r\n", start) + 2 :]


def _with(extra: bytes) -> bytes:
    return UPGRADE[:-2] + extra + b"\r\n\r\n"


#: (request, its answer's status or None for no answer). The order of the checks:
#: the request line (method, version), then the upgrade (Connection, Upgrade: 426),
#: then the WebSocket headers (key, version: 400), the Origin (403), dtp.v1 (400).
REQUESTS = {
    "upgrade": (UPGRADE, 101),
    "plain HTTP": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426),
    "no Upgrade header": (_without(b"Upgrade: websocket"), 426),
    "no Connection: Upgrade": (_without(b"Connection: Upgrade"), 426),
    "Upgrade: h2c": (UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c"), 426),
    "no key": (_without(b"Sec-WebSocket-Key"), 400),
    "a key of 4 bytes": (
        UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"AAAAAA=="),
        400,
    ),
    "version 8": (UPGRADE.replace(b"Version: 13", b"Version: 8"), 400),
    "no dtp.v1": (_without(b"Sec-WebSocket-Protocol"), 400),
    "another subprotocol": (UPGRADE.replace(b"dtp.v1", b"chat"), 400),
    "an origin not allowed": (_with(b"Origin: https://elsewhere.example"), 403),
    "an origin allowed": (_with(b"Origin: https://app.example"), 101),
    "POST": (UPGRADE.replace(b"GET", b"POST", 1), 405),
    "HTTP/1.0": (UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0", 1), 505),
    "plain HTTP/1.0, no upgrade": (b"GET / HTTP/1.0\r\n\r\n", 505),
    "a request line past 8192 bytes": (UPGRADE.replace(b"/dtp", b"/" + b"p" * 8200), 414),
    "a header line past 8192 bytes": (_with(b"X-Pad: " + b"p" * 8200), 431),
    "129 header lines": (_with(b"".join(b"X-%d: p\r\n" % i for i in range(123))[:-2]), 431),
    "not HTTP": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", None),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_each_upgrade_request_gets_its_answer(name: str, loop: asyncio.AbstractEventLoop) -> None:
    request, status = REQUESTS[name]
    transport, tcp, upgrades = server_carrier(loop, origin_rule(["https://app.example"]))
    transport._receive(request)
    answer = bytes(tcp.out)
    if status is None:
        assert answer == b""
    else:
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:60]
    if status == 101:
        assert upgrades.told == [None] and not tcp.closed
        assert b"\r\nSec-WebSocket-Protocol: dtp.v1\r\n" in answer
        return
    # refused: no WebSocket, the connection closed after the answer, and told as a
    # refusal (the server counts it in handshakes_failed), never as a client that left
    assert tcp.closed and transport.refusal is not None
    assert upgrades.told == [transport.refusal]
    if status == 426:
        assert b"\r\nUpgrade: websocket\r\n" in answer
    if name == "version 8":
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer  # (RFC 6455 4.2.2)


def _head_of(size: int) -> bytes:
    """An upgrade request of exactly ``size`` bytes, padded in header lines of at most
    1000 bytes (none past websockets' 8192 for a line)."""
    pad = size - len(UPGRADE)
    lines = []
    while pad:
        take = min(pad, 1000)
        assert take >= 8, "(a header line is at least 'X-N: p\\r\\n')"
        name = b"X-%d: " % len(lines)
        lines.append(name + b"p" * (take - len(name) - 2) + b"\r\n")
        pad -= take
    return UPGRADE[:-2] + b"".join(lines) + b"\r\n"


@pytest.mark.parametrize("reads", [1, 3, 40])
def test_the_request_head_bound_counts_every_byte_before_the_answer(
    reads: int, loop: asyncio.AbstractEventLoop
) -> None:
    """16384 bytes, request line and blank line included, are read and answered; a
    16385th before the answer is refused (431) without being read -- however the bytes
    were cut into reads."""
    for size, status in ((MAX_REQUEST_HEAD, 101), (MAX_REQUEST_HEAD + 1, 431)):
        request = _head_of(size)
        assert len(request) == size
        transport, tcp, upgrades = server_carrier(loop)
        step = -(-size // reads)
        for at in range(0, size, step):
            transport._receive(request[at : at + step])
        assert tcp.out.startswith(b"HTTP/1.1 %d " % status)
        assert upgrades.told == [None if status == 101 else transport.refusal]
    assert "over 16384 bytes" in str(transport.refusal)


_MASK = b"\x0f\x1e\x2d\x3c"
_BIG = MAX_MESSAGE + 1
_FRAG = masked(2, record(40)[:20], _MASK, fin=False)  # a binary message begun

#: A message (the frames a client sends) breaking one or two rules, and the close
#: code the server's carrier answers: the first check it fails, in the order of
#: section 13 -- the frame's first two bytes (opcode, mask bit), its length, the
#: whole frame (RSV bits, control frames, continuation), a text frame, then the
#: message as a record.
MESSAGES = {
    # a reserved opcode, or a frame unmasked from a client: 1002 whatever its length
    "reserved opcode 3, too long": ([frame_head(3, _BIG, _MASK)], 1002),
    "unmasked, too long": ([frame_head(2, _BIG)], 1002),
    # the length: 1009 as soon as it is read (no byte of the payload sent here)
    "too long": ([frame_head(2, _BIG, _MASK)], 1009),
    "text, too long": ([frame_head(1, _BIG, _MASK)], 1009),
    "RSV1 set, too long": ([bytes([0xC2]) + frame_head(2, _BIG, _MASK)[1:]], 1009),
    "length in 64 bits, top bit set": (
        [bytes([0x82, 0xFF]) + (2**63 + 40).to_bytes(8, "big") + _MASK],
        1009,
    ),
    "fragments adding up past 16412 bytes": (
        [_FRAG, frame_head(0, _BIG - 20 + 1, _MASK)],
        1009,
    ),
    # the whole frame
    "RSV1 set": ([bytes([0xC2]) + masked(2, record(40), _MASK)[1:]], 1002),
    "text with RSV1 set": ([bytes([0xC1]) + masked(1, b"hi", _MASK)[1:]], 1002),
    "a ping of 126 bytes": ([masked(9, bytes(126), _MASK)], 1002),
    "a continuation with no message begun": ([masked(0, record(40), _MASK)], 1002),
    "a text frame inside a binary message": ([_FRAG, masked(1, b"hi", _MASK)], 1002),
    "a close inside a binary message": ([_FRAG, masked(8, b"\x03\xe8", _MASK)], 1002),
    # a text frame: 1003 once it is whole, its message finished or not, UTF-8 or not
    "text": ([masked(1, b"hi", _MASK)], 1003),
    "text, unfinished": ([masked(1, b"hi", _MASK, fin=False)], 1003),
    "text, not UTF-8": ([masked(1, b"\xff\xfe", _MASK)], 1003),
    # the message, once whole: exactly one record
    "a message that is no record": ([masked(2, b"x" * 20, _MASK)], 1002),
    "an empty message": ([masked(2, b"", _MASK)], 1002),
    "fragments that are no record": ([_FRAG, masked(0, b"y" * 5, _MASK)], 1002),
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_the_first_rule_a_message_breaks_gives_the_close_code(
    name: str, loop: asyncio.AbstractEventLoop
) -> None:
    chunks, code = MESSAGES[name]
    transport, tcp, protocol = upgraded_server(loop)
    for chunk in chunks:
        transport._receive(chunk)
    assert close_codes(tcp.out) == [code]
    assert protocol.records == [] and transport._closing


@pytest.mark.parametrize("length_bytes", [2, 8])
def test_a_length_in_a_longer_form_than_needed_is_taken(
    length_bytes: int, loop: asyncio.AbstractEventLoop
) -> None:
    """A sender writes the shortest length form; a receiver takes a longer one (RFC
    6455 leaves it to senders: ``MUST be used`` of the minimal form)."""
    transport, tcp, protocol = upgraded_server(loop)
    message = record(40)
    head = bytes([0x82, 0x80 | (126 if length_bytes == 2 else 127)])
    head += len(message).to_bytes(length_bytes, "big") + _MASK
    transport._receive(head + masked(2, message, _MASK)[6:])
    assert protocol.records == [message] and not tcp.out
