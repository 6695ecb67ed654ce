"""Membership messages on the wire (docs/messaging.md §6.2, "Wire"): versions 1 and 2 as
encoded and checked, members of both versions in one group (a member of version 2 sends
a member of version 1 nothing it refuses), and the piggyback budget of every message."""

from __future__ import annotations

import random
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.messaging import errors as E
from dtp.messaging._membership import (
    Member,
    Membership,
    MemberState,
    Outgoing,
    Seed,
)
from dtp.messaging._membership_wire import (
    NACK,
    NOTICE,
    PING,
    SYNC,
    SYNC_REPLY,
    VERSION,
    decode_message,
    encode_message,
    pack_record,
)
from tests.messaging.membership_sim import Cluster, member
from tests.messaging.test_membership_engine import ANY, CONFIG, QUICK, T, message

V1 = replace(CONFIG, wire_version=1)


def fields(m: Member, version: int, accuser: str | None = None) -> list[object]:
    return [m.id, m.host, m.port, m.key, m.incarnation, int(m.state)] + (
        [accuser] if version >= 2 else []
    )


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("count", [0, 1, 15, 16, 300])
def test_a_message_is_the_msgpack_of_its_six_fields(version: int, count: int) -> None:
    records = [replace(member(i), state=MemberState(i % 4), incarnation=i) for i in range(count)]
    accusers = [
        f"m{i + 1}" if m.state is MemberState.SUSPECT else None for i, m in enumerate(records)
    ]
    frame = encode_message(
        version,
        SYNC,
        member(7),
        12,
        None,
        [pack_record(m, a, version) for m, a in zip(records, accusers, strict=True)],
    )
    whole = [
        version,
        SYNC,
        fields(member(7), version),
        12,
        None,
        [fields(m, version, a) for m, a in zip(records, accusers, strict=True)],
    ]
    assert frame == len(frame[4:]).to_bytes(4, "big") + msgpack.packb(whole)
    decoded = decode_message(frame[4:])
    assert decoded.version == version and decoded.sender == member(7)
    want = accusers if version >= 2 else [None] * count
    assert decoded.records == list(zip(records, want, strict=True))


@pytest.mark.parametrize(
    ("version", "kind", "target", "speaks"),
    [
        (2, PING, "m0", 2),
        (1, PING, "m0", None),  # (a ping's target is the recipient: it tells nothing)
        (1, SYNC, "2", 2),
        (1, SYNC, None, 1),  # a member of version 1
        (1, NOTICE, "3", 3),  # a later version, spoken to us as 1
        (1, SYNC_REPLY, "x", 1),
    ],
)
def test_a_message_tells_which_versions_its_sender_speaks(
    version: int, kind: int, target: str | None, speaks: int | None
) -> None:
    data = message(kind, member(1), 0, target, [], version)
    assert decode_message(data).speaks == speaks


def test_each_version_refuses_what_it_does_not_speak_with_a_clear_error() -> None:
    v2_ping = message(PING, member(1), 3, "m0", [], 2)
    with pytest.raises(E.MalformedMessage, match="version 2 is not spoken here"):
        decode_message(v2_ping, speaks=1)
    v3 = msgpack.packb([3, PING, fields(member(1), 2), 3, "m0", []])
    with pytest.raises(E.MalformedMessage, match="version 3 is not spoken here"):
        decode_message(v3)
    nack_as_v1 = message(NACK, member(1), 3, "m2", [], 1)
    with pytest.raises(E.MalformedMessage, match="not a membership message"):
        decode_message(nack_as_v1)
    accused_alive = msgpack.packb(
        [2, NOTICE, fields(member(1), 2), 0, None, [fields(member(2), 2, "m1")]]
    )
    with pytest.raises(E.MalformedMessage, match="only a suspect record names an accuser"):
        decode_message(accused_alive)


@st.composite
def near_v2_messages(draw: st.DrawFn) -> bytes:
    """A well-formed version-2 message with one field, or one field of one record, replaced."""
    sender = fields(member(1), 2)
    record = [*fields(replace(member(2), incarnation=3, state=MemberState.SUSPECT), 2, "m1")]
    body: list[object] = [2, draw(st.integers(1, 7)), sender, 7, "m0", [record]]
    where = draw(st.sampled_from(["top", "sender", "record"]))
    if where == "top":
        body[draw(st.integers(0, 5))] = draw(ANY)
    elif where == "sender":
        sender[draw(st.integers(0, 6))] = draw(ANY)
    else:
        record[draw(st.integers(0, 6))] = draw(ANY)
    if draw(st.booleans()):
        body.append(draw(ANY))
    return bytes(msgpack.packb(body))


