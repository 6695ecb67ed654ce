/// Shared fixtures for the dtp tests: actors, fixed Ed25519 test vectors, and helpers
/// that set up a host with one service, fund wallets and read balances.
///
/// ## How the fixed vectors were made
///
/// With Python's `cryptography` package (Ed25519PrivateKey.from_private_bytes):
///   client  key seed = 0x11 repeated 32 times, mallory key seed = 0x22 repeated 32 times;
///   address = blake2b-256(0x00 || public key) (Sui's Ed25519 address rule).
/// Every receipt is signed over the exact message bytes below (see dtp::escrow for the
/// layout), for connection ID 0x…c0ffee (32 bytes, big-endian 0xc0ffee), which the tests pin
/// with `escrow::set_connection_for_testing` because test_scenario object IDs cannot be
/// known offline:
///
///   R1  bytes=10240  requests=4  amount=120  nonce=1  (client)
///   0e4454502d524543454950542d5631 00000000000000000000000000000000000000000000000000000000 00c0ffee
///   0028000000000000 0400000000000000 7800000000000000 0100000000000000
///   R2  bytes=51200  requests=10 amount=550  nonce=2  (client)
///   RBIG bytes=204800 requests=0 amount=2000 nonce=3  (client)
///   RMISMATCH bytes=10240 requests=4 amount=999 nonce=1 (client; fee would be 120)
///   R1_BY_MALLORY: R1's message signed with mallory's key
///   RZERO bytes=0 requests=0 amount=0 nonce=5 (client; below an earlier claim of 120)
///
/// Fees in the fixtures: price_per_kib = 10, price_per_request = 5, so
/// fee(10240, 4) = 100 + 20 = 120, fee(51200, 10) = 500 + 50 = 550, fee(204800, 0) = 2000.
#[test_only]
module dtp::test_helpers;

use dtp::broadcast::Broadcast;
use dtp::escrow::Escrow;
use dtp::host::{Self, Host};
use dtp::spending_cap::{Self, SpendingCap};
use dtp::transport_control::{Self, TransportControl};
use sui::clock::{Self, Clock};
use sui::coin::{Self, Coin};
use sui::sui::SUI;
use sui::test_scenario::{Self as ts, Scenario};

// === Actors ===

const SERVER: address = @0x5e;
const CLIENT: address = @0x0881c07520943bbf13989b92892093c1b50672156fa5f873c22892701cb2e207;
const MALLORY: address = @0x48936240c871663e6ba416724158736101ccab29436f72ae3ae4c8fa1ce7e45f;
const OTHER: address = @0x07;
const LISTENER_A: address = @0xa1;
const LISTENER_B: address = @0xb2;

const CLIENT_PK: vector<u8> = x"d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737";
const MALLORY_PK: vector<u8> = x"a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0";

const CONNECTION: address = @0xc0ffee;
const PORT: u16 = 7;
const PRICE_PER_KIB: u64 = 10;
const PRICE_PER_REQUEST: u64 = 5;
const MIN_DEPOSIT: u64 = 1000;
const NOISE_KEY: vector<u8> = x"0101010101010101010101010101010101010101010101010101010101010101";

// === Receipt vectors ===

const R1_MSG: vector<u8> = x"0e4454502d524543454950542d56310000000000000000000000000000000000000000000000000000000000c0ffee0028000000000000040000000000000078000000000000000100000000000000";
const R1_SIG: vector<u8> = x"90f31b93e37001ea82da2dbbeac138ea145f215761021ff89a7e4e50faf52bd6d923c35a2d7683b2ee4cf809aea4937e86b2814bca3bd50879352f618f8b5002";
const R2_SIG: vector<u8> = x"a36bb67e540b29b3496d515a95f4868380cafbdd9fd21160459040541ff87f18b9d32ab5d3e404bfac317ce03fbe2808a1051474bf820f853e0e8d283cc66004";
const RBIG_SIG: vector<u8> = x"4075862a4553a05c4321de06e093d46e4740ee439a7dc7c3eb0d57dce9eb8f22c1fa7f8ca02f980b9a3ff819f2974514bf41071d3e28707f071c44434d6c960d";
const RMISMATCH_SIG: vector<u8> = x"b5d8d9a3be980ca20e6613a8230b61b75f78dbabba5a30b8eb928fdb51b8fcdc60365eaf68f25f59bbc1555f616f310ac08b123b4ad4fafebd69eb5aaa4eb703";
const RZERO_SIG: vector<u8> = x"12fcd15522dab43958ede346ca876c7d3af9bb80782e8482c3621e06afb129a19952b38364b02a32cb4bc623b5a4079cd23733683123421006fa61c2a8cdf007";
const R1_BY_MALLORY_SIG: vector<u8> = x"e59928310c413c0939e6e849fd9edfe647574b0cb11ad6a7e98e160815eebd769a58531fc2cff13e616334893b63bb81d4920c71531c116d78ec1502ee0cd807";

public fun server(): address { SERVER }

