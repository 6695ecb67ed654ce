/// The payment-model scenarios (tests/scenarios/subscription.toml, sponsor.toml,
/// tickets.toml, retention.toml, payment.toml), one test per scenario with the same name. As in
/// `dtp::scenario_tests`, a scenario whose last step expects an error is an
/// `expected_failure` test whose last call must abort with it.
#[test_only]
module dtp::economics_scenario_tests;

use dtp::escrow::{Self, Escrow};
use dtp::host::Host;
use dtp::payment;
use dtp::pipe::{Self, Pipe};
use dtp::retention::{Self, RetainedRecord, RetentionTerms};
use dtp::spending_cap::SpendingCap;
use dtp::sponsor::{Self, SponsorLane, SponsorPool};
use dtp::subscription::{Self, Subscription, SubscriptionOffer};
use dtp::test_helpers as th;
use dtp::tickets::{Self, TicketSale};
use dtp::transport_control::{Self, TransportControl};
use sui::clock::Clock;
use sui::test_scenario::{Self as ts, Scenario};

/// The client's signature over receipt (10240 bytes, 4 requests, 0 MIST, nonce 1) for
/// escrow 0x…decaf of connection 0x…c0ffee (made like the vectors of `dtp::test_helpers`).
const RFREE_SIG: vector<u8> = x"92776b10810f786fe352dc09a1977391aee9a533d95b910174e0a7b213fbb670792975970a86f4806f0810f5f2c68120da3ab14ad4b1993ff0ffac8137d5a30c";

// === Subscription helpers ===

fun offer_create(scenario: &mut Scenario, price: u64, period: u64) {
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    subscription::create_offer(&h, th::port(), price, period, scenario.ctx());
    ts::return_shared(h);
}

fun subscribe(scenario: &mut Scenario, epochs: u64, price: u64) {
    scenario.next_tx(th::client());
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let payment = th::take(scenario, th::client(), epochs * price);
    subscription::subscribe(&offer, &h, epochs, payment, scenario.ctx());
    ts::return_shared(offer);
    ts::return_shared(h);
}

/// CLIENT renews its subscription by `epochs` at `price`; returns the new `expires_epoch`.
fun renew(scenario: &mut Scenario, epochs: u64, price: u64): u64 {
    scenario.next_tx(th::client());
    let mut sub = scenario.take_shared<Subscription>();
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let payment = th::take(scenario, th::client(), epochs * price);
    let expires = sub.renew(&offer, &h, epochs, payment, scenario.ctx());
    ts::return_shared(sub);
    ts::return_shared(offer);
    ts::return_shared(h);
    expires
}

fun subscription_claim(scenario: &mut Scenario): u64 {
    scenario.next_tx(th::server());
    let mut sub = scenario.take_shared<Subscription>();
    let offer = scenario.take_shared<SubscriptionOffer>();
    let amount = sub.claim(&offer, scenario.ctx());
    ts::return_shared(sub);
    ts::return_shared(offer);
    amount
}

fun offer_withdraw(scenario: &mut Scenario) {
    offer_withdraw_as(scenario, th::server());
}

/// `who` withdraws the offer (the provider; anyone once the host has another authority).
fun offer_withdraw_as(scenario: &mut Scenario, who: address) {
    scenario.next_tx(who);
    let mut offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    offer.withdraw_offer(&h, scenario.ctx());
    ts::return_shared(offer);
    ts::return_shared(h);
}

fun subscription_refund(scenario: &mut Scenario): u64 {
    scenario.next_tx(th::client());
    let mut sub = scenario.take_shared<Subscription>();
    let offer = scenario.take_shared<SubscriptionOffer>();
    let amount = sub.refund(&offer, scenario.ctx());
    ts::return_shared(sub);
    ts::return_shared(offer);
    amount
}

/// CLIENT opens a subscribed connection; its escrow is pinned to 0x…c0ffee.
fun open_subscribed(scenario: &mut Scenario, clock: &Clock, cap_id: ID, deposit: u64): ID {
    scenario.next_tx(th::client());
    let sub = scenario.take_shared<Subscription>();
    let offer = scenario.take_shared<SubscriptionOffer>();
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let payment = th::take(scenario, th::client(), deposit);
    let conn = sub.open_connection(
        &offer,
        &h,
        &mut cap,
        th::client_pk(),
        payment,
        clock,
        scenario.ctx(),
    );
    ts::return_shared(sub);
    ts::return_shared(offer);
    ts::return_shared(h);
    ts::return_shared(cap);
    pin_escrow(scenario);
    conn
}

