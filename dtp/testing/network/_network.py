"""The simulated network: named hosts, the links between them, listeners and
connections, partitions and crashes, on one event loop's clock and one seed.

    net = SimNetwork(seed=7)
    net.add_host("client"); net.add_host("server")
    net.link("client", "server", Link(delay=0.02, loss=0.1, datagrams=True))

    async def main():
        server = await dtp.aio.start_server(serve, "server", 7000, identity=key)
        with net.host("client"):                    # what follows runs on "client"
            reader, writer = await dtp.aio.open_connection(
                "server", 7000, server_key=key.noise_public, config=lossy)
        ...

    net.run(main())           # on a VirtualEventLoop: minutes of timeouts in milliseconds

Which host a connect comes from is the one the running code is on: :meth:`SimNetwork.host`
as a context manager (or :meth:`SimHost.spawn` for a task), else ``default_host``. A
server is on the host it listens on (``start_server(cb, "server", 7000)``; a wildcard
address, ``0.0.0.0``, means the current host). Hosts are named and have an address
(``10.0.0.<n>``): either names them.

Every random draw comes from ``seed`` (each connection direction has a stream of its
own, from the seed and the connection's number), and every event happens at a virtual
time: the same program with the same seed does the same things at the same times.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import itertools
import random
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dtp.testing.network._links import Direction, Link, Medium
from dtp.testing.network._transports import SimServer, SimTransport

__all__ = ["CONNECT_RETRIES", "NetworkStats", "SimHost", "SimNetwork", "SimulationError"]

T = TypeVar("T")

#: SYN retransmissions before a connect gives up (Linux's tcp_syn_retries: 6, about
#: 127 s from 1 s doubling).
CONNECT_RETRIES = 6
_EPHEMERAL = 40000

_CURRENT: contextvars.ContextVar[SimHost | None] = contextvars.ContextVar(
    "dtp_testing_sim_host", default=None
)
#: The hosts the ``with`` blocks around the current one made current, innermost last:
#: kept in the context, not on the host, as two tasks may each be in a block of the
#: same host at once (a token kept on the host would be reset by the other task)
_OUTER: contextvars.ContextVar[tuple[SimHost | None, ...]] = contextvars.ContextVar(
    "dtp_testing_sim_outer_hosts", default=()
)


class SimulationError(RuntimeError):
    """A simulated network used in a way it cannot answer (an unknown host, a connect
    from no host, a network bound to two loops)."""


@dataclass
class NetworkStats:
    """What crossed the network (chunks are segments on stream links, records on
    datagram links)."""

    connections: int = 0
    refused: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    chunks_lost: int = 0
    chunks_duplicated: int = 0
    resets: int = 0


class SimHost:
    """A host of a :class:`SimNetwork`: its ``name``, its address ``ip``, its listeners
    and open connections. As a context manager, the code in its block runs on it (its
    connects come from it); :meth:`spawn` starts a task on it."""

    def __init__(self, network: SimNetwork, name: str, ip: str) -> None:
        self.network = network
        self.name = name
        self.ip = ip
        self._ports = itertools.count(_EPHEMERAL)
        #: How many times the host crashed: a connect tells by it whether its program
        #: died while its SYN was being answered.
        self.crashes = 0

    def next_port(self) -> int:
        return next(self._ports)

    def __enter__(self) -> SimHost:
        _OUTER.set((*_OUTER.get(), _CURRENT.get()))
        _CURRENT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        outer = _OUTER.get()
        _CURRENT.set(outer[-1])
        _OUTER.set(outer[:-1])

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Start ``coro`` as a task running on this host."""
        context = contextvars.copy_context()
        context.run(_CURRENT.set, self)
        return self.network.loop.create_task(coro, name=name, context=context)

    def __repr__(self) -> str:
        return f"<SimHost {self.name} {self.ip}>"


@dataclass
class _Live:
    """The open ends, by host (crashes and heals reach them)."""

    ends: dict[str, dict[SimTransport, None]] = field(default_factory=dict)


