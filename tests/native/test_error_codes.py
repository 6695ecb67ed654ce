"""Every status code of the C core (the ``#define DTP_ERR_*`` of dtp_core/dtp_core.h)
is distinct, and dtp.errors.ErrorCode names each with the same value: a code two
modules share would be reported as the other's error."""

from __future__ import annotations

import re
from pathlib import Path

from dtp.errors import ErrorCode, describe
from dtp.native import core

HEADER = Path(__file__).resolve().parents[2] / "dtp_core" / "dtp_core.h"
# the lanes' codes, which dtp.native.core turns into an OSError (IO) or a partial send
# (QUEUE) before any Python code sees them
CORE_ONLY = {"IO", "QUEUE"}


def _header_codes() -> dict[str, int]:
    found = re.findall(r"^#define DTP_ERR_(\w+)\s+\(?(-?\d+)\)?", HEADER.read_text(), re.M)
    return {name: int(value) for name, value in found}


def test_header_codes_are_unique() -> None:
    codes = _header_codes()
    assert len(codes) >= 20  # (the pattern found them)
    by_value: dict[int, list[str]] = {}
    for name, value in codes.items():
        by_value.setdefault(value, []).append(name)
    assert {v: n for v, n in by_value.items() if len(n) > 1} == {}
    assert all(value < 0 for value in codes.values())


def test_error_code_mirrors_the_header() -> None:
    codes = _header_codes()
    shared = {name: value for name, value in codes.items() if name not in CORE_ONLY}
    assert {member.name: member.value for member in ErrorCode} == shared
    assert codes.keys() >= CORE_ONLY
    for member in ErrorCode:
        assert describe(member)


def test_built_core_has_the_header_values() -> None:
    if not core.HAVE_NATIVE:
        return
    for name, value in _header_codes().items():
        assert getattr(core.lib, f"DTP_ERR_{name}") == value, name
