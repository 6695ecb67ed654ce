"""A server that campaigns for one lease of a registry, for the contention tests (run as
``python -m tests.coordination.lease_server LEDGER REGISTRY SEED NAME DURATION``).

LEDGER is a LocalLedger file, or ``sui:URL,PACKAGE`` for a Sui node (the stand-in).
The server prints a JSON line ``{"ready": address}``, then blocks until it holds the
lease, writes its name under it (fenced) and prints ``{"held": token, "at": ms}``; it
then keeps the lease by its background renewals until it is killed. Losing the lease
prints ``{"lost": token}`` and campaigns again."""

from __future__ import annotations

import json
import sys
import threading

from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.messaging.coordination import Registry


def open_ledger(spec: str) -> Ledger:
    if spec.startswith("sui:"):
        from dtp.ledger.sui import SuiConfig, SuiLedger

        url, package = spec[4:].rsplit(",", 1)
        return SuiLedger(SuiConfig(url, package, timeout=30.0))
    from dtp.ledger.local import LocalLedger

    return LocalLedger(spec)


def identity(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main(spec: str, registry_id: str, seed: str, name: str, duration: str) -> None:
    me = identity(int(seed))
    ledger = open_ledger(spec)
    registry = Registry(ledger, registry_id, me, holder=f"server-{seed}", poll_interval=0.05)
    say(ready=me.sui_address)
    lost = threading.Event()
    while True:
        lost.clear()
        lease = registry.lease(name, float(duration), on_lost=lambda _lease: lost.set())
        token = lease.acquire()
        lease.put("leader", f"server-{seed}".encode())
        say(held=token, at=ledger.clock_ms())
        lost.wait()
        say(lost=token)


if __name__ == "__main__":
    main(*sys.argv[1:])
