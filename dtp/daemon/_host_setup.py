"""The daemon's Host on the ledger: created (and recorded in the state directory's
``host.json``) at the first start, then its endpoint, Noise key, services and firewall
published as the config says -- at each start and reload, only what differs, and sent
again when Sui's congestion control cancels a transaction."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dtp.daemon._config import DaemonConfig, DaemonSettings
from dtp.daemon._logs import kv
from dtp.errors import ChainError, DTPError, HostConfigError, LedgerUnavailable, ObjectNotFound
from dtp.identity._files import write_durably
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import FirewallMode
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger

__all__ = [
    "HOST_FILE",
    "SYNC_PAUSE",
    "SYNC_TRIES",
    "HostSetup",
    "HostSync",
    "recorded_host_id",
]

logger = logging.getLogger("dtp.daemon")  # (the start and the reloads are one story in its log)

HOST_FILE = "host.json"

SYNC_TRIES = 4
"""Times the host's set-up (at start, at a reload) is sent when Sui's congestion control
keeps cancelling its transactions, SuiLedger's own retries used up each time."""
SYNC_PAUSE = 1.0
"""Seconds before the second try, doubled before each further one."""


@dataclass(frozen=True)
class HostSync:
    """What :meth:`HostSetup.sync` publishes, and under which config."""

    in_force: DaemonConfig
    """The config in force: the one errors cite, and whose ``[daemon]`` settings find
    the host (:meth:`HostSetup.host_id`) and the ledger (Sui or not)."""
    config: DaemonConfig
    """The config whose endpoint, Noise key, services and firewall are published (a
    reload's new one, or ``in_force`` itself at a start)."""
    endpoint: str
    """The endpoint published (``host:port``)."""
    host_id: str | None
    """The Host, when known; else :meth:`HostSetup.host_id`'s (created if need be)."""
    checkpoint: Callable[[], None] | None = None
    """Runs before each ledger transaction, and raises to end the sync there (a stop
    while starting, where a firewall list of thousands of entries is as many
    transactions); None: nothing interrupts it (a reload finishes first)."""


class HostSetup:
    """Sets up the Host of ``identity`` on ``ledger``."""

    def __init__(self, ledger: Ledger, identity: HostIdentity) -> None:
        self.ledger = ledger
        self.identity = identity

    def fund(self, want: int) -> None:
        """Top the identity up to ``want`` MIST from a LocalLedger's faucet (``[daemon]
        faucet``; a Sui ledger has none)."""
        if want and isinstance(self.ledger, LocalLedger):
            have = self.ledger.balance(self.identity.sui_address)
            if have < want:
                self.ledger.faucet(self.identity.sui_address, want - have)

    def host_id(self, settings: DaemonSettings, endpoint: str) -> str:
        """The Host's ID: ``settings.host_id``, else the one recorded in the state
        directory, else that of a Host created now (and recorded) with ``endpoint``."""
        if settings.host_id is not None:
            return settings.host_id
        record = settings.state_dir / HOST_FILE
        if record.exists():
            return recorded_host_id(record)
        host_id = self.ledger.create_host(self.identity, self.identity.noise_public, [endpoint])
        logger.info("host created", extra=kv(host_id=host_id))
        try:
            write_durably(record, json.dumps({"host_id": host_id}).encode("utf-8"))
        except OSError as exc:
            # no record: the next start would create yet another Host, and this one's
            # services, firewall and clients would be on a Host nothing names
            raise HostConfigError(
                f"Host {host_id} was created, but {record} could not be written ({exc}): "
                f"set [daemon] host_id = {host_id!r}"
            ) from exc
        return host_id

    def sync(self, job: HostSync) -> str:
        """Publish the endpoint, key, services and firewall of ``job.config`` on the
        ledger (only what differs); returns the host ID (:class:`HostSync`)."""
        ledger, me = self.ledger, self.identity
        in_force, config, endpoint = job.in_force, job.config, job.endpoint
        step = job.checkpoint or _no_checkpoint
        step()
        host_id = job.host_id or self.host_id(in_force.daemon, endpoint)
        try:
            host = ledger.get_host(host_id)
        except ObjectNotFound:
            raise _no_such_host(in_force, host_id) from None
        if host.authority != me.sui_address:
            raise HostConfigError(
                f"host {host_id} belongs to {host.authority}, not to this daemon's identity "
                f"{me.sui_address}"
            )
        if host.noise_static_key != me.noise_public:
            step()
            ledger.set_noise_static_key(me, host_id, me.noise_public)
        if [e if isinstance(e, bytes) else str(e).encode() for e in host.endpoints] != [
            endpoint.encode()
        ]:
            step()
            ledger.set_endpoints(me, host_id, [endpoint])
        wanted = {s.port: s for s in config.services}
        for port, service in wanted.items():
            current = host.services.get(port)
            if current is None:
                step()
                ledger.add_service(
                    me, host_id, port, service.kind, service.sla(), service.max_connections
                )
                continue
            # a half-close timeout the config does not set is the published one, kept: a
            # provider's own (set with `dtp service update`) is not undone by a reload
            sla = service.sla(current.sla)
            if (current.sla, current.max_connections) != (sla, service.max_connections):
                step()
                ledger.update_service(me, host_id, port, sla, service.max_connections)
        for port in host.services:
            if port not in wanted:
                step()
                try:
                    ledger.remove_service(me, host_id, port)
                except ChainError as exc:
                    logger.warning(
                        "service kept on the ledger",
                        extra=kv(port=port, reason=str(exc)),
                    )
        fw, published = config.firewall, host.firewall
        # the lists as published: Tables, read entry by entry (only when there is one)
        allow_now = _published(ledger, host_id, "allow", published.allow_count)
        deny_now = _published(ledger, host_id, "deny", published.deny_count)
        # one transaction per entry, in an order that never lets through a client the
        # file keeps out while the lists change: what restricts first (allow entries
        # taken off, which also makes room, then denials), an allowlist complete before
        # its mode is switched on, and denials lifted last. (The mode went first: a
        # switch to "allowlist" shut out the clients still to be added, for as many
        # transactions as the list is long.)
        for client in sorted(allow_now - set(fw.allow)):
            step()
            ledger.disallow(me, host_id, client)
        for client in sorted(set(fw.deny) - deny_now):
            step()
            ledger.deny(me, host_id, client)
        for client in sorted(set(fw.allow) - allow_now):
            step()
            ledger.allow(me, host_id, client)
        mode = FirewallMode.ALLOW_LISTED if fw.mode == "allowlist" else FirewallMode.ALLOW_ALL
        if published.mode != mode:
            step()
            ledger.set_firewall_mode(me, host_id, int(mode))
        for client in sorted(deny_now - set(fw.deny)):
            step()
            ledger.undeny(me, host_id, client)
        limits = (fw.max_connections_per_client, fw.max_bytes_per_sec, fw.max_requests_per_sec)
        if limits != (
            published.max_connections_per_client,
            published.max_bytes_per_sec,
            published.max_requests_per_sec,
        ):
            step()
            ledger.set_client_limits(me, host_id, *limits)
        return host_id

    async def sync_retried(self, job: HostSync) -> str:
        """:meth:`sync` in a thread, sent again when Sui's congestion control
        cancelled one of its transactions every time SuiLedger sent it (a passing
        outage: it did not execute, and the sync does only what still differs), up to
        :data:`SYNC_TRIES` times."""
        for attempt in range(SYNC_TRIES):
            try:
                return await asyncio.to_thread(self.sync, job)
            except LedgerUnavailable as exc:
                if attempt + 1 == SYNC_TRIES or not _congested(job.in_force, exc):
                    raise
                pause = SYNC_PAUSE * 2**attempt
                logger.warning(
                    "the host's set-up was cancelled for congestion",
                    extra=kv(error=str(exc), retry=f"in {pause:g} s"),
                )
                await asyncio.sleep(pause)
                (job.checkpoint or _no_checkpoint)()
        raise AssertionError("unreachable")  # (the last try returns or raises)


