"""SuiLedger's calls of ``dtp::registry`` (leases, fenced writes; docs/escrow.md §21), as a
mixin. Each call's result (a token, an expiry, a version) is read from its event: a Move
call's return value does not reach the transaction's effects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dtp.errors import ObjectNotFound
from dtp.ledger._coordination import RegistryState, text
from dtp.ledger._objects import check_signer, normalize_id
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._client import NodeObject
from dtp.ledger.sui._coordination import decode_registry
from dtp.ledger.sui._effects import short_type
from dtp.ledger.sui._ledger import SuiLedgerCore
from dtp.ledger.sui._tx import SharedRef

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity


class CoordinationCalls(SuiLedgerCore):
    """Registries: leases with fencing tokens and fenced writes (``dtp::registry``)."""

    def _registry_object(self, registry_id: str) -> NodeObject:
        obj = self._node.get_object(normalize_id(registry_id))
        if short_type(obj.type, self._packages) != "dtp::registry::Registry":
            raise ObjectNotFound(f"Object {obj.object_id} is a {obj.type}, not a Registry.")
        return obj

    def _registry_ref(self, registry_id: str) -> SharedRef:
        return self._shared_ref(registry_id, "Registry", lambda: self._registry_object(registry_id))

    def create_registry(self, signer: HostIdentity) -> str:
        check_signer(signer)
        out = self._execute(signer, "registry::create", sui_tx.create_registry)
        return str(out.event("RegistryCreated")["registry"])

    def _member_call(self, signer: HostIdentity, registry_id: str, member: str, fn: str) -> None:
        check_signer(signer)
        who = normalize_id(member, "member address")
        ref = self._registry_ref(registry_id)
        build = sui_tx.COORDINATION_BUILDERS[f"registry_{fn}"]
        self._execute(signer, f"registry::{fn}", lambda ctx: build(ctx, ref, who))

    def registry_admit(self, signer: HostIdentity, registry_id: str, member: str) -> None:
        self._member_call(signer, registry_id, member, "admit")

    def registry_revoke(self, signer: HostIdentity, registry_id: str, member: str) -> None:
        self._member_call(signer, registry_id, member, "revoke")

    def acquire_lease(
        self, signer: HostIdentity, registry_id: str, name: str, holder: str, duration_ms: int
    ) -> int:
        check_signer(signer)
        raw, label = text(name, "lease name"), text(holder, "holder")
        self._amount(duration_ms, "duration_ms")
        ref = self._registry_ref(registry_id)
        out = self._execute(
            signer,
            "registry::acquire",
            lambda ctx: sui_tx.acquire_lease(ctx, ref, raw, label, duration_ms),
        )
        return int(out.event("LeaseAcquired")["token"])

    def renew_lease(
        self, signer: HostIdentity, registry_id: str, name: str, token: int, duration_ms: int
    ) -> int:
        check_signer(signer)
        raw = text(name, "lease name")
        self._amount(token, "token")
        self._amount(duration_ms, "duration_ms")
        ref = self._registry_ref(registry_id)
        out = self._execute(
            signer,
            "registry::renew",
            lambda ctx: sui_tx.renew_lease(ctx, ref, raw, token, duration_ms),
        )
        return int(out.event("LeaseRenewed")["expires_at_ms"])

    def release_lease(self, signer: HostIdentity, registry_id: str, name: str, token: int) -> None:
        check_signer(signer)
        raw = text(name, "lease name")
        self._amount(token, "token")
        ref = self._registry_ref(registry_id)
        self._execute(
            signer, "registry::release", lambda ctx: sui_tx.release_lease(ctx, ref, raw, token)
        )

    def registry_put(
        self,
        signer: HostIdentity,
        registry_id: str,
        name: str,
        token: int,
        key: str,
        value: bytes,
    ) -> int:
        check_signer(signer)
        raw, raw_key = text(name, "lease name"), text(key, "key")
        data = sui_tx.as_bytes(value, "value")
        self._amount(token, "token")
        ref = self._registry_ref(registry_id)
        out = self._execute(
            signer,
            "registry::put",
            lambda ctx: sui_tx.registry_put(ctx, ref, raw, token, raw_key, data),
        )
        return int(out.event("ValuePut")["version"])

    def registry_remove(
        self, signer: HostIdentity, registry_id: str, name: str, token: int, key: str
    ) -> None:
        check_signer(signer)
        raw, raw_key = text(name, "lease name"), text(key, "key")
        self._amount(token, "token")
        ref = self._registry_ref(registry_id)
        self._execute(
            signer,
            "registry::remove",
            lambda ctx: sui_tx.registry_remove(ctx, ref, raw, token, raw_key),
        )

    def get_registry(self, registry_id: str) -> RegistryState:
        obj = self._registry_object(registry_id)
        return decode_registry(obj.version, obj.contents)
