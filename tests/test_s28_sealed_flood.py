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


def test_a_failure_after_the_state_is_written_does_not_undo_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the new state file is in place, a failing directory sync (or journal
    truncation) is logged, not raised: raised, the inbox undid in memory the cursor and
    ids the file held already, and the batch the caller never got was lost at the next
    start (found by a second reader)."""
    import dtp.keys

    me = HostIdentity.generate()
    inbox = SealedInbox(me, HOST, state_path=tmp_path / "inbox.json")
    message_id = b"\x01" * 16

    def failing(path: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(dtp.keys, "_fsync_directory", failing)
    inbox._settle_all([message_id], True, cursor="after-the-batch")
    assert inbox.cursor == "after-the-batch" and message_id in inbox._seen
    inbox.close()
    monkeypatch.undo()
    again = SealedInbox(me, HOST, state_path=tmp_path / "inbox.json")
    assert again.cursor == "after-the-batch" and message_id in again._seen
    again.close()
