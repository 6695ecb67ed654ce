"""Every Move error constant (``#[error(code = N)] const EName: vector<u8> = b"..."``)
has its row in :mod:`dtp.errors` with the same module, code and message, and every
row has its constant: the SDK names and explains an abort as the package does."""

from __future__ import annotations

import re

from dtp.errors import _MOVE_ERROR_ROWS
from tests.support.paths import MOVE_SOURCES

SOURCES = MOVE_SOURCES
CONSTANT = re.compile(
    r'#\[error\(code = (\d+)\)\]\s*const (E\w+): vector<u8> = b"((?:[^"\\]|\\.)*)";'
)


def _move_errors() -> set[tuple[str, str, int, str]]:
    found = set()
    for source in sorted(SOURCES.glob("*.move")):
        text = source.read_text()
        module = re.search(r"^module dtp::(\w+);", text, re.M)
        assert module is not None, source
        for code, name, message in CONSTANT.findall(text):
            found.add((module.group(1), name, int(code), message.replace("\\'", "'")))
    return found


def test_the_sdk_knows_every_move_error_as_the_package_states_it() -> None:
    move = _move_errors()
    assert len(move) > 50  # the parse found them
    sdk = {(module, name, code, message) for module, name, code, _cls, message in _MOVE_ERROR_ROWS}
    assert move - sdk == set(), "Move errors the SDK lacks or states differently"
    assert sdk - move == set(), "SDK rows with no such Move error"


def test_every_error_code_is_unique_and_fits_the_abort_codes_byte() -> None:
    # An abort names its error by the code alone (docs/escrow.md §10: bits 48..55 of a
    # clever abort code, one byte), so two constants must never share a code, and none
    # may need more than 8 bits.
    codes = sorted(code for _module, _name, code, _message in _move_errors())
    assert len(codes) == len(set(codes)), [c for c in codes if codes.count(c) > 1]
    assert all(0 < code <= 255 for code in codes), [c for c in codes if c > 255]
