"""The WebSocket carrier's framing (docs/protocol.md §13) against its vectors, and the
records a whole connection sends over it against those it sends over TCP.

- Each ``ws-message`` vector's frame, read by RFC 6455 §5.2 alone (the code below, not
  ``websockets``), carries exactly its record, and this carrier frames the record so
  (the mask a client drew fixed to the vector's); the receiving side's carrier reads
  the frame as that one record.
- Each ``ws-frame-head`` vector's head reads by §5.2 as its payload length and mask;
  one in the shortest form is what senders write; the receiving side's carrier takes
  the payload after it as a message, or fails with the vector's close code as soon as
  it has read the length.
- The §12 transcripts (tests/golden/conformance_*.json), two real DTP connections with
  fixed keys, are run with their records carried between the two sides by real sockets
  on 127.0.0.1: once over TCP and once over the WebSocket carrier. Each side sends the
  transcript's records over both, the WebSocket messages are those records one each,
  and their concatenation is, byte for byte, what the TCP connection carried; the
  bytes on the wire under the WebSocket (seen by a relay between the two) are the
  vectors' framing of them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import pytest
import websockets.frames

from dtp.identity.keys import HostIdentity
from dtp.native import core
from dtp.protocol.connection import Connection, ConnectionConfig
from dtp.transport.carriers._websocket import (
    MAX_MESSAGE,
    SUBPROTOCOL,
    WebSocketTransport,
    _framed,
    accept_websocket,
    apply_mask,
    connect_websocket,
    split_records,
)
from tests.support.paths import ROOT
from tests.support.vectors import load_vectors
from tests.support.ws_carriers import (
    close_codes,
    frame_head,
    record,
    upgraded_client,
    upgraded_server,
)

VECTORS = load_vectors("ws-message")
HEADS = load_vectors("ws-frame-head")
GOLDEN = {p: ROOT / "tests" / "golden" / f"conformance_{p.lower()}.json" for p in ("IK", "XX")}


def rfc6455_frames(stream: bytes) -> list[tuple[int, bool, bytes]]:
    """Every frame of ``stream`` as RFC 6455 §5.2 lays it out: (opcode, masked,
    unmasked payload). Nothing may be left over."""
    frames = []
    at = 0
    while at < len(stream):
        first, second = stream[at], stream[at + 1]
        assert first & 0x70 == 0, "no extension bits (nothing agreed)"
        assert first & 0x80, "each message in one frame (FIN set)"
        masked, size = bool(second & 0x80), second & 0x7F
        at += 2
        if size == 126:
            size, at = int.from_bytes(stream[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(stream[at : at + 8], "big"), at + 8
        mask = b"\0\0\0\0"
        if masked:
            mask, at = stream[at : at + 4], at + 4
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(stream[at : at + size]))
        assert len(payload) == size
        at += size
        frames.append((first & 0x0F, masked, payload))
    return frames


def framed(record: bytes, mask: bytes | None) -> bytes:
    """``record`` in one binary frame as the spec says (``mask``: a client's)."""
    size = len(record)
    flag = 0x80 if mask else 0
    if size < 126:
        head = bytes([0x82, flag | size])
    else:
        head = bytes([0x82, flag | 126]) + size.to_bytes(2, "big")
    if not mask:
        return head + record
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(record))


def test_there_are_vectors_of_both_directions_at_each_length_edge() -> None:
    """Each side of each edge between length forms, from a client and from a server:
    125 | 126 (7 and 16 bits), 16412 | 16413 (the largest record), 65535 | 65536 (16
    and 64 bits); and longer forms than needed, which a receiver takes."""
    for direction in ("client-to-server", "server-to-client"):
        sizes = {len(bytes.fromhex(v["record"])) for v in VECTORS if v["direction"] == direction}
        assert {125, 126} <= sizes
        heads = {v["payload_length"] for v in HEADS if v["direction"] == direction}
        assert {16412, 16413, 65535, 65536} <= heads
    assert sum(bytes.fromhex(v["head"]) != _shortest(v) for v in HEADS) == 2
    for vector in VECTORS + HEADS:
        assert set(vector) >= {"name", "kind", "direction", "mask"}
        assert (vector["direction"] == "client-to-server") == (len(vector["mask"]) == 8)


def _shortest(vector: dict[str, Any]) -> bytes:
    """The vector's frame head with its length in the shortest form."""
    return frame_head(0x2, vector["payload_length"], bytes.fromhex(vector["mask"]))


