"""WebSocket carriers (dtp.transport.carriers._websocket) over an in-memory TCP
transport, for the tests that feed one exact bytes and read exactly what it writes: a
server's with a client's upgrade request read, a client's with a server's answer read,
and the frames RFC 6455 section 5.2 lays out."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri
from websockets.utils import accept_key

from dtp.transport.carriers._websocket import (
    MAX_MESSAGE,
    SUBPROTOCOL,
    WebSocketTransport,
    apply_mask,
)

UPGRADE = (
    b"GET /dtp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: dtp.v1\r\n\r\n"
)
"""A browser's upgrade request, as RFC 6455 section 1.3 shows it, offering ``dtp.v1``."""


class MemoryTcp:
    """The TCP transport under a carrier: what it writes is kept, a close noted."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Records(asyncio.Protocol):
    """A DTP connection's side of a carrier: the records handed to it, and its end."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self.records.append(bytes(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


class Upgrades:
    """What a carrier's ``on_upgrade`` was told: None (upgraded) or a refusal, each."""

    def __init__(self) -> None:
        self.told: list[str | None] = []

    def __call__(self, carrier: WebSocketTransport, refusal: str | None) -> None:
        self.told.append(refusal)


def server_carrier(
    loop: asyncio.AbstractEventLoop, origins: Any = None
) -> tuple[WebSocketTransport, MemoryTcp, Upgrades]:
    """A server's carrier (as ``accept_websocket`` makes one), nothing read yet."""
    ws = ServerProtocol(
        origins=origins, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=MAX_MESSAGE
    )
    upgrades = Upgrades()
    transport = WebSocketTransport(ws, loop, upgrades)
    tcp = MemoryTcp()
    transport._tcp_made(tcp)  # type: ignore[arg-type]
    return transport, tcp, upgrades


def upgraded_server(
    loop: asyncio.AbstractEventLoop,
) -> tuple[WebSocketTransport, MemoryTcp, Records]:
    """A server's carrier past :data:`UPGRADE` (its 101 sent and cleared), to a
    :class:`Records`."""
    transport, tcp, _ = server_carrier(loop)
    transport._receive(UPGRADE)
    assert transport._upgraded and tcp.out.startswith(b"HTTP/1.1 101")
    tcp.out.clear()
    protocol = Records()
    transport.set_protocol(protocol)
    return transport, tcp, protocol


def upgraded_client(
    loop: asyncio.AbstractEventLoop,
) -> tuple[WebSocketTransport, MemoryTcp, Records]:
    """A client's carrier (as ``connect_websocket`` makes one) past a server's 101
    agreeing on ``dtp.v1`` (its request sent and cleared), to a :class:`Records`."""
    ws = ClientProtocol(
        parse_uri("ws://127.0.0.1/"), subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=MAX_MESSAGE
    )
    upgrades = Upgrades()
    transport = WebSocketTransport(ws, loop, upgrades)
    tcp = MemoryTcp()
    transport._tcp_made(tcp)  # type: ignore[arg-type]
    found = re.search(rb"Sec-WebSocket-Key: (\S+)\r\n", bytes(tcp.out))
    assert found is not None
    tcp.out.clear()
    transport._receive(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(found[1].decode()).encode() + b"\r\n"
        b"Sec-WebSocket-Protocol: " + SUBPROTOCOL.encode() + b"\r\n\r\n"
    )
    assert upgrades.told == [None]
    protocol = Records()
    transport.set_protocol(protocol)
    return transport, tcp, protocol


def record(size: int, fill: int = 0x5A) -> bytes:
    """A message the carrier takes as one record (its header's body length right)."""
    body = size - 12
    return bytes((16, 0, body & 0xFF, body >> 8)) + bytes(8) + bytes([fill]) * body


def frame_head(opcode: int, size: int, mask: bytes = b"", fin: bool = True) -> bytes:
    """A frame's bytes before its payload (RFC 6455 section 5.2), the length in its
    shortest form; ``mask``: a client's."""
    head = bytes((0x80 * fin | opcode,))
    flag = 0x80 if mask else 0
    if size < 126:
        head += bytes((flag | size,))
    elif size < 65536:
        head += bytes((flag | 126,)) + size.to_bytes(2, "big")
    else:
        head += bytes((flag | 127,)) + size.to_bytes(8, "big")
    return head + mask


def masked(opcode: Opcode | int, payload: bytes, mask: bytes, fin: bool = True) -> bytes:
    """A client's frame of ``payload``."""
    code = opcode.value if isinstance(opcode, Opcode) else opcode
    return frame_head(code, len(payload), mask, fin) + apply_mask(payload, mask)


def close_codes(stream: bytes | bytearray) -> list[int]:
    """The codes of the close frames (opcode 8) in ``stream``, a run of whole frames
    (masked or not)."""
    codes = []
    at = 0
    while at < len(stream):
        first, second = stream[at], stream[at + 1]
        size, at = second & 0x7F, at + 2
        if size == 126:
            size, at = int.from_bytes(stream[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(stream[at : at + 8], "big"), at + 8
        mask = b"\0\0\0\0"
        if second & 0x80:
            mask, at = bytes(stream[at : at + 4]), at + 4
        payload = apply_mask(bytes(stream[at : at + size]), mask)
        at += size
        if first & 0x0F == 0x8:
            codes.append(int.from_bytes(payload[:2], "big"))
    return codes
