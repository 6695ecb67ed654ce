"""What the host-ID connect path no longer reads or checks twice still refuses what it
must: the signature memo, the admission objects a paid server's gate reuses, the open
transaction's SLA and deposit the client meter uses, the settlement's IDs and the
receipt store's claimed marks (on a second, unsynced SQLite handle)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ConnectionStateError, InvalidReceipt, LedgerUnavailable, move_error
from dtp.hostid._admission import LedgerAdmission, PeerInfo
from dtp.hostid.paid import ServicePolicy, gate_for
from dtp.identity import _ed25519 as memo_module
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, EventFilter, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._settlement import ClientPayment, claim_and_settle, recover_unclaimed
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, check_receipt, fee, receipt_message
from tests.support.paths import ROOT
from tests.support.scopes import scope_of

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
PORT = 7000


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


CLIENT, SERVER, MALLORY = ident(0x61), ident(0x62), ident(0x63)


def conserved(ledger: LocalLedger) -> bool:
    a = ledger.audit()
    return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]


class World:
    """A LocalLedger file with the server's host and service and a funded client."""

    def __init__(self, tmp_path: Path) -> None:
        self.ledger = LocalLedger(tmp_path / "ledger.db")
        self.host_id = self.ledger.create_host(SERVER, SERVER.noise_public)
        self.ledger.add_service(SERVER, self.host_id, PORT, "echo", SLA)
        self.ledger.faucet(CLIENT.sui_address, 1_000_000)
        self.cap = self.ledger.create_spending_cap(CLIENT, 1_000_000)

    def open(self, deposit: int = 10_000) -> tuple[str, str]:
        opened = self.ledger.open_connection(CLIENT, self.host_id, PORT, self.cap, deposit)
        return opened.connection_id, opened.escrow_id

    def receipt(self, cid: str, nbytes: int, nonce: int, signer: HostIdentity = CLIENT) -> Receipt:
        scope = self.ledger.receipt_scope(cid)
        return Receipt(scope, nbytes, 1, fee(SLA, nbytes, 1), nonce).sign(signer)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.ledger.close()


# -- the signature memo ------------------------------------------------------------------


def test_memo_never_accepts_what_was_not_verified() -> None:
    cid = "0x" + "ab" * 32
    good = Receipt(scope_of(cid), 2048, 1, fee(SLA, 2048, 1), 7).sign(CLIENT)
    message = receipt_message(scope_of(cid), 2048, 1, fee(SLA, 2048, 1), 7)
    assert memo_module.verify_memoized(CLIENT.ed25519_public, good.signature, message)
    # the good triple is remembered now: every other combination is still verified
    forged = Receipt(scope_of(cid), 2048, 1, fee(SLA, 2048, 1), 7).sign(MALLORY)
    assert not memo_module.verify_memoized(CLIENT.ed25519_public, forged.signature, message)
    assert not memo_module.verify_memoized(MALLORY.ed25519_public, good.signature, message)
    other = receipt_message(scope_of(cid), 4096, 1, fee(SLA, 4096, 1), 7)
    assert not memo_module.verify_memoized(CLIENT.ed25519_public, good.signature, other)
    flipped = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    assert not memo_module.verify_memoized(CLIENT.ed25519_public, flipped, message)
    assert (CLIENT.ed25519_public, flipped, message) not in memo_module._verified


def test_memo_is_bounded_and_skips_long_messages() -> None:
    key = CLIENT.ed25519_public
    for i in range(memo_module._VERIFIED_MAX + 50):
        message = i.to_bytes(8, "little")
        assert memo_module.verify_memoized(key, CLIENT.sign(message), message)
    assert len(memo_module._verified) == memo_module._VERIFIED_MAX
    long_message = b"x" * (memo_module._MEMO_MESSAGE_MAX + 1)
    signature = CLIENT.sign(long_message)
    assert memo_module.verify_memoized(key, signature, long_message)
    assert (key, signature, long_message) not in memo_module._verified


