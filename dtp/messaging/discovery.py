"""Service discovery: on the ledger, and gossiped over pub/sub (docs/messaging.md §6).

**On the ledger.** A host publishes a named service with ``host::add_service`` (its
``kind`` is the name) and its endpoints with ``host::set_endpoints``;
:func:`publish_service` does both. :func:`lookup_host` reads one Host object;
:func:`list_services` replays the ``ServiceAdded`` / ``ServiceRemoved`` events to find
every host that ever published, then reads the current Host objects (so a removed or
changed service shows as it is now). No Move code is involved beyond what ``dtp::host``
already has.

**Gossip.** :class:`DiscoveryGossip` rides a :class:`~dtp.messaging.pubsub.PubSubNode`
on one topic. An :class:`Announcement` lists a host's services and endpoints with an
issue time and an expiry, and is signed (raw Ed25519) by the host's authority over a
domain tag and the exact announcement bytes. Receivers verify the signature and, with a
ledger at hand, that the signer is the host's authority on the ledger
(:class:`~dtp.messaging.errors.ForgedAnnouncement`); they drop expired ones and ones
issued more than a few minutes ahead of their clock
(:class:`~dtp.messaging.errors.ExpiredAnnouncement`) and keep only the newest per host
(older or equal issue times are duplicates). The cache is bounded: an announcement that
would only fit by pushing out records that outlive it is refused (counted in
``evicted``), except this node's own.

**On the LAN**, with no ledger, endpoints announce themselves over mDNS:
:mod:`dtp.discovery.lan` (docs/messaging.md §6.1).

**Membership** (docs/messaging.md §6.2): a group of servers that know who is alive,
SWIM-style with Lifeguard's refinements. :func:`join_group` (threads) and
:func:`join_group_async` (asyncio) drive one engine,
:class:`~dtp.messaging._membership.Membership`; a :class:`GroupAdmission` names who may
join (a group key, Sui addresses, Noise keys, a ledger registry's members).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack

from dtp.errors import DTPError, InvalidObjectId, ObjectNotFound
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger._objects import EventFilter, normalize_id
from dtp.messaging import errors as E
from dtp.messaging._framing import decode_body
from dtp.messaging._membership import (
    Member,
    Membership,
    MembershipConfig,
    MembershipEvent,
    MemberState,
    Seed,
)
from dtp.messaging._membership_admission import GroupAdmission
from dtp.messaging._membership_aio import AsyncMemberNode, join_group_async
from dtp.messaging._membership_socket import MemberNode, join_group
from dtp.messaging._protocol import _check_count, _check_wait

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import Sla
    from dtp.ledger.interface import Endpoint, Ledger
    from dtp.messaging.pubsub import PubSubNode

__all__ = [
    "DEFAULT_TOPIC",
    "MAX_CLOCK_SKEW_MS",
    "MAX_TTL_MS",
    "Announcement",
    "AsyncMemberNode",
    "DiscoveryGossip",
    "GroupAdmission",
    "Member",
    "MemberNode",
    "MemberState",
    "Membership",
    "MembershipConfig",
    "MembershipEvent",
    "Seed",
    "ServiceRecord",
    "join_group",
    "join_group_async",
    "list_services",
    "lookup_host",
    "publish_service",
]

logger = logging.getLogger(__name__)

#: The pub/sub topic announcements travel on.
DEFAULT_TOPIC: Final = "dtp/discovery"
#: Longest lifetime of an announcement (one day).
MAX_TTL_MS: Final = 24 * 3600 * 1000
#: How far in the future (on the receiver's clock) an announcement may be issued: clocks
#: differ a little, but one issued later than this would outlive MAX_TTL_MS and shadow
#: the host's real announcements (an older issue time is a duplicate).
MAX_CLOCK_SKEW_MS: Final = 5 * 60 * 1000
_DOMAIN: Final = b"DTP-DISCOVERY-ANN-V1\x00"
_VERSION: Final = 1
_MAX_SERVICES: Final = 64
_MAX_ENDPOINTS: Final = 16
_MAX_NAME: Final = 64
_MAX_ENDPOINT: Final = 256
_MAX_ANNOUNCEMENT: Final = 16384
#: This node's own announcements remembered until the node delivers them back.
_MAX_ECHOES: Final = 64


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One named service of one host, as found."""

    host_id: str
    port: int
    #: The service's name (its ``kind`` on the ledger).
    name: str
    endpoints: tuple[bytes, ...]


