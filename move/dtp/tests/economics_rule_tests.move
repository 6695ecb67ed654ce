/// Checks of the payment-model rules beyond the scenario table (docs/escrow.md §13-16),
/// the Move side of the bad-input tests in tests/test_ledger_economics.py.
#[test_only]
module dtp::economics_rule_tests;

use dtp::escrow::Escrow;
use dtp::host::{Self, Host};
use dtp::retention::{Self, RetainedRecord, RetentionTerms};
use dtp::spending_cap::{Self, SpendingCap};
use dtp::sponsor::{Self, SponsorLane, SponsorPool};
use dtp::subscription::{Self, Subscription, SubscriptionOffer};
use dtp::test_helpers as th;
use dtp::tickets::{Self, TicketSale};
use dtp::transport_control::{Self, TransportControl};
use sui::clock::Clock;
use sui::test_scenario::{Self as ts, Scenario};

#[test, expected_failure(abort_code = subscription::ENotProvider)]
fun offer_by_non_authority_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::client());
    let h = scenario.take_shared<Host>();
    subscription::create_offer(&h, th::port(), 100, 1, scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::EWrongPayment)]
fun subscription_underpaid_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    subscription::create_offer(&h, th::port(), 100, 1, scenario.ctx());
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let payment = th::take(&mut scenario, th::client(), 199);
    subscription::subscribe(&offer, &h, 2, payment, scenario.ctx());
    ts::return_shared(offer);
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::ENotHolder)]
fun subscription_used_by_another_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    subscription::create_offer(&h, th::port(), 100, 1, scenario.ctx());
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let payment = th::take(&mut scenario, th::client(), 100);
    subscription::subscribe(&offer, &h, 1, payment, scenario.ctx());
    ts::return_shared(offer);
    ts::return_shared(h);
    scenario.next_tx(th::mallory());
    let mallory_cap = spending_cap::create(1_000, scenario.ctx());
    th::fund(&mut scenario, th::mallory(), 1);
    scenario.next_tx(th::mallory());
    let sub = scenario.take_shared<Subscription>();
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(mallory_cap);
    let payment = th::take(&mut scenario, th::mallory(), 0);
    sub.open_connection(
        &offer,
        &h,
        &mut cap,
        th::mallory_pk(),
        payment,
        &clock,
        scenario.ctx(),
    );
    ts::return_shared(sub);
    ts::return_shared(offer);
    ts::return_shared(h);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test]
fun subscribed_open_survives_a_lowered_cap() {
    // The cap's owner lowered it below what is outstanding: a subscribed open reserves
    // 0, which no cap refuses (docs/escrow.md §4).
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 2_000, 10_000);
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    th::set_cap(&mut scenario, cap_id, 500);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    subscription::create_offer(&h, th::port(), 100, 1, scenario.ctx());
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let payment = th::take(&mut scenario, th::client(), 100);
    subscription::subscribe(&offer, &h, 1, payment, scenario.ctx());
    ts::return_shared(offer);
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let sub = scenario.take_shared<Subscription>();
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let payment = th::take(&mut scenario, th::client(), 0);
    sub.open_connection(
        &offer,
        &h,
        &mut cap,
        th::client_pk(),
        payment,
        &clock,
        scenario.ctx(),
    );
    assert!(cap.outstanding() == 1_000 && cap.remaining(scenario.ctx()) == 0);
    ts::return_shared(sub);
    ts::return_shared(offer);
    ts::return_shared(h);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

/// SERVER creates a pool of `lanes` lanes on the service (the only pool: `take_shared`).
fun create_pool(scenario: &mut Scenario, share_bps: u64, max_pledge: u64, lanes: u64) {
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    sponsor::create(&h, th::port(), share_bps, max_pledge, lanes, scenario.ctx());
    ts::return_shared(h);
}

#[test]
fun sponsor_pledge_limit_of_zero_pledges_nothing() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    create_pool(&mut scenario, 10_000, 0, 1);
    scenario.next_tx(th::client());
    let pool = scenario.take_shared<SponsorPool>();
    let lanes = pool.lanes();
    let mut lane = scenario.take_shared_by_id<SponsorLane>(lanes[0]);
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let payment = th::take(&mut scenario, th::client(), 1_000);
    // an empty lane opens it: the pledge is 0
    let conn = pool.open_connection(
        &mut lane,
        &h,
        &mut cap,
        th::client_pk(),
        payment,
        &clock,
        scenario.ctx(),
    );
    assert!(lane.pledge_of(conn) == 0 && lane.reserved() == 0 && pool.pledge_for(1_000) == 0);
    // a pledge of 0 is still a pledge: the connection is sponsored through this lane
    assert!(lane.pledge_count() == 1);
    ts::return_shared(pool);
    ts::return_shared(lane);
    ts::return_shared(h);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::EInvalidShare)]
