"""The close-code table of docs/protocol.md section 11 against the code: every
``CloseCode`` and the paid connections' application codes are listed with their number,
and the codes the table says are never sent, or sent silently, are not."""

from __future__ import annotations

import re

from dtp.payments import metering
from dtp.protocol.connection import CloseCode
from tests.support.pairs import connect
from tests.support.paths import PROTOCOL_MD


def _table() -> dict[int, str]:
    """code -> the name column of each single-code row of section 11's table."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text[text.index("## 11. Close codes") : text.index("## 12.")]
    rows = {}
    for code, name in re.findall(r"^\| (0x[0-9a-f]+|\d+)(?: and up)? \| `(\w+)` \|", section, re.M):
        rows[int(code, 0)] = name
    return rows


def test_every_close_code_is_in_the_table_with_its_number() -> None:
    assert _table() == {int(code): code.name for code in CloseCode}


def test_the_application_codes_of_paid_connections_are_named_with_their_numbers() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    for name in ("CLOSE_PAYMENT_REQUIRED", "CLOSE_FIREWALL_DENIED", "CLOSE_LEDGER_CLOSED"):
        assert f"{getattr(metering, name):#06x} `{name}`" in text, name


def test_an_idle_timeout_over_tcp_sends_nothing() -> None:
    """Section 11, code 9: only the lossy carrier's probe path sends IDLE_TIMEOUT."""
    c, _, link = connect()
    later = link.now + c.conn.config.idle_timeout + 1
    c.conn.handle_timer(later)
    term = c.conn.termination
    assert term is not None and term.error_code == CloseCode.IDLE_TIMEOUT
    assert c.conn.data_to_send(later) == b""
