"""The peers a browser has found, sans-I/O: :class:`PeerTable` takes what mDNS resolved
(an instance's TXT data, port and addresses) and what it saw leave, and says what
changed (:class:`LanEvent`). Both browsers (blocking and asyncio) pump the same table;
it has no sockets, threads or clock."""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from dtp.discovery._records import KEY_LEN, LanRecord, decode_txt
from dtp.discovery.errors import LanDiscoveryError, LanRecordError
from dtp.errors import DTPError

if TYPE_CHECKING:
    from dtp.ledger._objects import Host
    from dtp.ledger.interface import Ledger
    from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter
    from dtp.transport.blocking._socket import DTPSocket

__all__ = ["MAX_PEERS", "LanEvent", "LanPeer", "PeerFilter", "PeerTable"]

logger = logging.getLogger("dtp.discovery")

MAX_PEERS = 1024
"""Peers a browser keeps at most by default: a LAN where anyone can announce can
announce without end."""

MAX_ADDRESSES = 16
"""Addresses kept of one peer (the first ones, as resolved)."""

_REMEMBERED_REFUSALS = 1024  # names whose refusal was logged (each logged once)


@dataclass(frozen=True)
class LanPeer:
    """A DTP endpoint found on the LAN: its instance ``name``, its :attr:`record` (what
    its TXT record claims) and where to reach it (:attr:`endpoints`, the carrier's TCP
    addresses, in the order resolved).

    Connect with :meth:`connect` (blocking) or :meth:`open_connection` (asyncio): both
    require the record's :attr:`key` in the handshake, so a peer that does not own it
    cannot answer."""

    name: str
    record: LanRecord
    endpoints: tuple[tuple[str, int], ...]

    @property
    def key(self) -> bytes:
        """The Noise static public key a connection to this peer must prove."""
        return self.record.key

    @property
    def graph(self) -> str | None:
        """A graph peer's namespace (None: not a graph peer)."""
        return self.record.graph

    @property
    def host_id(self) -> str | None:
        """The Host the peer claims to be (unchecked: see :attr:`LanRecord.host_id`)."""
        return self.record.host_id

    def verify_host(self, ledger: Ledger) -> Host:
        """The Host the record claims, read on ``ledger``, once its Noise key is found to
        be :attr:`key` (what a connection to the peer proves): the check to make before
        paying a Host found on the LAN. LanDiscoveryError when the record claims no
        Host or another key; the ledger's errors (ObjectNotFound) as they come."""
        if self.record.host_id is None:
            raise LanDiscoveryError(f"{self.name!r} claims no Host")
        host = ledger.get_host(self.record.host_id)
        if host.noise_static_key != self.key:
            raise LanDiscoveryError(
                f"{self.name!r} claims Host {self.record.host_id}, whose key is another"
            )
        return host

    def connect(self, timeout: float | None = 10.0, **kwargs: Any) -> DTPSocket:
        """A blocking DTP connection to the peer (:func:`dtp.socket.create_connection`
        with ``server_key`` = :attr:`key`): each endpoint in turn, ``timeout`` each;
        the last failure is raised when none answers. Keyword arguments (``identity``,
        ``config``) go to ``create_connection``."""
        import dtp.socket

        failure: BaseException | None = None
        for endpoint in self.endpoints:
            try:
                return dtp.socket.create_connection(
                    endpoint, timeout, server_key=self.key, **kwargs
                )
            except (DTPError, OSError) as exc:
                failure = exc
        assert failure is not None  # (a peer has an endpoint: PeerTable keeps no other)
        raise failure

    async def open_connection(
        self, timeout: float | None = 10.0, **kwargs: Any
    ) -> tuple[DTPStreamReader, DTPStreamWriter]:
        """An asyncio DTP connection, ``(reader, writer)``, as :meth:`connect` makes
        one (:func:`dtp.aio.open_connection`)."""
        import dtp.aio

        failure: BaseException | None = None
        for host, port in self.endpoints:
            try:
                return await dtp.aio.open_connection(
                    host, port, server_key=self.key, timeout=timeout, **kwargs
                )
            except (DTPError, OSError) as exc:
                failure = exc
        assert failure is not None
        raise failure


@dataclass(frozen=True)
class LanEvent:
    """A change a browser saw: a peer ``"found"``, ``"updated"`` (its record or
    addresses changed) or ``"lost"`` (it said goodbye, its records expired, or it no
    longer matches what is browsed for)."""

    kind: Literal["found", "updated", "lost"]
    peer: LanPeer


