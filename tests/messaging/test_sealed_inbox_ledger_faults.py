"""Sealed messages: a ledger that cannot be reached while an inbox checks a
sender loses no mail (the batch is read again), host IDs compare as object IDs, and a
message the online recipient refused is not paid into its mailbox."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.rpc import RpcClient, RpcServer
from dtp.messaging.sealed import SealedInbox, open_sealed, seal, send_sealed


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[LocalLedger, HostIdentity, HostIdentity, str, str]]:
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    alice, bob = HostIdentity.generate(), HostIdentity.generate()
    ha = ledger.create_host(alice, alice.noise_public)
    hb = ledger.create_host(bob, bob.noise_public)
    yield ledger, alice, bob, ha, hb
    ledger.close()


def _unavailable() -> ChainError:
    # what SuiLedger raises when its node cannot be reached (sui_client.LedgerUnavailable)
    return ChainError("the node cannot be reached", name="LedgerUnavailable", module="sui")


def test_an_unreachable_ledger_while_checking_a_sender_loses_no_mail(
    world: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, alice, bob, ha, hb = world
    for i in range(3):
        body = b"m%d" % i
        ledger.mailbox_send(alice, hb, seal(bob.noise_public, body, sender=alice, sender_host=ha))
    state = tmp_path / "inbox.json"
    inbox = SealedInbox(bob, hb, ledger, state_path=state)

    real_get_host = ledger.get_host
    calls = 0

    def flaky_get_host(host_id: str) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:  # the outage hits the second message's sender check
            raise _unavailable()
        return real_get_host(host_id)

    monkeypatch.setattr(ledger, "get_host", flaky_get_host)
    # the outage is the ledger's, not a forgery: it propagates, nothing is consumed
    with pytest.raises(ChainError) as caught:
        inbox.fetch()
    assert caught.value.name == "LedgerUnavailable"
    assert inbox.rejected == {} and inbox.cursor is None

    # once the ledger answers, the whole batch arrives, in order, exactly once
    assert [m.body for m in inbox.fetch()] == [b"m0", b"m1", b"m2"]
    assert inbox.fetch() == [] and inbox.duplicates == 0
    # and the state file agrees: a restarted inbox has nothing new
    inbox.close()
    assert SealedInbox(bob, hb, ledger, state_path=state).fetch() == []


def test_open_sealed_propagates_an_outage_but_refuses_a_host_that_does_not_exist(
    world: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, alice, bob, ha, _hb = world
    sealed = seal(bob.noise_public, b"hi", sender=alice, sender_host=ha)

    def down(host_id: str) -> object:
        raise _unavailable()

    monkeypatch.setattr(ledger, "get_host", down)
    with pytest.raises(ChainError) as caught:
        open_sealed(bob, sealed, ledger=ledger)
    assert not isinstance(caught.value, E.SealedError)
    monkeypatch.undo()

    missing = "0x" + "77" * 32
    ghost = seal(bob.noise_public, b"hi", sender=alice, sender_host=missing)
    with pytest.raises(E.ForgedSender):
        open_sealed(bob, ghost, ledger=ledger)
    malformed = seal(bob.noise_public, b"hi", sender=alice, sender_host="not an id")
    with pytest.raises(E.ForgedSender):
        open_sealed(bob, malformed, ledger=ledger)


def test_a_failed_batch_releases_its_claims_for_direct_delivery(
    world: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, alice, bob, ha, hb = world
    first = seal(bob.noise_public, b"first", sender=alice, sender_host=ha)
    ledger.mailbox_send(alice, hb, first)
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"second", sender=alice, sender_host=ha))
    inbox = SealedInbox(bob, hb, ledger)
    real_get_host = ledger.get_host
    calls = 0

    def flaky_get_host(host_id: str) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise _unavailable()
        return real_get_host(host_id)

    monkeypatch.setattr(ledger, "get_host", flaky_get_host)
    with pytest.raises(ChainError):
        inbox.fetch()
    # the first message was claimed by the failed batch, then released: the same bytes
    # arriving directly are new (accept would block on a claim never settled, or drop it)
    got = inbox.accept(first)
    assert got is not None and got.body == b"first"
    assert [m.body for m in inbox.fetch()] == [b"second"]
    assert inbox.duplicates == 1


def test_host_ids_compare_as_object_ids(world: tuple) -> None:
    ledger, alice, bob, _ha, hb = world
    shouted = "0x" + hb[2:].upper()
    # the recipient named in another spelling of the same ID, and mail sent to one
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"one", recipient_host=shouted))
    ledger.mailbox_send(alice, shouted, seal(bob.noise_public, b"two", recipient_host=hb))
    for host_id in (hb, shouted):
        inbox = SealedInbox(bob, host_id, ledger)
        assert sorted(m.body for m in inbox.fetch()) == [b"one", b"two"]
        assert inbox.rejected == {}
    # another host is still another host
    other = "0x" + "12" * 32
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"three", recipient_host=other))
    inbox = SealedInbox(bob, hb, ledger)
    assert sorted(m.body for m in inbox.fetch()) == [b"one", b"two"]
    assert inbox.rejected == {"WrongRecipient": 1}


def test_the_same_mail_twice_in_one_batch_is_delivered_once(world: tuple) -> None:
    ledger, alice, bob, ha, hb = world
    sealed = seal(bob.noise_public, b"twice", sender=alice, sender_host=ha)
    ledger.mailbox_send(alice, hb, sealed)
    ledger.mailbox_send(alice, hb, sealed)
    inbox = SealedInbox(bob, hb, ledger)
    assert [m.body for m in inbox.fetch()] == [b"twice"]
    assert inbox.duplicates == 1


def test_a_message_the_recipient_refused_does_not_go_to_the_mailbox(world: tuple) -> None:
    ledger, alice, bob, ha, hb = world
    inbox = SealedInbox(bob, hb, ledger)
    rpc = RpcServer()
    inbox.register(rpc, lambda message: None)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=bob)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(server.address, server_key=bob.noise_public, timeout=5)
    try:
        client = RpcClient(sock, timeout=5)
        carol = HostIdentity.generate()
        # sealed to the wrong key: bob cannot open it, and would not from the mailbox either
        wrong_key = seal(carol.noise_public, b"for carol", sender=alice, sender_host=ha)
        with pytest.raises(E.InvalidParams):
            send_sealed(wrong_key, recipient_host=hb, client=client, ledger=ledger, signer=alice)
        assert inbox.rejected == {"SealedDecryptError": 1}
        events, _ = ledger.events(None, EventFilter(type="MailDeposited"), 10)
        assert events == []  # no mail paid for
        # a message bob accepts still goes directly
        good = seal(bob.noise_public, b"for bob", sender=alice, sender_host=ha)
        assert send_sealed(good, recipient_host=hb, client=client, ledger=ledger) == "direct"
    finally:
        sock.close()
        server.close()
        rpc.close()
        thread.join(5)


def test_a_delivery_appends_to_the_journal_instead_of_rewriting_the_state(
    world: tuple, tmp_path: Path
) -> None:
    ledger, alice, bob, _ha, hb = world
    state = tmp_path / "inbox.json"
    journal = tmp_path / "inbox.json.log"
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"by mail"))
    inbox = SealedInbox(bob, hb, ledger, state_path=state)
    snapshot = state.stat()  # (written at the inbox's first start)
    assert [m.body for m in inbox.fetch()] == [b"by mail"]  # its id and the cursor: 2 lines
    direct = [seal(bob.noise_public, b"direct %d" % i) for i in range(5)]
    for message in direct:
        assert inbox.accept(message) is not None
    # each delivery appends to the journal, never rewrites the whole file (which costs
    # 86 ms per message at 100 000 ids)
    assert state.stat().st_ino == snapshot.st_ino and state.stat().st_size == snapshot.st_size
    assert len(journal.read_bytes().splitlines()) == 2 + 5
    # a restarted inbox knows all six
    inbox.close()
    again = SealedInbox(bob, hb, ledger, state_path=state)
    assert all(again.accept(message) is None for message in direct)
    assert again.fetch() == [] and again.duplicates == 5


def test_the_journal_is_folded_into_the_state_and_survives_a_torn_line(
    world: tuple, tmp_path: Path
) -> None:
    _ledger, _alice, bob, _ha, hb = world
    state = tmp_path / "inbox.json"
    journal = tmp_path / "inbox.json.log"
    inbox = SealedInbox(bob, hb, state_path=state)
    ids = [i.to_bytes(16, "big") for i in range(1, 1100)]
    for message_id in ids:
        assert inbox._claim(message_id)
        inbox._settle(message_id, delivered=True)
    # past 1024 journaled ids the journal was folded into the snapshot
    assert state.exists() and len(journal.read_bytes().splitlines()) < 1024
    # a line cut short by a stop is ignored; the complete ones count
    with journal.open("ab") as f:
        f.write(b"00" * 16 + b"\n" + b"ab" * 5)
    inbox.close()
    again = SealedInbox(bob, hb, state_path=state)
    assert list(again._seen) == [*ids, b"\x00" * 16]
    again.close()
    journal.write_bytes(b"not hex\n")
    with pytest.raises(E.SealedError, match="journal"):
        SealedInbox(bob, hb, state_path=state)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"recipient_host": b"0x1"}, TypeError),  # sealed, then refused by open_sealed
        ({"recipient_host": "\ud800"}, ValueError),  # was UnicodeEncodeError
        ({"sender_host": "\ud800", "with_sender": True}, ValueError),
        ({"sender_host": 5, "with_sender": True}, TypeError),  # was AttributeError
        ({"now_ms": 1 << 70}, ValueError),  # was OverflowError
        ({"now_ms": "123"}, TypeError),  # was sealed as 123
        ({"now_ms": True}, TypeError),  # was sealed as 1
        ({"now_ms": float("inf")}, ValueError),  # was OverflowError
        ({"now_ms": float("nan")}, ValueError),
        ({"ephemeral": b"short"}, ValueError),  # was NoiseValueError
    ],
)
def test_seal_refuses_bad_arguments_with_typed_errors(
    world: tuple, kwargs: dict, error: type[Exception]
) -> None:
    _ledger, alice, bob, _ha, _hb = world
    kwargs = dict(kwargs)
    if kwargs.pop("with_sender", False):
        kwargs["sender"] = alice
    with pytest.raises(error) as caught:
        seal(bob.noise_public, b"hi", **kwargs)
    assert type(caught.value) is error


def test_seal_still_takes_a_float_or_negative_clock(world: tuple) -> None:
    _ledger, _alice, bob, _ha, _hb = world
    assert open_sealed(bob, seal(bob.noise_public, b"a", now_ms=1.5)).sent_ms == 1
    assert open_sealed(bob, seal(bob.noise_public, b"b", now_ms=-5)).sent_ms == -5


def test_one_inbox_per_state_file_until_it_is_closed(world: tuple, tmp_path: Path) -> None:
    ledger, alice, bob, _ha, hb = world
    state = tmp_path / "inbox.json"
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"once"))
    with SealedInbox(bob, hb, ledger, state_path=state) as first:
        # a second inbox on the file would deliver every message again
        with pytest.raises(E.SealedError, match="in use by another SealedInbox"):
            SealedInbox(bob, hb, ledger, state_path=state)
        link = tmp_path / "link.json"
        link.symlink_to(state)  # the same file by another name
        with pytest.raises(E.SealedError, match="in use"):
            SealedInbox(bob, hb, ledger, state_path=link)
        assert [m.body for m in first.fetch()] == [b"once"]
    # closed: the next one takes over, and has nothing new
    with SealedInbox(bob, hb, ledger, state_path=state) as second:
        assert second.fetch() == []
    # an inbox dropped unclosed lets go of the file at once (nothing refers back to
    # it), and one in a reference cycle once the cycle is collected
    SealedInbox(bob, hb, ledger, state_path=state)
    SealedInbox(bob, hb, ledger, state_path=state).close()
    cycle: list[object] = [SealedInbox(bob, hb, ledger, state_path=state)]
    cycle.append(cycle)
    del cycle
    gc.collect()
    SealedInbox(bob, hb, ledger, state_path=state).close()


def test_max_age_refuses_an_old_copy_whose_id_the_inbox_forgot(world: tuple) -> None:
    ledger, alice, bob, ha, hb = world
    now_ms = time.time_ns() // 1_000_000
    old = seal(
        bob.noise_public, b"old news", sender=alice, sender_host=ha, now_ms=now_ms - 7_200_000
    )
    plain = SealedInbox(bob, hb, ledger, max_seen=2)
    guarded = SealedInbox(bob, hb, ledger, max_seen=2, max_age=3600)
    for inbox in (plain, guarded):
        assert inbox.accept(seal(bob.noise_public, b"fresh")) is not None  # dated now
    assert plain.accept(old) is not None
    for i in range(2):  # two more: the old message's id is forgotten
        plain.accept(seal(bob.noise_public, b"%d" % i))
    # a copy of it, posted again by anyone: delivered twice without max_age
    assert plain.accept(old) is not None
    with pytest.raises(E.SealedExpired):
        guarded.accept(old)
    assert guarded.rejected == {"SealedExpired": 1}
    # through the mailbox too: skipped and counted, the rest delivered
    ledger.mailbox_send(alice, hb, old)
    ledger.mailbox_send(alice, hb, seal(bob.noise_public, b"today"))
    assert [m.body for m in guarded.fetch()] == [b"today"]
    assert guarded.rejected == {"SealedExpired": 2}


def test_seal_dates_a_message_with_the_wall_clock() -> None:
    bob = HostIdentity.generate()
    before = time.time_ns() // 1_000_000
    opened = open_sealed(bob, seal(bob.noise_public, b"x"))
    assert before <= opened.sent_ms <= time.time_ns() // 1_000_000
    assert open_sealed(bob, seal(bob.noise_public, b"x", now_ms=0)).sent_ms == 0


@pytest.mark.parametrize("max_age", [0, -1, float("inf"), float("nan"), "60", True])
def test_max_age_must_be_a_positive_number_of_seconds(world: tuple, max_age: object) -> None:
    _ledger, _alice, bob, _ha, hb = world
    with pytest.raises(ValueError, match="max_age"):
        SealedInbox(bob, hb, max_age=max_age)  # type: ignore[arg-type]
