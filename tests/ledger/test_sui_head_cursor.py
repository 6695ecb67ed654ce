"""SuiLedger: the head cursor's read of a node whose watermark
goes back, and configuration numbers too large for a float.

``SuiLedger.head_cursor`` ends on a node whose ``ListEvents`` watermark goes back to a
cursor already passed; ``SuiConfig(timeout=10**400)`` (or ``poll_interval``) and
``SuiNode(timeout=10**400)`` raise the configuration error naming the setting, not a
bare OverflowError; a gas budget out of range names ``DTP_SUI_GAS_BUDGET`` as the
other settings name theirs; an integer past 4300 digits in any numeric setting (or as
the endpoint) is refused by that error too, not by the ValueError of its own repr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from dtp.ledger.sui import SuiConfig, SuiConfigError, SuiLedger
from dtp.ledger.sui._client import MalformedResponse, SuiNode

PACKAGE = "0x" + "d7" * 32
RPC = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Page:
    """What ``SuiNode.scan_events`` returns (the fields SuiLedger reads)."""

    frames: list[tuple[Any, bytes]]
    last: bytes | None
    end: Any | None


class CursorNode:
    """Stands where SuiLedger's SuiNode is: the page read after a cursor is ``pages``'s
    entry for it (no end reason, as from a node that gives none)."""

    def __init__(self, pages: dict[bytes | None, bytes], max_reads: int = 50) -> None:
        self.pages = pages
        self.reads = 0
        self.max_reads = max_reads

    def scan_events(self, package: str, after: bytes | None, limit: int) -> Page:
        self.reads += 1
        # a reader that never stops would otherwise hang the test run
        assert self.reads <= self.max_reads, "the events are read again and again"
        return Page([], self.pages[after], None)

    def list_events(
        self, package: str, after: bytes | None, limit: int
    ) -> tuple[list[tuple[Any, bytes]], bytes | None]:
        page = self.scan_events(package, after, limit)
        return page.frames, page.last

    def close(self) -> None:
        pass


def _ledger(node: Any) -> SuiLedger:
    ledger = SuiLedger(SuiConfig(RPC, PACKAGE, timeout=5))
    ledger._node.close()  # never opened: no I/O before the first call
    ledger._node = node
    return ledger


# -- head_cursor ----------------------------------------------------------------------------------


def test_head_cursor_refuses_a_watermark_that_goes_back() -> None:
    # 01 -> 02 -> 01 -> ...: never still, never the tip; it was read until the call was
    # killed (a client's connect_ledger_carrier hung in it)
    node = CursorNode({None: b"\x01", b"\x01": b"\x02", b"\x02": b"\x01"})
    ledger = _ledger(node)
    try:
        with pytest.raises(MalformedResponse, match="watermark"):
            ledger.head_cursor()
    finally:
        ledger.close()
    assert node.reads == 3
    # a cursor met for the first time is followed, to one that stops moving
    node = CursorNode({None: b"\x01", b"\x01": b"\x02", b"\x02": b"\x03", b"\x03": b"\x03"})
    ledger = _ledger(node)
    try:
        assert ledger.head_cursor() == "03"
        assert ledger.events("03")[1] == "03"  # a cursor events() takes
    finally:
        ledger.close()


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["timeout", "poll_interval"])
def test_a_number_of_seconds_too_large_for_a_float_is_a_config_error(field: str) -> None:
    with pytest.raises(SuiConfigError, match="positive number of seconds"):
        SuiConfig(RPC, PACKAGE, **{field: 10**400})


def test_a_node_timeout_too_large_for_a_float_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        SuiNode(RPC, timeout=10**400)


@pytest.mark.parametrize("budget", ["0", "-5", str(2**64)])
def test_a_gas_budget_out_of_range_names_its_setting(budget: str) -> None:
    env = {"DTP_SUI_RPC": RPC, "DTP_SUI_PACKAGE": PACKAGE, "DTP_SUI_GAS_BUDGET": budget}
    with pytest.raises(SuiConfigError, match=r"DTP_SUI_GAS_BUDGET.*gas budget"):
        SuiConfig.from_env(env)


@pytest.mark.parametrize("field", ["gas_budget", "timeout", "poll_interval", "retries"])
def test_an_integer_past_the_repr_limit_is_a_config_error_naming_no_digits(field: str) -> None:
    # its repr (past 4300 digits) raised a ValueError of its own, naming no setting
    value = 10**5000 if field != "retries" else -(10**5000)
    with pytest.raises(SuiConfigError, match="more than 4300 digits") as info:
        SuiConfig(RPC, PACKAGE, **{field: value})
    assert len(str(info.value)) < 200
    with pytest.raises(SuiConfigError, match="DTP_SUI_RPC: an integer of more than 4300"):
        SuiConfig(10**5000, PACKAGE)  # type: ignore[arg-type]


@pytest.mark.parametrize("argument", ["timeout", "retries"])
def test_a_node_argument_past_the_repr_limit_is_named(argument: str) -> None:
    value = 10**5000 if argument == "timeout" else -(10**5000)
    with pytest.raises(ValueError, match=f"{argument} must be .* more than 4300 digits"):
        SuiNode(RPC, **{argument: value})
