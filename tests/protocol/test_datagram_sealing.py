"""Datagrams sealed at once (``RecordLayer.seal_datagrams``, over a reliable carrier with
nothing waiting): a run of one, whose frame the record layer makes itself, gives the
record ``encode_datagram_run`` and ``seal`` give, at every length whose varint changes
form and up to the largest datagram a record takes; a longer run still goes through
``encode_datagram_run``. Both backends (``backend``: the AEAD each seals with)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dtp.native import _datagrams
from dtp.native.reference._datagrams import encode_datagram_run
from dtp.native.reference._limits import MAX_RECORD_PLAINTEXT
from dtp.protocol.connection import ConnectionConfig
from dtp.protocol.connection._records import RecordLayer
from dtp.protocol.connection._stream_table import StreamTable
from tests.support.pairs import CLIENT_ID

KEY = bytes(range(32))
#: around the varint's one- and two-byte forms, a relay's usual size, the largest
SIZES = [0, 1, 63, 64, 65, 512, 16383 - 3, MAX_RECORD_PLAINTEXT - 3]


def _layer(backend: SimpleNamespace) -> RecordLayer:
    config = ConnectionConfig(
        identity=CLIENT_ID,
        is_client=True,
        reliable_carrier=True,
        max_datagram_size=MAX_RECORD_PLAINTEXT,
    )
    table = StreamTable(is_client=True, max_streams=4, stream_window=1000, connection_window=4000)
    layer = RecordLayer(config, table, 0.0)
    layer.send_aead = backend.Aead(KEY)
    layer.send_counter = 7
    return layer


@pytest.mark.parametrize("size", SIZES)
def test_a_run_of_one_is_the_record_the_run_encoder_and_seal_make(
    backend: SimpleNamespace, size: int
) -> None:
    layer = _layer(backend)
    body = bytes([size % 251]) * size
    assert layer.seal_datagrams([body], 0) == (1, 0, size)
    want = backend.Aead(KEY).seal(7, encode_datagram_run([body], MAX_RECORD_PLAINTEXT))
    assert layer.out == [want]
    assert (layer.send_counter, layer.records_sent) == (8, 1)
    # and it opens as the datagram it was
    opened = backend.Aead(KEY).open_frames(want, datagram_runs=True)
    assert [r.datagrams for r in opened.records] == [[body]]


def test_a_run_of_one_of_another_buffer_kind_is_its_bytes(backend: SimpleNamespace) -> None:
    layer = _layer(backend)
    assert layer.seal_datagrams([memoryview(b"abc"), bytearray(b"d")][:1], 0) == (1, 0, 3)
    assert layer.out == [backend.Aead(KEY).seal(7, encode_datagram_run([b"abc"], 64))]


def test_a_longer_run_still_goes_through_the_run_encoder(
    backend: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtp.protocol.connection import _records

    runs: list[int] = []

    def counted(run: list[bytes], limit: int) -> list[bytes]:
        runs.append(len(run))
        return _datagrams.encode_datagram_run(run, limit)

    monkeypatch.setattr(_records, "encode_datagram_run", counted)
    layer = _layer(backend)
    layer.seal_datagrams([b"x"], 0)
    layer.seal_datagrams([b"y", b"z"], 0)
    assert runs == [2]
    assert layer.send_counter == 9
