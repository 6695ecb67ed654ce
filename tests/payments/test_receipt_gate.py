"""Sans-I/O parts of paid connections: the client meter, the server's receipt gate, the
token buckets and the host policy (dtp.payments.metering, dtp.payments._ratelimit), plus the
ledger-side helpers of dtp.payments._settlement on a LocalLedger file."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.errors import (
    ConnectionStateError,
    InvalidArgument,
    InvalidReceipt,
    ObjectNotFound,
    ReplayedReceipt,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._gate import GateState, ReceiptGate
from dtp.payments._ratelimit import HostPolicy, RateLimiter, TokenBucket
from dtp.payments._settlement import claim_and_settle, collect_refund, recover_unclaimed
from dtp.payments.metering import ClientMeter, MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, fee
from tests.support.scopes import scope_of

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
CID = "0x" + "ab" * 32
OTHER_CID = "0x" + "cd" * 32


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


CLIENT, SERVER, MALLORY = ident(0x51), ident(0x52), ident(0x53)


def gate(store: ReceiptStore | None = None, **kw: int) -> ReceiptGate:
    args: dict[str, int] = {"deposited": 10_000, "pause_timeout_ms": 1000}
    args.update(kw)
    return ReceiptGate(
        scope=scope_of(CID),
        client_public_key=CLIENT.ed25519_public,
        sla=SLA,
        store=store,
        **args,  # type: ignore[arg-type]
    )


def receipt(total_bytes: int, requests: int, nonce: int, signer: HostIdentity = CLIENT) -> bytes:
    amount = fee(SLA, total_bytes, requests)
    return Receipt(scope_of(CID), total_bytes, requests, amount, nonce).sign(signer).encode()


# -- client meter ---------------------------------------------------------------------------


def test_client_meter_cadence_and_cumulative_receipts() -> None:
    meter = ClientMeter(
        CLIENT, scope_of(CID), SLA, 10_000, MeteringConfig(every_bytes=4096, every_ms=0)
    )
    assert meter.update(0, 1000, 1) is None
    assert meter.update(1, 1000, 1) is None  # nothing new
    first = meter.update(2, 5000, 1)
    assert first is not None and (first.total_bytes, first.total_requests, first.nonce) == (
        5000,
        1,
        1,
    )
    assert first.total_amount == fee(SLA, 5000, 1) and first.verify(CLIENT.ed25519_public)
    assert meter.update(3, 6000, 1) is None
    final = meter.flush(4)
    assert final is not None and final.total_bytes == 6000 and final.nonce == 2
    assert meter.flush(5) is None  # nothing unpaid
    with pytest.raises(ValueError):
        meter.update(6, 10, 1)


@pytest.mark.parametrize(
    "bad",
    [
        {"every_bytes": -1},
        {"every_ms": 0.5},
        {"every_ms": -1000},
        {"every_requests": None},
        {"every_bytes": 2**70},
        {"every_ms": True},
        {"enabled": 1},
    ],
)
def test_metering_config_refuses_bad_values_when_made(bad: dict[str, object]) -> None:
    """A bad cadence is refused when the config is made, so a connect never gets as far
    as the ledger open with it (it was refused only once the deposit had moved)."""
    with pytest.raises(InvalidArgument):
        MeteringConfig(**bad)  # type: ignore[arg-type]


def test_client_meter_time_cadence() -> None:
    meter = ClientMeter(
        CLIENT, scope_of(CID), SLA, 10_000, MeteringConfig(every_bytes=0, every_ms=100)
    )
    assert meter.update(50, 10, 0) is None
    assert meter.update(99, 10, 0) is None
    due = meter.update(100, 10, 0)
    assert due is not None and due.total_bytes == 10


def test_client_meter_quiet_until_is_where_update_would_do_nothing() -> None:
    """Adapters skip update() below quiet_until(): it must never skip a receipt."""
    meter = ClientMeter(
        CLIENT, scope_of(CID), SLA, 10_000, MeteringConfig(every_bytes=4096, every_ms=100)
    )
    assert meter.update(0, 10, 1) is None
    quiet_bytes, due_ms = meter.quiet_until()
    assert due_ms is not None
    # anything below both marks: update does nothing, whatever the call
    for now_ms, total in ((1, 10), (due_ms - 1, quiet_bytes - 1)):
        assert meter.update(now_ms, total, 1) is None
        assert meter.quiet_until() == (quiet_bytes, due_ms)
    # at the time mark, a receipt for the unpaid usage; the marks move on
    receipt = meter.update(due_ms, quiet_bytes - 1, 1)
    assert receipt is not None and receipt.total_bytes == quiet_bytes - 1
    later_bytes, later_ms = meter.quiet_until()
    assert later_ms is not None and later_ms > due_ms and later_bytes > quiet_bytes - 1


def test_client_meter_never_signs_beyond_the_deposit() -> None:
    deposit = 1005  # 100 KiB + 1 request at 10/KiB and 5/request
    meter = ClientMeter(
        CLIENT, scope_of(CID), SLA, deposit, MeteringConfig(every_bytes=1 << 30, every_ms=0)
    )
    last = meter.update(0, 500 * 1024, 1)
    assert meter.exhausted
    assert last is not None and last.total_amount == deposit
    assert (last.total_bytes, last.total_requests) == (100 * 1024, 1)
    assert meter.update(1, 900 * 1024, 2) is None  # nothing more is ever signed
    assert meter.flush(2) is None


# -- receipt gate ---------------------------------------------------------------------------


def test_gate_keeps_valid_receipts_durably_and_rejects_bad_ones(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path / "r.db")
    g = gate(store)
    kept = g.receive(receipt(4096, 1, 1))
    assert g.latest_amount == kept.total_amount == 45
    stored = ReceiptStore(tmp_path / "r.db").latest(CID)  # another handle: it is on disk
    assert stored is not None and stored.receipt == kept
    with pytest.raises(ReplayedReceipt):
        g.receive(receipt(8192, 1, 1))
    with pytest.raises(InvalidReceipt) as bad_sig:
        g.receive(receipt(8192, 1, 2, signer=MALLORY))
    assert bad_sig.value.name == "EBadSignature"
    wrong_conn = Receipt(scope_of(OTHER_CID), 1024, 1, 15, 3).sign(CLIENT).encode()
    with pytest.raises(InvalidReceipt):
        g.receive(wrong_conn)
    with pytest.raises(InvalidReceipt) as beyond:
        g.receive(receipt(2 << 20, 1, 4))
    assert beyond.value.name == "EReceiptExceedsDeposit"
    with pytest.raises(InvalidReceipt) as lower:
        g.receive(receipt(1024, 1, 5))
    assert lower.value.name == "EReceiptNotCumulative"
    with pytest.raises(InvalidReceipt):
        g.receive(b"short")
    assert g.latest_amount == 45 and g.violation is not None
    assert g.verdict(0, 0, 0).state is GateState.CLOSE


def test_gate_pauses_beyond_the_allowance_and_closes_after_the_timeout() -> None:
    g = gate()
    assert g.allowance == SLA.min_deposit  # the default: the SLA's minimum deposit
    assert g.verdict(0, 99 * 1024, 1).state is GateState.SERVE  # 995 MIST on credit
    paused = g.verdict(10, 200 * 1024, 1)
    assert paused.state is GateState.PAUSE and paused.owed == 2005
    assert g.verdict(500, 200 * 1024, 1).state is GateState.PAUSE
    g.receive(receipt(150 * 1024, 1, 1))  # owed now 500: resume
    assert g.verdict(600, 200 * 1024, 1).state is GateState.SERVE
    assert g.verdict(700, 400 * 1024, 1).state is GateState.PAUSE
    closed = g.verdict(1700, 400 * 1024, 1)
    assert closed.state is GateState.CLOSE and "payment required" in closed.reason


def test_gate_custom_allowance_and_the_deposit_ceiling() -> None:
    g = gate(allowance=0, deposited=300)
    assert g.verdict(0, 1, 0).state is GateState.PAUSE
    g.receive(receipt(20 * 1024, 0, 1))  # 200 MIST: within the deposit
    with pytest.raises(InvalidReceipt) as above:
        g.receive(receipt(50 * 1024, 0, 2))  # 500 MIST: beyond the deposit
    assert above.value.name == "EReceiptExceedsDeposit"
    assert g.violation is None and g.latest_amount == 200 and g.latest_nonce == 1
    assert g.owed(50 * 1024, 0) == 300


# -- rate limits and host policy ------------------------------------------------------------


def test_token_bucket_back_pressure() -> None:
    bucket = TokenBucket(1000, now=0.0, burst_seconds=0.5)
    assert bucket.charge(400, 0.0) == 0.0
    assert bucket.charge(600, 0.0) == pytest.approx(0.5)  # 500 in debt at 1000/s
    assert bucket.delay(0.25) == pytest.approx(0.25)
    assert bucket.delay(1.0) == 0.0
    bucket.set_rate(0, 1.0)
    assert bucket.charge(10**9, 1.0) == 0.0  # 0 = unlimited
    with pytest.raises(ValueError):
        TokenBucket(-1, 0.0)


def test_rate_limiter_is_per_client_and_follows_new_limits() -> None:
    limiter = RateLimiter(bytes_per_sec=100)
    a1 = limiter.acquire("0xa", 0.0)
    a2 = limiter.acquire("0xa", 0.0)
    b = limiter.acquire("0xb", 0.0)
    assert a1 is a2 and a1 is not b  # one budget per client, across its connections
    assert a1.bytes.charge(125, 0.0) == pytest.approx(1.0)
    limiter.set_limits(1000, 7, 0.0)
    assert a1.bytes.rate == b.bytes.rate == 1000 and b.requests.rate == 7
    limiter.release("0xa")
    assert "0xa" in limiter.clients
    limiter.release("0xa")
    assert "0xa" not in limiter.clients


def test_host_policy_refresh_sees_deny_and_limits(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "l.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    policy = HostPolicy(ledger.get_host(host_id), now=0.0, refresh_interval=2.0)
    assert not policy.due(1.9) and policy.due(2.0)
    ledger.deny(SERVER, host_id, CLIENT.sui_address)
    ledger.set_client_limits(SERVER, host_id, 0, 5000, 3)
    host = ledger.get_host(host_id)
    refused = ledger.refused(host, {CLIENT.sui_address, MALLORY.sui_address})
    assert refused == {CLIENT.sui_address}
    change = policy.refresh(host, 2.0, refused)
    assert change.denied == {CLIENT.sui_address}
    assert change.limits_changed and change.firewall.max_bytes_per_sec == 5000
    assert not ledger.permits(host, CLIENT.sui_address) and ledger.permits(
        host, MALLORY.sui_address
    )
    assert not policy.due(3.9)
    assert not policy.refresh(ledger.get_host(host_id), 4.0).limits_changed


# -- settlement on the ledger ---------------------------------------------------------------


def conserved(ledger: LocalLedger) -> bool:
    a = ledger.audit()
    return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]


def open_paid(ledger: LocalLedger, deposit: int = 5000) -> tuple[str, str]:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, 7, "echo", SLA)
    ledger.faucet(CLIENT.sui_address, 100_000)
    cap = ledger.create_spending_cap(CLIENT, deposit)
    opened = ledger.open_connection(CLIENT, host_id, 7, cap, deposit)
    return host_id, opened.connection_id


def test_recovery_claims_stored_receipts_and_refunds_the_rest(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "l.db")
    _, cid = open_paid(ledger)
    store = ReceiptStore(tmp_path / "r.db")
    r = Receipt(ledger.receipt_scope(cid), 100 * 1024, 2, fee(SLA, 100 * 1024, 2), 3).sign(CLIENT)
    assert store.keep(r)
    done = recover_unclaimed(ledger, SERVER, ReceiptStore(tmp_path / "r.db"))
    assert [c for c, _ in done] == [cid]
    assert done[0][1].claimed == 1010 and done[0][1].refunded == 5000 - 1010
    assert ledger.balance(SERVER.sui_address) == 1010
    assert list(store.unclaimed()) == []
    assert collect_refund(ledger, CLIENT, cid) == 5000 - 1010  # already settled: reported
    assert claim_and_settle(ledger, SERVER, cid, store) is None
    assert conserved(ledger)


def test_recovery_writes_off_a_receipt_whose_connection_was_settled_and_deleted(
    tmp_path: Path,
) -> None:
    """A stored receipt of a connection its client settled alone and then deleted
    (docs/escrow.md §7, "Deletion"): the recovery reads the settlement from its event and
    writes the receipt off, rather than failing on the missing object every round."""
    ledger = LocalLedger(tmp_path / "l.db", clock_ms=1_000_000)
    _, cid = open_paid(ledger)
    store = ReceiptStore(tmp_path / "r.db")
    r = Receipt(ledger.receipt_scope(cid), 100 * 1024, 2, fee(SLA, 100 * 1024, 2), 3).sign(CLIENT)
    assert store.keep(r)
    with pytest.raises(ConnectionStateError):
        collect_refund(ledger, CLIENT, cid)  # half-closed; the server missed its time
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    assert collect_refund(ledger, CLIENT, cid) == 5000
    ledger.destroy_connection(CLIENT, cid)
    with pytest.raises(ObjectNotFound):
        ledger.get_connection(cid)
    assert recover_unclaimed(ledger, SERVER, ReceiptStore(tmp_path / "r.db")) == []
    assert list(store.unclaimed()) == []
    assert claim_and_settle(ledger, SERVER, cid, store) is None
    assert ledger.balance(SERVER.sui_address) == 0
    assert conserved(ledger)


def test_client_refund_waits_for_the_half_close_timeout(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "l.db", clock_ms=1_000_000)
    _, cid = open_paid(ledger)
    before = ledger.balance(CLIENT.sui_address)
    with pytest.raises(ConnectionStateError) as early:
        collect_refund(ledger, CLIENT, cid)  # half-closes, but the server has time to claim
    assert early.value.name == "ETimeoutNotReached"
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    assert collect_refund(ledger, CLIENT, cid) == 5000
    assert ledger.balance(CLIENT.sui_address) == before + 5000
    assert conserved(ledger)


def test_client_meter_exhaustion_receipt_is_returned_even_when_the_cadence_signed_it() -> None:
    meter = ClientMeter(
        CLIENT, scope_of(CID), SLA, 1005, MeteringConfig(every_bytes=1024, every_ms=0)
    )
    assert meter.update(0, 2048, 1) is not None
    last = meter.update(1, 10 << 20, 1)  # the cadence is due too
    assert meter.exhausted and last is not None and last.total_amount == 1005
    assert last == meter.latest


def test_a_claim_is_paid_though_the_cap_is_used_up_and_lowered(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "l.db")
    _, cid = open_paid(ledger, deposit=5000)  # on a cap of 5000: used up by the open
    cap = ledger.get_escrow(ledger.get_connection(cid).escrow).spending_cap
    assert ledger.get_cap(cap).remaining(ledger.epoch()) == 0
    ledger.set_max_per_epoch(CLIENT, cap, 0)  # and lowered to nothing
    store = ReceiptStore(tmp_path / "r.db")
    store.keep(Receipt(ledger.receipt_scope(cid), 150 * 1024, 0, 1500, 1).sign(CLIENT))
    # the deposit was reserved at the open: the claim cannot be refused by the cap
    settlement = claim_and_settle(ledger, SERVER, cid, store)
    assert settlement is not None and (settlement.claimed, settlement.refunded) == (1500, 3500)
    assert ledger.get_connection(cid).settled
    assert list(store.unclaimed()) == []
    assert ledger.get_cap(cap).spent == 1500  # the refund released within the epoch
    assert conserved(ledger)


def test_gate_counts_a_receipt_only_once_kept_and_refuses_replays_meanwhile() -> None:
    g = gate()
    first = g.check(receipt(300 * 1024, 1, 1))
    assert g.owed(300 * 1024, 1) == 3005  # checked, not yet on disk: not counted
    with pytest.raises(ReplayedReceipt):
        g.check(receipt(300 * 1024, 1, 1))
    g.kept(first)
    assert g.owed(300 * 1024, 1) == 0 and g.latest == first


def test_receipt_writer_stores_the_newest_and_reports_it(tmp_path: Path) -> None:
    import threading

    from dtp.payments._receipt_writer import ReceiptWriter

    store = ReceiptStore(tmp_path / "r.db")
    writer = ReceiptWriter(store)
    done: list[int] = []
    lock = threading.Lock()

    def record(r: Receipt) -> None:
        with lock:
            done.append(r.nonce)

    for nonce in range(1, 21):
        writer.submit(Receipt.decode(receipt(1024 * nonce, 1, nonce)), record)
    assert writer.flush(CID, timeout=10)
    stored = store.latest(CID)
    assert stored is not None and stored.receipt.nonce == 20
    assert done[-1] == 20 and done == sorted(done)  # older ones may be skipped, never reordered
    writer.close()
    with pytest.raises(RuntimeError):
        writer.submit(stored.receipt, record)


def test_gate_serving_is_the_verdicts_fast_path() -> None:
    g = gate()
    assert g.serving(99 * 1024, 1)
    assert not g.serving(200 * 1024, 1)
    assert g.verdict(0, 200 * 1024, 1).state is GateState.PAUSE
    assert g.serving(10, 1)  # back within the allowance: the pause is over
    assert g.verdict(5000, 200 * 1024, 1).state is GateState.PAUSE  # a new pause, not a close
    g.violation = "invalid receipt"
    assert not g.serving(0, 0)


def test_client_meter_counts_small_writes_in_steps_but_pays_them_when_asked() -> None:
    meter = ClientMeter(
        CLIENT, scope_of(CID), SLA, 10_000, MeteringConfig(every_bytes=16 * 1024, every_ms=0)
    )
    for n in range(1, 10):
        assert meter.update(n, n * 100, 1) is None  # below a step: not even counted yet
    paid = meter.update(10, 1000, 1, force=True) or meter.flush(10)
    assert paid is not None and (paid.total_bytes, paid.total_requests) == (1000, 1)


@pytest.mark.parametrize("requests", [0, 1, 3])
def test_gate_credit_is_exactly_what_serving_allows(requests: int) -> None:
    g = gate()
    for used in (0, 1, 1023, 50 * 1024, 98 * 1024 + 7):
        credit = g.credit_bytes(used, requests)
        assert g.serving(used + credit, requests)
        assert not g.serving(used + credit + 1, requests)
    assert not g.serving(99 * 1024 + 7, 3) and g.credit_bytes(99 * 1024 + 7, 3) == 0
    g.kept(Receipt.decode(receipt(100 * 1024, requests, 1)))  # paid up: more credit
    assert g.credit_bytes(0, requests) > gate().credit_bytes(0, requests)
    assert g.serving(g.credit_bytes(0, requests), requests)
    g.violation = "invalid receipt"
    assert g.credit_bytes(0, requests) == 0
    assert gate().credit_bytes(10**9, requests) == 0  # beyond the allowance already
