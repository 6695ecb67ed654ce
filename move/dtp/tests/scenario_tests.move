/// The scenario table (tests/scenarios/*.toml), one test per scenario, same names.
/// A scenario whose last step expects an error is an `expected_failure` test here: the
/// steps before it run and are checked, the last one must abort with that error.
#[test_only]
module dtp::scenario_tests;

use dtp::broadcast::{Self, Broadcast};
use dtp::escrow::{Self, Escrow};
use dtp::host::{Self, Host};
use dtp::spending_cap::{Self, SpendingCap};
use dtp::test_helpers as th;
use dtp::tickets::{Self, TicketSale};
use dtp::transport_control::{Self, TransportControl};
use sui::test_scenario as ts;

// === Escrow stories ===

#[test]
fun deposit_claim_refund() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    assert!(th::claim(&mut scenario, 51200, 10, 550, 2, th::r2_sig()) == 430);
    th::close_as(&mut scenario, &clock, conn, th::client());
    th::close_as(&mut scenario, &clock, conn, th::server());
    th::settle_as(&mut scenario, &clock, conn, th::server());

    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 9450);
    assert!(th::balance_of(&scenario, th::server()) == 550);
    let e = scenario.take_shared<Escrow>();
    assert!(e.balance() == 0);
    assert!(e.claimed() == 550);
    assert!(e.refunded() == 450);
    assert!(e.latest_nonce() == 2);
    assert!(e.is_settled());
    ts::return_shared(e);
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    assert!(tc.state_code() == transport_control::state_closed());
    assert!(tc.is_settled());
    ts::return_shared(tc);
    th::finish(scenario, clock);
}

#[test]
fun settle_with_final_receipt() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::server());
    th::close_as(&mut scenario, &clock, conn, th::client());

    th::settle_with_receipt(&mut scenario, &clock, conn, 10240, 4, 120, 1, th::r1_sig());
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 9880);
    assert!(th::balance_of(&scenario, th::server()) == 120);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EReceiptExceedsDeposit)]
fun claim_beyond_deposit_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::claim(&mut scenario, 204800, 0, 2000, 3, th::rbig_sig());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EReplayedReceipt)]
fun replayed_receipt_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EBadSignature)]
fun forged_receipt_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_by_mallory_sig());
    th::finish(scenario, clock);
}

// === Spending cap stories ===

#[test, expected_failure(abort_code = spending_cap::ESpendingCapExceeded)]
fun cap_refuses_open_beyond_limit() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1500, 10_000);
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 1000);
    assert!(th::cap_remaining(&mut scenario, cap_id) == 500);
    // 1000 + 1000 > 1500.
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::finish(scenario, clock);
}

#[test]
fun cap_resets_next_epoch() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 120 && outstanding == 0);
    assert!(th::cap_remaining(&mut scenario, cap_id) == 880);
    scenario.next_epoch(th::server());
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);

    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 8_880);
    let cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    assert!(cap.epoch() == 1);
    assert!(cap.claimed() == 0 && cap.outstanding() == 1000);
    assert!(cap.remaining(scenario.ctx()) == 0);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = spending_cap::ESpendingCapExceeded)]
fun deposits_of_past_epochs_stay_outstanding() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_epoch(th::server());
    // Still claimable, so still counted: deposits of many epochs never land in one.
    assert!(th::cap_remaining(&mut scenario, cap_id) == 0);
    let (_, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(outstanding == 1000);
    th::top_up(&mut scenario, 1);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = spending_cap::ESpendingCapExceeded)]
fun claims_of_a_past_epoch_free_room_at_top_up() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 1000);
    let (reserved, claim_epoch, claimed_in_epoch) = th::escrow_counts(&mut scenario);
    assert!(reserved == 1000 && claim_epoch == 0 && claimed_in_epoch == 120);
    scenario.next_epoch(th::server());
    // The escrow reports epoch 0's claim first: it leaves the count, and 120 fit.
    th::top_up(&mut scenario, 120);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 1000);
    assert!(th::cap_remaining(&mut scenario, cap_id) == 0);
    let (reserved, _, _) = th::escrow_counts(&mut scenario);
    assert!(reserved == 1000);
    th::top_up(&mut scenario, 1);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = spending_cap::ESpendingCapExceeded)]