public fun client(): address { CLIENT }

public fun mallory(): address { MALLORY }

public fun other(): address { OTHER }

public fun listener_a(): address { LISTENER_A }

public fun listener_b(): address { LISTENER_B }

public fun client_pk(): vector<u8> { CLIENT_PK }

public fun mallory_pk(): vector<u8> { MALLORY_PK }

public fun connection(): ID { object::id_from_address(CONNECTION) }

public fun port(): u16 { PORT }

public fun noise_key(): vector<u8> { NOISE_KEY }

public fun r1_msg(): vector<u8> { R1_MSG }

public fun r1_sig(): vector<u8> { R1_SIG }

public fun r2_sig(): vector<u8> { R2_SIG }

public fun rbig_sig(): vector<u8> { RBIG_SIG }

public fun rmismatch_sig(): vector<u8> { RMISMATCH_SIG }

public fun rzero_sig(): vector<u8> { RZERO_SIG }

public fun r1_by_mallory_sig(): vector<u8> { R1_BY_MALLORY_SIG }

// === Wallets ===

/// Mint `amount` MIST to `who` (the faucet).
public fun fund(scenario: &mut Scenario, who: address, amount: u64) {
    let c = coin::mint_for_testing<SUI>(amount, scenario.ctx());
    transfer::public_transfer(c, who);
}

/// Sum of the SUI coins `who` owns. Call at most once per address per transaction,
/// after `next_tx` (coins are returned to the inventory for the next transaction).
public fun balance_of(scenario: &Scenario, who: address): u64 {
    let ids = ts::ids_for_address<Coin<SUI>>(who);
    let mut total = 0;
    let mut i = 0;
    while (i < ids.length()) {
        let c = ts::take_from_address_by_id<Coin<SUI>>(scenario, who, ids[i]);
        total = total + c.value();
        ts::return_to_address(who, c);
        i = i + 1;
    };
    total
}

/// Take `amount` MIST out of `who`'s coins; the change goes back to `who`. Call at most
/// once per address per transaction, after `next_tx`.
public fun take(scenario: &mut Scenario, who: address, amount: u64): Coin<SUI> {
    let ids = ts::ids_for_address<Coin<SUI>>(who);
    let mut all = coin::zero<SUI>(scenario.ctx());
    let mut i = 0;
    while (i < ids.length()) {
        let c = ts::take_from_address_by_id<Coin<SUI>>(scenario, who, ids[i]);
        all.join(c);
        i = i + 1;
    };
    let part = all.split(amount, scenario.ctx());
    transfer::public_transfer(all, who);
    part
}

// === Setup ===

/// SERVER creates a host with one "raw" service on PORT (price_per_kib 10,
/// price_per_request 5, min_deposit 1000, `max_connections`); CLIENT creates a spending
/// cap of `cap_max` per epoch and receives `client_funds` MIST. Returns the cap's ID.
public fun setup(scenario: &mut Scenario, max_connections: u64, cap_max: u64, client_funds: u64): ID {
    scenario.next_tx(SERVER);
    host::create(NOISE_KEY, vector[b"tcp://127.0.0.1:7000"], scenario.ctx());
    scenario.next_tx(SERVER);
    {
        let mut h = scenario.take_shared<Host>();
        let sla = host::new_sla(PRICE_PER_KIB, PRICE_PER_REQUEST, MIN_DEPOSIT);
        h.add_service(PORT, b"raw", sla, max_connections, scenario.ctx());
        ts::return_shared(h);
    };
    scenario.next_tx(CLIENT);
    let cap_id = spending_cap::create(cap_max, scenario.ctx());
    fund(scenario, CLIENT, client_funds);
    scenario.next_tx(CLIENT);
    cap_id
}

/// `who` (holding the key `pk`) opens a connection to PORT with `deposit` taken from
/// its wallet and the spending cap `cap_id`. Returns the connection ID.
public fun open_as(
    scenario: &mut Scenario,
    clock: &Clock,
    who: address,
    pk: vector<u8>,
    cap_id: ID,
    deposit: u64,
): ID {
    scenario.next_tx(who);
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let payment = take(scenario, who, deposit);
    let conn = transport_control::open(&h, PORT, &mut cap, pk, payment, clock, scenario.ctx());
    ts::return_shared(h);
    ts::return_shared(cap);
    conn
}

/// CLIENT opens a connection with `deposit`, and the escrow's connection ID is pinned to
/// the fixed CONNECTION so the offline signatures apply.
public fun open_pinned(scenario: &mut Scenario, clock: &Clock, cap_id: ID, deposit: u64): ID {
    let conn = open_as(scenario, clock, CLIENT, CLIENT_PK, cap_id, deposit);
    scenario.next_tx(CLIENT);
    let mut e = scenario.take_shared<Escrow>();
    e.set_connection_for_testing(connection());
    ts::return_shared(e);
    conn
}

