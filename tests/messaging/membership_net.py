"""Membership groups over real DTP connections on 127.0.0.1, on either driver, with a
TCP forwarder between every ordered pair of members that can drop their traffic (a
partition, a member cut off): ``Group``."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

from dtp.identity.keys import HostIdentity
from dtp.messaging._membership import Member, MembershipConfig, MembershipEvent, Seed
from dtp.messaging._membership_admission import GroupAdmission
from dtp.messaging._membership_aio import AsyncMemberNode, join_group_async
from dtp.messaging._membership_socket import MemberNode, join_group
from dtp.testing._loops import LoopThread
from dtp.transport.asyncio._listeners import close_listener


class Forwarders:
    """One TCP forwarder per ordered pair (i, j): member i reaches member j through it.
    While the pair is cut, bytes either way are dropped (the DTP connection over it
    breaks when they flow again, as after a real outage)."""

    def __init__(self, n: int) -> None:
        self.loop = LoopThread()
        self.ports: dict[int, int] = {}  # member -> its server's port
        self.cut: set[frozenset[int]] = set()
        self.lock = threading.Lock()
        self.servers: dict[tuple[int, int], asyncio.Server] = {}
        self.writers: set[asyncio.StreamWriter] = set()
        for i in range(n):
            for j in range(n):
                if i != j:
                    self.servers[i, j] = self.loop.run(self._listen(i, j))

    async def _listen(self, i: int, j: int) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.add(writer)  # (closed however this ends: a cancel included)
            up_writer: asyncio.StreamWriter | None = None
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.ports[j])
                self.writers.add(up_writer)
                await asyncio.gather(
                    self._pipe(reader, up_writer, i, j),
                    self._pipe(up_reader, writer, i, j),
                    return_exceptions=True,
                )
            except OSError:
                pass
            finally:
                # abort, not close: a close waits to flush to a peer that may never read
                # again (a killed member), and the transport outlives the test "closing"
                for w in (writer, up_writer):
                    if w is not None:
                        self.writers.discard(w)
                        w.transport.abort()

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int, j: int
    ) -> None:
        try:
            while data := await reader.read(65536):
                if frozenset((i, j)) in self.cut:
                    continue  # dropped
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def address(self, i: int, j: int) -> tuple[str, int]:
        port: int = self.servers[i, j].sockets[0].getsockname()[1]
        return ("127.0.0.1", port)

    def partition(self, a: set[int], b: set[int]) -> None:
        with self.lock:
            self.cut = {frozenset((i, j)) for i in a for j in b}

    def heal(self) -> None:
        with self.lock:
            self.cut = set()

    def close(self) -> None:
        async def stop() -> None:
            # (each closed once the accepts it made have their transports: closed now,
            # such an accept's transport failed half-made, its socket left open)
            stopping = [s for s in map(close_listener, self.servers.values()) if s is not None]
            await asyncio.gather(*stopping)
            # a connection accepted just now has a handler task that has not run yet: a
            # cancel before its first step would skip its finally, its transport unclosed;
            # each is let start (and register its writer) first, however loaded the machine
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while loop.time() < deadline and any(
                inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_CREATED  # type: ignore[arg-type]
                for task in asyncio.all_tasks()
            ):
                await asyncio.sleep(0.01)
            for writer in list(self.writers):
                writer.transport.abort()
            await asyncio.sleep(0.05)  # (the transports' close callbacks)

        with contextlib.suppress(Exception):
            self.loop.run(stop())
        self.loop.close(cancel=True)


class Group:
    """``n`` members, each joined through member 0, on the ``driver`` given ("socket":
    :class:`MemberNode`; "aio": :class:`AsyncMemberNode` on an event loop of its own);
    every member's events are recorded with the time they came."""

    def __init__(
        self,
        driver: str,
        n: int,
        config: MembershipConfig,
        *,
        forwarders: bool,
        admission: GroupAdmission | None = None,
        identities: list[HostIdentity] | None = None,
    ) -> None:
        self.driver = driver
        self.config = config
        self.admission = admission
        self.identities = identities or [HostIdentity.generate() for _ in range(n)]
        self.net = Forwarders(n) if forwarders else None
        self.loop = LoopThread() if driver == "aio" else None
        self.nodes: list[Any] = []
        self.events: list[list[MembershipEvent]] = [[] for _ in range(n)]
        self.port_of: dict[int, int] = {}
        self.alive = set(range(n))
        for i in range(n):
            seeds = [self.nodes[0].seed()] if i else []
            node = self.start(f"m{i}", self.identities[i], seeds, admission, self.events[i])
            self.nodes.append(node)
            self.port_of[node.me.port] = i
            if self.net is not None:
                self.net.ports[i] = node.me.port

    def _route(self, i: int) -> Callable[[str, int], tuple[str, int]] | None:
        net = self.net
        if net is None:
            return None
        return lambda host, port: net.address(i, self.port_of[port])

    def start(
        self,
        member_id: str,
        identity: HostIdentity,
        seeds: list[Seed],
        admission: GroupAdmission | None,
        events: list[MembershipEvent],
    ) -> Any:
        """A member on this group's driver (one of the group, or one that is not),
        recording its events in ``events``."""
        i = len(self.nodes)
        route = self._route(i) if i < len(self.identities) else None
        kw: dict[str, Any] = dict(seeds=seeds, config=self.config, route=route, admission=admission)
        if self.loop is not None:
            loop = self.loop

            async def start() -> AsyncMemberNode:
                node = await join_group_async(member_id, identity, **kw)
                node.on_event(events.append)
                return node

            return loop.run(start())
        node: MemberNode = join_group(member_id, identity, **kw)
        node.on_event(events.append)
        return node

    def _do(self, i: int, name: str, *args: Any) -> Any:
        return self.call(self.nodes[i], name, *args)

    def call(self, node: Any, name: str, *args: Any) -> Any:
        """``node.name(*args)``, on the loop for the asyncio driver."""
        result = getattr(node, name)(*args)
        if self.loop is not None and asyncio.iscoroutine(result):
            return self.loop.run(result, timeout=60)
        return result

    def view(self, i: int) -> list[Member]:
        if self.loop is not None:
            node = self.nodes[i]

            async def records() -> list[Member]:
                return list(node.engine.all_members())

            return self.loop.run(records())
        return list(self.nodes[i].engine.all_members())

    def wait(self, i: int, predicate: Callable[[list[Member]], bool], timeout: float) -> bool:
        return bool(self._do(i, "wait_until", predicate, timeout))

    def wait_all(self, predicate: Callable[[int, list[Member]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(
            self.wait(i, lambda ms, i=i: predicate(i, ms), max(0.0, deadline - time.monotonic()))
            for i in sorted(self.alive)
        )

    def kill(self, i: int) -> float:
        """Stop member ``i`` at once, saying nothing; the time it stopped."""
        self.alive.discard(i)
        self._do(i, "close")
        return time.monotonic()

    def leave(self, i: int) -> None:
        self.alive.discard(i)
        self._do(i, "leave")

    def close(self) -> None:
        for i in sorted(self.alive):
            with contextlib.suppress(Exception):
                self._do(i, "close")
        if self.loop is not None:
            self.loop.close(cancel=True)
        if self.net is not None:
            self.net.close()


def states(members: list[Member]) -> dict[str, int]:
    return {m.id: int(m.state) for m in members}
