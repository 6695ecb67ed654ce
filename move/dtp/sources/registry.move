/// Coordination for off-chain servers: leader leases, locks with fencing tokens and a
/// small key-value registry, kept on the ledger so that no server runs a consensus
/// protocol of its own (docs/coordination.md; the rules in docs/escrow.md §21).
///
/// A `Registry` is a shared object created by its `owner`, who admits the members (the
/// servers' addresses) that may take leases and write in it. A lease is named: the first
/// member to `acquire` a name that is free (never taken, released, or expired by the
/// Clock) holds it until `expires_at_ms`, and gets a fencing token one above the name's
/// last. Tokens of a name strictly increase and are never reused, so a write carrying
/// an older token than the name's current one is refused (`EStaleToken`): a holder
/// that lost its lease without knowing it (a pause, a partition) cannot overwrite what
/// the next holder wrote. Every write (`put`, `remove`) names the lease it is made
/// under and its token, and must be made by that lease's holder while it stands.
///
/// The registry is small on purpose: at most `MAX_NAMES` leases, `MAX_KEYS` keys of at
/// most `MAX_VALUE` bytes and `MAX_MEMBERS` members, which keeps the object well under
/// Sui's object size limit and lets a reader fetch it whole in one request.
module dtp::registry;

use dtp::version::{Self, AdminCap};
use std::string::{Self, String};
use sui::clock::Clock;
use sui::event;
use sui::vec_map::{Self, VecMap};
use sui::vec_set::{Self, VecSet};

// === Errors ===

#[error(code = 130)]
const ENotRegistryOwner: vector<u8> = b"Only the registry's owner can do this";
#[error(code = 131)]
const ENotMember: vector<u8> = b"Sender is not a member of the registry";
#[error(code = 132)]
const EInvalidDuration: vector<u8> = b"A lease lasts from 1 ms to MAX_LEASE_MS";
#[error(code = 133)]
const ELeaseHeld: vector<u8> = b"The lease is held until it expires";
#[error(code = 134)]
const EStaleToken: vector<u8> = b"The fencing token is not the lease's current one";
#[error(code = 135)]
const ENotHolder: vector<u8> = b"Only the lease's holder can do this";
#[error(code = 136)]
const ELeaseExpired: vector<u8> = b"The lease has expired or was released";
#[error(code = 137)]
const EInvalidEntry: vector<u8> = b"A name or key is 1 to 64 bytes, a holder at most 64, a value at most 512";
#[error(code = 138)]
const ERegistryFull: vector<u8> = b"The registry already holds its most names, keys or members";
#[error(code = 139)]
const ENoLease: vector<u8> = b"No lease of this name exists";

// === Limits ===

/// Longest lease (1 hour): a holder that goes silent blocks its name this long at most.
const MAX_LEASE_MS: u64 = 3_600_000;
/// Longest name or key, and longest holder label (bytes).
const MAX_NAME_LEN: u64 = 64;
/// Longest value (bytes).
const MAX_VALUE_LEN: u64 = 512;
/// Most lease names, keys and members a registry holds.
const MAX_NAMES: u64 = 64;
const MAX_KEYS: u64 = 256;
const MAX_MEMBERS: u64 = 64;

// === Objects ===

/// One name's lease: its current (or last) tenure.
public struct Lease has copy, drop, store {
    /// The holder's label (a server's name), for readers.
    holder: vector<u8>,
    /// The address that acquired it: the only sender that may renew, release or write
    /// under it.
    owner: address,
    /// The fencing token of this tenure (1 for a name's first).
    token: u64,
    /// Clock time the lease ends at; 0 once released.
    expires_at_ms: u64,
}

/// One key's value and the write that set it.
public struct Entry has copy, drop, store {
    value: vector<u8>,
    /// The lease the write was made under, and its token.
    name: String,
    token: u64,
    /// 1 for the key's first write, one more at each later one.
    version: u64,
}

public struct Registry has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    owner: address,
    /// Addresses besides the owner that may acquire leases.
    members: VecSet<address>,
    leases: VecMap<String, Lease>,
    entries: VecMap<String, Entry>,
}

// === Events ===

public struct RegistryCreated has copy, drop {
    registry: ID,
    owner: address,
}

public struct MemberAdmitted has copy, drop {
    registry: ID,
    member: address,
}

public struct MemberRevoked has copy, drop {
    registry: ID,
    member: address,
}

public struct LeaseAcquired has copy, drop {
    registry: ID,
    name: String,
    holder: vector<u8>,
    owner: address,
    token: u64,
    expires_at_ms: u64,
}

public struct LeaseRenewed has copy, drop {
    registry: ID,
    name: String,
    token: u64,
    expires_at_ms: u64,
}

