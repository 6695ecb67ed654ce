"""Coordination on the ledger (``dtp::registry``; docs/coordination.md, docs/escrow.md §21):
leases with fencing tokens and a small key-value registry, the typed view of a
``Registry`` and the ledger methods behind them.

:class:`Coordination` is mixed into :class:`~dtp.ledger.interface.Ledger`; its calls are
made through the ledger's ``_move`` (NotImplementedError for a ledger without one).
The servers' side, leases that renew themselves, locks and watches, is
:mod:`dtp.messaging.coordination`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from dtp.errors import InvalidArgument
from dtp.ledger._move_call import Id, MoveCall, MoveCaller, u64
from dtp.ledger._objects import as_bytes, check_signer, normalize_id
from dtp.ledger._versions import stored_version

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = [
    "MAX_KEYS",
    "MAX_LEASE_MS",
    "MAX_MEMBERS",
    "MAX_NAMES",
    "MAX_NAME_LEN",
    "MAX_VALUE_LEN",
    "Coordination",
    "LeaseState",
    "RegistryEntry",
    "RegistryState",
    "text",
]

#: Longest lease (``registry::MAX_LEASE_MS``, 1 hour).
MAX_LEASE_MS: Final = 3_600_000
#: Longest lease name, key or holder label (bytes of UTF-8).
MAX_NAME_LEN: Final = 64
#: Longest value (bytes).
MAX_VALUE_LEN: Final = 512
#: Most lease names, keys and members of one registry.
MAX_NAMES: Final = 64
MAX_KEYS: Final = 256
MAX_MEMBERS: Final = 64

# where SuiLedger reads the calls' results (MoveCall.result)
_ACQUIRED: Final = "LeaseAcquired.token"
_RENEWED: Final = "LeaseRenewed.expires_at_ms"
_DURATION: Final = "duration_ms"


@dataclass(frozen=True)
class LeaseState:
    """One name's lease as the ledger holds it: its current (or last) tenure."""

    name: str
    #: The holder's label (``Lease.holder``), as it acquired the lease.
    holder: bytes
    #: The address that acquired it, the only one that may renew, release or write.
    owner: str
    #: The fencing token of this tenure.
    token: int
    #: Ledger clock time the lease ends at; 0 once released.
    expires_at_ms: int

    def held_at(self, now_ms: int) -> bool:
        """Whether the lease stands at ledger time ``now_ms`` (the Move rule: ``now <
        expires_at_ms``)."""
        return now_ms < self.expires_at_ms


@dataclass(frozen=True)
class RegistryEntry:
    """One key's value and the fenced write that set it."""

    key: str
    value: bytes
    #: The lease the write was made under, and its token.
    name: str
    token: int
    #: 1 for the key's first write, one more at each later one.
    version: int


@dataclass(frozen=True)
class RegistryState:
    """A ``dtp::registry::Registry`` as read at one object version."""

    object_id: str
    version: int
    owner: str
    members: tuple[str, ...]
    leases: Mapping[str, LeaseState] = field(default_factory=dict)
    entries: Mapping[str, RegistryEntry] = field(default_factory=dict)
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    @classmethod
    def from_fields(cls, object_id: str, version: int, d: Mapping[str, Any]) -> RegistryState:
        """The view from the Move fields (LocalLedger's data, or the decoded BCS)."""
        leases = {
            str(name): LeaseState(
                str(name),
                bytes(v["holder"]),
                str(v["owner"]),
                int(v["token"]),
                int(v["expires_at_ms"]),
            )
            for name, v in d["leases"].items()
        }
        entries = {
            str(key): RegistryEntry(
                str(key), bytes(v["value"]), str(v["name"]), int(v["token"]), int(v["version"])
            )
            for key, v in d["entries"].items()
        }
        return cls(
            object_id,
            version,
            str(d["owner"]),
            tuple(str(m) for m in d["members"]),
            leases,
            entries,
            stored_version(d),
        )

    def is_member(self, address: str) -> bool:
        """Whether ``address`` may acquire leases and write (the owner or a member)."""
        return address == self.owner or address in self.members


