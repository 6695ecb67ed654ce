/// One test per rule of docs/escrow.md not already covered by scenario_tests.
#[test_only]
module dtp::rule_tests;

use dtp::broadcast::{Self, Broadcast};
use dtp::escrow::{Self, Escrow};
use dtp::host::{Self, Host};
use dtp::inner_pipe;
use dtp::pipe::{Self, Pipe};
use dtp::response_escrow;
use dtp::spending_cap::{Self, SpendingCap};
use dtp::test_helpers as th;
use dtp::transport_control::{Self, TransportControl};
use sui::ed25519;
use sui::test_scenario as ts;

// === Receipt bytes and keys ===

/// docs/escrow.md §6's receipt vector: package 0x0001…1f, escrow 0x…decaf, connection
/// 0x…c0ffee, 10240 bytes, 4 requests, 120 MIST, nonce 1, signed by the client's key.
const DOCS_PACKAGE: address = @0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f;
const DOCS_R1_MSG: vector<u8> = x"0e4454502d524543454950542d5632000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00000000000000000000000000000000000000000000000000000000000decaf0000000000000000000000000000000000000000000000000000000000c0ffee0028000000000000040000000000000078000000000000000100000000000000";
const DOCS_R1_SIG: vector<u8> = x"abadb20ddecb20546b78e1de435492796e0dbaa38cd25e3249f49465e89d217ef1f3f9fa364b9f0ba773e38e345eed5f99b1c0f80d7052a7210e8d4347677803";

#[test]
fun receipt_message_layout() {
    let msg = escrow::receipt_message(
        DOCS_PACKAGE,
        th::escrow(),
        th::connection(),
        10240,
        4,
        120,
        1,
    );
    assert!(msg == DOCS_R1_MSG);
    assert!(msg.length() == 143);
    let fixture = escrow::receipt_message(
        escrow::receipt_package(),
        th::escrow(),
        th::connection(),
        10240,
        4,
        120,
        1,
    );
    assert!(fixture == th::r1_msg());
}

/// Receipts name the package's original ID, read from its own types: in unit tests, the
/// package's address.
#[test]
fun receipt_package_is_this_packages_id() {
    assert!(escrow::receipt_package() == @dtp);
}

/// docs/escrow.md §12's acknowledgement vector: package 0x0001…1f, escrow 0x…decaf, the
/// BLAKE2b-256 of the response body `[1, 7, "answer", nil]`, signed by the client's key.
const DOCS_ACK_HASH: vector<u8> = x"3b118496576aacb282a771e135570d77c7b8baed4452960634513fc1ec84b930";
const DOCS_ACK_MSG: vector<u8> = x"0f4454502d524553504f4e53452d5632000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00000000000000000000000000000000000000000000000000000000000decaf3b118496576aacb282a771e135570d77c7b8baed4452960634513fc1ec84b930";
const DOCS_ACK_SIG: vector<u8> = x"181078e235961eb99a989a511304c89475437e1f4b3d737852faafa90c2323e7990ed6d0f1f453b63e1ec378cd986082f9fae191497a570041617764c039e709";

/// An acknowledgement signs the package as well as the escrow (version 2): the message
/// `claim` checks is the docs' layout, and the docs' signature verifies over it.
#[test]
fun ack_message_layout() {
    let msg = response_escrow::ack_message(DOCS_PACKAGE, th::escrow(), DOCS_ACK_HASH);
    assert!(msg == DOCS_ACK_MSG);
    assert!(msg.length() == 112);
    let signature = DOCS_ACK_SIG;
    let key = th::client_pk();
    assert!(ed25519::ed25519_verify(&signature, &key, &msg));
    // the same acknowledgement for this package (the unit tests' address) is other bytes
    let package = escrow::receipt_package();
    let here = response_escrow::ack_message(package, th::escrow(), DOCS_ACK_HASH);
    assert!(here != msg);
    assert!(!ed25519::ed25519_verify(&signature, &key, &here));
}

/// Receipt nonces start at 1: an escrow's latest nonce is 0 before any claim, so a
/// receipt with nonce 0 fails the replay check, first claim or not.
#[test, expected_failure(abort_code = escrow::EReplayedReceipt)]
fun nonce_zero_is_never_claimable() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::claim(&mut scenario, 10240, 4, 120, 0, th::r1_sig());
    th::finish(scenario, clock);
}

