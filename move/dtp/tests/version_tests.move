/// Versioned shared objects (docs/escrow.md "Versions"): an object of another package
/// version is refused by every entry function that takes it, read-only ones included; the
/// publisher alone holds the AdminCap, which migrates an object forward only.
///
/// This code is version 1 (`version::current()`). An object "of version 2" is one a later
/// package made or migrated, met by this older code (what an old package's entry
/// function meets after an upgrade and a migration); "of version 0" is one this code must
/// migrate before it serves it (what a new package meets before the migration).
#[test_only]
module dtp::version_tests;

use dtp::escrow::Escrow;
use dtp::host::{Self, Host};
use dtp::spending_cap::SpendingCap;
use dtp::sponsor::{Self, SponsorLane, SponsorPool};
use dtp::test_helpers as th;
use dtp::transport_control::TransportControl;
use dtp::version::{Self, AdminCap};
use sui::test_scenario::{Self as ts, Scenario};

const PUBLISHER: address = @0xad;

/// PUBLISHER publishes the package: `init` gives it the AdminCap.
fun publish(scenario: &mut Scenario) {
    scenario.next_tx(PUBLISHER);
    version::init_for_testing(scenario.ctx());
}

/// SERVER's Host set to `v`.
fun set_host_version(scenario: &mut Scenario, v: u64) {
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    h.set_version_for_testing(v);
    ts::return_shared(h);
}

#[test]
fun objects_record_the_version_that_made_them() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    scenario.next_tx(th::client());
    let h = scenario.take_shared<Host>();
    let cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let e = scenario.take_shared_by_id<Escrow>(tc.escrow_id());
    assert!(version::current() == 1);
    assert!(h.package_version() == 1 && cap.package_version() == 1);
    assert!(tc.package_version() == 1 && e.package_version() == 1);
    ts::return_shared(h);
    ts::return_shared(cap);
    ts::return_shared(tc);
    ts::return_shared(e);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = version::EWrongVersion)]
fun a_host_of_another_version_refuses_its_authority() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    set_host_version(&mut scenario, 2);
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    h.set_endpoints(vector[], scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

/// A Host is only read by `open`: its version is checked all the same, so an old
/// package's `open` cannot bypass what a migrated Host's package checks.
#[test, expected_failure(abort_code = version::EWrongVersion)]
fun an_open_through_another_version_is_refused_by_the_host_it_reads() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    set_host_version(&mut scenario, 2);
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = version::EWrongVersion)]
fun a_connection_of_another_version_is_not_settled() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    scenario.next_tx(th::server());
    let mut tc = scenario.take_shared_by_id<TransportControl>(conn);
    tc.set_version_for_testing(2);
    ts::return_shared(tc);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    th::finish(scenario, clock);
}

#[test]
fun the_publisher_alone_holds_the_admin_cap() {
    let (mut scenario, clock) = th::start();
    publish(&mut scenario);
    scenario.next_tx(PUBLISHER);
    assert!(ts::has_most_recent_for_sender<AdminCap>(&scenario));
    assert!(!ts::has_most_recent_for_address<AdminCap>(th::server()));
    assert!(!ts::has_most_recent_for_address<AdminCap>(th::client()));
    th::finish(scenario, clock);
}

/// An object an older package made (version 0 here) is migrated forward, then served.
#[test]
fun the_admin_migrates_an_older_object_forward() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    publish(&mut scenario);
    set_host_version(&mut scenario, 0);
    scenario.next_tx(PUBLISHER);
    let admin = scenario.take_from_sender<AdminCap>();
    let mut h = scenario.take_shared<Host>();
    host::migrate(&admin, &mut h);
    assert!(h.package_version() == 1);
    ts::return_shared(h);
    scenario.return_to_sender(admin);
    let effects = scenario.next_tx(th::server());
    assert!(effects.num_user_events() == 1); // ObjectMigrated
    let mut h = scenario.take_shared<Host>();
    h.set_endpoints(vector[], scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = version::ENotUpgrade)]
fun an_object_at_this_version_is_not_migrated() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    publish(&mut scenario);
    scenario.next_tx(PUBLISHER);
    let admin = scenario.take_from_sender<AdminCap>();
    let mut h = scenario.take_shared<Host>();
    host::migrate(&admin, &mut h);
    ts::return_shared(h);
    scenario.return_to_sender(admin);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = version::ENotUpgrade)]
fun an_object_of_a_later_version_is_not_migrated_back() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    publish(&mut scenario);
    scenario.next_tx(th::server());
    let pool_id = {
        let h = scenario.take_shared<Host>();
        let id = sponsor::create(&h, th::port(), 5_000, 1_000, 1, scenario.ctx());
        ts::return_shared(h);
        id
    };
    scenario.next_tx(th::server());
    let mut pool = scenario.take_shared_by_id<SponsorPool>(pool_id);
    let lanes = pool.lanes();
    let mut lane = scenario.take_shared_by_id<SponsorLane>(lanes[0]);
    pool.set_pool_version_for_testing(0);
    lane.set_lane_version_for_testing(2);
    ts::return_shared(pool);
    ts::return_shared(lane);
    scenario.next_tx(PUBLISHER);
    let admin = scenario.take_from_sender<AdminCap>();
    let mut pool = scenario.take_shared_by_id<SponsorPool>(pool_id);
    let mut lane = scenario.take_shared_by_id<SponsorLane>(lanes[0]);
    sponsor::migrate_pool(&admin, &mut pool);
    assert!(pool.pool_version() == 1);
    sponsor::migrate_lane(&admin, &mut lane);
    ts::return_shared(pool);
    ts::return_shared(lane);
    scenario.return_to_sender(admin);
    th::finish(scenario, clock);
}
