/// The share rules of `dtp::broadcast` (docs/escrow.md §9): contributions buy shares at
/// the pool's value, paid slots lower every share alike, refunds are the shares' value,
/// new generations, the doubling share unit, the idle bound and the way out of an idle
/// broadcast.
#[test_only]
module dtp::broadcast_share_tests;

use dtp::broadcast::{Self, Broadcast};
use dtp::test_helpers as th;
use sui::clock::Clock;
use sui::coin;
use sui::sui::SUI;
use sui::test_scenario::{Self as ts, Scenario};

// === Helpers ===

/// `who` pays `amount` of new money into the broadcast.
fun give(scenario: &mut Scenario, clock: &Clock, who: address, amount: u64) {
    scenario.next_tx(who);
    let mut b = scenario.take_shared<Broadcast>();
    let payment = coin::mint_for_testing<SUI>(amount, scenario.ctx());
    b.contribute(payment, clock, scenario.ctx());
    ts::return_shared(b);
}

fun withdraw_as(scenario: &mut Scenario, who: address): u64 {
    scenario.next_tx(who);
    let mut b = scenario.take_shared<Broadcast>();
    let refund = b.withdraw(scenario.ctx());
    ts::return_shared(b);
    refund
}

fun leave_as(scenario: &mut Scenario, clock: &Clock, who: address): u64 {
    scenario.next_tx(who);
    let mut b = scenario.take_shared<Broadcast>();
    let refund = b.leave(clock, scenario.ctx());
    ts::return_shared(b);
    refund
}

fun cancel(scenario: &mut Scenario, clock: &Clock) {
    scenario.next_tx(th::server());
    let mut b = scenario.take_shared<Broadcast>();
    b.cancel(clock, scenario.ctx());
    ts::return_shared(b);
}

fun heartbeat_as(scenario: &mut Scenario, clock: &Clock, who: address) {
    scenario.next_tx(who);
    let mut b = scenario.take_shared<Broadcast>();
    b.heartbeat(clock, scenario.ctx());
    ts::return_shared(b);
}

// === Shares ===

#[test]
fun a_late_listener_buys_at_the_pool_value() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 1_000);
    clock.set_for_testing(9_000);
    give(&mut scenario, &clock, th::listener_b(), 1_000);
    scenario.next_tx(th::server());
    let b = scenario.take_shared<Broadcast>();
    // A's 10^12 shares are worth the 100 MIST left of its 1000: B's 1000 buys 10^13.
    assert!(b.shares_of(th::listener_a()) == 1_000_000_000_000);
    assert!(b.shares_of(th::listener_b()) == 10_000_000_000_000);
    assert!(b.total_shares() == 11_000_000_000_000);
    assert!(b.refund_value(th::listener_a(), &clock) == 100);
    assert!(b.refund_value(th::listener_b(), &clock) == 1_000);
    assert!(b.contribution_of(th::listener_b()) == 1_000);
    // A slot later both have paid for it alike: 1100 - 100 = 1000, 1/11 and 10/11.
    clock.set_for_testing(10_000);
    assert!(b.refund_value(th::listener_a(), &clock) == 90);
    assert!(b.refund_value(th::listener_b(), &clock) == 909);
    ts::return_shared(b);
    th::finish(scenario, clock);
}

#[test]
fun contributing_again_buys_at_the_new_price() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 300);
    clock.set_for_testing(2_000);
    // Slots 0 and 1 are paid: A's 300 * 10^9 shares hold 100 MIST.
    give(&mut scenario, &clock, th::listener_a(), 100);
    give(&mut scenario, &clock, th::listener_b(), 200);
    scenario.next_tx(th::server());
    {
        let b = scenario.take_shared<Broadcast>();
        assert!(b.shares_of(th::listener_a()) == 600_000_000_000);
        assert!(b.shares_of(th::listener_b()) == 600_000_000_000);
        assert!(b.contribution_of(th::listener_a()) == 400);
        assert!(b.holders() == 2);
        ts::return_shared(b);
    };
    clock.set_for_testing(2_500);
    cancel(&mut scenario, &clock);
    assert!(withdraw_as(&mut scenario, th::listener_a()) == 200);
    assert!(withdraw_as(&mut scenario, th::listener_b()) == 200);
    th::finish(scenario, clock);
}