public struct LeaseReleased has copy, drop {
    registry: ID,
    name: String,
    token: u64,
}

public struct ValuePut has copy, drop {
    registry: ID,
    key: String,
    value: vector<u8>,
    name: String,
    token: u64,
    version: u64,
}

public struct ValueRemoved has copy, drop {
    registry: ID,
    key: String,
    name: String,
    token: u64,
}

// === Owner ===

/// Create and share an empty registry owned by the sender. Returns its ID.
public fun create(ctx: &mut TxContext): ID {
    let registry = Registry {
        id: object::new(ctx),
        version: version::current(),
        owner: ctx.sender(),
        members: vec_set::empty(),
        leases: vec_map::empty(),
        entries: vec_map::empty(),
    };
    let registry_id = object::id(&registry);
    event::emit(RegistryCreated { registry: registry_id, owner: registry.owner });
    transfer::share_object(registry);
    registry_id
}

/// Let `member` take leases and write (owner only; admitting a member twice changes
/// nothing). Aborts with `ERegistryFull` past `MAX_MEMBERS`.
public fun admit(registry: &mut Registry, member: address, ctx: &TxContext) {
    registry.check_version();
    assert!(ctx.sender() == registry.owner, ENotRegistryOwner);
    if (registry.members.contains(&member)) return;
    assert!(registry.members.size() < MAX_MEMBERS, ERegistryFull);
    registry.members.insert(member);
    event::emit(MemberAdmitted { registry: object::id(registry), member });
}

/// Stop `member` from acquiring, renewing or writing (owner only; idempotent). A lease
/// it holds runs out at its expiry; it may still release it.
public fun revoke(registry: &mut Registry, member: address, ctx: &TxContext) {
    registry.check_version();
    assert!(ctx.sender() == registry.owner, ENotRegistryOwner);
    if (!registry.members.contains(&member)) return;
    registry.members.remove(&member);
    event::emit(MemberRevoked { registry: object::id(registry), member });
}

// === Leases ===

/// Take the lease `name` for `duration_ms` when it is free: never taken, released, or
/// expired (`now >= expires_at_ms`), else `ELeaseHeld` (even for its own holder, which
/// renews instead). Returns the new fencing token, one above the name's last.
public fun acquire(
    registry: &mut Registry,
    name: vector<u8>,
    holder: vector<u8>,
    duration_ms: u64,
    clock: &Clock,
    ctx: &TxContext,
): u64 {
    registry.check_version();
    registry.assert_member(ctx.sender());
    assert_duration(duration_ms);
    assert_name(&name);
    assert!(holder.length() <= MAX_NAME_LEN, EInvalidEntry);
    let name = string::utf8(name);
    let now = clock.timestamp_ms();
    let token = if (registry.leases.contains(&name)) {
        let lease = registry.leases.get(&name);
        assert!(now >= lease.expires_at_ms, ELeaseHeld);
        lease.token + 1
    } else {
        assert!(registry.leases.size() < MAX_NAMES, ERegistryFull);
        registry.leases.insert(name, Lease { holder: vector[], owner: @0x0, token: 0, expires_at_ms: 0 });
        1
    };
    let expires_at_ms = now + duration_ms;
    let sender = ctx.sender();
    let lease = registry.leases.get_mut(&name);
    lease.holder = holder;
    lease.owner = sender;
    lease.token = token;
    lease.expires_at_ms = expires_at_ms;
    event::emit(LeaseAcquired {
        registry: object::id(registry),
        name,
        holder,
        owner: sender,
        token,
        expires_at_ms,
    });
    token
}

/// Extend the lease `name` held with `token` to `now + duration_ms`. Only its holder,
/// still a member, before it expires (an expired lease is acquired again, with a new
/// token).
public fun renew(
    registry: &mut Registry,
    name: vector<u8>,
    token: u64,
    duration_ms: u64,
    clock: &Clock,
    ctx: &TxContext,
) {
    registry.check_version();
    registry.assert_member(ctx.sender());
    assert_duration(duration_ms);
    let name = string::utf8(name);
    let now = clock.timestamp_ms();
    registry.assert_holding(&name, token, now, ctx.sender());
    let expires_at_ms = now + duration_ms;
    registry.leases.get_mut(&name).expires_at_ms = expires_at_ms;
    event::emit(LeaseRenewed { registry: object::id(registry), name, token, expires_at_ms });
}

