"""The services announced on the LAN (``[daemon] lan_announce``): one mDNS announcement
per service (``dtp.discovery.lan``: the Host ID, the service's name and DTP port, the
host's Noise key), kept as services are added and removed by reloads, withdrawn when
the daemon stops. Clients found this way still connect by host ID and pay through the
ledger: the announcement tells them the host is near, and where (docs/daemon.md)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from dtp.daemon._config import ServiceConfig
from dtp.daemon._logs import kv
from dtp.discovery.lan import Announcement, LanDiscovery, LanDiscoveryError, record_for

__all__ = ["LanAnnouncer"]

logger = logging.getLogger("dtp.daemon._lan")


class LanAnnouncer:
    """Announces the services of the host ``host_id`` (Noise key ``key``) served at
    ``endpoint`` on the LAN, on ``interfaces`` (empty: every interface). A failure to
    announce is logged, never fatal: the services are served all the same."""

    def __init__(
        self, key: bytes, host_id: str, endpoint: tuple[str, int], interfaces: tuple[str, ...]
    ) -> None:
        self.key = key
        self.host_id = host_id
        self.endpoint = endpoint
        self.interfaces = interfaces
        self.announced: dict[int, tuple[ServiceConfig, Announcement]] = {}
        """Port -> the service as announced, and its announcement."""
        self._discovery: LanDiscovery | None = None

    def _name(self, service: ServiceConfig) -> str:
        # (one per service: the default name, the key's and the listener's, would be
        # the same for every service of the host)
        return f"dtp-{self.key[:8].hex()}-{self.endpoint[1]}-{service.port}"

    async def configure(self, services: tuple[ServiceConfig, ...]) -> None:
        """Announce ``services`` as they are now: withdraw those gone or changed,
        announce the new ones."""
        if self._discovery is None:
            ipv6 = any(ipaddress.ip_address(a).version == 6 for a in self.interfaces)
            try:
                self._discovery = await asyncio.to_thread(
                    LanDiscovery, self.interfaces or None, ipv6=ipv6
                )
            except LanDiscoveryError as exc:
                logger.error("cannot announce on the LAN", extra=kv(error=str(exc)))
                return
        wanted = {service.port: service for service in services}
        for port, (service, announcement) in list(self.announced.items()):
            if wanted.get(port) != service:
                del self.announced[port]
                await announcement.aclose()
        for port, service in wanted.items():
            if port in self.announced:
                continue
            record = record_for(
                self.key, host_id=self.host_id, service=service.name, port=service.port
            )
            try:
                announcement = await self._discovery.announce_async(
                    record, self.endpoint, name=self._name(service)
                )
            except (LanDiscoveryError, ValueError) as exc:
                logger.error(
                    "cannot announce a service on the LAN",
                    extra=kv(service=service.name, error=str(exc)),
                )
                continue
            self.announced[port] = (service, announcement)
            logger.info(
                "announced on the LAN",
                extra=kv(service=service.name, name=announcement.name),
            )

    async def stop(self) -> None:
        """Withdraw every announcement (goodbye packets) and close mDNS."""
        self.announced.clear()
        discovery, self._discovery = self._discovery, None
        if discovery is not None:
            with contextlib.suppress(LanDiscoveryError, OSError):
                await discovery.aclose()  # (its close withdraws what it announced)
