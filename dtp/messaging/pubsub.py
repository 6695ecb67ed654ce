"""Topic pub/sub over a mesh of DTP streams (docs/messaging.md §4).

A :class:`PubSubNode` holds links to peers (any open bidirectional stream: attach a
:class:`dtp.socket.DTPSocket` with :meth:`PubSubNode.attach`). A published message gets a
random 16-byte id and a hop limit; every node delivers it to its local subscribers once
(ids are remembered in a bounded cache) and forwards it to every other link while hops
remain. So messages reach every node of a connected mesh, whatever its shape, and loops
and duplicate paths cost bandwidth but never duplicate deliveries.

Nothing waits on a slow party: each link has its own writer thread and a bounded queue,
each subscription a bounded queue; when one is full the message is dropped *for that
party only* and counted. A peer learns how many messages its upstream dropped for it (a
DROPPED frame), a subscriber how many it missed (:attr:`Delivery.dropped_before`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging.framing import FrameDecoder, Oversized, decode_body, encode_frame
from dtp.messaging.rpc import BlockingStream

__all__ = [
    "MAX_TOPIC_LENGTH",
    "Delivery",
    "Link",
    "PubSubNode",
    "Subscription",
]

logger = logging.getLogger(__name__)

PUBLISH: Final = 10  # [10, id, topic, hops_left, data, origin]
DROPPED: Final = 11  # [11, count]
MAX_TOPIC_LENGTH: Final = 256
DEFAULT_HOPS: Final = 8
_STOP: Final = b""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message delivered to a subscription."""

    topic: str
    data: bytes
    message_id: bytes
    #: Node id of the publisher, as it stated it.
    origin: str | None
    #: Messages this subscription missed (queue full) just before this one.
    dropped_before: int