/// `claim` checks the signature over the escrow's own ID: the fixtures' receipts, signed
/// for escrow 0x…decaf and right in every other respect (see `th::claim`), are refused.
#[test, expected_failure(abort_code = escrow::EBadSignature)]
fun receipt_for_another_escrow_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_tx(th::server());
    let mut e = scenario.take_shared<Escrow>();
    e.claim(10240, 4, 120, 1, th::r1_sig(), scenario.ctx());
    ts::return_shared(e);
    th::finish(scenario, clock);
}

/// So does the settlement's claim.
#[test, expected_failure(abort_code = escrow::EBadSignature)]
fun settlement_receipt_for_another_escrow_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_tx(th::server());
    let mut tc = scenario.take_shared_by_id<TransportControl>(conn);
    let mut e = scenario.take_shared_by_id<Escrow>(tc.escrow_id());
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    tc.settle_with_receipt(
        &mut e,
        &mut cap,
        10240,
        4,
        120,
        1,
        th::r1_sig(),
        &clock,
        scenario.ctx(),
    );
    ts::return_shared(tc);
    ts::return_shared(e);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

/// A receipt signed for the same escrow and connection of another package (another
/// deployment, on this chain or another) is refused.
#[test, expected_failure(abort_code = escrow::EBadSignature)]
fun receipt_for_another_package_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::claim(&mut scenario, 10240, 4, 120, 1, DOCS_R1_SIG);
    th::finish(scenario, clock);
}

#[test]
fun ed25519_address_matches_sui_rule() {
    assert!(escrow::ed25519_address(&th::client_pk()) == th::client());
    assert!(escrow::ed25519_address(&th::mallory_pk()) == th::mallory());
}

#[test]
fun test_data_has_the_length_asked() {
    let mut lengths = vector[0, 1, 32, 33, 34, 66, 67, 255, 16_381, 16_382, 16_385];
    while (!lengths.is_empty()) {
        let length = lengths.pop_back();
        assert!(th::bytes(length).length() == length);
    };
}

#[test]
fun fee_rounds_bytes_up() {
    let sla = host::new_sla(10, 5, 0);
    assert!(host::fee(&sla, 0, 0) == 0);
    assert!(host::fee(&sla, 1, 0) == 1);
    assert!(host::fee(&sla, 1024, 0) == 10);
    assert!(host::fee(&sla, 1025, 1) == 11 + 5);
    assert!(host::fee(&sla, 10240, 4) == 120);
}

// === Host ===

#[test]
fun half_close_timeout_is_a_term_of_the_sla() {
    let sla = host::new_sla(10, 5, 1000);
    assert!(sla.half_close_timeout_ms() == host::default_half_close_timeout_ms());
    assert!(host::default_half_close_timeout_ms() == 600_000);
    assert!(host::min_half_close_timeout_ms() == 600_000);
    assert!(host::max_half_close_timeout_ms() == 7 * 24 * 3_600_000);
    let low = host::new_sla_with_half_close_timeout(10, 5, 1000, 600_000);
    let high = host::new_sla_with_half_close_timeout(10, 5, 1000, 604_800_000);
    assert!(low == sla && high.half_close_timeout_ms() == 604_800_000);
    assert!(high.price_per_kib() == 10 && high.price_per_request() == 5);
    assert!(high.min_deposit() == 1000 && host::fee(&high, 10240, 4) == 120);
}

#[test, expected_failure(abort_code = host::EInvalidHalfCloseTimeout)]
fun half_close_timeout_of_zero_rejected() {
    host::new_sla_with_half_close_timeout(10, 5, 1000, 0);
}

