/// Deleting what a settled connection, a closed response escrow and an ended ticket sale
/// leave on chain (docs/escrow.md §7, §12, §15): only whoever paid for an object's storage
/// deletes it -- Sui credits the rebate to the deleting transaction's gas payer -- and only
/// once nothing is owed on it.
#[test_only]
module dtp::deletion_tests;

use dtp::escrow::Escrow;
use dtp::host;
use dtp::response_escrow::{Self, ResponseEscrow};
use dtp::spending_cap::SpendingCap;
use dtp::test_helpers as th;
use dtp::tickets::{Self, TicketSale};
use dtp::transport_control::{Self, TransportControl};
use sui::clock::Clock;
use sui::test_scenario::{Self as ts, Scenario};

// === Connections ===

/// A connection the server settled: its client deletes both objects, and nothing moves.
#[test]
fun client_deletes_a_connection_the_server_settled() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    scenario.next_tx(th::client());
    let before = th::balance_of(&scenario, th::client());
    let escrow_id = destroy_as(&mut scenario, conn, th::client());
    let effects = scenario.next_tx(th::client());
    let deleted = effects.deleted();
    assert!(deleted.length() == 2);
    assert!(deleted.contains(&conn) && deleted.contains(&escrow_id));
    assert!(effects.num_user_events() == 1);
    assert!(!ts::has_most_recent_shared<TransportControl>());
    assert!(!ts::has_most_recent_shared<Escrow>());
    // (the settlement refunded all 1000: the deletion moved nothing)
    assert!(th::balance_of(&scenario, th::client()) == before);
    assert!(before == 10_000);
    th::finish(scenario, clock);
}

/// The client's own settlement and the deletion in one transaction: `settle` takes the
/// objects `&mut`, `destroy` by value afterwards.
#[test]
fun client_settles_and_deletes_in_one_transaction() {
    let (mut scenario, mut clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    clock.increment_for_testing(host::default_half_close_timeout_ms());
    scenario.next_tx(th::client());
    let mut tc = scenario.take_shared_by_id<TransportControl>(conn);
    let mut e = scenario.take_shared_by_id<Escrow>(tc.escrow_id());
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    tc.settle(&mut e, &mut cap, &clock, scenario.ctx());
    tc.destroy(e, scenario.ctx());
    ts::return_shared(cap);
    let effects = scenario.next_tx(th::client());
    assert!(effects.deleted().contains(&conn));
    assert!(th::balance_of(&scenario, th::client()) == 10_000);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ENotClient)]
fun the_server_cannot_delete_a_connection() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    destroy_as(&mut scenario, conn, th::server());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ENotClient)]
fun a_stranger_cannot_delete_a_connection() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    destroy_as(&mut scenario, conn, th::other());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ENotSettled)]
fun an_unsettled_connection_cannot_be_deleted() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    th::close_as(&mut scenario, &clock, conn, th::server());
    destroy_as(&mut scenario, conn, th::client());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::EWrongEscrow)]
fun deletion_checks_the_escrow() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let first = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    let second = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::settle_as(&mut scenario, &clock, first, th::server());
    th::settle_as(&mut scenario, &clock, second, th::server());
    scenario.next_tx(th::client());
    let tc = scenario.take_shared_by_id<TransportControl>(first);
    let other = scenario.take_shared_by_id<TransportControl>(second);
    let e = scenario.take_shared_by_id<Escrow>(other.escrow_id());
    tc.destroy(e, scenario.ctx());
    ts::return_shared(other);
    th::finish(scenario, clock);
}

/// `who` deletes `conn` and its escrow; returns the escrow's ID.
fun destroy_as(scenario: &mut Scenario, conn: ID, who: address): ID {
    scenario.next_tx(who);
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let escrow_id = tc.escrow_id();
    let e = scenario.take_shared_by_id<Escrow>(escrow_id);
    tc.destroy(e, scenario.ctx());
    escrow_id
}

// === Response escrows ===

const FEE: u64 = 300;
const DEADLINE_MS: u64 = 5_000;

fun deposit(scenario: &mut Scenario, clock: &Clock): ID {
    th::fund(scenario, th::client(), 1_000);
    scenario.next_tx(th::client());
    let fee = th::take(scenario, th::client(), FEE);
    response_escrow::deposit(
        th::server(),
        b"req-1",
        th::client_pk(),
        DEADLINE_MS,
        fee,
        clock,
        scenario.ctx(),
    )
}

/// Refunded after the deadline, then deleted by its requester in the same transaction.
#[test]
fun requester_refunds_and_deletes_a_response_escrow() {
    let (mut scenario, mut clock) = th::start();
    let escrow_id = deposit(&mut scenario, &clock);
    clock.set_for_testing(DEADLINE_MS + 1);
    scenario.next_tx(th::client());
    let mut e = scenario.take_shared_by_id<ResponseEscrow>(escrow_id);
    assert!(e.refund(&clock, scenario.ctx()) == FEE);
    e.destroy(scenario.ctx());
    let effects = scenario.next_tx(th::client());
    assert!(effects.deleted() == vector[escrow_id]);
    assert!(th::balance_of(&scenario, th::client()) == 1_000);
    th::finish(scenario, clock);
}

/// Delivered: the requester deletes it afterwards (the response stays in the event).
#[test]
fun requester_deletes_a_delivered_response_escrow() {
    let (mut scenario, clock) = th::start();
    let escrow_id = deposit(&mut scenario, &clock);
    scenario.next_tx(th::server());
    let mut e = scenario.take_shared_by_id<ResponseEscrow>(escrow_id);
    assert!(e.deliver(b"answer", &clock, scenario.ctx()) == FEE);
    ts::return_shared(e);
    scenario.next_tx(th::client());
    let e = scenario.take_shared_by_id<ResponseEscrow>(escrow_id);
    e.destroy(scenario.ctx());
    let effects = scenario.next_tx(th::client());
    assert!(effects.deleted() == vector[escrow_id]);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::EEscrowOpen)]