fun claims_of_this_epoch_count_at_top_up() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1120, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    th::top_up(&mut scenario, 120);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 120 && outstanding == 1000);
    assert!(th::cap_remaining(&mut scenario, cap_id) == 0);
    th::top_up(&mut scenario, 1);
    th::finish(scenario, clock);
}

#[test]
fun claims_survive_a_spent_cap() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 2000, 10_000);
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    // The cap is used up (2000 of 2000); the claim charges nothing and is paid.
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 2000);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::server()) == 120);
    assert!(th::balance_of(&scenario, th::client()) == 8_000);
    th::finish(scenario, clock);
}

#[test]
fun zero_reservations_and_claims_survive_a_lowered_cap() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 2000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::set_cap(&mut scenario, cap_id, 500);
    th::top_up(&mut scenario, 0);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 120 && outstanding == 0);
    assert!(th::cap_remaining(&mut scenario, cap_id) == 380);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::server()) == 120);
    assert!(th::balance_of(&scenario, th::client()) == 9_880);
    th::finish(scenario, clock);
}

#[test]
fun settlement_releases_the_refund() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1120, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 120 && outstanding == 0);
    // The settled escrow has nothing left on the cap.
    let (reserved, _, _) = th::escrow_counts(&mut scenario);
    assert!(reserved == 0);
    // 120 + 1000 fits under 1120 only because the 880 refunded were released.
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 120 && outstanding == 1000);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 8_880);
    assert!(th::balance_of(&scenario, th::server()) == 120);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = spending_cap::ESpendingCapExceeded)]
fun top_up_beyond_cap_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1500, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::top_up(&mut scenario, 400);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 1400);
    scenario.next_tx(th::client());
    {
        let e = scenario.take_shared<Escrow>();
        assert!(e.balance() == 1400);
        ts::return_shared(e);
    };
    th::top_up(&mut scenario, 101);
    th::finish(scenario, clock);
}

// === Firewall stories ===

#[test, expected_failure(abort_code = host::EFirewallDenied)]
fun firewall_deny_list() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    {
        let mut h = scenario.take_shared<Host>();
        h.deny(th::client(), scenario.ctx());
        ts::return_shared(h);
    };
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EFirewallDenied)]
fun firewall_allow_list() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    {
        let mut h = scenario.take_shared<Host>();
        h.set_firewall_mode(host::mode_allow_listed(), scenario.ctx());
        h.allow(th::client(), scenario.ctx());
        ts::return_shared(h);
    };
    // Listed: admitted.
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    // Not listed: refused.
    scenario.next_tx(th::other());
    let other_cap = spending_cap::create(1_000_000, scenario.ctx());
    th::fund(&mut scenario, th::other(), 10_000);
    th::open_as(&mut scenario, &clock, th::other(), th::mallory_pk(), other_cap, 1000);
    th::finish(scenario, clock);
}

#[test]
fun connection_limits_published_not_counted() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 1, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    {
        let mut h = scenario.take_shared<Host>();
        h.set_client_limits(1, 0, 0, scenario.ctx());
        ts::return_shared(h);
    };
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    let second = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);

    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 8_000);
    let h = scenario.take_shared<Host>();
    assert!(h.service(th::port()).service_max_connections() == 1);
    assert!(h.firewall().max_connections_per_client() == 1);
    ts::return_shared(h);
    let tc = scenario.take_shared_by_id<TransportControl>(second);
    assert!(tc.state_code() == transport_control::state_open());
    ts::return_shared(tc);
    th::finish(scenario, clock);
}

