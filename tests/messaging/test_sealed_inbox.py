"""Sealed inbox: concurrent fetches no longer move the cursor back (they take
turns, and a handler's own fetch does not wait for a fetch that waits for it), the
``rejected`` counters lose no count under threads and read as a consistent snapshot;
and besides: a fetch under way when the inbox closed wrote over the next
inbox's state (both delivered its mail), a closed inbox still opened (and counted,
and checked on the ledger) what it was given, a state file reached through a symlink
was replaced by a file of its own (the next inbox by the real name delivered it all
again), and a snapshot replaced the old one unflushed.

Sealed messages: mail fetched from the ledger mailbox reaches the
application exactly once even when the recipient's process is killed while it handles
a message (``fetch(on_message=...)``): before, ``fetch`` saved the batch's ids and the
cursor before returning it, so a process killed before it had stored the messages lost
them for good.

An inbox with ``max_age`` keeps the ids of messages delivered less than twice that
long ago beyond ``max_seen``: anyone can seal a message to it, and a flood of them
pushed out the id of a message still young, whose copy from the mailbox was then
delivered again as from its sender ("pay 100" twice).
Without ``max_age`` the last ``max_seen`` ids are kept, as documented."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging import sealed as sealed_module
from dtp.messaging.sealed import OpenedMessage, SealedInbox, open_sealed, seal
from tests.messaging.sealed_world import SealedWorld, persisted_cursor, sealed_world
from tests.support.paths import ROOT


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SealedWorld]:
    with sealed_world(tmp_path) as setting:
        yield setting


def _head(ledger: LocalLedger, hb: str) -> str | None:
    _, cursor = ledger.events(None, EventFilter(type="MailDeposited", object_id=hb), 10_000)
    return cursor


# -- 1. concurrent fetches ----------------------------------------------------------------------


def test_concurrent_fetches_never_move_the_cursor_back(
    world: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, alice, bob, hb = world
    state = tmp_path / "inbox.json"
    inbox = SealedInbox(bob, hb, ledger, state_path=state)
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"m1"))
    real_events = ledger.events
    slow_read = threading.Event()
    release = threading.Event()

    def events(*args: Any, **kwargs: Any) -> Any:
        result = real_events(*args, **kwargs)
        if threading.current_thread().name == "slow":
            slow_read.set()  # read the mailbox as it was (m1 only), then stall
            assert release.wait(10)
        return result

    monkeypatch.setattr(ledger, "events", events)
    got: dict[str, list[bytes]] = {}

    def fetch() -> None:
        got[threading.current_thread().name] = [m.body for m in inbox.fetch()]

    slow = threading.Thread(target=fetch, name="slow", daemon=True)
    slow.start()
    assert slow_read.wait(10)
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"m2"))
    fast = threading.Thread(target=fetch, name="fast", daemon=True)
    fast.start()
    fast.join(0.5)  # it read m1 and m2 and saved their cursor; now it takes its turn
    release.set()
    slow.join(10)
    fast.join(10)
    assert not slow.is_alive() and not fast.is_alive()
    # the slow fetch wrote its older cursor over the newer one: m2 was read again
    assert inbox.cursor == _head(ledger, hb)
    assert persisted_cursor(state) == inbox.cursor
    assert sorted(got["slow"] + got["fast"]) == [b"m1", b"m2"]  # each once
    monkeypatch.undo()
    assert inbox.fetch() == [] and inbox.duplicates == 0
    inbox.close()
    with SealedInbox(bob, hb, ledger, state_path=state) as again:
        assert again.fetch() == [] and again.duplicates == 0


def test_many_threads_fetching_deliver_each_message_once(world: tuple, tmp_path: Path) -> None:
    ledger, alice, bob, hb = world
    state = tmp_path / "inbox.json"
    inbox = SealedInbox(bob, hb, ledger, state_path=state)
    sent = [b"%d" % i for i in range(40)]
    got: list[bytes] = []
    got_lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not done.is_set():
                batch = inbox.fetch(limit=3)
                with got_lock:
                    got.extend(m.body for m in batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for body in sent:
        ledger.mailbox_send(alice, hb, seal(bob.noise_public, body))
    deadline = time.monotonic() + 20
    while len(got) < len(sent) and time.monotonic() < deadline and not errors:
        time.sleep(0.01)
    done.set()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert sorted(got) == sorted(sent)  # every message, once
    assert inbox.cursor == _head(ledger, hb) and inbox.duplicates == 0
    inbox.close()
    with SealedInbox(bob, hb, ledger, state_path=state) as again:
        assert again.fetch() == [] and again.duplicates == 0


def test_a_handler_fetching_while_another_fetch_waits_for_it_does_not_deadlock(
    world: tuple,
) -> None:
    ledger, alice, bob, hb = world
    inbox = SealedInbox(bob, hb, ledger)
    message = seal(bob.noise_public, b"both ways")
    ledger.mailbox_send(alice, hb, message)
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"by mail only"))
    message_id = inbox._open(message, "direct").message_id
    # a direct delivery of the message is under way: its handler runs in this thread
    assert inbox._claim(message_id)
    outcome: dict[str, list[bytes]] = {}

    def other_fetch() -> None:
        outcome["other"] = [m.body for m in inbox.fetch()]

    other = threading.Thread(target=other_fetch, daemon=True)
    other.start()
    # the other fetch comes upon the message, and waits for the delivery's outcome
    deadline = time.monotonic() + 5
    while not inbox._settled._waiters:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the other fetch never waited"
        time.sleep(0.005)
    done = threading.Event()

    def watchdog() -> None:  # ends a deadlock, so that the test fails rather than hangs
        if not done.wait(10):
            inbox._settle(message_id, delivered=False)

    threading.Thread(target=watchdog, daemon=True).start()
    # the handler catches up on mail: had it waited for the other fetch to end, which
    # waits for the handler to return, neither would ever have gone on
    started = time.monotonic()
    outcome["handler"] = [m.body for m in inbox.fetch()]
    assert time.monotonic() - started < 5
    done.set()
    inbox._settle(message_id, delivered=True)  # the handler returned
    other.join(10)
    assert not other.is_alive()
    # the other fetch holds the batch and delivers it: each message once, in all
    assert sorted(outcome["handler"] + outcome["other"]) == [b"by mail only"]
    assert inbox.duplicates == 1
    assert inbox.fetch() == [] and inbox.cursor == _head(ledger, hb)


def test_a_handler_accepting_what_a_waiting_fetch_holds_does_not_deadlock(world: tuple) -> None:
    ledger, alice, bob, hb = world
    inbox = SealedInbox(bob, hb, ledger)
    first = seal(bob.noise_public, b"first")
    second = seal(bob.noise_public, b"second")
    ledger.mailbox_send(alice, hb, first)
    ledger.mailbox_send(alice, hb, second)
    second_id = inbox._open(second, "direct").message_id
    assert inbox._claim(second_id)  # this thread is a handler delivering "second"
    outcome: list[list[bytes]] = []
    other = threading.Thread(
        target=lambda: outcome.append([m.body for m in inbox.fetch()]), daemon=True
    )
    other.start()  # it claims "first", then waits for "second"'s delivery
    deadline = time.monotonic() + 5
    while not inbox._settled._waiters:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the fetch never waited"
        time.sleep(0.005)
    done = threading.Event()

    def watchdog() -> None:  # ends a deadlock, so that the test fails rather than hangs
        if not done.wait(10):
            inbox._settle(second_id, delivered=False)

    threading.Thread(target=watchdog, daemon=True).start()
    # the handler is given a copy of "first": a duplicate (the fetch delivers it), at
    # once, not a wait for the fetch, which waits for the handler
    started = time.monotonic()
    assert inbox.accept(first) is None
    assert time.monotonic() - started < 5
    done.set()
    inbox._settle(second_id, delivered=True)
    other.join(10)
    assert outcome == [[b"first"]] and inbox.duplicates == 2


# -- 2. the rejected counters ---------------------------------------------------------------------


def test_rejected_counts_lose_nothing_under_threads(world: tuple) -> None:
    _ledger, _alice, bob, hb = world
    inbox = SealedInbox(bob, hb)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    bad = [b"\x09\x09" + b"\x00" * 60, seal(HostIdentity.generate().noise_public, b"not bob's")]
    per_thread = 400
    snapshots: list[dict[str, int]] = []
    stop = threading.Event()

    def refuse(data: bytes) -> None:
        for _ in range(per_thread):
            with pytest.raises(E.SealedError):
                inbox.accept(data)

    reader_errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                counts = inbox.rejected
                snapshots.append({name: count for name, count in counts.items()})
        except BaseException as exc:  # the live dict: "changed size during iteration"
            reader_errors.append(exc)

    try:
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        threads = [threading.Thread(target=refuse, args=(bad[i % 2],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        stop.set()
        reader.join(10)
    finally:
        sys.setswitchinterval(old)
    assert reader_errors == []
    # a read-modify-write without a lock lost about half of them
    assert inbox.rejected == {
        "MalformedSealed": 4 * per_thread,
        "SealedDecryptError": 4 * per_thread,
    }
    # a snapshot is a copy: changing it changes nothing, and it never moves under a reader
    counts = inbox.rejected
    counts["MalformedSealed"] = 0
    assert inbox.rejected["MalformedSealed"] == 4 * per_thread
    for earlier, later in itertools.pairwise(snapshots):
        assert all(later.get(name, 0) >= count for name, count in earlier.items())


# -- closing -------------------------------------------------------------------------------


def test_a_fetch_under_way_when_the_inbox_closes_leaves_the_mail_to_the_next_inbox(
    world: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, alice, bob, hb = world
    ha = ledger.create_host(alice, alice.noise_public)
    state = tmp_path / "inbox.json"
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"anonymous"))
    mallory = HostIdentity.generate()  # her mail is checked (then refused) last
    ledger.mailbox_send(
        alice, hb, seal(bob.noise_public, b"forged", sender=mallory, sender_host=ha)
    )
    old = SealedInbox(bob, hb, ledger, state_path=state)
    real_get_host = ledger.get_host
    checking = threading.Event()
    release = threading.Event()

    def get_host(host_id: str) -> Any:
        if threading.current_thread().name == "old" and host_id == ha:
            checking.set()  # the first mail is claimed; the second's sender is checked
            assert release.wait(10)
        return real_get_host(host_id)

    monkeypatch.setattr(ledger, "get_host", get_host)
    outcome: list[object] = []

    def fetch_old() -> None:
        try:
            outcome.append([m.body for m in old.fetch()])
        except E.SealedError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=fetch_old, name="old", daemon=True)
    thread.start()
    assert checking.wait(10)
    old.close()  # (the process shuts the inbox down; a new one takes the file over)
    with SealedInbox(bob, hb, ledger, state_path=state) as successor:
        assert [m.body for m in successor.fetch()] == [b"anonymous"]
        cursor = successor.cursor
        release.set()
        thread.join(10)
        # the old inbox delivered it as well, and wrote its state over the successor's
        assert len(outcome) == 1 and isinstance(outcome[0], E.SealedError)
        assert "closed" in str(outcome[0])
        assert persisted_cursor(state) == cursor


def test_a_closed_inbox_refuses_before_opening(
    world: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, alice, bob, hb = world
    ha = ledger.create_host(alice, alice.noise_public)
    inbox = SealedInbox(bob, hb, ledger)
    inbox.close()
    inbox.close()  # (idempotent)
    lookups: list[str] = []
    real_get_host = ledger.get_host
    monkeypatch.setattr(ledger, "get_host", lambda h: lookups.append(h) or real_get_host(h))
    proven = seal(bob.noise_public, b"hi", sender=alice, sender_host=ha)
    with pytest.raises(E.SealedError, match="closed"):
        inbox.accept(proven)
    with pytest.raises(E.SealedError, match="closed"):
        inbox.accept(b"\x09\x09" + b"\x00" * 60)  # not counted as refused: not looked at
    assert lookups == [] and inbox.rejected == {}


# -- the state file ----------------------------------------------------------------------------


def test_a_state_file_reached_through_a_symlink_stays_one_file(
    world: tuple, tmp_path: Path
) -> None:
    ledger, alice, bob, hb = world
    real = tmp_path / "state" / "inbox.json"
    real.parent.mkdir()
    link = tmp_path / "inbox-link.json"
    link.symlink_to(real)
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"by mail"))
    direct = seal(bob.noise_public, b"direct")
    with SealedInbox(bob, hb, ledger, state_path=link) as inbox:
        assert [m.body for m in inbox.fetch()] == [b"by mail"]
        assert inbox.accept(direct) is not None
    # the snapshot replaced the link with a file of its own, and the journal went next
    # to the link: the real file knew nothing, and both messages came again through it
    assert link.is_symlink() and real.is_file()
    with SealedInbox(bob, hb, ledger, state_path=real) as inbox:
        assert inbox.fetch() == [] and inbox.accept(direct) is None
    with SealedInbox(bob, hb, ledger, state_path=link) as inbox:
        assert inbox.fetch() == [] and inbox.accept(direct) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("inbox")] == ["inbox-link.json"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names a descriptor's file by /proc")
def test_the_snapshot_is_on_the_disk_before_it_replaces_the_old_one(
    world: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, alice, bob, hb = world
    state = tmp_path / "inbox.json"
    journal = tmp_path / "inbox.json.log"
    inbox = SealedInbox(bob, hb, ledger, state_path=state)
    assert inbox.accept(seal(bob.noise_public, b"direct")) is not None  # journaled
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"mail"))
    steps: list[tuple[str, str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), journal.stat().st_size))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        steps.append(("replace", str(src), journal.stat().st_size))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    inbox._file.save(inbox.cursor)  # (as when the journal outgrows the snapshot)
    monkeypatch.undo()
    # (the rename without the fsync: a power cut could leave an empty state file, which
    # the inbox refuses to open, or the old snapshot with the journal emptied)
    tmp = str(tmp_path.resolve() / "inbox.json.tmp")
    assert [(step, path) for step, path, _ in steps] == [
        ("fsync", tmp),
        ("replace", tmp),
        ("fsync", str(tmp_path.resolve())),
    ]
    assert all(size > 0 for _, _, size in steps)  # the journal is emptied only after
    assert journal.read_bytes() == b""
    inbox.close()


def test_a_fetch_waiting_for_mail_lets_other_fetches_through(world: tuple) -> None:
    ledger, alice, bob, hb = world
    inbox = SealedInbox(bob, hb, ledger)
    inbox.fetch()  # (checks the host's key once)
    got: list[bytes] = []
    waiter = threading.Thread(
        target=lambda: got.extend(m.body for m in inbox.fetch(wait=10)), daemon=True
    )
    waiter.start()
    time.sleep(0.2)  # it waits for mail
    started = time.monotonic()
    assert inbox.fetch() == []  # not behind the other's wait
    assert time.monotonic() - started < 2
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"news"))
    waiter.join(10)
    assert not waiter.is_alive() and got == [b"news"]
    # a limit of 0 reads nothing, for as long as it was asked to wait (no busy loop)
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"later"))
    started = time.monotonic()
    assert inbox.fetch(limit=0, wait=0.3) == []
    assert time.monotonic() - started >= 0.25
    assert [m.body for m in inbox.fetch()] == [b"later"]


REPO = ROOT

# The recipient's process: fetches its mailbox, handing each message to a handler that
# stores the body (one fsynced line) -- except the message numbered ``kill_at``, where it
# signals through a file and sleeps until the test kills it (SIGKILL).
CHILD = r"""
import os, sys, time
from dtp.ledger.local import LocalLedger
from dtp.identity.keys import HostIdentity
from dtp.messaging.sealed import SealedInbox

