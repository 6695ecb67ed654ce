"""An inbox with ``max_age`` keeps the ids of messages delivered less than twice that
long ago beyond ``max_seen``: anyone can seal a message to it, and a flood of them
pushed out the id of a message still young, whose copy from the mailbox was then
delivered again as from its sender ("pay 100" twice; found by a second reader).
Without ``max_age`` the last ``max_seen`` ids are kept, as documented."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dtp.keys import HostIdentity
from dtp.messaging import sealed as sealed_module
from dtp.messaging.sealed import SealedInbox, seal

HOST = "0x" + "ab" * 32


def _flood(inbox: SealedInbox, me: HostIdentity, count: int) -> None:
    for _ in range(count):
        assert inbox.accept(seal(me.noise_public, b"x", recipient_host=HOST)) is not None


def test_a_flood_does_not_make_a_young_message_deliverable_again(tmp_path: Path) -> None:
    me, alice = HostIdentity.generate(), HostIdentity.generate()
    inbox = SealedInbox(me, HOST, state_path=tmp_path / "inbox.json", max_seen=50, max_age=3600)
    genuine = seal(me.noise_public, b"pay 100", sender=alice, recipient_host=HOST)
    assert inbox.accept(genuine, "mailbox") is not None
    _flood(inbox, me, 120)
    assert inbox.accept(genuine, "mailbox") is None  # a duplicate still
    inbox.close()
    # and after a restart: the ids loaded are as young as the load
    again = SealedInbox(me, HOST, state_path=tmp_path / "inbox.json", max_seen=50, max_age=3600)
    _flood(again, me, 60)  # (within the bound of young ids kept: 4 x max_seen)
    assert again.accept(genuine, "mailbox") is None
    again.close()


def test_the_young_ids_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    me = HostIdentity.generate()
    inbox = SealedInbox(me, HOST, max_seen=10, max_age=3600)
    _flood(inbox, me, 100)
    assert len(inbox._seen) == sealed_module._PROTECTED_SEEN * 10
    inbox.close()


def test_old_ids_go_beyond_max_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    me = HostIdentity.generate()
    inbox = SealedInbox(me, HOST, max_seen=10, max_age=0.05)
    _flood(inbox, me, 30)
    time.sleep(0.12)  # twice max_age passed: none is young any more
    _flood(inbox, me, 1)
    assert len(inbox._seen) == 10
    inbox.close()
    plain = SealedInbox(me, HOST, max_seen=10)  # no max_age: the last max_seen
    _flood(plain, me, 30)
    assert len(plain._seen) == 10
    plain.close()
