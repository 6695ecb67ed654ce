"""mDNS over zeroconf: :class:`LanDiscovery`, one mDNS endpoint (its sockets on the
chosen interfaces and the thread that runs them), its :class:`Announcement` of an
endpoint, and the browsing both browsers share (:class:`BrowseCore`).

Everything zeroconf does runs on its own event loop, in its own thread: the blocking
face waits on what it schedules there, the asyncio face awaits it, so both run the same
code. What a browser found is decided by :class:`~dtp.discovery._peers.PeerTable`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Self, TypeVar

from dtp._extras import missing

try:  # (the lan extra: without it, one error naming it)
    import ifaddr
    from zeroconf import (
        BadTypeInNameException,
        InterfaceChoice,
        IPVersion,
        NonUniqueNameException,
        ServiceInfo,
        ServiceStateChange,
        Zeroconf,
    )
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo
except ImportError as exc:
    raise missing("lan", "LAN discovery (mDNS)", exc) from None

from dtp.discovery._peers import LanEvent, LanPeer, PeerTable
from dtp.discovery._records import SERVICE_TYPE, LanRecord, encode_txt, instance_name
from dtp.discovery.errors import LanDiscoveryError

__all__ = [
    "DEFAULT_TTL",
    "RESOLVE_RETRY_MAX",
    "RESOLVE_TIMEOUT",
    "Announcement",
    "BrowseCore",
    "LanDiscovery",
]

logger = logging.getLogger("dtp.discovery")

DEFAULT_TTL = 120
"""Seconds a browser keeps an announcement it has not heard again: a peer that vanishes
without a goodbye (a crash, a pulled cable) is lost within this. RFC 6762 §10 suggests
75 minutes for service records; peers that sync want to notice sooner, and answering
the re-queries every ~100 s costs a packet."""

RESOLVE_TIMEOUT = 3.0
"""Seconds a browser waits for an instance's SRV, TXT and address records."""

RESOLVE_RETRY_MAX = 30.0
"""The longest wait, in seconds, before an instance that did not resolve is asked
again (the waits double from :data:`RESOLVE_TIMEOUT`). Once announced, an instance
makes no new browser event, so an answer later than the timeout (a loaded machine, a
lost packet) is asked for again here, or it would stay unresolved while announced."""

MAX_RESOLVING = 16
"""Instances resolved at once by one browser (the others wait their turn)."""

_T = TypeVar("_T")


