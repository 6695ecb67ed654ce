"""The membership engine's rules on a virtual clock (docs/messaging.md §6.2): no death
without a real loss longer than the suspicion allows, every member's verdict on a crashed
one within the detection bound, agreement again after partitions and loss, refutation
by incarnation, and input that is refused without changing the view."""

from __future__ import annotations

import itertools
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.messaging import errors as E
from dtp.messaging._framing import encode_frame
from dtp.messaging._membership import Member, Membership, MembershipConfig, MemberState, Outgoing
from dtp.messaging._membership_wire import ACK, NOTICE, PING, PING_REQ
from tests.messaging.membership_sim import Cluster, member

T = 1.0
CONFIG = MembershipConfig(
    probe_interval=T, probe_timeout=0.4, suspicion_timeout=5.0, sync_interval=5.0
)
#: Latencies stay well under the probe timeout: no loss means no suspicion.
QUICK = lambda r: r.uniform(0.001, 0.05)  # noqa: E731


def converged(cluster: Cluster, ids: set[str]) -> bool:
    return all(
        {m.id for m in cluster.engines[i].all_members() if m.state is MemberState.ALIVE} == ids
        for i in ids
    )


@settings(max_examples=100)
@given(n=st.integers(2, 8), seed=st.integers(0, 2**32))
def test_without_loss_nobody_is_ever_suspected(n: int, seed: int) -> None:
    cluster = Cluster(n, CONFIG, seed=seed, latency=QUICK, start_spread=2.0)
    cluster.run_until(40)
    ids = set(cluster.engines)
    assert converged(cluster, ids)
    for events in cluster.events.values():
        assert {e.kind for e in events} <= {"joined"}


@settings(max_examples=100)
@given(
    n=st.integers(3, 8),
    seed=st.integers(0, 2**32),
    start=st.floats(10, 20),
    # an outage of everything to and from one member, up to S_min - T - a round trip
    # long (docs/messaging.md §6.2, the failure model: every other member's probe of it
    # may fail, each confirming the suspicion): QUICK's round trip is under 0.1 s
    length=st.floats(0.1, CONFIG.suspicion_bounds()[0] - T - 0.11),
)
def test_an_outage_shorter_than_the_suspicion_allows_never_kills(
    n: int, seed: int, start: float, length: float
) -> None:
    cluster = Cluster(n, CONFIG, seed=seed, latency=QUICK)
    victim = f"m{seed % n}"
    cluster.drop = lambda a, b, now: victim in (a, b) and start <= now < start + length
    cluster.run_until(start + length + 30)
    for events in cluster.events.values():
        assert not [e for e in events if e.kind == "dead"], events
    assert converged(cluster, set(cluster.engines))


@settings(max_examples=100)
@given(
    n=st.integers(2, 9),
    seed=st.integers(0, 2**32),
    crash=st.floats(15, 25),
    # any latency whose round trip fits the probe timeout (no false suspicion)
    latency=st.floats(0.001, CONFIG.probe_timeout / 2 - 0.01),
)
def test_every_member_marks_a_crashed_one_dead_within_the_bound(
    n: int, seed: int, crash: float, latency: float
) -> None:
    cluster = Cluster(n, CONFIG, seed=seed, latency=lambda r: r.uniform(0.001, latency))
    cluster.run_until(crash)
    assert converged(cluster, set(cluster.engines))
    victim = f"m{seed % n}"
    cluster.crash(victim)
    bound = CONFIG.detection_bound(n)
    cluster.run_until(crash + bound)
    for observer in cluster.engines:
        if observer != victim:
            at = cluster.dead_at(observer, victim)
            assert at is not None and at <= crash + bound, (observer, at, crash + bound)