/// `who` ends the subscribed connection `conn` (`subscription::end_connection`, with the
/// connection's escrow and cap); returns the refund.
fun end_subscribed(scenario: &mut Scenario, clock: &Clock, conn: ID, who: address): u64 {
    scenario.next_tx(who);
    let sub = scenario.take_shared<Subscription>();
    let offer = scenario.take_shared<SubscriptionOffer>();
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

/// Whether connection `conn` is Closed and settled (read in a new transaction).
fun closed_and_settled(scenario: &mut Scenario, conn: ID): bool {
    scenario.next_tx(th::server());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let done = tc.state_code() == transport_control::state_closed() && tc.is_settled();
    ts::return_shared(tc);
    done
}

fun pin_escrow(scenario: &mut Scenario) {
    scenario.next_tx(th::client());
    let mut e = scenario.take_shared<Escrow>();
    e.set_connection_for_testing(th::connection());
    ts::return_shared(e);
}

// === Subscription stories ===

#[test]
fun subscription_expiry_and_renewal() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 2, 100);
    scenario.next_tx(th::client());
    assert!(th::balance_of(&scenario, th::client()) == 9_800);
    open_subscribed(&mut scenario, &clock, cap_id, 0);
    assert!(th::claim(&mut scenario, 10240, 4, 0, 1, RFREE_SIG) == 0);
    assert!(subscription_claim(&mut scenario) == 100);
    scenario.next_epoch(th::server());
    scenario.next_epoch(th::server());
    scenario.next_tx(th::client());
    {
        let sub = scenario.take_shared<Subscription>();
        assert!(!sub.is_live(scenario.ctx().epoch()));
        assert!(sub.claimed_epochs() == 1 && sub.funds_value() == 100);
        ts::return_shared(sub);
    };
    assert!(renew(&mut scenario, 1, 100) == 3);
    scenario.next_tx(th::client());
    {
        let sub = scenario.take_shared<Subscription>();
        assert!(sub.start_epoch() == 2 && sub.expires_epoch() == 3);
        assert!(sub.claimed_epochs() == 0 && sub.funds_value() == 100);
        ts::return_shared(sub);
    };
    assert!(th::balance_of(&scenario, th::client()) == 9_700);
    assert!(th::balance_of(&scenario, th::server()) == 200);
    open_subscribed(&mut scenario, &clock, cap_id, 0);
    scenario.next_tx(th::server());
    let e = scenario.take_shared<Escrow>();
    assert!(e.balance() == 0 && e.claimed() == 0);
    ts::return_shared(e);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::ESubscriptionExpired)]
fun subscription_expired_open_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 1, 100);
    scenario.next_epoch(th::server());
    open_subscribed(&mut scenario, &clock, cap_id, 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EAmountMismatch)]
fun subscription_metered_receipt_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 1, 100);
    open_subscribed(&mut scenario, &clock, cap_id, 1000);
    th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig());
    th::finish(scenario, clock);
}

#[test]
fun subscription_withdrawal_refunds_unused_epochs() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 5, 100);
    scenario.next_epoch(th::server());
    assert!(subscription_claim(&mut scenario) == 200);
    scenario.next_epoch(th::server());
    offer_withdraw(&mut scenario);
    assert!(subscription_refund(&mut scenario) == 200);
    assert!(subscription_claim(&mut scenario) == 100);
    scenario.next_tx(th::client());
    let sub = scenario.take_shared<Subscription>();
    assert!(sub.expires_epoch() == 3 && sub.claimed_epochs() == 3 && sub.funds_value() == 0);
    ts::return_shared(sub);
    assert!(th::balance_of(&scenario, th::client()) == 9_700);
    assert!(th::balance_of(&scenario, th::server()) == 300);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::EAlreadyRefunded)]
fun subscription_double_refund_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 2);
    subscribe(&mut scenario, 4, 100);
    offer_withdraw(&mut scenario);
    assert!(subscription_refund(&mut scenario) == 300);
    subscription_refund(&mut scenario);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::EInvalidEpochs)]
fun subscription_wrong_period_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 2);
    subscribe(&mut scenario, 3, 100);
    th::finish(scenario, clock);
}

#[test]
fun subscription_expired_connection_ended_by_anyone() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 1, 100);
    let conn = open_subscribed(&mut scenario, &clock, cap_id, 50);
    scenario.next_epoch(th::server());
    assert!(end_subscribed(&mut scenario, &clock, conn, th::other()) == 50);
    assert!(closed_and_settled(&mut scenario, conn));
    scenario.next_tx(th::server());
    {
        let e = scenario.take_shared<Escrow>();
        assert!(e.balance() == 0 && e.claimed() == 0 && e.refunded() == 50 && e.is_settled());
        ts::return_shared(e);
    };
    assert!(th::balance_of(&scenario, th::client()) == 9_900);
    th::finish(scenario, clock);
}

#[test]
fun subscription_withdrawn_offer_ends_connection() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 3, 100);
    let conn = open_subscribed(&mut scenario, &clock, cap_id, 0);
    offer_withdraw(&mut scenario);
    assert!(end_subscribed(&mut scenario, &clock, conn, th::client()) == 0);
    assert!(closed_and_settled(&mut scenario, conn));
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::ESubscriptionLive)]
fun subscription_live_connection_end_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 2, 100);
    let conn = open_subscribed(&mut scenario, &clock, cap_id, 0);
    end_subscribed(&mut scenario, &clock, conn, th::server());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::ENotSubscribed)]
fun subscription_end_metered_connection_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 1, 100);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1_000);
    scenario.next_epoch(th::server());
    end_subscribed(&mut scenario, &clock, conn, th::client());
    th::finish(scenario, clock);
}

// === The host changes hands (docs/escrow.md §13) ===

#[test]
fun subscription_offer_ends_with_the_hosts_sale() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 1_000, 1);
    subscribe(&mut scenario, 5, 1_000);
    let conn = open_subscribed(&mut scenario, &clock, cap_id, 0);
    scenario.next_epoch(th::server());
    set_authority(&mut scenario, th::other());
    // the new authority withdraws: the old one earned the epochs begun until now
    offer_withdraw_as(&mut scenario, th::other());
    assert!(subscription_claim(&mut scenario) == 2_000);
    assert!(subscription_refund(&mut scenario) == 3_000);
    assert!(end_subscribed(&mut scenario, &clock, conn, th::other()) == 0);
    assert!(closed_and_settled(&mut scenario, conn));
    scenario.next_epoch(th::server());
    assert!(subscription_claim(&mut scenario) == 0);
    scenario.next_tx(th::client());
    {
        let sub = scenario.take_shared<Subscription>();
        assert!(!sub.is_live(scenario.ctx().epoch()));
        assert!(sub.expires_epoch() == 2 && sub.claimed_epochs() == 2 && sub.funds_value() == 0);
        ts::return_shared(sub);
    };
    assert!(th::balance_of(&scenario, th::client()) == 8_000);
    assert!(th::balance_of(&scenario, th::server()) == 2_000);
    assert!(th::balance_of(&scenario, th::other()) == 0);
    th::finish(scenario, clock);
}

