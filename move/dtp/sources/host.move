/// A DTP host: the on-chain "IP address" of a machine that serves DTP connections.
///
/// The `Host` object's ID names the host. It publishes who may act for it (`authority`),
/// the Noise static key clients use for the `IK` handshake, optional reachable endpoints,
/// its services (port -> kind and SLA) and its firewall. Connections (see
/// `dtp::transport_control`) are admitted through `admit`, which applies the firewall and
/// hands back a copy of the service's terms: its fees and the half-close timeout its
/// connections keep.
///
/// Every per-connection call takes the Host read-only (`&Host`), or not at all: Sui runs
/// the transactions that only read a shared object concurrently and orders those that
/// write it, so a popular host's opens do not queue behind one another. Its services and
/// the firewall's allow and deny lists are `Table`s (dynamic fields of the Host): an open
/// reads one service and looks a client up in each list at most once, whatever their
/// lengths. The connection
/// limits it publishes (`max_connections`, `max_connections_per_client`) are enforced by
/// the host's own admission off-chain, which sees the connections it serves
/// (docs/escrow.md §2, "Throughput").
///
/// Rules are written out in docs/escrow.md; the Python `LocalLedger` follows the same text.
module dtp::host;

use dtp::version::{Self, AdminCap};
use std::string::{Self, String};
use sui::event;
use sui::table::{Self, Table};

// === Errors (codes are unique across the dtp package; see docs/escrow.md) ===

#[error(code = 1)]
const ENotAuthority: vector<u8> = b"Sender is not the host's authority";
#[error(code = 2)]
const EServiceNotFound: vector<u8> = b"No service on this port";
#[error(code = 3)]
const EServiceExists: vector<u8> = b"A service already uses this port";
// Code 4 (EServiceBusy) is retired: a service no longer counts its open connections.
#[error(code = 5)]
const EInvalidNoiseKey: vector<u8> = b"Noise static key must be 32 bytes and not a low-order point";
#[error(code = 6)]
const ETooManyEndpoints: vector<u8> = b"Too many endpoints or an endpoint is too long";
#[error(code = 7)]
const EInvalidFirewallMode: vector<u8> = b"Firewall mode must be 0 (allow-all) or 1 (allow-listed)";
#[error(code = 8)]
const EFirewallDenied: vector<u8> = b"The host's firewall denies this client";
// Not aborted on chain: the name (and code) of the refusal a host's off-chain admission
// gives a connection beyond `max_connections` or `max_connections_per_client`.
#[allow(unused_const)]
#[error(code = 9)]
const EMaxConnections: vector<u8> = b"Connection limit reached";
#[error(code = 10)]
const EFirewallListFull: vector<u8> = b"The firewall list already holds its maximum of addresses";
#[error(code = 11)]
const EInvalidHalfCloseTimeout: vector<u8> = b"Half-close timeout must be from 10 minutes to 7 days";

// === Constants ===

/// Firewall mode: every client not on the deny list is admitted.
const MODE_ALLOW_ALL: u8 = 0;
/// Firewall mode: only clients on the allow list (and not on the deny list) are admitted.
const MODE_ALLOW_LISTED: u8 = 1;

const NOISE_KEY_LENGTH: u64 = 32;
const MAX_ENDPOINTS: u64 = 16;
const MAX_ENDPOINT_LENGTH: u64 = 256;
/// Most addresses on the allow list, and on the deny list. The lists are Tables, so
/// neither the Host's size nor an `open`'s gas grows with them; the bound keeps what a
/// host's own admission and its daemon read back (every entry, at start) small, and a
/// Host's storage bounded (docs/escrow.md §2).
const MAX_FIREWALL_ENTRIES: u64 = 1024;

/// The half-close timeout of a service's connections (docs/escrow.md §7): how long a
/// half-closed connection waits for the peer, and the server has from the first close to
/// claim before the client may settle alone. `new_sla` gives the default, 10 minutes;
/// a provider may choose from 10 minutes (never less time to claim than the default
/// gives) to 7 days (never a client's deposit locked longer than a week after its
/// half-close, whatever becomes of its server).
const DEFAULT_HALF_CLOSE_TIMEOUT_MS: u64 = 600_000;
const MIN_HALF_CLOSE_TIMEOUT_MS: u64 = 600_000;
const MAX_HALF_CLOSE_TIMEOUT_MS: u64 = 604_800_000;