def test_ledger_claim_refuses_a_receipt_the_gate_never_accepted(world: World) -> None:
    cid, _ = world.open()
    good = world.receipt(cid, 4096, 1)
    check_receipt(
        good, scope=good.scope, sla=SLA, public_key=CLIENT.ed25519_public, deposited=10_000
    )
    # same amounts and nonce, signed by someone else: the claim rule verifies it itself
    forged = world.receipt(cid, 4096, 1, signer=MALLORY)
    world.ledger.close_connection(CLIENT, cid)
    with pytest.raises(InvalidReceipt) as refused:
        world.ledger.settle_with_receipt(SERVER, cid, forged)
    assert refused.value.name == "EBadSignature"
    settled = world.ledger.settle_with_receipt(SERVER, cid, good)
    assert settled.paid == good.total_amount
    assert conserved(world.ledger)


# -- admission objects reused by the gate --------------------------------------------------


def peer(cid: str, address: str = CLIENT.sui_address) -> PeerInfo:
    return PeerInfo(address=address, connection_id=cid, port=PORT)


def test_gate_from_admission_equals_gate_from_fresh_reads(world: World) -> None:
    cid, _ = world.open()
    admission = LedgerAdmission(world.ledger, world.host_id, PORT, remember=True)
    assert admission(peer(cid)) is None
    admitted = admission.take_admitted(cid)
    assert admitted is not None and admitted[0].id == cid
    assert admission.take_admitted(cid) is None  # taken once
    policy = ServicePolicy()
    reused = gate_for(world.ledger, cid, policy, admitted=admitted)
    fresh = gate_for(world.ledger, cid, policy)
    fields = ("connection_id", "client_public_key", "sla", "deposited", "claimed")
    for name in (*fields, "latest_nonce", "allowance", "escrow_id"):
        assert getattr(reused, name) == getattr(fresh, name), name


def test_gate_ignores_objects_of_another_connection(world: World) -> None:
    first, _ = world.open(10_000)
    second, _ = world.open(20_000)
    admission = LedgerAdmission(world.ledger, world.host_id, PORT, remember=True)
    assert admission(peer(first)) is None
    admitted = admission.take_admitted(first)
    gate = gate_for(world.ledger, second, ServicePolicy(), admitted=admitted)
    assert gate.connection_id == second and gate.deposited == 20_000


def test_refused_connections_are_not_remembered(world: World) -> None:
    admission = LedgerAdmission(world.ledger, world.host_id, PORT, remember=True)
    closed, _ = world.open()
    world.ledger.close_connection(CLIENT, closed)
    assert "not Open" in (admission(peer(closed)) or "")
    # an escrow claimed below the SLA minimum is unfunded for admission
    drained, drained_escrow = world.open(SLA.min_deposit)
    world.ledger.claim(SERVER, drained_escrow, world.receipt(drained, 2048, 1))
    assert "below the minimum" in (admission(peer(drained)) or "")
    stranger, _ = world.open()
    assert "another client" in (admission(peer(stranger, MALLORY.sui_address)) or "")
    denied, _ = world.open()
    world.ledger.deny(SERVER, world.host_id, CLIENT.sui_address)
    assert "firewall" in (admission(peer(denied)) or "")
    for cid in (closed, drained, stranger, denied):
        assert admission.take_admitted(cid) is None
    assert conserved(world.ledger)


def test_admission_remembers_only_when_asked_and_within_its_bound(world: World) -> None:
    cids = [world.open(SLA.min_deposit)[0] for _ in range(3)]
    plain = LedgerAdmission(world.ledger, world.host_id, PORT)
    assert plain(peer(cids[0])) is None
    assert plain.take_admitted(cids[0]) is None
    bounded = LedgerAdmission(world.ledger, world.host_id, PORT, remember=True)
    bounded.REMEMBERED = 2
    for cid in cids:
        assert bounded(peer(cid)) is None
    assert bounded.take_admitted(cids[0]) is None  # the oldest was dropped
    assert bounded.take_admitted(cids[1]) is not None
    assert bounded.take_admitted(cids[2]) is not None


# -- the client meter from the open transaction --------------------------------------------


def test_open_reports_the_sla_and_deposit_it_opened_with(world: World) -> None:
    opened = world.ledger.open_connection(CLIENT, world.host_id, PORT, world.cap, 12_345)
    tc = world.ledger.get_connection(opened.connection_id)
    escrow = world.ledger.get_escrow(opened.escrow_id)
    assert opened.sla == tc.sla == SLA
    assert opened.deposit == escrow.deposited == 12_345


class _Conn:
    """The Connection attributes ClientPayment reads."""

    closed = False
    usage = (0, 0)
    requests_pending = 0


