"""A watch reports every change in ledger order, a lease's expiry included: an expiry
comes before the acquire of the next tenure even when both are read at once (the
ledger emits no event for an expiry), on LocalLedger and on SuiLedger over the Sui node
stand-in, with the ledger's clock set by the test."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger._coordination import LeaseState, RegistryState
from dtp.ledger._objects import Event
from dtp.ledger.local import LocalLedger
from dtp.messaging.coordination import AsyncRegistry, Change, Registry, Watch, WatchEngine
from tests.ledger.standin_ledger import StandInLedger

REGISTRY = "0x" + "01" * 32


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


OWNER, A, B = ident(0x74), ident(0x75), ident(0x76)


# -- the engine (no I/O) ------------------------------------------------------------------------


def event(struct: str, at_ms: int, **fields: Any) -> Event:
    return Event("", f"dtp::registry::{struct}", {"registry": REGISTRY, **fields}, "", "", at_ms)


def acquired(name: str, token: int, at_ms: int, expires_at_ms: int) -> Event:
    return event(
        "LeaseAcquired",
        at_ms,
        name=name,
        token=token,
        holder=b"h",
        expires_at_ms=expires_at_ms,
    )


def kinds(changes: list[Change]) -> list[tuple[str, str, int]]:
    return [(c.kind, c.name, c.token) for c in changes]


def test_the_next_tenure_read_with_the_old_one_s_end_comes_after_its_expiry() -> None:
    engine = WatchEngine(REGISTRY, None, "leader")
    engine.start(RegistryState(REGISTRY, 1, "0x0", ()), 0)
    first = engine.changes([acquired("leader", 1, 0, 1_000)], 500)
    assert kinds(first) == [("acquired", "leader", 1)]
    # both in one read, the clock not looked at yet and no timestamps to go by: the new
    # token alone says the old tenure ran out
    both = engine.changes([acquired("leader", 2, 0, 3_000)], 500)
    assert kinds(both) == [("expired", "leader", 1), ("acquired", "leader", 2)]
    assert both[0].expires_at_ms == 1_000 and both[0].event is None
    assert engine.changes([], 2_999) == []
    (end,) = engine.changes([], 3_000)
    assert (end.kind, end.token, end.expires_at_ms) == ("expired", 2, 3_000)
    assert engine.changes([], 9_000) == []  # reported once


def test_a_renewal_moves_the_expiry_and_a_release_ends_the_tenure_without_one() -> None:
    engine = WatchEngine(REGISTRY, None, "leader")
    engine.changes([acquired("leader", 1, 0, 1_000)], 0)
    renewed = event("LeaseRenewed", 900, name="leader", token=1, expires_at_ms=1_900)
    assert kinds(engine.changes([renewed], 1_500)) == [("renewed", "leader", 1)]
    assert engine.wait_slice(1_850, 0.2) == pytest.approx(0.05)
    assert engine.wait_slice(1_900, 0.2) == 0  # due: read at once
    released = event("LeaseReleased", 1_800, name="leader", token=1)
    assert kinds(engine.changes([released], 5_000)) == [("released", "leader", 1)]
    assert engine.wait_slice(5_000, 0.2) == 0.2


def test_a_release_after_the_expiry_is_reported_after_it() -> None:
    engine = WatchEngine(REGISTRY, None, "leader")
    engine.changes([acquired("leader", 1, 0, 1_000)], 0)
    late = event("LeaseReleased", 1_200, name="leader", token=1)
    assert kinds(engine.changes([late], 1_300)) == [
        ("expired", "leader", 1),
        ("released", "leader", 1),
    ]


def test_a_watch_of_everything_places_each_expiry_among_the_other_changes() -> None:
    engine = WatchEngine(REGISTRY, None, None)
    engine.start(
        RegistryState(
            REGISTRY,
            1,
            "0x0",
            (),
            leases={
                "a": LeaseState("a", b"h", "0x0", 4, 1_000),
                "b": LeaseState("b", b"h", "0x0", 7, 2_000),
                "gone": LeaseState("gone", b"h", "0x0", 2, 100),  # ran out before the start
            },
        ),
        500,
    )
    put = event("ValuePut", 1_500, key="k", value=b"v", name="b", token=7, version=1)
    changes = engine.changes([put], 2_500)
    assert kinds(changes) == [("expired", "a", 4), ("put", "k", 7), ("expired", "b", 7)]
    # a key's watch reports no lease at all
    key_watch = WatchEngine(REGISTRY, "k", None)
    key_watch.changes([acquired("a", 5, 3_000, 4_000)], 3_000)
    assert key_watch.changes([], 9_000) == [] and key_watch.wait_slice(3_000, 0.2) == 0.2


# -- takeovers on both ledgers ------------------------------------------------------------------

TAKEOVERS = 100
DURATION = 1.0


@pytest.fixture(params=["local", "sui"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "local":
        local = LocalLedger(tmp_path / "ledger.db", clock_ms=1_000)
        yield local
        local.close()
        return
    sui = StandInLedger([OWNER, A, B], clock_ms=1_000)
    try:
        yield sui
    finally:
        sui.close()


def registries(ledger: Any) -> tuple[Registry, Registry]:
    owner = Registry.create(ledger, OWNER)
    owner.admit(A.sui_address)
    owner.admit(B.sui_address)
    return (
        Registry(ledger, owner.id, A, holder="a", poll_interval=0.01),
        Registry(ledger, owner.id, B, holder="b", poll_interval=0.01),
    )


def drain(watch: Watch) -> list[Change]:
    out = []
    while (change := watch.wait(0)) is not None:
        out.append(change)
    return out


def expected(tenures: int) -> list[tuple[str, str, int]]:
    """Each tenure acquired, then run out (its holder died), the next taking it at once."""
    out = []
    for token in range(1, tenures + 1):
        out += [("acquired", "leader", token), ("expired", "leader", token)]
    return out


def test_every_takeover_shows_the_expiry_then_the_acquire(ledger: Any) -> None:
    a, b = registries(ledger)
    read_at_the_end = b.watch(lease="leader")
    read_along = b.watch(lease="leader")
    everything = a.watch()
    iterated: list[Change] = []
    stop = threading.Event()
    iterated_watch = b.watch(lease="leader")

    def iterate() -> None:
        # iterated all along, from a thread, whenever the scheduler lets it; once the
        # takeovers are over, until it has seen them all (the last expiry may take a
        # poll of the watch to show) or 30 s passed
        deadline = None
        while len(iterated) < 2 * (TAKEOVERS + 1):
            if deadline is None and stop.is_set():
                deadline = time.monotonic() + 30
            if deadline is not None and time.monotonic() > deadline:
                return
            change = iterated_watch.wait(0.05)
            if change is not None:
                iterated.append(change)

    reader = threading.Thread(target=iterate, daemon=True)
    reader.start()
    along: list[Change] = []
    rng = random.Random(7)
    for tenure in range(TAKEOVERS + 1):
        server = (a, b)[tenure % 2]
        lease = server.lease("leader", duration=DURATION, auto_renew=False)
        # the previous holder died: its lease ran out, and this one takes it at once
        assert lease.try_acquire() and lease.token == tenure + 1
        if rng.random() < 0.5:
            along += drain(read_along)  # between the acquire and the expiry
        ledger.advance_clock(round(DURATION * 1000))
        if rng.random() < 0.5:
            along += drain(read_along)  # between the expiry and the next acquire
    stop.set()
    reader.join(60)
    along += drain(read_along)
    assert kinds(drain(read_at_the_end)) == expected(TAKEOVERS + 1)
    assert kinds(along) == expected(TAKEOVERS + 1)
    assert kinds(iterated) == expected(TAKEOVERS + 1)
    assert kinds(drain(everything)) == expected(TAKEOVERS + 1)


def test_the_asyncio_watch_shows_the_expiry_then_the_acquire(ledger: Any) -> None:
    async def main() -> list[Change]:
        owner = await AsyncRegistry.create(ledger, OWNER, poll_interval=0.01)
        await owner.admit(A.sui_address)
        await owner.admit(B.sui_address)
        servers = [AsyncRegistry(ledger, owner.id, s, poll_interval=0.01) for s in (A, B)]
        watch = servers[1].watch(lease="leader")
        await watch.start()
        for tenure in range(10):
            lease = servers[tenure % 2].lease("leader", DURATION, auto_renew=False)
            assert await lease.try_acquire()
            await asyncio.to_thread(ledger.advance_clock, round(DURATION * 1000))
        out = []
        while (change := await watch.wait(0)) is not None:
            out.append(change)
        return out

    assert kinds(asyncio.run(main())) == expected(10)
