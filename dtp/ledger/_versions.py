"""Versioned shared objects (docs/escrow.md "Versions", ``move/dtp/sources/version.move``):
the package version this code is, the objects that record one, and where each one's
``migrate`` is.

Every shared object of the package records the version of the package that made it or
last migrated it (the Move field ``version``; the typed views call it
``package_version``, their ``version`` being the object's Sui version), and every entry
function that takes one refuses another version (``version::EWrongVersion``). After an
upgrade that raises the version, the holder of the ``AdminCap`` migrates the objects
(``Ledger.migrate``, ``dtp migrate``); until then the new package refuses them, and from
then on the old one does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = [
    "ADMIN_CAP",
    "MIGRATE",
    "MIGRATE_BUILDERS",
    "PACKAGE_VERSION",
    "VERSIONED",
    "Versions",
    "created_objects",
    "stored_version",
]

#: ``version::VERSION``: the package version this code is (the SDK builds calls to it).
PACKAGE_VERSION: Final = 1

#: The struct of the capability that migrates (``dtp::version::AdminCap``).
ADMIN_CAP: Final = "AdminCap"

#: Each versioned struct -> (its module, its ``migrate`` function).
MIGRATE: Final[Mapping[str, tuple[str, str]]] = {
    "Host": ("host", "migrate"),
    "SpendingCap": ("spending_cap", "migrate"),
    "TransportControl": ("transport_control", "migrate"),
    "Escrow": ("escrow", "migrate"),
    "Broadcast": ("broadcast", "migrate"),
    "SubscriptionOffer": ("subscription", "migrate_offer"),
    "Subscription": ("subscription", "migrate_subscription"),
    "SponsorPool": ("sponsor", "migrate_pool"),
    "SponsorLane": ("sponsor", "migrate_lane"),
    "TicketSale": ("tickets", "migrate"),
    "RetentionTerms": ("retention", "migrate_terms"),
    "RetainedRecord": ("retention", "migrate_record"),
    "Registry": ("registry", "migrate"),
    "ResponseEscrow": ("response_escrow", "migrate"),
}

#: The package's shared object structs: each records a version.
VERSIONED: Final = frozenset(MIGRATE)

#: Each versioned struct -> the name of its migration's builder and golden vector
#: (``dtp.ledger.sui._tx_versions``): ``migrate_`` and the struct in snake case.
MIGRATE_BUILDERS: Final[Mapping[str, str]] = {
    struct: "migrate_" + re.sub(r"(?<!^)(?=[A-Z])", "_", struct).lower() for struct in MIGRATE
}


def stored_version(data: Mapping[str, Any]) -> int:
    """The version an object's fields record: 1 for one a LocalLedger file kept from
    before objects recorded it (the package's first version made it)."""
    version = data.get("version", 1)
    if type(version) is not int:
        raise TypeError(f"version is {version!r:.40}, not an integer")
    return version


#: The events that name the objects a transaction created, and the fields naming them:
#: what ``dtp migrate --all`` reads to find every versioned object of a ledger.
_CREATED_BY: Final[Mapping[str, tuple[str, ...]]] = {
    "HostCreated": ("host",),
    "SpendingCapCreated": ("cap",),
    "ConnectionOpened": ("connection", "escrow"),
    "BroadcastCreated": ("broadcast",),
    "SubscriptionOfferCreated": ("offer",),
    "Subscribed": ("subscription",),
    "SponsorPoolCreated": ("pool", "lanes"),
    "TicketSaleCreated": ("sale",),
    "RetentionTermsCreated": ("terms",),
    "RecordRetained": ("record",),
    "RegistryCreated": ("registry",),
    "ResponseFeeDeposited": ("escrow",),
}


def created_objects(events: Iterable[Any]) -> list[str]:
    """The IDs of the versioned objects the creation events among ``events`` name (each
    an :class:`~dtp.ledger._objects.Event`), first seen first, once each."""
    found: dict[str, None] = {}
    for event in events:
        for field in _CREATED_BY.get(event.name, ()):
            value = event.fields.get(field)
            for object_id in value if isinstance(value, list | tuple) else [value]:
                if isinstance(object_id, str):
                    found.setdefault(object_id, None)
    return list(found)


class Versions:
    """The versioned objects' calls of a :class:`~dtp.ledger.interface.Ledger`. Not
    abstract: a ledger written before them keeps working (each raises
    NotImplementedError)."""

    #: The package version whose code the ledger calls (``version::VERSION``).
    package_version: int = PACKAGE_VERSION

    def admin_cap(self) -> str | None:
        """The ID of the package's ``AdminCap`` as this ledger knows it (SuiLedger: its
        configuration's, as ``dtp deploy`` recorded it; LocalLedger: the one
        ``create_admin_cap`` made), or None."""
        return None

    def recorded_version(self, object_id: str) -> tuple[str, int]:
        """(struct, the package version it records) of the versioned object
        ``object_id``; ObjectNotFound for an ID not on the ledger (or deleted),
        WrongObject for an object of no versioned struct."""
        raise NotImplementedError(f"{type(self).__name__} has no versioned objects")

    def migrate(self, signer: HostIdentity, object_id: str, *, admin_cap: str | None = None) -> int:
        """``migrate`` of the object's module (``host::migrate``, ``sponsor::migrate_pool``,
        ...): the holder of the AdminCap (``admin_cap``, by default :meth:`admin_cap`)
        moves the object to the package's version; ``version::ENotUpgrade`` for one at it
        or past it. Returns the version it records now."""
        raise NotImplementedError(f"{type(self).__name__} cannot migrate objects")