def test_client_payment_from_open_matches_reading_back(world: World) -> None:
    opened = world.ledger.open_connection(CLIENT, world.host_id, PORT, world.cap, 10_000)
    # a lowering after the open binds nothing of this connection: the deposit is reserved
    world.ledger.set_max_per_epoch(CLIENT, world.cap, 0)
    cid = opened.connection_id
    args = (world.ledger, CLIENT, world.host_id, cid, _Conn(), MeteringConfig())
    read = ClientPayment(*args)  # type: ignore[arg-type]
    reused = ClientPayment(*args, opened=opened)  # type: ignore[arg-type]
    assert reused.meter.meter.deposit == read.meter.meter.deposit == 10_000
    assert reused.meter.meter.sla == read.meter.meter.sla == SLA
    # what the ledger did not report is read back
    bare = dataclasses.replace(opened, sla=None, deposit=None)
    fallback = ClientPayment(*args, opened=bare)  # type: ignore[arg-type]
    assert fallback.meter.meter.deposit == 10_000


# -- settlement ------------------------------------------------------------------------------


class _CountingLedger:
    """Counts the connection reads a LocalLedger serves."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.connection_reads = 0

    def get_connection(self, cid: str):  # type: ignore[no-untyped-def]
        self.connection_reads += 1
        return self._ledger.get_connection(cid)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._ledger, name)


def test_settle_reads_the_connection_once_and_conserves(world: World, tmp_path: Path) -> None:
    cid, _ = world.open()
    receipt = world.receipt(cid, 8192, 1)
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(receipt)
        world.ledger.close_connection(CLIENT, cid)
        counting = _CountingLedger(world.ledger)
        settled = claim_and_settle(counting, SERVER, cid, store)  # type: ignore[arg-type]
        assert counting.connection_reads == 1
        assert settled is not None and settled.claimed == receipt.total_amount
        assert settled.refunded == 10_000 - receipt.total_amount
        stored = store.latest(cid)
        assert stored is not None and stored.unclaimed == 0
    tc = world.ledger.get_connection(cid)
    assert tc.settled and tc.state == ConnectionState.CLOSED
    assert conserved(world.ledger)


# -- the receipt store -----------------------------------------------------------------------

_KEEP_AND_DIE = textwrap.dedent(
    """
    import os, sys
    from dtp.payments.receipts import Receipt
    from dtp.payments.receipt_store import ReceiptStore
    store = ReceiptStore(sys.argv[1])
    assert store.keep(Receipt.decode(bytes.fromhex(sys.argv[2])))
    os._exit(0)  # no close, no checkpoint: what keep() committed must be there
    """
)


def test_a_kept_receipt_survives_the_process_dying(world: World, tmp_path: Path) -> None:
    cid, _ = world.open()
    receipt = world.receipt(cid, 4096, 3)
    path = tmp_path / "receipts.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-c", _KEEP_AND_DIE, str(path), receipt.encode().hex()],
        check=True,
        env=env,
        timeout=60,
    )
    with ReceiptStore(path) as store:
        [found] = list(store.unclaimed())
        assert found.receipt == receipt
        world.ledger.close_connection(CLIENT, cid)
        [(settled_cid, settlement)] = recover_unclaimed(world.ledger, SERVER, store)
    assert settled_cid == cid and settlement.claimed == receipt.total_amount
    assert conserved(world.ledger)


def test_a_lost_claimed_mark_is_rederived_from_the_ledger(world: World, tmp_path: Path) -> None:
    cid, escrow_id = world.open()
    receipt = world.receipt(cid, 4096, 1)
    path = tmp_path / "receipts.db"
    with ReceiptStore(path) as store:
        store.keep(receipt)
        world.ledger.close_connection(CLIENT, cid)
        settled = claim_and_settle(world.ledger, SERVER, cid, store)
        assert settled is not None
        # as if the unsynced mark had not reached the disk before a crash
        store._db.execute("UPDATE receipts SET claimed_amount = '00000000000000000000'")
    balance = world.ledger.balance(SERVER.sui_address)
    with ReceiptStore(path) as store:
        assert [s.receipt for s in store.unclaimed()] == [receipt]
        assert recover_unclaimed(world.ledger, SERVER, store) == []  # nothing claimed twice
        assert list(store.unclaimed()) == []  # marked from the ledger
    assert world.ledger.balance(SERVER.sui_address) == balance
    assert world.ledger.get_escrow(escrow_id).claimed == receipt.total_amount
    assert conserved(world.ledger)


def test_only_the_claimed_mark_skips_the_sync(tmp_path: Path) -> None:
    cid = "0x" + "cd" * 32
    receipt = Receipt(scope_of(cid), 1024, 0, fee(SLA, 1024, 0), 1).sign(CLIENT)
    with ReceiptStore(tmp_path / "r.db") as store:
        full = store._db.execute("PRAGMA synchronous").fetchone()[0]
        assert full == 2  # FULL: every kept receipt is synced
        store.keep(receipt)
        store.mark_claimed(cid, receipt.total_amount)
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == full  # back to FULL
        stored = store.latest(cid)
        assert stored is not None and stored.unclaimed == 0
    with ReceiptStore(tmp_path / "r.db") as reopened:  # the mark reached the file
        stored = reopened.latest(cid)
        assert stored is not None and stored.claimed_amount == receipt.total_amount


# -- one transaction closes and settles ---------------------------------------------------


def half_closes(ledger: LocalLedger, cid: str) -> list[str]:
    """Who half-closed ``cid`` on the ledger (the ``by`` of its ConnectionHalfClosed)."""
    found, _ = ledger.events(filter=EventFilter(type="ConnectionHalfClosed"))
    return [e["by"] for e in found if e["connection"] == cid]


def closes(ledger: LocalLedger, cid: str) -> list[str]:
    """Who closed ``cid`` fully (the ``by`` of its ConnectionClosed)."""
    found, _ = ledger.events(filter=EventFilter(type="ConnectionClosed"))
    return [e["by"] for e in found if e["connection"] == cid]


def server_transactions(ledger: LocalLedger) -> int:
    return int(
        ledger._db.execute(
            "SELECT COUNT(*) FROM transactions WHERE sender = ?", (SERVER.sui_address,)
        ).fetchone()[0]
    )


def assert_closed_by_the_settlement_alone(ledger: LocalLedger, cid: str, before: int) -> None:
    """``cid`` is settled and closed, by one server transaction after ``before`` (the
    settlement) and with no half-close by either side."""
    tc = ledger.get_connection(cid)
    assert tc.settled and tc.state == ConnectionState.CLOSED
    assert server_transactions(ledger) == before + 1
    assert half_closes(ledger, cid) == []
    assert closes(ledger, cid) == [SERVER.sui_address]


def test_settlement_closes_an_open_connection_in_the_same_transaction(
    world: World, tmp_path: Path
) -> None:
    cid, _ = world.open()
    receipt = world.receipt(cid, 4096, 1)
    host_version = world.ledger.object_version(world.host_id)
    before = server_transactions(world.ledger)
    with ReceiptStore(tmp_path / "r.db") as store:
        store.keep(receipt)
        settled = claim_and_settle(world.ledger, SERVER, cid, store)
        stored = store.latest(cid)
        assert stored is not None and stored.unclaimed == 0
    assert server_transactions(world.ledger) == before + 1
    assert half_closes(world.ledger, cid) == []
    assert closes(world.ledger, cid) == [SERVER.sui_address]
    tc = world.ledger.get_connection(cid)
    assert tc.settled and tc.state == ConnectionState.CLOSED
    assert settled is not None and settled.claimed == receipt.total_amount
    assert settled.refunded == 10_000 - receipt.total_amount
    # the Host is not written by a settlement (nor by a close: docs/escrow.md §7)
    assert world.ledger.object_version(world.host_id) == host_version
    # the client, too late, finds nothing to close
    with pytest.raises(ConnectionStateError) as closed:
        world.ledger.close_connection(CLIENT, cid)
    assert closed.value.name == "EConnectionClosed"
    assert conserved(world.ledger)


def test_settlement_after_the_clients_own_half_close(world: World) -> None:
    cid, _ = world.open()
    world.ledger.close_connection(CLIENT, cid)
    settled = claim_and_settle(world.ledger, SERVER, cid, None)
    assert half_closes(world.ledger, cid) == [CLIENT.sui_address]
    assert closes(world.ledger, cid) == [SERVER.sui_address]
    assert settled is not None and settled.refunded == 10_000
    assert conserved(world.ledger)


def test_a_package_that_refuses_settling_an_open_connection_gets_a_half_close_first(
    world: World,
) -> None:
    """A ledger running the package from before the server could settle an Open
    connection: the settlement half-closes first, then settles."""
    cid, _ = world.open()
    receipt = world.receipt(cid, 2048, 1)
    refused: list[str] = []

    class OldPackage(_CountingLedger):
        def settle_with_receipt(self, signer, connection_id, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self._ledger.get_connection(connection_id).state == ConnectionState.OPEN:
                refused.append(connection_id)
                raise move_error("transport_control", "EConnectionOpen", connection_id)
            return self._ledger.settle_with_receipt(signer, connection_id, *args, **kwargs)

    with ReceiptStore() as store:
        store.keep(receipt)
        settled = claim_and_settle(OldPackage(world.ledger), SERVER, cid, store)  # type: ignore[arg-type]
    assert refused == [cid]
    assert half_closes(world.ledger, cid) == [SERVER.sui_address]
    assert settled is not None and settled.claimed == receipt.total_amount
    assert world.ledger.get_connection(cid).settled
    assert conserved(world.ledger)


def test_client_payment_half_closes_only_a_connection_still_open(world: World) -> None:
    def payment(cid: str) -> ClientPayment:
        return ClientPayment(world.ledger, CLIENT, world.host_id, cid, _Conn())  # type: ignore[arg-type]

    settled_cid, _ = world.open()
    claim_and_settle(world.ledger, SERVER, settled_cid, None)
    payment(settled_cid).finish()  # the server settled: one read, no transaction
    assert half_closes(world.ledger, settled_cid) == []
    open_cid, _ = world.open()
    pay = payment(open_cid)
    pay.finish()
    pay.finish()  # once only
    assert half_closes(world.ledger, open_cid) == [CLIENT.sui_address]
    assert not world.ledger.get_connection(open_cid).settled  # the server's turn, or the timeout's
    assert conserved(world.ledger)


def _slow(settle: Any) -> Any:
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)
        return settle(*args, **kwargs)

    return slow


def test_paid_server_settles_before_the_client_is_done_closing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two transactions per connection the client closes: its open and the server's
    settlement, which lands before the client's close() returns (the client waits for
    the server's end of the carrier, which closes after the settlement)."""
    import dtp.payments._serving
    import dtp.socket
    from dtp.hostid.paid import PaidSocket

    # a slow settlement: a client that did not wait for it would half-close meanwhile
    monkeypatch.setattr(dtp.payments._serving, "claim_and_settle", _slow(claim_and_settle))

    def echo(sock: PaidSocket) -> None:
        while data := sock.recv(1024):
            sock.sendall(data)

    with dtp.socket.serve(
        world.host_id, PORT, echo, ledger=world.ledger, identity=SERVER
    ) as server:
        cids = []
        for _ in range(4):
            before = server_transactions(world.ledger)
            with dtp.socket.create_connection(
                f"dtp://{world.host_id}:{PORT}",
                timeout=10,
                ledger=world.ledger,
                identity=CLIENT,
                cap_id=world.cap,
            ) as sock:
                cid = sock.connection_id
                assert cid is not None
                cids.append(cid)
                sock.sendall(b"x" * 50)
                assert sock.recv(50) == b"x" * 50
                # a receipt mid-connection, as a server's request for one makes it
                engine = sock._engine
                with engine.lock:
                    assert engine.hook is not None
                    engine.hook.on_server_receipt(b"")
                    engine.flush()
                deadline = time.monotonic() + 10
                while server.store.latest(cid) is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                sock.sendall(b"x" * 50)
                assert sock.recv(50) == b"x" * 50
            assert_closed_by_the_settlement_alone(world.ledger, cid, before)
        assert sorted(c for c, _ in server.settlements) == sorted(cids)
    for cid in cids:
        # the final receipt (100 bytes each way, one request) was claimed, not written
        # first; the one written mid-connection (half that) is marked claimed: close()
        # wrote the mark that waited for a receipt write to share
        escrow = world.ledger.get_escrow(world.ledger.get_connection(cid).escrow)
        assert escrow.claimed == fee(SLA, 200, 1)
        kept = server.store.latest(cid)
        assert kept is not None and kept.unclaimed == 0
        assert kept.receipt.total_amount == fee(SLA, 100, 1) < escrow.claimed
    assert conserved(world.ledger)