#[test]
fun subscription_holder_withdraws_a_sold_hosts_offer() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 3, 100);
    set_authority(&mut scenario, th::other());
    offer_withdraw_as(&mut scenario, th::client());
    assert!(subscription_refund(&mut scenario) == 200);
    scenario.next_epoch(th::server());
    assert!(subscription_claim(&mut scenario) == 100);
    scenario.next_tx(th::client());
    {
        let sub = scenario.take_shared<Subscription>();
        assert!(sub.funds_value() == 0);
        ts::return_shared(sub);
    };
    assert!(th::balance_of(&scenario, th::client()) == 9_900);
    assert!(th::balance_of(&scenario, th::server()) == 100);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::ENotProvider)]
fun subscription_withdrawal_by_another_before_a_sale_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 3, 100);
    offer_withdraw_as(&mut scenario, th::client());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::EProviderChanged)]
fun subscription_open_after_the_hosts_sale_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 5, 100);
    set_authority(&mut scenario, th::other());
    open_subscribed(&mut scenario, &clock, cap_id, 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::EProviderChanged)]
fun subscription_subscribe_after_the_hosts_sale_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    set_authority(&mut scenario, th::other());
    subscribe(&mut scenario, 1, 100);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = subscription::EProviderChanged)]
fun subscription_renew_after_the_hosts_sale_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    offer_create(&mut scenario, 100, 1);
    subscribe(&mut scenario, 1, 100);
    set_authority(&mut scenario, th::other());
    renew(&mut scenario, 1, 100);
    th::finish(scenario, clock);
}

// === Sponsor helpers ===

/// SERVER receives `server_funds`, creates a pool of one lane with `share_bps` and
/// `max_pledge` and puts `pool_funds` into it.
fun sponsor_setup(
    scenario: &mut Scenario,
    server_funds: u64,
    share_bps: u64,
    max_pledge: u64,
    pool_funds: u64,
) {
    sponsor_create(scenario, server_funds, share_bps, max_pledge, 1);
    sponsor_fund(scenario, 0, pool_funds);
}

/// SERVER receives `server_funds` and creates a pool of `lanes` lanes.
fun sponsor_create(
    scenario: &mut Scenario,
    server_funds: u64,
    share_bps: u64,
    max_pledge: u64,
    lanes: u64,
) {
    th::fund(scenario, th::server(), server_funds);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    sponsor::create(&h, th::port(), share_bps, max_pledge, lanes, scenario.ctx());
    ts::return_shared(h);
}

/// The ID of the pool's lane `index`.
fun lane_id(scenario: &mut Scenario, index: u64): ID {
    scenario.next_tx(th::server());
    let pool = scenario.take_shared<SponsorPool>();
    let lanes = pool.lanes();
    let id = lanes[index];
    ts::return_shared(pool);
    id
}

/// SERVER puts `amount` into lane `index`.
fun sponsor_fund(scenario: &mut Scenario, index: u64, amount: u64) {
    let id = lane_id(scenario, index);
    scenario.next_tx(th::server());
    let pool = scenario.take_shared<SponsorPool>();
    let mut lane = scenario.take_shared_by_id<SponsorLane>(id);
    let payment = th::take(scenario, th::server(), amount);
    pool.fund(&mut lane, payment);
    ts::return_shared(pool);
    ts::return_shared(lane);
}

/// CLIENT opens a sponsored connection through lane `index` (its escrow not pinned: for
/// a second one).
fun open_sponsored_unpinned(
    scenario: &mut Scenario,
    clock: &Clock,
    cap_id: ID,
    deposit: u64,
    index: u64,
): ID {
    let id = lane_id(scenario, index);
    scenario.next_tx(th::client());
    let pool = scenario.take_shared<SponsorPool>();
    let mut lane = scenario.take_shared_by_id<SponsorLane>(id);
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let payment = th::take(scenario, th::client(), deposit);
    let conn = pool.open_connection(
        &mut lane,
        &h,
        &mut cap,
        th::client_pk(),
        payment,
        clock,
        scenario.ctx(),
    );
    ts::return_shared(pool);
    ts::return_shared(lane);
    ts::return_shared(h);
    ts::return_shared(cap);
    conn
}

/// CLIENT opens a sponsored connection through lane `index`; its escrow is pinned to
/// 0x…c0ffee.
fun open_sponsored(
    scenario: &mut Scenario,
    clock: &Clock,
    cap_id: ID,
    deposit: u64,
    index: u64,
): ID {
    let conn = open_sponsored_unpinned(scenario, clock, cap_id, deposit, index);
    pin_escrow(scenario);
    conn
}

/// `who` reimburses `conn` through lane `index`.
fun reimburse(scenario: &mut Scenario, conn: ID, who: address, index: u64): u64 {
    let id = lane_id(scenario, index);
    scenario.next_tx(who);
    let pool = scenario.take_shared<SponsorPool>();
    let mut lane = scenario.take_shared_by_id<SponsorLane>(id);
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let e = scenario.take_shared_by_id<Escrow>(tc.escrow_id());
    let amount = pool.reimburse(&mut lane, &tc, &e, scenario.ctx());
    ts::return_shared(pool);
    ts::return_shared(lane);
    ts::return_shared(tc);
    ts::return_shared(e);
    amount
}

