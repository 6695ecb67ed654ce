"""LAN discovery with mDNS / DNS-SD (docs/messaging.md §6.1): DTP endpoints announce
themselves on the local network and find each other with no ledger.

::

    import dtp.socket
    from dtp.discovery import lan

    server = dtp.socket.create_server(("0.0.0.0", 7000), identity=identity)
    with lan.announce(server):                      # until the block ends
        ...

    with lan.browse() as browser:                   # elsewhere on the LAN
        peer = browser.wait_for(timeout=10)
        with peer.connect() as sock:                # the handshake proves peer.key
            sock.sendall(b"hello")

    async with lan.browse_async(graph="notes") as browser:
        async for event in browser:                 # "found", "updated", "lost"
            print(event.kind, event.peer.endpoints)

A TXT record is unauthenticated: the only thing a connection takes from it is the key
the handshake must prove (Noise IK with ``server_key=peer.key``). A spoofed record can
make a connection fail, never reach a key the record did not name; its host ID,
service and graph namespace are claims, to be checked where they matter.

Each function makes an mDNS endpoint (:class:`LanDiscovery`) of its own, on every
interface (or those of ``interfaces``), closed with what it returns; pass
``discovery=`` to share one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from dtp.discovery._browsing import MAX_QUEUED, AsyncBrowser, Browser, EventCallback
from dtp.discovery._mdns import DEFAULT_TTL, Announcement, LanDiscovery
from dtp.discovery._peers import MAX_PEERS, LanEvent, LanPeer, PeerFilter
from dtp.discovery._records import SERVICE_TYPE, LanRecord, decode_txt, encode_txt
from dtp.discovery.errors import LanDiscoveryError, LanRecordError
from dtp.protocol.connection import TRANSPORT_VERSION

__all__ = [
    "DEFAULT_TTL",
    "MAX_PEERS",
    "MAX_QUEUED",
    "SERVICE_TYPE",
    "Announcement",
    "AsyncBrowser",
    "Browser",
    "EventCallback",
    "LanDiscovery",
    "LanDiscoveryError",
    "LanEvent",
    "LanPeer",
    "LanRecord",
    "LanRecordError",
    "PeerFilter",
    "Pending",
    "Server",
    "announce",
    "announce_async",
    "browse",
    "browse_async",
    "decode_txt",
    "encode_txt",
    "record_for",
]

_T = TypeVar("_T")


class Server(Protocol):
    """What :func:`announce` reads of a server: where it listens and its key (every DTP
    server has both: :mod:`dtp.socket`'s, :mod:`dtp.aio`'s, a graph server)."""

    @property
    def address(self) -> tuple[str, int]: ...

    @property
    def noise_public_key(self) -> bytes: ...


def record_for(
    key: bytes,
    *,
    host_id: str | None = None,
    service: str | None = None,
    port: int | None = None,
    graph: str | None = None,
    graph_sync: int | None = None,
) -> LanRecord:
    """The record of an endpoint with Noise key ``key`` that speaks this program's
    transport version (the other fields: :class:`LanRecord`)."""
    return LanRecord(
        key,
        TRANSPORT_VERSION,
        host_id=host_id,
        service=service,
        port=port,
        graph=graph,
        graph_sync=graph_sync,
    )


def _endpoint(
    server: Server | None, address: tuple[str, int] | None, key: bytes | None
) -> tuple[tuple[str, int], bytes]:
    if server is not None:
        if address is not None or key is not None:
            raise TypeError("give a server, or its address and key, not both")
        return server.address, server.noise_public_key
    if address is None or key is None:
        raise TypeError("announce needs a server, or address= and key=")
    return address, key


def _discovery(
    discovery: LanDiscovery | None, interfaces: Sequence[str] | None
) -> tuple[LanDiscovery, bool]:
    if discovery is not None:
        if interfaces is not None:
            raise TypeError("interfaces are the discovery's own: give one or the other")
        if not isinstance(discovery, LanDiscovery):
            raise TypeError(f"discovery must be a LanDiscovery, not {type(discovery).__name__}")
        return discovery, False
    return LanDiscovery(interfaces), True


def announce(
    server: Server | None = None,
    *,
    address: tuple[str, int] | None = None,
    key: bytes | None = None,
    host_id: str | None = None,
    service: str | None = None,
    port: int | None = None,
    graph: str | None = None,
    graph_sync: int | None = None,
    name: str | None = None,
    interfaces: Sequence[str] | None = None,
    discovery: LanDiscovery | None = None,
    ttl: int = DEFAULT_TTL,
    timeout: float | None = 10.0,
) -> Announcement:
    """Announce a DTP endpoint on the LAN until the :class:`Announcement` returned is
    closed (``with`` closes it).

    ``server``: any DTP server (its ``address`` and ``noise_public_key``), or give
    ``address`` (the carrier's ``(host, port)``) and ``key``. A server bound to a
    wildcard address is announced at every address of the interfaces mDNS runs on.
    ``host_id``, ``service``, ``port``: the Host, service name and DTP port it serves
    (what the services daemon announces); ``graph`` and ``graph_sync``: a graph peer's
    namespace and sync version (what :class:`dtp.graph.GraphServer` announces).
    ``name``: the instance name (default ``dtp-<key prefix>-<port>``). Returns once
    the name is probed and claimed (about 1.5 s: RFC 6762 §8); LanDiscoveryError
    after ``timeout``."""
    at, static_key = _endpoint(server, address, key)
    record = record_for(
        static_key, host_id=host_id, service=service, port=port, graph=graph, graph_sync=graph_sync
    )
    mdns, owned = _discovery(discovery, interfaces)
    try:
        announcement = mdns.announce(record, at, name=name, ttl=ttl, timeout=timeout)
    except BaseException:
        if owned:
            mdns.close()
        raise
    announcement.owns_discovery = owned
    return announcement


class Pending(Generic[_T]):
    """What an asyncio call returns before it is awaited: ``await`` it for the result,
    or ``async with`` it to have the result closed at the block's end."""

    def __init__(self, start: Callable[[], Awaitable[_T]]) -> None:
        self._start = start
        self._result: _T | None = None

    async def _get(self) -> _T:
        if self._result is None:
            self._result = await self._start()
        return self._result

    def __await__(self) -> Generator[Any, None, _T]:
        return self._get().__await__()

    async def __aenter__(self) -> _T:
        return await self._get()

    async def __aexit__(self, *exc: object) -> None:
        if self._result is not None:
            await self._result.aclose()  # type: ignore[attr-defined]


def announce_async(
    server: Server | None = None,
    *,
    address: tuple[str, int] | None = None,
    key: bytes | None = None,
    host_id: str | None = None,
    service: str | None = None,
    port: int | None = None,
    graph: str | None = None,
    graph_sync: int | None = None,
    name: str | None = None,
    interfaces: Sequence[str] | None = None,
    discovery: LanDiscovery | None = None,
    ttl: int = DEFAULT_TTL,
    timeout: float | None = 10.0,
) -> Pending[Announcement]:
    """:func:`announce` for asyncio: ``ann = await announce_async(server)`` (withdraw
    with ``await ann.aclose()``), or ``async with announce_async(server) as ann:``."""
    at, static_key = _endpoint(server, address, key)
    record = record_for(
        static_key, host_id=host_id, service=service, port=port, graph=graph, graph_sync=graph_sync
    )
    if discovery is not None:
        _discovery(discovery, interfaces)  # (its checks)

    async def start() -> Announcement:
        import asyncio

        if discovery is not None:
            mdns, owned = discovery, False
        else:
            mdns, owned = await asyncio.to_thread(LanDiscovery, interfaces), True
        try:
            announcement = await mdns.announce_async(
                record, at, name=name, ttl=ttl, timeout=timeout
            )
        except BaseException:
            if owned:
                await mdns.aclose()
            raise
        announcement.owns_discovery = owned
        return announcement

    return Pending(start)


def browse(
    *,
    graph: str | bool | None = None,
    service: str | None = None,
    host_id: str | None = None,
    key: bytes | None = None,
    on_event: EventCallback | None = None,
    interfaces: Sequence[str] | None = None,
    discovery: LanDiscovery | None = None,
    max_peers: int = MAX_PEERS,
    max_queued: int = MAX_QUEUED,
    timeout: float | None = 10.0,
) -> Browser:
    """Browse the LAN for DTP endpoints: a :class:`Browser` (close it, or use ``with``).

    Filters (None: any): ``graph``, graph peers of that namespace (True: of any);
    ``service``, endpoints of that service; ``host_id``, those claiming that Host;
    ``key``, the endpoint with that key. Iterate the browser for its
    :class:`LanEvent`\\ s, :meth:`Browser.wait_for` a peer, or give ``on_event``.
    Records that break the format are left out and counted (``browser.refused``),
    never raised; at most ``max_peers`` peers are kept."""
    peer_filter = PeerFilter(graph, service, host_id, key)
    mdns, owned = _discovery(discovery, interfaces)
    try:
        browser = Browser(
            mdns,
            peer_filter,
            on_event=on_event,
            max_peers=max_peers,
            max_queued=max_queued,
            timeout=timeout,
        )
    except BaseException:
        if owned:
            mdns.close()
        raise
    browser.owns_discovery = owned
    return browser


def browse_async(
    *,
    graph: str | bool | None = None,
    service: str | None = None,
    host_id: str | None = None,
    key: bytes | None = None,
    on_event: EventCallback | None = None,
    interfaces: Sequence[str] | None = None,
    discovery: LanDiscovery | None = None,
    max_peers: int = MAX_PEERS,
    max_queued: int = MAX_QUEUED,
    timeout: float | None = 10.0,
) -> AsyncBrowser:
    """:func:`browse` for asyncio: ``async with browse_async(...) as browser:`` (or
    ``browser = await browse_async(...)``, then ``await browser.aclose()``)."""
    peer_filter = PeerFilter(graph, service, host_id, key)
    source: LanDiscovery | Callable[[], LanDiscovery]
    if discovery is not None:
        _discovery(discovery, interfaces)  # (its checks)
        source = discovery
    else:
        source = lambda: LanDiscovery(interfaces)  # noqa: E731 (made in a worker thread)
    return AsyncBrowser(
        source,
        peer_filter,
        on_event=on_event,
        max_peers=max_peers,
        max_queued=max_queued,
        timeout=timeout,
    )