#[test]
fun a_pool_spent_to_zero_starts_a_new_generation() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 200);
    clock.set_for_testing(2_000);
    // Slots 0 and 1 spent all of it: A's shares are worth nothing, and B's money must not
    // buy into them.
    give(&mut scenario, &clock, th::listener_b(), 100);
    scenario.next_tx(th::server());
    {
        let b = scenario.take_shared<Broadcast>();
        assert!(b.generation() == 1);
        assert!(b.holders() == 1);
        assert!(b.shares_of(th::listener_a()) == 0);
        assert!(b.refund_value(th::listener_a(), &clock) == 0);
        assert!(b.shares_of(th::listener_b()) == 100_000_000_000);
        assert!(b.total_shares() == 100_000_000_000);
        assert!(b.refund_value(th::listener_b(), &clock) == 100);
        ts::return_shared(b);
    };
    // A comes back: its new money buys at the new generation's price, its old shares gone.
    give(&mut scenario, &clock, th::listener_a(), 100);
    clock.set_for_testing(2_500);
    cancel(&mut scenario, &clock);
    assert!(withdraw_as(&mut scenario, th::listener_a()) == 100);
    assert!(withdraw_as(&mut scenario, th::listener_b()) == 100);
    th::finish(scenario, clock);
}

#[test]
fun an_old_generation_stake_is_refunded_nothing() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 100);
    clock.set_for_testing(1_000);
    give(&mut scenario, &clock, th::listener_b(), 300);
    cancel(&mut scenario, &clock);
    assert!(withdraw_as(&mut scenario, th::listener_a()) == 0);
    assert!(withdraw_as(&mut scenario, th::listener_b()) == 300);
    scenario.next_tx(th::server());
    let b = scenario.take_shared<Broadcast>();
    assert!(b.contribution_of(th::listener_a()) == 0);
    assert!(b.pool_value() == 0 && b.total_shares() == 0 && b.holders() == 0);
    ts::return_shared(b);
    th::finish(scenario, clock);
}

#[test]
fun rounding_strands_nothing_and_overpays_no_one() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 1, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 1);
    give(&mut scenario, &clock, th::listener_b(), 1);
    give(&mut scenario, &clock, th::other(), 1);
    clock.set_for_testing(1_000);
    cancel(&mut scenario, &clock);
    // 2 MIST left for 3 equal stakes of 2/3 MIST: floor(2/3) = 0, then 1 of 2 shares
    // of 2 MIST, then the last one out takes the last MIST.
    assert!(withdraw_as(&mut scenario, th::listener_a()) == 0);
    assert!(withdraw_as(&mut scenario, th::listener_b()) == 1);
    assert!(withdraw_as(&mut scenario, th::other()) == 1);
    scenario.next_tx(th::server());
    let mut b = scenario.take_shared<Broadcast>();
    assert!(b.pool_value() == 0);
    assert!(b.claim(&clock, scenario.ctx()) == 1);
    ts::return_shared(b);
    th::finish(scenario, clock);
}

#[test]
fun the_share_unit_doubles_instead_of_overflowing() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 1_000, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 1);
    give(&mut scenario, &clock, th::listener_b(), 1_999);
    // B keeps the pool at two slots: every top-up doubles the shares (each slot halves
    // the value of those held before), 130 times.
    scenario.next_tx(th::listener_b());
    {
        let mut b = scenario.take_shared<Broadcast>();
        let mut slot = 1;
        while (slot <= 130) {
            clock.set_for_testing(slot * 1_000);
            let payment = coin::mint_for_testing<SUI>(1_000, scenario.ctx());
            b.contribute(payment, &clock, scenario.ctx());
            slot = slot + 1;
        };
        // 2 * 10^12 * 2^130 shares, kept below 2^120 by 51 doublings of the unit
        assert!(b.total_shares() == 1_208_925_819_614_629_174_706_176_000_000_000_000);
        assert!(b.shares_of(th::listener_b()) == 1_208_925_819_614_629_174_706_175_999_999_999_999);
        assert!(b.shares_of(th::listener_a()) == 0);
        assert!(b.pool_value() == 2_000 && b.earned_value() == 130_000);
        ts::return_shared(b);
    };
    clock.set_for_testing(130_500);
    cancel(&mut scenario, &clock);
    // B is a MIST short of its 2000 - 2000/2^130, A, last out, takes that MIST.
    assert!(withdraw_as(&mut scenario, th::listener_b()) == 1_999);
    assert!(withdraw_as(&mut scenario, th::listener_a()) == 1);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::EContributionTooSmall)]
