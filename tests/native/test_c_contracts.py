"""Three C-core contracts held at the C API itself (each reachable only through the
C API itself or a wrong argument; the Python wrappers never hit them).

- dtp_lane_take refusing an argument dropped the lane's pending bytes (the start of a
  record the carrier was still bringing); its twin kept them.
- dtp_aead_open_frames left the data_off of a frame without data relative to its own
  record, where the header promises an offset into plain_out.
- dtp_flow_seal took any max_chunk up to DTP_MAX_FRAME_DATA, though a chunk over
  DTP_MAX_STREAM_CHUNK does not fit one record beside its frame header: every full
  chunk then failed with DTP_ERR_RECORD_SIZE. Such chunks are now cut to fill their
  record, and the room dtp_flow_seal leaves for the records counts them so.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.native import core as _core
from dtp.native.types import FRAME_STREAM_FIN
from tests.support.backends import BACKENDS, require_native

KEY = os.urandom(32)


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
def test_a_refused_take_keeps_the_pending_bytes(b: SimpleNamespace) -> None:
    record = b.Aead(KEY).seal_stream(0, 4, 0, b"x" * 100)[0]
    lane = b.Lane(b.Aead(os.urandom(32)), b.Aead(KEY))
    f = lane.flow
    f.stream_id = f.rx.stream_id = 4
    f.can_recv = 1
    f.rx.stream_limit = f.rx.conn_limit = f.credit_offset = f.credit_conn = 1 << 40
    lane.rview[:20] = record[:20]
    lane.feed(20, bytearray(1000))  # the record's first 20 bytes: kept pending
    assert lane.pending == 20
    f.rx.stream_id = 8  # a flow that contradicts itself: the take refuses
    lane.rview[20:50] = record[20:50]
    with pytest.raises(LocalProtocolError):
        lane.feed(30, bytearray(1000))
    assert lane.pending == 20
    f.rx.stream_id = 4
    lane.rview[20 : len(record)] = record[20:]
    dst = bytearray(1000)
    assert lane.feed(len(record) - 20, dst) == 100 and dst[:100] == b"x" * 100


def test_every_data_off_points_into_its_record() -> None:
    require_native()
    ffi, lib = _core.ffi, _core.lib
    # record 0: 100 PADDING bytes; record 1: a STREAM_FIN without data
    plain = bytes(100) + bytes([FRAME_STREAM_FIN, 4, 0, 0])
    sealed = _core.NativeAead(KEY).seal(0, [plain[:100], plain[100:]])
    recs = ffi.new("dtp_opened_rec[2]")
    frames = ffi.new("dtp_frame[128]")
    ranges = ffi.new("dtp_ack_range[4]")
    out = ffi.new("uint8_t[256]")
    counts = ffi.new("size_t[4]")
    rx = _core.NativeAead(KEY)
    rc = lib.dtp_aead_open_frames(
        rx._ctx, sealed, len(sealed), recs, 2, out, 256, frames, 128, ranges, 4,
        counts, counts + 1, counts + 2, counts + 3,
    )  # fmt: skip
    assert rc == 0 and counts[0] == 2
    rec = recs[1]
    (fin,) = [frames[k] for k in range(rec.first_frame, rec.first_frame + rec.n_frames)]
    assert fin.type == FRAME_STREAM_FIN and fin.data_len == 0
    assert rec.plain_off <= fin.data_off <= rec.plain_off + rec.plain_len


def test_flow_seal_fits_any_chunk_size_into_its_output() -> None:
    require_native()
    ffi, lib = _core.ffi, _core.lib
    largest = _core.MAX_STREAM_CHUNK
    per = 16384 + 28  # a full record on the wire
    data = os.urandom(5 * largest)
    for max_chunk, expected in (
        (largest, 0),
        (largest + 1, 0),
        (16384, 0),
        (16385, ErrorCode.ARG),
    ):
        for records in (2, 4):
            out = ffi.new("uint8_t[]", records * per + 40)
            flow = ffi.new("dtp_flow *")
            flow.stream_id = 4
            flow.can_send = 1
            flow.send_offset = (1 << 62) - (1 << 20)  # the largest offsets: 8-byte varints
            flow.send_limit = (1 << 62) - 1
            flow.conn_send_limit = 1 << 40
            rc = lib.dtp_flow_seal(
                _core.NativeAead(KEY)._ctx, flow, data, len(data), max_chunk, out, len(out), 0.0
            )
            assert rc == expected, max_chunk
            if rc == 0:
                assert flow.taken == records * largest and flow.records_sent == records
                assert flow.written <= len(out)
                sealed = ffi.buffer(out, flow.written)[:]
                opened = _core.NativeAead(KEY).open_frames(sealed)
                got = b"".join(bytes(r.frames[0].data) for r in opened.records)
                assert got == data[: flow.taken]
