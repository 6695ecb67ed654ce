/// Mirrors of tests/scenarios/messaging.toml (`messaging_scenario`), one test per
/// scenario with the same name; the Python runner is tests/test_messaging_ledger.py.
#[test_only]
module dtp::messaging_scenario_tests;

use dtp::host::{Self, Host};
use dtp::mailbox;
use dtp::response_escrow::{Self, ResponseEscrow};
use dtp::test_helpers as th;
use sui::clock::Clock;
use sui::test_scenario::{Self as ts, Scenario};

// === Helpers ===

fun payload(size: u64): vector<u8> { th::bytes(size) }

fun start(client_funds: u64): (Scenario, Clock) {
    let (mut scenario, clock) = th::start();
    scenario.next_tx(th::server());
    host::create(th::noise_key(), vector[], scenario.ctx());
    if (client_funds > 0) th::fund(&mut scenario, th::client(), client_funds);
    (scenario, clock)
}

fun mail_send(scenario: &mut Scenario, who: address, size: u64) {
    scenario.next_tx(who);
    let h = scenario.take_shared<Host>();
    mailbox::send(&h, payload(size), scenario.ctx());
    ts::return_shared(h);
}

fun deposit(scenario: &mut Scenario, clock: &Clock, amount: u64, deadline_ms: u64) {
    scenario.next_tx(th::client());
    let fee = th::take(scenario, th::client(), amount);
    response_escrow::deposit(
        th::server(),
        b"req-1",
        th::client_pk(),
        deadline_ms,
        fee,
        clock,
        scenario.ctx(),
    );
}

fun refund(scenario: &mut Scenario, clock: &Clock, who: address): u64 {
    scenario.next_tx(who);
    let mut e = scenario.take_shared<ResponseEscrow>();
    let amount = e.refund(clock, scenario.ctx());
    ts::return_shared(e);
    amount
}

fun deliver(scenario: &mut Scenario, clock: &Clock, who: address, size: u64): u64 {
    scenario.next_tx(who);
    let mut e = scenario.take_shared<ResponseEscrow>();
    let amount = e.deliver(payload(size), clock, scenario.ctx());
    ts::return_shared(e);
    amount
}

fun claim_bad_sig(scenario: &mut Scenario, who: address) {
    scenario.next_tx(who);
    let mut e = scenario.take_shared<ResponseEscrow>();
    let mut hash = vector[];
    let mut sig = vector[];
    let mut i = 0;
    while (i < 64) {
        if (i < 32) hash.push_back(7);
        sig.push_back(0);
        i = i + 1;
    };
    e.claim(hash, sig, scenario.ctx());
    ts::return_shared(e);
}

fun check(scenario: &mut Scenario, client: u64, server: u64, state: u8) {
    scenario.next_tx(th::server());
    assert!(th::balance_of(scenario, th::client()) == client);
    assert!(th::balance_of(scenario, th::server()) == server);
    let e = scenario.take_shared<ResponseEscrow>();
    assert!(e.state() == state);
    ts::return_shared(e);
}

// === Scenarios ===

#[test]
fun mail_to_host_is_an_event() {
    let (mut scenario, clock) = start(0);
    mail_send(&mut scenario, th::client(), 1);
    mail_send(&mut scenario, th::client(), 16381);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = mailbox::EPayloadTooLarge)]
fun mail_too_large_rejected() {
    let (mut scenario, clock) = start(0);
    mail_send(&mut scenario, th::client(), 16382);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = mailbox::EEmptyPayload)]
fun mail_empty_rejected() {
    let (mut scenario, clock) = start(0);
    mail_send(&mut scenario, th::client(), 0);
    th::finish(scenario, clock);
}

#[test]
fun response_fee_refunded_after_deadline() {
    let (mut scenario, mut clock) = start(100);
    deposit(&mut scenario, &clock, 30, 1000);
    check(&mut scenario, 70, 0, 0);
    clock.increment_for_testing(1001);
    assert!(refund(&mut scenario, &clock, th::client()) == 30);
    check(&mut scenario, 100, 0, 3);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::EDeadlineNotReached)]
fun response_refund_before_deadline_rejected() {
    let (mut scenario, mut clock) = start(100);
    deposit(&mut scenario, &clock, 30, 1000);
    clock.increment_for_testing(1000);
    refund(&mut scenario, &clock, th::client());
    th::finish(scenario, clock);
}

#[test]
fun response_delivered_on_chain_pays_server() {
    let (mut scenario, mut clock) = start(100);
    deposit(&mut scenario, &clock, 30, 1000);
    clock.increment_for_testing(1000);
    assert!(deliver(&mut scenario, &clock, th::server(), 100) == 30);
    check(&mut scenario, 70, 30, 2);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::EDeadlinePassed)]
fun response_deliver_after_deadline_rejected() {
    let (mut scenario, mut clock) = start(100);
    deposit(&mut scenario, &clock, 30, 1000);
    clock.increment_for_testing(1001);
    deliver(&mut scenario, &clock, th::server(), 10);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::EEmptyResponse)]
fun response_empty_delivery_rejected() {
    let (mut scenario, clock) = start(100);
    deposit(&mut scenario, &clock, 30, 1000);
    deliver(&mut scenario, &clock, th::server(), 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::EBadSignature)]
fun response_claim_needs_requester_signature() {
    let (mut scenario, clock) = start(100);
    deposit(&mut scenario, &clock, 30, 1000);
    claim_bad_sig(&mut scenario, th::server());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::ENotServer)]
fun response_claim_only_by_server() {
    let (mut scenario, clock) = start(100);
    deposit(&mut scenario, &clock, 30, 1000);
    claim_bad_sig(&mut scenario, th::mallory());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::ENotRequester)]
fun response_refund_only_by_requester() {
    let (mut scenario, mut clock) = start(100);
    deposit(&mut scenario, &clock, 30, 1000);
    clock.increment_for_testing(2000);
    refund(&mut scenario, &clock, th::mallory());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::EDeadlineInPast)]
fun response_deposit_deadline_in_past_rejected() {
    let (mut scenario, mut clock) = start(100);
    clock.increment_for_testing(500);
    deposit(&mut scenario, &clock, 30, 500);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = response_escrow::EEscrowClosed)]
fun response_paid_once() {
    let (mut scenario, mut clock) = start(100);
    deposit(&mut scenario, &clock, 30, 1000);
    clock.increment_for_testing(1001);
    assert!(refund(&mut scenario, &clock, th::client()) == 30);
    refund(&mut scenario, &clock, th::client());
    th::finish(scenario, clock);
}