def _congested(in_force: DaemonConfig, exc: LedgerUnavailable) -> bool:
    """Whether ``exc`` is Sui's congestion control cancelling a transaction
    (``SharedObjectCongestion``; never on a LocalLedger)."""
    if not in_force.daemon.ledger.is_sui:
        return False
    from dtp.ledger.sui._client import SharedObjectCongestion  # (loaded: a Sui ledger)

    return isinstance(exc, SharedObjectCongestion)


def _no_such_host(in_force: DaemonConfig, host_id: str) -> DTPError:
    """The error for a Host the ledger does not hold: named by the config's
    ``host_id`` (a config error, exit 2) or by ``host.json`` (another ledger file
    than the one it was created on?). It was the ledger's bare "No Host with ID …
    exists on this ledger." naming neither."""
    settings = in_force.daemon
    ledger = settings.ledger.path or settings.ledger.describe()
    if settings.host_id is not None:
        return in_force.error(("daemon", "host_id"), f"no Host {host_id} on the ledger {ledger}")
    record = settings.state_dir / HOST_FILE
    return HostConfigError(
        f"{record} names Host {host_id}, which the ledger {ledger} does not hold (was "
        "it created on another ledger?): point [daemon] ledger at that one, or remove "
        "the record to create a new Host"
    )


def recorded_host_id(record: Path) -> str:
    """The host ID in ``host.json``. A damaged record is an error, not a reason to create
    another Host: the services, firewall and clients are on the recorded one."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the stack
        data = None
    host_id = data.get("host_id") if isinstance(data, dict) else None
    if not isinstance(host_id, str):
        raise HostConfigError(
            f'{record} is damaged (expected {{"host_id": "0x…"}}): restore it, or set '
            "[daemon] host_id; removing it creates a new Host"
        )
    return host_id


def _no_checkpoint() -> None:
    """The checkpoint of work that no stop interrupts (a reload finishes first)."""


def _published(ledger: Ledger, host_id: str, which: str, count: int) -> set[str]:
    """The addresses on the Host's ``which`` list (no read when the Host says it is
    empty)."""
    return set(ledger.firewall_list(host_id, which)) if count else set()