/// Lane `index`'s funds, reserved and number of pledges.
fun lane_state(scenario: &mut Scenario, index: u64): (u64, u64, u64) {
    let id = lane_id(scenario, index);
    scenario.next_tx(th::server());
    let lane = scenario.take_shared_by_id<SponsorLane>(id);
    let (funds, reserved, pledges) = (lane.funds_value(), lane.reserved(), lane.pledge_count());
    ts::return_shared(lane);
    (funds, reserved, pledges)
}

/// The pool's funds and reserved: the sums of its lanes'.
fun pool_state(scenario: &mut Scenario): (u64, u64) {
    scenario.next_tx(th::server());
    let pool = scenario.take_shared<SponsorPool>();
    let lanes = pool.lanes();
    let count = lanes.length();
    ts::return_shared(pool);
    let (mut funds, mut reserved, mut i) = (0, 0, 0);
    while (i < count) {
        let (f, r, _) = lane_state(scenario, i);
        funds = funds + f;
        reserved = reserved + r;
        i = i + 1;
    };
    (funds, reserved)
}

fun pool_max_pledge(scenario: &mut Scenario): u64 {
    scenario.next_tx(th::server());
    let pool = scenario.take_shared<SponsorPool>();
    let max_pledge = pool.max_pledge();
    ts::return_shared(pool);
    max_pledge
}

/// SERVER withdraws `amount` from lane `index`.
fun sponsor_withdraw(scenario: &mut Scenario, amount: u64, index: u64) {
    let id = lane_id(scenario, index);
    scenario.next_tx(th::server());
    let pool = scenario.take_shared<SponsorPool>();
    let mut lane = scenario.take_shared_by_id<SponsorLane>(id);
    pool.withdraw(&mut lane, amount, scenario.ctx());
    ts::return_shared(pool);
    ts::return_shared(lane);
}

fun sponsor_set_max_pledge(scenario: &mut Scenario, who: address, max_pledge: u64) {
    scenario.next_tx(who);
    let mut pool = scenario.take_shared<SponsorPool>();
    pool.set_max_pledge(max_pledge, scenario.ctx());
    ts::return_shared(pool);
}

fun set_authority(scenario: &mut Scenario, to: address) {
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    h.set_authority(to, scenario.ctx());
    ts::return_shared(h);
}

/// Claim R1 (120 MIST), close from both sides, and let the server settle.
fun claim_close_settle(scenario: &mut Scenario, clock: &Clock, conn: ID) {
    assert!(th::claim(scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    th::close_as(scenario, clock, conn, th::client());
    th::close_as(scenario, clock, conn, th::server());
    th::settle_as(scenario, clock, conn, th::server());
}

// === Sponsor stories ===

#[test]
fun sponsor_pays_all() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 5_000, 10_000, 10_000, 2_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    let (funds, reserved) = pool_state(&mut scenario);
    assert!(funds == 2_000 && reserved == 1_000);
    claim_close_settle(&mut scenario, &clock, conn);
    assert!(reimburse(&mut scenario, conn, th::client(), 0) == 120);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 10_000);
    assert!(th::balance_of(&scenario, th::server()) == 3_120);
    let (funds, reserved) = pool_state(&mut scenario);
    assert!(funds == 1_880 && reserved == 0);
    th::finish(scenario, clock);
}

#[test]
fun sponsor_split_costs() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 1_000, 2_500, 10_000, 1_000);
    scenario.next_tx(th::client());
    {
        let pool = scenario.take_shared<SponsorPool>();
        let (client_part, provider_part) = pool.quote(120);
        assert!(client_part == 90 && provider_part == 30);
        ts::return_shared(pool);
    };
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    let (_, reserved) = pool_state(&mut scenario);
    assert!(reserved == 250);
    th::close_as(&mut scenario, &clock, conn, th::server());
    th::close_as(&mut scenario, &clock, conn, th::client());
    th::settle_with_receipt(&mut scenario, &clock, conn, 10240, 4, 120, 1, th::r1_sig());
    assert!(reimburse(&mut scenario, conn, th::server(), 0) == 30);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 9_910);
    assert!(th::balance_of(&scenario, th::server()) == 120);
    let (funds, reserved) = pool_state(&mut scenario);
    assert!(funds == 970 && reserved == 0);
    sponsor_withdraw(&mut scenario, 970, 0);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::server()) == 1_090);
    let (funds, reserved) = pool_state(&mut scenario);
    assert!(funds == 0 && reserved == 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ESponsorUnfunded)]
fun sponsor_unfunded_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 100, 5_000, 10_000, 100);
    open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ESponsorUnfunded)]
fun sponsor_pledge_cannot_be_withdrawn() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 1_000, 5_000, 10_000, 1_000);
    open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    sponsor_withdraw(&mut scenario, 501, 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ENotSettled)]
fun sponsor_reimburse_before_settle_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 1_000, 5_000, 10_000, 1_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    reimburse(&mut scenario, conn, th::client(), 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ENotSponsored)]
fun sponsor_double_reimburse_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 1_000, 5_000, 10_000, 1_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    claim_close_settle(&mut scenario, &clock, conn);
    assert!(reimburse(&mut scenario, conn, th::client(), 0) == 60);
    // the pledge is gone with its reimbursement: nothing is left to pay twice
    let (funds, reserved, pledges) = lane_state(&mut scenario, 0);
    assert!(funds == 940 && reserved == 0 && pledges == 0);
    reimburse(&mut scenario, conn, th::client(), 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ESponsorUnfunded)]
