"""Raw HAM update batches (well-formed and malformed, protocol.md 6.2) and how a backend
answers them, for the merge tests."""

from __future__ import annotations

import math
import struct
from typing import Any

from dtp.errors import ErrorCode, ProtocolError
from dtp.native.reference._limits import HAM_BATCH_VERSION


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return (type(exc).__name__, exc.code)


def header(count: int) -> bytes:
    return struct.pack("<BI", HAM_BATCH_VERSION, count)


def raw_update(soul: bytes, field: bytes, state: bytes, value: bytes) -> bytes:
    def lp(x: bytes) -> bytes:
        return bytes([len(x)]) + x if len(x) < 64 else struct.pack(">H", 0x4000 | len(x)) + x

    return lp(soul) + lp(field) + state + lp(value)


F1 = struct.pack("<d", 1.0)
GOOD = raw_update(b"s", b"f", F1, b"v")
# (name, batch, code) -- every validation rule of protocol.md 6.2, and its precedence
BAD_BATCHES = [
    ("empty", b"", ErrorCode.HAM_MALFORMED),
    ("short header", header(0)[:4], ErrorCode.HAM_MALFORMED),
    ("version 0", b"\x00" + header(0)[1:], ErrorCode.HAM_MALFORMED),
    # version 1 broke ties bytewise: refused, not merged under other rules (6.1)
    ("version 1", b"\x01" + header(1)[1:] + GOOD, ErrorCode.HAM_MALFORMED),
    ("version 3", b"\x03" + header(1)[1:] + GOOD, ErrorCode.HAM_MALFORMED),
    ("count too big", header(4_000_001), ErrorCode.HAM_SIZE),
    ("count beyond data", header(2) + GOOD, ErrorCode.HAM_MALFORMED),
    ("trailing byte", header(1) + GOOD + b"\x00", ErrorCode.HAM_MALFORMED),
    ("count 0 trailing", header(0) + GOOD, ErrorCode.HAM_MALFORMED),
    ("soul varint cut", header(1) + b"\x40", ErrorCode.HAM_MALFORMED),
    ("empty soul", header(1) + raw_update(b"", b"f", F1, b""), ErrorCode.HAM_SIZE),
    ("soul 1025, no bytes", header(1) + b"\x44\x01", ErrorCode.HAM_SIZE),
    ("soul huge varint", header(1) + b"\xff" * 8, ErrorCode.HAM_SIZE),
    ("soul cut", header(1) + b"\x05abc", ErrorCode.HAM_MALFORMED),
    ("field missing", header(1) + b"\x01s", ErrorCode.HAM_MALFORMED),
    ("empty field", header(1) + raw_update(b"s", b"", F1, b""), ErrorCode.HAM_SIZE),
    ("field 1025", header(1) + b"\x01s\x44\x01", ErrorCode.HAM_SIZE),
    ("field cut", header(1) + b"\x01s\x03f", ErrorCode.HAM_MALFORMED),
    ("state cut", header(1) + b"\x01s\x01f" + F1[:7], ErrorCode.HAM_MALFORMED),
    (
        "state nan",
        header(1) + raw_update(b"s", b"f", struct.pack("<d", math.nan), b""),
        ErrorCode.HAM_STATE,
    ),
    (
        "state +inf",
        header(1) + raw_update(b"s", b"f", struct.pack("<d", math.inf), b""),
        ErrorCode.HAM_STATE,
    ),
    (
        "state -inf, then cut",
        header(1) + b"\x01s\x01f" + struct.pack("<d", -math.inf),
        ErrorCode.HAM_STATE,
    ),
    ("value varint cut", header(1) + b"\x01s\x01f" + F1, ErrorCode.HAM_MALFORMED),
    ("value 1MiB+1", header(1) + b"\x01s\x01f" + F1 + b"\x80\x10\x00\x01", ErrorCode.HAM_SIZE),
    ("value cut", header(1) + b"\x01s\x01f" + F1 + b"\x04ab", ErrorCode.HAM_MALFORMED),
    ("second update bad", header(2) + GOOD + b"\x00", ErrorCode.HAM_SIZE),
    ("size before truncation", header(3) + GOOD + b"\x44\x01", ErrorCode.HAM_SIZE),
]