// === Closing stories ===

#[test]
fun half_close_timeout() {
    let (mut scenario, mut clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    clock.set_for_testing(1_000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    clock.increment_for_testing(host::default_half_close_timeout_ms());
    th::finalize_as(&mut scenario, &clock, conn, th::client());
    th::settle_as(&mut scenario, &clock, conn, th::client());

    scenario.next_tx(th::client());
    assert!(th::balance_of(&scenario, th::client()) == 10_000);
    let cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    assert!(cap.epoch() == 0 && cap.claimed() == 0 && cap.outstanding() == 0);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ETimeoutNotReached)]
fun half_close_before_timeout_rejected() {
    let (mut scenario, mut clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    clock.set_for_testing(1_000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    clock.increment_for_testing(host::default_half_close_timeout_ms() - 1);
    th::finalize_as(&mut scenario, &clock, conn, th::client());
    th::finish(scenario, clock);
}

#[test]
fun long_half_close_timeout_protects_claims() {
    let (mut scenario, mut clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::update_service(&mut scenario, 10, 5, 1000, 3_600_000, 0);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::connection_timeout(&mut scenario, conn) == 3_600_000);
    clock.set_for_testing(1_000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    // the server comes back ten minutes later: its receipt is still claimable
    clock.increment_for_testing(600_000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    clock.increment_for_testing(3_000_000);
    th::settle_as(&mut scenario, &clock, conn, th::client());

    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 9_880);
    assert!(th::balance_of(&scenario, th::server()) == 120);
    let e = scenario.take_shared<Escrow>();
    assert!(e.balance() == 0 && e.claimed() == 120 && e.refunded() == 880 && e.is_settled());
    ts::return_shared(e);
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    assert!(tc.state_code() == transport_control::state_closed() && tc.is_settled());
    ts::return_shared(tc);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 120 && outstanding == 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ETimeoutNotReached)]
fun long_half_close_timeout_refuses_an_early_settle() {
    let (mut scenario, mut clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::update_service(&mut scenario, 10, 5, 1000, 3_600_000, 0);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    clock.set_for_testing(1_000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    clock.increment_for_testing(600_000);
    th::settle_as(&mut scenario, &clock, conn, th::client());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ETimeoutNotReached)]
fun open_connection_keeps_its_half_close_timeout() {
    let (mut scenario, mut clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let c1 = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::update_service(&mut scenario, 10, 5, 1000, 3_600_000, 0);
    let c2 = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::update_service(&mut scenario, 10, 5, 1000, 600_000, 0);
    assert!(th::connection_timeout(&mut scenario, c1) == 600_000);
    assert!(th::connection_timeout(&mut scenario, c2) == 3_600_000);
    clock.set_for_testing(1_000);
    th::close_as(&mut scenario, &clock, c1, th::client());
    th::close_as(&mut scenario, &clock, c2, th::client());
    clock.increment_for_testing(600_000);
    th::settle_as(&mut scenario, &clock, c1, th::client());
    th::settle_as(&mut scenario, &clock, c2, th::client());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EInvalidHalfCloseTimeout)]
fun half_close_timeout_below_minimum_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::update_service(&mut scenario, 10, 5, 1000, 599_999, 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EInvalidHalfCloseTimeout)]
fun half_close_timeout_above_maximum_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::update_service(&mut scenario, 10, 5, 1000, 604_800_001, 0);
    th::finish(scenario, clock);
}

// === Broadcast stories ===

#[test, expected_failure(abort_code = broadcast::ENotOnAir)]
fun broadcast_on_air_then_off() {
    let (mut scenario, mut clock) = th::start();
    scenario.next_tx(th::server());
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 250);
    assert!(th::on_air(&mut scenario, &clock));
    clock.set_for_testing(1_000);
    // Slot 0 paid (100), 150 left: slot 1 covered.
    assert!(th::on_air(&mut scenario, &clock));
    clock.set_for_testing(2_000);
    // Slot 1 paid (100), 50 left: slot 2 not covered.
    assert!(!th::on_air(&mut scenario, &clock));

    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.claim(&clock, scenario.ctx()) == 200);
        ts::return_shared(b);
    };
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::server()) == 200);
    assert!(th::balance_of(&scenario, th::listener_a()) == 750);
    {
        let mut b = scenario.take_shared<Broadcast>();
        b.transmit(b"hello", &clock, scenario.ctx());
        ts::return_shared(b);
    };
    th::finish(scenario, clock);
}