def test_a_final_receipt_the_settlement_could_not_claim_is_stored(world: World) -> None:
    """The receipt that came with the client's CLOSE is written only when the
    settlement did not claim it: here the ledger is away as the server settles, and the
    receipt waits in the store for recover_unclaimed."""
    import dtp.socket
    from dtp.hostid.paid import PaidSocket

    def echo(sock: PaidSocket) -> None:
        while data := sock.recv(1024):
            sock.sendall(data)

    away = LocalLedger(world.ledger.path)
    away_settle = away.settle_with_receipt

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise LedgerUnavailable("ledger.db: the ledger is away (a test)")

    away.settle_with_receipt = unavailable  # type: ignore[method-assign]
    with (
        dtp.socket.serve(world.host_id, PORT, echo, ledger=away, identity=SERVER) as server,
        dtp.socket.create_connection(
            f"dtp://{world.host_id}:{PORT}",
            timeout=10,
            ledger=world.ledger,
            identity=CLIENT,
        ) as sock,
    ):
        sock.sendall(b"z" * 100)
        assert sock.recv(100) == b"z" * 100
        cid = sock.connection_id
        assert cid is not None
    tc = world.ledger.get_connection(cid)
    assert not tc.settled
    kept = server.store.latest(cid)
    assert kept is not None and kept.unclaimed == kept.receipt.total_amount == fee(SLA, 200, 1)
    away.settle_with_receipt = away_settle  # type: ignore[method-assign]  # (back)
    away.close()
    done = recover_unclaimed(world.ledger, SERVER, server.store)
    assert [(c, s.claimed) for c, s in done] == [(cid, fee(SLA, 200, 1))]
    assert conserved(world.ledger)


