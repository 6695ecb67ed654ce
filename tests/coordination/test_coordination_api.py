"""dtp.messaging.coordination on LocalLedger: leases and locks that renew themselves, watches that
wake on a change and on a lease's expiry, a holder cut off from the ledger that stops
believing it holds the lease by its local deadline, fenced writes; the asyncio side
driven by the same engines."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import DTPTimeoutError, FencedOut, InvalidArgument, LedgerUnavailable
from dtp.identity.keys import HostIdentity
from dtp.ledger._coordination import LeaseState, RegistryState
from dtp.ledger.local import LocalLedger
from dtp.messaging.coordination import (
    AsyncRegistry,
    Change,
    Lease,
    LeaseEngine,
    Registry,
    WatchEngine,
)


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


OWNER, A, B = ident(0x70), ident(0x71), ident(0x72)


def registries(ledger: LocalLedger, **options: Any) -> tuple[Registry, Registry]:
    owner = Registry.create(ledger, OWNER, **options)
    for member in (A, B):
        owner.admit(member.sui_address)
    return (
        Registry(ledger, owner.id, A, holder="a", **options),
        Registry(ledger, owner.id, B, holder="b", **options),
    )


# -- the engines (no I/O) -----------------------------------------------------------------------


def test_the_local_deadline_is_the_sending_time_plus_the_lease_less_the_skew() -> None:
    engine = LeaseEngine(10.0, 0.5)
    assert not engine.held(0.0)
    engine.acquired(7, sent=100.0)
    assert engine.held(109.49) and not engine.held(109.5)
    assert engine.next_renewal(100.0) == pytest.approx(10 / 3)
    engine.renewed(sent=103.0)
    assert engine.held(112.49) and not engine.held(112.5)
    engine.fenced()
    assert engine.lost and not engine.held(103.0)
    engine.renewed(sent=104.0)  # a renewal that was in flight changes nothing now
    assert not engine.held(104.0)
    for duration, skew in ((0, 0), (3601, 0), (1.0, 1.0), (-1, 0), (True, 0)):
        with pytest.raises(InvalidArgument):
            LeaseEngine(duration, skew)


def test_a_watch_sees_an_expiry_only_once_the_ledger_clock_passes_it() -> None:
    registry = "0x" + "01" * 32
    engine = WatchEngine(registry, None, "leader")
    lease = LeaseState("leader", b"a", "0x0", 1, 5_000)
    engine.start(RegistryState(registry, 1, "0x0", (), leases={"leader": lease}), 4_000)
    assert engine.wait_slice(4_950, 0.2) == pytest.approx(0.05)
    assert engine.changes([], 4_999) == []
    (expired,) = engine.changes([], 5_000)
    assert expired.kind == "expired" and expired.expires_at_ms == 5_000
    assert engine.changes([], 9_000) == []  # reported once


# -- blocking -----------------------------------------------------------------------------------


def test_watches_wake_on_a_put_and_on_a_lease_expiry(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db", clock_ms=1_000)
    a, b = registries(ledger, poll_interval=0.01)
    key_watch = b.watch("config")
    lease_watch = b.watch(lease="leader")
    lease = a.lease("leader", duration=1.0, auto_renew=False)
    assert lease.try_acquire()
    version = lease.put("config", b"v1")
    lease.put("other", b"ignored by the key's watch")
    change = key_watch.wait(5)
    assert change is not None
    assert (change.kind, change.name, change.value, change.version) == (
        "put",
        "config",
        b"v1",
        version,
    )
    assert key_watch.wait(0.05) is None
    acquired = lease_watch.wait(5)
    assert acquired is not None and (acquired.kind, acquired.holder) == ("acquired", b"a")
    assert lease_watch.wait(0.05) is None  # the clock is frozen: no expiry yet
    ledger.advance_clock(1_000)
    expired = lease_watch.wait(5)
    assert expired == Change("expired", "leader", lease.token or 0, expires_at_ms=2_000)
    assert b.lease("leader", 1.0, auto_renew=False).try_acquire()


def test_a_lock_renews_itself_past_its_duration_and_the_next_one_waits(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")  # the wall clock
    a, b = registries(ledger, poll_interval=0.02, clock_skew=0.1)
    with a.lock("migration", duration=0.6) as lock:
        token = lock.check()
        time.sleep(1.5)  # more than two durations: the renewals keep it
        assert lock.held
        with pytest.raises(DTPTimeoutError):
            b.lock("migration", duration=0.6, timeout=0.3).__enter__()
        lock.put("schema", b"2")
    # released on exit: the next lock takes it at once, with a newer token
    started = time.monotonic()
    with b.lock("migration", duration=0.6, timeout=5) as next_lock:
        assert next_lock.token == token + 1
    assert time.monotonic() - started < 5
    assert a.get("schema") == b"2"


class CutOff(LocalLedger):
    """A ledger this server cannot reach once ``cut`` is set (a partition)."""

    cut = False

    def renew_lease(self, *args: Any, **kwargs: Any) -> int:
        if self.cut:
            raise LedgerUnavailable("the ledger is unreachable (a partition)")
        return super().renew_lease(*args, **kwargs)


def test_a_partitioned_holder_gives_up_by_its_deadline_and_its_late_write_is_fenced(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    cut_off = CutOff(path)
    other = LocalLedger(path)
    owner = Registry.create(other, OWNER)
    owner.admit(A.sui_address)
    owner.admit(B.sui_address)
    lost = threading.Event()
    a = Registry(cut_off, owner.id, A, holder="a", clock_skew=0.1)
    b = Registry(other, owner.id, B, holder="b", poll_interval=0.02)
    lease = a.lease("leader", duration=0.8, on_lost=lambda _lease: lost.set())
    token = lease.acquire(5)
    cut_off.cut = True
    cut_at = time.monotonic()
    assert lost.wait(5)
    # it stopped believing no later than its local deadline (0.8 - 0.1 s after its last
    # renewal, itself before the cut); the scheduler may add a little
    assert time.monotonic() - cut_at < 0.7 + 0.5
    assert not lease.held
    with pytest.raises(FencedOut):
        lease.check()  # refused before anything is sent
    new = b.lease("leader", duration=0.8, auto_renew=False)
    new.acquire(5)
    assert new.token == token + 1
    # a write it sends anyway, with its old token, is refused on the ledger
    with pytest.raises(FencedOut) as info:
        cut_off.registry_put(A, owner.id, "leader", token, "config", b"late")
    assert info.value.name == "EStaleToken"


def test_a_put_that_finds_the_lease_taken_marks_it_lost(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db", clock_ms=0)
    a, b = registries(ledger)
    seen: list[Lease] = []
    lease = a.lease("leader", duration=1.0, auto_renew=False, on_lost=seen.append)
    assert lease.try_acquire()
    ledger.advance_clock(1_000)
    assert b.lease("leader", duration=1.0, auto_renew=False).try_acquire()
    lease.engine.deadline = time.monotonic() + 60  # as a paused process would believe
    with pytest.raises(FencedOut):
        lease.put("config", b"late")
    assert seen == [lease] and not lease.held


def test_a_revoked_member_loses_its_lease_at_its_next_renewal(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    owner = Registry.create(ledger, OWNER)
    owner.admit(A.sui_address)
    lost = threading.Event()
    a = Registry(ledger, owner.id, A, clock_skew=0.1)
    lease = a.lease("leader", duration=0.6, on_lost=lambda _lease: lost.set())
    lease.acquire(5)
    owner.revoke(A.sui_address)
    assert lost.wait(5)  # at the first renewal (0.2 s), not at the deadline
    assert not lease.held
    lease.release()  # a revoked member may still release: the name is free at once
    assert ledger.get_registry(owner.id).leases["leader"].expires_at_ms == 0


# -- asyncio ------------------------------------------------------------------------------------


def test_the_asyncio_side(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")

    async def main() -> None:
        owner = await AsyncRegistry.create(ledger, OWNER, poll_interval=0.02, clock_skew=0.1)
        await owner.admit(A.sui_address)
        await owner.admit(B.sui_address)
        a = AsyncRegistry(ledger, owner.id, A, poll_interval=0.02, clock_skew=0.1)
        b = AsyncRegistry(ledger, owner.id, B, poll_interval=0.02, clock_skew=0.1)
        watch = b.watch("config")
        await watch.start()
        first = asyncio.ensure_future(anext(watch))
        async with a.lock("leader", duration=0.6) as lock:
            await asyncio.sleep(1.3)  # renewed by its task
            assert lock.held
            assert await lock.put("config", b"v1") == 1
            waiting = asyncio.ensure_future(b.lock("leader", 0.6, timeout=5).acquire())
            await asyncio.sleep(0.2)
            assert not waiting.done()
            token = lock.token
        assert await waiting == (token or 0) + 1
        change = await asyncio.wait_for(first, 5)
        assert (change.kind, change.value) == ("put", b"v1")
        assert await watch.wait(0.05) is None
        assert await b.get("config") == b"v1"
        with pytest.raises(DTPTimeoutError):
            await a.lease("leader", 0.6).acquire(timeout=0.2)

    asyncio.run(main())
