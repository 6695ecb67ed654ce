"""Group membership over blocking DTP sockets: a thin driver of the
:class:`~dtp.messaging._membership.Membership` engine in threads (docs/messaging.md §6.2),
as :mod:`dtp.messaging._membership_aio` is on asyncio.

A member serves on a :func:`dtp.socket.create_server` server (one reader thread per
connection that comes in), fires the engine's timers in one thread, and sends over one
outgoing connection per member, each with its writer thread and a bounded queue; a
message that cannot go out promptly is dropped, as a datagram would be.

    with join_group("a", identity, seeds=[Seed("10.0.0.7", 7946, key)]) as node:
        for event in node.events(timeout=60):
            print(event.kind, event.member.id)
Admission (a :class:`~dtp.messaging._membership_admission.GroupAdmission`): as on asyncio.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

import dtp.socket
from dtp.errors import DTPError
from dtp.messaging._framing import read_frames
from dtp.messaging._membership import (
    MAX_MESSAGE,
    Member,
    MembershipConfig,
    MembershipEvent,
    Outgoing,
    Seed,
)
from dtp.messaging._membership_admission import GroupAdmission
from dtp.messaging._membership_node import LINK_QUEUE, NodeFace, Route, _Address

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = ["MemberNode", "Route", "join_group"]

logger = logging.getLogger(__name__)

_STOP: Final = b""


def join_group(
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
) -> MemberNode:
    """Start a member (arguments as :func:`~dtp.messaging._membership_aio.join_group_async`;
    ``route``: see :data:`Route`)."""
    return MemberNode(
        member_id,
        identity,
        host=host,
        port=port,
        advertise=advertise,
        seeds=seeds,
        config=config,
        rng=rng,
        route=route,
        admission=admission,
    )


class MemberNode(NodeFace):
    """One member of a group, driven by threads; a context manager that leaves on exit."""

    def __init__(
        self,
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
    ) -> None:
        self._face(identity, config or MembershipConfig(), route, admission, logger)
        self._server = dtp.socket.create_server(
            (host, port), identity=identity, admit=self._gate.hook
        )
        where = advertise or self._server.address
        self._lock = self._held = threading.Condition()
        self._dispatch = threading.RLock()
        self.engine = self._engine_at(member_id, where, time.monotonic(), rng, seeds)
        self._links: dict[_Address, queue.Queue[bytes]] = {}
        self._socks: set[dtp.socket.DTPSocket] = set()
        self._listeners: list[queue.Queue[MembershipEvent | None]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawn(self._pump, "timers")
        self._spawn(self._accept, "accept")
        self._flush()

    # -- the face (and NodeFace's) -----------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The address served."""
        return self._server.address

    def events(self, timeout: float | None = None) -> Iterator[MembershipEvent]:
        """Every change from now on, until the node stops or ``timeout`` s pass with none
        (a reader that falls :data:`EVENT_QUEUE` events behind loses the oldest)."""
        q: queue.Queue[MembershipEvent | None] = queue.Queue()
        self._listeners.append(q)
        try:
            while True:
                try:
                    event = q.get(timeout=timeout)
                except queue.Empty:
                    return
                if event is None:
                    return
                yield event
        finally:
            self._listeners.remove(q)

    def wait_until(self, predicate: Callable[[list[Member]], bool], timeout: float) -> bool:
        """Wait up to ``timeout`` s until ``predicate(all records held)`` is true."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self.engine.all_members()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._lock.wait(min(remaining, 0.1))
        return True

    def leave(self, timeout: float = 1.0) -> None:
        """Leave the group: tell every live member (waiting up to ``timeout`` s for the
        goodbyes to go out), then stop."""
        if self._stop.is_set():
            return
        with self._lock:
            self.engine.leave(time.monotonic())
        self._flush()
        deadline = time.monotonic() + timeout
        while any(not q.empty() for q in list(self._links.values())):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        time.sleep(0.05)  # the last writes' send
        self.close()

    def close(self) -> None:
        """Stop at once, saying nothing: to the others this member has failed."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._server.close()
        for q in list(self._links.values()):
            with contextlib.suppress(queue.Full):
                q.put_nowait(_STOP)
        for sock in list(self._socks):
            sock.abort("member stopped")
        for listener in list(self._listeners):
            listener.put(None)
        me = threading.current_thread()
        for thread in list(self._threads):
            if thread is not me:
                thread.join(timeout=2)

    def __enter__(self) -> MemberNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()

    # -- the driver -------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=f"membership-{name}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                timer = self.engine.get_timer()
                if timer is None:
                    return
                now = time.monotonic()
                if timer > now:
                    self._lock.wait(timer - now)
                    continue
                self.engine.handle_timer(now)
            self._flush()

    def _flush(self) -> None:
        """Carry out what the engine produced (outside the engine's lock: callbacks may
        call in; under the dispatch lock, so events reach them in order whichever
        thread took them)."""
        with self._dispatch:
            self._flush_in_order()

    def _flush_in_order(self) -> None:
        with self._lock:
            out = self.engine.messages_to_send()
            events = []
            while (event := self.engine.next_event()) is not None:
                events.append(event)
            if events:
                self._lock.notify_all()
        if self._stop.is_set():
            return
        for message in out:
            self._send(message)
        for event in events:
            self._tell(event)

    def _send(self, out: Outgoing) -> None:
        address = (out.host, out.port, out.key)
        with self._lock:
            q = self._links.get(address)
            if q is None:
                self._links[address] = q = queue.Queue(LINK_QUEUE)
                self._spawn(self._link, "link", address, q)
        try:
            q.put_nowait(out.data)
        except queue.Full:
            self.dropped += 1

    def _link(self, address: _Address, q: queue.Queue[bytes]) -> None:
        """Carry ``q`` to one peer over one connection; a failure drops what waits and
        ends the link, idle ones end too."""
        host, port, key = address
        sock: dtp.socket.DTPSocket | None = None
        idle = self._link_idle()
        try:
            while not self._stop.is_set():
                try:
                    data = q.get(timeout=idle)
                except queue.Empty:
                    return
                if data is _STOP:
                    return
                try:
                    if sock is None:
                        there = self._where(host, port)
                        sock = dtp.socket.create_connection(
                            there,
                            server_key=key,
                            identity=self.identity,
                            timeout=self.config.connect_timeout,
                        )
                        sock.settimeout(self.config.probe_interval)
                        self._socks.add(sock)
                        if self._gate.proves:
                            sock.sendall(self._gate.proof(sock.handshake_hash))
                    sock.sendall(data)
                except (DTPError, OSError) as exc:
                    self._link_failed(host, port, exc)
                    self.dropped += 1 + q.qsize()
                    return
        finally:
            with self._lock:
                if self._links.get(address) is q:
                    del self._links[address]
            if sock is not None:
                self._socks.discard(sock)
                sock.abort("membership link closed")

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._server.accept(timeout=0.2)
            except (DTPError, OSError):
                continue  # a timeout, a failed handshake; closed: the loop ends
            if self._stop.is_set():
                sock.abort("member stopped")
                return
            self._socks.add(sock)
            self._spawn(self._serve_peer, "reader", sock)

    def _serve_peer(self, sock: dtp.socket.DTPSocket) -> None:
        """Read one peer's messages into the engine."""
        key = sock.peer_static_key
        sock.settimeout(None)
        proven = not self._gate.proves
        try:
            for body in read_frames(sock, MAX_MESSAGE, self._stop):
                if not proven:  # its first frame: the proof of the group's key, or out
                    if not self._gate.check(body, sock.handshake_hash):
                        return
                    proven = True
                    continue
                with self._lock:
                    if not self._take(body, time.monotonic(), key):
                        continue
                    self._lock.notify_all()  # (the timer thread: a new timer may be due)
                self._flush()
        except (DTPError, OSError):
            pass  # the peer went away: its messages so far were taken
        finally:
            self._socks.discard(sock)
            sock.abort("membership link closed")
