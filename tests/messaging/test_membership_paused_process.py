"""A member in a process of its own, stopped (SIGSTOP) and resumed (SIGCONT) three times
while three others run (docs/messaging.md §6.2, "Local health"): the resumed member
suspects nobody -- not the member it was probing when stopped, not the one its first
probe after the pause goes to -- so no suspicion of anyone but itself goes round the
group, and the group is whole again after each pause. On both drivers (the stopped one's;
the others run on the blocking one, in the test's process)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from dtp.identity.keys import HostIdentity
from dtp.messaging._membership import MembershipConfig, MembershipEvent, MemberState
from dtp.messaging._membership_socket import MemberNode, join_group
from tests.support.polling import wait_for
from tests.support.procs import announcing, stop

pytestmark = pytest.mark.timeout(180)

CONFIG = MembershipConfig(
    probe_interval=0.2, probe_timeout=0.1, suspicion_timeout=3.0, sync_interval=0.5
)
#: Each pause: five probe periods, well past the probe timeout, shorter than the others'
#: shortest verdict (suspicion_min, 1.5 s), so they suspect the stopped one but it refutes.
PAUSE = 1.0


@pytest.fixture
def others() -> Iterator[list[tuple[MemberNode, list[MembershipEvent]]]]:
    nodes: list[tuple[MemberNode, list[MembershipEvent]]] = []
    for i in range(3):
        events: list[MembershipEvent] = []
        seeds = [nodes[0][0].seed()] if nodes else []
        node = join_group(f"m{i}", HostIdentity.generate(), seeds=seeds, config=CONFIG)
        node.on_event(events.append)
        nodes.append((node, events))
    yield nodes
    for node, _ in nodes:
        node.close()


@pytest.mark.parametrize("driver", ["socket", "aio"])
def test_a_member_resumed_from_sigstop_suspects_nobody(
    others: list[tuple[MemberNode, list[MembershipEvent]]], driver: str
) -> None:
    seed = others[0][0].seed()
    assert seed.key is not None
    fields = json.dumps(dataclasses.asdict(CONFIG))
    args = (driver, "p", seed.host, str(seed.port), seed.key.hex(), fields)
    with announcing("tests.messaging.member_process", *args) as (proc, _):
        told: list[dict[str, object]] = []
        reader = threading.Thread(target=lambda: told.extend(map(json.loads, proc.stdout)))
        reader.start()

        def whole() -> bool:
            return all(
                sum(m.state is MemberState.ALIVE for m in node.engine.all_members()) == 4
                for node, _ in others
            ) and {e["member"] for e in list(told) if e["kind"] == "joined"} >= {"m0", "m1", "m2"}

        assert wait_for(whole, 30)
        try:
            for _ in range(3):
                stop(proc)
                time.sleep(PAUSE)
                proc.send_signal(signal.SIGCONT)
                assert wait_for(whole, 30)
                time.sleep(10 * CONFIG.probe_interval)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
        # the resumed member's view: nobody suspected, nobody dead
        accused = [e for e in list(told) if e.get("kind") in ("suspect", "dead")]
        assert accused == [], accused
        # the others': suspicions of the stopped one only, refuted (it was away 1 s)
        for node, events in others:
            about = [(e.kind, e.member.id) for e in events if e.kind in ("suspect", "dead")]
            assert {who for _, who in about} <= {"p"}, (node.me.id, about)
            assert ("dead", "p") not in about
        proc.kill()
        proc.wait(10)
        reader.join(10)