#[test]
fun services_are_a_table_of_ports() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    assert!(h.service_count() == 1 && h.has_service(th::port()));
    // forty more: each its own entry, read alone
    let mut port = 100;
    while (port < 140) {
        let sla = host::new_sla_with_half_close_timeout((port as u64), 0, 0, 3_600_000);
        h.add_service(port, b"raw", sla, 0, scenario.ctx());
        port = port + 1;
    };
    assert!(h.service_count() == 41);
    let service = h.service(120);
    let sla = service.service_sla();
    assert!(sla.price_per_kib() == 120 && sla.half_close_timeout_ms() == 3_600_000);
    h.update_service(120, host::new_sla(1, 2, 3), 9, scenario.ctx());
    let updated = h.service(120);
    assert!(updated.service_sla() == host::new_sla(1, 2, 3));
    assert!(updated.service_max_connections() == 9);
    h.remove_service(120, scenario.ctx());
    assert!(h.service_count() == 40 && !h.has_service(120) && h.has_service(121));
    ts::return_shared(h);
    // the next transaction reads the same Table
    scenario.next_tx(th::other());
    let h = scenario.take_shared<Host>();
    let last = h.service(139);
    let sla = last.service_sla();
    assert!(h.service_count() == 40 && sla.price_per_kib() == 139);
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EServiceNotFound)]
fun removed_service_cannot_be_read() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    h.remove_service(th::port(), scenario.ctx());
    h.service(th::port());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::ENotAuthority)]
fun only_authority_adds_services() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::mallory());
    let mut h = scenario.take_shared<Host>();
    h.add_service(8, b"raw", host::new_sla(0, 0, 0), 0, scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EServiceExists)]
fun service_port_unique() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    h.add_service(th::port(), b"raw", host::new_sla(0, 0, 0), 0, scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EInvalidNoiseKey)]
fun noise_key_must_be_32_bytes() {
    let (mut scenario, clock) = th::start();
    host::create(x"0102", vector[], scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EInvalidNoiseKey)]
fun noise_key_must_not_be_a_low_order_point() {
    let (mut scenario, clock) = th::start();
    // all zeros: every Diffie-Hellman with it gives zeros, so no handshake can succeed
    host::create(
        x"0000000000000000000000000000000000000000000000000000000000000000",
        vector[],
        scenario.ctx(),
    );
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::ETooManyEndpoints)]
fun endpoints_are_bounded() {
    let (mut scenario, clock) = th::start();
    let mut endpoints = vector[];
    let mut i = 0;
    while (i < 17) {
        endpoints.push_back(b"tcp://127.0.0.1:7000");
        i = i + 1;
    };
    host::create(th::noise_key(), endpoints, scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EInvalidFirewallMode)]
fun firewall_mode_is_validated() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    h.set_firewall_mode(2, scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test]
fun deny_list_wins_over_allow_list() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    // allow-all: only the deny list refuses
    assert!(h.permits(th::client()));
    h.deny(th::client(), scenario.ctx());
    assert!(!h.permits(th::client()) && h.permits(th::mallory()));
    h.undeny(th::client(), scenario.ctx());
    assert!(h.permits(th::client()));
    // allow-listed: the allow list admits, the deny list still wins
    h.set_firewall_mode(host::mode_allow_listed(), scenario.ctx());
    assert!(!h.permits(th::client()));
    h.allow(th::client(), scenario.ctx());
    assert!(h.permits(th::client()) && !h.permits(th::mallory()));
    h.deny(th::client(), scenario.ctx());
    assert!(!h.permits(th::client()));
    assert!(h.firewall().is_allowed(th::client()) && h.firewall().is_denied(th::client()));
    h.undeny(th::client(), scenario.ctx());
    assert!(h.permits(th::client()));
    h.disallow(th::client(), scenario.ctx());
    assert!(!h.permits(th::client()));
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test]
fun firewall_lists_are_idempotent_and_counted() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    assert!(h.firewall().allow_count() == 0 && h.firewall().deny_count() == 0);
    h.allow(th::client(), scenario.ctx());
    assert!(h.firewall().allow_count() == 1 && h.firewall().is_allowed(th::client()));
    h.allow(th::client(), scenario.ctx());
    assert!(h.firewall().allow_count() == 1);
    h.allow(th::mallory(), scenario.ctx());
    assert!(h.firewall().allow_count() == 2);
    h.disallow(th::client(), scenario.ctx());
    assert!(h.firewall().allow_count() == 1 && !h.firewall().is_allowed(th::client()));
    h.disallow(th::client(), scenario.ctx());
    assert!(h.firewall().allow_count() == 1 && h.firewall().is_allowed(th::mallory()));
    h.deny(th::client(), scenario.ctx());
    h.deny(th::client(), scenario.ctx());
    assert!(h.firewall().deny_count() == 1 && h.firewall().is_denied(th::client()));
    h.undeny(th::client(), scenario.ctx());
    assert!(h.firewall().deny_count() == 0 && !h.firewall().is_denied(th::client()));
    h.undeny(th::client(), scenario.ctx());
    assert!(h.firewall().deny_count() == 0);
    ts::return_shared(h);
    // the next transaction reads the same lists and counts
    scenario.next_tx(th::other());
    let h = scenario.take_shared<Host>();
    assert!(h.firewall().allow_count() == 1 && h.firewall().deny_count() == 0);
    assert!(h.firewall().is_allowed(th::mallory()) && !h.firewall().is_allowed(th::client()));
    ts::return_shared(h);
    th::finish(scenario, clock);
}