# -- on the ledger ------------------------------------------------------------------------------


def publish_service(
    ledger: Ledger,
    identity: HostIdentity,
    host_id: str,
    port: int,
    name: str,
    sla: Sla,
    *,
    endpoints: Sequence[Endpoint] | None = None,
    max_connections: int = 0,
) -> None:
    """Publish service ``name`` on ``port`` of ``host_id`` (and, when given, replace the
    host's endpoints). Raises :class:`DiscoveryError` for a bad name."""
    _check_name(name)
    if endpoints is not None:
        ledger.set_endpoints(identity, host_id, endpoints)
    ledger.add_service(identity, host_id, port, name, sla, max_connections)


def lookup_host(ledger: Ledger, host_id: str, name: str | None = None) -> list[ServiceRecord]:
    """The services ``host_id`` publishes now (only those called ``name`` when given),
    by port. A missing host has none."""
    try:
        host = ledger.get_host(host_id)
    except ObjectNotFound:
        return []
    return [
        ServiceRecord(host.id, port, svc.kind, tuple(host.endpoints))
        for port, svc in sorted(host.services.items())
        if name is None or svc.kind == name
    ]


def list_services(
    ledger: Ledger, name: str | None = None, *, max_events: int = 100_000
) -> list[ServiceRecord]:
    """Every service published on the ledger now (only those called ``name`` when
    given): hosts are found through ``ServiceAdded`` events, then read as they are.

    Reads at most ``max_events`` ``ServiceAdded`` events; a ledger holding more raises
    :class:`DiscoveryError` rather than answer with the hosts of the first ones only."""
    _check_count("max_events", max_events, 0)
    hosts: dict[str, None] = {}
    cursor: str | None = None
    seen = 0
    flt = EventFilter(type="ServiceAdded")
    while True:
        events, after = ledger.events(cursor, flt, 1000)
        # the end is where the cursor stops moving: a page may hold no match and still
        # not be the last (SuiLedger filters each page of the package's events)
        if not events and after == cursor:
            break
        cursor = after
        seen += len(events)
        if seen > max_events:
            raise E.DiscoveryError(f"the ledger holds more than {max_events} ServiceAdded events")
        for event in events:
            hosts[str(event["host"])] = None
    out: list[ServiceRecord] = []
    for host_id in hosts:
        out += lookup_host(ledger, host_id, name)
    return out


# -- gossip -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Announcement:
    """A host's signed statement of its services, valid until ``expires_ms``."""

    host_id: str
    #: The signer's Sui address (the host's authority, when checked against a ledger).
    authority: str
    #: (port, name) pairs.
    services: tuple[tuple[int, str], ...]
    endpoints: tuple[bytes, ...]
    issued_ms: int
    expires_ms: int

    def records(self) -> list[ServiceRecord]:
        """The announced services as records."""
        return [ServiceRecord(self.host_id, p, n, self.endpoints) for p, n in self.services]


def _text(value: object, what: str) -> bytes:
    """``value``'s UTF-8, or :class:`DiscoveryError` when it is not text (a lone surrogate
    made encode() raise UnicodeEncodeError)."""
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError:
            pass
    raise E.DiscoveryError(f"{what} is not valid text")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not 0 < len(_text(name, "a service name")) <= _MAX_NAME:
        raise E.DiscoveryError(f"a service name is 1..{_MAX_NAME} bytes of text")


