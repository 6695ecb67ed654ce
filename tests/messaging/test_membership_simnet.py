"""The asyncio member node on the deterministic network of ``dtp.testing`` (docs/testing.md
§3): eight members on hosts of their own, over DTP connections on links with latency and
jitter, on the virtual clock -- the group forms with nobody suspected, a crashed host is
marked dead by every other member within the detection bound, and the same seed gives
the same run."""

from __future__ import annotations

import asyncio
import random

import pytest

from dtp.messaging._membership import MembershipConfig, MemberState
from dtp.messaging._membership_aio import AsyncMemberNode, join_group_async
from dtp.testing.identities import identity
from dtp.testing.network import Link, SimNetwork

CONFIG = MembershipConfig(
    probe_interval=1.0, probe_timeout=0.4, suspicion_timeout=5.0, sync_interval=5.0
)
N = 8
CRASH = 30.0


def run_group(seed: int) -> tuple[list[tuple[str, str, str, float]], float]:
    """Every event each member saw, as (observer, kind, member, time), and the crash's
    time; member m3's host crashes at CRASH."""
    net = SimNetwork(seed=seed, default_link=Link(delay=0.02, jitter=0.03))
    names = [f"h{i}" for i in range(N)]
    net.add_hosts(*names)
    seen: list[tuple[str, str, str, float]] = []

    async def main() -> float:
        nodes: list[AsyncMemberNode] = []
        for i, name in enumerate(names):
            with net.host(name):
                node = await join_group_async(
                    f"m{i}",
                    identity(i + 1),
                    host=name,
                    port=7946,
                    seeds=[nodes[0].seed()] if nodes else [],
                    config=CONFIG,
                    rng=random.Random(seed * 100 + i),  # (draws from the seed too)
                )
            node.on_event(lambda e, me=f"m{i}": seen.append((me, e.kind, e.member.id, net.now)))
            nodes.append(node)
        await asyncio.sleep(CRASH - net.now)
        assert all(
            [m.state for m in node.engine.all_members()] == [MemberState.ALIVE] * N
            for node in nodes
        )
        crashed_at = net.now
        net.crash("h3")
        await nodes[3].close()
        await asyncio.sleep(CONFIG.detection_bound(N) + 1)
        for node in nodes[:3] + nodes[4:]:
            await node.close()
        return crashed_at

    return seen, net.run(main())


@pytest.mark.timeout(300)
def test_a_group_on_the_simulated_network_forms_and_sees_a_crash() -> None:
    seen, crashed_at = run_group(seed=5)
    before = [e for e in seen if e[3] < crashed_at]
    assert {kind for _, kind, _, _ in before} == {"joined"}  # nobody suspected
    bound = CONFIG.detection_bound(N)
    for i in range(N):
        if i == 3:
            continue
        deaths = [at for me, kind, who, at in seen if (me, kind, who) == (f"m{i}", "dead", "m3")]
        assert deaths and deaths[0] - crashed_at <= bound, (i, deaths, crashed_at)
    assert not [e for e in seen if e[1] == "dead" and e[2] != "m3"]
    # (deterministic: the same seed, the same events at the same virtual times)
    assert run_group(seed=5) == (seen, crashed_at)
