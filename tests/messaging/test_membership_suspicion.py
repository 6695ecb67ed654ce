"""Lifeguard's dynamic suspicion in the membership engine, on a virtual clock
(docs/messaging.md §6.2): a verdict's delay starts at suspicion_timeout and shrinks to
suspicion_min as other members accuse the suspect independently, each accuser counted
once, and the confirmations are passed on."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.messaging._membership import Member, Membership, MembershipConfig, MemberState
from dtp.messaging._membership_wire import NOTICE, VERSION, encode_message, pack_record
from tests.messaging.membership_sim import Cluster, member
from tests.messaging.test_membership_engine import answer

T = 1.0
CONFIG = MembershipConfig(probe_interval=T, probe_timeout=0.4, suspicion_timeout=6.0)
LOW, HIGH = CONFIG.suspicion_bounds()


@given(c=st.integers(0, 10), n=st.integers(2, 50))
def test_the_delay_falls_from_the_timeout_to_the_minimum_as_confirmations_come(
    c: int, n: int
) -> None:
    assert (LOW, HIGH) == (3.0, 6.0)  # (suspicion_min: half the timeout by default)
    delay = CONFIG.suspicion_delay(c, n)
    assert LOW <= delay <= HIGH
    assert delay >= CONFIG.suspicion_delay(c + 1, n)  # never longer for more
    k = min(CONFIG.suspicion_confirmations, n - 2)  # (no more can come)
    if k <= 0 or c >= k:
        assert delay == LOW
    else:  # memberlist's curve: log(c + 1) / log(k + 1) of the way down
        assert delay == pytest.approx(HIGH - (HIGH - LOW) * math.log(c + 1) / math.log(k + 1))
    if c == 0 and k > 0:
        assert delay == HIGH


def v2(kind: int, sender: Member, records: list[tuple[Member, str | None]]) -> bytes:
    packed = [pack_record(m, accuser, VERSION) for m, accuser in records]
    return encode_message(VERSION, kind, sender, 0, None, packed)[4:]


def accusing(n: int = 6) -> tuple[Membership, float]:
    """m0 in a group of ``n``, accusing m1 (its own probe of m1 failed); the time."""
    me = Membership(member(0), 0.0, config=CONFIG, rng=random.Random(1))
    for i in range(1, n):
        me.receive(v2(NOTICE, member(i), []), 0.0)
    me.messages_to_send()
    now = 0.0
    while me.member("m1").state is MemberState.ALIVE:  # type: ignore[union-attr]
        now = round(now + 0.1, 1)
        answer(me, now, silent={"m1"}, version=VERSION)
    assert me.accusers("m1") == {"m0"}
    return me, now


def test_a_verdict_comes_sooner_with_each_independent_accuser() -> None:
    me, since = accusing()
    assert me.get_timer() is not None
    suspect = replace(member(1), state=MemberState.SUSPECT)
    deadlines = []
    for i, accuser in enumerate(["m2", "m3", "m3", "m0", "m4", "m5"], start=1):
        # (gossip of m2's accusation, by whoever: the accuser is in the record)
        me.receive(v2(NOTICE, member(2 + i % 3), [(suspect, accuser)]), since + 0.01 * i)
        deadlines.append(me._timed["m1"].deadline)  # type: ignore[union-attr]
    assert me.accusers("m1") == {"m0", "m2", "m3", "m4", "m5"}
    # m3 twice and m0 (itself, gossiped back) count once; three others bring it to the min
    assert deadlines == [
        since + CONFIG.suspicion_delay(1, 6),
        since + CONFIG.suspicion_delay(2, 6),
        since + CONFIG.suspicion_delay(2, 6),
        since + CONFIG.suspicion_delay(2, 6),
        since + LOW,
        since + LOW,
    ]
    now = since
    while me.member("m1").state is MemberState.SUSPECT:  # type: ignore[union-attr]
        now = round(now + 0.1, 1)
        answer(me, now, silent={"m1"})
    assert now == pytest.approx(since + LOW)


def test_an_accusation_heard_but_not_made_gives_no_verdict() -> None:
    """Confirmations shorten the verdicts of accusers only: a member that only heard of a
    suspicion, however many times confirmed, waits for a verdict or its own probe."""
    me = Membership(member(0), 0.0, config=CONFIG, rng=random.Random(1))
    for i in range(1, 6):
        me.receive(v2(NOTICE, member(i), []), 0.0)
    suspect = replace(member(1), state=MemberState.SUSPECT)
    for accuser in ("m2", "m3", "m4", "m5"):
        me.receive(v2(NOTICE, member(2), [(suspect, accuser)]), 0.1)
    assert me.accusers("m1") == {"m2", "m3", "m4", "m5"} and "m1" not in me._timed
    now = 0.1
    while now < 2 * HIGH:  # everyone answers m0's probes, m1 too (without refuting)
        now = round(now + 0.1, 1)
        answer(me, now, silent=set())
    assert me.member("m1").state is MemberState.SUSPECT  # type: ignore[union-attr]
    assert "m1" not in me._timed and "m0" not in me.accusers("m1")


def test_the_first_confirmations_are_passed_on_with_their_accuser() -> None:
    me, since = accusing()
    suspect = replace(member(1), state=MemberState.SUSPECT)
    me.receive(v2(NOTICE, member(2), [(suspect, "m3")]), since + 0.05)
    # the next message m0 sends to a member of version 2 carries m1's suspicion, by m3
    me.handle_timer(me.get_timer())  # type: ignore[arg-type]
    sent = [msgpack.unpackb(o.data[4:]) for o in me.messages_to_send() if o.to != "m1"]
    carried = [r for body in sent for r in body[5] if r[0] == "m1"]
    assert carried and all(r[5] == MemberState.SUSPECT and r[6] == "m3" for r in carried)


def test_in_a_group_a_death_is_confirmed_and_given_sooner_than_the_timeout() -> None:
    """Ten members, one crashes: the others' own probes of it fail in turn, each an
    accuser, and the first verdict comes before suspicion_timeout has passed since the
    first failed probe (with one accuser, it would be that long exactly)."""
    cluster = Cluster(10, CONFIG, seed=11, latency=lambda r: r.uniform(0.001, 0.05))
    cluster.run_until(20)
    cluster.crash("m6")
    cluster.run_until(20 + CONFIG.detection_bound(10))
    suspected = min(
        e.at for events in cluster.events.values() for e in events if e.kind == "suspect"
    )
    first_dead = min(d for i in cluster.engines if i != "m6" and (d := cluster.dead_at(i, "m6")))
    assert suspected + LOW <= first_dead < suspected + HIGH
    everyone = {i: cluster.dead_at(i, "m6") for i in cluster.engines if i != "m6"}
    assert all(at is not None and at <= 20 + CONFIG.detection_bound(10) for at in everyone.values())
