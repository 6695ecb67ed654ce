"""The two core backends as one namespace each, for tests that run once per backend or
compare the C core with its pure-Python twin (the ``backend`` fixture in tests/conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dtp.native import core as _core
from dtp.native import reference as _reference

NATIVE = SimpleNamespace(
    name="c",
    Aead=_core.NativeAead,
    Reassembler=_core.NativeReassembler,
    HamGraph=_core.NativeHamGraph,
    Lane=_core.NativeLane,
    decode_frames=_core.native_decode_frames,
    encode_frames=_core.native_encode_frames,
    parse_records=_core.native_parse_records,
    write_record_header=_core.native_write_record_header,
    find_ham_souls=_core.native_find_ham_souls,
    zero_negative_states=_core.native_zero_negative_states,
)
REFERENCE = SimpleNamespace(
    name="python",
    Aead=_reference.Aead,
    Reassembler=_reference.Reassembler,
    HamGraph=_reference.HamGraph,
    Lane=_reference.Lane,
    decode_frames=_reference.decode_frames,
    encode_frames=_reference.encode_frames,
    parse_records=_reference.parse_records,
    write_record_header=_reference.write_record_header,
    find_ham_souls=_reference.find_ham_souls,
    zero_negative_states=_reference.zero_negative_states,
)
BACKENDS = [NATIVE, REFERENCE] if _core.HAVE_NATIVE else [REFERENCE]


def require_native() -> None:
    if not _core.HAVE_NATIVE:
        pytest.fail("the C extension is not built; differential tests need it")
