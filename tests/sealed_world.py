"""The setting of the sealed-message tests: a LocalLedger file (frozen clock), a sender
and a recipient whose host publishes its Noise key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dtp.chain.local import LocalLedger
from dtp.keys import HostIdentity

SealedWorld = tuple[LocalLedger, HostIdentity, HostIdentity, str]
"""(ledger, alice the sender, bob the recipient, bob's host ID)"""


@contextmanager
def sealed_world(tmp_path: Path) -> Iterator[SealedWorld]:
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    alice, bob = HostIdentity.generate(), HostIdentity.generate()
    hb = ledger.create_host(bob, bob.noise_public)
    try:
        yield ledger, alice, bob, hb
    finally:
        ledger.close()
