/// Checks of the payment-model rules beyond the scenario table (docs/escrow.md §13-16),
/// the Move side of the bad-input tests in tests/test_ledger_economics.py.
#[test_only]
module dtp::economics_rule_tests;

use dtp::host::Host;
use dtp::retention::{Self, RetentionTerms};
use dtp::spending_cap::{Self, SpendingCap};
use dtp::sponsor::{Self, SponsorPool};
use dtp::subscription::{Self, Subscription, SubscriptionOffer};
use dtp::test_helpers as th;
use dtp::tickets::{Self, TicketSale};
use dtp::transport_control::{Self, TransportControl};
use sui::test_scenario as ts;

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
    let payment = th::take(&mut scenario, th::client(), 199);
    subscription::subscribe(&offer, 2, payment, scenario.ctx());
    ts::return_shared(offer);
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
    let payment = th::take(&mut scenario, th::client(), 100);
    subscription::subscribe(&offer, 1, payment, scenario.ctx());
    ts::return_shared(offer);
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
    let payment = th::take(&mut scenario, th::client(), 100);
    subscription::subscribe(&offer, 1, payment, scenario.ctx());
    ts::return_shared(offer);
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

#[test]
fun sponsor_pledge_limit_of_zero_pledges_nothing() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    sponsor::create(&h, th::port(), 10_000, 0, scenario.ctx());
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let mut pool = scenario.take_shared<SponsorPool>();
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let payment = th::take(&mut scenario, th::client(), 1_000);
    // an empty pool opens it: the pledge is 0
    let conn = pool.open_connection(&h, &mut cap, th::client_pk(), payment, &clock, scenario.ctx());
    assert!(pool.pledge_of(conn) == 0 && pool.reserved() == 0 && pool.pledge_for(1_000) == 0);
    ts::return_shared(pool);
    ts::return_shared(h);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::EInvalidShare)]
fun sponsor_share_above_everything_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    sponsor::create(&h, th::port(), 10_001, 10_000, scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ENotSponsored)]
fun reimburse_unsponsored_connection_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    sponsor::create(&h, th::port(), 5_000, 10_000, scenario.ctx());
    ts::return_shared(h);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    scenario.next_tx(th::client());
    let mut pool = scenario.take_shared<SponsorPool>();
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let e = scenario.take_shared_by_id<dtp::escrow::Escrow>(tc.escrow_id());
    pool.reimburse(&tc, &e, scenario.ctx());
    ts::return_shared(pool);
    ts::return_shared(tc);
    ts::return_shared(e);
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
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    subscription::create_offer(&h, th::port(), 100, 1, scenario.ctx());
    ts::return_shared(h);
    scenario.next_tx(th::client());
    let offer = scenario.take_shared<SubscriptionOffer>();
    let payment = th::take(&mut scenario, th::client(), 100);
    subscription::subscribe(&offer, 1, payment, scenario.ctx());
    ts::return_shared(offer);
    scenario.next_tx(th::client());
    let sub = scenario.take_shared<Subscription>();
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
    assert!(tc.state_code() == transport_control::state_open());
    ts::return_shared(tc);
    th::finish(scenario, clock);
}
