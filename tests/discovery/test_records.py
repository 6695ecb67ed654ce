"""The LAN record (docs/messaging.md §6.1): the TXT record's bytes written and read back,
every malformed record refused with LanRecordError and its reason (never another
exception), and the peer table that browsers pump leaving such records out, counted,
without raising. No sockets: dtp.discovery._records and dtp.discovery._peers are
sans-I/O."""

from __future__ import annotations

import base64
import contextlib
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.discovery._peers import LanEvent, LanPeer, PeerFilter, PeerTable
from dtp.discovery._records import (
    MAX_TXT,
    SERVICE_TYPE,
    LanRecord,
    decode_txt,
    encode_txt,
    instance_name,
)
from dtp.discovery.errors import LanDiscoveryError, LanRecordError
from dtp.errors import DTPError, ObjectNotFound, RemoteProtocolError
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger

KEY = bytes(range(32))
HOST = "0x" + "ab" * 32


def txt(*entries: bytes) -> bytes:
    """A TXT record's data from its strings (each prefixed by its length)."""
    return b"".join(bytes([len(e)]) + e for e in entries)


def good(*extra: bytes) -> bytes:
    key = base64.urlsafe_b64encode(KEY).rstrip(b"=")
    return txt(b"txtvers=1", b"dtp=1", b"key=" + key, *extra)


def refused(data: bytes) -> LanRecordError:
    with pytest.raises(LanRecordError) as caught:
        decode_txt(data)
    return caught.value


def test_a_full_record_round_trips_and_stays_small() -> None:
    record = LanRecord(
        KEY,
        dtp=1,
        host_id=HOST,
        service="ssh",
        port=22,
        graph="notes",
        graph_sync=1,
    )
    data = encode_txt(record)
    assert decode_txt(data) == record
    assert len(data) < 300  # (RFC 6763 §6.2: under 400 bytes is reasonable)
    # the wire form the docs show, in that order
    assert data.startswith(b"\x09txtvers=1\x05dtp=1\x2fkey=")
    assert b"\x07svc=ssh\x07port=22\x0bgraph=notes\x06sync=1" in data


def test_the_smallest_record_is_version_transport_and_key() -> None:
    record = LanRecord(KEY)
    assert decode_txt(encode_txt(record)) == record
    assert decode_txt(good()) == record


def test_a_short_host_id_is_written_in_its_canonical_form() -> None:
    record = LanRecord(KEY, host_id="0xAB")
    assert record.host_id == "0x" + "0" * 62 + "ab"
    assert decode_txt(encode_txt(record)).host_id == record.host_id


def test_unicode_names_round_trip() -> None:
    record = LanRecord(KEY, graph="notes de réunion ✓", graph_sync=3)
    assert decode_txt(encode_txt(record)) == record


def test_keys_are_read_without_regard_to_case_and_unknown_keys_are_skipped() -> None:
    key = base64.urlsafe_b64encode(KEY).rstrip(b"=")
    data = txt(b"TXTVERS=1", b"future=whatever", b"Dtp=7", b"KEY=" + key, b"flag")
    assert decode_txt(data) == LanRecord(KEY, dtp=7)


def test_only_the_first_of_a_repeated_key_counts() -> None:
    # RFC 6763 §6.4: later occurrences are ignored, even a bad one
    data = good(b"graph=a", b"sync=1", b"graph=b", b"graph=\xff")
    assert decode_txt(data).graph == "a"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "missing"),
        (b"\x00", "missing"),  # (RFC 6763 §6.1: an empty TXT record is one empty string)
        (txt(b"dtp=1", b"key=x"), "missing"),
        (txt(b"txtvers=1", b"key=x"), "missing"),
        (good()[:-3], "truncated"),
        (b"\x05ab", "truncated"),
        (txt(b"txtvers=2", b"dtp=1", b"key=x"), "version"),
        (txt(b"txtvers=01", b"dtp=1", b"key=x"), "value"),
        (txt(b"txtvers=1", b"dtp=0", b"key=" + b"A" * 43), "value"),
        (txt(b"txtvers=1", b"dtp=+1", b"key=" + b"A" * 43), "value"),
        (txt(b"txtvers=1", b"dtp=1", b"key=" + b"A" * 42), "key"),
        (txt(b"txtvers=1", b"dtp=1", b"key=" + b"A" * 43 + b"="), "key"),
        (txt(b"txtvers=1", b"dtp=1", b"key=" + b"A" * 42 + b"B"), "key"),  # (not canonical)
        (txt(b"txtvers=1", b"dtp=1", b"key=" + b"+" * 43), "key"),
        (txt(b"txtvers=1", b"dtp=1", b"key"), "value"),
        (good(b"host=0x12"), "value"),
        (good(b"host=0x" + b"AB" * 32), "value"),
        (good(b"port=65536"), "value"),
        (good(b"port=" + b"9" * 40), "value"),
        (good(b"graph=notes"), "value"),  # (no sync version)
        (good(b"sync=1"), "value"),  # (no namespace)
        (good(b"graph=", b"sync=1"), "value"),
        (good(b"graph=a\x00b", b"sync=1"), "value"),
        (good(b"graph=" + b"x" * 64, b"sync=1"), "value"),
        (good(b"svc=\xc3"), "value"),
        (good(b"svc=\xed\xa0\x80"), "value"),  # (a lone surrogate is not UTF-8)
        (good(b"x=" + b"y" * 250) * 6, "size"),
    ],
)
def test_malformed_records_are_refused_with_their_reason(data: bytes, reason: str) -> None:
    error = refused(data)
    assert error.reason == reason
    assert str(error).startswith("TXT record")
    assert isinstance(error, RemoteProtocolError)  # (the peer sent it)