fun sponsor_pledge_is_bounded_per_connection() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 1_000, 10_000, 300, 1_000);
    open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    // A deposit larger than the whole pool is pledged the same 300.
    open_sponsored_unpinned(&mut scenario, &clock, cap_id, 5_000, 0);
    let (funds, reserved) = pool_state(&mut scenario);
    assert!(funds == 1_000 && reserved == 600);
    assert!(pool_max_pledge(&mut scenario) == 300);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 4_000);
    sponsor_withdraw(&mut scenario, 401, 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ENotProvider)]
fun sponsor_pledge_limit_is_the_providers() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 1_000, 5_000, 10_000, 1_000);
    sponsor_set_max_pledge(&mut scenario, th::server(), 200);
    open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    let (_, reserved) = pool_state(&mut scenario);
    assert!(reserved == 200);
    assert!(pool_max_pledge(&mut scenario) == 200);
    sponsor_set_max_pledge(&mut scenario, th::client(), 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::EProviderChanged)]
fun sponsor_stops_after_an_authority_change() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 1_000, 5_000, 10_000, 1_000);
    open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    set_authority(&mut scenario, th::other());
    // Still the provider's money: it takes back what is not pledged.
    sponsor_withdraw(&mut scenario, 500, 0);
    let (funds, reserved) = pool_state(&mut scenario);
    assert!(funds == 500 && reserved == 500);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::server()) == 500);
    assert!(th::balance_of(&scenario, th::client()) == 9_000);
    open_sponsored_unpinned(&mut scenario, &clock, cap_id, 1_000, 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ESponsorUnfunded)]
fun sponsor_lanes_pledge_from_their_own_funds() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_create(&mut scenario, 1_000, 5_000, 10_000, 2);
    sponsor_fund(&mut scenario, 0, 600);
    sponsor_fund(&mut scenario, 1, 400);
    open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    let (funds, reserved, pledges) = lane_state(&mut scenario, 0);
    assert!(funds == 600 && reserved == 500 && pledges == 1);
    let (funds, reserved, pledges) = lane_state(&mut scenario, 1);
    assert!(funds == 400 && reserved == 0 && pledges == 0);
    // the pool holds 500 unpledged, but no lane can pledge 500 of its own
    open_sponsored_unpinned(&mut scenario, &clock, cap_id, 1_000, 1);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = sponsor::ENotSponsored)]
fun sponsor_reimbursed_through_its_own_lane() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_create(&mut scenario, 2_000, 5_000, 10_000, 2);
    sponsor_fund(&mut scenario, 0, 1_000);
    sponsor_fund(&mut scenario, 1, 1_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 1);
    claim_close_settle(&mut scenario, &clock, conn);
    assert!(reimburse(&mut scenario, conn, th::server(), 1) == 60);
    let (funds, reserved, pledges) = lane_state(&mut scenario, 1);
    assert!(funds == 940 && reserved == 0 && pledges == 0);
    let (funds, reserved, pledges) = lane_state(&mut scenario, 0);
    assert!(funds == 1_000 && reserved == 0 && pledges == 0);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 9_940);
    assert!(th::balance_of(&scenario, th::server()) == 120);
    // the other lane never pledged to it
    reimburse(&mut scenario, conn, th::server(), 0);
    th::finish(scenario, clock);
}

// === Deleting a sponsored connection (docs/escrow.md §7, §14) ===

/// `who` deletes `conn` through lane `index` (`reimburse_and_destroy`); returns what it
/// reimbursed and checks both objects went.
fun reimburse_and_destroy_as(scenario: &mut Scenario, conn: ID, who: address, index: u64): u64 {
    let id = lane_id(scenario, index);
    scenario.next_tx(who);
    let pool = scenario.take_shared<SponsorPool>();
    let mut lane = scenario.take_shared_by_id<SponsorLane>(id);
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let escrow_id = tc.escrow_id();
    let e = scenario.take_shared_by_id<Escrow>(escrow_id);
    let amount = pool.reimburse_and_destroy(&mut lane, tc, e, scenario.ctx());
    ts::return_shared(pool);
    ts::return_shared(lane);
    let effects = scenario.next_tx(who);
    assert!(effects.deleted().contains(&conn) && effects.deleted().contains(&escrow_id));
    amount
}

#[test]
fun sponsor_deletion_reimburses_a_server_settlement() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 5_000, 10_000, 10_000, 2_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    th::settle_with_receipt(&mut scenario, &clock, conn, 10240, 4, 120, 1, th::r1_sig());
    assert!(reimburse_and_destroy_as(&mut scenario, conn, th::client(), 0) == 120);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 10_000);
    assert!(th::balance_of(&scenario, th::server()) == 3_120);
    let (funds, reserved, pledges) = lane_state(&mut scenario, 0);
    assert!(funds == 1_880 && reserved == 0 && pledges == 0);
    th::finish(scenario, clock);
}