fun sponsor_share_above_everything_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    create_pool(&mut scenario, 10_001, 10_000, 1);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::EInvalidLanes)]
fun sponsor_pool_without_lanes_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    create_pool(&mut scenario, 5_000, 10_000, 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::EInvalidLanes)]
fun sponsor_pool_over_the_lane_limit_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    create_pool(&mut scenario, 5_000, 10_000, 65);
    th::finish(scenario, clock);
}

#[test]
fun sponsor_pool_makes_its_lanes() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    create_pool(&mut scenario, 5_000, 10_000, 64);
    scenario.next_tx(th::server());
    let pool = scenario.take_shared<SponsorPool>();
    let lanes = pool.lanes();
    assert!(lanes.length() == 64);
    let mut i = 0;
    while (i < lanes.length()) {
        let lane = scenario.take_shared_by_id<SponsorLane>(lanes[i]);
        assert!(lane.lane_pool() == object::id(&pool));
        assert!(lane.funds_value() == 0 && lane.reserved() == 0 && lane.pledge_count() == 0);
        ts::return_shared(lane);
        i = i + 1;
    };
    ts::return_shared(pool);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::EWrongLane)]
fun sponsor_lane_of_another_pool_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    create_pool(&mut scenario, 5_000, 10_000, 1);
    scenario.next_tx(th::server());
    let first = scenario.take_shared<SponsorPool>();
    let lanes = first.lanes();
    let first_lane = lanes[0];
    ts::return_shared(first);
    // a second pool of the same service: the first one's lane is not its own
    create_pool(&mut scenario, 5_000, 10_000, 1);
    scenario.next_tx(th::client());
    let pool = scenario.take_shared<SponsorPool>(); // (the newest: the second)
    let lanes = pool.lanes();
    assert!(!lanes.contains(&first_lane));
    let mut lane = scenario.take_shared_by_id<SponsorLane>(first_lane);
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let payment = th::take(&mut scenario, th::client(), 1_000);
    pool.open_connection(&mut lane, &h, &mut cap, th::client_pk(), payment, &clock, scenario.ctx());
    ts::return_shared(pool);
    ts::return_shared(lane);
    ts::return_shared(h);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ENotSponsored)]
fun reimburse_unsponsored_connection_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    create_pool(&mut scenario, 5_000, 10_000, 1);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    scenario.next_tx(th::client());
    let pool = scenario.take_shared<SponsorPool>();
    let lanes = pool.lanes();
    let mut lane = scenario.take_shared_by_id<SponsorLane>(lanes[0]);
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let e = scenario.take_shared_by_id<dtp::escrow::Escrow>(tc.escrow_id());
    pool.reimburse(&mut lane, &tc, &e, scenario.ctx());
    ts::return_shared(pool);
    ts::return_shared(lane);
    ts::return_shared(tc);
    ts::return_shared(e);
    th::finish(scenario, clock);
}

/// A connection not opened through the lane is not deleted through it (its deletion is
/// `transport_control::destroy`'s).
#[test, expected_failure(abort_code = sponsor::ENotSponsored)]
fun reimburse_and_destroy_unsponsored_connection_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    create_pool(&mut scenario, 5_000, 10_000, 1);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    scenario.next_tx(th::client());
    let pool = scenario.take_shared<SponsorPool>();
    let lanes = pool.lanes();
    let mut lane = scenario.take_shared_by_id<SponsorLane>(lanes[0]);
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let e = scenario.take_shared_by_id<dtp::escrow::Escrow>(tc.escrow_id());
    pool.reimburse_and_destroy(&mut lane, tc, e, scenario.ctx());
    ts::return_shared(pool);
    ts::return_shared(lane);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::EInvalidTerms)]
fun ticket_sale_deadline_in_past_rejected() {
    let (mut scenario, clock) = th::start();
    scenario.next_tx(th::server());
    tickets::create(b"late", 50, 1, 0, 0, &clock, scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::EWrongPayment)]
fun tickets_underpaid_rejected() {
    let (mut scenario, clock) = th::start();
    scenario.next_tx(th::server());
    tickets::create(b"show", 50, 1, 0, 10_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    scenario.next_tx(th::listener_a());
    let mut sale = scenario.take_shared<TicketSale>();
    let payment = th::take(&mut scenario, th::listener_a(), 99);
    sale.buy(2, payment, &clock, scenario.ctx());
    ts::return_shared(sale);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::EWrongDeposit)]