def test_keeping_and_marking_from_two_threads_never_fails(tmp_path: Path) -> None:
    """The writer thread keeps receipts while settling threads mark claims."""
    cids = ["0x" + f"{i:064x}" for i in range(1, 301)]
    failures: list[BaseException] = []
    with ReceiptStore(tmp_path / "r.db") as store:

        def keep_all() -> None:
            try:
                for nonce, cid in enumerate(cids, 1):
                    receipt = Receipt(scope_of(cid), 1024, 0, fee(SLA, 1024, 0), nonce)
                    assert store.keep(receipt.sign(CLIENT))
            except BaseException as exc:
                failures.append(exc)

        def mark_all() -> None:
            try:
                for cid in cids:
                    for _ in range(3):
                        store.mark_claimed(cid, 1)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=keep_all), threading.Thread(target=mark_all)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert all(store.latest(cid) is not None for cid in cids)


def test_a_mark_during_an_open_read_does_not_block_the_next_keep(tmp_path: Path) -> None:
    """A settling thread's read can still be open on the store when the writer thread
    keeps the next receipt: a claimed mark committed in between must not make that
    keep fail (it did when marks went through a second SQLite handle: stale snapshot)."""
    first, second = "0x" + "e1" * 32, "0x" + "e2" * 32
    with ReceiptStore(tmp_path / "r.db") as store:
        for cid in (first, second):
            assert store.keep(Receipt(scope_of(cid), 1024, 0, fee(SLA, 1024, 0), 1).sign(CLIENT))
        reading = store._db.execute("SELECT connection_id FROM receipts")
        assert reading.fetchone() is not None  # the statement stays open: a read snapshot
        store.mark_claimed(first, 1)
        assert store.keep(Receipt(scope_of(second), 2048, 0, fee(SLA, 2048, 0), 2).sign(CLIENT))
        reading.close()
        stored = store.latest(second)
        assert stored is not None and stored.receipt.nonce == 2
        marked = store.latest(first)
        assert marked is not None and marked.claimed_amount == 1