#[test]
fun sponsor_deletion_after_the_clients_settlement() {
    let (mut scenario, mut clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 1_000, 2_500, 10_000, 1_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    th::close_as(&mut scenario, &clock, conn, th::client());
    clock.increment_for_testing(600_000);
    th::settle_as(&mut scenario, &clock, conn, th::client());
    let (funds, reserved, pledges) = lane_state(&mut scenario, 0);
    assert!(funds == 1_000 && reserved == 250 && pledges == 1);
    assert!(reimburse_and_destroy_as(&mut scenario, conn, th::client(), 0) == 30);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 9_910);
    assert!(th::balance_of(&scenario, th::server()) == 120);
    let (funds, reserved, pledges) = lane_state(&mut scenario, 0);
    assert!(funds == 970 && reserved == 0 && pledges == 0);
    th::finish(scenario, clock);
}

#[test]
fun sponsor_deletion_after_a_reimbursement() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 5_000, 10_000, 10_000, 2_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    th::settle_with_receipt(&mut scenario, &clock, conn, 10240, 4, 120, 1, th::r1_sig());
    assert!(reimburse(&mut scenario, conn, th::server(), 0) == 120);
    assert!(reimburse_and_destroy_as(&mut scenario, conn, th::client(), 0) == 0);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 10_000);
    assert!(th::balance_of(&scenario, th::server()) == 3_120);
    let (funds, reserved, pledges) = lane_state(&mut scenario, 0);
    assert!(funds == 1_880 && reserved == 0 && pledges == 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ESponsored)]
fun sponsored_connection_not_deleted_plainly() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 5_000, 10_000, 10_000, 2_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    th::settle_with_receipt(&mut scenario, &clock, conn, 10240, 4, 120, 1, th::r1_sig());
    scenario.next_tx(th::client());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let e = scenario.take_shared_by_id<Escrow>(tc.escrow_id());
    tc.destroy(e, scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ENotClient)]
fun sponsor_deletion_by_the_client_only() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 5_000, 10_000, 10_000, 2_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    th::settle_with_receipt(&mut scenario, &clock, conn, 10240, 4, 120, 1, th::r1_sig());
    reimburse_and_destroy_as(&mut scenario, conn, th::server(), 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ENotSettled)]
fun sponsor_deletion_before_settlement_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    sponsor_setup(&mut scenario, 5_000, 10_000, 10_000, 2_000);
    let conn = open_sponsored(&mut scenario, &clock, cap_id, 1_000, 0);
    reimburse_and_destroy_as(&mut scenario, conn, th::client(), 0);
    th::finish(scenario, clock);
}

// === Ticket helpers ===

fun sale_create(scenario: &mut Scenario, clock: &Clock, min_tickets: u64, max_tickets: u64) {
    scenario.next_tx(th::server());
    tickets::create(b"launch", 50, min_tickets, max_tickets, 10_000, clock, scenario.ctx());
    th::fund(scenario, th::listener_a(), 1_000);
    th::fund(scenario, th::listener_b(), 1_000);
}

fun buy(scenario: &mut Scenario, clock: &Clock, who: address, count: u64) {
    scenario.next_tx(who);
    let mut sale = scenario.take_shared<TicketSale>();
    let payment = th::take(scenario, who, count * 50);
    sale.buy(count, payment, clock, scenario.ctx());
    ts::return_shared(sale);
}

fun go_on_air(scenario: &mut Scenario, clock: &Clock): u64 {
    scenario.next_tx(th::server());
    let mut sale = scenario.take_shared<TicketSale>();
    let revenue = sale.go_on_air(clock, scenario.ctx());
    ts::return_shared(sale);
    revenue
}

fun refund_tickets(scenario: &mut Scenario, clock: &Clock, who: address): u64 {
    scenario.next_tx(who);
    let mut sale = scenario.take_shared<TicketSale>();
    let amount = sale.refund(clock, scenario.ctx());
    ts::return_shared(sale);
    amount
}

fun sale_state(scenario: &mut Scenario): (u64, u64, bool) {
    scenario.next_tx(th::server());
    let sale = scenario.take_shared<TicketSale>();
    let (sold, funds, on_air) = (sale.sold(), sale.funds_value(), sale.is_on_air());
    ts::return_shared(sale);
    (sold, funds, on_air)
}

// === Ticket stories ===

#[test, expected_failure(abort_code = tickets::EAlreadyOnAir)]
fun tickets_threshold_met() {
    let (mut scenario, mut clock) = th::start();
    sale_create(&mut scenario, &clock, 3, 5);
    buy(&mut scenario, &clock, th::listener_a(), 2);
    buy(&mut scenario, &clock, th::listener_b(), 1);
    let (sold, funds, on_air) = sale_state(&mut scenario);
    assert!(sold == 3 && funds == 150 && !on_air);
    clock.set_for_testing(9_000);
    assert!(go_on_air(&mut scenario, &clock) == 150);
    let (sold, funds, on_air) = sale_state(&mut scenario);
    assert!(sold == 3 && funds == 0 && on_air);
    assert!(th::balance_of(&scenario, th::server()) == 150);
    assert!(th::balance_of(&scenario, th::listener_a()) == 900);
    assert!(th::balance_of(&scenario, th::listener_b()) == 950);
    buy(&mut scenario, &clock, th::listener_b(), 1);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::ENoTickets)]
fun tickets_threshold_missed_refunds() {
    let (mut scenario, mut clock) = th::start();
    sale_create(&mut scenario, &clock, 3, 0);
    buy(&mut scenario, &clock, th::listener_a(), 2);
    clock.set_for_testing(10_001);
    assert!(refund_tickets(&mut scenario, &clock, th::listener_a()) == 100);
    let (sold, funds, on_air) = sale_state(&mut scenario);
    assert!(sold == 0 && funds == 0 && !on_air);
    assert!(th::balance_of(&scenario, th::listener_a()) == 1_000);
    refund_tickets(&mut scenario, &clock, th::listener_a());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::EThresholdNotMet)]
