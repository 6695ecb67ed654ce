"""The money path of paid connections under adversarial input and failures: receipts
that name another connection, a receipt store whose writes fail or whose rows are
damaged, the client's refund racing the server's settlement, and the receipt writer's
thread. Every test runs on a LocalLedger in a real SQLite file and checks that all MIST
is where it should be (``audit``)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dtp.errors import ConnectionStateError, InvalidReceipt, MalformedReceipt
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, Sla, TransportControl
from dtp.ledger.local import LocalLedger
from dtp.payments._gate import ReceiptGate
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._settlement import claim_and_settle, collect_refund, recover_unclaimed
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, ReceiptScope, check_receipt, fee
from tests.support.scopes import scope_of
from tests.support.settlements import settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
DEPOSIT = 5000
#: Bound for "does not hang" waits (a loaded CI machine is slow; nothing here is timed).
PATIENCE = 60.0


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


CLIENT, SERVER, MALLORY = ident(0x61), ident(0x62), ident(0x63)


def conserved(ledger: LocalLedger) -> bool:
    a = ledger.audit()
    return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]


def setup_host(ledger: LocalLedger) -> str:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, 7, "echo", SLA)
    return host_id


#: The receipt scopes of the connections open_for opened (others: tests.support.scopes')
_SCOPES: dict[str, ReceiptScope] = {}


def _scope(cid: str) -> ReceiptScope:
    return _SCOPES.get(cid) or scope_of(cid)


def open_for(ledger: LocalLedger, host_id: str, client: HostIdentity) -> str:
    ledger.faucet(client.sui_address, 100_000)
    cap = ledger.create_spending_cap(client, 50_000)
    cid = ledger.open_connection(client, host_id, 7, cap, DEPOSIT).connection_id
    _SCOPES[cid] = ledger.receipt_scope(cid)
    return cid


def signed(cid: str, total_bytes: int, nonce: int, signer: HostIdentity = CLIENT) -> Receipt:
    return Receipt(_scope(cid), total_bytes, 0, fee(SLA, total_bytes, 0), nonce).sign(signer)


def gate_for(cid: str, key: HostIdentity, store: ReceiptStore) -> ReceiptGate:
    return ReceiptGate(
        scope=_scope(cid),
        client_public_key=key.ed25519_public,
        sla=SLA,
        deposited=DEPOSIT,
        store=store,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    led = LocalLedger(tmp_path / "ledger.db", clock_ms=1_000_000)
    yield led
    try:
        assert conserved(led)
    finally:
        led.close()


# -- a receipt naming another connection ------------------------------------------------------


def test_a_receipt_naming_another_connection_is_refused_and_poisons_nothing(
    tmp_path: Path, ledger: LocalLedger
) -> None:
    host_id = setup_host(ledger)
    victim = open_for(ledger, host_id, CLIENT)
    mine = open_for(ledger, host_id, MALLORY)
    with ReceiptStore(tmp_path / "receipts.db") as store:
        assert gate_for(victim, CLIENT, store).receive(signed(victim, 100 * 1024, 1).encode())
        # Mallory signs a receipt for its own connection (the signature is checked over
        # the gate's scope) but the frame names the victim's escrow and connection, with
        # a nonce no genuine receipt of the victim's will ever pass
        planted = signed(mine, 400 * 1024, 2**63, MALLORY)
        frame = bytearray(planted.encode())
        frame[33:97] = _scope(victim).raw()[32:]  # (escrow and connection IDs)
        gate = gate_for(mine, MALLORY, store)
        with pytest.raises(InvalidReceipt) as refused:
            gate.receive(bytes(frame))
        assert refused.value.name == "EBadSignature"
        assert gate.violation is not None  # the connection is closed for it
        assert gate.payable() == 0  # and served nothing on it
        with pytest.raises(InvalidReceipt):
            check_receipt(
                Receipt.decode(bytes(frame)),
                scope=_scope(mine),
                sla=SLA,
                public_key=MALLORY.ed25519_public,
                deposited=DEPOSIT,
            )
        # the victim's row is its own: its next genuine receipt is kept and claimed
        held = store.latest(victim)
        assert held is not None and held.receipt.nonce == 1
        assert gate_for(victim, CLIENT, store).receive(signed(victim, 200 * 1024, 2).encode())
        paid = claim_and_settle(ledger, SERVER, victim, store)
        assert paid is not None and (paid.claimed, paid.refunded) == (2000, DEPOSIT - 2000)
        nothing = claim_and_settle(ledger, SERVER, mine, store)
        assert nothing is not None and (nothing.claimed, nothing.refunded) == (0, DEPOSIT)
        assert list(store.unclaimed()) == []
    assert ledger.balance(SERVER.sui_address) == 2000


# -- a receipt store whose writes fail ---------------------------------------------------------


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {PATIENCE} s: {what}")
        time.sleep(0.01)


def test_a_failed_receipt_write_is_tried_again_and_claimable_meanwhile(
    tmp_path: Path, ledger: LocalLedger, caplog: pytest.LogCaptureFixture
) -> None:
    host_id = setup_host(ledger)
    cid = open_for(ledger, host_id, CLIENT)
    path = tmp_path / "receipts.db"
    store = ReceiptStore(path)
    # Another handle makes every write of a receipt fail, as a store locked past the
    # busy timeout or a full disk does (a real SQLite error in the writer's commit)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON receipts "
        "BEGIN SELECT RAISE(ABORT, 'the disk refuses'); END"
    )
    writer = ReceiptWriter(store)
    counted = threading.Event()
    try:
        receipt = signed(cid, 300 * 1024, 1)
        with caplog.at_level(logging.ERROR, logger="dtp.payments._receipt_writer"):
            writer.submit(receipt, lambda r: counted.set())
            _wait_for(
                lambda: any("cannot store receipts" in r.message for r in caplog.records),
                "the failed write",
            )
        assert not counted.is_set()  # not on disk: it does not count
        assert store.latest(cid) is None
        # the receipt is still the writer's: a settlement meanwhile claims it
        held = writer.latest(cid)
        assert held is not None and held.receipt == receipt
        # the disk comes back: the receipt is written, counted, and marked claimed
        other.execute("DROP TRIGGER refuse")
        assert counted.wait(PATIENCE)
        settlement = claim_and_settle(ledger, SERVER, cid, writer)
        assert settlement is not None and settlement.claimed == 3000
        assert writer.flush(timeout=PATIENCE)
        stored = store.latest(cid)
        assert stored is not None and stored.receipt == receipt and stored.unclaimed == 0
    finally:
        assert writer.close(PATIENCE)
        other.close()
        store.close()
    assert ledger.balance(SERVER.sui_address) == 3000
    assert settled_escrow(ledger, cid).refunded == DEPOSIT - 3000


def test_a_settlement_while_the_store_fails_claims_the_newest_receipt(
    tmp_path: Path, ledger: LocalLedger, caplog: pytest.LogCaptureFixture
) -> None:
    host_id = setup_host(ledger)
    cid = open_for(ledger, host_id, CLIENT)
    path = tmp_path / "receipts.db"
    store = ReceiptStore(path)
    assert store.keep(signed(cid, 100 * 1024, 1))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON receipts "
        "BEGIN SELECT RAISE(ABORT, 'the disk refuses'); END"
    )
    writer = ReceiptWriter(store)
    try:
        newer = signed(cid, 400 * 1024, 2)
        with caplog.at_level(logging.ERROR, logger="dtp.payments._receipt_writer"):
            writer.submit(newer, lambda r: None)
            _wait_for(
                lambda: any("cannot store receipts" in r.message for r in caplog.records),
                "the failed write",
            )
        # the server ends the connection while the write is still failing: it claims
        # the receipt it served on (4000), not the one on disk (1000)
        settlement = claim_and_settle(ledger, SERVER, cid, writer)
        assert settlement is not None
        assert (settlement.claimed, settlement.refunded) == (4000, DEPOSIT - 4000)
    finally:
        other.execute("DROP TRIGGER refuse")
        assert writer.close(PATIENCE)
        other.close()
        stored = store.latest(cid)
        store.close()
    assert stored is not None and stored.receipt.nonce == 2 and stored.unclaimed == 0
    assert ledger.balance(SERVER.sui_address) == 4000


def test_a_bad_claimed_amount_is_refused_and_the_writer_lives_on(tmp_path: Path) -> None:
    with ReceiptStore(tmp_path / "receipts.db") as store:
        writer = ReceiptWriter(store)
        cid = "0x" + "ab" * 32
        try:
            for bad in (-1, 2**64, 1.5, True):
                with pytest.raises(ValueError):
                    writer.mark_claimed(cid, bad)  # type: ignore[arg-type]
            kept = threading.Event()
            writer.submit(signed(cid, 1024, 1), lambda r: kept.set())
            assert kept.wait(PATIENCE)
            assert writer.flush(timeout=PATIENCE)
        finally:
            assert writer.close(PATIENCE)


def test_a_writer_whose_store_keeps_failing_still_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON receipts "
                "BEGIN SELECT RAISE(ABORT, 'the disk refuses'); END"
            )
            writer = ReceiptWriter(store)
            cid = "0x" + "cd" * 32
            with caplog.at_level(logging.ERROR, logger="dtp.payments._receipt_writer"):
                receipt = signed(cid, 2048, 1)
                writer.submit(receipt, lambda r: None)
                assert not writer.flush(cid, timeout=0.2)  # still failing: not idle
                # tried again until the close's timeout, then given up rather than hang
                # the server: close() says so, and the receipt is logged whole, for a
                # claim by hand
                assert not writer.close(1.0)
            assert writer.stopped and writer.given_up == (receipt,)
            assert store.latest(cid) is None
            given_up = [r.message for r in caplog.records if "given up at close" in r.message]
            assert given_up and receipt.encode().hex() in given_up[0]
        finally:
            other.close()


def test_a_receipt_spelled_short_is_found_under_its_full_id(tmp_path: Path) -> None:
    with ReceiptStore(tmp_path / "receipts.db") as store:
        writer = ReceiptWriter(store)
        try:
            short = "0xABC"
            receipt = signed(short, 1024, 1)
            kept = threading.Event()
            writer.submit(receipt, lambda r: kept.set())
            held = writer.latest("0x" + "0" * 61 + "abc")
            assert held is not None and held.receipt.nonce == 1
            assert writer.flush(short, timeout=PATIENCE) and kept.is_set()
        finally:
            assert writer.close(PATIENCE)


# -- a damaged receipt store -------------------------------------------------------------------


def test_a_damaged_row_does_not_stop_recovery_of_the_others(
    tmp_path: Path, ledger: LocalLedger
) -> None:
    host_id = setup_host(ledger)
    first = open_for(ledger, host_id, CLIENT)
    second = open_for(ledger, host_id, MALLORY)
    damaged = open_for(ledger, host_id, ident(0x64))
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as store:
        assert store.keep(signed(first, 100 * 1024, 1))
        assert store.keep(signed(damaged, 200 * 1024, 1, ident(0x64)))
        assert store.keep(signed(second, 300 * 1024, 1, MALLORY))
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("UPDATE receipts SET encoded = ? WHERE connection_id = ?", (b"junk", damaged))
        raw.execute("UPDATE receipts SET claimed_amount = 'x' WHERE connection_id = ?", (second,))
        raw.execute(
            "INSERT INTO receipts (connection_id, nonce, total_amount, encoded, updated_ms) "
            "VALUES ('0x01', 'a', 'b', 'not bytes', 0)"
        )
    finally:
        raw.close()
    with ReceiptStore(path) as store:
        with pytest.raises(MalformedReceipt):
            store.latest(damaged)
        with pytest.raises(MalformedReceipt):
            store.latest(second)
        done = recover_unclaimed(ledger, SERVER, store)
        assert [(c, s.claimed) for c, s in done] == [(first, 1000)]
        assert [s.receipt.connection_id for s in store.unclaimed()] == []
    # the damaged ones were left alone: still open, all their deposit in escrow
    for cid in (second, damaged):
        tc = ledger.get_connection(cid)
        assert not tc.settled
        assert ledger.get_escrow(tc.escrow).claimed == 0
    assert ledger.balance(SERVER.sui_address) == 1000


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "receipts.db"
    path.write_bytes(b"this is no database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        ReceiptStore(path)
    assert path.read_bytes() == b"this is no database" * 100


# -- the client's refund racing the server's settlement ----------------------------------------


class _RacingLedger(LocalLedger):
    """The client's handle on the ledger file; right after it reads the connection
    (once), the server settles it through a handle of its own -- the interleaving of
    a server settling as the client collects its refund."""

    server_ledger: LocalLedger
    store: ReceiptStore | None = None
    raced = False

    def get_connection(self, connection_id: str) -> TransportControl:
        tc = super().get_connection(connection_id)
        if not self.raced:
            self.raced = True
            settlement = claim_and_settle(self.server_ledger, SERVER, connection_id, self.store)
            assert settlement is not None
        return tc


@pytest.mark.parametrize("half_closed", [False, True])
def test_collect_refund_racing_the_servers_settlement_reports_the_refund(
    tmp_path: Path, ledger: LocalLedger, half_closed: bool
) -> None:
    host_id = setup_host(ledger)
    cid = open_for(ledger, host_id, CLIENT)
    if half_closed:
        # the client half-closed at its close and the timeout has passed: its settle
        # races the server's (EAlreadySettled); else its close does (EConnectionClosed)
        ledger.close_connection(CLIENT, cid)
        ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    with ReceiptStore(tmp_path / "receipts.db") as store:
        assert store.keep(signed(cid, 150 * 1024, 1))
        client_ledger = _RacingLedger(tmp_path / "ledger.db")
        client_ledger.server_ledger = ledger
        client_ledger.store = store
        before = ledger.balance(CLIENT.sui_address)
        try:
            assert collect_refund(client_ledger, CLIENT, cid) == DEPOSIT - 1500
        finally:
            client_ledger.close()
        assert client_ledger.raced
        assert list(store.unclaimed()) == []
    tc = ledger.get_connection(cid)
    assert tc.settled and tc.state is ConnectionState.CLOSED
    assert ledger.balance(CLIENT.sui_address) == before + DEPOSIT - 1500
    assert ledger.balance(SERVER.sui_address) == 1500
    # once settled, it is reported again, and nothing moves twice
    assert collect_refund(ledger, CLIENT, cid) == DEPOSIT - 1500
    assert ledger.balance(CLIENT.sui_address) == before + DEPOSIT - 1500


def test_collect_refund_before_the_timeout_still_says_so(
    tmp_path: Path, ledger: LocalLedger
) -> None:
    host_id = setup_host(ledger)
    cid = open_for(ledger, host_id, CLIENT)
    ledger.close_connection(CLIENT, cid)
    with pytest.raises(ConnectionStateError) as early:
        collect_refund(ledger, CLIENT, cid)
    assert early.value.name == "ETimeoutNotReached"
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    assert collect_refund(ledger, CLIENT, cid) == DEPOSIT


class _ClientSettlesFirst(LocalLedger):
    """The server's handle on the ledger file; right after it reads the connection
    (once), the client -- whose half-close timeout has passed -- settles it."""

    client_ledger: LocalLedger
    raced = False

    def get_connection(self, connection_id: str) -> TransportControl:
        tc = super().get_connection(connection_id)
        if not self.raced:
            self.raced = True
            assert collect_refund(self.client_ledger, CLIENT, connection_id) == DEPOSIT
        return tc


def test_a_settlement_racing_the_clients_own_settles_as_already_settled(
    tmp_path: Path, ledger: LocalLedger
) -> None:
    host_id = setup_host(ledger)
    cid = open_for(ledger, host_id, CLIENT)
    ledger.close_connection(CLIENT, cid)
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)  # the server stayed away too long
    before = ledger.balance(CLIENT.sui_address)
    with ReceiptStore(tmp_path / "receipts.db") as store:
        assert store.keep(signed(cid, 150 * 1024, 1))
        server_ledger = _ClientSettlesFirst(tmp_path / "ledger.db")
        server_ledger.client_ledger = ledger
        # what the docs promise for a settled connection: None, not an error, and the
        # receipt marked done with (not tried again at every start)
        try:
            assert claim_and_settle(server_ledger, SERVER, cid, store) is None
        finally:
            server_ledger.close()
        assert server_ledger.raced
        assert list(store.unclaimed()) == []
        assert recover_unclaimed(ledger, SERVER, store) == []
    assert ledger.balance(CLIENT.sui_address) == before + DEPOSIT
    assert ledger.balance(SERVER.sui_address) == 0


def test_a_damaged_row_counts_as_served_at_admission(tmp_path: Path, ledger: LocalLedger) -> None:
    """The paid servers refuse a connection ID the store holds receipts of; a damaged row
    is held too (its MalformedReceipt ended the handler with a traceback instead)."""
    from dtp.payments._serving import _receipts_held

    host_id = setup_host(ledger)
    damaged = open_for(ledger, host_id, CLIENT)
    fresh = open_for(ledger, host_id, MALLORY)
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as store:
        assert store.keep(signed(damaged, 100 * 1024, 1))
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("UPDATE receipts SET encoded = ? WHERE connection_id = ?", (b"junk", damaged))
    finally:
        raw.close()
    with ReceiptStore(path) as store:
        writer = ReceiptWriter(store)
        try:
            assert _receipts_held(writer, damaged)
            assert not _receipts_held(writer, fresh)
        finally:
            writer.close()


def test_a_final_receipt_left_after_the_writer_closed_goes_to_the_store(
    tmp_path: Path, ledger: LocalLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """settle_ended hands an unclaimed final receipt to the writer; one closed meanwhile
    raised RuntimeError and the receipt was lost. It goes to the store itself now, and
    with the store gone too it is logged whole."""
    from dtp.payments._serving import _keep_final

    host_id = setup_host(ledger)
    cid = open_for(ledger, host_id, CLIENT)
    final = signed(cid, 10 * 1024, 3)
    with ReceiptStore(tmp_path / "receipts.db") as store:
        writer = ReceiptWriter(store)
        assert writer.close()
        _keep_final(writer, final)
        kept = store.latest(cid)
        assert kept is not None and kept.receipt.nonce == 3
    later = signed(cid, 20 * 1024, 4)
    with caplog.at_level(logging.ERROR, logger="dtp.payments._serving"):
        _keep_final(writer, later)  # the store is closed as well
    assert later.encode().hex() in caplog.text


def test_a_failed_server_lock_leaves_the_store_free_for_the_next_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    real_flock = fcntl.flock
    failures = [OSError(5, "I/O error")]

    def flock(fd: int, op: int) -> None:
        if failures:
            raise failures.pop()
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with ReceiptStore(tmp_path / "receipts.db") as store:
        with pytest.raises(OSError):
            store.attach_server()
        # the failed attach is not counted: the next server is alone, as it is
        assert store.attach_server() is True
        store.detach_server()


@pytest.mark.parametrize("nonce", [0, 2**64, -1])
def test_a_meter_nonce_outside_u64_is_refused_when_the_meter_is_made(nonce: int) -> None:
    from dtp.errors import InvalidArgument
    from dtp.payments.receipts import Meter

    with pytest.raises(InvalidArgument, match="start_nonce"):
        Meter(CLIENT, scope_of("0x" + "ab" * 32), SLA, DEPOSIT, start_nonce=nonce)
    assert Meter(CLIENT, scope_of("0x" + "ab" * 32), SLA, DEPOSIT, start_nonce=2**64 - 1)
