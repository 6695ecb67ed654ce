"""When the services daemon tries a failed settlement again (dtp/daemon/_settlements.py),
against the client's half-close timeout (``HALF_CLOSE_TIMEOUT_MS``, 10 minutes): past
it the client may settle alone and take its whole deposit back, the host's receipted fee
lost. A ledger (or the daemon's gas) back at any moment must see the settlement tried
soon enough to land before then.

The schedule is the daemon's own (``Settlements.follow_up`` after each failed try,
with the real ``SETTLE_RETRY`` and ``SETTLE_RETRY_MAX``), read from its retry entries
rather than waited out: the minutes it spans are not slept here. The wake at the gas
funded again is tests/daemon/test_on_sui.py (the stand-in, in real time)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dtp.daemon._fees import Settled
from dtp.daemon._services import ServiceHost
from dtp.daemon._settlements import SETTLE_RETRY
from dtp.daemon._state import StatusBook
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS
from dtp.ledger.local import LocalLedger

CID = "0x" + "c1" * 32
TIMEOUT = HALF_CLOSE_TIMEOUT_MS / 1000
MINUTE = 60.0


def tries_after_a_failure(tmp_path: Path, count: int) -> list[float]:
    """The times (seconds after a settlement's first failure) of its next ``count``
    tries, each failing again, as the daemon schedules them."""

    async def main() -> list[float]:
        ledger = LocalLedger(tmp_path / "ledger.sqlite")
        try:
            host = ServiceHost(ledger, HostIdentity.generate(), StatusBook(tmp_path))
            # (no retry loop started: only the schedule is looked at, not the tries)
            host.settlements.stopped = True
            loop = asyncio.get_running_loop()
            times: list[float] = []
            for _ in range(count):
                # a try failing (the first: the settlement at the connection's end)
                host.settlements.follow_up(CID, Settled(0, 0), None, None)
                entry = host.settlements.retries[CID]
                assert abs(entry.due - (loop.time() + entry.delay)) < 0.5  # (due then)
                times.append((times[-1] if times else 0.0) + entry.delay)
            return times
        finally:
            ledger.close()

    return asyncio.run(main())


def test_a_failed_settlement_is_tried_within_a_minute_of_the_half_close_timeout(
    tmp_path: Path,
) -> None:
    """A settlement failing at the client's half-close: the last try before the client
    may settle alone comes within a minute of it (it came 150 s before it: tries at 30,
    90, 210, 450 and 690 s, the backoff doubling to 4 minutes)."""
    times = tries_after_a_failure(tmp_path, 20)
    assert times[0] == SETTLE_RETRY
    before = [t for t in times if t < TIMEOUT]
    assert TIMEOUT - before[-1] <= MINUTE, times


def test_a_ledger_back_at_any_moment_sees_the_next_try_within_a_minute(tmp_path: Path) -> None:
    """Whenever the ledger comes back (or is back before the half-close: the client
    half-closed first, the daemon seeing it up to half a minute later), the next try is
    at most a minute away: no gap between two tries is longer. A ledger back 460 s
    after the failure saw its try at 690 s, past the client's timeout."""
    times = tries_after_a_failure(tmp_path, 20)
    gaps = [later - earlier for earlier, later in zip([0.0, *times], times, strict=False)]
    assert max(gaps) <= MINUTE, gaps
    back = 460.0
    assert next(t for t in times if t >= back) < TIMEOUT