fun tickets_below_threshold_not_on_air() {
    let (mut scenario, clock) = th::start();
    sale_create(&mut scenario, &clock, 3, 0);
    buy(&mut scenario, &clock, th::listener_a(), 2);
    go_on_air(&mut scenario, &clock);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::ERefundNotOpen)]
fun tickets_refund_before_deadline_rejected() {
    let (mut scenario, clock) = th::start();
    sale_create(&mut scenario, &clock, 3, 0);
    buy(&mut scenario, &clock, th::listener_a(), 1);
    refund_tickets(&mut scenario, &clock, th::listener_a());
    th::finish(scenario, clock);
}

#[test]
fun tickets_cancel_refunds() {
    let (mut scenario, clock) = th::start();
    sale_create(&mut scenario, &clock, 1, 0);
    buy(&mut scenario, &clock, th::listener_a(), 3);
    buy(&mut scenario, &clock, th::listener_b(), 1);
    scenario.next_tx(th::server());
    {
        let mut sale = scenario.take_shared<TicketSale>();
        sale.cancel(scenario.ctx());
        ts::return_shared(sale);
    };
    assert!(refund_tickets(&mut scenario, &clock, th::listener_a()) == 150);
    assert!(refund_tickets(&mut scenario, &clock, th::listener_b()) == 50);
    let (sold, funds, _) = sale_state(&mut scenario);
    assert!(sold == 0 && funds == 0);
    assert!(th::balance_of(&scenario, th::listener_a()) == 1_000);
    assert!(th::balance_of(&scenario, th::listener_b()) == 1_000);
    assert!(th::balance_of(&scenario, th::server()) == 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = tickets::ESoldOut)]
fun tickets_sold_out_rejected() {
    let (mut scenario, clock) = th::start();
    sale_create(&mut scenario, &clock, 1, 2);
    buy(&mut scenario, &clock, th::listener_a(), 3);
    th::finish(scenario, clock);
}

// === Retention helpers ===

/// Terms (60000 ms, 2 MIST/byte), a connection from CLIENT with a 1000 deposit, a
/// two-lane pipe of CLIENT's, and "hello world" sent on lane 1 with its 22 MIST deposit.
fun retention_setup(scenario: &mut Scenario, clock: &Clock) {
    let conn = retention_open(scenario, clock);
    scenario.next_tx(th::client());
    let terms = scenario.take_shared<RetentionTerms>();
    let id = object::id(&terms);
    ts::return_shared(terms);
    send_hello(scenario, clock, conn, id, 22);
}

/// The host and cap of `th::setup`, with the retention terms (60000 ms, 2 MIST per byte).
fun retention_terms(scenario: &mut Scenario): ID {
    let cap_id = th::setup(scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    retention::create_terms(&h, th::port(), 60_000, 2, scenario.ctx());
    ts::return_shared(h);
    cap_id
}

/// `retention_terms`, then CLIENT's connection (1000 deposited) and its two-lane pipe.
/// Returns the connection ID.
fun retention_open(scenario: &mut Scenario, clock: &Clock): ID {
    let cap_id = retention_terms(scenario);
    let conn = th::open_as(scenario, clock, th::client(), th::client_pk(), cap_id, 1_000);
    scenario.next_tx(th::client());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    pipe::create(&tc, 2, scenario.ctx());
    ts::return_shared(tc);
    conn
}

/// CLIENT sends "hello world" on lane 1 of its pipe under the terms `terms_id`, with a
/// storage deposit of `deposit`.
fun send_hello(scenario: &mut Scenario, clock: &Clock, conn: ID, terms_id: ID, deposit: u64) {
    scenario.next_tx(th::client());
    let mut p = scenario.take_from_sender<Pipe>();
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let terms = scenario.take_shared_by_id<RetentionTerms>(terms_id);
    let coin = th::take(scenario, th::client(), deposit);
    retention::send(&mut p, &tc, &terms, 1, b"hello world", coin, clock, scenario.ctx());
    ts::return_to_sender(scenario, p);
    ts::return_shared(tc);
    ts::return_shared(terms);
}

/// The ID of the (only) retention terms, read in a new transaction.
fun current_terms(scenario: &mut Scenario): ID {
    scenario.next_tx(th::server());
    let terms = scenario.take_shared<RetentionTerms>();
    let id = object::id(&terms);
    ts::return_shared(terms);
    id
}

/// `who` retires the retention terms `terms_id` of the host.
fun retire_terms(scenario: &mut Scenario, terms_id: ID, who: address) {
    scenario.next_tx(who);
    let mut terms = scenario.take_shared_by_id<RetentionTerms>(terms_id);
    let h = scenario.take_shared<Host>();
    terms.retire_terms(&h, scenario.ctx());
    ts::return_shared(terms);
    ts::return_shared(h);
}

fun confirm(scenario: &mut Scenario, who: address) {
    scenario.next_tx(who);
    let mut record = scenario.take_shared<RetainedRecord>();
    record.confirm(scenario.ctx());
    ts::return_shared(record);
}

fun delete_record(scenario: &mut Scenario, clock: &Clock): u64 {
    scenario.next_tx(th::client());
    let record = scenario.take_shared<RetainedRecord>();
    record.delete(clock, scenario.ctx())
}

// === Retention stories ===

#[test]
fun retention_delete_refunds_storage() {
    let (mut scenario, mut clock) = th::start();
    retention_setup(&mut scenario, &clock);
    scenario.next_tx(th::client());
    assert!(th::balance_of(&scenario, th::client()) == 8_978);
    {
        let record = scenario.take_shared<RetainedRecord>();
        assert!(record.deposit_value() == 22 && !record.is_consumed());
        assert!(record.data() == b"hello world");
        ts::return_shared(record);
    };
    confirm(&mut scenario, th::server());
    clock.set_for_testing(60_000);
    assert!(delete_record(&mut scenario, &clock) == 22);
    scenario.next_tx(th::client());
    assert!(th::balance_of(&scenario, th::client()) == 9_000);
    assert!(!ts::has_most_recent_shared<RetainedRecord>());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::ERetentionNotElapsed)]