/// SERVER claims a receipt from the most recent escrow; returns the amount paid.
public fun claim(
    scenario: &mut Scenario,
    total_bytes: u64,
    total_requests: u64,
    total_amount: u64,
    nonce: u64,
    signature: vector<u8>,
): u64 {
    scenario.next_tx(SERVER);
    let mut e = scenario.take_shared<Escrow>();
    let paid = e.claim(total_bytes, total_requests, total_amount, nonce, signature, scenario.ctx());
    ts::return_shared(e);
    paid
}

// === Steps ===

public fun close_as(scenario: &mut Scenario, clock: &Clock, conn: ID, who: address) {
    scenario.next_tx(who);
    let mut tc = scenario.take_shared_by_id<TransportControl>(conn);
    tc.close(clock, scenario.ctx());
    ts::return_shared(tc);
}

public fun finalize_as(scenario: &mut Scenario, clock: &Clock, conn: ID, who: address) {
    scenario.next_tx(who);
    let mut tc = scenario.take_shared_by_id<TransportControl>(conn);
    tc.finalize(clock, scenario.ctx());
    ts::return_shared(tc);
}

public fun settle_as(scenario: &mut Scenario, clock: &Clock, conn: ID, who: address) {
    scenario.next_tx(who);
    let mut tc = scenario.take_shared_by_id<TransportControl>(conn);
    let mut e = scenario.take_shared_by_id<Escrow>(tc.escrow_id());
    let mut cap = scenario.take_shared_by_id<SpendingCap>(tc.spending_cap_id());
    tc.settle(&mut e, &mut cap, clock, scenario.ctx());
    ts::return_shared(tc);
    ts::return_shared(e);
    ts::return_shared(cap);
}

/// CLIENT adds `amount` to the most recent escrow, reserving it on the escrow's cap.
public fun top_up(scenario: &mut Scenario, amount: u64) {
    scenario.next_tx(CLIENT);
    let mut e = scenario.take_shared<Escrow>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(e.spending_cap());
    let more = take(scenario, CLIENT, amount);
    e.top_up(&mut cap, more, scenario.ctx());
    ts::return_shared(e);
    ts::return_shared(cap);
}

/// What counts against the cap `cap_id`'s limit in the current epoch: the claims counted
/// in it and what is outstanding (read in a new transaction).
public fun cap_spent(scenario: &mut Scenario, cap_id: ID): u64 {
    let (claimed, outstanding) = cap_counts(scenario, cap_id);
    claimed + outstanding
}

/// The cap `cap_id`'s claims counted in the current epoch (0 in an epoch it has not seen
/// yet) and its outstanding deposits (read in a new transaction).
public fun cap_counts(scenario: &mut Scenario, cap_id: ID): (u64, u64) {
    scenario.next_tx(SERVER);
    let cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let claimed = if (cap.epoch() == scenario.ctx().epoch()) cap.claimed() else 0;
    let outstanding = cap.outstanding();
    ts::return_shared(cap);
    (claimed, outstanding)
}

/// What the cap `cap_id` lets an open or a top-up reserve now (read in a new
/// transaction).
public fun cap_remaining(scenario: &mut Scenario, cap_id: ID): u64 {
    scenario.next_tx(SERVER);
    let cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let remaining = cap.remaining(scenario.ctx());
    ts::return_shared(cap);
    remaining
}

/// CLIENT sets its cap `cap_id`'s limit.
public fun set_cap(scenario: &mut Scenario, cap_id: ID, max_per_epoch: u64) {
    scenario.next_tx(CLIENT);
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    cap.set_max_per_epoch(max_per_epoch, scenario.ctx());
    ts::return_shared(cap);
}

/// The most recent escrow's `reserved`, `claim_epoch` and `claimed_in_epoch`.
public fun escrow_counts(scenario: &mut Scenario): (u64, u64, u64) {
    scenario.next_tx(SERVER);
    let e = scenario.take_shared<Escrow>();
    let reserved = e.reserved();
    let claim_epoch = e.claim_epoch();
    let claimed_in_epoch = e.claimed_in_epoch();
    ts::return_shared(e);
    (reserved, claim_epoch, claimed_in_epoch)
}

public fun contribute_as(scenario: &mut Scenario, clock: &Clock, who: address, amount: u64) {
    scenario.next_tx(who);
    let mut b = scenario.take_shared<Broadcast>();
    let payment = take(scenario, who, amount);
    b.contribute(payment, clock, scenario.ctx());
    ts::return_shared(b);
}

public fun on_air(scenario: &mut Scenario, clock: &Clock): bool {
    scenario.next_tx(SERVER);
    let b = scenario.take_shared<Broadcast>();
    let result = b.is_on_air(clock);
    ts::return_shared(b);
    result
}

public fun start(): (Scenario, Clock) {
    let mut scenario = ts::begin(SERVER);
    let clock = clock::create_for_testing(scenario.ctx());
    (scenario, clock)
}

public fun finish(scenario: Scenario, clock: Clock) {
    clock.destroy_for_testing();
    scenario.end();
}