#[test]
fun broadcast_cancel_refunds() {
    let (mut scenario, mut clock) = th::start();
    scenario.next_tx(th::server());
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    th::fund(&mut scenario, th::listener_b(), 1_000);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 300);
    th::contribute_as(&mut scenario, &clock, th::listener_b(), 100);
    clock.set_for_testing(1_500);

    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        b.cancel(&clock, scenario.ctx());
        // Slot 0 was paid; slot 1 (in progress) is not.
        assert!(b.earned_value() == 100);
        assert!(b.pool_value() == 300);
        ts::return_shared(b);
    };
    scenario.next_tx(th::listener_a());
    {
        let mut b = scenario.take_shared<Broadcast>();
        // 300 * 300 / 400
        assert!(b.withdraw(scenario.ctx()) == 225);
        ts::return_shared(b);
    };
    scenario.next_tx(th::listener_b());
    {
        let mut b = scenario.take_shared<Broadcast>();
        // Last one out: the rest.
        assert!(b.withdraw(scenario.ctx()) == 75);
        ts::return_shared(b);
    };
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.claim(&clock, scenario.ctx()) == 100);
        assert!(b.pool_value() == 0);
        ts::return_shared(b);
    };
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::listener_a()) == 925);
    assert!(th::balance_of(&scenario, th::listener_b()) == 975);
    assert!(th::balance_of(&scenario, th::server()) == 100);
    th::finish(scenario, clock);
}

/// `who` takes back its shares' value from the broadcast: `withdraw` after a cancel, else
/// `leave`; returns the refund.
fun take_back(scenario: &mut ts::Scenario, clock: &sui::clock::Clock, who: address): u64 {
    scenario.next_tx(who);
    let mut b = scenario.take_shared<Broadcast>();
    let refund = if (b.is_cancelled()) {
        b.withdraw(scenario.ctx())
    } else {
        b.leave(clock, scenario.ctx())
    };
    ts::return_shared(b);
    refund
}

fun claim_as_server(scenario: &mut ts::Scenario, clock: &sui::clock::Clock): u64 {
    scenario.next_tx(th::server());
    let mut b = scenario.take_shared<Broadcast>();
    let amount = b.claim(clock, scenario.ctx());
    ts::return_shared(b);
    amount
}

#[test]
fun broadcast_late_listener_pays_no_past_slots() {
    let (mut scenario, mut clock) = th::start();
    scenario.next_tx(th::server());
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    th::fund(&mut scenario, th::listener_b(), 1_000);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 1_000);
    clock.set_for_testing(9_000);
    // Slots 0-8 are paid first (900, A's alone): B buys shares at 100 MIST for A's shares.
    th::contribute_as(&mut scenario, &clock, th::listener_b(), 1_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.earned_value() == 900);
        assert!(b.pool_value() == 1_100);
        clock.set_for_testing(9_500);
        b.cancel(&clock, scenario.ctx());
        ts::return_shared(b);
    };
    assert!(take_back(&mut scenario, &clock, th::listener_b()) == 1_000);
    // Last one out: what is left, A's own 100.
    assert!(take_back(&mut scenario, &clock, th::listener_a()) == 100);
    assert!(claim_as_server(&mut scenario, &clock) == 900);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::listener_a()) == 100);
    assert!(th::balance_of(&scenario, th::listener_b()) == 1_000);
    assert!(th::balance_of(&scenario, th::server()) == 900);
    th::finish(scenario, clock);
}