@settings(max_examples=60)
@given(
    n=st.integers(4, 8),
    seed=st.integers(0, 2**32),
    cut=st.integers(1, 3),
    length=st.floats(0, 40),
    loss=st.floats(0, 0.3),
)
def test_after_partitions_and_loss_the_members_agree_again(
    n: int, seed: int, cut: int, length: float, loss: float
) -> None:
    cluster = Cluster(n, CONFIG, seed=seed, latency=QUICK)
    cluster.run_until(10)
    side = {f"m{i}" for i in range(cut)}
    chaos = random.Random(seed)

    def drop(a: str, b: str, now: float) -> bool:
        if 10 <= now < 10 + length:
            return (a in side) != (b in side) or chaos.random() < loss
        return False

    cluster.drop = drop
    cluster.run_until(10 + length + 90)
    assert converged(cluster, set(cluster.engines))


# -- the rules, one message at a time ------------------------------------------------------


def answer(me: Membership, now: float, silent: set[str], version: int = 1) -> list[Outgoing]:
    """Fire ``me``'s timers due at ``now`` and answer its pings as the others would (in
    wire ``version``), but for the ``silent`` ones; what it sent."""
    if (timer := me.get_timer()) is not None and timer <= now:
        me.handle_timer(now)
    out = me.messages_to_send()
    for o in out:
        body = msgpack.unpackb(o.data[4:])
        if o.to is None or o.to in silent:
            continue
        if body[1] == PING:
            me.receive(message(ACK, member(int(o.to[1:])), body[3], None, [], version), now)
    return out


def engine(i: int = 0, **kw: object) -> Membership:
    return Membership(member(i), 0.0, config=CONFIG, rng=random.Random(i), **kw)  # type: ignore[arg-type]


def message(
    kind: int,
    sender: Member,
    seq: int,
    target: str | None,
    records: list[Member],
    version: int = 1,
    accuser: str | None = None,
) -> bytes:
    """A message as a member of wire ``version`` sends it (its suspect records accused by
    ``accuser``, in version 2)."""
    extra = [None] if version >= 2 else []

    def accused(m: Member) -> list[object]:
        return [accuser] if version >= 2 and m.state is MemberState.SUSPECT else extra

    wire = [
        [m.id, m.host, m.port, m.key, m.incarnation, int(m.state), *accused(m)] for m in records
    ]
    body = [
        version,
        kind,
        [
            sender.id,
            sender.host,
            sender.port,
            sender.key,
            sender.incarnation,
            int(sender.state),
            *extra,
        ],
        seq,
        target,
        wire,
    ]
    return encode_frame(body)[4:]


def with_state(m: Member, state: MemberState, incarnation: int | None = None) -> Member:
    from dataclasses import replace

    return replace(
        m, state=state, incarnation=m.incarnation if incarnation is None else incarnation
    )


def test_a_member_told_it_is_suspect_refutes_with_a_higher_incarnation() -> None:
    me = engine(0)
    other = member(1)
    suspicion = with_state(member(0), MemberState.SUSPECT, 0)
    me.receive(message(PING, other, 7, "m0", [suspicion]), 1.0, peer_key=other.key)
    assert me.me.incarnation == 1 and me.me.state is MemberState.ALIVE
    (ack,) = [o for o in me.messages_to_send() if o.to == "m1"]
    body = msgpack.unpackb(ack.data[4:])
    assert body[1] == ACK and body[3] == 7 and body[2][4] == 1  # the refutation rides along


@pytest.mark.parametrize(
    ("held", "heard", "wins"),
    [
        ((0, MemberState.ALIVE), (0, MemberState.SUSPECT), True),
        ((0, MemberState.SUSPECT), (0, MemberState.ALIVE), False),
        ((0, MemberState.SUSPECT), (1, MemberState.ALIVE), True),
        ((1, MemberState.ALIVE), (0, MemberState.DEAD), False),
        ((0, MemberState.DEAD), (0, MemberState.ALIVE), False),
        ((0, MemberState.DEAD), (1, MemberState.ALIVE), True),
        ((2, MemberState.DEAD), (2, MemberState.LEFT), True),
        ((2, MemberState.LEFT), (2, MemberState.DEAD), False),
    ],
)
def test_a_record_wins_by_incarnation_then_state(
    held: tuple[int, MemberState], heard: tuple[int, MemberState], wins: bool
) -> None:
    me = engine(0)
    sender = member(2)
    me.receive(message(NOTICE, sender, 0, None, [with_state(member(1), held[1], held[0])]), 1.0)
    me.receive(message(NOTICE, sender, 0, None, [with_state(member(1), heard[1], heard[0])]), 2.0)
    got = me.member("m1")
    assert got is not None
    assert (got.incarnation, got.state) == (heard if wins else held)


