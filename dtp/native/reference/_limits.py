"""Limits of the C core (mirrors the #defines in dtp_core/dtp_core.h), and the checks
both backends make against them."""

from dtp.errors import ErrorCode, LocalProtocolError

VARINT_MAX = 2**62 - 1
RECORD_HEADER_LEN = 12
AEAD_TAG_LEN = 16
AEAD_KEY_LEN = 32
MAX_RECORD_PLAINTEXT = 16384
MAX_HANDSHAKE_RECORD = 4096
MAX_FRAME_DATA = 16384
MAX_CLOSE_REASON = 1024
MAX_RECEIPT = 1024
MAX_ACK_RANGES = 256
REPLAY_WINDOW = 4096
OPEN_FRAMES_MAX = 1024  # (both backends, not C): default frame and ACK slots of open_frames
RECORD_OVERHEAD = RECORD_HEADER_LEN + AEAD_TAG_LEN
MAX_RECORD = RECORD_OVERHEAD + MAX_RECORD_PLAINTEXT  # the largest record, on the wire

MAX_STREAM_CHUNK = MAX_RECORD_PLAINTEXT - 21
"""The stream bytes a record holds at any stream id and offset: a STREAM frame header
(type, two 8-byte varints, a 2-byte length) always fits beside them. Every record
``seal_stream`` fills holds at least this many."""
MAX_SEAL_HEAD = 64
"""The most bytes ``seal_stream``'s ``head`` takes (a message framing's length prefix)."""
# a record of one STREAM frame: header, tag and at most 25 bytes of frame header
STREAM_RECORD_OVERHEAD = RECORD_OVERHEAD + 25
LANE_OWN_CAP = 1 << 16  # a lane's own receive buffer (Lane.own)

# 2: ties between values in UTF-16 order, as GunDB breaks them (1 compared the bytes)
HAM_BATCH_VERSION = 2
HAM_BATCH_HEADER_LEN = 5
HAM_MAX_KEY = 1024
HAM_MAX_VALUE = 1048576
HAM_MAX_UPDATES = 4000000
# the largest batch an export makes, whatever size it is allowed: the buffer it is made
# in is allocated whole, so export(max_batch_bytes=2**40) would ask for a terabyte
HAM_EXPORT_MAX_BATCH = 64 << 20
# the smallest: one maximal entry (keys, state, value, lengths) always fits
HAM_EXPORT_MIN_BATCH = HAM_BATCH_HEADER_LEN + 3 * HAM_MAX_KEY + 8 + HAM_MAX_VALUE + 16


def lane_max_seal(seal_cap: int, recv_cap: int) -> int:
    """The most bytes one seal of a lane with these buffers takes (whole records of
    :data:`MAX_STREAM_CHUNK`), or the LocalProtocolError a lane refuses them with."""
    per_record = MAX_STREAM_CHUNK + STREAM_RECORD_OVERHEAD
    if seal_cap < per_record:
        raise LocalProtocolError("seal buffer below one record", ErrorCode.ARG)
    if recv_cap <= MAX_RECORD:
        raise LocalProtocolError("receive buffer not above one record", ErrorCode.ARG)
    return (seal_cap // per_record) * MAX_STREAM_CHUNK
