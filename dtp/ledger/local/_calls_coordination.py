"""LocalLedger's calls of ``dtp::registry`` (leases, fenced writes; docs/escrow.md §21), as
a mixin."""

from __future__ import annotations

from dtp.errors import ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._coordination import RegistryState, text
from dtp.ledger._objects import as_bytes, normalize_id
from dtp.ledger.local import rules
from dtp.ledger.local._call_arguments import u64
from dtp.ledger.local._store import LocalStore
from dtp.ledger.local._stored import SHAPE_ERRORS, SqlStore


class CoordinationCalls(LocalStore):
    """Registries: leases with fencing tokens and fenced writes (``dtp::registry``)."""

    def create_registry(self, signer: HostIdentity) -> str:
        return str(self._call(signer, "registry", "create").value)

    def registry_admit(self, signer: HostIdentity, registry_id: str, member: str) -> None:
        self._call(
            signer, "registry", "admit", self._id(registry_id), self._id(member, "member address")
        )

    def registry_revoke(self, signer: HostIdentity, registry_id: str, member: str) -> None:
        self._call(
            signer, "registry", "revoke", self._id(registry_id), self._id(member, "member address")
        )

    def acquire_lease(
        self, signer: HostIdentity, registry_id: str, name: str, holder: str, duration_ms: int
    ) -> int:
        result = self._call(
            signer,
            "registry",
            "acquire",
            self._id(registry_id),
            text(name, "lease name"),
            text(holder, "holder"),
            u64(duration_ms, "duration_ms"),
        )
        return int(result.value)

    def renew_lease(
        self, signer: HostIdentity, registry_id: str, name: str, token: int, duration_ms: int
    ) -> int:
        result = self._call(
            signer,
            "registry",
            "renew",
            self._id(registry_id),
            text(name, "lease name"),
            u64(token, "token"),
            u64(duration_ms, "duration_ms"),
        )
        (renewed,) = [e.fields for e in result.events if e.name == "LeaseRenewed"]
        return int(renewed["expires_at_ms"])

    def release_lease(self, signer: HostIdentity, registry_id: str, name: str, token: int) -> None:
        self._call(
            signer,
            "registry",
            "release",
            self._id(registry_id),
            text(name, "lease name"),
            u64(token, "token"),
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
        result = self._call(
            signer,
            "registry",
            "put",
            self._id(registry_id),
            text(name, "lease name"),
            u64(token, "token"),
            text(key, "key"),
            as_bytes(value, "value"),
        )
        (put,) = [e.fields for e in result.events if e.name == "ValuePut"]
        return int(put["version"])

    def registry_remove(
        self, signer: HostIdentity, registry_id: str, name: str, token: int, key: str
    ) -> None:
        self._call(
            signer,
            "registry",
            "remove",
            self._id(registry_id),
            text(name, "lease name"),
            u64(token, "token"),
            text(key, "key"),
        )

    def get_registry(self, registry_id: str) -> RegistryState:
        object_id = normalize_id(registry_id)

        def read() -> RegistryState:
            row = SqlStore(self._db).load(object_id)
            if row is None or row[0] != rules.OBJECT_TYPES["Registry"]:
                raise ObjectNotFound(f"No Registry with ID {object_id} exists.")
            _type, _owner, version, data = row
            try:
                return RegistryState.from_fields(object_id, version, data)
            except SHAPE_ERRORS as exc:
                raise rules.wrong_shape(f"object {object_id}", exc) from exc

        return self._read_one(read)