/// SERVER puts `count` addresses (`first`, `first + 1`, ...) on the deny list (`deny`) or
/// the allow list, 256 per transaction, through the lists' own insert without an event
/// each (`host::fill_firewall_list_for_testing`): a list reaches its bound for that many
/// Table inserts and nothing more, well within a test's gas limit; the bound itself is
/// then met by the entry functions (`deny`, `allow`).
fun fill_firewall_list(scenario: &mut ts::Scenario, deny: bool, first: u64, count: u64) {
    let mut done = 0;
    while (done < count) {
        let n = if (count - done < 256) count - done else 256;
        scenario.next_tx(th::server());
        let mut h = scenario.take_shared<Host>();
        h.fill_firewall_list_for_testing(deny, first + done, n);
        ts::return_shared(h);
        done = done + n;
    };
}

#[test, expected_failure(abort_code = host::EFirewallListFull)]
fun firewall_deny_list_is_bounded() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let max = host::max_firewall_entries();
    fill_firewall_list(&mut scenario, true, 1, max);
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    assert!(h.firewall().deny_count() == max && h.firewall().is_denied(@0x400));
    // one already there is still a no-op, and taking one off makes room for another
    h.deny(@0x1, scenario.ctx());
    assert!(h.firewall().deny_count() == max);
    h.undeny(@0x1, scenario.ctx());
    assert!(h.firewall().deny_count() == max - 1 && h.permits(@0x1));
    h.deny(th::client(), scenario.ctx());
    assert!(h.firewall().deny_count() == max && !h.permits(th::client()));
    // a new one is refused
    h.deny(th::mallory(), scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EFirewallListFull)]
fun firewall_allow_list_is_bounded() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let max = host::max_firewall_entries();
    fill_firewall_list(&mut scenario, false, 1, max);
    scenario.next_tx(th::server());
    let mut h = scenario.take_shared<Host>();
    assert!(h.firewall().allow_count() == max);
    h.set_firewall_mode(host::mode_allow_listed(), scenario.ctx());
    assert!(h.permits(@0x400) && !h.permits(th::client()));
    h.allow(@0x400, scenario.ctx());
    assert!(h.firewall().allow_count() == max);
    // the deny list has its own room
    h.deny(th::mallory(), scenario.ctx());
    assert!(h.firewall().deny_count() == 1);
    h.allow(th::client(), scenario.ctx());
    ts::return_shared(h);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = host::EServiceNotFound)]
fun open_unknown_port_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::client());
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let payment = th::take(&mut scenario, th::client(), 1000);
    transport_control::open(&h, 99, &mut cap, th::client_pk(), payment, &clock, scenario.ctx());
    ts::return_shared(h);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test]
fun service_removed_under_open_connections() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_tx(th::server());
    {
        let mut h = scenario.take_shared<Host>();
        h.remove_service(th::port(), scenario.ctx());
        assert!(!h.has_service(th::port()));
        ts::return_shared(h);
    };
    // The connection carries its own SLA: it is claimed and settled as before.
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::client()) == 9880);
    th::finish(scenario, clock);
}

#[test]
fun price_change_does_not_affect_open_connection() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_tx(th::server());
    {
        let mut h = scenario.take_shared<Host>();
        h.update_service(th::port(), host::new_sla(1000, 1000, 5000), 0, scenario.ctx());
        ts::return_shared(h);
    };
    // Still priced at 10/KiB and 5/request: R1 (120) is accepted.
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    scenario.next_tx(th::server());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let sla = tc.sla();
    assert!(sla.price_per_kib() == 10);
    ts::return_shared(tc);
    th::finish(scenario, clock);
}

