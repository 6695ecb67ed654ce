"""dtp.testing.strategies hold what they promise: each strategy's values are accepted (or
refused, with the error named) by the code that takes them -- the address parser, the
ledger's claim rule, the frame decoder and record parser of the core backend under test,
the graph's value codec and merge."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtp.errors import ChainError, RemoteProtocolError
from dtp.graph import Graph
from dtp.graph.values import decode_value, encode_value, is_gun_value
from dtp.hostid._address import HostAddress, InvalidAddress
from dtp.identity.keys import HostIdentity
from dtp.ledger.receipt import Receipt, fee
from dtp.native.core import decode_frames, decode_ham_batch, encode_frames, parse_records
from dtp.native.types import FRAME_PADDING, OK, RawFrame
from dtp.testing import strategies as dst
from dtp.testing.ledger_world import LedgerWorld

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(dst.identities())
def test_identities_sign_and_name_a_sui_address(who: HostIdentity) -> None:
    assert who.sui_address.startswith("0x") and len(who.sui_address) == 66
    assert Receipt  # (the signature check below is the ledger's own)
    from dtp.identity._ed25519 import verify_memoized

    assert verify_memoized(who.ed25519_public, who.sign(b"m"), b"m")


@given(dst.dtp_address_texts())
def test_address_texts_parse_to_their_address(case: tuple[str, HostAddress]) -> None:
    text, address = case
    assert HostAddress.parse(text) == address
    assert HostAddress.parse(str(address)) == address


@given(dst.invalid_dtp_address_texts())
def test_invalid_address_texts_are_refused(text: str) -> None:
    with pytest.raises(InvalidAddress):
        HostAddress.parse(text)


@given(dst.object_ids(short=True))
def test_short_object_ids_name_a_normal_one(object_id: str) -> None:
    from dtp.ledger._objects import normalize_id

    normal = normalize_id(object_id)
    assert len(normal) == 66 and normal == normal.lower()


@FEW
@given(data=st.data(), deposit=st.integers(100, 50_000))
def test_valid_receipts_are_claimed(data: st.DataObject, deposit: int) -> None:
    world = LedgerWorld(clients=1)
    channel = world.open(0, deposit)
    for _ in range(data.draw(st.integers(1, 3))):
        receipt = data.draw(dst.valid_receipts(channel.terms))
        before = channel.terms.claimed
        channel.signed.append(receipt)
        assert world.claim(channel, receipt) == receipt.total_amount - before
    world.check()


@FEW
@given(data=st.data(), deposit=st.integers(100, 50_000), claims=st.integers(0, 2))
def test_flawed_receipts_fail_with_their_error_and_change_nothing(
    data: st.DataObject, deposit: int, claims: int
) -> None:
    world = LedgerWorld(clients=1)
    channel = world.open(0, deposit)
    for _ in range(claims):
        receipt = data.draw(dst.valid_receipts(channel.terms))
        channel.signed.append(receipt)
        world.claim(channel, receipt)
    flawed = data.draw(dst.flawed_receipts(channel.terms))
    before = world.ledger.dump()
    with pytest.raises(ChainError) as caught:
        world.ledger.claim(world.server, channel.escrow_id, flawed.receipt)
    assert caught.value.name == flawed.flaw.error, flawed
    assert world.ledger.dump() == before


def test_every_flaw_is_possible_after_a_claim() -> None:
    world = LedgerWorld(clients=1)
    channel = world.open(0, 1_000)
    world.claim(channel, world.sign(channel, 2048, 1))
    assert set(dst.possible_flaws(channel.terms)) == {
        f
        for f in dst.Flaw
        if dst.SCOPED_RECEIPTS or f not in (dst.Flaw.OTHER_ESCROW, dst.Flaw.OTHER_PACKAGE)
    }


@given(dst.slas(), st.data())
def test_usages_fit_the_deposit(sla: object, data: st.DataObject) -> None:
    deposit = data.draw(st.integers(0, 10**9))
    b, r = data.draw(dst.usages(sla, deposit))  # type: ignore[arg-type]
    assert fee(sla, b, r) <= deposit  # type: ignore[arg-type]


@given(st.lists(dst.frames(padding=False), min_size=1, max_size=6))
def test_frames_encode_and_decode_back(frames: list[RawFrame]) -> None:
    body = encode_frames(frames)
    batch = decode_frames(body, True)
    assert batch.status == OK and list(batch) == frames


@given(dst.frames(types=[FRAME_PADDING]))
def test_padding_frames_encode(frame: RawFrame) -> None:
    assert encode_frames([frame]) == bytes(frame.a)


@given(dst.frame_bodies())
def test_frame_bodies_are_whole_plaintexts(body: bytes) -> None:
    assert 0 < len(body) <= 16384
    assert decode_frames(body, True).status == OK


@given(dst.hostile_frame_bodies())
def test_hostile_bodies_are_refused_with_their_code(case: dst.HostileBody) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_frames(case.body, True)
    assert caught.value.code == case.error


@given(st.lists(dst.records(), min_size=1, max_size=4))
def test_records_are_framed(records: list[bytes]) -> None:
    batch = parse_records(b"".join(records))
    assert batch.status == OK and len(batch.records) == len(records)


@given(dst.hostile_records())
def test_hostile_records_are_refused_by_their_header(case: dst.HostileRecord) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_records(case.data[:12])
    assert caught.value.code == case.error


@given(dst.gun_values())
def test_gun_values_are_what_gun_holds(value: object) -> None:
    text = encode_value(value)
    assert is_gun_value(text)
    back = decode_value(text)
    if isinstance(value, float) and not math.isfinite(value):
        pytest.fail("no infinities")
    assert back == value or (isinstance(value, float) and value == 0.0 and back == 0)


@FEW
@given(dst.souls(), dst.node_fields())
def test_node_fields_are_put(soul: str, fields: dict[str, object]) -> None:
    graph = Graph()
    try:
        graph.put(soul, fields)
        assert set(graph.get(soul)) >= set(fields)
    finally:
        graph.close()


T0 = 1_000_000.0


@FEW
@given(dst.update_streams(now_ms=T0, max_drift_ms=0), st.randoms(use_true_random=False))
def test_update_streams_converge_in_any_order(stream: list[object], rnd: object) -> None:
    clock = [T0]
    graphs = [Graph(now_ms=lambda: clock[0], max_drift_ms=0) for _ in range(2)]
    try:
        mine = list(stream)
        rnd.shuffle(mine)  # type: ignore[attr-defined]
        from dtp.native.core import encode_ham_batch

        graphs[0].merge(encode_ham_batch(stream))
        graphs[1].merge(encode_ham_batch(mine))
        assert graphs[0].snapshot() == graphs[1].snapshot()
        clock[0] = T0 + 2e9
        for g in graphs:
            g.advance()
        assert graphs[0].snapshot() == graphs[1].snapshot()
        assert decode_ham_batch(encode_ham_batch(stream)) == stream
    finally:
        for g in graphs:
            g.close()


@FEW
@given(dst.ledger_operations())
def test_any_ledger_history_keeps_the_rules(ops: list[dst.Operation]) -> None:
    world = LedgerWorld()
    steps = dst.run_operations(world, ops)
    assert len(steps) == len(ops)
