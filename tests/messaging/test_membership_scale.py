"""Membership engines by the dozen and the hundred in one process, on a virtual clock
(docs/messaging.md §6.2, "Cost" and "Detection bound"): what a member sends per period
does not grow with the group (one probe, its answers, piggybacked changes within the
budget), and every member marks a crashed one dead within the documented spread bound,
with 20-100 ms latencies. (The same at 100 and 1,000 members is `bench/scale.py`'s
membership run: about a minute of CPU, too much for the suite.)"""

from __future__ import annotations

import math

import msgpack
import pytest

from dtp.messaging._membership import MembershipConfig, Outgoing
from dtp.messaging._membership_wire import SYNC, SYNC_REPLY
from tests.messaging.membership_sim import Cluster

pytestmark = pytest.mark.timeout(600)

CONFIG = MembershipConfig()  # the defaults: T = 1 s, S = 5 s
FAR = lambda r: r.uniform(0.02, 0.1)  # noqa: E731


def run(n: int, seed: int) -> tuple[float, int, list[float]]:
    """A group of ``n`` that has run for long; for a minute: the messages a member
    sent per period (syncs apart), the largest of those; then, after a crash, when each
    other member marked the crashed one dead (after the crash)."""
    cluster = Cluster(n, CONFIG, seed=seed, latency=FAR, start_spread=1.0)
    cluster.run_until(1.0)
    cluster.converge()
    cluster.run_until(30.0)
    sent = 0
    largest = 0

    def tap(sender: str, out: Outgoing) -> None:
        nonlocal sent, largest
        kind = out.data[6]  # (the kind: a positive fixint after the version)
        if kind not in (SYNC, SYNC_REPLY):
            sent += 1
            largest = max(largest, len(out.data))

    cluster.tap = tap
    cluster.run_until(90.0)
    cluster.tap = None
    victim = "m7"
    cluster.crash(victim)
    cluster.run_until(90.0 + CONFIG.spread_bound(n) + 30)
    deaths = [cluster.dead_at(i, victim) for i in cluster.engines if i != victim]
    assert all(d is not None for d in deaths), sum(d is None for d in deaths)
    assert not [
        (i, e.member.id)
        for i, events in cluster.events.items()
        for e in events
        if e.kind in ("suspect", "dead") and e.member.id != victim
    ]
    return sent / n / 60, largest, [d - 90.0 for d in deaths if d is not None]


def test_a_group_five_times_larger_costs_each_member_the_same_and_sees_a_death_in_time() -> None:
    small_rate, small_largest, small_deaths = run(50, seed=1)
    rate, largest, deaths = run(250, seed=2)
    # messages a member sends per period: flat (a probe, the answers to about one)
    assert 1.5 <= small_rate <= 3 and abs(rate - small_rate) <= 0.2 * small_rate
    # and no message larger than its header, one probe's fields and the piggyback budget
    # (syncs apart: they carry the table, less often in a larger group)
    header = len(
        msgpack.packb([2, 1, ["m999", "127.0.0.1", 10999, b"k" * 32, 9, 0, None], 9, "m9", []])
    )
    for size in (small_largest, largest):
        assert size <= 4 + header + CONFIG.max_piggyback_bytes
    for n, seen in ((50, small_deaths), (250, deaths)):
        assert max(seen) <= CONFIG.spread_bound(n), (n, max(seen))
    assert CONFIG.spread_bound(1000) == pytest.approx(
        (math.log(1000) + math.log2(1000) + 2) * CONFIG.probe_interval + CONFIG.suspicion_timeout
    )
    assert CONFIG.sync_period(1000) == 6 * CONFIG.sync_interval  # (1 + ceil(log2(1000 / 32)))