def test_only_the_member_whose_probe_failed_gives_the_verdict() -> None:
    me = engine(0)
    other, gossip = member(1), member(2)
    me.receive(message(NOTICE, other, 0, None, []), 0.0)
    # m2 says m1 is suspect: held so, but no verdict of ours follows
    me.receive(message(NOTICE, gossip, 0, None, [with_state(member(1), MemberState.SUSPECT)]), 0.5)
    for step in range(1, 200):
        now = step * 0.1
        if (timer := me.get_timer()) is not None and timer <= now:
            me.handle_timer(now)
        for out in me.messages_to_send():
            if out.to == "m2":  # m2 answers; m1 is silent
                kind, seq = msgpack.unpackb(out.data[4:])[1], msgpack.unpackb(out.data[4:])[3]
                if kind == PING:
                    me.receive(message(ACK, gossip, seq, None, []), now)
        if me.member("m1").state is MemberState.DEAD:  # type: ignore[union-attr]
            break
    events = []
    while (e := me.next_event()) is not None:
        events.append(e)
    dead = [e for e in events if e.kind == "dead"]
    # the verdict came from our own failed probe (the first one ends at 2 T), S after
    # it: never from the gossip heard at 0.5
    assert len(dead) == 1 and dead[0].at >= 2 * T + CONFIG.suspicion_timeout


def test_an_accused_member_is_pinged_every_period_with_the_suspicion_first() -> None:
    me = engine(0)
    for i in (1, 2, 3):
        me.receive(message(NOTICE, member(i), 0, None, []), 0.0)
    me.messages_to_send()
    # m0's own probes: m2 and m3 answer, m1 is silent, until m0 accuses m1
    now = 0.0
    while me.member("m1").state is MemberState.ALIVE:  # type: ignore[union-attr]
        now = round(now + 0.1, 1)
        answer(me, now, silent={"m1"})
    assert me.accusers("m1") == {"m0"}
    accused, pinged = now, [now]
    while me.member("m1").state is MemberState.SUSPECT:  # type: ignore[union-attr]
        now = round(now + 0.1, 1)
        for o in answer(me, now, silent={"m1"}):
            body = msgpack.unpackb(o.data[4:])
            if o.to == "m1" and body[1] == PING:
                assert body[5][0][0] == "m1" and body[5][0][5] == MemberState.SUSPECT
                pinged.append(now)
    assert now >= accused + CONFIG.suspicion_bounds()[0]  # (dead at last)
    # a period of T, or 2 T the one after its failed probe (its health: helpers of
    # version 1, no NACK to clear it)
    gaps = [b - a for a, b in itertools.pairwise(pinged)]
    assert len(pinged) >= 3 and max(gaps) <= 2 * T + 1e-9, pinged


def test_a_suspicion_heard_by_gossip_sends_no_extra_pings() -> None:
    """Only an accuser pings its suspect every period: a member that heard of a
    suspicion pings the suspect only when its round robin comes to it (in a group of a
    thousand, a suspect would otherwise get a thousand pings a period)."""
    me = engine(0)
    for i in range(1, 9):
        me.receive(message(NOTICE, member(i), 0, None, []), 0.0)
    me.receive(
        message(NOTICE, member(2), 0, None, [with_state(member(1), MemberState.SUSPECT)]), 0.0
    )
    me.messages_to_send()
    pinged = 0
    for period in range(1, 8):  # one round of the eight others
        me.handle_timer(period * T)
        out = me.messages_to_send()
        pinged += sum(o.to == "m1" and msgpack.unpackb(o.data[4:])[1] == PING for o in out)
        for o in out:  # everyone answers, m1 too (without refuting: still suspect)
            body = msgpack.unpackb(o.data[4:])
            if body[1] == PING:
                me.receive(message(ACK, member(int(o.to[1:])), body[3], None, []), period * T)
    assert pinged == 1 and me.member("m1").state is MemberState.SUSPECT  # type: ignore[union-attr]


