/// The air time of `dtp::broadcast` accounted for (docs/escrow.md §9): a contribution pays
/// only from the moment it joins -- the part of the slot in progress gone by is paid pro
/// rata by the money that was in the pool, or skipped if it was off air -- the parts of a
/// slot add up to its price, nothing is accounted after a cancel, and every stretch paid
/// or skipped is told by a `BroadcastSlotsPaid` or `BroadcastSlotsSkipped` event.
#[test_only]
module dtp::broadcast_air_time_tests;

use dtp::broadcast::{Self, Broadcast, BroadcastSlotsPaid, BroadcastSlotsSkipped};
use dtp::test_helpers as th;
use sui::clock::Clock;
use sui::coin;
use sui::event;
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

/// The slot events of the transaction under way: paid, then skipped.
fun told(): (vector<BroadcastSlotsPaid>, vector<BroadcastSlotsSkipped>) {
    (event::events_by_type<BroadcastSlotsPaid>(), event::events_by_type<BroadcastSlotsSkipped>())
}

fun broadcast_id(scenario: &mut Scenario): ID {
    scenario.next_tx(th::server());
    let b = scenario.take_shared<Broadcast>();
    let id = object::id(&b);
    ts::return_shared(b);
    id
}

// === Tests ===

#[test]
fun a_contribution_skips_the_off_air_part_of_the_slot_in_progress() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"late", 100, 1_000, &clock, scenario.ctx());
    let id = broadcast_id(&mut scenario);
    clock.set_for_testing(999);
    scenario.next_tx(th::listener_a());
    {
        let mut b = scenario.take_shared<Broadcast>();
        let payment = coin::mint_for_testing<SUI>(100, scenario.ctx());
        b.contribute(payment, &clock, scenario.ctx());
        let (paid, skipped) = told();
        assert!(paid.is_empty());
        assert!(skipped == vector[broadcast::slots_skipped_for_testing(id, 0, 999)]);
        assert!(b.slot_accounted_ms() == 999 && b.next_slot() == 0);
        assert!(b.pool_value() == 100 && b.earned_value() == 0);
        // what is left of the slot costs 1 MIST (100 less 999 ms' 99, rounded down)
        assert!(b.is_on_air(&clock));
        ts::return_shared(b);
    };
    clock.set_for_testing(1_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.claim(&clock, scenario.ctx()) == 1);
        let (paid, skipped) = told();
        assert!(paid == vector[broadcast::slots_paid_for_testing(id, 999, 1_000, 1, 1)]);
        assert!(skipped.is_empty());
        assert!(b.paid_slots() == 1 && b.slot_accounted_ms() == 0 && b.pool_value() == 99);
        assert!(!b.is_on_air(&clock));
        ts::return_shared(b);
    };
    th::finish(scenario, clock);
}

#[test]
fun a_contribution_pays_the_part_gone_by_pro_rata_first() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"midway", 100, 1_000, &clock, scenario.ctx());
    let id = broadcast_id(&mut scenario);
    give(&mut scenario, &clock, th::listener_a(), 200);
    clock.set_for_testing(500);
    scenario.next_tx(th::listener_b());
    {
        let mut b = scenario.take_shared<Broadcast>();
        let payment = coin::mint_for_testing<SUI>(100, scenario.ctx());
        b.contribute(payment, &clock, scenario.ctx());
        let (paid, skipped) = told();
        // the first half of slot 0, A's money alone in the pool
        assert!(paid == vector[broadcast::slots_paid_for_testing(id, 0, 500, 0, 50)]);
        assert!(skipped.is_empty());
        assert!(b.pool_value() == 250 && b.earned_value() == 50);
        // B bought at the value after it: A's 150 and B's 100 (99.99.. rounded down)
        assert!(b.refund_value(th::listener_a(), &clock) == 150);
        assert!(b.refund_value(th::listener_b(), &clock) == 99);
        ts::return_shared(b);
    };
    clock.set_for_testing(1_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.claim(&clock, scenario.ctx()) == 100);
        let (paid, _) = told();
        assert!(paid == vector[broadcast::slots_paid_for_testing(id, 500, 1_000, 1, 50)]);
        // the second half from 150 (A) and 100 (B): A 30, B 20
        assert!(b.refund_value(th::listener_a(), &clock) == 120);
        assert!(b.refund_value(th::listener_b(), &clock) == 79);
        ts::return_shared(b);
    };
    th::finish(scenario, clock);
}