class _Closing:
    """``with`` and ``async with`` for what :meth:`close` ends, and :meth:`aclose`, that
    close for asyncio callers (in a worker thread: it waits for the mDNS thread)."""

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class LanDiscovery(_Closing):
    """One mDNS endpoint: zeroconf's sockets on ``interfaces`` (IP addresses of this
    machine; None: every interface) and the thread that runs them. Announcements
    (:meth:`announce`) and browsers (:meth:`browse`, :meth:`browse_async`) share it;
    :meth:`close` (or the end of a ``with`` block) withdraws and stops them all.

    ``ipv6``: also announce and browse over IPv6 (default: IPv4 only).
    :class:`LanDiscoveryError` when the sockets cannot be opened."""

    def __init__(self, interfaces: Sequence[str] | None = None, *, ipv6: bool = False) -> None:
        if interfaces is not None:
            if isinstance(interfaces, str | bytes) or not all(
                isinstance(i, str) for i in interfaces
            ):
                raise TypeError("interfaces must be a sequence of IP address strings, or None")
            for text in interfaces:
                try:
                    ipaddress.ip_address(text)
                except ValueError:
                    raise ValueError(f"interfaces: {text!r} is not an IP address") from None
            if not interfaces:
                raise ValueError("interfaces must name at least one address (None: all)")
        self.interfaces: tuple[str, ...] | None = None if interfaces is None else tuple(interfaces)
        self.ipv6 = bool(ipv6)
        version = IPVersion.All if ipv6 else IPVersion.V4Only
        if (
            interfaces is not None
            and not ipv6
            and any(ipaddress.ip_address(i).version == 6 for i in interfaces)
        ):
            raise ValueError("interfaces: an IPv6 address needs ipv6=True")
        try:
            self._zc = Zeroconf(
                interfaces=list(interfaces) if interfaces is not None else InterfaceChoice.All,
                ip_version=version,
                use_asyncio=False,  # (its own thread and loop, whoever calls)
            )
        except OSError as exc:
            raise LanDiscoveryError(f"cannot open the mDNS sockets: {exc}") from exc
        assert self._zc.loop is not None
        self.loop: asyncio.AbstractEventLoop = self._zc.loop
        self._lock = threading.Lock()
        self._closed = False
        self._announcements: set[Announcement] = set()
        self._browsers: set[BrowseCore] = set()

    # -- running on zeroconf's loop ------------------------------------------------------

    def _schedule(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        with self._lock:
            if self._closed:
                coro.close()
                raise LanDiscoveryError("this LAN discovery is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        """Run ``coro`` on zeroconf's loop and wait for it (blocking callers); past
        ``timeout`` it is cancelled and LanDiscoveryError raised."""
        if threading.current_thread() is getattr(self._zc, "_loop_thread", None):
            coro.close()
            raise RuntimeError("a blocking LAN discovery call from the mDNS thread would hang")
        future = self._schedule(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LanDiscoveryError(f"mDNS did not answer within {timeout} s") from None

    async def run_async(self, coro: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        """Run ``coro`` on zeroconf's loop and await it (asyncio callers)."""
        future = asyncio.wrap_future(self._schedule(coro))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise LanDiscoveryError(f"mDNS did not answer within {timeout} s") from None

    # -- what an announcement says -------------------------------------------------------

    def addresses_for(self, host: str) -> list[str]:
        """The addresses to announce for a server bound to ``host``: that address, or
        for a wildcard (``""``, ``0.0.0.0``, ``::``) those of the interfaces this
        endpoint runs on (loopback left out unless named in ``interfaces``)."""
        try:
            bound = ipaddress.ip_address(host) if host else None
        except ValueError:
            try:
                bound = ipaddress.ip_address(socket.gethostbyname(host))
            except OSError as exc:
                raise LanDiscoveryError(f"cannot resolve the server's host {host!r}") from exc
        if bound is not None and not bound.is_unspecified:
            return [str(bound)]
        want_v6 = self.ipv6 and (bound is None or bound.version == 6)
        if self.interfaces is not None:
            found = [a for a in self.interfaces if ipaddress.ip_address(a).version == 4 or want_v6]
        else:
            found = []
            for adapter in ifaddr.get_adapters():
                for ip in adapter.ips:
                    if ip.is_IPv4:
                        address = ipaddress.ip_address(str(ip.ip))
                    elif want_v6 and isinstance(ip.ip, tuple):
                        address = ipaddress.ip_address(ip.ip[0])
                        if address.is_link_local:
                            continue  # (needs its scope, which an A/AAAA record cannot carry)
                    else:
                        continue
                    if not address.is_loopback and str(address) not in found:
                        found.append(str(address))
        if not found:
            raise LanDiscoveryError("no interface address to announce")
        return found

    # -- announcing ----------------------------------------------------------------------

    def announce(
        self,
        record: LanRecord,
        address: tuple[str, int],
        *,
        name: str | None = None,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = 10.0,
    ) -> Announcement:
        """Announce the endpoint at ``address`` (its carrier's ``(host, port)``) with
        ``record``; see :func:`dtp.discovery.lan.announce`."""
        announcement = self._prepare(record, address, name, ttl)
        self.run(self._register(announcement), timeout)
        return announcement

    async def announce_async(
        self,
        record: LanRecord,
        address: tuple[str, int],
        *,
        name: str | None = None,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = 10.0,
    ) -> Announcement:
        """:meth:`announce` for asyncio callers."""
        announcement = self._prepare(record, address, name, ttl)
        await self.run_async(self._register(announcement), timeout)
        return announcement

    def _prepare(
        self, record: LanRecord, address: tuple[str, int], name: str | None, ttl: int
    ) -> Announcement:
        if not isinstance(record, LanRecord):
            raise TypeError(f"record must be a LanRecord, not {type(record).__name__}")
        host, port = _check_address(address)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 86_400:
            raise ValueError(f"ttl must be 1..86400 seconds, not {ttl!r}")
        full_name = instance_name(record.key, port, name)
        label = full_name[: -len(SERVICE_TYPE) - 1]
        addresses = self.addresses_for(host)
        try:
            info = ServiceInfo(
                SERVICE_TYPE,
                full_name,
                port=port,
                properties=encode_txt(record),
                server=f"{_host_label(label)}.local.",
                host_ttl=ttl,
                other_ttl=ttl,
                parsed_addresses=addresses,
            )
        except BadTypeInNameException as exc:
            raise ValueError(f"name: {exc}") from None
        return Announcement(self, info, record, tuple((a, port) for a in addresses))

    async def _register(self, announcement: Announcement) -> None:
        with self._lock:
            self._announcements.add(announcement)
        try:
            # (a name taken by another endpoint gets a number: "name (2)")
            broadcast = await self._zc.async_register_service(
                announcement.info, allow_name_change=True
            )
            announcement.broadcast = asyncio.ensure_future(broadcast)
        except NonUniqueNameException as exc:
            with self._lock:
                self._announcements.discard(announcement)
            raise LanDiscoveryError(f"the name {announcement.name!r} is taken") from exc
        except BaseException:
            with self._lock:
                self._announcements.discard(announcement)
            raise

    async def _update(self, announcement: Announcement, info: ServiceInfo) -> None:
        # (a new ServiceInfo under the same name: the registry swaps it for the old one)
        with self._lock:
            if announcement not in self._announcements:
                raise LanDiscoveryError("this announcement is withdrawn")
        await _stop_broadcast(announcement)  # (its repeats would undo the new record)
        announcement.broadcast = asyncio.ensure_future(await self._zc.async_update_service(info))
        announcement.info = info

    async def _withdraw(self, announcement: Announcement) -> None:
        with self._lock:
            if announcement not in self._announcements:
                return
            self._announcements.discard(announcement)
        # zeroconf repeats an announcement twice within half a second of it, in a task
        # of its own: a repeat sent after the goodbye announces it again for a full TTL
        await _stop_broadcast(announcement)
        goodbye = await self._zc.async_unregister_service(announcement.info)
        _drop_queued_answers(self._zc, announcement.info)
        await goodbye  # (the goodbye packets sent: browsers lose it at once)

    # -- browsing ------------------------------------------------------------------------

    def start_browsing(self, core: BrowseCore, timeout: float | None) -> None:
        with self._lock:
            self._browsers.add(core)
        try:
            self.run(core.start(), timeout)
        except BaseException:
            with self._lock:
                self._browsers.discard(core)
            raise

    async def start_browsing_async(self, core: BrowseCore, timeout: float | None) -> None:
        with self._lock:
            self._browsers.add(core)
        try:
            await self.run_async(core.start(), timeout)
        except BaseException:
            with self._lock:
                self._browsers.discard(core)
            raise

    def stop_browsing(self, core: BrowseCore) -> None:
        with self._lock:
            if core not in self._browsers or self._closed:
                return
            self._browsers.discard(core)
        with contextlib.suppress(LanDiscoveryError):
            self.run(core.stop(), 5.0)

    async def stop_browsing_async(self, core: BrowseCore) -> None:
        with self._lock:
            if core not in self._browsers or self._closed:
                return
            self._browsers.discard(core)
        with contextlib.suppress(LanDiscoveryError):
            await self.run_async(core.stop(), 5.0)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Withdraw every announcement (goodbye packets), stop every browser and close
        the sockets. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            announcements = list(self._announcements)
            browsers = list(self._browsers)
        for core in browsers:
            self.stop_browsing(core)
        for announcement in announcements:
            with contextlib.suppress(LanDiscoveryError, OSError):
                self.run(self._withdraw(announcement), 5.0)
        with self._lock:
            self._closed = True
        self._zc.close()


async def _stop_broadcast(announcement: Announcement) -> None:
    broadcast, announcement.broadcast = announcement.broadcast, None
    if broadcast is not None and not broadcast.done():
        broadcast.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await broadcast


def _drop_queued_answers(zc: Zeroconf, info: ServiceInfo) -> None:
    # answers to queries wait up to half a second in zeroconf's outgoing queues (RFC
    # 6762 §6): one sent after the goodbye would announce the instance again
    # (zeroconf's queues are public attributes but not documented API: tested with the
    # version pyproject.toml requires; a later one that moved them still says goodbye)
    records = {info.dns_pointer(), info.dns_service(), info.dns_text(), *info.dns_addresses()}
    try:
        for outgoing in (zc.out_queue, zc.out_delay_queue):
            for group in outgoing.queue:
                for record in records:
                    group.answers.pop(record, None)
    except AttributeError as exc:
        logger.debug("cannot drop queued mDNS answers", exc_info=exc)


def _check_address(address: object) -> tuple[str, int]:
    if (
        not isinstance(address, tuple)
        or len(address) < 2
        or not isinstance(address[0], str)
        or isinstance(address[1], bool)
        or not isinstance(address[1], int)
        or not 1 <= address[1] <= 65535
    ):
        raise ValueError(f"address must be (host, port) with a port 1..65535, not {address!r}")
    return address[0], address[1]


def _host_label(label: str) -> str:
    """A host name for the SRV record: the instance label with what a DNS host label
    cannot hold turned into ``-``."""
    text = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in label)
    return text.strip("-")[:63] or "dtp"


class Announcement(_Closing):
    """An endpoint announced on the LAN, until :meth:`close` (or the end of a ``with`` /
    ``async with`` block) withdraws it with goodbye packets. :attr:`name` is its
    instance name (zeroconf adds a number when the name is taken), :attr:`record`
    what its TXT record says, :attr:`endpoints` the addresses announced."""

    def __init__(
        self,
        discovery: LanDiscovery,
        info: ServiceInfo,
        record: LanRecord,
        endpoints: tuple[tuple[str, int], ...],
    ) -> None:
        self.discovery = discovery
        self.info = info
        self.record = record
        self.endpoints = endpoints
        self.owns_discovery = False
        """Close :attr:`discovery` with the announcement (the module functions make one
        of their own)."""
        self.broadcast: asyncio.Future[Any] | None = None
        """zeroconf's repeats of the latest announcement (on the mDNS loop), stopped
        before an update or the goodbye."""
        self._closed = False

    @property
    def name(self) -> str:
        return str(self.info.name)

    @property
    def closed(self) -> bool:
        return self._closed

    def update(self, record: LanRecord, timeout: float | None = 10.0) -> None:
        """Announce ``record`` in place of the current one (a browser reports the peer
        ``"updated"``)."""
        info = self._updated(record)
        self.discovery.run(self.discovery._update(self, info), timeout)
        self.record = record

    async def update_async(self, record: LanRecord, timeout: float | None = 10.0) -> None:
        info = self._updated(record)
        await self.discovery.run_async(self.discovery._update(self, info), timeout)
        self.record = record

    def _updated(self, record: LanRecord) -> ServiceInfo:
        if not isinstance(record, LanRecord):
            raise TypeError(f"record must be a LanRecord, not {type(record).__name__}")
        if self._closed:
            raise LanDiscoveryError("this announcement is withdrawn")
        if record.key != self.record.key:
            # (the instance name is the key's: a new key is a new endpoint)
            raise ValueError("an announcement's key cannot change: announce the new one")
        old = self.info
        return ServiceInfo(
            old.type,
            old.name,
            port=old.port,
            properties=encode_txt(record),
            server=old.server,
            host_ttl=old.host_ttl,
            other_ttl=old.other_ttl,
            addresses=old.addresses,
        )

    def close(self) -> None:
        """Withdraw the announcement (goodbye packets: browsers lose it at once). Safe
        to call twice, and after the discovery closed."""
        if self._closed:
            return
        self._closed = True
        if not self.discovery.closed:
            with contextlib.suppress(LanDiscoveryError, OSError):
                self.discovery.run(self.discovery._withdraw(self), 5.0)
        if self.owns_discovery:
            self.discovery.close()

    def __repr__(self) -> str:
        state = "withdrawn" if self._closed else "announced"
        return f"<Announcement {self.name!r} {state} at {list(self.endpoints)}>"


class BrowseCore:
    """The browsing both browsers run: zeroconf's browser for :data:`SERVICE_TYPE` on
    the discovery's loop, each instance resolved (SRV, TXT, addresses) and handed to
    ``table``; each event it makes goes to ``deliver`` (called on the mDNS thread: it
    must only hand the event on)."""

    def __init__(
        self,
        discovery: LanDiscovery,
        table: PeerTable,
        deliver: Callable[[LanEvent], None],
        *,
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self.discovery = discovery
        self.table = table
        self.deliver = deliver
        self.resolve_timeout = resolve_timeout
        self.lock = threading.Lock()
        """Held while the table changes, and by readers in other threads."""
        self._browser: AsyncServiceBrowser | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._slots: asyncio.Semaphore | None = None

    def peers(self) -> list[LanPeer]:
        with self.lock:
            return list(self.table.peers.values())

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(MAX_RESOLVING)
        self._browser = AsyncServiceBrowser(
            self.discovery._zc, [SERVICE_TYPE], handlers=[self._on_change]
        )

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            self._emit(lambda: self.table.removed(name))
            return
        if name in self._resolving:
            self._again.add(name)  # (resolved once more when the one under way ends)
            return
        if len(self._resolving) >= self.table.max_peers:
            with self.lock:
                self.table._refuse(name, "full", "too many instances to resolve at once")
            return
        self._resolving[name] = asyncio.get_running_loop().create_task(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        assert self._slots is not None
        retry = self.resolve_timeout
        try:
            while True:
                self._again.discard(name)
                async with self._slots:
                    info = AsyncServiceInfo(SERVICE_TYPE, name)
                    found = await info.async_request(
                        self.discovery._zc, int(self.resolve_timeout * 1000)
                    )
                if found and info.port is not None:
                    self._emit(
                        functools.partial(
                            self.table.resolved,
                            name,
                            info.text or b"",
                            info.port,
                            info.parsed_scoped_addresses(),
                        )
                    )
                elif name not in self._again:
                    # asked again until it resolves or is removed (which cancels this)
                    logger.debug("LAN discovery: %r did not resolve in time", name[:120])
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, RESOLVE_RETRY_MAX)
                    continue
                if name not in self._again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # (a browser outlives whatever one instance does to zeroconf)
            logger.exception("LAN discovery: resolving %r failed", name[:120])
        finally:
            if self._resolving.get(name) is asyncio.current_task():
                del self._resolving[name]

    def _emit(self, change: Callable[[], LanEvent | None]) -> None:
        with self.lock:
            event = change()
        if event is not None:
            try:
                self.deliver(event)
            except Exception:
                logger.exception("LAN discovery: delivering an event failed")