#[test]
fun broadcast_idle_listeners_leave() {
    let (mut scenario, mut clock) = th::start();
    scenario.next_tx(th::server());
    broadcast::create(b"news", 100, 100_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    th::fund(&mut scenario, th::listener_b(), 1_000);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 1_000);
    clock.set_for_testing(50_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.idle_ms() == 600_000);
        b.transmit(b"hello", &clock, scenario.ctx());
        ts::return_shared(b);
    };
    clock.set_for_testing(350_000);
    th::contribute_as(&mut scenario, &clock, th::listener_b(), 500);
    clock.set_for_testing(650_000);
    // B joined half way through slot 3: slots 0-2 and its first half (350) were A's
    // alone; the rest of it and slots 4-5 (250) are paid from 1150 held 650 (A) to 500
    // (B): A keeps 508 (508.69 rounded down), B, last out, 392.
    assert!(take_back(&mut scenario, &clock, th::listener_a()) == 508);
    assert!(take_back(&mut scenario, &clock, th::listener_b()) == 392);
    assert!(claim_as_server(&mut scenario, &clock) == 600);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::listener_a()) == 508);
    assert!(th::balance_of(&scenario, th::listener_b()) == 892);
    assert!(th::balance_of(&scenario, th::server()) == 600);
    {
        let b = scenario.take_shared<Broadcast>();
        assert!(b.pool_value() == 0 && b.earned_value() == 0);
        assert!(!b.is_on_air(&clock));
        ts::return_shared(b);
    };
    th::finish(scenario, clock);
}

/// Whether the broadcast's pool and earnings as last accounted are `pool` and `earned`.
fun pool_and_earned(scenario: &mut ts::Scenario, pool: u64, earned: u64): bool {
    scenario.next_tx(th::server());
    let b = scenario.take_shared<Broadcast>();
    let found = b.pool_value() == pool && b.earned_value() == earned;
    ts::return_shared(b);
    found
}

#[test]
fun broadcast_late_listener_pays_from_its_moment() {
    let (mut scenario, mut clock) = th::start();
    scenario.next_tx(th::server());
    broadcast::create(b"late", 100, 3_600_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 100);
    clock.set_for_testing(3_599_999);
    // The 3,599,999 ms gone by were off air: skipped, never paid.
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 100);
    assert!(th::on_air(&mut scenario, &clock));
    assert!(pool_and_earned(&mut scenario, 100, 0));
    clock.set_for_testing(3_600_000);
    // What is left of slot 0 cost 1 MIST (100 - 3,599,999 ms' 99 rounded down).
    assert!(claim_as_server(&mut scenario, &clock) == 1);
    assert!(!th::on_air(&mut scenario, &clock));
    assert!(pool_and_earned(&mut scenario, 99, 0));
    clock.set_for_testing(10_800_000);
    assert!(take_back(&mut scenario, &clock, th::listener_a()) == 99);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::listener_a()) == 99);
    assert!(th::balance_of(&scenario, th::server()) == 1);
    assert!(pool_and_earned(&mut scenario, 0, 0));
    th::finish(scenario, clock);
}