// === Spending cap ===

#[test, expected_failure(abort_code = spending_cap::ENotCapOwner)]
fun only_owner_changes_cap() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 500, 10_000);
    scenario.next_tx(th::server());
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    cap.set_max_per_epoch(1_000_000, scenario.ctx());
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test]
fun owner_raises_cap() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 500, 10_000);
    scenario.next_tx(th::client());
    {
        let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
        cap.set_max_per_epoch(1500, scenario.ctx());
        ts::return_shared(cap);
    };
    // 1000 did not fit under 500; it does under 1500.
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_tx(th::client());
    {
        let cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
        assert!(cap.remaining(scenario.ctx()) == 500);
        ts::return_shared(cap);
    };
    th::finish(scenario, clock);
}

#[test]
fun open_reserves_the_whole_deposit() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 1000);
    scenario.next_tx(th::client());
    let e = scenario.take_shared<Escrow>();
    assert!(e.reserved() == 1000 && e.claim_epoch() == 0 && e.claimed_in_epoch() == 0);
    ts::return_shared(e);
    th::finish(scenario, clock);
}

#[test]
fun claims_never_charge_the_cap() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    // The client lowers its cap to nothing: the deposit stays reserved and claimable.
    scenario.next_tx(th::client());
    {
        let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
        cap.set_max_per_epoch(0, scenario.ctx());
        ts::return_shared(cap);
    };
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    assert!(th::claim(&mut scenario, 51200, 10, 550, 2, th::r2_sig()) == 430);
    // Not touched: the claims wait in the escrow for its next report.
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 1000);
    let (reserved, claim_epoch, claimed_in_epoch) = th::escrow_counts(&mut scenario);
    assert!(reserved == 1000 && claim_epoch == 0 && claimed_in_epoch == 550);
    th::finish(scenario, clock);
}

#[test]
fun a_settlement_counts_claims_in_the_epoch_they_were_made() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    scenario.next_epoch(th::server());
    th::settle_as(&mut scenario, &clock, conn, th::server());
    // Epoch 0's claim leaves the cap with the refund: epoch 1 has nothing counted.
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 0);
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    assert!(th::cap_spent(&mut scenario, cap_id) == 1000);
    th::finish(scenario, clock);
}

#[test]
fun a_claim_notes_its_epoch_in_the_escrow() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    scenario.next_epoch(th::server());
    assert!(th::claim(&mut scenario, 51200, 10, 550, 2, th::r2_sig()) == 430);
    let (reserved, claim_epoch, claimed_in_epoch) = th::escrow_counts(&mut scenario);
    assert!(reserved == 1000 && claim_epoch == 1 && claimed_in_epoch == 430);
    // A top-up reports both: epoch 0's 120 leave the count, epoch 1's 430 join it.
    th::top_up(&mut scenario, 100);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 430 && outstanding == 550);
    th::finish(scenario, clock);
}

#[test]
fun a_reservation_of_zero_always_fits() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::set_cap(&mut scenario, cap_id, 0);
    th::top_up(&mut scenario, 0);
    scenario.next_epoch(th::server());
    th::top_up(&mut scenario, 0);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 1000);
    assert!(th::cap_remaining(&mut scenario, cap_id) == 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = spending_cap::ESpendingCapExceeded)]
fun a_lowering_binds_the_next_positive_reservation() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 2000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::set_cap(&mut scenario, cap_id, 1000);
    th::top_up(&mut scenario, 1);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = spending_cap::ENotCapOwner)]
fun open_with_someone_elses_cap_rejected() {
    let (mut scenario, clock) = th::start();
    th::setup(&mut scenario, 0, 1_000_000, 10_000);
    scenario.next_tx(th::other());
    let other_cap = spending_cap::create(1_000_000, scenario.ctx());
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), other_cap, 1000);
    th::finish(scenario, clock);
}

// === Escrow ===

#[test, expected_failure(abort_code = escrow::EKeyMismatch)]
fun open_with_foreign_key_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_as(&mut scenario, &clock, th::client(), th::mallory_pk(), cap_id, 1000);
    th::finish(scenario, clock);
}