def test_the_size_cap_is_the_records_not_a_strings() -> None:
    assert len(good(*(b"x=" + b"y" * 200 for _ in range(6)))) <= MAX_TXT
    assert decode_txt(good(*(b"x=" + b"y" * 200 for _ in range(6)))) == LanRecord(KEY)


@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_lan_record_error(data: bytes) -> None:
    try:
        record = decode_txt(data)
    except LanRecordError:
        return
    assert decode_txt(encode_txt(record)) == record


@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"txtvers=1", b"dtp=1", b"sync=1", b"graph=g", b"port=1"]),
            st.binary(max_size=60),
        ),
        max_size=10,
    )
)
def test_records_near_good_ones_decode_or_raise_lan_record_error(entries: list[bytes]) -> None:
    key = b"key=" + base64.urlsafe_b64encode(KEY).rstrip(b"=")
    with contextlib.suppress(LanRecordError):
        decode_txt(txt(key, *entries))


def test_what_a_record_cannot_hold_is_refused_when_it_is_made() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LanRecord(b"short")
    with pytest.raises(ValueError, match="graph_sync"):
        LanRecord(KEY, graph="notes")
    with pytest.raises(ValueError, match="with graph"):
        LanRecord(KEY, graph_sync=1)
    with pytest.raises(ValueError, match="port"):
        LanRecord(KEY, port=70000)
    with pytest.raises(TypeError, match="port"):
        LanRecord(KEY, port=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service"):
        LanRecord(KEY, service="tab\there")
    with pytest.raises(ValueError, match="service"):
        LanRecord(KEY, service="x" * 64)
    with pytest.raises(DTPError):  # (InvalidObjectId)
        LanRecord(KEY, host_id="alice")


def test_instance_names() -> None:
    assert instance_name(KEY, 7000) == f"dtp-0001020304050607-7000.{SERVICE_TYPE}"
    assert instance_name(KEY, 7000, "notes on laptop") == f"notes on laptop.{SERVICE_TYPE}"
    with pytest.raises(ValueError, match="dot"):
        instance_name(KEY, 7000, "a.b")


# -- the peer table -------------------------------------------------------------------


def name(i: int) -> str:
    return f"peer{i}.{SERVICE_TYPE}"


def test_the_table_reports_found_updated_and_lost() -> None:
    table = PeerTable()
    found = table.resolved(name(1), good(), 7000, ["10.0.0.1"])
    assert isinstance(found, LanEvent) and found.kind == "found"
    assert found.peer.key == KEY
    assert found.peer.endpoints == (("10.0.0.1", 7000),)
    assert table.resolved(name(1), good(), 7000, ["10.0.0.1"]) is None  # (nothing new)
    updated = table.resolved(name(1), good(b"graph=g", b"sync=1"), 7000, ["10.0.0.1"])
    assert updated is not None and updated.kind == "updated" and updated.peer.graph == "g"
    lost = table.removed(name(1))
    assert lost is not None and lost.kind == "lost"
    assert table.removed(name(1)) is None
    assert table.refused == 0


def test_bad_records_are_counted_logged_once_and_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = PeerTable()
    with caplog.at_level(logging.WARNING, logger="dtp.discovery"):
        for _ in range(3):
            assert table.resolved(name(1), b"\x05junk", 7000, ["10.0.0.1"]) is None
        assert table.resolved(name(2), txt(b"txtvers=9"), 7000, ["10.0.0.1"]) is None
    assert table.refused == 4
    assert table.refused_by_reason == {"truncated": 3, "version": 1}
    assert not table.peers
    logged = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(logged) == 2  # (once per instance: a flood of one bad record is one line)


def test_a_peer_whose_record_turns_bad_is_lost() -> None:
    table = PeerTable()
    assert table.resolved(name(1), good(), 7000, ["10.0.0.1"]) is not None
    event = table.resolved(name(1), good(b"port=x"), 7000, ["10.0.0.1"])
    assert event is not None and event.kind == "lost"
    assert table.refused_by_reason == {"value": 1}


def test_addresses_that_cannot_be_connected_to_are_left_out() -> None:
    table = PeerTable()
    event = table.resolved(
        name(1),
        good(),
        7000,
        ["224.0.0.251", "0.0.0.0", "junk", "10.0.0.2", "10.0.0.2", "fe80::1%2"],
    )
    assert event is not None
    assert event.peer.endpoints == (("10.0.0.2", 7000), ("fe80::1%2", 7000))
    assert table.resolved(name(2), good(), 7000, ["224.0.0.251"]) is None
    assert table.refused_by_reason == {"address": 1}


def test_the_filter_keeps_what_is_browsed_for() -> None:
    graph = good(b"graph=notes", b"sync=1")
    other = good(b"graph=votes", b"sync=1")
    table = PeerTable(PeerFilter(graph="notes"))
    assert table.resolved(name(1), graph, 1, ["10.0.0.1"]) is not None
    assert table.resolved(name(2), other, 1, ["10.0.0.1"]) is None
    assert table.resolved(name(3), good(), 1, ["10.0.0.1"]) is None
    # a peer that moves to another namespace is lost to this browser
    event = table.resolved(name(1), other, 1, ["10.0.0.1"])
    assert event is not None and event.kind == "lost"
    assert table.refused == 0  # (not ours to look for is no refusal)

    any_graph = PeerTable(PeerFilter(graph=True))
    assert any_graph.resolved(name(1), other, 1, ["10.0.0.1"]) is not None
    assert any_graph.resolved(name(2), good(), 1, ["10.0.0.1"]) is None

    by_host = PeerTable(PeerFilter(host_id="0xAB"))
    short = "0x" + "0" * 62 + "ab"
    assert by_host.resolved(name(1), good(b"host=" + short.encode()), 1, ["10.0.0.1"])
    assert by_host.resolved(name(2), good(b"host=" + HOST.encode()), 1, ["10.0.0.1"]) is None


def test_the_table_holds_at_most_max_peers() -> None:
    table = PeerTable(max_peers=2)
    assert table.resolved(name(1), good(), 1, ["10.0.0.1"]) is not None
    assert table.resolved(name(2), good(), 1, ["10.0.0.1"]) is not None
    assert table.resolved(name(3), good(), 1, ["10.0.0.1"]) is None
    assert table.refused_by_reason == {"full": 1}
    # a known peer still updates, and a lost one makes room
    assert table.resolved(name(1), good(b"svc=x"), 1, ["10.0.0.1"]) is not None
    assert table.removed(name(2)) is not None
    assert table.resolved(name(3), good(), 1, ["10.0.0.1"]) is not None


def test_filters_refuse_what_is_not_a_filter() -> None:
    with pytest.raises(ValueError, match="graph=False"):
        PeerFilter(graph=False)
    with pytest.raises(TypeError):
        PeerFilter(service=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        PeerFilter(key=b"x")


def test_a_host_claim_is_checked_on_the_ledger(tmp_path: Path) -> None:
    server = HostIdentity.generate()
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        host_id = ledger.create_host(server, server.noise_public, [])
        record = LanRecord(server.noise_public, host_id=host_id)
        peer = LanPeer("p", record, (("10.0.0.1", 1),))
        assert peer.verify_host(ledger).id == host_id
        # the claim of a key that is not the Host's
        impostor = LanPeer("q", LanRecord(KEY, host_id=host_id), (("10.0.0.1", 1),))
        with pytest.raises(LanDiscoveryError, match="whose key is another"):
            impostor.verify_host(ledger)
        with pytest.raises(LanDiscoveryError, match="claims no Host"):
            LanPeer("r", LanRecord(KEY), (("10.0.0.1", 1),)).verify_host(ledger)
        with pytest.raises(ObjectNotFound):
            LanPeer("s", LanRecord(KEY, host_id=HOST), (("10.0.0.1", 1),)).verify_host(ledger)
    finally:
        ledger.close()
