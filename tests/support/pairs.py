"""Two sans-I/O connections wired together in memory, for the tests of every layer that
drives a connection pair (the identities, a pair, a pair run to the handshake's end or to
message 2, and what a refusal must look like)."""

from __future__ import annotations

import os
from dataclasses import replace

from dtp.errors import ConnectionRefused
from dtp.identity.keys import HostIdentity
from dtp.protocol._events import Event, PeerAuthenticated, StreamDataReceived, StreamOpened
from dtp.protocol.connection import CloseCode, Connection, ConnectionConfig, error_for_termination
from dtp.transport.carriers._memory import MemoryLink

CLIENT_ID = HostIdentity.generate()
SERVER_ID = HostIdentity.generate()


def make_pair(
    *, ik: bool = True, server_id: HostIdentity = SERVER_ID, **overrides: object
) -> tuple[Connection, Connection]:
    """A client (IK, expecting ``server_id``'s key, or XX) and a server, both with
    ``overrides`` in their configs, not yet started."""
    client_cfg = ConnectionConfig(
        identity=CLIENT_ID, is_client=True, server_static=server_id.noise_public if ik else None
    )
    server_cfg = ConnectionConfig(identity=SERVER_ID, is_client=False)
    client_cfg = replace(client_cfg, **overrides)  # type: ignore[arg-type]
    server_cfg = replace(server_cfg, **overrides)  # type: ignore[arg-type]
    client = Connection(client_cfg, ephemeral_key=os.urandom(32), now=0.0)
    server = Connection(server_cfg, ephemeral_key=os.urandom(32), now=0.0)
    return client, server


class Side:
    """Collects a connection's events and per-stream bytes."""

    def __init__(self, conn: Connection, auto_read: bool = True) -> None:
        self.conn = conn
        self.events: list[Event] = []
        self.data: dict[int, bytearray] = {}
        self.eof: set[int] = set()
        self.auto_read = auto_read

    def drain(self) -> None:
        while (event := self.conn.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, StreamDataReceived):
                self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.end_stream:
                    self.eof.add(event.stream_id)
                if self.auto_read and event.data:
                    self.conn.acknowledge_read(event.stream_id, len(event.data))

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def connect(
    split: str = "whole", accept: bool = True, seed: int = 0, **overrides: object
) -> tuple[Side, Side, MemoryLink]:
    """A pair (``make_pair``) run over a memory link, its bytes ``split`` as named, until
    the client is in (the server accepts as soon as the client is authenticated, unless
    ``accept`` is false) or closed."""
    client, server = make_pair(**overrides)  # type: ignore[arg-type]
    c, s, link = establish(client, server, split=split, accept=accept, seed=seed)
    assert client.established or client.closed
    return c, s, link


def establish(
    client: Connection,
    server: Connection,
    split: str = "whole",
    accept: bool = True,
    seed: int = 0,
) -> tuple[Side, Side, MemoryLink]:
    """:func:`connect` of a pair already made (a test may have wrapped what its
    connections receive): run until the client is in or closed, or until the link's
    time is up (the client then neither)."""
    c, s = Side(client), Side(server)
    link = MemoryLink(client, server, split=split, seed=seed)  # type: ignore[arg-type]

    def step() -> None:
        c.drain()
        s.drain()
        if accept and s.of(PeerAuthenticated) and not server.established and not server.closed:
            server.accept()

    link.run(lambda: client.established or client.closed, on_round=step)
    c.drain()
    s.drain()
    return c, s, link


def carries_both_ways(
    link: MemoryLink, c: Side, s: Side, there: bytes = b"ping", back: bytes = b"pong"
) -> None:
    """The pair still carries a stream both ways: ``there`` from the client on a new
    stream, ``back`` from the server on it, each with its end."""
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, there, end_stream=True)
    assert run(link, c, s, lambda: sid in s.eof)
    assert bytes(s.data[sid]) == there
    s.conn.send_stream_data(sid, back, end_stream=True)
    assert run(link, c, s, lambda: sid in c.eof)
    assert bytes(c.data[sid]) == back


def answered_pair(**overrides: object) -> tuple[Side, Side, MemoryLink]:
    """An IK pair over a reliable link, run until the client holds message 2 while the
    server has not decided (it answered first: Connection.answer, as a server with
    hooks does)."""
    client, server = make_pair(**overrides)  # type: ignore[arg-type]
    c, s = Side(client), Side(server)
    link = MemoryLink(client, server)

    def step() -> None:
        c.drain()
        s.drain()
        if s.of(PeerAuthenticated) and server.handshake_hash is None:
            server.answer()

    assert link.run(lambda: client.handshake_hash is not None, on_round=step)
    c.drain()
    s.drain()
    assert not client.established and not server.established
    return c, s, link


def run(link: MemoryLink, c: Side, s: Side, until: object = None) -> bool:
    """Run ``link`` until ``until()`` (or quiet), collecting both sides' events."""

    def step() -> None:
        c.drain()
        s.drain()

    ok = link.run(until, on_round=step)  # type: ignore[arg-type]
    c.drain()
    s.drain()
    return ok


def assert_refused(c: Side, s: Side, reason: str) -> None:
    """The client was refused with ``reason`` and the server's application saw none
    of what it sent."""
    c.drain()
    s.drain()
    term = c.conn.termination
    assert term is not None and term.by_peer and term.error_code == CloseCode.REFUSED
    error = error_for_termination(term)
    assert isinstance(error, ConnectionRefused) and error.reason == reason
    assert not s.of(StreamDataReceived) and not s.of(StreamOpened)


def sealed_by(conn: Connection, plaintext: bytes) -> bytes:
    """``plaintext`` sealed as ``conn``'s next record would be (its send counter taken)."""
    counter = conn.records.send_counter
    conn.records.send_counter += 1
    return conn.records.send_aead.seal(counter, [plaintext])  # type: ignore[no-any-return]
