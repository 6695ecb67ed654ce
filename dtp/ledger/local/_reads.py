"""LocalLedger's reads: objects, connection views, balances, and events with their cursors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from dtp.errors import InvalidArgument
from dtp.ledger._objects import (
    FIREWALL_LISTS,
    Broadcast,
    ChainObject,
    ConnectionState,
    Event,
    EventFilter,
    EventRead,
    Host,
    ObjectRef,
    TransportControl,
    check_firewall_list,
    firewall_entries,
    normalize_id,
)
from dtp.ledger.interface import ConnectionView, _connection_view
from dtp.ledger.local import rules
from dtp.ledger.local._store import LocalStore, T
from dtp.ledger.local._stored import SEQ_MAX, SqlStore, build, decoded, not_found, stored_version

# LocalLedger.connection_view: a connection (?1), the escrow and cap its data names, a
# host (?2), and with ?3 the epoch (under the empty ID)
_CONNECTION_VIEW: Final = """
SELECT id, type, version, data FROM objects WHERE id IN (
    ?1, ?2,
    (SELECT json_extract(data, '$.escrow') FROM objects WHERE id = ?1),
    (SELECT json_extract(data, '$.spending_cap') FROM objects WHERE id = ?1 AND ?3))
UNION ALL SELECT '', NULL, NULL, value FROM meta WHERE key = 'epoch' AND ?3
"""

#: The Hosts built lately, by ID: each with the stored type, version and text it was
#: built from. A client resolves the Host it connects to, and a paid server's admission
#: reads its own, with every connection, unchanged but for its publishes; built again,
#: that is its JSON decoded, each service, Sla and firewall list made and every field
#: checked. A view is built from those three alone, and frozen, so one made from the
#: same row is shared. Bounded: cleared when full.
_HOSTS_BUILT: dict[str, tuple[str, int, str, ChainObject]] = {}
_HOSTS_BUILT_MAX: Final = 64
_HOST_ROW: Final = "SELECT type, version, data FROM objects WHERE id = ?"


def _host_seen(host_id: str, row: tuple[str, Any, Any]) -> ChainObject | None:
    """The Host built from the row ``(type, version, data)`` read for ``host_id``, when
    the same row built it lately."""
    known = _HOSTS_BUILT.get(host_id)
    if (
        known is not None
        and known[0] == row[0]
        and known[1] == row[1]
        and type(row[1]) is int
        and known[2] == row[2]
    ):
        return known[3]
    return None


def _keep_host(host_id: str, row: tuple[str, Any, Any], obj: ChainObject) -> None:
    """Remember ``obj``, the Host built from ``row`` (:func:`_host_seen`)."""
    if type(obj) is Host and type(row[2]) is str:
        if len(_HOSTS_BUILT) >= _HOSTS_BUILT_MAX:
            _HOSTS_BUILT.clear()
        _HOSTS_BUILT[host_id] = (row[0], row[1], row[2], obj)


def _built_host(host_id: str, row: tuple[str, Any, Any]) -> ChainObject:
    """The object of the row ``(type, version, data)`` read for ``host_id`` (a Host, or
    whatever else that ID names, which the caller then refuses)."""
    obj = _host_seen(host_id, row)
    if obj is None:
        obj = build(row[0].rsplit("::", 1)[-1], host_id, *decoded(host_id, row[1], row[2]))
        _keep_host(host_id, row, obj)
    return obj


#: A TransportControl's stored ``state.kind`` (its Move variant's name) as read alone.
_CONNECTION_STATES: Final = {state.label: state for state in ConnectionState}


class LedgerReads(LocalStore):
    """Reading objects and events of the local ledger."""

    def is_on_air(self, broadcast_id: str) -> bool:
        """``broadcast::is_on_air`` at the current clock."""

        def read() -> bool:
            b = self._typed(broadcast_id, "Broadcast")
            assert isinstance(b, Broadcast)
            return b.is_on_air(self._now())

        return self._read(read)

    # -- reading ---------------------------------------------------------------------------------

    def object_ref(self, object_id: str) -> ObjectRef:
        """ID, version, owner and type of a live object."""
        object_id = normalize_id(object_id)

        def read() -> ObjectRef:
            row = SqlStore(self._db).load(object_id)
            if row is None:
                raise not_found(object_id, None, None)
            return ObjectRef(object_id, row[2], row[1], row[0])

        return self._read_one(read)

    def _typed(self, object_id: str, struct: str | None) -> ChainObject:
        object_id = normalize_id(object_id)
        if struct == "Host":
            return self._host(object_id)
        row = SqlStore(self._db).load(object_id)
        if row is None:
            raise not_found(object_id, None, struct)
        type_, _owner, version, data = row
        name = type_.rsplit("::", 1)[-1]
        if struct is not None and name != struct:
            raise not_found(object_id, name, struct)
        return build(name, object_id, version, data)

    def _host(self, host_id: str) -> ChainObject:
        """:meth:`_typed` of a Host (``host_id`` normalized): the same checks in the same
        order (the row decoded, then its type, then built), the object shared while its
        row is unchanged (:func:`_host_seen`)."""
        row = self._db.execute(_HOST_ROW, (host_id,)).fetchone()
        if row is None:
            raise not_found(host_id, None, "Host")
        seen = _host_seen(host_id, row)
        if seen is not None:
            return seen
        version, data = decoded(host_id, row[1], row[2])
        name = row[0].rsplit("::", 1)[-1]
        if name != "Host":
            raise not_found(host_id, name, "Host")
        obj = build(name, host_id, version, data)
        _keep_host(host_id, row, obj)
        return obj

    def get_object(self, object_id: str) -> ChainObject:
        return self._read_one(lambda: self._typed(object_id, None))

    def get_objects(self, object_ids: Sequence[str]) -> list[ChainObject]:
        if isinstance(object_ids, str | bytes) or not isinstance(object_ids, Iterable):
            # one ID given as the list would be read as IDs of one character each
            raise InvalidArgument(f"object_ids must be a sequence of IDs, got {object_ids!r}.")
        ids = [normalize_id(object_id) for object_id in object_ids]
        marks = ",".join("?" * len(ids))

        def read() -> dict[str, tuple[str, Any, Any]]:
            rows = self._db.execute(
                f"SELECT id, type, version, data FROM objects WHERE id IN ({marks})", ids
            )
            return {row[0]: (row[1], row[2], row[3]) for row in rows}

        found = self._read_one(read) if ids else {}
        out: list[ChainObject] = []
        # built outside the read (and its lock), so not named by _retry: named here
        try:
            for object_id in ids:
                row = found.get(object_id)
                if row is None:
                    raise not_found(object_id, None, None)
                version, data = decoded(object_id, row[1], row[2])
                out.append(build(row[0].rsplit("::", 1)[-1], object_id, version, data))
        except rules.DamagedData as exc:
            raise self._damaged(exc) from exc
        return out

    def connection_view(
        self, connection_id: str, host_id: str, *, with_cap: bool = False
    ) -> ConnectionView | None:
        # One statement: the connection, the escrow and cap it names, the host (and the
        # epoch) from one snapshot. Each object's type is checked as the typed reads do.
        cid = normalize_id(connection_id, "connection ID")
        hid = normalize_id(host_id, "host ID")

        def read() -> dict[str, tuple[str, Any, Any]]:
            rows = self._db.execute(_CONNECTION_VIEW, (cid, hid, 1 if with_cap else 0))
            return {row[0]: (row[1], row[2], row[3]) for row in rows}

        found = self._read_one(read)
        row = found.get(cid)
        if row is None or row[0] != rules.OBJECT_TYPES["TransportControl"]:
            return None
        # built outside the read (and its lock), so not named by _retry: named here
        try:
            tc = build("TransportControl", cid, *decoded(cid, row[1], row[2]))
            assert isinstance(tc, TransportControl)
            wanted = [tc.escrow, hid] + ([tc.spending_cap] if with_cap else [])
            objects: list[ChainObject] = []
            for object_id in wanted:
                row = found.get(object_id)
                if row is None:
                    raise not_found(object_id, None, None)
                if object_id == hid:
                    objects.append(_built_host(hid, row))
                    continue
                name = row[0].rsplit("::", 1)[-1]
                objects.append(build(name, object_id, *decoded(object_id, row[1], row[2])))
            epoch_row = found.get("") if with_cap else None
            epoch = (
                rules.stored_int(epoch_row[2])
                if epoch_row is not None
                else (0 if with_cap else None)
            )
        except rules.DamagedData as exc:
            raise self._damaged(exc) from exc
        return _connection_view(tc, objects, hid, epoch)

    def change_marker(self) -> tuple[int, int]:
        """A token that differs once any transaction committed on this ledger file since
        it was taken, by this handle or any other, in any process (SQLite's
        ``data_version`` and this handle's commit count): a cheap check, no object read,
        for a watcher that would otherwise read an object again and again to see it
        appear (a paid server waiting for a client's open to land)."""

        def read() -> tuple[int, int]:
            row = self._db.execute("PRAGMA data_version").fetchone()
            return int(row[0]), self._commits

        return self._read_one(read)

    def object_version(self, object_id: str) -> int:
        """The version of a live object: it changes with every transaction that changes
        the object (a cheap way to watch one)."""
        object_id = normalize_id(object_id)

        def read() -> int:
            row = self._db.execute(
                "SELECT version FROM objects WHERE id = ?", (object_id,)
            ).fetchone()
            if row is None:
                raise not_found(object_id, None, None)
            return stored_version(object_id, row[0])

        return self._read_one(read)

    def _get(self, object_id: str, struct: str, cls: type[T]) -> T:
        obj = self._read_one(lambda: self._typed(object_id, struct))
        assert isinstance(obj, cls)
        return obj

    # -- the firewall's lists (Tables on Sui; a mapping in the Host's data here) ----------

    def _firewall_tables(self, host_id: str) -> dict[str, list[str]]:
        """The addresses on the Host's two lists, in one read, checked as a read of the
        Host checks them."""
        hid = normalize_id(host_id, "host ID")

        def read() -> dict[str, list[str]]:
            row = SqlStore(self._db).load(hid)
            if row is None:
                raise not_found(hid, None, "Host")
            type_, _owner, version, data = row
            name = type_.rsplit("::", 1)[-1]
            if name != "Host":
                raise not_found(hid, name, "Host")
            build(name, hid, version, data)  # the whole Host checked, as a read of it is
            fw = data["firewall"]
            return {w: list(firewall_entries(fw[w], f"firewall.{w}")) for w in FIREWALL_LISTS}

        return self._read_one(read)

    def is_allowed(self, host_id: str, client: str) -> bool:
        client = normalize_id(client, "address")
        return client in self._firewall_tables(host_id)["allow"]

    def is_denied(self, host_id: str, client: str) -> bool:
        client = normalize_id(client, "address")
        return client in self._firewall_tables(host_id)["deny"]

    def permits(self, host: Host, client: str) -> bool:
        # both lists in one read where both may decide
        client = normalize_id(client, "address")
        look_deny, look_allow = host.firewall.lookups()
        if not (look_deny or look_allow):
            return host.firewall.decide(allowed=False, denied=False)
        lists = self._firewall_tables(host.id)
        return host.firewall.decide(
            allowed=look_allow and client in lists["allow"],
            denied=look_deny and client in lists["deny"],
        )

    def refused(self, host: Host, clients: Iterable[str]) -> frozenset[str]:
        # every client decided on one read of the lists
        wanted = {normalize_id(c, "address") for c in clients}
        look_deny, look_allow = host.firewall.lookups()
        if not wanted or not (look_deny or look_allow):
            allowed = host.firewall.decide(allowed=False, denied=False)
            return frozenset() if allowed else frozenset(wanted)
        lists = self._firewall_tables(host.id)
        deny, allow = set(lists["deny"]), set(lists["allow"])
        return frozenset(
            c
            for c in wanted
            if not host.firewall.decide(
                allowed=look_allow and c in allow, denied=look_deny and c in deny
            )
        )

    def firewall_list(self, host_id: str, which: str) -> tuple[str, ...]:
        check_firewall_list(which)
        return tuple(sorted(set(self._firewall_tables(host_id)[which])))

    def connection_state(self, connection_id: str) -> ConnectionState:
        # one field, read by SQLite: not the whole object parsed, built and checked
        cid = normalize_id(connection_id, "connection ID")

        def read() -> tuple[Any, Any] | None:
            row = self._db.execute(
                "SELECT type, json_extract(data, '$.state.kind') FROM objects WHERE id = ?",
                (cid,),
            ).fetchone()
            return None if row is None else (row[0], row[1])

        row = self._read_one(read)
        if row is None:
            raise not_found(cid, None, "TransportControl")
        if row[0] != rules.OBJECT_TYPES["TransportControl"]:
            raise not_found(cid, str(row[0]).rsplit("::", 1)[-1], "TransportControl")
        state = _CONNECTION_STATES.get(row[1]) if isinstance(row[1], str) else None
        if state is None:
            raise self._damaged(
                rules.DamagedData(f"object {cid}: a stored connection state {row[1]!r:.30}")
            )
        return state

    def balance(self, address: str) -> int:
        address = normalize_id(address, "address")
        return self._read_one(lambda: SqlStore(self._db).balance(address))

    def objects(self, type_name: str | None = None) -> list[ObjectRef]:
        """Every live object (optionally only structs named ``type_name``)."""
        if type_name is not None and not isinstance(type_name, str):
            # no type name equals a non-str: the answer would be an empty list, as if
            # no such object existed
            raise InvalidArgument(f"type_name must be a struct name or None, got {type_name!r}.")

        def read() -> list[ObjectRef]:
            rows = self._db.execute("SELECT id, version, owner, type FROM objects ORDER BY rowid")
            refs = [ObjectRef(r[0], stored_version(r[0], r[1]), r[2], r[3]) for r in rows]
            if type_name is None:
                return refs
            return [r for r in refs if r.type.rsplit("::", 1)[-1] == type_name]

        return self._read(read)

    # -- events ----------------------------------------------------------------------------------

    def _read_after(
        self, start: int, cursor: str | None, filter: EventFilter | None, limit: int
    ) -> EventRead:
        # a read stops at `limit` events or at the newest row: fewer is the end
        def read() -> EventRead:
            out: list[Event] = []
            last = start
            rows = self._db.execute(
                "SELECT seq, type, sender, tx_digest, timestamp_ms, fields FROM events "
                "WHERE seq > ? ORDER BY seq",
                (start,),
            )
            # the type and sender are columns: rows they rule out are not decoded
            pre = filter if filter is not None and filter.object_id is None else None
            for seq, type_, sender, digest, ts, fields in rows:
                last = int(seq)
                if pre is not None and not pre.matches(Event("", type_, {}, sender, digest, 0)):
                    continue
                data = rules.from_json(fields)
                if type(data) is not dict or type(ts) is not int:
                    raise rules.DamagedData(f"event {seq} is not stored as the ledger writes it")
                event = Event(str(seq), type_, data, sender, digest, ts)
                if filter is None or filter.matches(event):
                    out.append(event)
                    if len(out) >= limit:
                        break
            return EventRead(out, str(last) if last else cursor, len(out) < limit)

        return self._read(read)

    def head_cursor(self) -> str | None:
        row = self._read_one(lambda: self._db.execute("SELECT max(seq) FROM events").fetchone())
        return None if row is None or row[0] is None else str(row[0])

    @staticmethod
    def _event_position(cursor: str | None) -> int:
        if cursor is None:
            return 0
        # the decimal positions events() hands out; int() alone would take " 3", "-0"
        # and "1_0", and SQLite refuses a value past its 64-bit INTEGER (OverflowError)
        if (
            not isinstance(cursor, str)
            or not (cursor.isascii() and cursor.isdecimal())
            or len(cursor) > 19
            or int(cursor) > SEQ_MAX
        ):
            raise InvalidArgument(f"{cursor!r} is not a LocalLedger event cursor.")
        return int(cursor)

    def _await_events(self, remaining: float) -> None:
        # Woken at once by commits of this process; other processes are polled.
        with self._changed:
            self._change_waiters += 1
            try:
                self._changed.wait(min(remaining, 0.05))
            finally:
                self._change_waiters -= 1