fun a_contribution_that_buys_no_share_is_refused() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 500);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        // 500 MIST held by 100 shares: one share costs 5 MIST
        b.set_total_shares_for_testing(100);
        ts::return_shared(b);
    };
    give(&mut scenario, &clock, th::listener_b(), 4);
    th::finish(scenario, clock);
}

// === The idle bound and leaving ===

#[test]
fun the_idle_bound_is_three_slots_within_ten_minutes_and_a_day() {
    let (mut scenario, clock) = th::start();
    let lengths = vector[1, 200_000, 300_000, 28_799_999, 28_800_000, 18_446_744_073_709_551_615];
    let bounds = vector[600_000, 600_000, 900_000, 86_399_997, 86_400_000, 86_400_000];
    let mut i = 0;
    while (i < lengths.length()) {
        scenario.next_tx(th::server());
        broadcast::create(b"news", 1, lengths[i], &clock, scenario.ctx());
        scenario.next_tx(th::server());
        let b = scenario.take_shared<Broadcast>();
        assert!(b.idle_ms() == bounds[i]);
        ts::return_shared(b);
        i = i + 1;
    };
    th::finish(scenario, clock);
}

#[test]
fun a_listener_leaves_an_idle_broadcast() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    // Created at 0 and never live since: idle from 600 s. Slots 0-2 are paid meanwhile.
    give(&mut scenario, &clock, th::listener_a(), 350);
    clock.set_for_testing(600_000);
    scenario.next_tx(th::listener_a());
    {
        let b = scenario.take_shared<Broadcast>();
        assert!(b.is_idle(&clock));
        assert!(b.refund_value(th::listener_a(), &clock) == 50);
        ts::return_shared(b);
    };
    assert!(leave_as(&mut scenario, &clock, th::listener_a()) == 50);
    scenario.next_tx(th::server());
    let mut b = scenario.take_shared<Broadcast>();
    assert!(b.claim(&clock, scenario.ctx()) == 300);
    assert!(b.pool_value() == 0 && b.holders() == 0 && b.contribution_of(th::listener_a()) == 0);
    ts::return_shared(b);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::listener_a()) == 50);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::EBroadcastLive)]
fun leaving_a_millisecond_early_is_refused() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 350);
    clock.set_for_testing(599_999);
    leave_as(&mut scenario, &clock, th::listener_a());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::EBroadcastLive)]
fun a_transmission_restarts_the_idle_time() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 100_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 1_000);
    clock.set_for_testing(400_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        b.transmit(b"still here", &clock, scenario.ctx());
        assert!(b.last_live_ms() == 400_000);
        ts::return_shared(b);
    };
    clock.set_for_testing(999_999);
    leave_as(&mut scenario, &clock, th::listener_a());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::EBroadcastCancelled)]
fun a_cancelled_broadcast_is_withdrawn_from_not_left() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 350);
    cancel(&mut scenario, &clock);
    clock.set_for_testing(600_000);
    leave_as(&mut scenario, &clock, th::listener_a());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::ENoContribution)]
fun leaving_needs_a_stake() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    clock.set_for_testing(600_000);
    leave_as(&mut scenario, &clock, th::listener_b());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::ENotBroadcaster)]
fun only_the_broadcaster_beats() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 350);
    heartbeat_as(&mut scenario, &clock, th::listener_a());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::ENotOnAir)]
fun no_heartbeat_off_air() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 150);
    // slot 0 paid, 50 left: slot 1 is not covered
    clock.set_for_testing(1_000);
    heartbeat_as(&mut scenario, &clock, th::server());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::EBroadcastCancelled)]
fun no_heartbeat_after_cancel() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 350);
    cancel(&mut scenario, &clock);
    heartbeat_as(&mut scenario, &clock, th::server());
    th::finish(scenario, clock);
}
