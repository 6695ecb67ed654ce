"""Lifeguard's local health in the membership engine, on a virtual clock
(docs/messaging.md §6.2, "Local health"): a member resumed from a pause accuses nobody,
a member whose probes fail with nobody answering it widens its own timeouts and narrows
them again once answered, and NACKs keep a prober whose target died healthy."""

from __future__ import annotations

import random
from dataclasses import replace

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.messaging._membership import Membership, MembershipConfig, MemberState
from dtp.messaging._membership_wire import ACK, NOTICE, PING
from tests.messaging.membership_sim import Cluster, member
from tests.messaging.test_membership_engine import CONFIG, QUICK, T, answer, message


def accusations(cluster: Cluster, paused: str) -> list[tuple[str, str, str]]:
    """(observer, kind, member) of every suspicion or death of a member other than
    ``paused`` any member saw, and of any member the paused one saw."""
    return [
        (observer, e.kind, e.member.id)
        for observer, events in cluster.events.items()
        for e in events
        if e.kind in ("suspect", "dead") and (observer == paused or e.member.id != paused)
    ]


@settings(max_examples=60)
@given(
    n=st.integers(3, 8),
    seed=st.integers(0, 2**32),
    start=st.floats(10, 20),
    length=st.floats(0.5, 12),
    # a resumed member reads what came meanwhile at this many seconds a message
    drain=st.sampled_from([0.0, 0.005, 0.02]),
)
def test_a_member_resumed_from_a_pause_accuses_nobody(
    n: int, seed: int, start: float, length: float, drain: float
) -> None:
    cluster = Cluster(n, CONFIG, seed=seed, latency=QUICK)
    cluster.run_until(start)
    paused = f"m{seed % n}"
    # (its timers fire as it resumes, before it reads anything: the worst order)
    cluster.pause(paused, start, length)
    cluster.drain = drain
    cluster.run_until(start + length + 40)
    assert accusations(cluster, paused) == []
    engine = cluster.engines[paused]
    # (a pause that holds a period's start is one its timers notice; then it widened
    # its timeouts, and narrowed them again once answered)
    assert engine.pauses >= (length >= T + CONFIG.probe_timeout) and engine.health == 0
    # and the group is whole again: the paused one refuted whatever it was held to be
    assert all(cluster.live_ids(i) == set(cluster.engines) for i in cluster.engines)


def lone_engine(config: MembershipConfig = CONFIG) -> Membership:
    me = Membership(member(0), 0.0, config=config, rng=random.Random(0))
    for i in (1, 2, 3):
        me.receive(message(NOTICE, member(i), 0, None, []), 0.0)
    me.messages_to_send()
    return me


def test_a_probe_in_flight_through_a_pause_starts_over_and_takes_a_late_ack() -> None:
    me = lone_engine()
    me.handle_timer(T)  # the first probe
    (ping,) = [msgpack.unpackb(o.data[4:]) for o in me.messages_to_send()]
    assert ping[1] == PING
    target, seq = ping[4], ping[3]
    # stopped for 3.6 s: its timers fire late, before it reads the ACK waiting for it
    me.handle_timer(T + 3.6)
    assert me.pauses == 1 and me.health == 3  # (a step per period lost, at most 3)
    again = [msgpack.unpackb(o.data[4:]) for o in me.messages_to_send()]
    assert [(p[1], p[4], p[3]) for p in again] == [(PING, target, seq)]  # the same probe
    me.receive(message(ACK, member(int(target[1:])), seq, None, []), T + 3.7)
    end = T + 3.6 + (me.health + 1) * T  # the probe's new period, four times as long
    while (timer := me.get_timer()) is not None and timer <= end:
        me.handle_timer(timer)
    assert me.pauses == 1 and all(m.state is MemberState.ALIVE for m in me.all_members())
    assert me.health == 2  # one step back: the probe was answered


def test_a_verdict_due_during_a_pause_waits_a_period_for_what_came_meanwhile() -> None:
    me = lone_engine()
    now = 0.0
    while me.member("m1").state is MemberState.ALIVE:  # type: ignore[union-attr]
        now = round(now + 0.1, 1)
        answer(me, now, silent={"m1"})
    deadline = me.get_timer()
    suspicion_end = now + CONFIG.suspicion_timeout
    assert deadline is not None and deadline < suspicion_end
    late = suspicion_end + 2.0  # stopped past its verdict's time
    me.handle_timer(late)
    assert me.member("m1").state is MemberState.SUSPECT  # type: ignore[union-attr]
    # m1's refutation was waiting to be read: read now, it keeps m1 alive
    refuted = replace(member(1), incarnation=1)
    me.receive(message(NOTICE, refuted, 0, None, []), late + 0.01)
    me.handle_timer(late + (me.health + 1) * T)
    assert me.member("m1").state is MemberState.ALIVE  # type: ignore[union-attr]


