"""The ledger carrier's send and receive: the record types and counts they take.

* ``send()``'s new type check took only ``bytes``, ``bytearray`` and ``memoryview``
  records: an ``array.array`` record, which is bytes-like (and was posted before the
  check), was refused as "not bytes-like". Any buffer is taken now, as a socket takes it.
* ``send()`` promised its refusals before anything is posted, but a record too large for
  255 fragments further down the list raised only once the records ahead of it were
  posted (transactions paid for a call that failed). All records are framed first now.
* ``receive()`` took the records held back from a failed read (the lanes have seen them)
  before it compared its timeout: a timeout of the wrong type raised there and they were
  lost for good. The timeout is checked first now, as ``max_bytes`` is.
* ``receive(timeout)`` went on waiting past record-less events (right: the peer's SYNC
  ended the wait empty-handed) and so also past the peer destroying its pipe: a caller
  reading until ``peer_closed`` sat out its whole timeout. The peer's end ends the wait.

Everything real: a LocalLedger on a SQLite file (tmp_path) and real carriers.
"""

from __future__ import annotations

import array
import time
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ChainError
from dtp.hostid.ledger_carrier._carrier import LedgerCarrier
from dtp.ledger.local import LocalLedger
from tests.hostid.retention_world import World
from tests.support.pairs import CLIENT_ID, SERVER_ID


def _carrier(ledger: Any, world: World, who: str, **kw: Any) -> LedgerCarrier:
    me, peer = (CLIENT_ID, SERVER_ID) if who == "client" else (SERVER_ID, CLIENT_ID)
    return LedgerCarrier(ledger, me, world.conn_id, peer_address=peer.sui_address, **kw)


def test_send_takes_any_bytes_like_record(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    client = _carrier(world.ledger, world, "client")
    server = _carrier(world.ledger, world, "server")
    wide = array.array("H", [1, 2, 3])
    client.send([array.array("B", b"abc"), wide, memoryview(b"view")])
    assert server.receive(0.0) == [b"abc", wide.tobytes(), b"view"]
    # what is no buffer is still refused, before anything is posted
    with pytest.raises(TypeError):
        client.send([b"ok", "text"])
    assert client.payloads_sent == 3


def test_send_refuses_a_record_too_large_before_posting_any(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    # 64-byte payloads carry at most 255 × 57 bytes of one record
    client = _carrier(world.ledger, world, "client", max_payload=64, inner_count=1)
    server = _carrier(world.ledger, world, "server")
    with pytest.raises(ValueError, match="255"):
        client.send([b"first", bytes(20_000)])
    # the record ahead of it was not posted: no transaction for a call that failed
    assert client.payloads_sent == 0
    assert world.ledger.get_pipe(client.pipe_id).inners[0].next_seq == 0
    # and the carrier goes on as before, fragments included
    client.send([b"first", bytes(1000)])
    assert server.receive(0.0) == [b"first", bytes(1000)]


def test_receive_timeout_ends_when_the_peer_destroys_its_pipe(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    client = _carrier(world.ledger, world, "client")
    server = _carrier(world.ledger, world, "server")
    server.send([b"last"])
    assert client.receive(0.0) == [b"last"]
    server.close()
    start = time.monotonic()
    assert client.receive(3.0) == []
    assert client.peer_closed
    # (the whole 3 s before: the PipeDestroyed carries no record)
    assert time.monotonic() - start < 1.5


class _FailingSecondRead:
    """A ledger whose second ``events`` read fails as a node that does not answer."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def events(self, *args: Any, **kw: Any) -> Any:
        self.reads += 1
        if self.reads == 2:
            raise ChainError("the node does not answer", name="LedgerUnavailable")
        return self._ledger.events(*args, **kw)


def test_a_bad_timeout_keeps_the_records_held_back(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    client = _carrier(world.ledger, world, "client")
    server = _carrier(world.ledger, world, "server")
    assert client.receive(0.0) == []  # (nothing yet)
    server.send([b"one", b"two"])
    client.ledger = _FailingSecondRead(world.ledger)  # type: ignore[assignment]
    client.page_size = 2  # (the first page: the server's pipe and its first record)
    with pytest.raises(ChainError):
        client.receive(0.0)
    with pytest.raises(TypeError):
        client.receive("1")  # type: ignore[arg-type]
    client.ledger = world.ledger
    assert client.receive(0.0) == [b"one", b"two"]