def encode_announcement(
    identity: HostIdentity,
    host_id: str,
    services: Sequence[tuple[int, str]],
    endpoints: Sequence[bytes | str],
    issued_ms: int,
    ttl_ms: int,
) -> bytes:
    """A signed announcement: msgpack ``[body, signature]`` where ``body`` is the msgpack
    of ``[1, host_id, ed25519_public, issued_ms, expires_ms, [[port, name]...],
    [endpoint...]]`` and the signature covers the domain tag and ``body``."""
    # refuse here what every receiver's decode_announcement would (a bool port, a float
    # time, a long host ID...): such an announcement is never signed nor gossiped
    if type(ttl_ms) is not int or not 0 < ttl_ms <= MAX_TTL_MS:
        raise E.DiscoveryError(f"the lifetime is 1..{MAX_TTL_MS} ms (an int)")
    if type(issued_ms) is not int or not 0 <= issued_ms < 1 << 63:
        raise E.DiscoveryError("issued_ms is a non-negative int (ms since the epoch)")
    if not isinstance(host_id, str) or len(host_id) > 128:
        raise E.DiscoveryError("a host ID is text of at most 128 characters")
    _text(host_id, "the host ID")
    if len(services) > _MAX_SERVICES or len(endpoints) > _MAX_ENDPOINTS:
        raise E.DiscoveryError("too many services or endpoints")
    for port, name in services:
        _check_name(name)
        if type(port) is not int or not 0 <= port <= 0xFFFF:
            raise E.DiscoveryError("a port is a u16 (an int)")
    eps = []
    for e in endpoints:
        if isinstance(e, str):
            eps.append(_text(e, "an endpoint"))
        elif isinstance(e, bytes | bytearray | memoryview):
            eps.append(bytes(e))
        else:  # bytes(5) would announce five zero bytes
            raise E.DiscoveryError(f"an endpoint is bytes or text, not {type(e).__name__!r}")
    if any(len(e) > _MAX_ENDPOINT for e in eps):
        raise E.DiscoveryError(f"an endpoint is at most {_MAX_ENDPOINT} bytes")
    body: bytes = msgpack.packb(
        [
            _VERSION,
            host_id.lower(),
            identity.ed25519_public,
            issued_ms,
            issued_ms + ttl_ms,
            [[p, n] for p, n in services],
            eps,
        ],
        use_bin_type=True,
    )
    data: bytes = msgpack.packb([body, identity.sign(_DOMAIN + body)], use_bin_type=True)
    if len(data) > _MAX_ANNOUNCEMENT:
        raise E.PayloadTooLarge("announcement too large")
    return data


def decode_announcement(data: bytes, now_ms: int, ledger: Ledger | None = None) -> Announcement:
    """Verify and decode an announcement. Raises :class:`MalformedMessage`,
    :class:`ForgedAnnouncement` (bad signature, or the host does not exist on ``ledger`` or
    has another authority) or :class:`ExpiredAnnouncement` (not valid at ``now_ms``:
    expired, or issued more than :data:`MAX_CLOCK_SKEW_MS` ahead). Any other
    :class:`~dtp.errors.ChainError` of ``ledger`` (unreachable...) propagates: it says
    nothing about the announcement.

    The returned ``host_id`` is canonical (``0x`` + 64 lower-case hex when it is an
    object ID, else lower case), so every spelling of one host is one host."""
    ann = _verified_announcement(data, now_ms)
    if ledger is not None:
        _check_authority(ann, ledger)
    return ann


def _check_authority(ann: Announcement, ledger: Ledger) -> None:
    """:class:`ForgedAnnouncement` unless ``ann``'s signer is its host's authority now."""
    try:
        host = ledger.get_host(ann.host_id)
    except (ObjectNotFound, InvalidObjectId):
        raise E.ForgedAnnouncement("no such host on the ledger") from None
    if host.authority != ann.authority:
        raise E.ForgedAnnouncement("the signer is not the host's authority")


