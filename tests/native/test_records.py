"""Record headers: both backends agree, malformed input raises the documented codes."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from dtp.native.types import FULL, NEED_MORE, OK, REC_DATA, REC_HS_INIT
from tests.support.backends import NATIVE, REFERENCE, require_native
from tests.support.vectors import load_vectors


def outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args))
    except (LocalProtocolError, RemoteProtocolError) as exc:
        return (type(exc).__name__, exc.code)


def test_header_layout(backend: SimpleNamespace) -> None:
    header = backend.write_record_header(REC_DATA, 0, 0x1234, 0x0102030405060708)
    assert header == bytes.fromhex("100034120807060504030201")


def test_parse_stream_statuses(backend: SimpleNamespace) -> None:
    rec = backend.write_record_header(REC_DATA, 0, 16, 1) + bytes(16)
    hs = backend.write_record_header(REC_HS_INIT, 0, 3, 0) + b"abc"
    batch = backend.parse_records(rec + hs + rec[:11])
    assert batch.status == NEED_MORE and batch.consumed == len(rec) + len(hs)
    assert [r.kind for r in batch.records] == [REC_DATA, REC_HS_INIT]
    assert batch.records[1].offset == len(rec)
    assert backend.parse_records(rec + rec[:20]).status == NEED_MORE
    assert backend.parse_records(rec * 3).status == OK
    full = backend.parse_records(rec * 3, max_records=2)
    assert full.status == FULL and full.consumed == 2 * len(rec)
    assert backend.parse_records(b"").status == OK


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (struct.pack("<BBHQ", 99, 0, 16, 0), ErrorCode.RECORD_KIND),
        (struct.pack("<BBHQ", REC_DATA, 1, 16, 0), ErrorCode.RECORD_FLAGS),
        (struct.pack("<BBHQ", REC_DATA, 0, 15, 0), ErrorCode.RECORD_SIZE),
        (struct.pack("<BBHQ", REC_DATA, 0, 16384 + 17, 0), ErrorCode.RECORD_SIZE),
        (struct.pack("<BBHQ", REC_HS_INIT, 0, 0, 0), ErrorCode.RECORD_SIZE),
        (struct.pack("<BBHQ", REC_HS_INIT, 0, 4097, 0), ErrorCode.RECORD_SIZE),
    ],
)
def test_malformed_headers(backend: SimpleNamespace, header: bytes, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        backend.parse_records(header)
    assert info.value.code == code
    with pytest.raises(LocalProtocolError) as local:
        backend.write_record_header(*struct.unpack("<BBHQ", header))
    assert local.value.code == code


def test_protocol_vectors(backend: SimpleNamespace) -> None:
    vectors = load_vectors("record-header")
    assert vectors
    for v in vectors:
        assert backend.write_record_header(
            v["record_kind"], v["flags"], v["body_len"], v["counter"]
        ) == bytes.fromhex(v["hex"]), v["name"]


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=8))
def test_differential_garbage(data: bytes, max_records: int) -> None:
    require_native()
    assert outcome(NATIVE.parse_records, data, max_records) == outcome(
        REFERENCE.parse_records, data, max_records
    )


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1))
def test_differential_write(kind: int, flags: int, body_len: int, counter: int) -> None:
    require_native()
    assert outcome(NATIVE.write_record_header, kind, flags, body_len, counter) == outcome(
        REFERENCE.write_record_header, kind, flags, body_len, counter
    )