class SimNetwork:
    """Hosts, links and connections on a virtual clock (see the module docs).

    ``seed``: every random draw derives from it. ``default_link``: the conditions between
    two hosts no :meth:`link` call named (a perfect link by default); a host's
    connections to itself are always perfect. ``default_host``: where code that runs on
    no host connects from (None: such a connect is an error). ``trace``: keep a line per
    event in :attr:`events` (for reading a failing run)."""

    def __init__(
        self,
        seed: int = 0,
        *,
        default_link: Link | None = None,
        default_host: str | None = None,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.default_link = default_link or Link()
        self._default_host = default_host
        self._hosts: dict[str, SimHost] = {}
        self._by_ip: dict[str, SimHost] = {}
        # (conditions from the host whose name sorts first, the other way)
        self._links: dict[frozenset[str], tuple[Link, Link]] = {}
        self._media: dict[tuple[str, str], Medium] = {}
        self._listeners: dict[tuple[str, int], SimServer] = {}
        self._live = _Live()
        self._serial = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cut: list[frozenset[str]] | None = None
        self.stats = NetworkStats()
        self.trace = trace
        #: With ``trace``: one line per event, ``"<time> <what>"``.
        self.events: list[str] = []

    # -- hosts and links ------------------------------------------------------------------------

    def add_host(self, name: str) -> SimHost:
        """A new host named ``name`` (its address: ``10.0.0.<n>`` in the order added)."""
        if not isinstance(name, str) or not name or name in self._hosts or name in self._by_ip:
            raise SimulationError(f"a host needs a new, non-empty name, got {name!r}")
        n = len(self._hosts) + 1
        ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        host = SimHost(self, name, ip)
        self._hosts[name] = host
        self._by_ip[ip] = host
        return host

    def add_hosts(self, *names: str) -> list[SimHost]:
        """:meth:`add_host` for each of ``names``."""
        return [self.add_host(name) for name in names]

    @property
    def hosts(self) -> list[SimHost]:
        return list(self._hosts.values())

    def host(self, name: str) -> SimHost:
        """The host named (or addressed) ``name``."""
        return self.resolve(name)

    def knows(self, name: object) -> bool:
        """Whether ``name`` names or addresses one of the hosts."""
        return isinstance(name, str) and (name in self._hosts or name in self._by_ip)

    def resolve(self, name: str | SimHost) -> SimHost:
        """The host named or addressed ``name`` (SimulationError when there is none)."""
        if isinstance(name, SimHost):
            return name
        found = self._hosts.get(name) or self._by_ip.get(name)
        if found is None:
            raise SimulationError(f"no host {name!r} on this network")
        return found

    def link(
        self, a: str | SimHost, b: str | SimHost, forward: Link, back: Link | None = None
    ) -> None:
        """Set the conditions between ``a`` and ``b``: ``forward`` both ways, or from
        ``a`` to ``b`` with ``back`` the other way. Open connections feel it at once."""
        ha, hb = self.resolve(a), self.resolve(b)
        if ha is hb:
            raise SimulationError("a host's connections to itself are always perfect")
        back = back or forward
        self._links[frozenset((ha.name, hb.name))] = (
            (forward, back) if ha.name < hb.name else (back, forward)
        )
        for src, dst, conditions in ((ha, hb, forward), (hb, ha, back)):
            medium = self._media.get((src.name, dst.name))
            if medium is not None:
                medium.link = conditions

    def conditions(self, src: str | SimHost, dst: str | SimHost) -> Link:
        """The conditions from ``src`` to ``dst`` now."""
        return self._medium(self.resolve(src), self.resolve(dst)).link

    def _medium(self, src: SimHost, dst: SimHost) -> Medium:
        medium = self._media.get((src.name, dst.name))
        if medium is None:
            if src is dst:
                conditions = Link()
            else:
                pair = self._links.get(frozenset((src.name, dst.name)))
                if pair is None:
                    conditions = self.default_link
                else:
                    conditions = pair[0] if src.name < dst.name else pair[1]
            medium = Medium(conditions, cut=self._separated(src, dst))
            self._media[(src.name, dst.name)] = medium
        return medium

    # -- partitions and crashes -----------------------------------------------------------------

    def partition(self, *groups: Iterable[str | SimHost]) -> None:
        """Cut the network into ``groups`` (hosts in none form one more group): hosts in
        different groups reach each other no more -- a stream link holds what is sent,
        a datagram link drops it, a connect waits (SYNs lost) -- until :meth:`heal`."""
        named = [frozenset(self.resolve(h).name for h in group) for group in groups]
        rest = frozenset(self._hosts) - frozenset().union(*named)
        if rest:
            named.append(rest)
        self._cut = named
        for (src, dst), medium in self._media.items():
            medium.cut = self._separated(self._hosts[src], self._hosts[dst])
        self._note(f"partition {[sorted(g) for g in named]}")

    def heal(self) -> None:
        """Join the network again: what stream links held goes on its way."""
        self._cut = None
        for medium in self._media.values():
            medium.cut = False
        for ends in list(self._live.ends.values()):
            for end in list(ends):
                end.resend_held()
        self._note("heal")

    def _separated(self, a: SimHost, b: SimHost) -> bool:
        if self._cut is None or a is b:
            return False
        return not any(a.name in g and b.name in g for g in self._cut)

    def crash(self, host: str | SimHost) -> None:
        """``host``'s programs die: their listeners close, their connections end
        (``ConnectionAbortedError`` on the host, a reset to each peer). A new server may
        listen on the host at once, as a restarted process would."""
        h = self.resolve(host)
        h.crashes += 1
        for key, server in list(self._listeners.items()):
            if key[0] == h.name:
                server.close()
        for end in list(self._live.ends.get(h.name, ())):
            end.crash()
        self._note(f"crash {h.name}")

    # -- the clock ------------------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` (a :class:`~dtp.testing.network._loop.VirtualEventLoop`, or a
        real-time loop for :mod:`~dtp.testing.network._relay`). One loop at a time: a
        network whose loop closed may be bound again (its connections are gone)."""
        if self._loop is not None and self._loop is not loop and not self._loop.is_closed():
            raise SimulationError("this network runs on another event loop already")
        if self._loop is not loop:
            # (a new run: nothing of the last one's is on the wires, whose clock may have
            # gone far ahead of this loop's)
            self._listeners.clear()
            self._live = _Live()
            for medium in self._media.values():
                medium.busy_until = 0.0
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise SimulationError("the network is not running: use run(), or a VirtualEventLoop")
        return self._loop

    @property
    def now(self) -> float:
        """The loop's time (virtual on a VirtualEventLoop)."""
        return self.loop.time()

    def at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        """Run ``callback()`` at time ``when`` (a partition schedule, a crash...)."""
        return self.loop.call_at(when, callback)

    def after(self, delay: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        """Run ``callback()`` ``delay`` seconds from now."""
        return self.loop.call_later(delay, callback)

    def run(
        self, main: Coroutine[Any, Any, T], *, host: str | None = None, threads: bool = False
    ) -> T:
        """Run ``main`` to its end on a new :class:`VirtualEventLoop` of this network (as
        :func:`asyncio.run` does: then the tasks left are cancelled and the loop closed);
        on ``host`` when given. ``threads``: ``run_in_executor`` in threads (the clock
        waits for them) rather than inline."""
        from dtp.testing.network._loop import VirtualEventLoop

        context = contextvars.copy_context()
        if host is not None:
            context.run(_CURRENT.set, self.resolve(host))
        with asyncio.Runner(loop_factory=lambda: VirtualEventLoop(self, threads=threads)) as runner:
            return runner.run(main, context=context)

    def run_blocking(
        self,
        main: Callable[..., T],
        *args: Any,
        host: str | None = None,
        limit: float = 3600.0,
        settle: float = 60.0,
        turn_limit: float = 60.0,
    ) -> T:
        """Run the blocking function ``main(*args)`` to its end on a new
        :class:`VirtualEventLoop` of this network, with every thread it starts, the
        blocking transport's included, scheduled by the simulation one at a time on the
        virtual clock (:mod:`dtp.testing.network._blocking`), so that it replays exactly
        from the seed; on ``host`` when given (a thread runs on the host it was started
        on). Returns what ``main`` returns, or raises what it raised;
        :class:`SimulationDeadlock` when every thread waits for what will not come,
        ``TimeoutError`` when ``main`` is still running after ``limit`` seconds of
        virtual time (a server that polls keeps the clock going for ever).

        Once ``main`` has returned, the threads it left (closes lingering, a server's
        workers going idle) run on for up to ``settle`` seconds of virtual time;
        :class:`~dtp.testing.network._blocking.SimulationEnded` is raised in those
        still waiting then, and the carriers left are closed. A thread that keeps its
        turn for ``turn_limit`` real seconds -- waiting on something of its own, which
        no other thread can bring while it holds the turn -- fails the run
        (RuntimeError)."""
        from dtp.testing.network._blocking import BlockingScheduler
        from dtp.testing.network._loop import SimulationDeadlock, VirtualEventLoop
        from dtp.transport.blocking import sched

        loop = VirtualEventLoop(self)
        scheduler = BlockingScheduler(self, loop, turn_limit=turn_limit)
        context = contextvars.copy_context()
        if host is not None:
            context.run(_CURRENT.set, self.resolve(host))
        previous = sched.install(scheduler)
        try:
            task = context.run(scheduler.spawn, main, *args)
            assert task.future is not None
            try:
                loop.run_until_complete(asyncio.wait_for(asyncio.shield(task.future), limit))
            except SimulationDeadlock as exc:
                waiting = ", ".join(scheduler.alive())
                raise SimulationDeadlock(f"{exc} (the program's threads: {waiting})") from None
            except TimeoutError:
                waiting = ", ".join(scheduler.alive())
                if scheduler.stuck():
                    raise SimulationDeadlock(
                        f"at virtual time {loop.time():.6f} s every thread of the program "
                        f"waits, without a timeout, for what has not come in {limit} s "
                        f"(its threads: {waiting})"
                    ) from None
                raise TimeoutError(
                    f"the blocking program still runs after {limit} s of virtual time "
                    f"(its threads: {waiting})"
                ) from None
            except RuntimeError:  # (the loop stopped: a thread kept its turn)
                if scheduler.failure is None:
                    raise
                raise scheduler.failure from None
            try:
                loop.run_until_complete(_settle(loop, scheduler, settle))
            except RuntimeError:
                if scheduler.failure is None:
                    raise
                raise scheduler.failure from None
        finally:
            try:
                scheduler.end()
            finally:
                sched.install(previous)
                _close_loop(loop)
        if task.error is not None:
            raise task.error
        result: T = task.result
        return result

    # -- connecting and listening ------------------------------------------------------------

    def current_host(self) -> SimHost:
        """The host the running code is on (see the module docs)."""
        host = _CURRENT.get()
        if host is not None and host.network is self:
            return host
        if self._default_host is not None:
            return self.resolve(self._default_host)
        raise SimulationError(
            "which host connects? run the code under `with net.host(name):`, in "
            "net.host(name).spawn(...), or give SimNetwork(default_host=...)"
        )

    def host_to_listen_on(self, host: object) -> SimHost | None:
        """The host a server listening on ``host`` is on: the one it names, or for a
        wildcard (None, "", 0.0.0.0, ::) the current one; None when it names no host
        of the network (a real server, then)."""
        if isinstance(host, list | tuple):
            known = [h for h in host if self.knows(h)]
            if len(known) > 1:
                raise SimulationError("a simulated server listens on one host")
            host = known[0] if known else None if not host else host[0]
        if isinstance(host, str) and self.knows(host):
            return self.resolve(host)
        if host in (None, "", "0.0.0.0", "::"):
            current = _CURRENT.get()
            if current is not None and current.network is self:
                return current
        return None

    async def listen(
        self,
        host: SimHost,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        start_serving: bool = True,
    ) -> SimServer:
        """A listener on ``host``:``port`` (0: the next free port of the host)."""
        if port == 0:
            port = host.next_port()
            while (host.name, port) in self._listeners:
                port = host.next_port()
        if (host.name, port) in self._listeners:
            raise OSError(errno.EADDRINUSE, f"address already in use: {host.ip}:{port}")
        server = SimServer(self, host, port, protocol_factory, start_serving)
        self._listeners[(host.name, port)] = server
        self._note(f"listen {host.name}:{port}")
        return server

    def unlisten(self, server: SimServer) -> None:
        """Forget a listener (its ``close``)."""
        if self._listeners.get((server.host.name, server.port)) is server:
            del self._listeners[(server.host.name, server.port)]

    async def connect(
        self, host: str, port: int, protocol_factory: Callable[[], asyncio.BaseProtocol]
    ) -> tuple[SimTransport, asyncio.BaseProtocol]:
        """A connection from the current host to ``host``:``port``: a SYN and its answer
        cross the link (lost ones sent again after 1 s, doubling, as TCP does; a
        partition loses them), then the listener's protocol and ours are made.
        ``ConnectionRefusedError`` when nothing listens there, ``TimeoutError`` after
        :data:`CONNECT_RETRIES` SYNs unanswered; ``ConnectionResetError`` when the
        listener closed while the SYN's answer was on its way, ``ConnectionAbortedError``
        when our host crashed while the SYN or its answer was on its way."""
        src, dst = self.current_host(), self.resolve(host)
        serial = next(self._serial)
        rng = random.Random(f"{self.seed}/{serial}/syn")
        lives = src.crashes
        await self._control(src, dst, rng)
        if src.crashes != lives:
            # (the connecting program died meanwhile, as crash() ends the host's others)
            raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort")
        listener = self._listeners.get((dst.name, port))
        if listener is None:
            await self._control(dst, src, rng)
            self.stats.refused += 1
            self._note(f"refused {src.name} -> {dst.name}:{port}")
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"Connect call failed ('{dst.ip}', {port})"
            )
        # the listener is handed the connection once the SYN's answer has crossed back,
        # as a kernel queues it for accept() only when the handshake is complete: a
        # lost SYN-ACK costs the client its retries, not the server's first-message
        # window (its handshake timer starts at the accept). Nothing exists of it
        # meanwhile, so a connect cancelled or failed on the way leaves nothing behind
        await self._control(dst, src, rng)
        if src.crashes != lives:
            raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort")
        if self._listeners.get((dst.name, port)) is not listener:
            # its listener closed (its host crashed, perhaps a new one listening since)
            # while the answer was on its way: the client's ACK meets a reset
            self.stats.resets += 1
            self._note(f"reset {dst.name}:{port} -> {src.name} (its listener closed)")
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        local = (src.ip, src.next_port())
        out = Direction(self._medium(src, dst), random.Random(f"{self.seed}/{serial}/out"))
        back = Direction(self._medium(dst, src), random.Random(f"{self.seed}/{serial}/back"))
        client = SimTransport(self, src, local, (dst.ip, port), out)
        server = SimTransport(self, dst, (dst.ip, port), local, back)
        client.peer, server.peer = server, client
        for end in (client, server):
            self._live.ends.setdefault(end.host.name, {})[end] = None
        self.stats.connections += 1
        self._note(f"connect #{serial} {src.name}:{local[1]} -> {dst.name}:{port}")
        listener.accept(server)
        protocol = protocol_factory()
        client.attach(protocol)
        return client, protocol

    async def _control(self, src: SimHost, dst: SimHost, rng: random.Random) -> None:
        """Wait until a SYN (or its answer) crosses from ``src`` to ``dst``. A datagram
        link's loss spares them: a datagram carrier has no connect of its own, its
        first datagram is the handshake's message 1, whose losses DTP's resends recover
        (a partition still holds the connect)."""
        rto = 1.0
        for _ in range(CONNECT_RETRIES + 1):
            medium = self._medium(src, dst)
            link = medium.link
            lossy = link.loss and not link.datagrams
            lost = medium.cut or (lossy and rng.random() < link.loss)
            if not lost:
                jitter = rng.uniform(0, link.jitter) if link.jitter else 0.0
                await asyncio.sleep(link.delay + jitter)
                return
            await asyncio.sleep(rto)  # no answer: sent again, the wait doubled
            rto *= 2
        raise TimeoutError(errno.ETIMEDOUT, f"connect to {dst.ip} timed out")

    # -- bookkeeping ------------------------------------------------------------------------------

    def forget(self, end: SimTransport) -> None:
        """Forget an end that is gone (its transport, once lost)."""
        self._live.ends.get(end.host.name, {}).pop(end, None)

    def count_sent(self, end: SimTransport, chunk: bytes, arrivals: list[float]) -> None:
        """Count a chunk sent, and where it went (a transport, as it sends)."""
        stats = self.stats
        stats.chunks_sent += 1
        stats.bytes_sent += len(chunk)
        if not arrivals:
            stats.chunks_lost += 1
        elif len(arrivals) > 1:
            stats.chunks_duplicated += 1
        if self.trace:
            peer = end.peer.host.name if end.peer is not None else "?"
            when = ",".join(f"{t:.6f}" for t in arrivals) or "lost/held"
            self._note(f"{end.host.name} -> {peer} {len(chunk)} B arrives {when}")

    def _note(self, what: str) -> None:
        if self.trace:
            now = self._loop.time() if self._loop is not None else 0.0
            self.events.append(f"{now:.6f} {what}")

    def open_connections(self, host: str | SimHost | None = None) -> list[SimTransport]:
        """The ends open now (of ``host``, or of every host)."""
        if host is not None:
            return list(self._live.ends.get(self.resolve(host).name, {}))
        return [e for ends in self._live.ends.values() for e in ends]


async def _settle(loop: asyncio.AbstractEventLoop, scheduler: Any, limit: float) -> None:
    """Let the threads a blocking program left end (the timer service's aside, which
    never does), for up to ``limit`` seconds of virtual time."""
    end = loop.time() + limit
    while loop.time() < end and [n for n in scheduler.alive() if n != "dtp-timers"]:
        await asyncio.sleep(0.05)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on ``loop`` and close it, as :class:`asyncio.Runner` does."""
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