def test_a_confirmation_read_after_a_pause_does_not_bring_the_verdict_back() -> None:
    """Another member's accusation, read from the backlog after a pause, shortens the
    delay of our verdict, but not to before we probed again."""
    me = lone_engine()
    now = 0.0
    while me.member("m1").state is MemberState.ALIVE:  # type: ignore[union-attr]
        now = round(now + 0.1, 1)
        answer(me, now, silent={"m1"})
    late = now + CONFIG.suspicion_timeout + 2.0  # stopped past its verdict's time
    me.handle_timer(late)
    suspect = replace(member(1), state=MemberState.SUSPECT)
    for accuser in ("m2", "m3"):  # (enough to bring the delay to its minimum)
        me.receive(message(NOTICE, member(2), 0, None, [suspect], 2, accuser), late + 0.01)
    assert me.accusers("m1") == {"m0", "m2", "m3"}
    deadline = me._timed["m1"].deadline
    period = (me.health + 1) * T
    assert deadline is not None and deadline >= late + period  # (its next probe first)
    while (timer := me.get_timer()) is not None and timer < late + period:
        me.handle_timer(timer)
    assert me.member("m1").state is MemberState.SUSPECT  # type: ignore[union-attr]


def test_a_member_cut_off_widens_its_timeouts_and_narrows_them_when_heard_again() -> None:
    config = MembershipConfig(probe_interval=T, probe_timeout=0.4, suspicion_timeout=30.0)
    cluster = Cluster(5, config, seed=3, latency=QUICK)
    cluster.run_until(10)
    cut = "m2"
    cluster.drop = lambda a, b, now: cut in (a, b) and 10 <= now < 40
    engine = cluster.engines[cut]
    healths = []
    for step in range(10, 40):
        cluster.run_until(step + 0.5)
        healths.append(engine.health)
    # no answer and no NACK to any probe of its: the score climbs to the top
    assert healths[-1] == config.max_health and healths == sorted(healths)
    sent_before = cluster.traffic[cut].messages
    cluster.run_until(60)
    # probing every 9 T meanwhile, not every T (its pings and PING-REQs went unheard)
    assert cluster.traffic[cut].messages - sent_before < 20 * 2
    cluster.run_until(300)
    assert engine.health == 0  # answered again, a step back per probe
    assert all(cluster.live_ids(i) == set(cluster.engines) for i in cluster.engines)


def test_a_member_always_late_widens_its_timeouts_and_still_gives_verdicts() -> None:
    """Every timer of m1 fires 0.6 s late, past its probe timeout (0.4 s): a pause each
    time, at first; it widens its timeouts until its lateness is no pause, suspects
    nobody alive meanwhile, and marks a crashed member dead as the others do."""
    cluster = Cluster(6, CONFIG, seed=8, latency=QUICK)
    cluster.late["m1"] = 0.6
    cluster.run_until(30)
    slow = cluster.engines["m1"]
    assert slow.pauses >= 1 and slow.health >= 1
    assert accusations(cluster, "") == []
    cluster.crash("m4")
    cluster.run_until(30 + (CONFIG.max_health + 1) * CONFIG.detection_bound(6))
    assert cluster.dead_at("m1", "m4") is not None
    assert [a for a in accusations(cluster, "") if a[2] != "m4"] == []


def highest_health_through_a_death(config: MembershipConfig) -> int:
    """Six members, m4 crashes: the highest health score of the others until all have
    marked it dead."""
    cluster = Cluster(6, config, seed=5, latency=QUICK)
    cluster.run_until(10)
    cluster.crash("m4")
    highest = 0
    for step in range(20, 400):
        cluster.run_until(10 + step / 10)
        highest = max(highest, *(e.health for i, e in cluster.engines.items() if i != "m4"))
    assert all(cluster.dead_at(i, "m4") is not None for i in cluster.engines if i != "m4")
    return highest


def test_nacks_keep_a_prober_whose_target_died_healthy() -> None:
    assert highest_health_through_a_death(CONFIG) == 0  # each failed probe got its NACKs
    # members of wire version 1 send no NACKs: the same death costs the probers a step
    assert highest_health_through_a_death(replace(CONFIG, wire_version=1)) >= 1


def test_refuting_a_suspicion_of_itself_costs_a_member_a_step() -> None:
    me = lone_engine()
    suspicion = replace(member(0), state=MemberState.SUSPECT)
    me.receive(message(PING, member(1), 9, "m0", [suspicion]), 0.5)
    assert me.me.incarnation == 1 and me.health == 1