ledger_path, state, store, ready, keystring, noise, host, kill_at = sys.argv[1:]
bob = HostIdentity.from_sui_keystring(keystring, bytes.fromhex(noise))
ledger = LocalLedger(ledger_path)

def handle(message):
    if message.body == kill_at.encode():
        with open(ready, "w") as f:
            f.write("handling")
        time.sleep(600)
    with open(store, "ab") as f:
        f.write(message.body + b"\n")
        f.flush()
        os.fsync(f.fileno())

with SealedInbox(bob, host, ledger, state_path=state) as inbox:
    inbox.fetch(limit=3, on_message=handle)
    inbox.fetch(limit=1000, on_message=handle)
"""


def _run_recipient(
    tmp_path: Path, bob: HostIdentity, hb: str, kill_at: str, *, expect_kill: bool
) -> None:
    """Run the recipient's process; with ``expect_kill``, SIGKILL it once it signals that
    it is handling message ``kill_at``."""
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    args = [
        str(tmp_path / "ledger.db"),
        str(tmp_path / "inbox.json"),
        str(tmp_path / "store"),
        str(ready),
        bob.to_sui_keystring(),
        bob.noise_private_bytes().hex(),
        hb,
        kill_at,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
    )
    try:
        if not expect_kill:
            _out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
            return
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the recipient ended early: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the recipient never reached the kill point"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("kill_at", ["m1", "m4"])
def test_a_recipient_killed_while_handling_mail_gets_each_message_once(
    world: tuple, tmp_path: Path, kill_at: str
) -> None:
    ledger, alice, bob, hb = world
    bodies = [f"m{i}".encode() for i in range(7)]
    for body in bodies:
        ledger.mailbox_send(alice, hb, seal(bob.noise_public, body, recipient_host=hb))
    # killed in the middle of the first batch (m1), or of the second (m4): the mail
    # handed over so far is stored, the rest not yet
    _run_recipient(tmp_path, bob, hb, kill_at, expect_kill=True)
    store = tmp_path / "store"
    before = store.read_bytes().split() if store.exists() else []
    assert before == bodies[: int(kill_at[1:])]
    _run_recipient(tmp_path, bob, hb, "never", expect_kill=False)
    # nothing lost, nothing twice (fetch saves a batch only after the handler ran, so
    # the killed message and the rest of its batch are delivered again)
    assert store.read_bytes().split() == bodies
    with SealedInbox(bob, hb, ledger, state_path=tmp_path / "inbox.json") as inbox:
        assert inbox.fetch() == []


def test_a_handler_that_fails_leaves_its_message_and_the_rest_to_the_next_fetch(
    world: tuple, tmp_path: Path
) -> None:
    ledger, alice, bob, hb = world
    for body in (b"a", b"b", b"c"):
        ledger.mailbox_send(alice, hb, seal(bob.noise_public, body))
    stored: list[bytes] = []

    def store_until_b(message: OpenedMessage) -> None:
        if message.body == b"b":
            raise RuntimeError("the application's store is unavailable")
        stored.append(message.body)

    state = tmp_path / "inbox.json"
    with SealedInbox(bob, hb, ledger, state_path=state) as inbox:
        with pytest.raises(RuntimeError, match="store is unavailable"):
            inbox.fetch(on_message=store_until_b)
        assert stored == [b"a"]
    # a restart: "a" is seen (saved once its handler returned), "b" and "c" are not
    with SealedInbox(bob, hb, ledger, state_path=state) as inbox:
        got = inbox.fetch(on_message=lambda m: stored.append(m.body))
        assert [m.body for m in got] == [b"b", b"c"]
        assert stored == [b"a", b"b", b"c"]
        assert inbox.duplicates == 1
        assert inbox.fetch(on_message=stored.append) == []


def test_the_sender_host_is_reported_as_the_ledger_spells_it(world: tuple) -> None:
    ledger, alice, bob, hb = world
    ha = ledger.create_host(alice, alice.noise_public)
    blocked = {ha}  # an application refusing a host by its ID
    spellings = ["0X" + ha[2:].upper(), "0x" + ha[2:].lstrip("0").upper() or "0x0"]
    with SealedInbox(bob, hb, ledger) as inbox, SealedInbox(bob, hb, verify_hosts=False) as bare:
        for spelled in spellings:
            # the ledger check took the sender's spelling as its host; the application was
            # told the spelling, which its list of hosts did not match
            for box in (inbox, bare):
                sealed = seal(bob.noise_public, b"hi", sender=alice, sender_host=spelled)
                message = box.accept(sealed)
                assert message is not None and message.sender_host == ha
                assert message.sender_host in blocked
        assert (
            open_sealed(
                bob, seal(bob.noise_public, b"x", sender=alice, sender_host=spellings[0])
            ).sender_host
            == ha
        )


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
    # max_age long enough that each message is accepted within it on a loaded machine
    inbox = SealedInbox(me, HOST, max_seen=10, max_age=0.5)
    _flood(inbox, me, 30)
    time.sleep(1.1)  # twice max_age passed: none is young any more
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
    start."""
    import dtp.identity.keys

    me = HostIdentity.generate()
    inbox = SealedInbox(me, HOST, state_path=tmp_path / "inbox.json")
    message_id = b"\x01" * 16

    def failing(path: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(dtp.identity.keys, "_fsync_directory", failing)
    inbox._settle_all([message_id], True, cursor="after-the-batch")
    assert inbox.cursor == "after-the-batch" and message_id in inbox._seen
    inbox.close()
    monkeypatch.undo()
    again = SealedInbox(me, HOST, state_path=tmp_path / "inbox.json")
    assert again.cursor == "after-the-batch" and message_id in again._seen
    again.close()