/// `HostUpdated.change` values.
const CHANGE_AUTHORITY: u8 = 0;
const CHANGE_NOISE_KEY: u8 = 1;
const CHANGE_ENDPOINTS: u8 = 2;
const CHANGE_FIREWALL: u8 = 3;

// === Objects ===

/// A host. Shared, so that clients can open connections against it (read-only).
public struct Host has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    /// The Sui address allowed to change this host; fees of new connections go to it.
    authority: address,
    /// X25519 public key for the Noise handshake (32 bytes, not a low-order point).
    noise_static_key: vector<u8>,
    /// Reachable endpoints for direct connections (e.g. b"tcp://203.0.113.7:7000");
    /// empty for hosts reached only through the ledger carrier.
    endpoints: vector<vector<u8>>,
    /// Services by port: a Table, so an open reads the one it names (docs/escrow.md §2).
    services: Table<u16, Service>,
    firewall: Firewall,
}

/// The terms of a service; copied into each connection when it opens, so later changes
/// never affect an open connection.
public struct Sla has copy, drop, store {
    /// MIST per KiB (1024 bytes) transferred; charged per byte, rounded up (see `fee`).
    price_per_kib: u64,
    /// MIST per request.
    price_per_request: u64,
    /// Smallest deposit accepted when a connection opens, in MIST.
    min_deposit: u64,
    /// How long the server has, from a connection's first close, to claim before the
    /// client may settle alone; from `MIN_HALF_CLOSE_TIMEOUT_MS` to
    /// `MAX_HALF_CLOSE_TIMEOUT_MS` (`dtp::transport_control::finalize`, `settle`).
    half_close_timeout_ms: u64,
}

/// A service published on a port.
public struct Service has copy, drop, store {
    /// Free-form kind, e.g. "raw", "http", "jsonrpc".
    kind: String,
    sla: Sla,
    /// Maximum concurrent connections to this service; 0 means unlimited. Published here
    /// and enforced off-chain by the host's admission (a chain that counted them would
    /// have every open and close write the Host).
    max_connections: u64,
}

/// The host's firewall policy. The lists map each listed client to `true`; a Table
/// keeps its own count (`length`), which the Host's contents carry.
public struct Firewall has store {
    /// `MODE_ALLOW_ALL` or `MODE_ALLOW_LISTED`.
    mode: u8,
    allow: Table<address, bool>,
    /// Always wins over the allow list.
    deny: Table<address, bool>,
    /// Maximum concurrent connections from one client address; 0 means unlimited.
    /// Enforced off-chain by the host's admission, as `max_connections` is.
    max_connections_per_client: u64,
    /// Rate limits per client, enforced off-chain by the host's DTP stack (a chain cannot
    /// see traffic); published here so clients know them. 0 means unlimited.
    max_bytes_per_sec: u64,
    max_requests_per_sec: u64,
}

// === Events ===

public struct HostCreated has copy, drop {
    host: ID,
    authority: address,
}

public struct HostUpdated has copy, drop {
    host: ID,
    /// 0 authority, 1 Noise key, 2 endpoints, 3 firewall.
    change: u8,
}

public struct ServiceAdded has copy, drop {
    host: ID,
    port: u16,
    kind: String,
    sla: Sla,
    max_connections: u64,
}

public struct ServiceUpdated has copy, drop {
    host: ID,
    port: u16,
    sla: Sla,
    max_connections: u64,
}

public struct ServiceRemoved has copy, drop {
    host: ID,
    port: u16,
}

// === Creating a host ===

/// Create and share a host whose authority is the sender. The firewall starts in
/// allow-all mode with empty lists and no limits.
public fun create(
    noise_static_key: vector<u8>,
    endpoints: vector<vector<u8>>,
    ctx: &mut TxContext,
): ID {
    assert_noise_key(&noise_static_key);
    assert_endpoints(&endpoints);
    let host = Host {
        id: object::new(ctx),
        version: version::current(),
        authority: ctx.sender(),
        noise_static_key,
        endpoints,
        services: table::new(ctx),
        firewall: Firewall {
            mode: MODE_ALLOW_ALL,
            allow: table::new(ctx),
            deny: table::new(ctx),
            max_connections_per_client: 0,
            max_bytes_per_sec: 0,
            max_requests_per_sec: 0,
        },
    };
    let host_id = object::id(&host);
    event::emit(HostCreated { host: host_id, authority: host.authority });
    transfer::share_object(host);
    host_id
}