def text(value: str, what: str) -> bytes:
    """The UTF-8 of a name, key or holder label (a ``str``; Move checks the length)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"The {what} must be a str, got {type(value).__name__}.")
    try:
        return value.encode()
    except UnicodeEncodeError:
        # a lone surrogate: no UTF-8 exists for it
        raise InvalidArgument(f"The {what} {value!r:.40} has no UTF-8 form.") from None


class Coordination(MoveCaller):
    """Ledger methods of ``dtp::registry``, one per entry function (docs/escrow.md §21).
    Names and keys are text (at most ``MAX_NAME_LEN`` bytes of UTF-8), a holder label
    text of at most as many bytes, a value bytes (at most ``MAX_VALUE_LEN``)."""

    def create_registry(self, signer: HostIdentity) -> str:
        """``registry::create``: an empty registry owned by the signer. Returns its ID."""
        check_signer(signer)
        call = MoveCall("registry", "create", (), 0, "RegistryCreated.registry")
        return str(self._move(signer, call))

    def registry_admit(self, signer: HostIdentity, registry_id: str, member: str) -> None:
        """``registry::admit`` (owner): let the address ``member`` take leases and write."""
        self._on_members(signer, registry_id, member, "admit")

    def registry_revoke(self, signer: HostIdentity, registry_id: str, member: str) -> None:
        """``registry::revoke`` (owner): stop ``member`` acquiring, renewing and writing."""
        self._on_members(signer, registry_id, member, "revoke")

    def acquire_lease(
        self, signer: HostIdentity, registry_id: str, name: str, holder: str, duration_ms: int
    ) -> int:
        """``registry::acquire``: take the lease ``name`` for ``duration_ms`` if it is free
        or expired (else :class:`~dtp.errors.LeaseHeld`). Returns its fencing token."""
        check_signer(signer)
        lease = (text(name, "lease name"), text(holder, "holder"), u64(duration_ms, _DURATION))
        args = (Id(registry_id), *lease)
        return int(self._move(signer, MoveCall("registry", "acquire", args, 0, _ACQUIRED)))

    def renew_lease(
        self, signer: HostIdentity, registry_id: str, name: str, token: int, duration_ms: int
    ) -> int:
        """``registry::renew``: extend the lease held with ``token`` to ``now +
        duration_ms``; returns the new ``expires_at_ms``. :class:`~dtp.errors.FencedOut`
        once it expired or another tenure began."""
        check_signer(signer)
        lease = (text(name, "lease name"), u64(token, "token"), u64(duration_ms, _DURATION))
        args = (Id(registry_id), *lease)
        return int(self._move(signer, MoveCall("registry", "renew", args, 0, _RENEWED)))

    def release_lease(self, signer: HostIdentity, registry_id: str, name: str, token: int) -> None:
        """``registry::release``: give up the lease held with ``token`` (free at once)."""
        check_signer(signer)
        lease = (text(name, "lease name"), u64(token, "token"))
        self._move(signer, MoveCall("registry", "release", (Id(registry_id), *lease)))

    def registry_put(
        self,
        signer: HostIdentity,
        registry_id: str,
        name: str,
        token: int,
        key: str,
        value: bytes,
    ) -> int:
        """``registry::put``: set ``key`` under the lease ``name`` held with ``token``
        (fenced: :class:`~dtp.errors.FencedOut` for a token not the current one). Returns
        the key's new version."""
        check_signer(signer)
        raw, raw_key, data = text(name, "lease name"), text(key, "key"), as_bytes(value, "value")
        args = (Id(registry_id), raw, u64(token, "token"), raw_key, data)
        return int(self._move(signer, MoveCall("registry", "put", args, 0, "ValuePut.version")))

    def registry_remove(
        self, signer: HostIdentity, registry_id: str, name: str, token: int, key: str
    ) -> None:
        """``registry::remove``: delete ``key`` (nothing when absent), fenced as ``put``."""
        check_signer(signer)
        raw, raw_key = text(name, "lease name"), text(key, "key")
        args = (Id(registry_id), raw, u64(token, "token"), raw_key)
        self._move(signer, MoveCall("registry", "remove", args))

    def get_registry(self, registry_id: str) -> RegistryState:
        """The registry ``registry_id`` as the ledger holds it now."""
        raise NotImplementedError(f"{type(self).__name__} has no registry (dtp::registry)")

    def _on_members(self, signer: HostIdentity, registry_id: str, member: str, fn: str) -> None:
        check_signer(signer)
        who = Id(normalize_id(member, "member address"))
        self._move(signer, MoveCall("registry", fn, (Id(registry_id), who)))