fun retention_delete_before_time_rejected() {
    let (mut scenario, mut clock) = th::start();
    retention_setup(&mut scenario, &clock);
    confirm(&mut scenario, th::server());
    clock.set_for_testing(59_999);
    delete_record(&mut scenario, &clock);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::ENotConsumed)]
fun retention_delete_unconsumed_rejected() {
    let (mut scenario, mut clock) = th::start();
    retention_setup(&mut scenario, &clock);
    clock.set_for_testing(119_999);
    delete_record(&mut scenario, &clock);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::ENotReceiver)]
fun retention_confirm_by_sender_rejected() {
    let (mut scenario, clock) = th::start();
    retention_setup(&mut scenario, &clock);
    confirm(&mut scenario, th::client());
    th::finish(scenario, clock);
}

#[test]
fun retention_reclaim_unconfirmed_after_deadline() {
    let (mut scenario, mut clock) = th::start();
    retention_setup(&mut scenario, &clock);
    clock.set_for_testing(120_000);
    scenario.next_tx(th::client());
    assert!(th::balance_of(&scenario, th::client()) == 8_978);
    {
        let record = scenario.take_shared<RetainedRecord>();
        assert!(record.deposit_value() == 22 && !record.is_consumed());
        assert!(record.reclaim_after_ms() == 120_000);
        ts::return_shared(record);
    };
    assert!(delete_record(&mut scenario, &clock) == 22);
    scenario.next_tx(th::client());
    assert!(th::balance_of(&scenario, th::client()) == 9_000);
    assert!(!ts::has_most_recent_shared<RetainedRecord>());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::EConnectionNotOpen)]
fun retention_send_on_closed_connection_rejected() {
    let (mut scenario, clock) = th::start();
    let conn = retention_open(&mut scenario, &clock);
    th::close_as(&mut scenario, &clock, conn, th::client());
    let terms = current_terms(&mut scenario);
    send_hello(&mut scenario, &clock, conn, terms, 22);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::ETermsRetired)]
fun retention_retired_terms_rejected() {
    let (mut scenario, clock) = th::start();
    let conn = retention_open(&mut scenario, &clock);
    let terms = current_terms(&mut scenario);
    retire_terms(&mut scenario, terms, th::server());
    send_hello(&mut scenario, &clock, conn, terms, 22);
    th::finish(scenario, clock);
}

#[test]
fun retention_replaced_terms_apply() {
    let (mut scenario, clock) = th::start();
    let conn = retention_open(&mut scenario, &clock);
    let old = current_terms(&mut scenario);
    scenario.next_tx(th::server());
    let replacement = {
        let mut terms = scenario.take_shared_by_id<RetentionTerms>(old);
        let h = scenario.take_shared<Host>();
        let id = terms.replace_terms(&h, 30_000, 3, scenario.ctx());
        ts::return_shared(terms);
        ts::return_shared(h);
        id
    };
    send_hello(&mut scenario, &clock, conn, replacement, 33);
    scenario.next_tx(th::client());
    assert!(th::balance_of(&scenario, th::client()) == 8_967);
    {
        let record = scenario.take_shared<RetainedRecord>();
        assert!(record.deposit_value() == 33 && !record.is_consumed());
        assert!(record.reclaim_after_ms() == 60_000);
        ts::return_shared(record);
    };
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::ENotProvider)]
fun retention_retire_by_non_provider_rejected() {
    let (mut scenario, clock) = th::start();
    retention_terms(&mut scenario);
    let terms = current_terms(&mut scenario);
    retire_terms(&mut scenario, terms, th::client());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = retention::EInvalidTerms)]
fun retention_terms_too_long_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let h = scenario.take_shared<Host>();
    retention::create_terms(&h, th::port(), 2_592_000_001, 2, scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

// === Payment stories ===

/// CLIENT (funded with 1000) pays `amount` to OTHER with `memo`.
fun pay(scenario: &mut Scenario, amount: u64, memo: vector<u8>) {
    th::fund(scenario, th::client(), 1_000);
    scenario.next_tx(th::client());
    let coin = th::take(scenario, th::client(), amount);
    payment::pay(coin, th::other(), memo, scenario.ctx());
}

#[test]
fun payment_reaches_recipient() {
    let (mut scenario, clock) = th::start();
    pay(&mut scenario, 300, b"tip #1");
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 700);
    assert!(th::balance_of(&scenario, th::other()) == 300);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = payment::EZeroPayment)]
fun payment_zero_rejected() {
    let (mut scenario, clock) = th::start();
    pay(&mut scenario, 0, b"");
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = payment::EMemoTooLong)]
fun payment_memo_too_long_rejected() {
    let (mut scenario, clock) = th::start();
    let mut memo = vector[];
    let mut i = 0;
    while (i <= payment::max_memo_length()) {
        memo.push_back(0x6d);
        i = i + 1;
    };
    pay(&mut scenario, 1, memo);
    th::finish(scenario, clock);
}
