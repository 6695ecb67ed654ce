"""Sealed messages, session 19 review: mail fetched from the ledger mailbox reaches the
application exactly once even when the recipient's process is killed while it handles
a message (``fetch(on_message=...)``): before, ``fetch`` saved the batch's ids and the
cursor before returning it, so a process killed before it had stored the messages lost
them for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.keys import HostIdentity
from dtp.messaging.sealed import OpenedMessage, SealedInbox, open_sealed, seal
from tests.sealed_world import SealedWorld, sealed_world
from tests.support.paths import ROOT

REPO = ROOT

# The recipient's process: fetches its mailbox, handing each message to a handler that
# stores the body (one fsynced line) -- except the message numbered ``kill_at``, where it
# signals through a file and sleeps until the test kills it (SIGKILL).
CHILD = r"""
import os, sys, time
from dtp.chain.local import LocalLedger
from dtp.keys import HostIdentity
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


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SealedWorld]:
    with sealed_world(tmp_path) as setting:
        yield setting


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
    # nothing lost, nothing twice (fetch used to save the batch before the handler ran,
    # so the killed message and the rest of its batch were never delivered)
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