def _canonical_host(host_id: str) -> str:
    # "0xAB..", " 0xab.." and the short form name one Host on the ledger: kept apart,
    # an old announcement signed under another spelling lived on beside the newest
    try:
        return normalize_id(host_id)
    except InvalidObjectId:
        return host_id.lower()  # (gossip without a ledger names hosts as it likes)


def _verified_announcement(data: bytes, now_ms: int) -> Announcement:
    """The announcement in ``data`` if well-formed, signed by the key it holds and valid
    at ``now_ms`` (the checks that need no ledger)."""
    ann = _signed_announcement(data)
    _check_valid_at(ann, now_ms)
    return ann


def _check_valid_at(ann: Announcement, now_ms: int) -> None:
    """:class:`ExpiredAnnouncement` unless ``ann`` is valid at ``now_ms``: not expired,
    and not issued more than :data:`MAX_CLOCK_SKEW_MS` ahead."""
    if ann.expires_ms <= now_ms:
        raise E.ExpiredAnnouncement(f"expired at {ann.expires_ms} ms (now {now_ms} ms)")
    if ann.issued_ms > now_ms + MAX_CLOCK_SKEW_MS:
        raise E.ExpiredAnnouncement(
            f"issued at {ann.issued_ms} ms, in the future (now {now_ms} ms)"
        )


def _signed_announcement(data: bytes) -> Announcement:
    """The announcement in ``data`` if well-formed and signed by the key it holds,
    whatever the time (:class:`MalformedMessage`, :class:`ForgedAnnouncement`)."""
    from dtp.identity._ed25519 import verify_memoized

    if len(data) > _MAX_ANNOUNCEMENT:
        raise E.MalformedMessage("announcement too large")
    outer = decode_body(data)
    if not (
        isinstance(outer, list)
        and len(outer) == 2
        and isinstance(outer[0], bytes)
        and isinstance(outer[1], bytes)
    ):
        raise E.MalformedMessage("not an announcement")
    body, signature = outer
    fields: Any = decode_body(body)
    # (type(): msgpack's true is == 1 too)
    if not (
        isinstance(fields, list)
        and len(fields) == 7
        and type(fields[0]) is int
        and fields[0] == _VERSION
    ):
        raise E.MalformedMessage("not an announcement")
    _, host_id, public, issued, expires, services, endpoints = fields
    if not (
        isinstance(host_id, str)
        and len(host_id) <= 128
        and isinstance(public, bytes)
        and len(public) == 32
        and type(issued) is int
        and type(expires) is int
        and 0 <= issued < expires <= issued + MAX_TTL_MS
        and isinstance(services, list)
        and len(services) <= _MAX_SERVICES
        and all(
            isinstance(s, list)
            and len(s) == 2
            and type(s[0]) is int
            and 0 <= s[0] <= 0xFFFF
            and isinstance(s[1], str)
            and 0 < len(s[1].encode()) <= _MAX_NAME
            for s in services
        )
        and isinstance(endpoints, list)
        and len(endpoints) <= _MAX_ENDPOINTS
        and all(isinstance(e, bytes) and len(e) <= _MAX_ENDPOINT for e in endpoints)
    ):
        raise E.MalformedMessage("invalid announcement fields")
    if not verify_memoized(public, signature, _DOMAIN + body):
        raise E.ForgedAnnouncement()
    return Announcement(
        _canonical_host(host_id),
        sui_address_from_public_key(public),
        tuple((int(p), str(n)) for p, n in services),
        tuple(endpoints),
        issued,
        expires,
    )


