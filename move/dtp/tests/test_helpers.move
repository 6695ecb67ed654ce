/// Shared fixtures for the dtp tests: actors, fixed Ed25519 test vectors, and helpers
/// that set up a host with one service, fund wallets and read balances.
///
/// ## How the fixed vectors were made
///
/// With Python's `cryptography` package (Ed25519PrivateKey.from_private_bytes):
///   client  key seed = 0x11 repeated 32 times, mallory key seed = 0x22 repeated 32 times;
///   address = blake2b-256(0x00 || public key) (Sui's Ed25519 address rule).
/// Every receipt is signed over the exact message bytes below (version 2, see dtp::escrow
/// for the layout) for package 0x0 (the package's address in unit tests, which
/// `escrow::receipt_package` reads), escrow ID 0x…decaf and connection ID 0x…c0ffee
/// (32 bytes each, big-endian). test_scenario object IDs cannot be known offline, so the
/// tests pin the connection with `escrow::set_connection_for_testing` and claim with
/// `escrow::claim_for_testing`, which checks the signature over the message for escrow
/// `escrow()` (every other check and effect is `claim`'s); `escrow::claim` itself, over
/// the escrow's own ID, refuses these receipts (rule_tests: `EBadSignature`):
///
///   R1  bytes=10240  requests=4  amount=120  nonce=1  (client)
///   0e4454502d524543454950542d5632
///   0000000000000000000000000000000000000000000000000000000000000000
///   00000000000000000000000000000000000000000000000000000000000decaf
///   0000000000000000000000000000000000000000000000000000000000c0ffee
///   0028000000000000 0400000000000000 7800000000000000 0100000000000000
///   R2  bytes=51200  requests=10 amount=550  nonce=2  (client)
///   RBIG bytes=204800 requests=0 amount=2000 nonce=3  (client)
///   RMISMATCH bytes=10240 requests=4 amount=999 nonce=1 (client; fee would be 120)
///   R1_BY_MALLORY: R1's message signed with mallory's key
///   RZERO bytes=0 requests=0 amount=0 nonce=5 (client; below an earlier claim of 120)
///
/// `tests/ledger/test_receipt_vectors.py` checks every signature here against the
/// message it names.
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
use std::bcs;
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
const ESCROW: address = @0xdecaf;
const PORT: u16 = 7;
const PRICE_PER_KIB: u64 = 10;
const PRICE_PER_REQUEST: u64 = 5;
const MIN_DEPOSIT: u64 = 1000;
const NOISE_KEY: vector<u8> = x"0101010101010101010101010101010101010101010101010101010101010101";
/// 32 bytes of test data (`bytes` makes longer data of it).
const WORD: vector<u8> = x"2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a";

// === Receipt vectors ===

const R1_MSG: vector<u8> = x"0e4454502d524543454950542d5632000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000decaf0000000000000000000000000000000000000000000000000000000000c0ffee0028000000000000040000000000000078000000000000000100000000000000";
const R1_SIG: vector<u8> = x"cc80bf7d324195b8ae4cc81cce914b8c214e5d7956da46497a894bd3bce2e76c543715bde1b508ac9b3a5696244877b3e5d2123141d50e719b09b4de0cfdc60d";
const R2_SIG: vector<u8> = x"74279f0a8eae21602a027c94737a18473afcc314144f58bb0e9dac3aba2726f816deb4bb64760d71e7bda562015b40e19f5b92ed247bbbc880219c81c33db802";
const RBIG_SIG: vector<u8> = x"bb9d4fed4b5bf1f16e41edb997595b90db12679f8963d3f89d6817678b3bf0d6fe16b367952be506832aa9805f5b60fe5ac0310367b221ad01e3c76d9d182d00";
const RMISMATCH_SIG: vector<u8> = x"865ca84a46276ec73391daea71a6e6f5af4884329f3c62dff9ad8aa6061acfc2530cf42771f58c475d6c321f1f2afe456f1f5cc95f4191a8c3071910738c010c";
const RZERO_SIG: vector<u8> = x"4072bab79a03a42593da4079280c6f1752f7ad0fe17a26bfb7ffc21e906f82bfc18957ba84c720b7bfd72d23cab9189ec83528223e9923dc5932106d5d7a7807";
const R1_BY_MALLORY_SIG: vector<u8> = x"b8aafd089b2733df723665234339f806b744c260d701422736c81037da3d855e86c09514e61ae17a7ef92c9661e80d1cfc3e45cbfc116e367f398a5b4dfa1d00";

public fun server(): address { SERVER }

public fun client(): address { CLIENT }

public fun mallory(): address { MALLORY }

public fun other(): address { OTHER }

public fun listener_a(): address { LISTENER_A }

public fun listener_b(): address { LISTENER_B }

public fun client_pk(): vector<u8> { CLIENT_PK }