/// Build terms, e.g. for `add_service`, with the default half-close timeout (10 minutes).
public fun new_sla(price_per_kib: u64, price_per_request: u64, min_deposit: u64): Sla {
    Sla {
        price_per_kib,
        price_per_request,
        min_deposit,
        half_close_timeout_ms: DEFAULT_HALF_CLOSE_TIMEOUT_MS,
    }
}

/// Build terms with a half-close timeout of the provider's choosing: from 10 minutes to
/// 7 days (`EInvalidHalfCloseTimeout`). Every `Sla` is built here or by `new_sla`, so
/// every one a service or a connection holds has its timeout within those bounds.
public fun new_sla_with_half_close_timeout(
    price_per_kib: u64,
    price_per_request: u64,
    min_deposit: u64,
    half_close_timeout_ms: u64,
): Sla {
    assert!(
        half_close_timeout_ms >= MIN_HALF_CLOSE_TIMEOUT_MS
            && half_close_timeout_ms <= MAX_HALF_CLOSE_TIMEOUT_MS,
        EInvalidHalfCloseTimeout,
    );
    Sla { price_per_kib, price_per_request, min_deposit, half_close_timeout_ms }
}

// === Authority-only setters ===

/// Hand the host to another authority. Open connections keep paying the old one.
public fun set_authority(host: &mut Host, new_authority: address, ctx: &TxContext) {
    host.check_version();
    host.assert_authority(ctx);
    host.authority = new_authority;
    host.emit_updated(CHANGE_AUTHORITY);
}

public fun set_noise_static_key(host: &mut Host, key: vector<u8>, ctx: &TxContext) {
    host.check_version();
    host.assert_authority(ctx);
    assert_noise_key(&key);
    host.noise_static_key = key;
    host.emit_updated(CHANGE_NOISE_KEY);
}

public fun set_endpoints(host: &mut Host, endpoints: vector<vector<u8>>, ctx: &TxContext) {
    host.check_version();
    host.assert_authority(ctx);
    assert_endpoints(&endpoints);
    host.endpoints = endpoints;
    host.emit_updated(CHANGE_ENDPOINTS);
}

/// Publish a service on `port` with terms `sla`.
public fun add_service(
    host: &mut Host,
    port: u16,
    kind: vector<u8>,
    sla: Sla,
    max_connections: u64,
    ctx: &TxContext,
) {
    host.check_version();
    host.assert_authority(ctx);
    assert!(!host.services.contains(port), EServiceExists);
    let kind = string::utf8(kind);
    host.services.add(port, Service { kind, sla, max_connections });
    event::emit(ServiceAdded { host: object::id(host), port, kind, sla, max_connections });
}

/// Change a service's terms and limit. Applies to connections opened afterwards only: an
/// open one keeps the terms it opened with, its half-close timeout included.
public fun update_service(
    host: &mut Host,
    port: u16,
    sla: Sla,
    max_connections: u64,
    ctx: &TxContext,
) {
    host.check_version();
    host.assert_authority(ctx);
    assert!(host.services.contains(port), EServiceNotFound);
    let service = host.services.borrow_mut(port);
    service.sla = sla;
    service.max_connections = max_connections;
    event::emit(ServiceUpdated { host: object::id(host), port, sla, max_connections });
}

/// Withdraw a service. Connections already open to it go on: each carries its own copy
/// of the SLA and never reads the service again.
public fun remove_service(host: &mut Host, port: u16, ctx: &TxContext) {
    host.check_version();
    host.assert_authority(ctx);
    assert!(host.services.contains(port), EServiceNotFound);
    host.services.remove(port);
    event::emit(ServiceRemoved { host: object::id(host), port });
}

public fun set_firewall_mode(host: &mut Host, mode: u8, ctx: &TxContext) {
    host.check_version();
    host.assert_authority(ctx);
    assert!(mode == MODE_ALLOW_ALL || mode == MODE_ALLOW_LISTED, EInvalidFirewallMode);
    host.firewall.mode = mode;
    host.emit_updated(CHANGE_FIREWALL);
}

/// Add to the allow list (no-op if present; `EFirewallListFull` when it holds
/// `MAX_FIREWALL_ENTRIES` others).
public fun allow(host: &mut Host, client: address, ctx: &TxContext) {
    host.check_version();
    host.assert_authority(ctx);
    add_entry(&mut host.firewall.allow, client);
    host.emit_updated(CHANGE_FIREWALL);
}