def test_the_data_records_of_the_length_edges_open_as_the_spec_says() -> None:
    """ws-data-125 and ws-data-126: sealed under aead-record-hello's key, counters 2 and
    3, one STREAM frame on stream 0 of 92 or 93 bytes "x"."""
    key = bytes.fromhex(
        next(v for v in load_vectors("aead-record") if v["name"] == "aead-record-hello")["key"]
    )
    for name, counter, n in (("ws-data-125", 2, 92), ("ws-data-126", 3, 93)):
        vector = next(v for v in VECTORS if v["name"] == name)
        (opened,) = core.Aead(key).open_frames(bytes.fromhex(vector["record"])).records
        assert opened.counter == counter
        assert [(f.type, f.a, f.b, bytes(f.data)) for f in opened.frames] == [(8, 0, 0, b"x" * n)]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_each_vector_frame_carries_its_record(vector: dict[str, Any]) -> None:
    record, frame = bytes.fromhex(vector["record"]), bytes.fromhex(vector["frame"])
    client = vector["direction"] == "client-to-server"
    assert rfc6455_frames(frame) == [(0x2, client, record)]
    assert framed(record, bytes.fromhex(vector["mask"]) if client else None) == frame
    # ... and the carrier takes it as one whole record
    assert split_records(record, bytearray()) == [record]
    if not client:  # (a server's carrier frames it itself)
        assert bytes(_framed(record) or b"") == frame


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_the_receiving_carrier_reads_each_vector_frame_as_its_record(
    vector: dict[str, Any],
) -> None:
    """The frame fed to the other side's carrier, whole and then a byte at a time: it
    hands over the record, once, and answers nothing."""
    loop = asyncio.new_event_loop()
    try:
        frame = bytes.fromhex(vector["frame"])
        receiver = upgraded_server if vector["direction"] == "client-to-server" else upgraded_client
        for cut in (len(frame), 1):
            transport, tcp, protocol = receiver(loop)
            for at in range(0, len(frame), cut):
                transport._receive(frame[at : at + cut])
            assert protocol.records == [bytes.fromhex(vector["record"])] and not tcp.out
    finally:
        loop.close()


@pytest.mark.parametrize("vector", HEADS, ids=lambda v: v["name"])
def test_each_frame_head_reads_and_is_met_as_the_vector_says(vector: dict[str, Any]) -> None:
    head = bytes.fromhex(vector["head"])
    size, mask = vector["payload_length"], bytes.fromhex(vector["mask"])
    client = vector["direction"] == "client-to-server"
    # RFC 6455 section 5.2: a final binary frame, masked from a client, of that length
    (parsed,) = rfc6455_frames(head + apply_mask(bytes(size), mask or b"\0" * 4))
    assert parsed == (0x2, client, bytes(size))
    assert head.endswith(mask)
    if head == _shortest(vector):
        # what senders write: websockets' framing, and a server carrier's own
        framed = _serialized(bytes(size), mask)
        assert framed[: len(head)] == head
        if not client and size <= MAX_MESSAGE:
            assert bytes(_framed(record(size)) or b"")[: len(head)] == head
    loop = asyncio.new_event_loop()
    try:
        receiver = upgraded_server if client else upgraded_client
        transport, tcp, protocol = receiver(loop)
        transport._receive(head)
        if vector["close_code"] is None:
            message = record(size)
            transport._receive(apply_mask(message, mask) if client else message)
            assert protocol.records == [message] and not tcp.out
        else:
            # failed on the length alone: no payload byte was sent
            assert close_codes(tcp.out) == [vector["close_code"]]
            assert protocol.records == [] and transport._closing
    finally:
        loop.close()


def _serialized(payload: bytes, mask: bytes) -> bytes:
    """``payload`` in a binary frame as ``websockets`` frames it (a client's ``mask``,
    which it draws at random, fixed)."""
    if not mask:
        return websockets.frames.Frame(websockets.frames.Opcode.BINARY, payload).serialize(
            mask=False, extensions=[]
        )
    drawn = websockets.frames.secrets.token_bytes
    websockets.frames.secrets.token_bytes = lambda n: mask  # type: ignore[assignment]
    try:
        return websockets.frames.Frame(websockets.frames.Opcode.BINARY, payload).serialize(
            mask=True, extensions=[]
        )
    finally:
        websockets.frames.secrets.token_bytes = drawn  # type: ignore[assignment]


