"""The daemon's forwards: their forwarders started, and given their new settings at a
reload (a forward whose new listener cannot bind keeps its old one; forwards trading
addresses move all or nothing), the old ones retired with their open tunnels going on."""

from __future__ import annotations

import logging
import os
import socket

from dtp.daemon._config import ForwardConfig, join_host_port
from dtp.daemon._forwarder import Forwarder
from dtp.daemon._gas import GasWatch
from dtp.daemon._logs import kv
from dtp.daemon._refunds import Refunds
from dtp.daemon._state import StatusBook
from dtp.daemon._udp_forward import UdpForward
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger

__all__ = ["Forwards", "bind_failure"]

logger = logging.getLogger("dtp.daemon")  # (a reload is one story in the daemon's log)


class Forwards:
    """The forwarders of one daemon, by forward name."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        book: StatusBook,
        gas: GasWatch,
        refunds: Refunds | None = None,
    ) -> None:
        self.ledger = ledger
        self.identity = identity
        self.book = book
        self.gas = gas
        self.refunds = refunds
        """The daemon's book of its forwarders' connections, which it settles."""
        self.running: dict[str, Forwarder | UdpForward] = {}
        """The forwarders serving each forward now."""
        self.retired: set[Forwarder | UdpForward] = set()
        """Forwarders a reload replaced or removed: their open tunnels go on until the
        drain."""

    async def start(self, forward: ForwardConfig) -> str:
        """Start ``forward``'s forwarder; returns its bound address. Raises OSError when
        it cannot bind."""
        fwd, address = await self._open(forward)
        self.running[forward.name] = fwd
        return address

    async def _open(self, forward: ForwardConfig) -> tuple[Forwarder | UdpForward, str]:
        """A started forwarder, not yet registered, and its bound address; raises
        OSError when it cannot bind."""
        fwd: Forwarder | UdpForward
        args = (forward, self.ledger, self.identity, self.book)
        if forward.protocol == "udp":
            fwd = UdpForward(*args, gas=self.gas, refunds=self.refunds)
        else:
            fwd = Forwarder(*args, gas=self.gas, refunds=self.refunds)
        host, port = await fwd.start()
        return fwd, join_host_port(host, port)

    async def reload(
        self, old_forwards: tuple[ForwardConfig, ...], wanted: tuple[ForwardConfig, ...]
    ) -> tuple[ForwardConfig, ...]:
        """Give changed and new forwards their listener and retire removed ones; returns
        the settings of the forwards now running. A forward whose new listener cannot
        bind keeps its old one (and old settings); the error is logged. ``old_forwards``:
        the settings running now."""
        old = {f.name: f for f in old_forwards}
        running: dict[str, ForwardConfig] = {}
        # forwards trading addresses (a on X and b on Y become a on Y and b on X) first,
        # all or nothing: neither new listener could bind while the other's old one held
        # its address
        moved = await self._move_reused(old, wanted)
        for forward in wanted:
            previous = old.get(forward.name)
            if forward.name in moved:
                kept = moved[forward.name]
                if kept is not None:
                    running[forward.name] = kept
                continue
            if previous == forward:
                running[forward.name] = forward
                continue
            kept = await self._replace(previous, forward)
            if kept is not None:
                running[forward.name] = kept
        for name in old.keys() - {f.name for f in wanted}:
            self._retire(name)
        return tuple(running.values())

    async def _move_reused(
        self, old: dict[str, ForwardConfig], wanted: tuple[ForwardConfig, ...]
    ) -> dict[str, ForwardConfig | None]:
        """Start the changed forwards of ``wanted`` whose new address another forward's
        old listener holds (one changed or removed by this reload: it gives the address
        up), with those other forwards: their old listeners are released first, then all
        the new ones bind. If one cannot bind, the new ones are closed again and the
        released forwards start again with their old settings (the error is logged):
        the old settings serve, as for a forward whose new address is in use. Returns
        the settings now running of each forward of ``wanted`` handled here (None: not
        running)."""
        new = {f.name: f for f in wanted}
        holders = {(f.protocol, f.listen): f.name for f in old.values() if f.listen.port != 0}
        claimants: list[ForwardConfig] = []
        released: list[ForwardConfig] = []
        for forward in wanted:
            if old.get(forward.name) == forward:
                continue
            holder = holders.get((forward.protocol, forward.listen))
            if holder is None or holder == forward.name or new.get(holder) == old[holder]:
                continue  # (a holder that keeps its address: the bind fails, as before)
            claimants.append(forward)
            if all(f.name != holder for f in released):
                released.append(old[holder])
        if not claimants:
            return {}
        group = {f.name for f in claimants} | {f.name for f in released if f.name in new}
        for previous in released:
            await self._release(previous.name)
        opened: dict[str, Forwarder | UdpForward] = {}
        failed: tuple[ForwardConfig, OSError] | None = None
        for forward in wanted:
            if forward.name not in group:
                continue
            try:
                opened[forward.name], _ = await self._open(forward)
            except OSError as error:
                failed = (forward, error)
                break
        if failed is None:
            for name, fresh in opened.items():
                self._retire(name)  # the claimants not released: their old listener
                self.running[name] = fresh
            return {name: new[name] for name in group}
        self._log_kept(failed[0], old.get(failed[0].name), failed[1])
        for fresh in opened.values():
            await fresh.release()
            self.retired.add(fresh)  # a client it accepted meanwhile goes on
        for name, fwd in self.running.items():
            if name in group:
                fwd.show_listen()  # a fresh one of the same name set its own address
        result: dict[str, ForwardConfig | None] = {}
        for name in (f.name for f in wanted if f.name in group):
            kept = old.get(name)
            result[name] = kept
            if kept is None or name in self.running:
                continue  # new, or its old listener still runs
            try:
                await self.start(kept)
            except OSError as again:
                logger.error(
                    "forward stopped: its old listener could not bind again",
                    extra=kv(forward=name, listen=str(kept.listen), error=bind_failure(again)),
                )
                result[name] = None
        return result

    async def _replace(
        self, previous: ForwardConfig | None, forward: ForwardConfig
    ) -> ForwardConfig | None:
        """Start ``forward`` in place of ``previous``; returns the settings that run."""
        try:
            # the new listener first: the old one keeps accepting until it is up
            fresh, _ = await self._open(forward)
        except OSError as exc:
            if previous is None or not _same_listen(previous, forward):
                self._log_kept(forward, previous, exc)
                return previous
            # the old listener itself holds the address: free it, then try again
            await self._release(forward.name)
            try:
                fresh, _ = await self._open(forward)
            except OSError as exc:
                self._log_kept(forward, previous, exc)
                try:
                    await self.start(previous)
                except OSError as again:
                    logger.error(
                        "forward stopped: its old listener could not bind again",
                        extra=kv(
                            forward=previous.name,
                            listen=str(previous.listen),
                            error=bind_failure(again),
                        ),
                    )
                    return None
                return previous
        else:
            self._retire(forward.name)
        self.running[forward.name] = fresh
        return forward

    def _log_kept(
        self, forward: ForwardConfig, previous: ForwardConfig | None, exc: OSError
    ) -> None:
        if previous is None:
            message = "reload: new forward not started, its listen address cannot be bound"
        else:
            message = "reload: forward keeps its old listener, the new one cannot be bound"
        logger.error(
            message,
            extra=kv(forward=forward.name, listen=str(forward.listen), error=bind_failure(exc)),
        )

    def _retire(self, name: str) -> None:
        fwd = self.running.pop(name, None)
        if fwd is not None:
            fwd.retire()
            self.retired.add(fwd)  # its open tunnels go on

    async def _release(self, name: str) -> None:
        """Retire a forwarder and wait until its port is free."""
        fwd = self.running.pop(name, None)
        if fwd is not None:
            await fwd.release()
            self.retired.add(fwd)


def _same_listen(a: ForwardConfig, b: ForwardConfig) -> bool:
    """Whether ``b`` would bind the very address ``a`` is bound to."""
    return a.protocol == b.protocol and a.listen == b.listen and a.listen.port != 0


def bind_failure(exc: OSError) -> str:
    """Why a listener could not bind, said once (asyncio's own message repeats the
    address)."""
    if exc.errno and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)