class DiscoveryGossip:
    """Announce this host's services on a pub/sub mesh and learn everyone else's."""

    def __init__(
        self,
        node: PubSubNode,
        *,
        ledger: Ledger | None = None,
        topic: str = DEFAULT_TOPIC,
        clock_ms: Callable[[], int] | None = None,
        max_records: int = 4096,
        max_bytes: int = 16 << 20,
    ) -> None:
        """``clock_ms`` defaults to the ledger's clock, else wall time. With a ledger,
        announcements are accepted only from the host's authority. The cache keeps at
        most ``max_records`` announcements of at most ``max_bytes`` (as sent) in all:
        past either, the expired go first, then the soonest to expire, but only to make
        room for an announcement that outlives them (or for this node's own, from
        :meth:`announce`): one that would itself be the first to go is refused."""
        # a bound below 1 made every eviction look for a victim in an empty cache
        _check_count("max_records", max_records, 1)
        _check_count("max_bytes", max_bytes, 1)
        self.node = node
        self.ledger = ledger
        self.topic = topic
        if clock_ms is None:
            clock_ms = ledger.clock_ms if ledger is not None else lambda: time.time_ns() // 10**6
        self.clock_ms = clock_ms
        self.max_records = max_records
        self.max_bytes = max_bytes
        #: The size (as sent) of each cached announcement, and their sum.
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Condition()
        # one announce() at a time, from its issue time to its record: two at once
        # would read the same cached one and issue theirs in the same millisecond, and
        # one of them would be dropped as a duplicate (not the gossip lock: the ledger
        # is asked meanwhile; test_a_re_announcement_in_the_same_millisecond_is_...)
        self._announcing = threading.Lock()
        self._records: dict[str, Announcement] = {}
        self.accepted = 0
        self.forged = 0
        self.expired = 0
        self.duplicates = 0
        self.malformed = 0
        #: Live announcements dropped for room: pushed out of the full cache, or refused
        #: on arrival because every record it would push out outlives it.
        self.evicted = 0
        #: Announcements the gossip thread could not check (the ledger or clock failed).
        self.unchecked = 0
        # this node's own announcements, recorded by announce() and not yet seen back
        # from the node (publish delivers to local subscribers too): that copy is no
        # news, and counted it would be a duplicate of every announce (oldest first;
        # bounded, as a copy dropped from a full subscription never comes)
        self._echoes: dict[bytes, None] = {}
        self._sub = node.subscribe(topic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)
        self._thread.start()

    def announce(
        self,
        identity: HostIdentity,
        host_id: str,
        services: Sequence[tuple[int, str]],
        endpoints: Sequence[bytes | str] = (),
        *,
        ttl_ms: int = 600_000,
    ) -> Announcement:
        """Sign and gossip an announcement, recorded locally before this returns (as
        :meth:`receive` records one: :meth:`host` and :meth:`lookup` see it at once);
        returns it. With a ledger, ``identity`` must be the host's authority
        (:class:`~dtp.messaging.errors.DiscoveryError` otherwise: peers would drop it as
        forged); a ledger that cannot check it leaves it to the gossip thread, as any
        announcement whose check fails so (counted in ``unchecked``), and it is gossiped
        all the same.

        In a full cache it pushes out the soonest to expire of the others, even records
        that outlive it (a received announcement would be refused instead): this node's
        own is one it knows to be genuine, and its owner decides how many it makes. One
        larger than ``max_bytes`` cannot be recorded: a DiscoveryError, and not gossiped
        (rather than evicted at once, unsaid, while announce() returns as usual).

        It is issued later than the cached announcement of the host by the same key (a
        millisecond later when the clock has not moved past it): one issued at the same
        time is a duplicate, so a re-announcement within a millisecond -- or within a
        ledger clock's tick, a Sui checkpoint -- would be dropped here and by every peer,
        while announce() returned it as if recorded."""
        with self._announcing:
            issued = self.clock_ms()
            if isinstance(host_id, str):  # (encode_announcement says what else is wrong)
                with self._lock:
                    last = self._records.get(_canonical_host(host_id))
                if last is not None and last.authority == identity.sui_address:
                    issued = max(issued, last.issued_ms + 1)
            data = encode_announcement(identity, host_id, services, endpoints, issued, ttl_ms)
            ann = decode_announcement(data, self.clock_ms())
            try:
                if self.ledger is not None:
                    try:
                        _check_authority(ann, self.ledger)
                    except E.ForgedAnnouncement as exc:
                        # every peer with a ledger would drop it: said to the caller, not
                        # gossiped for nothing
                        raise E.DiscoveryError(
                            f"cannot announce host {host_id} as {identity.sui_address}: {exc}"
                        ) from exc
                # the same checks as the gossip thread's: the node keeps what its peers keep.
                # Recorded here, not when the thread takes it from the subscription: it is
                # in the cache once announce() returns.
                self._receive(data, own=True)
            except E.DiscoveryError:
                raise
            except DTPError as exc:
                self.unchecked += 1
                logger.warning("discovery: an announcement could not be checked: %s", exc)
            else:
                with self._lock:
                    self._echoes[data] = None
                    if len(self._echoes) > _MAX_ECHOES:
                        del self._echoes[next(iter(self._echoes))]
        self.node.publish(self.topic, data)
        return ann

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delivery = self._sub.get()
            except E.PubSubError:
                return  # closed: by close(), or by the node's close()
            with self._lock:
                echo = delivery.data in self._echoes
                if echo:
                    del self._echoes[delivery.data]
            if echo:
                continue  # announce() recorded it (or counted its rejection) already
            try:
                self.receive(delivery.data)
            except DTPError as exc:
                # the ledger (its clock, a host look-up) failed for this announcement
                # only: the thread goes on with the next one
                self.unchecked += 1
                logger.warning("discovery: an announcement could not be checked: %s", exc)

    def receive(self, data: bytes) -> Announcement | None:
        """Check one announcement and keep it if it is new; returns it, or None when it
        was rejected, a duplicate or refused for room (counted: ``evicted``). A ledger
        that cannot be asked raises its :class:`~dtp.errors.ChainError`."""
        return self._receive(data, own=False)

    def _receive(self, data: bytes, own: bool) -> Announcement | None:
        """:meth:`receive`, for this node's ``own`` announcement (from :meth:`announce`)
        too: that one makes room whatever the others' expiry, and one that cannot fit
        at all raises :class:`~dtp.messaging.errors.DiscoveryError`."""
        try:
            ann = _signed_announcement(data)
            # the clock only now: it may be the ledger's (a SuiLedger reads the Clock
            # object from its full node), and a peer's garbage or forgeries, checked
            # locally, each cost the node a request to the full node
            now = self.clock_ms()
            _check_valid_at(ann, now)
            if not self._supersedes(ann):
                # (before the ledger: a replayed announcement costs no look-up)
                self.duplicates += 1
                return None
            if self.ledger is not None:
                _check_authority(ann, self.ledger)
        except E.ForgedAnnouncement:
            self.forged += 1
            return None
        except E.ExpiredAnnouncement:
            self.expired += 1
            return None
        except E.MessagingProtocolError:
            self.malformed += 1
            return None
        with self._lock:
            if not self._supersedes(ann):
                self.duplicates += 1  # (a newer one came meanwhile)
                return None
            if not self._make_room(ann, len(data), now, own):
                self.evicted += 1
                if own:
                    raise E.DiscoveryError(
                        f"an announcement of {len(data)} bytes does not fit a cache of "
                        f"max_bytes={self.max_bytes}"
                    )
                return None
            self._records[ann.host_id] = ann
            self._bytes += len(data) - self._sizes.get(ann.host_id, 0)
            self._sizes[ann.host_id] = len(data)
            self.accepted += 1
            self._lock.notify_all()
        return ann

    def _supersedes(self, ann: Announcement) -> bool:
        """Whether ``ann`` replaces the record of its host: issued later or, with a
        ledger, signed by another key. With a ledger, ``ann`` is kept only if its signer
        is the host's authority now, so the cached one's is a former authority: the
        host's authority moved (``set_authority``: a compromised key replaced), and
        what it signed, up to MAX_CLOCK_SKEW_MS ahead, must not shadow the new
        authority's announcements (as duplicates) until then."""
        with self._lock:
            old = self._records.get(ann.host_id)
        if old is None or old.issued_ms < ann.issued_ms:
            return True
        return self.ledger is not None and old.authority != ann.authority

    def _make_room(self, ann: Announcement, size: int, now: int, own: bool) -> bool:
        """(lock held) Whether ``ann`` (``size`` bytes as sent, replacing its host's
        record if any) fits the bounds once expired records are dropped (at ``now``: the
        clock, maybe the ledger's, is not read under the lock) and then, of the others,
        the soonest to expire -- only ones that expire before ``ann``, unless it is
        this node's ``own``. False, and no live record dropped, when it does not fit.

        (Inserting first and evicting the soonest to expire after would evict ``ann``
        itself when it is that one, while counting it accepted, so anyone could fill the
        cache with day-long announcements and every genuine host, with a shorter
        lifetime, would be dropped on arrival, unseen.)"""
        count = len(self._records) + (ann.host_id not in self._records)
        total = self._bytes - self._sizes.get(ann.host_id, 0) + size
        if count <= self.max_records and total <= self.max_bytes:
            return True
        for host_id in [
            h for h, a in self._records.items() if a.expires_ms <= now and h != ann.host_id
        ]:
            count -= 1
            total -= self._sizes[host_id]
            self._forget(host_id)
        # (the count alone let 4096 announcements of the largest kind take ~80 MB)
        heap = [(a.expires_ms, h) for h, a in self._records.items() if h != ann.host_id]
        heapq.heapify(heap)
        victims: list[str] = []
        while count > self.max_records or total > self.max_bytes:
            # (a tie keeps the cached one: no churn between equals)
            if not heap or (not own and heap[0][0] >= ann.expires_ms):
                return False
            _, host_id = heapq.heappop(heap)
            victims.append(host_id)
            count -= 1
            total -= self._sizes[host_id]
        for host_id in victims:
            self._forget(host_id)
        self.evicted += len(victims)
        return True

    def _forget(self, host_id: str) -> None:
        """(lock held) Drop the record of ``host_id``."""
        del self._records[host_id]
        self._bytes -= self._sizes.pop(host_id)

    def lookup(self, name: str | None = None) -> list[ServiceRecord]:
        """Live (unexpired) services learnt by gossip, only those called ``name`` when
        given."""
        now = self.clock_ms()
        with self._lock:
            anns = [a for a in self._records.values() if a.expires_ms > now]
        return [r for a in anns for r in a.records() if name is None or r.name == name]

    def host(self, host_id: str) -> Announcement | None:
        """The live announcement of ``host_id``, if any."""
        with self._lock:
            ann = self._records.get(_canonical_host(host_id))
        return ann if ann is not None and ann.expires_ms > self.clock_ms() else None

    def wait_for(self, host_id: str, timeout: float) -> Announcement | None:
        """Wait up to ``timeout`` seconds for a live announcement of ``host_id`` (an
        expired one kept in the cache is waited past, for the host's next)."""
        # (a NaN deadline never passed; inf overflowed the condition's wait)
        _check_wait(timeout)
        deadline = time.monotonic() + timeout
        key = _canonical_host(host_id)
        while True:
            with self._lock:
                ann = self._records.get(key)
            # the clock may be the ledger's (a network call): not under the lock
            if ann is not None and ann.expires_ms > self.clock_ms():
                return ann
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with self._lock:
                if self._records.get(key) is ann:  # nothing newer came meanwhile
                    self._lock.wait(remaining)

    def close(self) -> None:
        """Stop listening (the pub/sub node is left to its owner)."""
        self._stop.set()
        self._sub.close()
        self._thread.join(timeout=1)
