"""Sealed inbox state, session 30: a fetch that moves the cursor appends it to the
journal instead of rewriting the whole snapshot (up to ``4 * max_seen`` ids, fsynced;
a fetch moves the cursor past other hosts' mail too, so anyone mailing anyone made each
of them cost that), and the cursor read back at the next start is the newest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.messaging import errors as E
from dtp.messaging.sealed import SealedInbox, seal
from tests.sealed_world import SealedWorld, sealed_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SealedWorld]:
    with sealed_world(tmp_path) as setting:
        yield setting


def _other_host(ledger: object) -> str:
    from dtp.keys import HostIdentity

    carol = HostIdentity.generate()
    return ledger.create_host(carol, carol.noise_public)  # type: ignore[attr-defined, no-any-return]


def test_a_fetch_past_other_hosts_mail_appends_the_cursor(
    world: SealedWorld, tmp_path: Path
) -> None:
    ledger, alice, bob, hb = world
    ledger.faucet(alice.sui_address, 10**12)
    hc = _other_host(ledger)
    state = tmp_path / "inbox.json"
    with SealedInbox(bob, hb, ledger, state_path=state) as inbox:
        ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"first", recipient_host=hb))
        assert [m.body for m in inbox.fetch()] == [b"first"]
        snapshot = state.read_bytes() if state.exists() else None
        for i in range(5):
            ledger.mailbox_send(alice, hc, b"mail for someone else %d" % i)
            assert inbox.fetch() == []
        moved = inbox.cursor
        # the snapshot was not written again for those fetches
        assert (state.read_bytes() if state.exists() else None) == snapshot
    with SealedInbox(bob, hb, ledger, state_path=state) as inbox:
        assert inbox.cursor == moved
        ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"second", recipient_host=hb))
        assert [m.body for m in inbox.fetch()] == [b"second"]


def test_a_journal_left_behind_a_newer_snapshot_does_not_take_the_cursor_back(
    world: SealedWorld, tmp_path: Path
) -> None:
    """A stop between the snapshot's rename and the journal's emptying leaves the
    journal's cursor lines, all older than the snapshot's cursor."""
    ledger, alice, bob, hb = world
    ledger.faucet(alice.sui_address, 10**12)
    hc = _other_host(ledger)
    state = tmp_path / "inbox.json"
    journal = tmp_path / "inbox.json.log"
    with SealedInbox(bob, hb, ledger, state_path=state) as inbox:
        for i in range(3):
            ledger.mailbox_send(alice, hc, b"elsewhere %d" % i)
            inbox.fetch()
        stale = journal.read_bytes()
        assert stale.count(b"\nc:") + stale.startswith(b"c:") == 3
        ledger.mailbox_send(alice, hc, b"elsewhere again")
        inbox.fetch()
        inbox._save()  # the snapshot with the newest cursor
        newest = inbox.cursor
    journal.write_bytes(stale)  # as a stop before the journal was emptied left it
    with SealedInbox(bob, hb, ledger, state_path=state) as inbox:
        assert inbox.cursor == newest


@pytest.mark.parametrize("line", [b"c:x:0\n", b"c:1:zz\n", b"c:1\n", b"c:1:ff\n"])
def test_a_damaged_cursor_line_is_refused_naming_the_journal(
    world: SealedWorld, tmp_path: Path, line: bytes
) -> None:
    _ledger, _alice, bob, hb = world
    state = tmp_path / "inbox.json"
    (tmp_path / "inbox.json.log").write_bytes(line)
    with pytest.raises(E.SealedError, match="journal"):
        SealedInbox(bob, hb, state_path=state)


def test_an_earlier_versions_snapshot_keeps_the_cursors_fetches_reach(
    world: SealedWorld, tmp_path: Path
) -> None:
    """A snapshot without a token (an earlier version's) is rewritten with one at the
    start: cursor lines appended for it were taken by no later start, which went back
    to the old cursor and delivered the mail whose ids were evicted again."""
    ledger, alice, bob, hb = world
    ledger.faucet(alice.sui_address, 10**12)
    state = tmp_path / "inbox.json"
    state.write_text(json.dumps({"host": hb, "cursor": None, "seen": []}))
    bodies = [b"m%d" % i for i in range(5)]
    with SealedInbox(bob, hb, ledger, state_path=state, max_seen=2) as inbox:
        for body in bodies:
            ledger.mailbox_send(alice, hb, seal(bob.noise_public, body, recipient_host=hb))
        assert [m.body for m in inbox.fetch()] == bodies
        moved = inbox.cursor
    with SealedInbox(bob, hb, ledger, state_path=state, max_seen=2) as inbox:
        assert inbox.cursor == moved
        assert inbox.fetch() == []