public fun mallory_pk(): vector<u8> { MALLORY_PK }

public fun connection(): ID { object::id_from_address(CONNECTION) }

/// The escrow ID the fixed receipts are signed for (see `escrow::claim_for_testing`).
public fun escrow(): ID { object::id_from_address(ESCROW) }

public fun port(): u16 { PORT }

public fun noise_key(): vector<u8> { NOISE_KEY }

public fun r1_msg(): vector<u8> { R1_MSG }

public fun r1_sig(): vector<u8> { R1_SIG }

public fun r2_sig(): vector<u8> { R2_SIG }

public fun rbig_sig(): vector<u8> { RBIG_SIG }

public fun rmismatch_sig(): vector<u8> { RMISMATCH_SIG }

public fun rzero_sig(): vector<u8> { RZERO_SIG }

public fun r1_by_mallory_sig(): vector<u8> { R1_BY_MALLORY_SIG }

/// `length` bytes of test data, made in at most a few hundred steps rather than one per
/// byte (a test's gas limit counts every instruction): `bcs::to_bytes` serializes copies
/// of a 32-byte word natively -- k of them take a 1- or 2-byte length and 33k bytes --
/// and the excess, at most 33 bytes, is popped.
public fun bytes(length: u64): vector<u8> {
    let mut words = vector[];
    while (33 * words.length() + 1 < length) {
        words.push_back(WORD);
    };
    let mut out = bcs::to_bytes(&words);
    while (out.length() > length) {
        out.pop_back();
    };
    out
}

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

/// SERVER changes the terms of the service on PORT (`host::update_service`) to these, the
/// half-close timeout among them: they apply to the connections opened afterwards.
public fun update_service(
    scenario: &mut Scenario,
    price_per_kib: u64,
    price_per_request: u64,
    min_deposit: u64,
    half_close_timeout_ms: u64,
    max_connections: u64,
) {
    scenario.next_tx(SERVER);
    let mut h = scenario.take_shared<Host>();
    let sla = host::new_sla_with_half_close_timeout(
        price_per_kib,
        price_per_request,
        min_deposit,
        half_close_timeout_ms,
    );
    h.update_service(PORT, sla, max_connections, scenario.ctx());
    ts::return_shared(h);
}

/// The half-close timeout of the connection `conn` (its own, fixed when it opened).
public fun connection_timeout(scenario: &mut Scenario, conn: ID): u64 {
    scenario.next_tx(SERVER);
    let tc = scenario.take_shared_by_id<TransportControl>(conn);
    let timeout = tc.half_close_timeout_ms();
    ts::return_shared(tc);
    timeout
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

/// `who` opens a connection whose receipts `session_pk` signs (`open_with_session_key`).
public fun open_session_as(
    scenario: &mut Scenario,
    clock: &Clock,
    who: address,
    session_pk: vector<u8>,
    cap_id: ID,
    deposit: u64,
): ID {
    scenario.next_tx(who);
    let h = scenario.take_shared<Host>();
    let mut cap = scenario.take_shared_by_id<SpendingCap>(cap_id);
    let payment = take(scenario, who, deposit);
    let ctx = scenario.ctx();
    let conn = transport_control::open_with_session_key(
        &h,
        PORT,
        &mut cap,
        session_pk,
        payment,
        clock,
        ctx,
    );
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

/// SERVER claims a receipt (signed for `escrow()`) from the most recent escrow; returns
/// the amount paid.
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
    let paid = e.claim_for_testing(
        escrow(),
        total_bytes,
        total_requests,
        total_amount,
        nonce,
        signature,
        scenario.ctx(),
    );
    ts::return_shared(e);
    paid
}

/// What `transport_control::settle_with_receipt` does, in one transaction by SERVER,
/// for a receipt signed for `escrow()`: the claim (`escrow::claim_for_testing`), then the
/// settlement. The test of `settle_with_receipt` itself over the escrow's own ID is in
/// rule_tests (it refuses these receipts: `EBadSignature`).
public fun settle_with_receipt(
    scenario: &mut Scenario,
    clock: &Clock,
    conn: ID,
    total_bytes: u64,
    total_requests: u64,
    total_amount: u64,
    nonce: u64,
    signature: vector<u8>,
) {
    scenario.next_tx(SERVER);
    let mut tc = scenario.take_shared_by_id<TransportControl>(conn);
    let mut e = scenario.take_shared_by_id<Escrow>(tc.escrow_id());
    let mut cap = scenario.take_shared_by_id<SpendingCap>(tc.spending_cap_id());
    e.claim_for_testing(
        escrow(),
        total_bytes,
        total_requests,
        total_amount,
        nonce,
        signature,
        scenario.ctx(),
    );
    tc.settle(&mut e, &mut cap, clock, scenario.ctx());
    ts::return_shared(tc);
    ts::return_shared(e);
    ts::return_shared(cap);
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