#[test]
fun broadcast_contribution_never_revives_past_air_time() {
    let (mut scenario, mut clock) = th::start();
    scenario.next_tx(th::server());
    broadcast::create(b"revive", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 33);
    th::fund(&mut scenario, th::listener_b(), 67);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 33);
    assert!(!th::on_air(&mut scenario, &clock));
    clock.set_for_testing(999);
    // The 999 ms gone by stay off air; the pool of 100 covers the last millisecond.
    th::contribute_as(&mut scenario, &clock, th::listener_b(), 67);
    assert!(th::on_air(&mut scenario, &clock));
    assert!(pool_and_earned(&mut scenario, 100, 0));
    clock.set_for_testing(600_000);
    // 1 MIST for slot 0, from 33 (A) and 67 (B): B keeps 66 (66.33 rounded down), A the rest.
    assert!(take_back(&mut scenario, &clock, th::listener_b()) == 66);
    assert!(take_back(&mut scenario, &clock, th::listener_a()) == 33);
    assert!(claim_as_server(&mut scenario, &clock) == 1);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::listener_a()) == 33);
    assert!(th::balance_of(&scenario, th::listener_b()) == 66);
    assert!(th::balance_of(&scenario, th::server()) == 1);
    assert!(pool_and_earned(&mut scenario, 0, 0));
    th::finish(scenario, clock);
}

#[test]
fun broadcast_listener_joining_mid_slot_pays_its_part() {
    let (mut scenario, mut clock) = th::start();
    scenario.next_tx(th::server());
    broadcast::create(b"midway", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 200);
    th::fund(&mut scenario, th::listener_b(), 100);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 200);
    clock.set_for_testing(500);
    // The first half of slot 0 (50) is paid by A's money alone.
    th::contribute_as(&mut scenario, &clock, th::listener_b(), 100);
    assert!(th::on_air(&mut scenario, &clock));
    assert!(pool_and_earned(&mut scenario, 250, 50));
    clock.set_for_testing(1_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        b.cancel(&clock, scenario.ctx());
        ts::return_shared(b);
    };
    // The second half (50) from 150 (A) and 100 (B): A 30, B 20.
    assert!(take_back(&mut scenario, &clock, th::listener_a()) == 120);
    assert!(take_back(&mut scenario, &clock, th::listener_b()) == 80);
    assert!(claim_as_server(&mut scenario, &clock) == 100);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::listener_a()) == 120);
    assert!(th::balance_of(&scenario, th::listener_b()) == 80);
    assert!(th::balance_of(&scenario, th::server()) == 100);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::EBroadcastLive)]
fun broadcast_heartbeat_keeps_listeners() {
    let (mut scenario, mut clock) = th::start();
    scenario.next_tx(th::server());
    broadcast::create(b"news", 100, 100_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 1_000);
    clock.set_for_testing(500_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        b.heartbeat(&clock, scenario.ctx());
        ts::return_shared(b);
    };
    clock.set_for_testing(650_000);
    take_back(&mut scenario, &clock, th::listener_a());
    th::finish(scenario, clock);
}

/// The organizer (SERVER) opens a sale "launch": 50 MIST a ticket, at least one, deadline
/// 10 s.
fun ticket_sale(scenario: &mut ts::Scenario, clock: &sui::clock::Clock) {
    scenario.next_tx(th::server());
    tickets::create(b"launch", 50, 1, 0, 10_000, clock, scenario.ctx());
}

#[test]
fun ticketed_broadcast_records_its_sale() {
    let (mut scenario, clock) = th::start();
    ticket_sale(&mut scenario, &clock);
    scenario.next_tx(th::server());
    let sale = scenario.take_shared<TicketSale>();
    let sale_id = object::id(&sale);
    broadcast::create_ticketed(&sale, b"launch", 100, 1_000, &clock, scenario.ctx());
    ts::return_shared(sale);
    scenario.next_tx(th::server());
    let b = scenario.take_shared<Broadcast>();
    assert!(b.ticket_sale() == option::some(sale_id));
    assert!(!b.is_on_air(&clock));
    ts::return_shared(b);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::ENotOrganizer)]
fun ticketed_broadcast_by_another_rejected() {
    let (mut scenario, clock) = th::start();
    ticket_sale(&mut scenario, &clock);
    scenario.next_tx(th::other());
    let sale = scenario.take_shared<TicketSale>();
    broadcast::create_ticketed(&sale, b"launch", 100, 1_000, &clock, scenario.ctx());
    ts::return_shared(sale);
    th::finish(scenario, clock);
}
