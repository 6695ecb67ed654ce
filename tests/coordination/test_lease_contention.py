"""Three servers, each its own process, contend for one lease: on LocalLedger (a file the
processes share) and on SuiLedger over the Sui node stand-in (the same rules). The
holder is killed, so it stops renewing; another server holds the lease within the lease
time; a write fenced with the dead holder's token is refused.

The ledger facts are checked exactly (tenures never overlap; the dead holder's tenure
ends at most one lease after its last renewal; tokens increase). The wall-clock figure,
how soon after the kill the next server holds the lease, is bounded by the lease
duration plus a margin for a loaded machine (the rule itself is checked on a virtual
clock in tests/ledger/test_coordination_rules.py)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import FencedOut
from dtp.ledger._objects import EventFilter
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from tests.coordination.lease_server import identity
from tests.support.paths import ROOT

DURATION = 2.0
#: How late past the dead holder's expiry the next one may take the lease, on the wall
#: clock: its watch polls every 0.05 s, then a transaction; a loaded machine adds more.
MARGIN = 3.0
SEEDS = (0x51, 0x52, 0x53)
OWNER = identity(0x50)


class Servers:
    """The three server processes, each line they print read by a thread of its own (a
    select on a buffered pipe would miss a line read ahead with the one before)."""

    def __init__(self, spec: str, registry_id: str) -> None:
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.lines: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        for seed in SEEDS:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.coordination.lease_server",
                    spec,
                    registry_id,
                    str(seed),
                    "leader",
                    str(DURATION),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self.procs[seed] = proc
            threading.Thread(target=self._read, args=(seed, proc), daemon=True).start()

    def _read(self, seed: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            self.lines.put((seed, dict(json.loads(text))))
        self.lines.put((seed, None))  # exited

    def next(self, timeout: float) -> tuple[int, dict[str, Any] | None]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no server said anything in {timeout} s") from None

    def first_holder(self, among: tuple[int, ...], timeout: float) -> tuple[int, dict[str, Any]]:
        end = time.monotonic() + timeout
        while True:
            seed, message = self.next(max(0.0, end - time.monotonic()))
            if seed in among:
                assert message is not None, f"server {seed:#x} exited"
                if "held" in message:
                    return seed, message

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def _registry(ledger: Ledger) -> str:
    registry_id = ledger.create_registry(OWNER)
    for seed in SEEDS:
        ledger.registry_admit(OWNER, registry_id, identity(seed).sui_address)
    return registry_id


@pytest.fixture(params=["local", "sui"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Ledger, str]]:
    if request.param == "local":
        path = tmp_path / "ledger.db"
        ledger: Ledger = LocalLedger(path)
        yield ledger, str(path)
        ledger.close()
        return
    from dtp.ledger.sui import SuiConfig, SuiLedger
    from dtp.testing.sui_node import SuiNodeStandIn

    with SuiNodeStandIn() as node:
        for seed in (0x50, *SEEDS):
            node.faucet(identity(seed).sui_address, 10**11)
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        yield sui, f"sui:{node.url},{node.package_id}"
        sui.close()


def test_the_killed_holder_is_replaced_within_the_lease_time(world: tuple[Ledger, str]) -> None:
    ledger, spec = world
    registry_id = _registry(ledger)
    servers = Servers(spec, registry_id)
    try:
        first, held = servers.first_holder(SEEDS, 60)
        old_token = held["held"]
        # the others keep waiting while the holder renews: two leases' time, no takeover
        time.sleep(2 * DURATION)
        state = ledger.get_registry(registry_id)
        assert state.leases["leader"].token == old_token
        assert state.leases["leader"].owner == identity(first).sui_address
        assert state.entries["leader"].value == f"server-{first}".encode()

        servers.procs[first].kill()
        servers.procs[first].wait(10)
        killed_ms = ledger.clock_ms()
        killed = time.monotonic()
        rest = tuple(s for s in SEEDS if s != first)
        second, held2 = servers.first_holder(rest, DURATION + MARGIN + 30)
        waited = time.monotonic() - killed
        new_token = held2["held"]
        assert new_token > old_token

        events, _ = ledger.events(filter=EventFilter(type="LeaseAcquired", object_id=registry_id))
        renewals, _ = ledger.events(filter=EventFilter(type="LeaseRenewed", object_id=registry_id))
        old_expiry = max(
            e.fields["expires_at_ms"]
            for e in [*events, *renewals]
            if e.fields["token"] == old_token
        )
        (taken,) = [e for e in events if e.fields["token"] == new_token]
        # the ledger's rule: no overlap, and the dead holder blocked the name at most
        # one lease past the kill
        assert taken.timestamp_ms >= old_expiry
        assert old_expiry <= killed_ms + DURATION * 1000
        assert waited < DURATION + MARGIN, waited

        # the dead holder's late write, with its token, is refused; the new one's stands
        with pytest.raises(FencedOut) as info:
            ledger.registry_put(identity(first), registry_id, "leader", old_token, "leader", b"x")
        assert info.value.name == "EStaleToken"
        assert ledger.get_registry(registry_id).entries["leader"].value == (
            f"server-{second}".encode()
        )
    finally:
        servers.close()