def test_a_sender_whose_key_is_not_the_connections_is_refused() -> None:
    me = engine(0)
    other = member(1)
    with pytest.raises(E.MalformedMessage):
        me.receive(message(PING, other, 1, "m0", []), 1.0, peer_key=b"\x09" * 32)
    assert me.member("m1") is None and me.refused == 1


ANY = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=140)
    | st.binary(max_size=40)
    | st.lists(st.integers(0, 3), max_size=7)
)


@st.composite
def near_messages(draw: st.DrawFn) -> bytes:
    """A well-formed message with one field, or one field of one record, replaced."""
    sender = [*[member(1).id, "127.0.0.1", 10_001, member(1).key], 0, 0]
    record = ["m2", "127.0.0.1", 10_002, member(2).key, 3, 1]
    body: list = [1, draw(st.integers(1, 6)), sender, 7, "m0", [record]]  # type: ignore[type-arg]
    where = draw(st.sampled_from(["top", "sender", "record"]))
    if where == "top":
        body[draw(st.integers(0, 5))] = draw(ANY)
    elif where == "sender":
        sender[draw(st.integers(0, 5))] = draw(ANY)
    else:
        record[draw(st.integers(0, 5))] = draw(ANY)
    if draw(st.booleans()):
        body.append(draw(ANY))  # one field too many
    return bytes(msgpack.packb(body))


@settings(max_examples=300)
@given(data=st.binary(max_size=200) | near_messages())
def test_any_input_is_taken_or_refused_as_malformed(data: bytes) -> None:
    me = engine(0)
    before = me.all_members()
    try:
        me.receive(data, 1.0)
    except E.MalformedMessage:
        assert me.all_members() == before and me.refused == 1


def test_leave_tells_every_live_member_then_stays_silent() -> None:
    me = engine(0)
    for i in (1, 2, 3):
        me.receive(message(NOTICE, member(i), 0, None, []), 0.0)
    me.messages_to_send()
    me.leave(1.0)
    notices = me.messages_to_send()
    assert sorted(o.to or "" for o in notices) == ["m1", "m2", "m3"]
    assert all(msgpack.unpackb(o.data[4:])[2][5] == MemberState.LEFT for o in notices)
    assert me.get_timer() is None and me.members() == [m for m in me.members() if m.id != "m0"]
    me.receive(message(PING, member(1), 5, "m0", []), 2.0)
    assert me.messages_to_send() == []


def test_the_view_is_bounded() -> None:
    me = Membership(member(0), 0.0, config=MembershipConfig(max_members=3))
    for i in range(1, 6):
        me.receive(message(NOTICE, member(i), 0, None, []), 0.0)
    assert len(me.all_members()) == 3 and me.refused == 3


@pytest.mark.parametrize(
    "kw",
    [
        {"probe_interval": 0},
        {"probe_timeout": 1.5},
        {"suspicion_timeout": float("nan")},
        {"indirect_probes": -1},
        {"max_members": 1},
        {"retransmit_mult": True},
        {"dead_retention": -1},
    ],
)
def test_a_bad_config_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MembershipConfig(**kw)  # type: ignore[arg-type]


def test_a_flood_of_ping_requests_is_bounded() -> None:
    me = engine(0)
    for i in (1, 2):
        me.receive(message(NOTICE, member(i), 0, None, []), 0.0)
    me.messages_to_send()
    for seq in range(1000):
        me.receive(message(PING_REQ, member(1), seq, "m2", []), 0.5)
    pings = [o for o in me.messages_to_send() if o.to == "m2"]
    assert len(pings) == 256
    me.handle_timer(0.5 + T)  # each relay lives one period
    me.receive(message(PING_REQ, member(1), 5000, "m2", []), 1.6)
    assert [o.to for o in me.messages_to_send()].count("m2") >= 1
