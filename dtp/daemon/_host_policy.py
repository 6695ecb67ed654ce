"""The Host's firewall while the services daemon serves: re-read every
:data:`POLICY_REFRESH` seconds, its rate limits applied to every client's buckets and a
deny to the open connections it names; each open connection's state on the ledger read
every :data:`dtp.daemon._served.LEDGER_CHECK`, one its client closed there cut, and one
opened with a subscription now over closed (``CLOSE_SUBSCRIPTION_ENDED``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from dtp.daemon import _served as served
from dtp.daemon._logs import kv, log_failure
from dtp.daemon._served import ServedConnection, service_row
from dtp.daemon._state import StatusBook
from dtp.daemon._tasks import cancel_and_wait
from dtp.errors import CLOSE_SUBSCRIPTION_ENDED, ChainError
from dtp.ledger._objects import Firewall, Host
from dtp.ledger.interface import Ledger
from dtp.payments._gate import ended_on_ledger, ledger_checks_due, subscriptions_over
from dtp.payments._ratelimit import RateLimiter

__all__ = ["POLICY_REFRESH", "HostPolicy"]

logger = logging.getLogger("dtp.daemon._services")  # (the exposing side logs under one name)

_T = TypeVar("_T")

POLICY_REFRESH = 2.0
"""Seconds between reads of the Host's firewall (rate limits, denials) while serving."""


class HostPolicy:
    """Keeps the served connections under the Host's firewall as on the ledger.

    ``limiter`` holds the clients' rate-limit buckets, ``conns`` the connections served
    now (whose denials count in ``book``); ``ledger_back`` is called when the Host can be
    read again after an outage (the settlements that failed meanwhile are tried then)."""

    def __init__(
        self,
        ledger: Ledger,
        limiter: RateLimiter,
        conns: Mapping[str, ServedConnection],
        book: StatusBook,
        ledger_back: Callable[[], None],
    ) -> None:
        self.ledger = ledger
        self.limiter = limiter
        self.conns = conns
        self.book = book
        self.ledger_back = ledger_back
        self.ledger_away: str | None = None
        """Why the last read of the Host failed (the ledger away: a node down or rate
        limiting), until one succeeds again; said once, not at every refresh."""
        self._firewall: Firewall | None = None  # the Host's, as last read
        self._task: asyncio.Task[None] | None = None
        # one first read at a time, and no loop once stopped: a loop started by a second
        # watch, or by one that ends after stop(), would go on reading the ledger after
        # the drain (tests/daemon/test_service_host_parts.py)
        self._starting = asyncio.Lock()
        self._stopped = False

    async def watch(self, host_id: str) -> None:
        """Read the Host's firewall once (before the first connection is served), then
        keep re-reading it every :data:`POLICY_REFRESH` seconds."""
        if self._task is not None or not host_id:
            return
        async with self._starting:
            if self._task is None:
                await self.refresh(host_id)
                if not self._stopped:
                    self._task = asyncio.ensure_future(self._loop(host_id))

    async def _loop(self, host_id: str) -> None:
        while True:
            await asyncio.sleep(POLICY_REFRESH)
            await self.refresh(host_id)

    async def refresh(self, host_id: str) -> None:
        """Apply the Host's firewall as on the ledger now: the per-client rate limits
        to every client's buckets, and a deny to the open connections it names."""
        try:
            host = await asyncio.to_thread(self.ledger.get_host, host_id)
        except ChainError as exc:
            # the last firewall read stays in force; open connections go on, their
            # receipts off the ledger, and new ones are refused (their admission
            # cannot read the ledger either)
            logger.log(
                logging.DEBUG if self.ledger_away else logging.WARNING,
                "cannot read the host: its last known firewall stays in force",
                extra=kv(error=str(exc)),
            )
            self.ledger_away = str(exc)
            return
        if self.ledger_away is not None:
            self.ledger_away = None
            logger.info("the ledger can be read again")
            self.ledger_back()
        fw, old = host.firewall, self._firewall
        self._firewall = fw
        if old is None or (old.max_bytes_per_sec, old.max_requests_per_sec) != (
            fw.max_bytes_per_sec,
            fw.max_requests_per_sec,
        ):
            self.limiter.set_limits(fw.max_bytes_per_sec, fw.max_requests_per_sec, time.monotonic())
        denied = await self._refused(host)
        for conn in list(self.conns.values()):
            if conn.client in denied:
                service_row(self.book, conn.service).deny("host_firewall")
                logger.warning(
                    "the host's firewall now denies a client",
                    extra=kv(client=conn.client, connection=conn.connection_id),
                )
                conn.writer.abort("the host's firewall now denies this client")
        await self._check_on_ledger(host)

    async def _refused(self, host: Host) -> frozenset[str]:
        """The clients served now whom the Host's firewall refuses: its lists are Tables,
        looked up per client (only where they can decide, in a thread). None when they
        cannot be read now: the next refresh looks again."""
        clients = frozenset(conn.client for conn in self.conns.values())
        if not clients:
            return frozenset()
        refused = await self._read("the host's firewall lists", self.ledger.refused, host, clients)
        return frozenset() if refused is None else refused

    async def _read(self, what: str, read: Callable[..., _T], *args: object) -> _T | None:
        """``read(*args)``, in a thread; None when the ledger cannot be read now (said
        as "cannot read ``what``": a warning, or a debug line while the ledger is known
        to be away), the next refresh reading again."""
        try:
            return await asyncio.to_thread(read, *args)
        except ChainError as exc:
            logger.log(
                logging.DEBUG if self.ledger_away else logging.WARNING,
                f"cannot read {what}",
                extra=kv(error=str(exc)),
            )
            return None

    async def _check_on_ledger(self, host: Host) -> None:
        """Close the open connections no longer Open on the ledger, and those opened
        with a subscription now over (expired, its offer withdrawn, or sold with
        ``host``, just read): each read every :data:`LEDGER_CHECK`, in a thread. Their
        ends follow (a subscribed one of a host sold to this daemon is ended by the
        subscription's rule, its offer withdrawn: docs/escrow.md §13)."""
        due = ledger_checks_due(self.conns.values(), time.monotonic(), served.LEDGER_CHECK)
        if not due:
            return
        ended = await self._read("the state of open connections", ended_on_ledger, self.ledger, due)
        if ended is None:
            return
        for conn in ended:
            logger.warning(
                "a client closed its connection on the ledger while served",
                extra=kv(client=conn.client, connection=conn.connection_id),
            )
            conn.writer.abort("the connection was closed on the ledger")
        subscribed = [c for c in due if c not in ended and c.subscription is not None]
        if not subscribed:
            return
        over = await self._read(
            "the subscriptions of open connections",
            subscriptions_over,
            self.ledger,
            subscribed,
            host,
        )
        for conn, why in over or ():
            logger.info(
                "a connection's subscription is over",
                extra=kv(client=conn.client, connection=conn.connection_id, reason=why),
            )
            conn.writer.abort(f"the subscription is over: {why}", code=CLOSE_SUBSCRIPTION_ENDED)

    async def stop(self) -> None:
        """Stop re-reading the firewall (at the end of a drain); a later :meth:`watch`
        reads it once and starts no loop."""
        self._stopped = True
        if self._task is not None:
            if (error := await cancel_and_wait(self._task)) is not None:
                log_failure(logger, "firewall refresh failed", error)
            self._task = None
