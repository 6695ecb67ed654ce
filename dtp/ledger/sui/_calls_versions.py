"""SuiLedger's calls of the versioned objects (:class:`~dtp.ledger._versions.Versions`,
docs/escrow.md "Versions", docs/sui.md "Upgrading the package"): an object's version,
read from its contents (the ``version`` field follows the ``id``, so its eight bytes are
at offset 32 of every versioned struct's BCS), and ``migrate`` with the AdminCap that
``dtp deploy`` recorded (``SuiConfig.admin_cap``)."""

from __future__ import annotations

from dtp.errors import InvalidArgument, ObjectNotFound, WrongObject
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import check_signer, owned_by_another
from dtp.ledger._versions import ADMIN_CAP, MIGRATE, VERSIONED
from dtp.ledger.sui import _tx_versions as tx
from dtp.ledger.sui._client import MalformedResponse, NodeObject
from dtp.ledger.sui._ledger import SuiLedgerCore
from dtp.ledger.sui._tx import OwnedRef

__all__ = ["VersionCalls"]

#: Bytes of the ``id`` every struct starts with: the ``version`` u64 follows.
_ID_BYTES = 32


class VersionCalls(SuiLedgerCore):
    """``recorded_version``, ``admin_cap`` and ``migrate`` on a Sui network."""

    @property
    def package_version(self) -> int:  # type: ignore[override]
        return self.config.package_version

    def admin_cap(self) -> str | None:
        return self.config.admin_cap

    def recorded_version(self, object_id: str) -> tuple[str, int]:
        obj, struct = self._versioned(object_id)
        raw = obj.contents[_ID_BYTES : _ID_BYTES + 8]
        if len(raw) != 8:
            raise MalformedResponse(f"The node sent {struct} {obj.object_id} without its version.")
        return struct, int.from_bytes(raw, "little")

    def migrate(self, signer: HostIdentity, object_id: str, *, admin_cap: str | None = None) -> int:
        check_signer(signer)
        cap_id = admin_cap if admin_cap is not None else self.admin_cap()
        if cap_id is None:
            raise InvalidArgument(
                "No AdminCap to migrate with: dtp deploy records the one publishing made "
                "(or set DTP_SUI_ADMIN_CAP, --admin-cap)."
            )
        obj, struct = self._versioned(object_id)
        cap = self._admin_cap_ref(signer, cap_id)
        target = self._shared_ref(obj.object_id, struct, lambda: obj)
        out = self._execute(
            signer,
            "::".join(MIGRATE[struct]),
            lambda ctx: tx.migrate(ctx, struct, cap, target),
        )
        return int(out.event("ObjectMigrated")["to_version"])

    def _versioned(self, object_id: str) -> tuple[NodeObject, str]:
        obj, struct = self._dtp_object(object_id, "object")
        if struct not in VERSIONED:
            raise WrongObject(f"Object {obj.object_id} is a {obj.type}: it records no version.")
        return obj, struct

    def _admin_cap_ref(self, signer: HostIdentity, cap_id: str) -> OwnedRef:
        obj, struct = self._dtp_object(cap_id, ADMIN_CAP)
        if struct != ADMIN_CAP or not obj.type.endswith(f"::version::{ADMIN_CAP}"):
            raise ObjectNotFound(f"Object {obj.object_id} is a {obj.type}, not the AdminCap.")
        sender = signer.sui_address
        if obj.owner != sender:
            raise owned_by_another(ADMIN_CAP, obj.object_id, obj.owner, sender, "migrate")
        return obj.owned_ref()

    def _dtp_object(self, object_id: str, what: str) -> tuple[NodeObject, str]:
        """The object and its struct's name ("" for a type not of this package)."""
        obj, short = self._fetch(object_id, what)
        return obj, short.rsplit("::", 1)[-1] if short is not None else ""