class _Wire(asyncio.Protocol):
    """Collects what a carrier hands its protocol: one entry per data_received."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.more = asyncio.Event()
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport, cast (uvloop's are no asyncio.Transport subclasses)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(bytes(data))
        self.more.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.more.set()
        self.lost.set()

    async def until(self, size: int) -> None:
        while sum(map(len, self.chunks)) < size:
            self.more.clear()
            await asyncio.wait_for(self.more.wait(), 10)


class _Relay:
    """A TCP relay between a client and a server that records each direction's bytes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.seen = {"client-to-server": bytearray(), "server-to-client": bytearray()}
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._pair, "127.0.0.1", 0)
        name = self.server.sockets[0].getsockname()
        return name[0], name[1]

    async def _pair(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, into: bytearray) -> None:
            try:
                while data := await r.read(65536):
                    into += data
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()
                await w.wait_closed()

        self.tasks += [
            asyncio.ensure_future(pump(reader, up_writer, self.seen["client-to-server"])),
            asyncio.ensure_future(pump(up_reader, writer, self.seen["server-to-client"])),
        ]

    async def close(self) -> None:
        """Once both ends closed: the pumps end at their EOFs."""
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)
        self.server.close()
        await self.server.wait_closed()


def _connection(side: str, transcript: dict[str, Any]) -> Connection:
    keys = {k: bytes.fromhex(v) for k, v in transcript["keys"].items()}
    client = HostIdentity.from_private_bytes(
        keys["client_ed25519_seed"], keys["client_static_private"]
    )
    if side == "client":
        server_static = (
            bytes.fromhex(transcript["public"]["server_static"])
            if transcript["pattern"] == "IK"
            else None
        )
        config = ConnectionConfig(identity=client, is_client=True, server_static=server_static)
        return Connection(config, ephemeral_key=keys["client_ephemeral_private"], now=0.0)
    # (the server's Ed25519 key signs nothing in a connection: any will do)
    server = HostIdentity.from_private_bytes(bytes(32), keys["server_static_private"])
    config = ConnectionConfig(identity=server, is_client=False)
    return Connection(config, ephemeral_key=keys["server_ephemeral_private"], now=0.0)


def _act(conn: Connection, action: dict[str, Any]) -> None:
    do = action["do"]
    if do == "accept":
        conn.accept()
    elif do == "open_stream":
        assert conn.open_stream() == action["returns"]
    elif do == "send":
        conn.send_stream_data(action["stream"], bytes.fromhex(action["data"]), action["fin"])
    elif do == "close":
        conn.close(action["code"], action["reason"])
    else:  # pragma: no cover - a transcript typo
        raise AssertionError(f"unknown action {do!r}")


async def _carry(transcript: dict[str, Any], carrier: str) -> dict[str, Any]:
    """Run the transcript's two connections with their records carried over real
    sockets (``carrier``: "tcp" or "ws"): what each side's protocol was handed, in
    order, and (over "ws") the bytes a relay saw each way."""
    loop = asyncio.get_running_loop()
    wires = {"client": _Wire(), "server": _Wire()}
    made = asyncio.Event()
    relay: _Relay | None = None
    if carrier == "tcp":

        def accepted() -> _Wire:
            made.set()
            return wires["server"]

        listener = await loop.create_server(accepted, "127.0.0.1", 0)
        await loop.create_connection(
            lambda: wires["client"], *listener.sockets[0].getsockname()[:2]
        )
    else:

        def arrived(ws: WebSocketTransport) -> None:
            ws.set_protocol(wires["server"])
            wires["server"].connection_made(ws)
            made.set()

        listener = await loop.create_server(
            lambda: accept_websocket(loop, arrived, lambda *_: None, origins=None),
            "127.0.0.1",
            0,
        )
        relay = _Relay(listener.sockets[0].getsockname()[:2])
        host, port = await relay.start()
        await connect_websocket(f"ws://{host}:{port}/", wires["client"])
    try:
        await asyncio.wait_for(made.wait(), 10)
        conns = {side: _connection(side, transcript) for side in ("client", "server")}
        taken = {"client": 0, "server": 0}  # chunks each side's connection was fed
        expected = {"client": 0, "server": 0}  # bytes sent to each side so far
        sent_records: dict[str, list[bytes]] = {"client": [], "server": []}

        async def feed(side: str, now: float) -> None:
            wire = wires[side]
            await wire.until(expected[side])
            for chunk in wire.chunks[taken[side] :]:
                conns[side].receive_data(chunk, now)
            taken[side] = len(wire.chunks)
            while conns[side].next_event() is not None:
                pass

        for step in transcript["steps"]:
            side, now = step["side"], step["now"]
            await feed(side, now)
            for action in step["actions"]:
                _act(conns[side], action)
            out = conns[side].data_to_send(now)
            records = [bytes.fromhex(r["hex"]) for r in step["records"]]
            assert out == b"".join(records)  # the transcript's records, as over any carrier
            sent_records[side] += records
            # (any stream transport: uvloop's are no asyncio.Transport subclasses)
            transport = wires[side].transport
            assert transport is not None
            transport.write(out)  # one write per step, as the asyncio driver writes a batch
            other = "server" if side == "client" else "client"
            expected[other] += len(out)
        for side in ("client", "server"):
            await feed(side, transcript["steps"][-1]["now"])
        result: dict[str, Any] = {
            "received": {side: list(wires[side].chunks) for side in wires},
            "sent": sent_records,
        }
        for wire in wires.values():
            assert wire.transport is not None
            wire.transport.close()
        for wire in wires.values():
            await asyncio.wait_for(wire.lost.wait(), 10)
        if relay is not None:
            await relay.close()
            result["seen"] = {k: bytes(v) for k, v in relay.seen.items()}
        listener.close()
        await listener.wait_closed()
        return result
    except BaseException:
        # a failed step leaves no socket open: a loop closed with a server and its
        # connections still open hung in uvloop's close (the suite stopped there)
        for wire in wires.values():
            if wire.transport is not None:
                wire.transport.abort()
        if relay is not None:
            relay.server.close()
        listener.close()
        raise


