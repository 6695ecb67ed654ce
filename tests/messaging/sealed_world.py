"""The setting of the sealed-message tests: a LocalLedger file (frozen clock), a sender
and a recipient whose host publishes its Noise key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger

SealedWorld = tuple[LocalLedger, HostIdentity, HostIdentity, str]
"""(ledger, alice the sender, bob the recipient, bob's host ID)"""


def persisted_cursor(state: Path) -> str | None:
    """The cursor an inbox on ``state`` starts from: the snapshot's, or the last one its
    journal appended for that snapshot (docs/messaging.md)."""
    snapshot = json.loads(state.read_text())
    cursor: str | None = snapshot["cursor"]
    journal = state.with_suffix(state.suffix + ".log")
    lines = journal.read_bytes().splitlines() if journal.exists() else []
    for line in lines:
        if line.startswith(b"c:"):
            epoch, moved = line[2:].split(b":")
            if epoch.decode() == snapshot["journal"]:
                cursor = bytes.fromhex(moved.decode()).decode()
    return cursor


@contextmanager
def sealed_world(tmp_path: Path) -> Iterator[SealedWorld]:
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    alice, bob = HostIdentity.generate(), HostIdentity.generate()
    hb = ledger.create_host(bob, bob.noise_public)
    try:
        yield ledger, alice, bob, hb
    finally:
        ledger.close()
