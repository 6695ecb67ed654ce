"""LocalLedger's calls of the versioned objects (:class:`~dtp.ledger._versions.Versions`,
docs/escrow.md "Versions"): the package's AdminCap, each object's version, and
``migrate``.

The embedded ledger has no publish and no upgrade, so it stands in for both:
:meth:`VersionCalls.create_admin_cap` is what ``version::init`` does at publish, and a
handle opened with ``LocalLedger(path, package_version=N)`` runs the code of package
version N -- the objects it creates record N, and it refuses those of any other version
until they are migrated. Two handles on one file with versions 1 and 2 are the package
before and after an upgrade that raised the version.
"""

from __future__ import annotations

import hashlib

from dtp.errors import InvalidArgument, WrongObject
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import check_signer, normalize_id
from dtp.ledger._versions import ADMIN_CAP, MIGRATE, VERSIONED, stored_version
from dtp.ledger.local import rules
from dtp.ledger.local._store import LocalStore
from dtp.ledger.local._stored import SqlStore, not_found

__all__ = ["VersionCalls", "admin_cap_digest"]

_ADMIN_CAP_TYPE = rules.OBJECT_TYPES[ADMIN_CAP]


def admin_cap_digest(package_id: str) -> bytes:
    """The digest of the transaction that makes a file's AdminCap (one per package)."""
    return hashlib.blake2b(
        b"dtp/admin-cap" + bytes.fromhex(package_id[2:]), digest_size=32
    ).digest()


class VersionCalls(LocalStore):
    """The AdminCap, :meth:`recorded_version` and :meth:`migrate` on a LocalLedger file."""

    def create_admin_cap(self, publisher: HostIdentity | str) -> str:
        """The package's ``AdminCap``, owned by ``publisher`` (an identity or an
        address), as ``version::init`` makes it for whoever publishes the package: the
        embedded ledger's stand-in for publishing. A file has at most one
        (InvalidArgument for a second). Returns its ID."""
        owner = publisher.sui_address if isinstance(publisher, HostIdentity) else publisher
        owner = normalize_id(owner, "address")
        if self.admin_cap() is not None:
            raise InvalidArgument(f"The ledger {self.path} has its AdminCap already.")
        digest = admin_cap_digest(self.package_id)
        result = self.apply_verified(owner, digest, lambda x: x.create(ADMIN_CAP, owner, {}))
        return str(result.value)

    def admin_cap(self) -> str | None:
        def read() -> str | None:
            row = self._db.execute(
                "SELECT id FROM objects WHERE type = ? LIMIT 1", (_ADMIN_CAP_TYPE,)
            ).fetchone()
            return None if row is None else str(row[0])

        return self._read_one(read)

    def recorded_version(self, object_id: str) -> tuple[str, int]:
        object_id = normalize_id(object_id)

        def read() -> tuple[str, int]:
            row = SqlStore(self._db).load(object_id)
            if row is None:
                raise not_found(object_id, None, None)
            struct = row[0].rsplit("::", 1)[-1]
            if struct not in VERSIONED:
                raise WrongObject(f"Object {object_id} is a {struct}: it records no version.")
            try:
                return struct, stored_version(row[3])
            except TypeError as exc:
                raise rules.wrong_shape(f"object {object_id}", exc) from exc

        return self._read_one(read)

    def migrate(self, signer: HostIdentity, object_id: str, *, admin_cap: str | None = None) -> int:
        check_signer(signer)
        struct, _ = self.recorded_version(object_id)
        cap = admin_cap if admin_cap is not None else self.admin_cap()
        if cap is None:
            raise InvalidArgument(
                f"The ledger {self.path} has no AdminCap to migrate with (create_admin_cap)."
            )
        module, function = MIGRATE[struct]
        result = self._call(signer, module, function, self._id(cap), self._id(object_id))
        return int(result.value)
