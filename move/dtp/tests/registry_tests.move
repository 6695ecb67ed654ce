/// The registry's rules (docs/escrow.md §21), the Move side of
/// tests/ledger/test_coordination_rules.py: a lease's tenures and tokens, fenced writes,
/// membership.
#[test_only]
module dtp::registry_tests;

use dtp::registry::{Self, Registry};
use dtp::test_helpers as th;
use sui::clock::Clock;
use sui::test_scenario::{Self as ts, Scenario};

/// A registry of the server with the client admitted; returns the scenario and clock.
fun start(): (Scenario, Clock) {
    let (mut scenario, clock) = th::start();
    scenario.next_tx(th::server());
    registry::create(scenario.ctx());
    scenario.next_tx(th::server());
    let mut r = scenario.take_shared<Registry>();
    r.admit(th::client(), scenario.ctx());
    ts::return_shared(r);
    (scenario, clock)
}

fun acquire_as(scenario: &mut Scenario, clock: &Clock, who: address, duration_ms: u64): u64 {
    scenario.next_tx(who);
    let mut r = scenario.take_shared<Registry>();
    let token = r.acquire(b"leader", b"h", duration_ms, clock, scenario.ctx());
    ts::return_shared(r);
    token
}

fun put_as(scenario: &mut Scenario, clock: &Clock, who: address, token: u64, value: vector<u8>) {
    scenario.next_tx(who);
    let mut r = scenario.take_shared<Registry>();
    r.put(b"leader", token, b"config", value, clock, scenario.ctx());
    ts::return_shared(r);
}

#[test]
fun a_lease_passes_on_with_a_newer_token() {
    let (mut scenario, mut clock) = start();
    clock.set_for_testing(1_000);
    let first = acquire_as(&mut scenario, &clock, th::server(), 500);
    assert!(first == 1);
    put_as(&mut scenario, &clock, th::server(), first, b"v1");
    clock.increment_for_testing(499);
    scenario.next_tx(th::server());
    let mut r = scenario.take_shared<Registry>();
    r.renew(b"leader", first, 500, &clock, scenario.ctx());
    assert!(r.is_held(b"leader".to_string(), &clock));
    ts::return_shared(r);
    clock.increment_for_testing(500);
    let second = acquire_as(&mut scenario, &clock, th::client(), 500);
    assert!(second == 2);
    put_as(&mut scenario, &clock, th::client(), second, b"v2");
    scenario.next_tx(th::client());
    let r = scenario.take_shared<Registry>();
    assert!(r.get(b"config".to_string()) == option::some(b"v2"));
    assert!(r.current_token(b"leader".to_string()) == 2);
    ts::return_shared(r);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = registry::ELeaseHeld)]
fun a_lease_that_stands_is_not_taken() {
    let (mut scenario, clock) = start();
    acquire_as(&mut scenario, &clock, th::server(), 500);
    acquire_as(&mut scenario, &clock, th::client(), 500);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = registry::EStaleToken)]
fun a_write_with_an_old_token_is_fenced() {
    let (mut scenario, mut clock) = start();
    let first = acquire_as(&mut scenario, &clock, th::server(), 500);
    clock.increment_for_testing(500);
    acquire_as(&mut scenario, &clock, th::client(), 500);
    put_as(&mut scenario, &clock, th::server(), first, b"late");
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = registry::ELeaseExpired)]
fun a_write_after_expiry_is_refused() {
    let (mut scenario, mut clock) = start();
    let first = acquire_as(&mut scenario, &clock, th::server(), 500);
    clock.increment_for_testing(500);
    put_as(&mut scenario, &clock, th::server(), first, b"late");
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = registry::ENotHolder)]
fun the_current_token_is_only_its_holders() {
    let (mut scenario, clock) = start();
    let first = acquire_as(&mut scenario, &clock, th::server(), 500);
    put_as(&mut scenario, &clock, th::client(), first, b"forged");
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = registry::ENotMember)]
fun outsiders_take_no_lease() {
    let (mut scenario, clock) = start();
    acquire_as(&mut scenario, &clock, th::mallory(), 500);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = registry::EInvalidDuration)]
fun a_lease_lasts_at_most_an_hour() {
    let (mut scenario, clock) = start();
    acquire_as(&mut scenario, &clock, th::server(), 3_600_001);
    th::finish(scenario, clock);
}
