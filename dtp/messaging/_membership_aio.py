"""Group membership over asyncio DTP connections: a thin driver of the
:class:`~dtp.messaging._membership.Membership` engine (docs/messaging.md §6.2).

Each member runs a DTP server (:func:`dtp.aio.start_server`) that reads membership
frames; what the engine sends to a member goes over one outgoing connection per member,
opened on demand with the member's Noise key (IK) and this member's identity, so the
receiver checks each message's sender against the key the handshake proved. A message
that cannot go out promptly (the peer unreachable, its queue full) is dropped, as a
datagram would be: the protocol's timeouts make up for it.

    node = await join_group_async("a", identity, seeds=[Seed("10.0.0.7", 7946, key)])
    async for event in node.events():
        print(event.kind, event.member.id)

With a :class:`~dtp.messaging._membership_admission.GroupAdmission`, the server refuses
peers the group does not name at their handshake, and a connection whose first frame
does not prove the group's key is dropped before anything it sent is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import dtp.aio
from dtp.errors import DTPError
from dtp.messaging._framing import FrameDecoder
from dtp.messaging._membership import (
    MAX_MESSAGE,
    Member,
    Membership,
    MembershipConfig,
    MembershipEvent,
    Outgoing,
    Seed,
)
from dtp.messaging._membership_admission import GroupAdmission
from dtp.messaging._membership_node import LINK_QUEUE, NodeFace, Route, _Address

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = ["AsyncMemberNode", "Route", "join_group_async"]

logger = logging.getLogger(__name__)

#: The longest :meth:`AsyncMemberNode.close` waits for its connections' carriers to
#: close: each ends within the transport's own bounds (a half-closed carrier's wait for
#: its peer, then the grace for what it still holds: 3 s), this is a guard against a hang.
CLOSE_WAIT = 10.0


async def join_group_async(
    member_id: str,
    identity: HostIdentity,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    advertise: tuple[str, int] | None = None,
    seeds: Sequence[Seed] = (),
    config: MembershipConfig | None = None,
    rng: random.Random | None = None,
    route: Route | None = None,
    admission: GroupAdmission | None = None,
) -> AsyncMemberNode:
    """Start a member: serve on ``host:port`` (0: any free port), tell others to reach it
    at ``advertise`` (default: the address served) and join through ``seeds`` (none: a
    group of one, that others join). ``route``: see :data:`Route`. ``admission``: who
    may join (None: anyone who reaches the port)."""
    node = AsyncMemberNode(identity, config or MembershipConfig(), route, admission)
    await node._start(member_id, host, port, advertise, seeds, rng)
    return node


class AsyncMemberNode(NodeFace):
    """One member of a group, on the running event loop (:func:`join_group_async` makes one)."""

    def __init__(
        self,
        identity: HostIdentity,
        config: MembershipConfig,
        route: Route | None = None,
        admission: GroupAdmission | None = None,
    ) -> None:
        self._face(identity, config, route, admission, logger)
        self.engine: Membership
        self._server: dtp.aio.DTPServer | None = None
        self._links: dict[_Address, asyncio.Queue[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[asyncio.Queue[MembershipEvent | None]] = []
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._closed = False
        self._held = contextlib.nullcontext()

    async def _start(
        self,
        member_id: str,
        host: str,
        port: int,
        advertise: tuple[str, int] | None,
        seeds: Sequence[Seed],
        rng: random.Random | None,
    ) -> None:
        self._server = await dtp.aio.start_server(
            self._serve_peer, host, port, identity=self.identity, admit=self._gate.hook
        )
        where = advertise or self._server.address
        now = asyncio.get_running_loop().time()
        self.engine = self._engine_at(member_id, where, now, rng, seeds)
        self._spawn(self._pump())

    # -- the face (and NodeFace's) -----------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The address served."""
        assert self._server is not None
        return self._server.address

    async def events(self) -> AsyncIterator[MembershipEvent]:
        """Every change from now on, until the node stops (a reader that falls
        :data:`EVENT_QUEUE` events behind loses the oldest)."""
        queue: asyncio.Queue[MembershipEvent | None] = asyncio.Queue()
        self._listeners.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._listeners.remove(queue)

    async def wait_until(self, predicate: Callable[[list[Member]], bool], timeout: float) -> bool:
        """Wait up to ``timeout`` s until ``predicate(all records held)`` is true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.engine.all_members()):
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closed:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.1)):
                    await self._changed.wait()
        return True

    async def leave(self, timeout: float = 1.0) -> None:
        """Leave the group: tell every live member (waiting up to ``timeout`` s for the
        goodbyes to go out), then stop."""
        if self._closed:
            return
        self.engine.leave(asyncio.get_running_loop().time())
        self._flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(not q.empty() for q in self._links.values()) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the last writes' drain
        await self.close()

    async def close(self) -> None:
        """Stop at once, saying nothing: to the others this member has failed. Every
        connection of the member ends, those whose handshake is still in progress too,
        and it returns once their carriers are closed (at most :data:`CLOSE_WAIT` s):
        an event loop closed right after finds none of them open."""
        if self._closed:
            return
        self._closed = True
        for queue in self._listeners:
            queue.put_nowait(None)
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()  # (first: no connection comes in after the aborts)
            # the connections it serves and those in their handshake: close() leaves
            # them to their own timeouts, past a loop that may close right after
            self._server.abort_clients()
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                # the links' tasks end once their carriers closed (_link's finally)
                if self._tasks:
                    await asyncio.wait(list(self._tasks))
                if self._server is not None:
                    await self._server.wait_closed()
        except TimeoutError:
            logger.warning("membership: connections still open %s s after close", CLOSE_WAIT)

    async def __aenter__(self) -> AsyncMemberNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()

    # -- the driver -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pump(self) -> None:
        """Fire the engine's timers and carry out what it produces."""
        loop = asyncio.get_running_loop()
        while True:
            timer = self.engine.get_timer()
            if timer is None:
                return
            now = loop.time()
            if timer <= now:
                self.engine.handle_timer(now)
                self._flush()
                continue
            self._wake.clear()
            # (asyncio.timeout, not wait_for: 3.11's wait_for could leave a cancelled
            # task waiting on its inner future, and close() waiting with it)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timer - now):
                    await self._wake.wait()

    def _flush(self) -> None:
        if self._closed:
            return
        for out in self.engine.messages_to_send():
            self._send(out)
        changed = False
        while (event := self.engine.next_event()) is not None:
            changed = True
            self._tell(event)
        if changed:
            self._changed.set()
        self._wake.set()

    def _send(self, out: Outgoing) -> None:
        address = (out.host, out.port, out.key)
        queue = self._links.get(address)
        if queue is None:
            self._links[address] = queue = asyncio.Queue(LINK_QUEUE)
            self._spawn(self._link(address, queue))
        try:
            queue.put_nowait(out.data)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _link(self, address: _Address, queue: asyncio.Queue[bytes]) -> None:
        """Carry ``queue`` to one peer over one connection; a failure drops what waits
        (it is stale by the next attempt) and ends the link, idle ones end too."""
        host, port, key = address
        writer: dtp.aio.DTPStreamWriter | None = None
        idle = self._link_idle()
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        data = await queue.get()
                except TimeoutError:
                    return
                try:
                    if writer is None:
                        there = self._where(host, port)
                        _, writer = await dtp.aio.open_connection(
                            there[0],
                            there[1],
                            server_key=key,
                            identity=self.identity,
                            timeout=self.config.connect_timeout,
                        )
                        if self._gate.proves:
                            writer.write(self._gate.proof(writer.get_extra_info("handshake_hash")))
                    writer.write(data)
                    async with asyncio.timeout(self.config.probe_interval):
                        await writer.drain()
                except (DTPError, OSError, TimeoutError) as exc:
                    self._link_failed(host, port, exc)
                    self.dropped += 1 + queue.qsize()
                    return
        finally:
            if self._links.get(address) is queue:
                del self._links[address]
            self.dropped += queue.qsize()
            if writer is not None:
                writer.abort("membership link closed")
                # (cancelled by close() too: it waits for this task, so for the carrier)
                with contextlib.suppress(DTPError, OSError):
                    await writer.wait_closed()

    async def _serve_peer(
        self, reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter
    ) -> None:
        """Read one peer's messages into the engine."""
        key = writer.get_extra_info("peer_static_key")
        decoder = FrameDecoder(MAX_MESSAGE)
        loop = asyncio.get_running_loop()
        if self._closed:
            writer.abort("member stopped")
            return
        proven = not self._gate.proves
        try:
            while data := await reader.read(65536):
                for body in decoder.frames(data):
                    if not proven:  # its first frame: the proof of the group's key, or out
                        if not self._gate.check(body, writer.get_extra_info("handshake_hash")):
                            return
                        proven = True
                        continue
                    self._take(body, loop.time(), key)
                self._flush()
        except DTPError:
            pass  # the peer went away: its messages so far were taken
        finally:
            writer.abort("membership link closed")