@pytest.mark.parametrize("pattern", ["IK", "XX"])
def test_a_connection_sends_the_same_records_over_websocket_as_over_tcp(pattern: str) -> None:
    transcript = json.loads(GOLDEN[pattern].read_text())

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        return await _carry(transcript, "tcp"), await _carry(transcript, "ws")

    tcp, ws = asyncio.run(main())
    for receiver, sender in (("server", "client"), ("client", "server")):
        records = ws["sent"][sender]
        assert records == tcp["sent"][sender]
        # one message per record, in order, the record's bytes exactly
        assert ws["received"][receiver] == records
        # the TCP byte stream is the messages joined
        assert b"".join(tcp["received"][receiver]) == b"".join(records)
    # the wire under the WebSocket: the upgrade, then one binary frame per record,
    # masked from the client, unmasked from the server (as the vectors frame them)
    for direction, sender, masked in (
        ("client-to-server", "client", True),
        ("server-to-client", "server", False),
    ):
        head, _, frames = ws["seen"][direction].partition(b"\r\n\r\n")
        if direction == "client-to-server":
            assert head.startswith(b"GET / HTTP/1.1")
            assert f"Sec-WebSocket-Protocol: {SUBPROTOCOL}".encode() in head
        else:
            assert head.startswith(b"HTTP/1.1 101 ")
            assert f"Sec-WebSocket-Protocol: {SUBPROTOCOL}".encode() in head
        parsed = rfc6455_frames(frames)
        data = [payload for opcode, _, payload in parsed if opcode == 0x2]
        assert data == ws["sent"][sender]
        assert all(m == masked for opcode, m, _ in parsed)
        if not masked:  # (a server's frames are determined by the record alone)
            binary = b"".join(framed(r, None) for r in ws["sent"][sender])
            assert frames.startswith(binary)
        # after the records, at most the close handshake (opcode 8)
        assert {opcode for opcode, _, _ in parsed} <= {0x2, 0x8}


def test_the_vector_records_are_the_transcripts() -> None:
    ik = json.loads(GOLDEN["IK"].read_text())
    by_name = {v["name"]: bytes.fromhex(v["record"]) for v in VECTORS}
    assert by_name["ws-ik-hs-init"].hex() == ik["steps"][0]["records"][0]["hex"]
    assert by_name["ws-ik-hs-resp"].hex() == ik["steps"][1]["records"][0]["hex"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_websockets_frames_each_record_as_the_vector(
    vector: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library this carrier sends with frames each record as the vector says (a
    client's mask, which it draws at random, fixed to the vector's)."""
    record = bytes.fromhex(vector["record"])
    client = vector["direction"] == "client-to-server"
    if client:
        mask = bytes.fromhex(vector["mask"])
        monkeypatch.setattr(websockets.frames.secrets, "token_bytes", lambda n: mask)
    frame = websockets.frames.Frame(websockets.frames.Opcode.BINARY, record)
    assert frame.serialize(mask=client, extensions=[]) == bytes.fromhex(vector["frame"])