# -- settling from the receipt writer, with the escrow admission read --------------------


class _BlockedStore(ReceiptStore):
    """A ReceiptStore whose writes wait for ``release`` (a slow disk)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()

    def keep_many(self, receipts: Any, claimed: Any = None) -> list[bool]:
        assert self.release.wait(10)
        return super().keep_many(receipts, claimed)


def test_the_writer_knows_receipts_on_their_way_and_marks_after_them(
    world: World, tmp_path: Path
) -> None:
    from dtp.payments._receipt_writer import ReceiptWriter

    cid, _ = world.open()
    receipt = world.receipt(cid, 4096, 1)
    store = _BlockedStore(tmp_path / "r.db")
    writer = ReceiptWriter(store)
    kept: list[Receipt] = []
    writer.submit(receipt, kept.append)
    waiting = writer.latest(cid)
    assert waiting is not None and waiting.receipt == receipt and waiting.unclaimed > 0
    assert store.latest(cid) is None  # not on disk yet
    writer.mark_claimed(cid, receipt.total_amount)
    assert not writer.flush(cid, timeout=0.05)  # the write and the mark are pending
    store.release.set()
    assert writer.flush(cid, timeout=10)
    stored = store.latest(cid)
    assert stored is not None and stored.receipt == receipt and stored.unclaimed == 0
    assert kept == [receipt]
    assert writer.latest(cid) == stored
    writer.close()


class _CountingReads(_CountingLedger):
    """Counts the connection and escrow reads (and version looks) a LocalLedger serves."""

    def __init__(self, ledger: LocalLedger) -> None:
        super().__init__(ledger)
        self.escrow_reads = 0

    def get_escrow(self, escrow_id: str):  # type: ignore[no-untyped-def]
        self.escrow_reads += 1
        return self._ledger.get_escrow(escrow_id)


def test_settling_from_the_writer_with_the_admitted_escrow(world: World, tmp_path: Path) -> None:
    from dtp.payments._receipt_writer import ReceiptWriter

    cid, escrow_id = world.open()
    escrow = world.ledger.get_escrow(escrow_id)  # as admission read it
    receipt = world.receipt(cid, 8192, 1)
    store = _BlockedStore(tmp_path / "r.db")
    writer = ReceiptWriter(store)
    writer.submit(receipt, lambda r: None)  # still on its way to the disk
    world.ledger.close_connection(CLIENT, cid)
    counting = _CountingReads(world.ledger)
    settled = claim_and_settle(counting, SERVER, cid, writer, escrow=escrow)  # type: ignore[arg-type]
    assert settled is not None and settled.claimed == receipt.total_amount
    assert counting.connection_reads == 1 and counting.escrow_reads == 0
    store.release.set()
    assert writer.flush(timeout=10)
    stored = store.latest(cid)  # written, then marked claimed
    assert stored is not None and stored.receipt == receipt and stored.unclaimed == 0
    assert conserved(world.ledger)
    writer.close()


def test_a_stale_escrow_is_read_again(world: World) -> None:
    cid, escrow_id = world.open()
    stale = world.ledger.get_escrow(escrow_id)
    first = world.receipt(cid, 4096, 1)
    world.ledger.claim(SERVER, escrow_id, first)  # claimed since it was read
    world.ledger.close_connection(CLIENT, cid)
    with ReceiptStore() as store:
        store.keep(first)
        settled = claim_and_settle(world.ledger, SERVER, cid, store, escrow=stale)
    # the ledger refused the replay; read afresh, the escrow says there is nothing to claim
    assert settled is not None and settled.paid == 0
    assert settled.claimed == first.total_amount
    assert settled.refunded == 10_000 - first.total_amount
    assert conserved(world.ledger)


def test_keep_many_keeps_newer_receipts_and_marks_after_them(world: World, tmp_path: Path) -> None:
    first, _ = world.open()
    second, _ = world.open()
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep_many([world.receipt(first, 1024, 2)]) == [True]
        stored = store.keep_many(
            [world.receipt(first, 2048, 1), world.receipt(second, 4096, 1)],  # a replay
            {second: world.receipt(second, 4096, 1).total_amount},
        )
        assert stored == [False, True]
        a, b = store.latest(first), store.latest(second)
        assert a is not None and a.receipt.nonce == 2 and a.unclaimed > 0
        assert b is not None and b.unclaimed == 0  # marked after it was kept


def test_claimed_marks_go_with_the_next_receipt_write(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtp.payments import _receipt_writer as receipt_writer
    from dtp.payments._receipt_writer import ReceiptWriter

    monkeypatch.setattr(receipt_writer, "MARK_DELAY", 0.3)
    first, _ = world.open()
    second, _ = world.open()
    third, _ = world.open()
    store = ReceiptStore(tmp_path / "r.db")
    writer = ReceiptWriter(store)
    r1 = world.receipt(first, 4096, 1)
    writer.submit(r1, lambda r: None)
    assert writer.flush(first, timeout=10)
    writer.mark_claimed(first, r1.total_amount)
    time.sleep(0.05)
    assert store.latest(first).unclaimed > 0  # type: ignore[union-attr]  # waits
    written = threading.Event()
    writer.submit(world.receipt(second, 4096, 1), lambda r: written.set())
    assert written.wait(10)
    assert store.latest(first).unclaimed == 0  # type: ignore[union-attr]  # went with it
    # alone, a mark is written once MARK_DELAY has passed
    r3 = world.receipt(third, 4096, 1)
    writer.submit(r3, lambda r: None)
    assert writer.flush(third, timeout=10)
    writer.mark_claimed(third, r3.total_amount)
    deadline = time.monotonic() + 10
    while store.latest(third).unclaimed > 0:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    writer.close()


def test_a_known_connection_is_read_again_only_once_it_moved(world: World) -> None:
    """Where a refused settlement costs gas (``free_refusals`` False) the known
    connection's version is looked at first (tests/payments/test_settlement_known_connection.py:
    where refusals are free, not even that)."""
    cid, escrow_id = world.open()
    known = world.ledger.get_connection(cid)  # as admission read it
    escrow = world.ledger.get_escrow(escrow_id)
    world.ledger.close_connection(CLIENT, cid)  # it moved
    counting = _CountingReads(world.ledger)
    counting.free_refusals = False
    settled = claim_and_settle(
        counting,  # type: ignore[arg-type]
        SERVER,
        cid,
        None,
        escrow=escrow,
        connection=known,
    )
    assert counting.connection_reads == 1 and counting.escrow_reads == 0
    assert settled is not None and settled.refunded == 10_000
    # still Open, as known: nothing read but its version; the settlement closes it
    cid, escrow_id = world.open()
    known = world.ledger.get_connection(cid)
    counting = _CountingReads(world.ledger)
    counting.free_refusals = False
    settled = claim_and_settle(
        counting,  # type: ignore[arg-type]
        SERVER,
        cid,
        None,
        escrow=world.ledger.get_escrow(escrow_id),
        connection=known,
    )
    assert counting.connection_reads == 0
    assert half_closes(world.ledger, cid) == []  # closed and settled at once
    assert closes(world.ledger, cid) == [SERVER.sui_address]
    assert settled is not None and settled.refunded == 10_000
    assert conserved(world.ledger)


def test_aio_paid_pair_settles_before_the_clients_close_returns(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dtp.hostid.paid._aio settles a connection its client closed before its end of the
    carrier closes, and dtp.aio's client waits for that end: two transactions per
    connection, as with the blocking pair."""
    import asyncio

    import dtp.aio
    import dtp.hostid.paid._aio
    import dtp.payments._serving

    # a slow settlement (dtp.payments._serving.settle_ended, shared by both servers, makes it): a
    # client that did not wait for it would half-close meanwhile
    monkeypatch.setattr(dtp.payments._serving, "claim_and_settle", _slow(claim_and_settle))

    async def echo(reader: Any, writer: Any) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()

    async def main() -> list[str]:
        cids: list[str] = []
        server = await dtp.hostid.paid._aio.serve(
            world.host_id, PORT, echo, ledger=world.ledger, identity=SERVER
        )
        async with server:
            for _ in range(3):
                before = server_transactions(world.ledger)
                reader, writer = await dtp.aio.open_connection(
                    f"dtp://{world.host_id}:{PORT}",
                    timeout=10,
                    ledger=world.ledger,
                    identity=CLIENT,
                    cap_id=world.cap,
                )
                writer.write(b"y" * 100)
                await writer.drain()
                assert await reader.readexactly(100) == b"y" * 100
                cid = writer.connection_id
                assert cid is not None
                cids.append(cid)
                writer.close()
                await writer.wait_closed()
                assert_closed_by_the_settlement_alone(world.ledger, cid, before)
            assert sorted(c for c, _ in server.settlements) == sorted(cids)
        return cids

    cids = asyncio.run(main())
    for cid in cids:
        escrow = world.ledger.get_escrow(world.ledger.get_connection(cid).escrow)
        assert escrow.claimed > 0  # the final receipt, claimed without being written first
    assert conserved(world.ledger)
