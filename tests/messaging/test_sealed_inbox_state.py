"""Sealed inbox state: a journal line torn by a stop no longer makes the
next start's inbox unopenable, a state write that fails (a full disk...) loses no mail
and leaves no thread waiting for ever, ``max_seen`` is checked, and a closed inbox
delivers nothing more (the next inbox on its state file does).

Sealed inbox state: a fetch that moves the cursor appends it to the
journal instead of rewriting the whole snapshot (up to ``4 * max_seen`` ids, fsynced;
a fetch moves the cursor past other hosts' mail too, so anyone mailing anyone made each
of them cost that), and the cursor read back at the next start is the newest."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.rpc import RpcClient, RpcServer
from dtp.messaging.sealed import OpenedMessage, SealedInbox, open_sealed, seal, send_sealed
from tests.messaging.sealed_world import SealedWorld, sealed_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SealedWorld]:
    with sealed_world(tmp_path) as setting:
        yield setting


def test_a_torn_journal_line_does_not_corrupt_the_next_start(world: tuple, tmp_path: Path) -> None:
    _ledger, _alice, bob, hb = world
    state = tmp_path / "inbox.json"
    journal = tmp_path / "inbox.json.log"
    with SealedInbox(bob, hb, state_path=state) as inbox:
        first = seal(bob.noise_public, b"first")
        assert inbox.accept(first) is not None
    with journal.open("ab") as f:
        f.write(b"ab" * 5)  # a process stopped in the middle of appending an id
    second = seal(bob.noise_public, b"second")
    with SealedInbox(bob, hb, state_path=state) as inbox:
        assert inbox.accept(second) is not None  # appended after the torn bytes
    # the next id starts a line of its own, never one corrupt line with the torn bytes
    with SealedInbox(bob, hb, state_path=state) as inbox:
        assert inbox.accept(first) is None and inbox.accept(second) is None
    assert journal.read_bytes().endswith(b"\n")


def test_a_failed_state_write_loses_no_mail(world: tuple, tmp_path: Path) -> None:
    ledger, alice, bob, hb = world
    state = tmp_path / "inbox.json"
    with SealedInbox(bob, hb, ledger, state_path=state) as inbox:
        ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"mail"))
        blocker = tmp_path / "inbox.json.log"
        blocker.mkdir()  # the journal cannot be written (as with a full disk)
        with pytest.raises(OSError):
            inbox.fetch()
        blocker.rmdir()
        # the batch's ids and the cursor are not kept in memory when the journal fails,
        # so the mail is fetched again
        assert [m.body for m in inbox.fetch()] == [b"mail"]
        assert inbox.fetch() == []
        # a direct message whose journal line cannot be written is not lost either
        journal = tmp_path / "inbox.json.log"
        journal.rename(tmp_path / "aside")  # (it holds the mail's id and the cursor)
        journal.mkdir()
        direct = seal(bob.noise_public, b"direct")
        with pytest.raises(OSError):
            inbox.accept(direct)
        journal.rmdir()
        (tmp_path / "aside").rename(journal)
        opened = inbox.accept(direct)
        assert opened is not None and opened.body == b"direct"
    with SealedInbox(bob, hb, ledger, state_path=state) as again:
        assert again.accept(direct) is None and again.fetch() == []


def test_a_failed_state_write_wakes_a_thread_waiting_for_the_same_message(
    world: tuple, tmp_path: Path
) -> None:
    _ledger, _alice, bob, hb = world
    state = tmp_path / "inbox.json"
    journal = tmp_path / "inbox.json.log"
    with SealedInbox(bob, hb, state_path=state) as inbox:
        message = seal(bob.noise_public, b"twice")
        message_id = inbox._open(message, "direct").message_id
        assert inbox._claim(message_id)  # a delivery of it is under way
        outcome: list[object] = []

        def copy() -> None:
            try:
                outcome.append(inbox.accept(message))
            except OSError as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=copy, daemon=True)
        waiter.start()
        deadline = time.monotonic() + 5
        while not inbox._settled._waiters:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the copy never waited"
            time.sleep(0.005)
        journal.mkdir()
        with pytest.raises(OSError):
            inbox._settle(message_id, delivered=True)
        # the copy waiting on it is woken, not left waiting
        waiter.join(5)
        assert not waiter.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], OSError)  # its own write failed
        journal.rmdir()
        assert inbox.accept(message) is not None


@pytest.mark.parametrize("max_seen", [-1, "10", 1.5, None, True])
def test_max_seen_must_be_a_count(world: tuple, tmp_path: Path, max_seen: object) -> None:
    _ledger, _alice, bob, hb = world
    # -1 raised KeyError at the first message (at once with a state file), "10" TypeError
    with pytest.raises(ValueError, match="max_seen"):
        SealedInbox(bob, hb, state_path=tmp_path / "inbox.json", max_seen=max_seen)  # type: ignore[arg-type]
    with SealedInbox(bob, hb, max_seen=1e3) as inbox:  # type: ignore[arg-type]
        assert inbox.max_seen == 1000


def test_a_closed_inbox_delivers_nothing(world: tuple, tmp_path: Path) -> None:
    ledger, alice, bob, hb = world
    state = tmp_path / "inbox.json"
    received: list[OpenedMessage] = []
    rpc = RpcServer()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=bob)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    with SealedInbox(bob, hb, ledger, state_path=state) as old:
        old.register(rpc, received.append)
    thread.start()
    successor = SealedInbox(bob, hb, ledger, state_path=state)
    sock = dtp.socket.create_connection(server.address, server_key=bob.noise_public, timeout=5)
    try:
        message = seal(bob.noise_public, b"hello")
        # a closed inbox delivers nothing (nor writes the state file its successor
        # owns), so the successor's delivery is the only one
        with pytest.raises(E.SealedError, match="closed"):
            old.accept(message)
        with pytest.raises(E.SealedError, match="closed"):
            old.fetch()
        client = RpcClient(sock, timeout=5)
        via = send_sealed(message, recipient_host=hb, client=client, ledger=ledger, signer=alice)
        assert via == "mailbox" and received == []
        assert [m.body for m in successor.fetch()] == [b"hello"]
    finally:
        sock.close()
        server.close()
        rpc.close()
        thread.join(5)
        successor.close()


def test_a_handler_reading_the_mailbox_does_not_wait_for_itself(world: tuple) -> None:
    ledger, alice, bob, hb = world
    inbox = SealedInbox(bob, hb, ledger)
    message = seal(bob.noise_public, b"both ways")
    later = seal(bob.noise_public, b"by mail only")
    # the sender also put it in the mailbox (say its direct call had timed out before)
    ledger.mailbox_send(alice, hb, message)
    ledger.mailbox_send(alice, hb, later)
    received: list[bytes] = []

    def on_message(opened: OpenedMessage) -> None:
        received.append(opened.body)
        # catching up on mail from the handler found the message being handled: its
        # claim waited for the delivery under way, that is for itself, for ever
        received.extend(m.body for m in inbox.fetch())

    rpc = RpcServer()
    inbox.register(rpc, on_message)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=bob)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(server.address, server_key=bob.noise_public, timeout=5)
    try:
        client = RpcClient(sock, timeout=5)
        assert client.call("sealed.deliver", message) is True
        assert received == [b"both ways", b"by mail only"]
        assert inbox.duplicates == 1
        assert client.call("sealed.deliver", message) is False  # seen once it returned
    finally:
        sock.close()
        server.close()
        rpc.close()
        thread.join(5)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"message_id": "a" * 16}, TypeError),  # was sealed, then refused by open_sealed
        ({"message_id": "a" * 16, "with_sender": True}, TypeError),
        ({"message_id": 5}, TypeError),
        ({"message_id": b""}, ValueError),  # was taken as "no id given"
        ({"ephemeral": "a" * 32}, TypeError),
    ],
)
def test_seal_takes_ids_and_keys_as_bytes_only(
    world: tuple, kwargs: dict, error: type[Exception]
) -> None:
    _ledger, alice, bob, _hb = world
    kwargs = dict(kwargs)
    if kwargs.pop("with_sender", False):
        kwargs["sender"] = alice
    with pytest.raises(error, match="bytes"):
        seal(bob.noise_public, b"hi", **kwargs)
    # any bytes-like id is fine
    message_id = bytearray(range(16))
    assert open_sealed(bob, seal(bob.noise_public, b"hi", message_id=message_id)).message_id == (
        bytes(message_id)
    )


def test_max_age_refuses_a_message_dated_far_ahead(world: tuple) -> None:
    ledger, alice, bob, hb = world
    now_ms = time.time_ns() // 1_000_000
    year_ms = 365 * 86_400_000
    ahead = seal(bob.noise_public, b"a sender's clock a year fast", now_ms=now_ms + year_ms)
    plain = SealedInbox(bob, hb, ledger, max_seen=1)
    guarded = SealedInbox(bob, hb, ledger, max_seen=1, max_age=3600)
    assert plain.accept(ahead) is not None
    plain.accept(seal(bob.noise_public, b"next"))  # the id is forgotten
    assert plain.accept(ahead) is not None  # its copy is delivered again (no max_age)
    # with max_age it was taken too, and so would its copies be, for a year
    with pytest.raises(E.SealedExpired, match="ahead"):
        guarded.accept(ahead)
    # a clock a little fast (within max_age) is fine
    slightly = seal(bob.noise_public, b"a minute fast", now_ms=now_ms + 60_000)
    assert guarded.accept(slightly) is not None
    ledger.mailbox_send(alice, hb, ahead)
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"today"))
    assert [m.body for m in guarded.fetch()] == [b"today"]
    assert guarded.rejected == {"SealedExpired": 2}


def test_a_state_file_serves_the_host_it_was_written_for(world: tuple, tmp_path: Path) -> None:
    ledger, alice, bob, hb = world
    ha = ledger.create_host(alice, alice.noise_public)
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"for bob"))
    ledger.mailbox_send(bob, ha, seal(alice.noise_public, b"for alice"))
    state = tmp_path / "inbox.json"
    with SealedInbox(alice, ha, ledger, state_path=state) as inbox:
        assert [m.body for m in inbox.fetch()] == [b"for alice"]
    # bob's inbox must not take over alice's cursor (past bob's mail: fetch would find
    # nothing, for good)
    with pytest.raises(E.SealedError, match="belongs to host"):
        SealedInbox(bob, hb, ledger, state_path=state)
    with SealedInbox(bob, hb, ledger, state_path=tmp_path / "bob.json") as inbox:
        assert [m.body for m in inbox.fetch()] == [b"for bob"]
    # the same host, spelled another way, is the same host; a file without a host
    # (written by an earlier version) is taken as it is
    with SealedInbox(alice, ha.upper().replace("0X", "0x"), ledger, state_path=state) as inbox:
        assert inbox.fetch() == []
    state.write_text('{"cursor": null, "seen": []}')
    with SealedInbox(bob, hb, ledger, state_path=state) as inbox:
        assert [m.body for m in inbox.fetch()] == [b"for bob"]


@pytest.mark.parametrize(
    ("host_id", "error"), [(None, TypeError), (b"0x1", TypeError), ("bob", ValueError)]
)
def test_an_inbox_reading_a_mailbox_needs_an_object_id(
    world: tuple, host_id: object, error: type[Exception]
) -> None:
    ledger, alice, bob, hb = world
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"mail"))
    # such an inbox skipped every mail (none names it) and moved its cursor past it all
    with pytest.raises(error, match="host_id"):
        SealedInbox(bob, host_id, ledger)  # type: ignore[arg-type]
    with SealedInbox(bob, hb, ledger) as inbox:
        assert [m.body for m in inbox.fetch()] == [b"mail"]


def test_fetch_with_the_wrong_identity_leaves_the_mail_unread(world: tuple, tmp_path: Path) -> None:
    ledger, alice, bob, hb = world
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"mail"))
    state = tmp_path / "inbox.json"
    # the fetch fails, rather than skip every mail it cannot open and save a cursor
    # past it for good
    wrong = SealedInbox(HostIdentity.generate(), hb, ledger, state_path=state)
    with wrong, pytest.raises(E.SealedError, match="another Noise key"):
        wrong.fetch()
    with SealedInbox(bob, hb, ledger, state_path=state) as inbox:
        assert [m.body for m in inbox.fetch()] == [b"mail"]


def _other_host(ledger: object) -> str:
    from dtp.identity.keys import HostIdentity

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
        inbox._file.save(inbox.cursor)  # the snapshot with the newest cursor
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