@settings(max_examples=300)
@given(data=near_v2_messages(), speaks=st.sampled_from([1, 2]))
def test_any_input_of_either_version_is_taken_or_refused_as_malformed(
    data: bytes, speaks: int
) -> None:
    me = Membership(member(0), 0.0, config=replace(CONFIG, wire_version=speaks))
    before = me.all_members()
    try:
        me.receive(data, 1.0)
    except E.MalformedMessage:
        assert me.all_members() == before and me.refused == 1


def bodies(out: list[Outgoing]) -> list[list[object]]:
    return [msgpack.unpackb(o.data[4:]) for o in out]


def test_a_member_of_version_2_speaks_1_until_it_hears_2() -> None:
    b = Membership(member(1), 0.0, config=CONFIG, rng=random.Random(1))
    a = Membership(
        member(0), 0.0, config=CONFIG, rng=random.Random(0), seeds=[Seed("127.0.0.1", 10_001)]
    )
    (out,) = a.messages_to_send()
    join = msgpack.unpackb(out.data[4:])
    assert join[:2] == [1, SYNC] and join[4] == "2"  # version 1, saying it speaks 2
    b.receive(out.data[4:], 0.1)
    (out,) = b.messages_to_send()
    assert msgpack.unpackb(out.data[4:])[:2] == [2, SYNC_REPLY]
    a.receive(out.data[4:], 0.2)
    a.handle_timer(T)
    assert all(body[0] == 2 for body in bodies(a.messages_to_send()))


@settings(max_examples=40)
@given(
    n=st.integers(3, 8),
    seed=st.integers(0, 2**32),
    old=st.sets(st.integers(0, 7), max_size=8),
    crash=st.floats(15, 25),
)
def test_members_of_both_versions_form_one_group(
    n: int, seed: int, old: set[int], crash: float
) -> None:
    """Members of version 1 among members of version 2: no loss means no suspicion, a
    crash is seen by every member within the detection bound, and a member of version 1
    never gets a message it refuses."""
    olds = {f"m{i}" for i in old if i < n}
    cluster = Cluster(
        n, CONFIG, seed=seed, latency=QUICK, configs={i: V1 for i in olds}, start_spread=2.0
    )
    versions: dict[str, set[int]] = {i: set() for i in cluster.engines}

    def tap(sender: str, out: Outgoing) -> None:
        to = out.to or "m0"
        versions[to].add(out.data[5])  # (the version: a positive fixint after the array)

    cluster.tap = tap
    cluster.run_until(crash)
    assert all(e.kind == "joined" for events in cluster.events.values() for e in events)
    victim = f"m{seed % n}"
    cluster.crash(victim)
    cluster.run_until(crash + CONFIG.detection_bound(n))
    for i in cluster.engines:
        if i != victim:
            dead = cluster.dead_at(i, victim)
            assert dead is not None and dead <= crash + CONFIG.detection_bound(n)
    assert all(cluster.engines[i].refused == 0 for i in cluster.engines)
    assert all(versions[i] <= {1} for i in olds)
    # two members of version 2 speak it to each other once they met
    new = sorted(set(cluster.engines) - olds - {victim})
    for a in new:
        for b in new:
            if a != b:
                assert cluster.engines[a]._table[b].version == VERSION


@pytest.mark.parametrize("budget", [CONFIG.max_piggyback_bytes, 150])
def test_every_message_keeps_to_the_piggyback_budget(budget: int) -> None:
    """Forty members joining at once: a lot to gossip, never more per message than
    max_piggyback records of max_piggyback_bytes in all (one record goes whatever its
    size); syncs carry the whole table, as they are meant to."""
    config = replace(CONFIG, max_piggyback_bytes=budget)
    checked = 0

    def tap(sender: str, out: Outgoing) -> None:
        nonlocal checked
        body = msgpack.unpackb(out.data[4:])
        if body[1] in (SYNC, SYNC_REPLY):
            return
        packed = [len(msgpack.packb(r)) for r in body[5]]
        assert len(packed) <= config.max_piggyback
        assert sum(packed) <= budget or len(packed) == 1
        checked += bool(packed)

    cluster = Cluster(40, config, seed=4, latency=QUICK, start_spread=1.0)
    cluster.tap = tap
    cluster.run_until(60)
    assert checked > 500
    assert all(cluster.live_ids(i) == set(cluster.engines) for i in cluster.engines)