/// Give up the lease `name` held with `token`: it is free at once. Only its holder
/// (even a revoked member, even after expiry); the name keeps its last token.
public fun release(registry: &mut Registry, name: vector<u8>, token: u64, ctx: &TxContext) {
    registry.check_version();
    let name = string::utf8(name);
    assert!(registry.leases.contains(&name), ENoLease);
    let lease = registry.leases.get_mut(&name);
    assert!(token == lease.token, EStaleToken);
    assert!(ctx.sender() == lease.owner, ENotHolder);
    lease.expires_at_ms = 0;
    event::emit(LeaseReleased { registry: object::id(registry), name, token });
}

// === Fenced writes ===

/// Set `key` to `value`, under the lease `name` held with `token`: refused with
/// `EStaleToken` when `token` is not the name's current one, `ENotHolder` for any
/// other sender than its holder, `ELeaseExpired` once it ran out.
public fun put(
    registry: &mut Registry,
    name: vector<u8>,
    token: u64,
    key: vector<u8>,
    value: vector<u8>,
    clock: &Clock,
    ctx: &TxContext,
) {
    registry.check_version();
    registry.assert_member(ctx.sender());
    assert_name(&key);
    assert!(value.length() <= MAX_VALUE_LEN, EInvalidEntry);
    let name = string::utf8(name);
    registry.assert_holding(&name, token, clock.timestamp_ms(), ctx.sender());
    let key = string::utf8(key);
    let version = if (registry.entries.contains(&key)) {
        registry.entries.get(&key).version + 1
    } else {
        assert!(registry.entries.size() < MAX_KEYS, ERegistryFull);
        1
    };
    let entry = Entry { value, name, token, version };
    if (version > 1) {
        *registry.entries.get_mut(&key) = entry;
    } else {
        registry.entries.insert(key, entry);
    };
    event::emit(ValuePut { registry: object::id(registry), key, value, name, token, version });
}

/// Delete `key` (nothing when absent), under the same fence as `put`.
public fun remove(
    registry: &mut Registry,
    name: vector<u8>,
    token: u64,
    key: vector<u8>,
    clock: &Clock,
    ctx: &TxContext,
) {
    registry.check_version();
    registry.assert_member(ctx.sender());
    assert_name(&key);
    let name = string::utf8(name);
    registry.assert_holding(&name, token, clock.timestamp_ms(), ctx.sender());
    let key = string::utf8(key);
    if (registry.entries.contains(&key)) {
        let (_, _) = registry.entries.remove(&key);
        event::emit(ValueRemoved { registry: object::id(registry), key, name, token });
    }
}

// === Reads ===

public fun owner(registry: &Registry): address { registry.owner }

/// Whether `who` may acquire leases and write (the owner or an admitted member).
public fun is_member(registry: &Registry, who: address): bool {
    who == registry.owner || registry.members.contains(&who)
}

/// The current (or last) fencing token of `name`; 0 when it was never taken.
public fun current_token(registry: &Registry, name: String): u64 {
    if (registry.leases.contains(&name)) registry.leases.get(&name).token else 0
}

/// Whether `name` is held at `clock`'s time.
public fun is_held(registry: &Registry, name: String, clock: &Clock): bool {
    registry.leases.contains(&name) &&
        clock.timestamp_ms() < registry.leases.get(&name).expires_at_ms
}

/// The value of `key`, if set.
public fun get(registry: &Registry, key: String): Option<vector<u8>> {
    if (registry.entries.contains(&key)) option::some(registry.entries.get(&key).value)
    else option::none()
}

// === Checks ===

fun assert_member(registry: &Registry, who: address) {
    assert!(registry.is_member(who), ENotMember);
}

fun assert_duration(duration_ms: u64) {
    assert!(duration_ms > 0 && duration_ms <= MAX_LEASE_MS, EInvalidDuration);
}

fun assert_name(name: &vector<u8>) {
    assert!(name.length() > 0 && name.length() <= MAX_NAME_LEN, EInvalidEntry);
}

/// `sender` holds `name` with `token` at `now`: the checks of every call made under a
/// lease, in this order.
fun assert_holding(registry: &Registry, name: &String, token: u64, now: u64, sender: address) {
    assert!(registry.leases.contains(name), ENoLease);
    let lease = registry.leases.get(name);
    assert!(token == lease.token, EStaleToken);
    assert!(sender == lease.owner, ENotHolder);
    assert!(now < lease.expires_at_ms, ELeaseExpired);
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `registry` was made by or last migrated to.
public fun package_version(registry: &Registry): u64 { registry.version }

/// Abort with `version::EWrongVersion` unless `registry` is of this package's version.
public(package) fun check_version(registry: &Registry) { version::check(registry.version) }

/// The admin migrates `registry` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate(_: &AdminCap, registry: &mut Registry) {
    registry.version = version::migrate(object::id(registry), registry.version);
}

#[test_only]
public fun set_version_for_testing(registry: &mut Registry, v: u64) { registry.version = v; }