#[test]
fun open_with_session_key_takes_another_key() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_session_as(&mut scenario, &clock, th::client(), th::mallory_pk(), cap_id, 1000);
    scenario.next_tx(th::client());
    let e = scenario.take_shared<Escrow>();
    // the client is the sender; only the receipt key is the session key
    assert!(e.client() == th::client());
    assert!(e.client_public_key() == th::mallory_pk());
    ts::return_shared(e);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EInvalidPublicKey)]
fun open_with_session_key_short_key_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_session_as(&mut scenario, &clock, th::client(), x"d04a", cap_id, 1000);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EInvalidPublicKey)]
fun open_with_short_key_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_as(&mut scenario, &clock, th::client(), x"d04a", cap_id, 1000);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EAmountMismatch)]
fun receipt_amount_must_match_fees() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::claim(&mut scenario, 10240, 4, 999, 1, th::rmismatch_sig());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EReceiptNotCumulative)]
fun receipt_amount_cannot_decrease() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    assert!(th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig()) == 120);
    th::claim(&mut scenario, 0, 0, 0, 5, th::rzero_sig());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::ENotServer)]
fun only_server_claims() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_tx(th::client());
    let mut e = scenario.take_shared<Escrow>();
    e.claim(10240, 4, 120, 1, th::r1_sig(), scenario.ctx());
    ts::return_shared(e);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EWrongSpendingCap)]
fun settlement_releases_on_the_bound_cap_only() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_tx(th::server());
    let server_cap = spending_cap::create(1_000_000, scenario.ctx());
    scenario.next_tx(th::server());
    let mut tc = scenario.take_shared_by_id<TransportControl>(conn);
    let mut e = scenario.take_shared<Escrow>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(server_cap);
    tc.settle(&mut e, &mut cap, &clock, scenario.ctx());
    ts::return_shared(tc);
    ts::return_shared(e);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EWrongSpendingCap)]
fun top_up_reserves_on_the_bound_cap_only() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_tx(th::client());
    let other_cap = spending_cap::create(1_000_000, scenario.ctx());
    scenario.next_tx(th::client());
    let mut e = scenario.take_shared<Escrow>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(other_cap);
    let more = th::take(&mut scenario, th::client(), 100);
    e.top_up(&mut cap, more, scenario.ctx());
    ts::return_shared(e);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test]
fun top_up_raises_the_deposit() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::top_up(&mut scenario, 1000);
    scenario.next_tx(th::client());
    {
        let e = scenario.take_shared<Escrow>();
        assert!(e.deposited() == 2000 && e.reserved() == 2000);
        ts::return_shared(e);
    };
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 2000);
    assert!(th::claim(&mut scenario, 204800, 0, 2000, 3, th::rbig_sig()) == 2000);
    scenario.next_tx(th::server());
    assert!(th::balance_of(&scenario, th::server()) == 2000);
    assert!(th::balance_of(&scenario, th::client()) == 8000);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::ENotClient)]
fun only_client_tops_up() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_tx(th::server());
    th::fund(&mut scenario, th::server(), 500);
    scenario.next_tx(th::server());
    let mut e = scenario.take_shared<Escrow>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let more = th::take(&mut scenario, th::server(), 500);
    e.top_up(&mut cap, more, scenario.ctx());
    ts::return_shared(e);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

#[test]
fun top_up_in_a_new_epoch_adds_to_what_is_outstanding() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1400, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    scenario.next_epoch(th::client());
    th::top_up(&mut scenario, 400);
    let (reserved, _, _) = th::escrow_counts(&mut scenario);
    assert!(reserved == 1400);
    let (claimed, outstanding) = th::cap_counts(&mut scenario, cap_id);
    assert!(claimed == 0 && outstanding == 1400);
    // 1400 refunded, all of it released: nothing is left on the cap.
    th::settle_as(&mut scenario, &clock, conn, th::server());
    assert!(th::cap_spent(&mut scenario, cap_id) == 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = escrow::EEscrowSettled)]
fun no_claim_after_settlement() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_pinned(&mut scenario, &clock, cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::server());
    th::settle_as(&mut scenario, &clock, conn, th::server());
    th::claim(&mut scenario, 10240, 4, 120, 1, th::r1_sig());
    th::finish(scenario, clock);
}

// === Transport control ===

