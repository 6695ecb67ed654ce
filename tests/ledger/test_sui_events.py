"""SuiLedger reading events, the head cursor, node answers missing a
field, configuration checks, and what an unreadable ExecuteTransaction answer says.

``events()`` reads a checkpoint timestamp only for the events it returns;
``head_cursor`` ends on a live network, whose ``ListEvents`` watermark advances over
checkpoints without dtp events; an event frame without a watermark never gets the
cursor ``""`` (from which a reader would start over); ``SuiConfig`` refuses a float or
``True`` gas budget and a non-str endpoint, ``SuiNode`` a timeout of ``True``; an owned
object the node sends without a version is a malformed answer, never signed at version
0; an unreadable answer to ExecuteTransaction (or one without effects) says the
transaction may have run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter
from dtp.ledger.sui import SuiConfig, SuiConfigError, SuiLedger, parse_executed
from dtp.ledger.sui._client import MalformedResponse, NodeObject, SuiNode

PACKAGE = "0x" + "d7" * 32
SIGNER = HostIdentity.from_private_bytes(bytes([0x36]) * 32, bytes([0x37]) * 32)
DIGEST = "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi"
HOST = "0x" + "a1" * 32
TIP = sui_prot.QueryEndReason.LEDGER_TIP


def _event(name: str, checkpoint: int, host: str = HOST) -> Any:
    # HostCreated { host: ID, authority: address }; other names: a type this version skips
    contents = bytes.fromhex(host[2:]) + bytes.fromhex(SIGNER.sui_address[2:])
    return sui_prot.Event(
        sender=SIGNER.sui_address,
        event_type=f"{PACKAGE}::host::{name}",
        contents=sui_prot.Bcs(value=contents if name == "HostCreated" else b"\x01"),
        transaction_digest="Digest111",
        checkpoint=checkpoint,
    )


@dataclass(frozen=True)
class EventPage:
    """What ``SuiNode.scan_events`` returns (its ``EventPage``; defined here so that this
    file also runs against the code before it)."""

    frames: list[tuple[Any, bytes]]
    last: bytes | None
    end: Any | None


class EventsNode:
    """Stands where SuiLedger's SuiNode is, for reading events: ``pages`` are served in
    turn (the last again and again), by both list_events and scan_events."""

    def __init__(self, pages: list[EventPage], max_reads: int = 50) -> None:
        self.pages = pages
        self.reads = 0
        self.max_reads = max_reads
        self.checkpoints: list[int] = []

    def scan_events(self, package: str, after: bytes | None, limit: int) -> EventPage:
        self.reads += 1
        # a reader that never stops would otherwise hang the test run
        assert self.reads <= self.max_reads, "the events are read again and again"
        return self.pages[min(self.reads, len(self.pages)) - 1]

    def list_events(
        self, package: str, after: bytes | None, limit: int
    ) -> tuple[list[tuple[Any, bytes]], bytes | None]:
        page = self.scan_events(package, after, limit)
        return page.frames, page.last

    def checkpoint_timestamp_ms(self, sequence: int) -> int:
        self.checkpoints.append(sequence)
        return 1_000 * sequence

    def close(self) -> None:
        pass


def _ledger(node: Any) -> SuiLedger:
    ledger = SuiLedger(SuiConfig("http://127.0.0.1:9", PACKAGE, timeout=5))
    ledger._node.close()  # never opened: no I/O before the first call
    ledger._node = node
    return ledger


# -- events: timestamps ---------------------------------------------------------------------------


def test_events_read_checkpoint_timestamps_only_for_the_events_returned() -> None:
    other = "0x" + "b2" * 32
    frames = [
        (_event("SomethingNewer", 10), b"\x01"),  # a type this version skips
        (_event("HostCreated", 11, other), b"\x02"),  # dropped by the filter
        (_event("HostCreated", 12), b"\x03"),
    ]
    node = EventsNode([EventPage(frames, b"\x03", TIP)])
    ledger = _ledger(node)
    try:
        events, cursor = ledger.events(None, EventFilter(object_id=HOST))
    finally:
        ledger.close()
    assert cursor == "03"
    assert [(e.name, e.cursor, e.timestamp_ms) for e in events] == [("HostCreated", "03", 12_000)]
    assert node.checkpoints == [12]  # was [10, 11, 12]: one GetCheckpoint per event read


# -- head_cursor ----------------------------------------------------------------------------------


def test_head_cursor_ends_at_the_tip_the_node_reports() -> None:
    # a live network: each read reaches the tip, which has moved on since the last one
    pages = [EventPage([], bytes([n]), TIP) for n in range(1, 60)]
    node = EventsNode(pages)
    ledger = _ledger(node)
    try:
        assert ledger.head_cursor() == "01"
    finally:
        ledger.close()
    assert node.reads == 1 and node.checkpoints == []


def test_head_cursor_reads_past_full_pages_to_the_tip_or_a_still_cursor() -> None:
    full = sui_prot.QueryEndReason.ITEM_LIMIT
    scan = sui_prot.QueryEndReason.SCAN_LIMIT
    pages = [
        EventPage([(_event("HostCreated", 1), b"\x01")], b"\x01", full),
        EventPage([], b"\x02", scan),  # the node's scan budget: not the tip yet
        EventPage([], b"\x03", TIP),
        EventPage([], b"\x04", TIP),
    ]
    node = EventsNode(pages)
    ledger = _ledger(node)
    try:
        assert ledger.head_cursor() == "03"
    finally:
        ledger.close()
    assert node.reads == 3 and node.checkpoints == []  # no event decoded or timestamped
    # a node that gives no end reason: the generic rule, until the cursor stops moving
    quiet = EventsNode([EventPage([], b"\x01", None), EventPage([], b"\x02", None)])
    ledger = _ledger(quiet)
    try:
        assert ledger.head_cursor() == "02"
    finally:
        ledger.close()
    assert quiet.reads == 3
    empty = _ledger(EventsNode([EventPage([], None, TIP)]))
    try:
        assert empty.head_cursor() is None  # no events yet
    finally:
        empty.close()


# -- ListEvents frames ----------------------------------------------------------------------------


class _StreamStub:
    def __init__(self, frames: list[Any]) -> None:
        self.frames = frames

    async def list_events(self, message: Any) -> AsyncIterator[Any]:
        for frame in self.frames:
            yield frame


class StreamNode(SuiNode):
    """A SuiNode whose ListEvents stream is ``frames`` (no socket: the stub is faked)."""

    def __init__(self, frames: list[Any]) -> None:
        super().__init__("http://127.0.0.1:9", timeout=5)
        self.frames = frames

    def _stub(self, service: Any) -> Any:
        return _StreamStub(self.frames)


def _mark(cursor: bytes | None) -> Any:
    return sui_prot.Watermark(cursor=cursor) if cursor is not None else None


def test_an_event_frame_without_a_watermark_keeps_the_last_safe_cursor() -> None:
    a, b = _event("HostCreated", 1), _event("HostCreated", 2)
    frames = [
        sui_prot.ListEventsResponse(event=a, watermark=_mark(b"\x05")),
        sui_prot.ListEventsResponse(event=b),  # the node left the watermark out
        sui_prot.ListEventsResponse(watermark=_mark(b"\x07"), end=sui_prot.QueryEnd(reason=TIP)),
    ]
    node = StreamNode(frames)
    try:
        got, last = node.list_events(PACKAGE, b"\x04", 10)
        # b"" sent a reader resuming after the second event back to the first event ever
        assert [cursor for _, cursor in got] == [b"\x05", b"\x05"] and last == b"\x07"
        page = node.scan_events(PACKAGE, b"\x04", 10)
        assert page.end == TIP and page.last == b"\x07" and len(page.frames) == 2
    finally:
        node.close()


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [1.5, 5e7, True, "50000000"], ids=repr)
def test_a_gas_budget_that_is_not_an_int_is_refused_by_the_config(budget: Any) -> None:
    with pytest.raises(SuiConfigError, match="gas budget"):
        SuiConfig("http://127.0.0.1:9", PACKAGE, gas_budget=budget)


@pytest.mark.parametrize("rpc", [None, 9000, b"http://127.0.0.1:9"], ids=repr)
def test_an_endpoint_that_is_not_text_is_a_config_error(rpc: Any) -> None:
    with pytest.raises(SuiConfigError, match="DTP_SUI_RPC"):
        SuiConfig(rpc, PACKAGE)


def test_a_node_timeout_of_true_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        SuiNode("http://127.0.0.1:9", timeout=True)


# -- node answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, -1])
def test_an_owned_object_without_a_version_is_a_malformed_response(version: int) -> None:
    obj = NodeObject(
        "0x" + "a6" * 32, version, DIGEST, SIGNER.sui_address, None, f"{PACKAGE}::pipe::Pipe", b""
    )
    with pytest.raises(MalformedResponse, match="version"):
        obj.owned_ref()


def test_an_unreadable_execution_answer_says_the_transaction_may_have_run(
    grpc_node: Any, sui_node: Any
) -> None:
    node = grpc_node({"ExecuteTransaction": lambda _request: b"\x0a\x05\x08"})  # cut short
    with pytest.raises(MalformedResponse, match="may still have executed"):
        sui_node(node.url).execute(b"\x00" * 8, b"\x00" * 97)
    assert node.handlers.calls == ["ExecuteTransaction"]  # sent once


def test_an_execution_answer_without_effects_says_the_transaction_may_have_run() -> None:
    with pytest.raises(Exception, match="may still have executed") as info:
        parse_executed(sui_prot.ExecutedTransaction(digest="D"), [PACKAGE], "host::create")
    assert getattr(info.value, "name", None) == "NoEffects"