fun an_open_response_escrow_cannot_be_deleted() {
    let (mut scenario, clock) = th::start();
    let escrow_id = deposit(&mut scenario, &clock);
    scenario.next_tx(th::client());
    let e = scenario.take_shared_by_id<ResponseEscrow>(escrow_id);
    e.destroy(scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::ENotRequester)]
fun the_server_cannot_delete_a_response_escrow() {
    let (mut scenario, clock) = th::start();
    let escrow_id = deposit(&mut scenario, &clock);
    scenario.next_tx(th::server());
    let mut e = scenario.take_shared_by_id<ResponseEscrow>(escrow_id);
    e.deliver(b"answer", &clock, scenario.ctx());
    e.destroy(scenario.ctx());
    th::finish(scenario, clock);
}

// === Ticket sales ===

const PRICE: u64 = 50;
const SALE_DEADLINE_MS: u64 = 10_000;

fun sale(scenario: &mut Scenario, clock: &Clock): ID {
    scenario.next_tx(th::server());
    tickets::create(b"show", PRICE, 1, 0, SALE_DEADLINE_MS, clock, scenario.ctx())
}

fun buy(scenario: &mut Scenario, clock: &Clock, sale_id: ID, who: address, count: u64) {
    th::fund(scenario, who, count * PRICE);
    scenario.next_tx(who);
    let mut s = scenario.take_shared_by_id<TicketSale>(sale_id);
    let payment = th::take(scenario, who, count * PRICE);
    s.buy(count, payment, clock, scenario.ctx());
    ts::return_shared(s);
}

fun as_sale(scenario: &mut Scenario, sale_id: ID, who: address): TicketSale {
    scenario.next_tx(who);
    scenario.take_shared_by_id<TicketSale>(sale_id)
}

/// On air, each buyer gives its tickets back (its holder entry deleted); then the
/// organizer deletes the empty sale.
#[test]
fun buyers_leave_then_the_organizer_deletes_an_aired_sale() {
    let (mut scenario, clock) = th::start();
    let sale_id = sale(&mut scenario, &clock);
    buy(&mut scenario, &clock, sale_id, th::listener_a(), 2);
    buy(&mut scenario, &clock, sale_id, th::listener_b(), 1);
    let mut s = as_sale(&mut scenario, sale_id, th::server());
    assert!(s.go_on_air(&clock, scenario.ctx()) == 3 * PRICE);
    ts::return_shared(s);
    let mut s = as_sale(&mut scenario, sale_id, th::listener_a());
    assert!(s.leave(scenario.ctx()) == 2);
    assert!(s.tickets_of(th::listener_a()) == 0 && s.sold() == 3);
    ts::return_shared(s);
    let mut s = as_sale(&mut scenario, sale_id, th::listener_b());
    assert!(s.leave(scenario.ctx()) == 1);
    ts::return_shared(s);
    let s = as_sale(&mut scenario, sale_id, th::server());
    s.destroy(&clock, scenario.ctx());
    let effects = scenario.next_tx(th::server());
    assert!(effects.deleted().contains(&sale_id));
    th::finish(scenario, clock);
}

/// Missed its deadline and every buyer refunded: the organizer deletes it.
#[test]
fun organizer_deletes_a_missed_sale_once_refunded() {
    let (mut scenario, mut clock) = th::start();
    let sale_id = sale(&mut scenario, &clock);
    buy(&mut scenario, &clock, sale_id, th::listener_a(), 1);
    clock.set_for_testing(SALE_DEADLINE_MS + 1);
    let mut s = as_sale(&mut scenario, sale_id, th::listener_a());
    assert!(s.refund(&clock, scenario.ctx()) == PRICE);
    ts::return_shared(s);
    let s = as_sale(&mut scenario, sale_id, th::server());
    s.destroy(&clock, scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::ETicketsHeld)]
fun a_sale_with_holders_cannot_be_deleted() {
    let (mut scenario, clock) = th::start();
    let sale_id = sale(&mut scenario, &clock);
    buy(&mut scenario, &clock, sale_id, th::listener_a(), 1);
    let mut s = as_sale(&mut scenario, sale_id, th::server());
    s.go_on_air(&clock, scenario.ctx());
    ts::return_shared(s);
    let s = as_sale(&mut scenario, sale_id, th::server());
    s.destroy(&clock, scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::ESaleNotOver)]
fun a_live_sale_cannot_be_deleted() {
    let (mut scenario, clock) = th::start();
    let sale_id = sale(&mut scenario, &clock);
    let s = as_sale(&mut scenario, sale_id, th::server());
    s.destroy(&clock, scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::ENotOrganizer)]
fun only_the_organizer_deletes_a_sale() {
    let (mut scenario, clock) = th::start();
    let sale_id = sale(&mut scenario, &clock);
    let mut s = as_sale(&mut scenario, sale_id, th::server());
    s.cancel(scenario.ctx());
    ts::return_shared(s);
    let s = as_sale(&mut scenario, sale_id, th::listener_a());
    s.destroy(&clock, scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::ENotOnAir)]
fun tickets_are_given_back_only_once_on_air() {
    let (mut scenario, clock) = th::start();
    let sale_id = sale(&mut scenario, &clock);
    buy(&mut scenario, &clock, sale_id, th::listener_a(), 1);
    let mut s = as_sale(&mut scenario, sale_id, th::listener_a());
    s.leave(scenario.ctx());
    ts::return_shared(s);
    th::finish(scenario, clock);
}