class Subscription:
    """Messages of one topic for one consumer, in a bounded queue."""

    def __init__(self, node: PubSubNode, topic: str, maxsize: int) -> None:
        self.node = node
        self.topic = topic
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self._missed = 0
        #: Total messages dropped because this subscriber was slow.
        self.dropped = 0
        self.delivered = 0

    def _offer(self, topic: str, data: bytes, message_id: bytes, origin: str | None) -> None:
        with self._lock:
            try:
                self._queue.put_nowait(Delivery(topic, data, message_id, origin, self._missed))
            except queue.Full:
                self._missed += 1
                self.dropped += 1
                return
            self._missed = 0
            self.delivered += 1

    def get(self, timeout: float | None = None) -> Delivery:
        """The next message (raises ``queue.Empty`` after ``timeout``)."""
        return self._queue.get(timeout=timeout)

    def get_nowait(self) -> Delivery:
        return self._queue.get_nowait()

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Unsubscribe."""
        self.node._unsubscribe(self)


class Link:
    """One peer of a node: a stream, a reader thread and a writer thread with a bounded
    queue of frames."""

    def __init__(self, node: PubSubNode, stream: BlockingStream, name: str, maxsize: int) -> None:
        self.node = node
        self.stream = stream
        self.name = name
        self._out: queue.Queue[bytes] = queue.Queue(maxsize)
        self._drop_lock = threading.Lock()
        self._unreported = 0
        #: Frames dropped for this peer because it was slow.
        self.dropped = 0
        #: What the peer says it dropped for us.
        self.dropped_upstream = 0
        self.received = 0
        self.sent = 0
        self.violations = 0
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name=f"pubsub-r-{name}")
        self._writer = threading.Thread(target=self._write_loop, name=f"pubsub-w-{name}")
        self._reader.daemon = self._writer.daemon = True

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def offer(self, frame: bytes) -> bool:
        """Queue a frame for the peer; False (and counted) when the queue is full."""
        if self.closed.is_set():
            return False
        try:
            self._out.put_nowait(frame)
            return True
        except queue.Full:
            with self._drop_lock:
                self.dropped += 1
                self._unreported += 1
            return False

    def _write_loop(self) -> None:
        try:
            while True:
                frame = self._out.get()
                if frame is _STOP or self.closed.is_set():
                    return
                with self._drop_lock:
                    unreported, self._unreported = self._unreported, 0
                if unreported:
                    self.stream.sendall(encode_frame([DROPPED, unreported]))
                self.stream.sendall(frame)
                self.sent += 1
        except (DTPError, OSError) as exc:
            logger.debug("pubsub link %s: writing failed: %s", self.name, exc)
            self.close()

    def _read_loop(self) -> None:
        decoder = FrameDecoder(self.node.max_message_size)
        try:
            while not self.closed.is_set():
                data = self.stream.recv(256 * 1024)
                if not data:
                    break
                decoder.feed(data)
                while (item := decoder.next()) is not None:
                    if isinstance(item, Oversized):
                        self.violations += 1
                        continue
                    try:
                        self._handle(decode_body(item))
                    except E.MessagingProtocolError:
                        self.violations += 1
        except (DTPError, OSError) as exc:
            logger.debug("pubsub link %s: reading failed: %s", self.name, exc)
        finally:
            self.close()

    def _handle(self, message: Any) -> None:
        if not isinstance(message, list) or not message:
            raise E.MalformedMessage("a pub/sub frame is an array")
        kind = message[0]
        if kind == PUBLISH and len(message) == 6:
            _, message_id, topic, hops, data, origin = message
            if (
                isinstance(message_id, bytes)
                and len(message_id) == 16
                and isinstance(topic, str)
                and 0 < len(topic.encode()) <= MAX_TOPIC_LENGTH
                and type(hops) is int
                and 0 <= hops <= 255
                and isinstance(data, bytes)
                and (origin is None or (isinstance(origin, str) and len(origin) <= 256))
            ):
                self.received += 1
                self.node._route(message_id, topic, hops, data, origin, self)
                return
        elif kind == DROPPED and len(message) == 2 and type(message[1]) is int:
            self.dropped_upstream += max(0, message[1])
            return
        raise E.MalformedMessage("not a pub/sub frame")

    def close(self) -> None:
        """Stop both threads and forget the link (the stream is left to its owner)."""
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(queue.Full):
            self._out.put_nowait(_STOP)
        self.node._detach(self)


class PubSubNode:
    """A pub/sub participant: local subscriptions plus links to peers."""

    def __init__(
        self,
        node_id: str | None = None,
        *,
        max_hops: int = DEFAULT_HOPS,
        link_queue: int = 1024,
        seen_cache: int = 65536,
        max_message_size: int = 256 * 1024,
    ) -> None:
        self.node_id = node_id or os.urandom(8).hex()
        self.max_hops = max_hops
        self.link_queue = link_queue
        self.seen_cache = seen_cache
        self.max_message_size = max_message_size
        self._lock = threading.Lock()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._subs: dict[str, list[Subscription]] = {}
        self._links: list[Link] = []
        self.duplicates = 0
        self.hop_limited = 0
        self._hooks: list[Callable[[Delivery], None]] = []

    @property
    def links(self) -> list[Link]:
        with self._lock:
            return list(self._links)

    def attach(self, stream: BlockingStream, name: str = "") -> Link:
        """Start exchanging messages with the peer at the other end of ``stream``."""
        link = Link(self, stream, name or f"{self.node_id}-{len(self._links)}", self.link_queue)
        with self._lock:
            self._links.append(link)
        link.start()
        return link

    def _detach(self, link: Link) -> None:
        with self._lock:
            if link in self._links:
                self._links.remove(link)

    def subscribe(self, topic: str, maxsize: int = 1024) -> Subscription:
        """A new subscription to ``topic`` (exact match)."""
        _check_topic(topic)
        sub = Subscription(self, topic, maxsize)
        with self._lock:
            self._subs.setdefault(topic, []).append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.topic, [])
            if sub in subs:
                subs.remove(sub)

    def publish(self, topic: str, data: bytes, *, hops: int | None = None) -> bytes:
        """Publish ``data`` on ``topic``; returns the message id."""
        _check_topic(topic)
        message_id = os.urandom(16)
        hops = self.max_hops if hops is None else hops
        if not 0 <= hops <= 255:
            raise ValueError("hops must be in 0..255")
        frame = encode_frame(
            [PUBLISH, message_id, topic, hops, bytes(data), self.node_id], self.max_message_size
        )
        with self._lock:
            self._remember(message_id)
            links = list(self._links)
        self._deliver(topic, bytes(data), message_id, self.node_id)
        if hops > 0:
            for link in links:
                link.offer(frame)
        return message_id

    def _remember(self, message_id: bytes) -> bool:
        """(lock held) True if new."""
        if message_id in self._seen:
            return False
        self._seen[message_id] = None
        if len(self._seen) > self.seen_cache:
            self._seen.popitem(last=False)
        return True

    def _route(
        self, message_id: bytes, topic: str, hops: int, data: bytes, origin: str | None, src: Link
    ) -> None:
        with self._lock:
            if not self._remember(message_id):
                self.duplicates += 1
                return
            links = [link for link in self._links if link is not src]
        self._deliver(topic, data, message_id, origin)
        if hops <= 1:
            self.hop_limited += 1
            return
        frame = encode_frame([PUBLISH, message_id, topic, hops - 1, data, origin])
        for link in links:
            link.offer(frame)

    def _deliver(self, topic: str, data: bytes, message_id: bytes, origin: str | None) -> None:
        with self._lock:
            subs = list(self._subs.get(topic, ()))
        for sub in subs:
            sub._offer(topic, data, message_id, origin)

    def close(self) -> None:
        """Close every link (streams are left to their owners)."""
        for link in self.links:
            link.close()


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not 0 < len(topic.encode()) <= MAX_TOPIC_LENGTH:
        raise E.PubSubError(f"a topic is 1..{MAX_TOPIC_LENGTH} bytes of text")