#[test, expected_failure(abort_code = transport_control::EInsufficientDeposit)]
fun deposit_below_minimum_rejected() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 999);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ENotParticipant)]
fun outsider_cannot_close() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::mallory());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::EAlreadyHalfClosed)]
fun same_side_cannot_close_twice() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    th::close_as(&mut scenario, &clock, conn, th::client());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::EConnectionClosed)]
fun closed_connection_cannot_close_again() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    th::close_as(&mut scenario, &clock, conn, th::server());
    th::close_as(&mut scenario, &clock, conn, th::client());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ENotHalfClosed)]
fun finalize_needs_half_close() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::finalize_as(&mut scenario, &clock, conn, th::client());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::EConnectionOpen)]
fun client_cannot_settle_an_open_connection() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::settle_as(&mut scenario, &clock, conn, th::client());
    th::finish(scenario, clock);
}

#[test]
fun server_closes_and_settles_an_open_connection() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::settle_as(&mut scenario, &clock, conn, th::server());
    scenario.next_tx(th::client());
    {
        let tc = scenario.take_shared_by_id<TransportControl>(conn);
        assert!(tc.state_code() == transport_control::state_closed());
        assert!(tc.is_settled());
        ts::return_shared(tc);
    };
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ETimeoutNotReached)]
fun client_settles_only_after_timeout() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    th::close_as(&mut scenario, &clock, conn, th::server());
    // Closed, but the server still has until half-close + timeout to claim.
    th::settle_as(&mut scenario, &clock, conn, th::client());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::EAlreadySettled)]
fun settle_only_once() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::server());
    th::settle_as(&mut scenario, &clock, conn, th::server());
    th::settle_as(&mut scenario, &clock, conn, th::server());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::EWrongEscrow)]
fun settle_checks_the_escrow() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let first = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::close_as(&mut scenario, &clock, first, th::server());
    scenario.next_tx(th::server());
    let mut tc = scenario.take_shared_by_id<TransportControl>(first);
    let mut e = scenario.take_shared<Escrow>(); // the second connection's escrow
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    tc.settle(&mut e, &mut cap, &clock, scenario.ctx());
    ts::return_shared(tc);
    ts::return_shared(e);
    ts::return_shared(cap);
    th::finish(scenario, clock);
}

// === Pipes ===

#[test]
fun pipe_sends_in_sequence_and_syncs() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    scenario.next_tx(th::client());
    {
        let tc = scenario.take_shared_by_id<TransportControl>(conn);
        pipe::create(&tc, 2, scenario.ctx());
        ts::return_shared(tc);
    };
    scenario.next_tx(th::client());
    let mut p = scenario.take_from_sender<Pipe>();
    assert!(p.connection() == conn);
    assert!(p.inner_count() == 2);
    assert!(p.send(0, b"a") == 0);
    assert!(p.send(0, b"b") == 1);
    assert!(p.send(1, b"c") == 0);
    p.sync(0, 1);
    assert!(p.inner(0).acked() == 1);
    assert!(p.inner(0).in_flight() == 1);
    assert!(p.inner(1).next_seq() == 1);
    p.destroy();
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = pipe::EInvalidInnerCount)]
fun pipe_inner_count_bounded() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    scenario.next_tx(th::client());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    pipe::create(&tc, 9, scenario.ctx());
    ts::return_shared(tc);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::ENotParticipant)]
fun pipe_only_for_participants() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    scenario.next_tx(th::mallory());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    pipe::create(&tc, 1, scenario.ctx());
    ts::return_shared(tc);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = transport_control::EConnectionClosed)]
fun pipe_not_for_closed_connections() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    th::close_as(&mut scenario, &clock, conn, th::client());
    th::close_as(&mut scenario, &clock, conn, th::server());
    scenario.next_tx(th::client());
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    pipe::create(&tc, 1, scenario.ctx());
    ts::return_shared(tc);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = pipe::EInnerNotFound)]