@dataclass(frozen=True)
class PeerFilter:
    """What a browser looks for; None matches anything. ``graph``: graph peers of that
    namespace (``True``: of any); ``service``: that service name; ``host_id``: that
    Host; ``key``: that key."""

    graph: str | bool | None = None
    service: str | None = None
    host_id: str | None = None
    key: bytes | None = None

    def __post_init__(self) -> None:
        if self.graph is not None and not isinstance(self.graph, str | bool):
            raise TypeError(f"graph must be a str, True or None, not {type(self.graph).__name__}")
        if self.graph is False:
            raise ValueError("graph=False is not a filter: leave it out (None)")
        if self.service is not None and not isinstance(self.service, str):
            raise TypeError(f"service must be a str, not {type(self.service).__name__}")
        if self.host_id is not None:
            # (the canonical form the records hold)
            object.__setattr__(
                self, "host_id", LanRecord(bytes(KEY_LEN), host_id=self.host_id).host_id
            )
        if self.key is not None and (not isinstance(self.key, bytes) or len(self.key) != KEY_LEN):
            raise ValueError(f"key must be {KEY_LEN} bytes")

    def matches(self, record: LanRecord) -> bool:
        if self.graph is True and record.graph is None:
            return False
        if isinstance(self.graph, str) and record.graph != self.graph:
            return False
        if self.service is not None and record.service != self.service:
            return False
        if self.host_id is not None and record.host_id != self.host_id:
            return False
        return self.key is None or record.key == self.key


def _endpoints(addresses: Iterable[str], port: int) -> tuple[tuple[str, int], ...]:
    found: list[tuple[str, int]] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_multicast or address.is_unspecified:
            continue  # (not an address a connection can go to)
        endpoint = (str(address), port)
        if endpoint not in found:
            found.append(endpoint)
        if len(found) == MAX_ADDRESSES:
            break
    return tuple(found)


@dataclass
class PeerTable:
    """The peers found, by instance name. :meth:`resolved` and :meth:`removed` take what
    mDNS reported and return the event it makes (None: nothing a user sees changed). A
    record that breaks the format is refused: counted in :attr:`refused` (by reason in
    :attr:`refused_by_reason`), logged once per instance, never raised -- and a peer
    whose record turns bad is lost."""

    filter: PeerFilter = field(default_factory=PeerFilter)
    max_peers: int = MAX_PEERS
    peers: dict[str, LanPeer] = field(default_factory=dict)
    refused: int = 0
    refused_by_reason: Counter[str] = field(default_factory=Counter)
    _logged: dict[str, None] = field(default_factory=dict)

    def resolved(
        self, name: str, text: bytes, port: int, addresses: Iterable[str]
    ) -> LanEvent | None:
        """Instance ``name`` resolved to TXT data ``text``, SRV ``port`` and
        ``addresses``."""
        try:
            record = decode_txt(text)
        except LanRecordError as exc:
            self._refuse(name, exc.reason, str(exc))
            return self.removed(name)
        endpoints = _endpoints(addresses, port)
        if not endpoints:
            self._refuse(name, "address", "no address to connect to")
            return self.removed(name)
        if not self.filter.matches(record):
            return self.removed(name)
        peer = LanPeer(name, record, endpoints)
        old = self.peers.get(name)
        if old == peer:
            return None
        if old is None and len(self.peers) >= self.max_peers:
            self._refuse(name, "full", f"the browser holds {self.max_peers} peers already")
            return None
        self.peers[name] = peer
        self._logged.pop(name, None)  # (a record that turns bad again is logged again)
        return LanEvent("found" if old is None else "updated", peer)

    def removed(self, name: str) -> LanEvent | None:
        """Instance ``name`` said goodbye or its records expired."""
        peer = self.peers.pop(name, None)
        return None if peer is None else LanEvent("lost", peer)

    def _refuse(self, name: str, reason: str, why: str) -> None:
        self.refused += 1
        self.refused_by_reason[reason] += 1
        if name not in self._logged:
            if len(self._logged) >= _REMEMBERED_REFUSALS:
                del self._logged[next(iter(self._logged))]
            self._logged[name] = None
            logger.warning("LAN discovery: %r refused: %s", name[:120], why)
