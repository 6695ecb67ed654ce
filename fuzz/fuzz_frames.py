"""Fuzz target: frame and record parsing on arbitrary bytes (atheris / libFuzzer).

The only allowed outcomes are a result or :class:`~dtp.errors.RemoteProtocolError`;
anything else (another exception, a crash, a sanitizer report) is a finding. Besides
the C decoder, each input also goes through the pure-Python twin, which must agree.

    python fuzz/fuzz_frames.py -runs=20000
    python fuzz/fuzz_frames.py fuzz/corpus/frames   # with a corpus directory
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import atheris

with atheris.instrument_imports():
    from dtp.errors import RemoteProtocolError
    from dtp.native import core as _core
    from dtp.native import reference as _reference
    from dtp.native.types import FULL, NEED_MORE, OK


def _records(parse: Callable[..., Any], data: bytes, max_records: int) -> object:
    try:
        return parse(data, max_records)
    except RemoteProtocolError as exc:
        return ("error", exc.code)


def _decode(
    decode: Callable[..., Any], data: bytes, complete: bool, max_frames: int, max_ranges: int
) -> object:
    try:
        batch = decode(data, complete, max_frames, max_ranges)
    except RemoteProtocolError as exc:
        return ("error", exc.code)
    if batch.status not in (OK, NEED_MORE, FULL) or not 0 <= batch.consumed <= len(data):
        raise AssertionError(f"bad status/consumed: {batch.status}, {batch.consumed}")
    return ("ok", list(batch), batch.status, batch.consumed)


def test_one_input(data: bytes) -> None:
    """Feed ``data`` to the C frame decoder (both modes) and the record parser."""
    if not data:
        return
    # the first byte picks the limits, so FULL paths are exercised too
    max_frames = 1 + data[0] % 8 if data[0] & 0x80 else 4096
    # the range limit on its own (an ACK that does not fit stops with FULL before it)
    max_ranges = 1 + (data[0] >> 3) % 4 if data[0] & 0x40 else max_frames
    body = data[1:]
    for complete in (True, False):
        native = _decode(_core.native_decode_frames, body, complete, max_frames, max_ranges)
        twin = _decode(_reference.decode_frames, body, complete, max_frames, max_ranges)
        if native != twin:
            raise AssertionError(f"backends disagree: {native!r} != {twin!r}")
    max_records = 1 + data[0] % 16
    native_records = _records(_core.native_parse_records, body, max_records)
    if native_records != _records(_reference.parse_records, body, max_records):
        raise AssertionError("backends disagree on records")


def main(argv: list[str] | None = None) -> None:
    """Run the fuzzer (libFuzzer flags such as ``-runs=N`` are accepted)."""
    if not _core.HAVE_NATIVE:
        raise SystemExit("the C extension is not built: pip install -e . first")
    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
