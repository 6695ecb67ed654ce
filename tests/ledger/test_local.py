"""LocalLedger: Sui object model, signatures, atomicity, bad input, sharing one file."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import (
    MOVE_ERRORS,
    MOVE_ERRORS_BY_CODE,
    BroadcastNotAuthorized,
    ChainError,
    ConnectionStateError,
    FirewallDenied,
    HostConfigError,
    InsufficientFunds,
    InvalidArgument,
    InvalidObjectId,
    InvalidReceipt,
    InvalidTransaction,
    NotAuthorized,
    ObjectNotFound,
    PipeError,
    ReplayedReceipt,
    ServiceNotFound,
    WrongSigner,
    move_error_from_abort_code,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger import LocalLedger as LazyLocalLedger
from dtp.ledger._objects import (
    MAX_FIREWALL_ENTRIES,
    ConnectionState,
    EventFilter,
    FirewallMode,
    Sla,
)
from dtp.ledger.local import LocalLedger, default_ledger_path, normalize_id
from dtp.ledger.local._tx import Address, Tx, base58, decode_tx, encode_tx, tx_digest
from dtp.payments.receipts import Receipt
from tests.support.paths import MOVE_SOURCES

SLA = Sla(10, 5, 1000)


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT, MALLORY = ident(0x33), ident(0x11), ident(0x22)


class World:
    """A host with service 7 and a funded client with a cap."""

    def __init__(self, ledger: LocalLedger) -> None:
        self.ledger = ledger
        self.host = ledger.create_host(SERVER, b"\x01" * 32, ["tcp://127.0.0.1:7000"])
        ledger.add_service(SERVER, self.host, 7, "raw", SLA)
        ledger.faucet(CLIENT.sui_address, 100_000)
        self.cap = ledger.create_spending_cap(CLIENT, 1_000_000)

    def open(self, deposit: int = 1000) -> tuple[str, str]:
        opened = self.ledger.open_connection(CLIENT, self.host, 7, self.cap, deposit)
        return opened.connection_id, opened.escrow_id


@pytest.fixture
def ledger() -> LocalLedger:
    return LocalLedger(":memory:", clock_ms=0)


@pytest.fixture
def world(ledger: LocalLedger) -> World:
    return World(ledger)


def unchanged(
    ledger: LocalLedger, exc: type[BaseException], call: Any, *args: Any, **kwargs: Any
) -> Any:
    before = ledger.dump()
    with pytest.raises(exc) as info:
        call(*args, **kwargs)
    assert ledger.dump() == before
    assert str(info.value)
    return info.value


# -- error table ---------------------------------------------------------------------------


def test_error_table_matches_move_sources() -> None:
    import re

    found = {}
    for path in MOVE_SOURCES.glob("*.move"):
        text = path.read_text()
        for code, name in re.findall(r"#\[error\(code = (\d+)\)\]\s*const (\w+)", text):
            found[(path.stem, name)] = int(code)
    assert found == {key: info.code for key, info in MOVE_ERRORS.items()}
    assert len(MOVE_ERRORS_BY_CODE) == len(MOVE_ERRORS)


def test_abort_code_mapping() -> None:
    clever = (1 << 63) | (8 << 48) | (123 << 32)
    err = move_error_from_abort_code(clever, "host 0x1")
    assert isinstance(err, FirewallDenied) and err.name == "EFirewallDenied" and err.code == 8
    assert isinstance(move_error_from_abort_code(33), ReplayedReceipt)
    assert isinstance(move_error_from_abort_code(90), BroadcastNotAuthorized)
    assert isinstance(move_error_from_abort_code(90), NotAuthorized)
    assert move_error_from_abort_code(999).name == "UnknownAbort"


# -- object model --------------------------------------------------------------------------


def test_object_ids_versions_and_owners(ledger: LocalLedger, world: World) -> None:
    conn, escrow = world.open()
    tc = ledger.get_connection(conn)
    assert tc.state is ConnectionState.OPEN and tc.escrow == escrow
    assert ledger.object_ref(conn).owner == "shared"
    # create, add_service: the open only read it (Sui runs such opens concurrently)
    assert ledger.object_ref(world.host).version == 2
    pipe = ledger.create_pipe(CLIENT, conn, 2)
    assert ledger.object_ref(pipe).owner == CLIENT.sui_address
    assert ledger.object_ref(pipe).version == 1
    ledger.pipe_send(CLIENT, pipe, 1, b"x")
    assert ledger.object_ref(pipe).version == 2
    assert {r.type for r in ledger.objects()} >= {"dtp::pipe::Pipe", "dtp::host::Host"}


def test_object_id_derivation_is_suis() -> None:
    tx = encode_tx(Tx("0x" + "ab" * 32, 7, "spending_cap", "create", (5,)))
    digest = tx_digest(tx)
    assert digest == hashlib.blake2b(b"TransactionData::" + tx, digest_size=32).digest()
    from dtp.ledger.local._tx import derive_object_id

    expected = hashlib.blake2b(b"\xf1" + digest + (0).to_bytes(8, "little"), digest_size=32)
    assert derive_object_id(digest, 0) == "0x" + expected.hexdigest()
    assert base58(b"\0\0\x01") == "112"


def test_tx_encoding_round_trip_and_strictness() -> None:
    tx = Tx(
        "0x" + "01" * 32,
        2**64 - 1,
        "host",
        "create",
        (b"k" * 32, [b"a", b""], Address("0x" + "02" * 32)),
    )
    raw = encode_tx(tx)
    assert decode_tx(raw) == tx
    for bad in (raw + b"\0", raw[:-1], b"\x05" + raw[1:], raw[:20]):
        with pytest.raises(InvalidTransaction):
            decode_tx(bad)


def test_lazy_import() -> None:
    assert LazyLocalLedger is LocalLedger


# -- signatures ----------------------------------------------------------------------------


def test_forged_and_wrong_signer_transactions(ledger: LocalLedger, world: World) -> None:
    tx = ledger.build_tx(
        CLIENT.sui_address, "spending_cap", "set_max_per_epoch", [Address(world.cap), 1]
    )
    err = unchanged(ledger, WrongSigner, ledger.execute, tx, MALLORY.sign_transaction(tx))
    assert "signed by" in str(err)
    forged = bytearray(CLIENT.sign_transaction(tx))
    forged[5] ^= 1
    unchanged(ledger, WrongSigner, ledger.execute, tx, bytes(forged))
    unchanged(ledger, WrongSigner, ledger.execute, tx, b"")
    # Correctly signed: runs once; the same bytes again are a replay.
    ledger.execute(tx, CLIENT.sign_transaction(tx))
    assert ledger.get_cap(world.cap).max_per_epoch == 1
    unchanged(ledger, InvalidTransaction, ledger.execute, tx, CLIENT.sign_transaction(tx))


def test_malformed_and_unknown_calls(ledger: LocalLedger) -> None:
    tx = ledger.build_tx(CLIENT.sui_address, "spending_cap", "mint_money", [1])
    unchanged(ledger, InvalidArgument, ledger.execute, tx, CLIENT.sign_transaction(tx))
    tx = ledger.build_tx(CLIENT.sui_address, "spending_cap", "create", [b"x"])
    unchanged(ledger, InvalidArgument, ledger.execute, tx, CLIENT.sign_transaction(tx))
    unchanged(ledger, InvalidTransaction, ledger.execute, b"junk", b"")


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "0x", "12", "0xzz", "0x" + "1" * 65, "host"])
def test_malformed_ids(ledger: LocalLedger, world: World, bad: str) -> None:
    err = unchanged(ledger, InvalidObjectId, ledger.get_host, bad)
    assert isinstance(err, ValueError)
    unchanged(ledger, InvalidObjectId, ledger.deny, SERVER, world.host, bad)
    unchanged(ledger, InvalidObjectId, ledger.balance, bad)


def test_short_ids_are_padded(ledger: LocalLedger) -> None:
    assert normalize_id("0x6") == "0x" + "0" * 63 + "6"
    assert ledger.balance("0x6") == 0


def test_unknown_and_mistyped_objects(ledger: LocalLedger, world: World) -> None:
    missing = "0x" + "99" * 32
    err = unchanged(ledger, ObjectNotFound, ledger.get_host, missing)
    assert missing in str(err)
    unchanged(ledger, ObjectNotFound, ledger.deny, SERVER, missing, CLIENT.sui_address)
    err = unchanged(ledger, ObjectNotFound, ledger.get_host, world.cap)
    assert "SpendingCap" in str(err)
    unchanged(ledger, ObjectNotFound, ledger.open_connection, CLIENT, world.cap, 7, world.cap, 1000)


def test_wrong_signers(ledger: LocalLedger, world: World) -> None:
    err = unchanged(ledger, NotAuthorized, ledger.deny, MALLORY, world.host, CLIENT.sui_address)
    assert err.name == "ENotAuthority" and world.host in str(err)
    unchanged(ledger, NotAuthorized, ledger.set_max_per_epoch, SERVER, world.cap, 5)
    conn, escrow = world.open()
    receipt = Receipt(ledger.receipt_scope(conn), 1024, 0, 10, 1).sign(CLIENT)
    assert (
        unchanged(ledger, NotAuthorized, ledger.claim, CLIENT, escrow, receipt).name == "ENotServer"
    )
    ledger.faucet(SERVER.sui_address, 10)
    assert unchanged(ledger, NotAuthorized, ledger.top_up, SERVER, escrow, 10).name == "ENotClient"
    assert (
        unchanged(ledger, NotAuthorized, ledger.close_connection, MALLORY, conn).name
        == "ENotParticipant"
    )
    pipe = ledger.create_pipe(SERVER, conn, 1)
    err = unchanged(ledger, WrongSigner, ledger.pipe_send, CLIENT, pipe, 0, b"x")
    assert "owned by" in str(err)


def test_insufficient_funds(ledger: LocalLedger, world: World) -> None:
    poor = ident(0x77)
    cap = ledger.create_spending_cap(poor, 10)
    err = unchanged(
        ledger, InsufficientFunds, ledger.open_connection, poor, world.host, 7, cap, 1000
    )
    assert err.name == "InsufficientCoinBalance" and poor.sui_address in str(err)
    err = unchanged(ledger, InsufficientFunds, world.open, 999)
    assert err.name == "EInsufficientDeposit"
    _conn, escrow = world.open()
    unchanged(ledger, InsufficientFunds, ledger.top_up, CLIENT, escrow, 10**9)


def test_argument_ranges(ledger: LocalLedger, world: World) -> None:
    unchanged(ledger, InvalidArgument, ledger.create_spending_cap, CLIENT, -1)
    unchanged(ledger, InvalidArgument, ledger.create_spending_cap, CLIENT, 2**64)
    unchanged(ledger, InvalidArgument, ledger.add_service, SERVER, world.host, 70000, "x", SLA)
    unchanged(ledger, InvalidArgument, ledger.faucet, CLIENT.sui_address, 2**64 - 1)


# -- host rules ----------------------------------------------------------------------------


def test_firewall_lists_are_bounded(ledger: LocalLedger, world: World) -> None:
    # as host::allow/deny on Sui: a list of MAX_FIREWALL_ENTRIES takes no new address
    # (each list is a Table beside the Host; the bound keeps what is read back small)
    h = world.host
    others = ["0x" + f"{i + 1:064x}" for i in range(MAX_FIREWALL_ENTRIES)]
    for address in others:
        ledger.deny(SERVER, h, address)
    ledger.deny(SERVER, h, others[0])  # already there: still a no-op
    err = unchanged(ledger, HostConfigError, ledger.deny, SERVER, h, CLIENT.sui_address)
    assert err.name == "EFirewallListFull" and err.code == 10
    ledger.undeny(SERVER, h, others[0])
    ledger.deny(SERVER, h, CLIENT.sui_address)  # room again
    assert ledger.get_host(h).firewall.deny_count == MAX_FIREWALL_ENTRIES
    assert len(ledger.firewall_list(h, "deny")) == MAX_FIREWALL_ENTRIES
    assert ledger.is_denied(h, CLIENT.sui_address) and not ledger.is_denied(h, others[0])
    for address in others:
        ledger.allow(SERVER, h, address)
    err = unchanged(ledger, HostConfigError, ledger.allow, SERVER, h, CLIENT.sui_address)
    assert err.name == "EFirewallListFull"


def test_host_settings(ledger: LocalLedger, world: World) -> None:
    h = world.host
    unchanged(ledger, HostConfigError, ledger.set_noise_static_key, SERVER, h, b"short")
    unchanged(ledger, HostConfigError, ledger.set_endpoints, SERVER, h, [b"x"] * 17)
    unchanged(ledger, HostConfigError, ledger.set_endpoints, SERVER, h, [b"x" * 257])
    unchanged(ledger, HostConfigError, ledger.set_firewall_mode, SERVER, h, 2)
    unchanged(ledger, HostConfigError, ledger.add_service, SERVER, h, 7, "raw", SLA)
    unchanged(ledger, ServiceNotFound, ledger.update_service, SERVER, h, 8, SLA)
    unchanged(ledger, ServiceNotFound, ledger.remove_service, SERVER, h, 8)
    ledger.set_endpoints(SERVER, h, [])
    ledger.set_noise_static_key(SERVER, h, b"\x02" * 32)
    ledger.set_firewall_mode(SERVER, h, 1)
    ledger.allow(SERVER, h, CLIENT.sui_address)
    ledger.allow(SERVER, h, CLIENT.sui_address)
    ledger.deny(SERVER, h, CLIENT.sui_address)
    host = ledger.get_host(h)
    assert host.firewall.mode is FirewallMode.ALLOW_LISTED
    assert (host.firewall.allow_count, host.firewall.deny_count) == (1, 1)
    assert ledger.firewall_list(h, "allow") == (CLIENT.sui_address,)
    assert not ledger.permits(host, CLIENT.sui_address)
    unchanged(ledger, FirewallDenied, world.open)
    ledger.undeny(SERVER, h, CLIENT.sui_address)
    ledger.disallow(SERVER, h, CLIENT.sui_address)
    unchanged(ledger, FirewallDenied, world.open)
    ledger.set_firewall_mode(SERVER, h, 0)
    # update_service applies to later connections only
    conn, _ = world.open()
    ledger.update_service(SERVER, h, 7, Sla(99, 0, 1), 1)
    assert ledger.get_connection(conn).sla == SLA
    # the limit of 1 is published, not counted: the host's admission enforces it
    second, _ = world.open()
    assert ledger.get_host(h).services[7].max_connections == 1
    # removed under open connections, which go on under their own SLA
    ledger.remove_service(SERVER, h, 7)
    unchanged(ledger, ServiceNotFound, world.open)
    ledger.close_connection(CLIENT, conn)
    ledger.close_connection(SERVER, second)
    assert ledger.settle(SERVER, second).refunded == 1000
    new = ident(0x44)
    ledger.set_authority(SERVER, h, new.sui_address)
    unchanged(ledger, NotAuthorized, ledger.deny, SERVER, h, CLIENT.sui_address)


def test_open_key_checks(ledger: LocalLedger, world: World) -> None:
    err = unchanged(
        ledger, InvalidReceipt, ledger.open_connection, CLIENT, world.host, 7, world.cap, 1000, b"x"
    )
    assert err.name == "EInvalidPublicKey"
    err = unchanged(
        ledger,
        InvalidReceipt,
        ledger.open_connection,
        CLIENT,
        world.host,
        7,
        world.cap,
        1000,
        MALLORY.ed25519_public,
    )
    assert err.name == "EKeyMismatch"
    mallory_cap = ledger.create_spending_cap(MALLORY, 1)
    err = unchanged(
        ledger, NotAuthorized, ledger.open_connection, CLIENT, world.host, 7, mallory_cap, 1000
    )
    assert err.name == "ENotCapOwner"


# -- escrow and closing --------------------------------------------------------------------


def test_claims_and_receipt_errors(ledger: LocalLedger, world: World) -> None:
    conn, escrow = world.open()
    claim = ledger.claim
    bad_amount = Receipt(ledger.receipt_scope(conn), 1024, 0, 11, 1).sign(CLIENT)
    assert (
        unchanged(ledger, InvalidReceipt, claim, SERVER, escrow, bad_amount).name
        == "EAmountMismatch"
    )
    assert (
        claim(SERVER, escrow, Receipt(ledger.receipt_scope(conn), 10240, 4, 120, 5).sign(CLIENT))
        == 120
    )
    err = unchanged(
        ledger,
        ReplayedReceipt,
        claim,
        SERVER,
        escrow,
        Receipt(ledger.receipt_scope(conn), 0, 0, 0, 5).sign(CLIENT),
    )
    assert isinstance(err, InvalidReceipt)
    lower = Receipt(ledger.receipt_scope(conn), 0, 1, 5, 6).sign(CLIENT)
    assert (
        unchanged(ledger, InvalidReceipt, claim, SERVER, escrow, lower).name
        == "EReceiptNotCumulative"
    )
    other_cap = ledger.create_spending_cap(CLIENT, 10**6)
    err = unchanged(ledger, ChainError, ledger.top_up, CLIENT, escrow, 500, cap_id=other_cap)
    assert err.name == "EWrongSpendingCap"
    # top up then claim beyond the original deposit
    ledger.top_up(CLIENT, escrow, 500)
    assert (
        claim(SERVER, escrow, Receipt(ledger.receipt_scope(conn), 102400, 0, 1000, 7).sign(CLIENT))
        == 880
    )
    e = ledger.get_escrow(escrow)
    assert (e.deposited, e.claimed, e.balance, e.latest_nonce) == (1500, 1000, 500, 7)
    # zero payment claims still count (same amount, higher nonce)
    assert (
        claim(SERVER, escrow, Receipt(ledger.receipt_scope(conn), 102400, 0, 1000, 8).sign(CLIENT))
        == 0
    )


def test_closing_rules(ledger: LocalLedger, world: World) -> None:
    conn, escrow = world.open()
    assert (
        unchanged(ledger, ConnectionStateError, ledger.finalize, CLIENT, conn).name
        == "ENotHalfClosed"
    )
    # an Open connection: the client must half-close first (the server may settle it at
    # once, closing it in the same transaction: tests/hostid/test_memoized_checks.py)
    assert (
        unchanged(ledger, ConnectionStateError, ledger.settle, CLIENT, conn).name
        == "EConnectionOpen"
    )
    ledger.close_connection(SERVER, conn)
    err = unchanged(ledger, ConnectionStateError, ledger.close_connection, SERVER, conn)
    assert err.name == "EAlreadyHalfClosed"
    assert (
        unchanged(ledger, ConnectionStateError, ledger.settle, CLIENT, conn).name
        == "ETimeoutNotReached"
    )
    conn2, escrow2 = world.open()
    err = unchanged(ledger, ChainError, ledger.settle, SERVER, conn, escrow_id=escrow2)
    assert err.name == "EWrongEscrow"
    other_cap = ledger.create_spending_cap(CLIENT, 10**6)
    err = unchanged(ledger, ChainError, ledger.settle, SERVER, conn, cap_id=other_cap)
    assert err.name == "EWrongSpendingCap"
    # the server may settle a half-closed connection at once; it becomes Closed
    settlement = ledger.settle(SERVER, conn)
    assert (settlement.refunded, settlement.claimed) == (1000, 0)
    tc = ledger.get_connection(conn)
    assert tc.state is ConnectionState.CLOSED and tc.settled
    assert (
        unchanged(ledger, ConnectionStateError, ledger.settle, SERVER, conn).name
        == "EAlreadySettled"
    )
    assert (
        unchanged(ledger, ConnectionStateError, ledger.close_connection, CLIENT, conn).name
        == "EConnectionClosed"
    )
    assert (
        unchanged(ledger, ConnectionStateError, ledger.top_up, CLIENT, escrow, 1).name
        == "EEscrowSettled"
    )
    receipt = Receipt(ledger.receipt_scope(conn), 0, 1, 5, 1).sign(CLIENT)
    assert (
        unchanged(ledger, ConnectionStateError, ledger.claim, SERVER, escrow, receipt).name
        == "EEscrowSettled"
    )
    # a Closed connection: the client settles only after the timeout from the first close
    ledger.close_connection(CLIENT, conn2)
    ledger.advance_clock(10)
    ledger.close_connection(SERVER, conn2)
    assert (
        unchanged(ledger, ConnectionStateError, ledger.settle, CLIENT, conn2).name
        == "ETimeoutNotReached"
    )
    ledger.advance_clock(600_000 - 10)
    assert ledger.settle(CLIENT, conn2).refunded == 1000
    assert ledger.balance(CLIENT.sui_address) == 100_000


# -- pipes and broadcasts ------------------------------------------------------------------


def test_pipes(ledger: LocalLedger, world: World) -> None:
    conn, _ = world.open()
    assert (
        unchanged(ledger, PipeError, ledger.create_pipe, CLIENT, conn, 0).name
        == "EInvalidInnerCount"
    )
    assert (
        unchanged(ledger, PipeError, ledger.create_pipe, CLIENT, conn, 9).name
        == "EInvalidInnerCount"
    )
    unchanged(ledger, NotAuthorized, ledger.create_pipe, MALLORY, conn, 1)
    pipe = ledger.create_pipe(CLIENT, conn, 2)
    assert [ledger.pipe_send(CLIENT, pipe, 1, b"d%d" % i) for i in range(3)] == [0, 1, 2]
    assert ledger.pipe_send(CLIENT, pipe, 0, b"") == 0
    assert (
        unchanged(ledger, PipeError, ledger.pipe_send, CLIENT, pipe, 2, b"").name
        == "EInnerNotFound"
    )
    err = unchanged(ledger, PipeError, ledger.pipe_send, CLIENT, pipe, 0, b"x" * 16385)
    assert err.module == "inner_pipe" and err.name == "EDataTooLarge"
    assert (
        unchanged(ledger, PipeError, ledger.pipe_sync, CLIENT, pipe, 1, 4).name == "EAckBeyondSent"
    )
    ledger.pipe_sync(CLIENT, pipe, 1, 2)
    assert (
        unchanged(ledger, PipeError, ledger.pipe_sync, CLIENT, pipe, 1, 1).name == "EAckRegressed"
    )
    assert ledger.get_pipe(pipe).inners[1].in_flight == 1
    sent, _ = ledger.events(filter=EventFilter(type="PipeDataSent", object_id=pipe))
    assert [e["data"] for e in sent] == [b"d0", b"d1", b"d2", b""]
    ledger.destroy_pipe(CLIENT, pipe)
    unchanged(ledger, ObjectNotFound, ledger.get_pipe, pipe)
    ledger.close_connection(CLIENT, conn)
    ledger.close_connection(SERVER, conn)
    unchanged(ledger, ConnectionStateError, ledger.create_pipe, CLIENT, conn, 1)


def test_broadcast_rules(ledger: LocalLedger) -> None:
    b_err = unchanged(ledger, ChainError, ledger.create_broadcast, SERVER, "c", 0, 10)
    assert b_err.name == "EInvalidSlot"
    b = ledger.create_broadcast(SERVER, "news", 100, 1000)
    ledger.faucet(CLIENT.sui_address, 1000)
    assert (
        unchanged(ledger, ChainError, ledger.broadcast_contribute, CLIENT, b, 0).name
        == "EZeroAmount"
    )
    unchanged(ledger, BroadcastNotAuthorized, ledger.broadcast_transmit, CLIENT, b, b"x")
    assert (
        unchanged(ledger, ChainError, ledger.broadcast_transmit, SERVER, b, b"x").name
        == "ENotOnAir"
    )
    assert (
        unchanged(ledger, ChainError, ledger.broadcast_withdraw, CLIENT, b).name == "ENotCancelled"
    )
    ledger.broadcast_contribute(CLIENT, b, 150)
    assert ledger.broadcast_transmit(SERVER, b, b"hi") == 0
    err = unchanged(ledger, ChainError, ledger.broadcast_transmit, SERVER, b, b"x" * 16385)
    assert err.module == "broadcast" and err.name == "EDataTooLarge"
    ledger.set_clock(1000)
    assert not ledger.is_on_air(b)
    ledger.broadcast_cancel(SERVER, b)
    assert (
        unchanged(ledger, ChainError, ledger.broadcast_cancel, SERVER, b).name
        == "EBroadcastCancelled"
    )
    assert (
        unchanged(ledger, ChainError, ledger.broadcast_withdraw, MALLORY, b).name
        == "ENoContribution"
    )
    assert ledger.broadcast_withdraw(CLIENT, b) == 50
    assert ledger.broadcast_claim(SERVER, b) == 100
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


# -- events, clock, epoch ------------------------------------------------------------------


def test_events_and_cursor(ledger: LocalLedger, world: World) -> None:
    events, cursor = ledger.events()
    assert [e.type for e in events] == [
        "dtp::host::HostCreated",
        "dtp::host::ServiceAdded",
        "dtp::spending_cap::SpendingCapCreated",
    ]
    assert events[0]["authority"] == SERVER.sui_address and events[0].sender == SERVER.sui_address
    assert ledger.events(cursor) == ([], cursor)
    conn, _escrow = world.open()
    opened, cursor2 = ledger.events(cursor, EventFilter(module="transport_control"))
    assert opened[0]["connection"] == conn and opened[0]["sla"]["price_per_kib"] == 10
    assert int(cursor2 or 0) > int(cursor or 0)
    limited, c = ledger.events(None, limit=1)
    assert len(limited) == 1 and c == limited[0].cursor
    with pytest.raises(InvalidArgument):
        ledger.events("nope")


def test_wait_events_wakes_on_commit(ledger: LocalLedger, world: World) -> None:
    _, cursor = ledger.events()
    assert ledger.wait_events(cursor, 0.05) == ([], cursor)
    timer = threading.Timer(0.05, lambda: ledger.create_spending_cap(CLIENT, 1))
    timer.start()
    events, _ = ledger.wait_events(cursor, 5.0)
    timer.join()
    assert [e.name for e in events] == ["SpendingCapCreated"]


def test_wait_events_async(ledger: LocalLedger) -> None:
    import asyncio

    ledger.create_spending_cap(CLIENT, 1)
    events, _ = asyncio.run(ledger.wait_events_async(None, 1.0))
    assert len(events) == 1


def test_clock_modes(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "l.sqlite")
    assert not ledger.clock_frozen()
    now = ledger.clock_ms()
    assert now > 1_600_000_000_000  # wall time
    assert ledger.advance_clock(60_000) >= now + 60_000
    frozen = ledger.freeze_clock()
    assert ledger.clock_ms() == frozen
    assert ledger.advance_clock(5) == frozen + 5
    with pytest.raises(ValueError):
        ledger.set_clock(frozen)
    ledger.unfreeze_clock()
    assert ledger.clock_ms() >= frozen + 5
    assert ledger.epoch() == 0 and ledger.advance_epoch() == 1 and ledger.epoch() == 1
    ledger.close()


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DTP_LEDGER", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_ledger_path() == tmp_path / "dtp" / "localnet.sqlite"
    monkeypatch.setenv("DTP_LEDGER", str(tmp_path / "x.db"))
    assert default_ledger_path() == tmp_path / "x.db"


def test_persistence(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    with LocalLedger(path, clock_ms=0) as first:
        world = World(first)
        conn, _ = world.open()
    second = LocalLedger(path)
    assert second.get_connection(conn).client == CLIENT.sui_address
    assert second.clock_ms() == 0 and second.balance(CLIENT.sui_address) == 99_000
    second.close()


# -- two processes, one file ---------------------------------------------------------------

CYCLES = 200


def _hammer(path: str, seed: int, host: str, cycles: int) -> None:
    ledger = LocalLedger(path)
    me = ident(seed)
    cap = ledger.create_spending_cap(me, 10**9)
    for _ in range(cycles):
        ledger.faucet(me.sui_address, 1000)
        opened = ledger.open_connection(me, host, 7, cap, 1000)
        ledger.close_connection(me, opened.connection_id)
        ledger.close_connection(SERVER, opened.connection_id)
        ledger.settle(SERVER, opened.connection_id)
    ledger.close()


def test_two_processes_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    setup = LocalLedger(path)
    host = setup.create_host(SERVER, b"\x01" * 32)
    setup.add_service(SERVER, host, 7, "raw", SLA)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, s, host, CYCLES)) for s in (0x51, 0x52)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    for seed in (0x51, 0x52):
        assert setup.balance(ident(seed).sui_address) == 1000 * CYCLES
    audit = setup.audit()
    assert audit["minted"] == 2 * 1000 * CYCLES == audit["balances"]
    # 400 opens, closes and settlements, none of which wrote the Host
    assert setup.object_ref(host).version == 2
    opened, _ = setup.events(filter=EventFilter(type="ConnectionOpened"), limit=10**6)
    assert len(opened) == 2 * CYCLES
    assert len(setup.objects("TransportControl")) == 2 * CYCLES
    setup.close()