fun retention_short_deposit_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    retention::create_terms(&h, th::port(), 60_000, 2, scenario.ctx());
    ts::return_shared(h);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    scenario.next_tx(th::client());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    dtp::pipe::create(&tc, 1, scenario.ctx());
    ts::return_shared(tc);
    scenario.next_tx(th::client());
    let mut p = scenario.take_from_sender<dtp::pipe::Pipe>();
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let terms = scenario.take_shared<RetentionTerms>();
    let deposit = th::take(&mut scenario, th::client(), 21);
    retention::send(&mut p, &tc, &terms, 0, b"hello world", deposit, &clock, scenario.ctx());
    ts::return_to_sender(&scenario, p);
    ts::return_shared(tc);
    ts::return_shared(terms);
    th::finish(scenario, clock);
}

#[test]
fun prepaid_sla_is_all_zero() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    // the service's half-close timeout is not a price: the prepaid connection keeps it
    th::update_service(&mut scenario, 10, 5, 1000, 3_600_000, 0);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    subscription::create_offer(&h, th::port(), 100, 1, scenario.ctx());
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let payment = th::take(&mut scenario, th::client(), 100);
    subscription::subscribe(&offer, &h, 1, payment, scenario.ctx());
    ts::return_shared(offer);
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let sub = scenario.take_shared<Subscription>();
    let sub_id = object::id(&sub);
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let deposit = th::take(&mut scenario, th::client(), 0);
    let conn = sub.open_connection(
        &offer,
        &h,
        &mut cap,
        th::client_pk(),
        deposit,
        &clock,
        scenario.ctx(),
    );
    ts::return_shared(sub);
    ts::return_shared(offer);
    ts::return_shared(h);
    ts::return_shared(cap);
    scenario.next_tx(th::client());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let sla = tc.sla();
    assert!(sla.price_per_kib() == 0 && sla.price_per_request() == 0 && sla.min_deposit() == 0);
    assert!(sla.half_close_timeout_ms() == 3_600_000 && tc.half_close_timeout_ms() == 3_600_000);
    assert!(tc.state_code() == transport_control::state_open());
    // the connection records its subscription, which ends it once over
    assert!(tc.subscription() == option::some(sub_id));
    ts::return_shared(tc);
    th::finish(scenario, clock);
}

#[test]
fun metered_connection_records_no_subscription() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    scenario.next_tx(th::client());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let recorded = tc.subscription();
    assert!(recorded.is_none());
    ts::return_shared(tc);
    th::finish(scenario, clock);
}

// === Subscribed connections once the subscription is over ===

/// An offer of 100 MIST per epoch, a one-epoch subscription of CLIENT's, and a connection
/// opened with it (nothing deposited). Returns the connection ID.
fun subscribed_connection(scenario: &mut Scenario, clock: &Clock, cap_id: ID): ID {
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    subscription::create_offer(&h, th::port(), 100, 1, scenario.ctx());
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let payment = th::take(scenario, th::client(), 100);
    subscription::subscribe(&offer, &h, 1, payment, scenario.ctx());
    ts::return_shared(offer);
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let sub = scenario.take_shared<Subscription>();
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let deposit = th::take(scenario, th::client(), 0);
    let conn = sub.open_connection(
        &offer,
        &h,
        &mut cap,
        th::client_pk(),
        deposit,
        clock,
        scenario.ctx(),
    );
    ts::return_shared(sub);
    ts::return_shared(offer);
    ts::return_shared(h);
    ts::return_shared(cap);
    conn
}

/// `who` ends `conn` through the offer `offer_id` (`subscription::end_connection`).
fun end_with(scenario: &mut Scenario, clock: &Clock, conn: ID, offer_id: ID, who: address): u64 {
    scenario.next_tx(who);
    let sub = scenario.take_shared<Subscription>();
    let offer = scenario.take_shared_by_id<SubscriptionOffer>(offer_id);
    let mut tc = scenario.take_shared_by_id<TransportControl>(conn);
    let mut e = scenario.take_shared_by_id<Escrow>(tc.escrow_id());
    let mut cap = scenario.take_shared_by_id<SpendingCap>(tc.spending_cap_id());
    let refunded = sub.end_connection(&offer, &mut tc, &mut e, &mut cap, clock, scenario.ctx());
    ts::return_shared(sub);
    ts::return_shared(offer);
    ts::return_shared(tc);
    ts::return_shared(e);
    ts::return_shared(cap);
    refunded
}

/// The ID of the most recent subscription offer.
fun latest_offer(scenario: &mut Scenario): ID {
    scenario.next_tx(th::server());
    let offer = scenario.take_shared<SubscriptionOffer>();
    let id = object::id(&offer);
    ts::return_shared(offer);
    id
}

#[test]
fun half_closed_subscribed_connection_ended_after_expiry() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = subscribed_connection(&mut scenario, &clock, cap_id);
    let offer = latest_offer(&mut scenario);
    th::close_as(&mut scenario, &clock, conn, th::client());
    scenario.next_epoch(th::server());
    // the server ends it, not waiting out the half-close timeout: nothing is owed
    assert!(end_with(&mut scenario, &clock, conn, offer, th::server()) == 0);
    scenario.next_tx(th::server());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    assert!(tc.state_code() == transport_control::state_closed() && tc.is_settled());
    ts::return_shared(tc);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::EAlreadySettled)]