fun pipe_inner_index_checked() {
    let (mut scenario, clock) = th::start();
    let cap_id = th::setup(&mut scenario, 0, 1_000_000, 10_000);
    let conn = th::open_as(&mut scenario, &clock, th::client(), th::client_pk(), cap_id, 1000);
    scenario.next_tx(th::client());
    {
        let tc = scenario.take_shared_by_id<TransportControl>(conn);
        pipe::create(&tc, 1, scenario.ctx());
        ts::return_shared(tc);
    };
    scenario.next_tx(th::client());
    let mut p = scenario.take_from_sender<Pipe>();
    p.send(1, b"x");
    p.destroy();
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = inner_pipe::EDataTooLarge)]
fun pipe_record_size_bounded() {
    let mut inner = inner_pipe::new(0);
    let data = th::bytes(inner_pipe::max_data_length());
    inner.send(th::connection(), data); // the longest record fits
    inner.send(th::connection(), th::bytes(inner_pipe::max_data_length() + 1));
}

#[test, expected_failure(abort_code = inner_pipe::EAckBeyondSent)]
fun ack_cannot_pass_what_was_sent() {
    let mut inner = inner_pipe::new(0);
    inner.send(th::connection(), b"a");
    inner.sync(th::connection(), 2);
}

#[test, expected_failure(abort_code = inner_pipe::EAckRegressed)]
fun ack_cannot_go_backwards() {
    let mut inner = inner_pipe::new(0);
    inner.send(th::connection(), b"a");
    inner.send(th::connection(), b"b");
    inner.sync(th::connection(), 2);
    inner.sync(th::connection(), 1);
}

// === Broadcast ===

#[test, expected_failure(abort_code = broadcast::EInvalidSlot)]
fun broadcast_slot_must_be_positive() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 0, 1_000, &clock, scenario.ctx());
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::EZeroAmount)]
fun broadcast_contribution_positive() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 0);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::ENotBroadcaster)]
fun only_broadcaster_cancels() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    scenario.next_tx(th::mallory());
    let mut b = scenario.take_shared<Broadcast>();
    b.cancel(&clock, scenario.ctx());
    ts::return_shared(b);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::ENotCancelled)]
fun no_refund_before_cancel() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 300);
    scenario.next_tx(th::listener_a());
    let mut b = scenario.take_shared<Broadcast>();
    b.withdraw(scenario.ctx());
    ts::return_shared(b);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::ENoContribution)]
fun refund_needs_a_contribution() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        b.cancel(&clock, scenario.ctx());
        ts::return_shared(b);
    };
    scenario.next_tx(th::listener_b());
    let mut b = scenario.take_shared<Broadcast>();
    b.withdraw(scenario.ctx());
    ts::return_shared(b);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::EBroadcastCancelled)]
fun no_contribution_after_cancel() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    scenario.next_tx(th::server());
    {
        let mut b = scenario.take_shared<Broadcast>();
        b.cancel(&clock, scenario.ctx());
        ts::return_shared(b);
    };
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 100);
    th::finish(scenario, clock);
}

#[test, expected_failure(abort_code = broadcast::EDataTooLarge)]
fun broadcast_message_size_bounded() {
    let (mut scenario, clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 300);
    scenario.next_tx(th::server());
    let mut b = scenario.take_shared<Broadcast>();
    b.transmit(th::bytes(16_381), &clock, scenario.ctx()); // the longest message airs
    b.transmit(th::bytes(16_382), &clock, scenario.ctx());
    ts::return_shared(b);
    th::finish(scenario, clock);
}

#[test]
fun off_air_slots_are_never_charged() {
    let (mut scenario, mut clock) = th::start();
    broadcast::create(b"news", 100, 1_000, &clock, scenario.ctx());
    th::fund(&mut scenario, th::listener_a(), 1_000);
    // Nobody pays for slots 0..4, nor for the first half of slot 5: a contribution at
    // 5,500 ms pays from its moment on, and 120 covers what is left of slot 5 (50).
    clock.set_for_testing(5_500);
    th::contribute_as(&mut scenario, &clock, th::listener_a(), 120);
    assert!(th::on_air(&mut scenario, &clock));
    clock.set_for_testing(7_000);
    scenario.next_tx(th::server());
    let mut b = scenario.take_shared<Broadcast>();
    // The second half of slot 5 paid (50); slot 6 could not be (70 left): off air.
    assert!(b.claim(&clock, scenario.ctx()) == 50);
    assert!(b.paid_slots() == 1 && b.pool_value() == 70);
    assert!(!b.is_on_air(&clock));
    ts::return_shared(b);
    th::finish(scenario, clock);
}