/// Remove from the allow list (no-op if absent).
public fun disallow(host: &mut Host, client: address, ctx: &TxContext) {
    host.check_version();
    host.assert_authority(ctx);
    remove_entry(&mut host.firewall.allow, client);
    host.emit_updated(CHANGE_FIREWALL);
}

/// Add to the deny list (no-op if present; `EFirewallListFull` when it holds
/// `MAX_FIREWALL_ENTRIES` others). Existing connections are not cut; new ones
/// from `client` are refused.
public fun deny(host: &mut Host, client: address, ctx: &TxContext) {
    host.check_version();
    host.assert_authority(ctx);
    add_entry(&mut host.firewall.deny, client);
    host.emit_updated(CHANGE_FIREWALL);
}

/// Remove from the deny list (no-op if absent).
public fun undeny(host: &mut Host, client: address, ctx: &TxContext) {
    host.check_version();
    host.assert_authority(ctx);
    remove_entry(&mut host.firewall.deny, client);
    host.emit_updated(CHANGE_FIREWALL);
}

/// Limits per client: concurrent connections and rates, all enforced off-chain by the
/// host's DTP stack and published here. 0 means unlimited.
public fun set_client_limits(
    host: &mut Host,
    max_connections_per_client: u64,
    max_bytes_per_sec: u64,
    max_requests_per_sec: u64,
    ctx: &TxContext,
) {
    host.check_version();
    host.assert_authority(ctx);
    host.firewall.max_connections_per_client = max_connections_per_client;
    host.firewall.max_bytes_per_sec = max_bytes_per_sec;
    host.firewall.max_requests_per_sec = max_requests_per_sec;
    host.emit_updated(CHANGE_FIREWALL);
}

// === Fees ===

/// The fee, in MIST, for `total_bytes` and `total_requests` under `sla`:
/// ceil(total_bytes * price_per_kib / 1024) + total_requests * price_per_request.
/// Computed in u256, so it cannot overflow: each product is below 2^128, and their sum
/// (up to about 2^128 + 2^118) does not fit a u128.
public fun fee(sla: &Sla, total_bytes: u64, total_requests: u64): u256 {
    let byte_part = ((total_bytes as u256) * (sla.price_per_kib as u256) + 1023) / 1024;
    byte_part + (total_requests as u256) * (sla.price_per_request as u256)
}

// === Admission (used by dtp::transport_control) ===

/// Apply the firewall to a new connection from `client` to `port` and return the
/// service's current terms. Reads the host only, and of its services the one on `port`:
/// it counts nothing, so opens of one host run concurrently on Sui.
public(package) fun admit(host: &Host, port: u16, client: address): Sla {
    assert!(host.services.contains(port), EServiceNotFound);
    assert!(host.permits(client), EFirewallDenied);
    host.services.borrow(port).sla
}

// === Reading ===

/// Whether the firewall lets `client` open connections (the connection limits are the
/// host's admission's). At most two table lookups, whatever the lists' lengths.
public fun permits(host: &Host, client: address): bool {
    let fw = &host.firewall;
    if (fw.deny.contains(client)) return false;
    fw.mode == MODE_ALLOW_ALL || fw.allow.contains(client)
}

public fun authority(host: &Host): address { host.authority }

public fun noise_static_key(host: &Host): vector<u8> { host.noise_static_key }

public fun endpoints(host: &Host): vector<vector<u8>> { host.endpoints }

public fun has_service(host: &Host, port: u16): bool { host.services.contains(port) }

public fun service(host: &Host, port: u16): Service {
    assert!(host.services.contains(port), EServiceNotFound);
    *host.services.borrow(port)
}

/// Services the host publishes.
public fun service_count(host: &Host): u64 { host.services.length() }

public fun firewall(host: &Host): &Firewall { &host.firewall }

public fun service_kind(service: &Service): String { service.kind }

public fun service_sla(service: &Service): Sla { service.sla }

public fun service_max_connections(service: &Service): u64 { service.max_connections }

public fun price_per_kib(sla: &Sla): u64 { sla.price_per_kib }

public fun price_per_request(sla: &Sla): u64 { sla.price_per_request }

public fun min_deposit(sla: &Sla): u64 { sla.min_deposit }

public fun half_close_timeout_ms(sla: &Sla): u64 { sla.half_close_timeout_ms }

public fun default_half_close_timeout_ms(): u64 { DEFAULT_HALF_CLOSE_TIMEOUT_MS }

public fun min_half_close_timeout_ms(): u64 { MIN_HALF_CLOSE_TIMEOUT_MS }

