"""docs/protocol.md 8.2: the one-decode path for the common transport parameters gives
exactly what the strict, key-by-key decoder gives: the same value, or nothing (and the
strict decoder then answers, its value or its error). Checked over random bytes and over
payloads built from 8.2's keys in every msgpack form and then mutated, against msgpack's
C decoder and its pure-Python one."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import msgpack.fallback
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dtp.errors import DTPError
from dtp.identity._noise import MAX_AUTH_PROOF_SIZE
from dtp.protocol.connection import _config

UNPACKERS = [msgpack.unpackb, msgpack.fallback.unpackb]
KEYS = ["v", "md", "msd", "ms", "it", "cid", "port", "auth", "x", "vv"]


@contextmanager
def _unpacker(unpackb: Any) -> Iterator[None]:
    saved = _config._unpackb
    _config._unpackb = unpackb
    try:
        yield
    finally:
        _config._unpackb = saved


def _outcome(payload: bytes, from_client: bool, offered: int) -> Any:
    """The strict decoder's answer: its value, or its error's type and message."""
    try:
        return _config._parse_strict(payload, from_client, offered)
    except DTPError as error:
        return (type(error), str(error))


def _check(payload: bytes, from_client: bool = True, offered: int = 1) -> None:
    strict = _outcome(payload, from_client, offered)
    for unpackb in UNPACKERS:
        with _unpacker(unpackb):
            fast = _config._parse_common(payload, from_client, offered)
            if fast is not None:
                assert fast == strict
                assert list(fast) == list(strict)  # (and in the same order)
            _config._SERVER_PARAMS.clear()
            try:
                whole = _config.parse_params(payload, from_client=from_client, offered=offered)
            except DTPError as error:
                whole = (type(error), str(error))
            assert whole == strict


def _int(value: int, form: int) -> bytes:
    """``value`` as a msgpack integer: its shortest form (0) or a fixed width (1-8)."""
    if form == 0:
        return msgpack.packb(value)
    signed = value < 0
    for code, size, fmt in (
        [(0xD0, 1, ">b"), (0xD1, 2, ">h"), (0xD2, 4, ">i"), (0xD3, 8, ">q")]
        if signed
        else [(0xCC, 1, ">B"), (0xCD, 2, ">H"), (0xCE, 4, ">I"), (0xCF, 8, ">Q")]
    ):
        if size >= form:
            try:
                return bytes([code]) + struct.pack(fmt, value)
            except struct.error:
                continue
    return msgpack.packb(value)


def _bin(data: bytes, form: int) -> bytes:
    n = len(data)
    if form == 2:
        return b"\xc6" + struct.pack(">I", n) + data
    if form == 1 or n > 255:
        return b"\xc5" + struct.pack(">H", n) + data
    return b"\xc4" + bytes([n]) + data


_EDGES = [0, 1, 65535, 65536, (1 << 62) - 1, 1 << 62]
_VALUES = st.one_of(
    st.builds(
        _int,
        st.one_of(
            st.integers(0, 70000),
            st.integers(-200, 200),
            st.sampled_from([(1 << 62) - 1, 1 << 62, (1 << 64) - 1, 1 << 20, 65535, 65536]),
        ),
        st.integers(0, 8),
    ),
    st.builds(_bin, st.binary(max_size=40), st.integers(0, 2)),
    st.builds(_bin, st.binary(min_size=32, max_size=32), st.integers(0, 2)),
    st.builds(lambda n: _bin(bytes(n), 0), st.sampled_from([0, 1, 255, 256, 600])),
    st.sampled_from(
        [
            b"\xc0",
            b"\xc2",
            b"\xc3",
            b"\xcb" + bytes(8),
            b"\xca" + bytes(4),
            b"\xa2ab",
            b"\xa2\xff\xfe",
            b"\xd4\x05\x00",
            b"\xd6\xff\x00\x00\x00\x01",
            b"\xc7\x03\xff\x00\x00\x00",
            b"\x91\x01",
            b"\x81\x01\x02",
            b"\x81\xc4\x01k\x02",
            b"\xc1",
        ]
    ),
    st.builds(
        msgpack.packb,
        st.recursive(st.none() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(), st.lists),
    ),
)


def _key(name: str, form: int) -> bytes:
    raw = name.encode()
    if form == 1:
        return b"\xd9" + bytes([len(raw)]) + raw  # str 8
    if form == 2:
        return b"\xc4" + bytes([len(raw)]) + raw  # a bin key: not a str
    if form == 3:
        return b"\xa2\xff" + raw[:1]  # not UTF-8
    return bytes([0xA0 + len(raw)]) + raw


@st.composite
def _payloads(draw: st.DrawFn) -> bytes:
    required = ["v", "md", "msd", "ms", "it"]
    names = draw(st.lists(st.sampled_from(KEYS), max_size=3))
    names = draw(st.permutations(required + names))
    names = [n for n in names if draw(st.integers(0, 31))]  # now and then one left out
    pairs = []
    for name in names:
        key = _key(name, max(draw(st.integers(-16, 3)), 0))  # mostly a fixstr
        if name == "v" and draw(st.booleans()):
            value = _int(draw(st.integers(0, 3)), draw(st.integers(0, 8)))
        elif draw(st.integers(0, 7)):  # mostly well-formed, so the common path is reached
            if name in ("cid", "auth"):
                value = _bin(draw(st.binary(min_size=30, max_size=34)), draw(st.integers(0, 2)))
            else:
                number = draw(st.integers(0, 70000) | st.sampled_from(_EDGES))
                value = _int(number, draw(st.integers(0, 8)))
        else:
            value = draw(_VALUES)
        pairs.append(key + value)
    count = len(pairs)
    header_form = max(draw(st.integers(-8, 2)), 0)  # mostly a fixmap
    if header_form == 1 or count > 15:
        header = b"\xde" + struct.pack(">H", count)
    elif header_form == 2:
        header = b"\xdf" + struct.pack(">I", count)
    else:
        header = bytes([0x80 + count])
    payload = bytearray(header + b"".join(pairs))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        kind = draw(st.integers(0, 5))
        at = draw(st.integers(0, max(len(payload) - 1, 0)))
        if kind == 0 and payload:
            payload[at] = draw(st.integers(0, 255))
        elif kind == 1:
            payload[at:at] = bytes([draw(st.integers(0, 255))])
        elif kind == 2 and payload:
            del payload[at]
        elif kind == 3:
            del payload[at:]
        elif kind == 4:
            payload += draw(st.binary(min_size=1, max_size=3))  # bytes after the map
        elif kind == 5 and pairs:
            # a pair repeated, the header counting it
            payload = bytearray([0x80 + count + 1]) + payload[1:] + draw(st.sampled_from(pairs))
    return bytes(payload)


_SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(_payloads(), st.booleans(), st.integers(1, 3))
@example(msgpack.packb({"v": 1, "md": 1, "msd": 1, "ms": 1, "it": 0}), True, 1)
@example(msgpack.packb({"v": 2, "md": 1, "msd": 1, "ms": 1, "it": 0}), False, 1)
@example(msgpack.packb({"v": True, "md": 1, "msd": 1, "ms": 1, "it": 0}), True, 1)
@example(b"\x86\xa1v\x01\xa2md\x01\xa3msd\x01\xa2ms\x01\xa2it\x01\xa1v\x01", True, 1)
@example(b"\x85\xa1v\x01\xa2md\x01\xa3msd\x01\xa2ms\x01\xa2it\x01\x00", True, 1)
def test_the_common_path_agrees_with_the_strict_decoder(
    payload: bytes, from_client: bool, offered: int
) -> None:
    _check(payload, from_client, offered)


_ODD_NUMBERS = [-1, 0, 2, 4, 65535, 65536, (1 << 62) - 1, 1 << 62, (1 << 64) - 1]
_ODD_NUMBERS += [True, False, 1.0, None, "1", b"1"]
_ODD_BYTES = [b"", b"\x00", bytes(31), bytes(32), bytes(33), bytes(MAX_AUTH_PROOF_SIZE)]
_ODD_BYTES += [bytes(MAX_AUTH_PROOF_SIZE + 1), "a" * 32, None, 0, [b""]]
_GONE = object()


@st.composite
def _params(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed parameters, then now and then a key or two set to a value at or past a
    limit, of another type, or left out (so that the common path is taken and each of
    its limits tried)."""
    params: dict[str, Any] = {"v": draw(st.integers(1, 3))}
    for key in ("md", "msd", "ms", "it"):
        params[key] = draw(st.integers(0, 70000) | st.just((1 << 62) - 1))
    if draw(st.booleans()):
        params["cid"] = draw(st.binary(min_size=32, max_size=32))
    if draw(st.booleans()):
        params["port"] = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        params["auth"] = draw(st.binary(min_size=1, max_size=64))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
        key = draw(st.sampled_from(["v", "md", "msd", "ms", "it", "cid", "port", "auth", "x"]))
        odd = _ODD_BYTES if key in ("cid", "auth") else _ODD_NUMBERS
        value = draw(st.sampled_from([*odd, _GONE]))
        if value is _GONE:
            params.pop(key, None)
        else:
            params[key] = value
    return params