#[test]
fun slots_the_pool_cannot_cover_are_told_skipped_in_one_event() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"dry", 100, 1_000, &clock, scenario.ctx());
    let id = broadcast_id(&mut scenario);
    give(&mut scenario, &clock, th::listener_a(), 250);
    clock.set_for_testing(5_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.claim(&clock, scenario.ctx()) == 200);
        let (paid, skipped) = told();
        assert!(paid == vector[broadcast::slots_paid_for_testing(id, 0, 2_000, 2, 200)]);
        assert!(skipped == vector[broadcast::slots_skipped_for_testing(id, 2_000, 5_000)]);
        assert!(b.paid_slots() == 2 && b.next_slot() == 5 && b.pool_value() == 50);
        ts::return_shared(b);
    };
    th::finish(scenario, clock);
}

#[test]
fun the_parts_of_a_slot_add_up_to_its_price() {
    let (mut scenario, mut clock) = th::start();
    // 7 MIST for 3 ms: 2 for the first ms, 2 for the second, 3 for the last
    broadcast::create(b"thirds", 7, 3, &clock, scenario.ctx());
    let id = broadcast_id(&mut scenario);
    give(&mut scenario, &clock, th::listener_a(), 7);
    clock.set_for_testing(1);
    give(&mut scenario, &clock, th::listener_b(), 1);
    clock.set_for_testing(2);
    give(&mut scenario, &clock, th::other(), 1);
    clock.set_for_testing(3);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.claim(&clock, scenario.ctx()) == 7);
        let (paid, _) = told();
        assert!(paid == vector[broadcast::slots_paid_for_testing(id, 2, 3, 1, 3)]);
        assert!(b.paid_slots() == 1 && b.pool_value() == 2);
        ts::return_shared(b);
    };
    th::finish(scenario, clock);
}

#[test]
fun on_air_needs_only_what_is_left_of_the_slot_after_a_contribution() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"half", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 60);
    assert!(!th::on_air(&mut scenario, &clock));
    clock.set_for_testing(500);
    // the first half stays off air; the 61 in the pool cover the second (50)
    give(&mut scenario, &clock, th::listener_b(), 1);
    assert!(th::on_air(&mut scenario, &clock));
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        b.transmit(b"second half", &clock, scenario.ctx());
        ts::return_shared(b);
    };
    clock.set_for_testing(1_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.claim(&clock, scenario.ctx()) == 50);
        assert!(b.pool_value() == 11 && b.paid_slots() == 1);
        ts::return_shared(b);
    };
    th::finish(scenario, clock);
}

#[test]
fun nothing_is_accounted_after_a_cancel() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"stop", 100, 1_000, &clock, scenario.ctx());
    give(&mut scenario, &clock, th::listener_a(), 150);
    clock.set_for_testing(500);
    give(&mut scenario, &clock, th::listener_b(), 100);
    clock.set_for_testing(700);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        b.cancel(&clock, scenario.ctx());
        let (paid, skipped) = told();
        assert!(paid.is_empty() && skipped.is_empty());
        ts::return_shared(b);
    };
    clock.set_for_testing(5_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        // the first half of slot 0 only, paid when B joined; the slot in progress at the
        // cancel is not paid
        assert!(b.claim(&clock, scenario.ctx()) == 50);
        let (paid, skipped) = told();
        assert!(paid.is_empty() && skipped.is_empty());
        assert!(b.next_slot() == 0 && b.slot_accounted_ms() == 500 && b.paid_slots() == 0);
        ts::return_shared(b);
    };
    scenario.next_tx(th::listener_a());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.withdraw(scenario.ctx()) == 100);
        ts::return_shared(b);
    };
    scenario.next_tx(th::listener_b());
    {
        let mut b = scenario.take_shared<Broadcast>();
        assert!(b.withdraw(scenario.ctx()) == 100);
        ts::return_shared(b);
    };
    th::finish(scenario, clock);
}