public fun max_half_close_timeout_ms(): u64 { MAX_HALF_CLOSE_TIMEOUT_MS }

public fun firewall_mode(fw: &Firewall): u8 { fw.mode }

public fun is_allowed(fw: &Firewall, client: address): bool { fw.allow.contains(client) }

public fun is_denied(fw: &Firewall, client: address): bool { fw.deny.contains(client) }

/// Addresses on the allow list.
public fun allow_count(fw: &Firewall): u64 { fw.allow.length() }

/// Addresses on the deny list.
public fun deny_count(fw: &Firewall): u64 { fw.deny.length() }

public fun max_connections_per_client(fw: &Firewall): u64 { fw.max_connections_per_client }

public fun max_bytes_per_sec(fw: &Firewall): u64 { fw.max_bytes_per_sec }

public fun max_requests_per_sec(fw: &Firewall): u64 { fw.max_requests_per_sec }

public fun mode_allow_all(): u8 { MODE_ALLOW_ALL }

public fun mode_allow_listed(): u8 { MODE_ALLOW_LISTED }

public fun max_firewall_entries(): u64 { MAX_FIREWALL_ENTRIES }

// === Internal ===

fun assert_authority(host: &Host, ctx: &TxContext) {
    assert!(ctx.sender() == host.authority, ENotAuthority);
}

fun assert_noise_key(key: &vector<u8>) {
    assert!(key.length() == NOISE_KEY_LENGTH, EInvalidNoiseKey);
    // X25519 ignores the top bit of the last byte, so both encodings of a point count.
    let mut point = *key;
    let last = point.pop_back();
    point.push_back(last & 0x7f);
    let low_order = low_order_points();
    assert!(!low_order.contains(&point), EInvalidNoiseKey);
}

/// The Curve25519 u-coordinates of small order (0, 1, the two of order 8, p - 1, p,
/// p + 1; libsodium's list). X25519 with any of them gives the all-zero shared secret,
/// which the Noise handshake refuses, so a host publishing one could never be reached.
fun low_order_points(): vector<vector<u8>> {
    vector[
        x"0000000000000000000000000000000000000000000000000000000000000000",
        x"0100000000000000000000000000000000000000000000000000000000000000",
        x"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        x"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        x"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        x"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        x"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ]
}

fun assert_endpoints(endpoints: &vector<vector<u8>>) {
    assert!(endpoints.length() <= MAX_ENDPOINTS, ETooManyEndpoints);
    let mut i = 0;
    while (i < endpoints.length()) {
        assert!(endpoints.borrow(i).length() <= MAX_ENDPOINT_LENGTH, ETooManyEndpoints);
        i = i + 1;
    };
}

/// Add `client` to a firewall list: a no-op if it is there, `EFirewallListFull` if the
/// list holds `MAX_FIREWALL_ENTRIES` others.
fun add_entry(list: &mut Table<address, bool>, client: address) {
    if (!list.contains(client)) {
        assert!(list.length() < MAX_FIREWALL_ENTRIES, EFirewallListFull);
        list.add(client, true);
    }
}

/// Take `client` off a firewall list (a no-op if it is not there).
fun remove_entry(list: &mut Table<address, bool>, client: address) {
    if (list.contains(client)) {
        list.remove(client);
    }
}

fun emit_updated(host: &Host, change: u8) {
    event::emit(HostUpdated { host: object::id(host), change });
}

// === Test-only ===

/// Put `count` addresses (`first`, `first + 1`, ...) on the deny list (`deny`) or the
/// allow list through the same `add_entry` as `deny`/`allow`, without their events: a
/// test fills a list to its bound at a fraction of the cost of that many calls.
#[test_only]
public fun fill_firewall_list_for_testing(host: &mut Host, deny: bool, first: u64, count: u64) {
    let list = if (deny) &mut host.firewall.deny else &mut host.firewall.allow;
    let mut i = 0;
    while (i < count) {
        add_entry(list, sui::address::from_u256(((first + i) as u256)));
        i = i + 1;
    };
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `host` was made by or last migrated to.
public fun package_version(host: &Host): u64 { host.version }

/// Abort with `version::EWrongVersion` unless `host` is of this package's version.
public(package) fun check_version(host: &Host) { version::check(host.version) }

/// The admin migrates `host` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate(_: &AdminCap, host: &mut Host) {
    host.version = version::migrate(object::id(host), host.version);
}

#[test_only]
public fun set_version_for_testing(host: &mut Host, v: u64) { host.version = v; }