_BASE = {"v": 1, "md": 1, "msd": 1, "ms": 1, "it": 0}


@_SETTINGS
@given(_params(), st.booleans(), st.integers(1, 3))
@example({**_BASE, "auth": bytes(MAX_AUTH_PROOF_SIZE)}, True, 1)
@example({**_BASE, "auth": bytes(MAX_AUTH_PROOF_SIZE + 1)}, True, 1)
@example({**_BASE, "port": 65536}, True, 1)
@example({**_BASE, "cid": bytes(33)}, True, 1)
def test_the_common_path_agrees_at_each_limit(
    params: dict[str, Any], from_client: bool, offered: int
) -> None:
    _check(msgpack.packb(params), from_client, offered)


@_SETTINGS
@given(st.binary(max_size=80), st.booleans())
def test_random_bytes_get_the_same_answer(payload: bytes, from_client: bool) -> None:
    _check(payload, from_client)


@_SETTINGS
@given(st.binary(min_size=1, max_size=60))
def test_random_bytes_after_a_fixmap_header_get_the_same_answer(body: bytes) -> None:
    for head in range(0x85, 0x89):
        _check(bytes([head]) + body)


def test_the_common_payload_takes_the_one_decode_path() -> None:
    # (otherwise the property above would hold with a path never taken)
    params = {"v": 1, "md": 1 << 20, "msd": 1 << 20, "ms": 8, "it": 60000, "cid": bytes(32)}
    payload = msgpack.packb(params)
    for unpackb in UNPACKERS:
        with _unpacker(unpackb):
            assert _config._parse_common(payload, True, 1) == params
