/// The package's version, and what retires an old one after an upgrade: Sui's versioned
/// shared objects.
///
/// On Sui an upgrade publishes a new package beside the old one, and the old one's entry
/// functions stay callable for ever. So every shared object of this package records the
/// version of the package that made it, or that last migrated it (`version`, right after
/// `id`), and every entry function that takes such an object -- by `&`, `&mut` or by
/// value -- first refuses one of another version (`EWrongVersion`). After an upgrade
/// that raises `VERSION`, the admin migrates each object (`migrate` of its module, with
/// the `AdminCap`); from then on only the new package's functions take it, and a fix the
/// upgrade shipped cannot be bypassed through the old one. Until it is migrated an object
/// is served by the old package alone. Migration only goes forward (`ENotUpgrade`). See
/// docs/escrow.md "Versions" and docs/sui.md "Upgrading the package".
module dtp::version;

use sui::event;

// === Errors ===

#[error(code = 243)]
const EWrongVersion: vector<u8> = b"The object is of another version of the package: call the package of its version, or migrate it";
#[error(code = 244)]
const ENotUpgrade: vector<u8> = b"The object is already at this version of the package, or a later one";

// === Constants ===

/// This package's version: raised by the upgrade that must retire the previous one.
const VERSION: u64 = 1;

// === Objects ===

/// The right to migrate the package's shared objects to its current version: made once,
/// at publish, for the publisher (it keeps its type, and so its power, across upgrades).
public struct AdminCap has key, store {
    id: UID,
}

// === Events ===

public struct ObjectMigrated has copy, drop {
    object: ID,
    from_version: u64,
    to_version: u64,
}

fun init(ctx: &mut TxContext) {
    transfer::transfer(AdminCap { id: object::new(ctx) }, ctx.sender());
}

// === Package ===

/// The version a new object records.
public fun current(): u64 { VERSION }

/// Abort with `EWrongVersion` unless `recorded` (an object's version) is this package's.
public(package) fun check(recorded: u64) {
    assert!(recorded == VERSION, EWrongVersion);
}

/// The migration of the object `id`, now at version `recorded`, to this package's
/// version, which the caller records: only forward (`ENotUpgrade` for an object at this
/// version or past it). Event `ObjectMigrated`.
public(package) fun migrate(id: ID, recorded: u64): u64 {
    assert!(recorded < VERSION, ENotUpgrade);
    event::emit(ObjectMigrated { object: id, from_version: recorded, to_version: VERSION });
    VERSION
}

// === Tests ===

/// `init`, as publishing runs it, for the unit tests.
#[test_only]
public fun init_for_testing(ctx: &mut TxContext) {
    init(ctx)
}
