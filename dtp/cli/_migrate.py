"""``dtp migrate``: after an upgrade of the dtp package, the holder of its AdminCap moves
the package's shared objects to the new version (docs/sui.md, "Upgrading the package";
docs/escrow.md "Versions"): the objects named, and with ``--all`` every one the
ledger's creation events name. An object already at the version is left (reported as
current), one deleted since is reported as gone; each migration is one transaction, and
one that fails is reported and the others go on (exit 1 if any failed)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dtp.cli._common import UsageError as _UsageError
from dtp.cli._common import emit as _emit
from dtp.cli._common import identity as _identity
from dtp.cli._common import ledger as _ledger
from dtp.errors import DTPError, ObjectNotFound
from dtp.ledger._objects import normalize_id
from dtp.ledger._versions import created_objects
from dtp.ledger.interface import Ledger

__all__ = ["register"]


def _every_object(ledger: Ledger) -> list[str]:
    """The IDs the ledger's creation events name, from its first event to its last."""
    events = []
    cursor: str | None = None
    while True:
        read = ledger.read_events(cursor, None, 1000)
        events.extend(read.events)
        if read.at_end or read.cursor == cursor:
            return created_objects(events)
        cursor = read.cursor


def _migrate(args: argparse.Namespace) -> int:
    if not args.objects and not args.all:
        raise _UsageError("Name the objects to migrate (IDs), or --all for every one.")
    identity = _identity(args)
    ledger = _ledger(args, create=False)
    ids = [normalize_id(i) for i in args.objects]
    if args.all:
        ids += _every_object(ledger)
    done: dict[str, list[dict[str, Any]]] = {"migrated": [], "current": [], "failed": []}
    gone: list[str] = []
    for object_id in dict.fromkeys(ids):
        try:
            struct, version = ledger.recorded_version(object_id)
        except ObjectNotFound:
            gone.append(object_id)
            continue
        row: dict[str, Any] = {"object": object_id, "struct": struct, "version": version}
        if version >= ledger.package_version:
            done["current"].append(row)
            continue
        try:
            row["version"] = ledger.migrate(identity, object_id, admin_cap=args.admin_cap)
        except DTPError as exc:
            done["failed"].append({**row, "error": str(exc)})
            continue
        done["migrated"].append({**row, "from_version": version})
    _emit(args, {"package_version": ledger.package_version, **done, "deleted": gone})
    return 1 if done["failed"] else 0


def register(subparsers: Any, leaf: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``migrate`` to ``subparsers``."""
    migrate = leaf(
        subparsers,
        "migrate",
        _migrate,
        "after a package upgrade: move the package's objects to its version (AdminCap)",
    )
    migrate.add_argument("objects", nargs="*", metavar="ID", help="objects to migrate")
    migrate.add_argument(
        "--all",
        action="store_true",
        help="every object the ledger's events name (Hosts, connections, pools, ...)",
    )
    migrate.add_argument(
        "--admin-cap",
        metavar="ID",
        help="the package's AdminCap (default: the one `dtp deploy` recorded, "
        "$DTP_SUI_ADMIN_CAP; on the embedded ledger, its own)",
    )