fun subscribed_connection_ended_twice_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = subscribed_connection(&mut scenario, &clock, cap_id);
    let offer = latest_offer(&mut scenario);
    scenario.next_epoch(th::server());
    end_with(&mut scenario, &clock, conn, offer, th::other());
    end_with(&mut scenario, &clock, conn, offer, th::other());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::EWrongOffer)]
fun subscribed_connection_ended_through_another_offer_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = subscribed_connection(&mut scenario, &clock, cap_id);
    // another offer, withdrawn: still not the subscription's
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    let other = subscription::create_offer(&h, th::port(), 1, 1, scenario.ctx());
    ts::return_shared(h);
    scenario.next_tx(th::server());
    let mut offer = scenario.take_shared_by_id<SubscriptionOffer>(other);
    let h = scenario.take_shared<Host>();
    offer.withdraw_offer(&h, scenario.ctx());
    ts::return_shared(offer);
    ts::return_shared(h);
    end_with(&mut scenario, &clock, conn, other, th::other());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::ESubscriptionLive)]
fun renewed_subscription_keeps_its_connection() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = subscribed_connection(&mut scenario, &clock, cap_id);
    let offer = latest_offer(&mut scenario);
    scenario.next_epoch(th::server());
    scenario.next_tx(th::client());
    {
        let mut sub = scenario.take_shared<Subscription>();
        let the_offer = scenario.take_shared_by_id<SubscriptionOffer>(offer);
        let h = scenario.take_shared<Host>();
        let payment = th::take(&mut scenario, th::client(), 100);
        sub.renew(&the_offer, &h, 1, payment, scenario.ctx());
        ts::return_shared(sub);
        ts::return_shared(the_offer);
        ts::return_shared(h);
    };
    // live again in this epoch: its connections go on
    end_with(&mut scenario, &clock, conn, offer, th::other());
    th::finish(scenario, clock);
}

// === Retention terms and deadlines ===

/// SERVER publishes retention terms (60000 ms, 2 MIST per byte) for the service of
/// `th::setup`'s host. Returns their ID.
fun publish_terms(scenario: &mut Scenario): ID {
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    let id = retention::create_terms(&h, th::port(), 60_000, 2, scenario.ctx());
    ts::return_shared(h);
    id
}

#[test, expected_failure(abort_code = retention::EWrongTerms)]
fun retire_terms_through_another_host_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let terms_id = publish_terms(&mut scenario);
    scenario.next_tx(th::server());
    let second = host::create(th::noise_key(), vector[], scenario.ctx());
    scenario.next_tx(th::server());
    let mut terms = scenario.take_shared_by_id<RetentionTerms>(terms_id);
    let h = scenario.take_shared_by_id<Host>(second);
    terms.retire_terms(&h, scenario.ctx());
    ts::return_shared(terms);
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::ETermsRetired)]
fun retire_terms_twice_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let terms_id = publish_terms(&mut scenario);
    let mut i = 0;
    while (i < 2) {
        scenario.next_tx(th::server());
        let mut terms = scenario.take_shared_by_id<RetentionTerms>(terms_id);
        let h = scenario.take_shared<Host>();
        terms.retire_terms(&h, scenario.ctx());
        assert!(terms.is_retired());
        ts::return_shared(terms);
        ts::return_shared(h);
        i = i + 1;
    };
    th::finish(scenario, clock);
}

#[test]
fun longest_terms_accepted() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    retention::create_terms(&h, th::port(), retention::max_retention_ms(), 2, scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::ENotSender)]
fun reclaim_by_receiver_rejected() {
    let (mut scenario, mut clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let terms_id = publish_terms(&mut scenario);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    scenario.next_tx(th::client());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    dtp::pipe::create(&tc, 1, scenario.ctx());
    ts::return_shared(tc);
    scenario.next_tx(th::client());
    let mut p = scenario.take_from_sender<dtp::pipe::Pipe>();
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let terms = scenario.take_shared_by_id<RetentionTerms>(terms_id);
    let deposit = th::take(&mut scenario, th::client(), 4);
    retention::send(&mut p, &tc, &terms, 0, b"kept", deposit, &clock, scenario.ctx());
    ts::return_to_sender(&scenario, p);
    ts::return_shared(tc);
    ts::return_shared(terms);
    clock.set_for_testing(1_000_000);
    // past every deadline, the deposit is still the sender's alone
    scenario.next_tx(th::server());
    let record = scenario.take_shared<RetainedRecord>();
    record.delete(&clock, scenario.ctx());
    th::finish(scenario, clock);
}
