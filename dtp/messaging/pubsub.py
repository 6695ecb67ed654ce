"""Topic pub/sub over a mesh of DTP streams (docs/messaging.md §4).

A :class:`PubSubNode` holds links to peers (any open bidirectional stream: attach a
:class:`dtp.socket.DTPSocket` with :meth:`PubSubNode.attach`). A published message gets a
random 16-byte id and a hop limit; every node delivers it to its local subscribers once
(ids are remembered in a bounded cache) and forwards it, while hops remain, to the other
links whose peer is *interested* in its topic. So messages reach every subscriber of a
connected mesh within the hop limit, whatever its shape, and loops and duplicate paths
cost bandwidth but never duplicate deliveries.

Interest is a distance vector per topic: a node tells each peer (SUBSCRIBE / UNSUBSCRIBE
frames) the topics for which it has local subscribers (distance 0) or a peer other than
that one that is interested (its distance + 1), as long as the distance stays below the
node's horizon (``max_hops``). Interest therefore only ever points along paths to real
subscribers; after an unsubscription, stale interest circulating in a loop grows by one
per round and vanishes at the horizon, so the routing state converges. Until a peer has
sent its first SUBSCRIBE frame it gets every message (a peer that does not route). A
peer's table is bounded (:data:`MAX_PEER_TOPICS`), and past that bound a node shares the
places among its neighbours, so one declaring many topics cannot push out the others'.

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
from dtp.messaging.framing import Oversized, bytes_like, decode_body, encode_frame, read_frames
from dtp.messaging.rpc import BlockingStream

__all__ = [
    "DEFAULT_SUBSCRIPTION_BYTES",
    "MAX_TOPIC_LENGTH",
    "Delivery",
    "Link",
    "PubSubNode",
    "Subscription",
]

logger = logging.getLogger(__name__)

PUBLISH: Final = 10  # [10, id, topic, hops_left, data, origin]
DROPPED: Final = 11  # [11, count]
SUBSCRIBE: Final = 12  # [12, [[topic, distance], ...]]
UNSUBSCRIBE: Final = 13  # [13, [topic, ...]]
#: Most topics one peer may declare interest in (more are refused and counted), and so
#: most a node tells a peer: its own subscriptions first, then an equal share per other
#: neighbour (:func:`_fair_share`).
MAX_PEER_TOPICS: Final = 4096
_CHUNK: Final = 512  # topics per SUBSCRIBE / UNSUBSCRIBE frame
MAX_TOPIC_LENGTH: Final = 256
#: Largest SUBSCRIBE / UNSUBSCRIBE frame body (a full chunk of the longest topics, each
#: ``[topic, distance]``: 1 + 3 + 256 + 2 bytes): a node reads control frames this large
#: whatever its ``max_message_size``, or a peer's interest would be lost.
_CONTROL_CAP: Final = 16 + _CHUNK * (MAX_TOPIC_LENGTH + 6)
DEFAULT_HOPS: Final = 8
#: Default cap on the bytes of the frames waiting in one link's queue.
DEFAULT_LINK_QUEUE_BYTES: Final = 16 << 20
#: Default cap on the bytes of data waiting in one subscription's queue.
DEFAULT_SUBSCRIPTION_BYTES: Final = 16 << 20
_STOP: Final = b""
_WAKE: Final = b"\x00wake"  # identity-compared: the writer should flush control state


class _PatientReads:
    """A stream's reads, waiting through the stream's own timeout: a link is idle for as
    long as nobody publishes, and the TimeoutError of a stream with a timeout (nothing was
    read: the stream stays usable) ended the link after that long. Once ``stop`` is set
    a timeout ends the reads instead (b""), so a closed link's reader ends then too."""

    __slots__ = ("_recv", "_stop")

    def __init__(self, stream: Any, stop: threading.Event) -> None:
        self._recv = stream.recv
        self._stop = stop

    def recv(self, size: int) -> bytes:
        while True:
            try:
                data: bytes = self._recv(size)
                return data
            except TimeoutError:
                if self._stop.is_set():
                    return b""


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
    """Messages of one topic for one consumer, in a queue bounded in messages
    (``maxsize``) and in bytes of data (``max_bytes``; a larger message still goes in
    when the queue is empty).

    After :meth:`close` (or :meth:`PubSubNode.close`), :meth:`get` still returns what was
    queued, then raises :class:`~dtp.messaging.errors.PubSubError`; a :meth:`get` waiting
    at that moment wakes up and raises it too."""

    def __init__(
        self,
        node: PubSubNode,
        topic: str,
        maxsize: int,
        max_bytes: int = DEFAULT_SUBSCRIPTION_BYTES,
    ) -> None:
        self.node = node
        self.topic = topic
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        #: Bytes of data waiting (under _lock).
        self._queued_bytes = 0
        # unbounded underneath, bounded by _offer (the only producer, under _lock): the
        # end-of-subscription marker (None) must always fit, or a consumer blocked on a
        # queue that was full at close would never wake up
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._missed = 0
        #: Total messages dropped because this subscriber was slow.
        self.dropped = 0
        self.delivered = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def _offer(self, topic: str, data: bytes, message_id: bytes, origin: str | None) -> None:
        with self._lock:
            if self._closed:
                return  # the marker stays last
            queued = self._queued_bytes
            # a count alone let a subscriber that stopped reading hold maxsize messages
            # of up to max_message_size each (256 MB with the defaults)
            if self._queue.qsize() >= self.maxsize or (
                queued and queued + len(data) > self.max_bytes
            ):
                self._missed += 1
                self.dropped += 1
                return
            self._queued_bytes = queued + len(data)
            self._queue.put_nowait(Delivery(topic, data, message_id, origin, self._missed))
            self._missed = 0
            self.delivered += 1

    def _take(self, item: Delivery | None) -> Delivery:
        if item is None:
            self._queue.put_nowait(None)  # for the next get(), in this thread or another
            raise E.PubSubError(f"the subscription to {self.topic!r} is closed")
        with self._lock:
            self._queued_bytes -= len(item.data)
        return item

    def get(self, timeout: float | None = None) -> Delivery:
        """The next message (raises ``queue.Empty`` after ``timeout``, and
        :class:`~dtp.messaging.errors.PubSubError` once the subscription is closed and
        its queue drained)."""
        return self._take(self._queue.get(timeout=timeout))

    def get_nowait(self) -> Delivery:
        return self._take(self._queue.get_nowait())

    def qsize(self) -> int:
        """Messages waiting (the end-of-subscription marker is not one)."""
        return max(0, self._queue.qsize() - self._closed)

    def close(self) -> None:
        """Unsubscribe; waiting and later :meth:`get` calls raise
        :class:`~dtp.messaging.errors.PubSubError` once the queue is drained."""
        self.node._unsubscribe(self)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put_nowait(None)


class Link:
    """One peer of a node: a stream, a reader thread and a writer thread with a queue of
    frames bounded in count (``maxsize``) and in bytes (``max_bytes``; a frame larger
    than that still goes when the queue is empty)."""

    def __init__(
        self,
        node: PubSubNode,
        stream: BlockingStream,
        name: str,
        maxsize: int,
        max_bytes: int = DEFAULT_LINK_QUEUE_BYTES,
    ) -> None:
        self.node = node
        self.stream = stream
        self.name = name
        self._out: queue.Queue[bytes] = queue.Queue(maxsize)
        self._max_bytes = max_bytes
        #: Bytes of the frames waiting in the queue (under _drop_lock).
        self._queued_bytes = 0
        self._drop_lock = threading.Lock()
        self._unreported = 0
        #: Frames dropped for this peer because it was slow.
        self.dropped = 0
        #: What the peer says it dropped for us.
        self.dropped_upstream = 0
        self.received = 0
        self.sent = 0
        self.violations = 0
        #: Topics the peer declared past MAX_PEER_TOPICS, refused (violations too).
        self.refused_topics = 0
        #: Topics of interest this node did not tell the peer at its last update: past
        #: MAX_PEER_TOPICS, the shares of the neighbours that declared the most.
        self.withheld = 0
        #: Topics the peer declared interest in, with its distance to a subscriber; None
        #: until its first SUBSCRIBE frame (until then it gets every message).
        self.remote: dict[str, int] | None = None
        #: What this node wants the peer to know (written under the node's lock).
        self._desired: dict[str, int] = {}
        #: What the peer has been told (writer thread only; None: nothing yet).
        self._advertised: dict[str, int] | None = None
        self._dirty = threading.Event()
        self._dirty.set()
        self._wake_pending = False
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name=f"pubsub-r-{name}")
        self._writer = threading.Thread(target=self._write_loop, name=f"pubsub-w-{name}")
        self._reader.daemon = self._writer.daemon = True

    def start(self) -> None:
        self._reader.start()
        self._writer.start()
        self.mark_dirty()

    def wants(self, topic: str) -> bool:
        """(node lock held) Whether to forward a message of ``topic`` to this peer."""
        return self.remote is None or topic in self.remote

    def mark_dirty(self) -> None:
        """Ask the writer to send the peer what changed in this node's interest. The
        state, not a queue of changes, is sent, so nothing is lost when the queue is full
        (the writer is then busy and flushes before its next frame)."""
        self._dirty.set()
        with self._drop_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._out.put_nowait(_WAKE)
        except queue.Full:
            with self._drop_lock:
                self._wake_pending = False

    def _flush_control(self) -> None:
        self._dirty.clear()
        sources: list[dict[str, int]] = []
        with self.node._lock:
            desired = dict(self._desired)
            if len(desired) > MAX_PEER_TOPICS:
                sources = [
                    dict(lk.remote) for lk in self.node._links if lk is not self and lk.remote
                ]
        withheld = 0
        if len(desired) > MAX_PEER_TOPICS:
            # the peer refuses topics past MAX_PEER_TOPICS in the order they come, so
            # this node chooses which to tell it: a fair share per neighbour
            withheld = len(desired) - MAX_PEER_TOPICS
            desired = _fair_share(desired, sources, MAX_PEER_TOPICS)
            if not self.withheld:
                logger.warning(
                    "pubsub link %s: %d topics of interest past the limit of %d are not "
                    "told to the peer (counted in withheld)",
                    self.name,
                    withheld,
                    MAX_PEER_TOPICS,
                )
        self.withheld = withheld
        told = self._advertised
        if told is None:
            sets = desired
            unsets: list[str] = []
        else:
            sets = {t: d for t, d in desired.items() if told.get(t) != d}
            unsets = [t for t in told if t not in desired]
        # withdrawals first: they make room at the peer for the new topics
        for i in range(0, len(unsets), _CHUNK):
            self.stream.sendall(encode_frame([UNSUBSCRIBE, unsets[i : i + _CHUNK]], 1 << 24))
        items = sorted(sets.items())
        if told is None or items:
            for i in range(0, max(len(items), 1), _CHUNK):
                chunk = [[t, d] for t, d in items[i : i + _CHUNK]]
                self.stream.sendall(encode_frame([SUBSCRIBE, chunk], 1 << 24))
        self._advertised = desired

    @property
    def queued_bytes(self) -> int:
        """Bytes of the frames waiting for the peer."""
        return self._queued_bytes

    def offer(self, frame: bytes) -> bool:
        """Queue a frame for the peer; False (and counted) when the queue is full, in
        frames or in bytes."""
        if self.closed.is_set():
            return False
        size = len(frame)
        with self._drop_lock:
            # a count alone let a peer that stops reading hold maxsize frames of up to
            # max_message_size each (256 MiB by default) per link
            if self._queued_bytes and self._queued_bytes + size > self._max_bytes:
                self.dropped += 1
                self._unreported += 1
                return False
            self._queued_bytes += size
        try:
            self._out.put_nowait(frame)
            return True
        except queue.Full:
            with self._drop_lock:
                self._queued_bytes -= size
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
                    if frame is _WAKE:
                        self._wake_pending = False
                    else:
                        self._queued_bytes -= len(frame)
                if self._dirty.is_set():
                    self._flush_control()
                if unreported:
                    self.stream.sendall(encode_frame([DROPPED, unreported]))
                if frame is _WAKE:
                    continue
                self.stream.sendall(frame)
                self.sent += 1
        except (DTPError, OSError) as exc:
            logger.debug("pubsub link %s: writing failed: %s", self.name, exc)
            self.close()

    def _read_loop(self) -> None:
        cap = self.node.max_message_size
        # a peer's SUBSCRIBE frame of 512 topics (up to 134 KB) does not depend on this
        # node's max_message_size, and one skipped as too large lost that interest for
        # good (its subscribers were never sent those topics): control frames are read
        # up to _CONTROL_CAP, and anything else above the node's cap is still refused
        reads = _PatientReads(self.stream, self.closed)
        frames = read_frames(reads, max(cap, _CONTROL_CAP), self.closed, 256 * 1024)
        try:
            for item in frames:
                if self.closed.is_set():
                    break  # a closed link neither delivers nor forwards
                if isinstance(item, Oversized):
                    self.violations += 1
                    continue
                try:
                    message = decode_body(item)
                    if len(item) > cap and not _is_control(message):
                        raise E.MessageTooLarge("a pub/sub message above max_message_size")
                    self._handle(message)
                except E.MessagingProtocolError:
                    self.violations += 1
        except (DTPError, OSError) as exc:
            logger.debug("pubsub link %s: reading failed: %s", self.name, exc)
        finally:
            self.close()

    def _handle(self, message: Any) -> None:
        if not isinstance(message, list) or not message or type(message[0]) is not int:
            # (a kind is an int: 10.0 == PUBLISH, and a bool would pass for 0 or 1)
            raise E.MalformedMessage("a pub/sub frame is an array [kind, ...]")
        kind = message[0]
        if kind == PUBLISH and len(message) == 6:
            _, message_id, topic, hops, data, origin = message
            if (
                isinstance(message_id, bytes)
                and len(message_id) == 16
                and _valid_topic(topic)
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
        elif kind == SUBSCRIBE and len(message) == 2 and isinstance(message[1], list):
            entries = message[1]
            if all(
                isinstance(e, list)
                and len(e) == 2
                and _valid_topic(e[0])
                and type(e[1]) is int
                and 0 <= e[1] <= 255
                for e in entries
            ):
                self.node._interest(self, {t: d for t, d in entries}, [])
                return
        elif (
            kind == UNSUBSCRIBE
            and len(message) == 2
            and isinstance(message[1], list)
            and all(_valid_topic(t) for t in message[1])
        ):
            self.node._interest(self, {}, message[1])
            return
        raise E.MalformedMessage("not a pub/sub frame")

    def close(self) -> None:
        """Stop the writer thread and forget the link. The stream is left to its owner,
        so the reader thread, blocked in ``recv``, ends only when that returns: the next
        bytes arrive (they are discarded), the stream ends (closed by its owner or the
        peer) or its timeout, if it has one, passes."""
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
        link_queue_bytes: int = DEFAULT_LINK_QUEUE_BYTES,
    ) -> None:
        """``link_queue`` and ``link_queue_bytes`` bound each link's queue of frames (in
        count and in bytes): a peer that reads slowly or not at all has what does not fit
        dropped, and counted. Sizes out of range are a ValueError (a TypeError when not
        ints): a queue of 0 was unbounded, a ``seen_cache`` of 0 delivered each message
        once per path, a ``max_message_size`` of 0 ended every link's reader."""
        for name, value, low, high in (
            ("max_hops", max_hops, 0, 255),
            ("link_queue", link_queue, 1, None),
            ("link_queue_bytes", link_queue_bytes, 1, None),
            ("seen_cache", seen_cache, 1, None),
            ("max_message_size", max_message_size, 1, 0xFFFFFFFF),
        ):
            _check_size(name, value, low, high)
        self.node_id = node_id or os.urandom(8).hex()
        self.max_hops = max_hops
        self.link_queue = link_queue
        self.link_queue_bytes = link_queue_bytes
        self.seen_cache = seen_cache
        self.max_message_size = max_message_size
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        #: Message ids seen, each with the most hops left it was forwarded with.
        self._seen: OrderedDict[bytes, int] = OrderedDict()
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
        link = Link(
            self,
            stream,
            name or f"{self.node_id}-{len(self._links)}",
            self.link_queue,
            self.link_queue_bytes,
        )
        with self._lock:
            self._links.append(link)
            topics = set(self._subs)
            for other in self._links:
                topics.update(other.remote or ())
            self._recompute(topics)
        link.start()
        return link

    def _detach(self, link: Link) -> None:
        with self._lock:
            if link in self._links:
                self._links.remove(link)
                if link.remote:
                    self._recompute(set(link.remote))
                    self._reshare(link)
                self._changed.notify_all()

    # -- interest routing ----------------------------------------------------------------------

    def _recompute(self, topics: set[str]) -> None:
        """(lock held) Update what each link should be told about ``topics``: distance 0
        with local subscribers, else 1 + the nearest other peer's distance, dropped at the
        horizon (docs/messaging.md §4)."""
        dirty = set()
        for topic in topics:
            local = bool(self._subs.get(topic))
            # the two nearest peers: a link's own declaration does not count for it, so
            # the nearest *other* one is the first, or the second for the first's link
            # (O(links) per topic: comparing every pair let a peer's SUBSCRIBE frames
            # hold the node lock for O(topics x links^2))
            best: tuple[int, Link] | None = None
            second: tuple[int, Link] | None = None
            if not local:
                for link in self._links:
                    d = None if link.remote is None else link.remote.get(topic)
                    if d is None:
                        continue
                    if best is None or d < best[0]:
                        best, second = (d, link), best
                    elif second is None or d < second[0]:
                        second = (d, link)
            for link in self._links:
                dist: int | None = 0 if local else None
                if not local:
                    nearest = second if best is not None and best[1] is link else best
                    if nearest is not None:
                        dist = nearest[0] + 1
                if dist is not None and dist >= self.max_hops:
                    dist = None
                if link._desired.get(topic) != dist:
                    if dist is None:
                        del link._desired[topic]
                    else:
                        link._desired[topic] = dist
                    dirty.add(link)
        for link in dirty:
            link.mark_dirty()

    def _reshare(self, source: Link) -> None:
        """(lock held) What ``source`` declared changed: past MAX_PEER_TOPICS, what each
        other link is told depends on every topic that neighbour declared (its share,
        :func:`_fair_share`), not only on the ones :meth:`_recompute` saw change."""
        for link in self._links:
            if link is not source and len(link._desired) > MAX_PEER_TOPICS:
                link.mark_dirty()

    def _interest(self, link: Link, sets: dict[str, int], unsets: list[str]) -> None:
        """A peer declared (``sets``) or withdrew (``unsets``) interest."""
        with self._lock:
            if link.remote is None:
                link.remote = {}
            remote = link.remote
            changed = set()  # only these can move anyone's interest: a repeat costs nothing
            for topic, dist in sets.items():
                if topic not in remote and len(remote) >= MAX_PEER_TOPICS:
                    if not link.refused_topics:
                        logger.warning(
                            "pubsub link %s: the peer declared more than %d topics; the "
                            "excess is refused (counted in refused_topics)",
                            link.name,
                            MAX_PEER_TOPICS,
                        )
                    link.refused_topics += 1
                    link.violations += 1
                    continue
                if remote.get(topic) != dist:
                    remote[topic] = dist
                    changed.add(topic)
            for topic in unsets:
                if remote.pop(topic, None) is not None:
                    changed.add(topic)
            if changed:
                self._recompute(changed)
                self._reshare(link)
            self._changed.notify_all()

    def interested_links(self, topic: str) -> list[str]:
        """Names of the links a message of ``topic`` would be forwarded to."""
        with self._lock:
            return [link.name for link in self._links if link.wants(topic)]

    def wait_for_interest(self, topic: str, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` links have *declared* interest in ``topic``
        (peers that have not sent SUBSCRIBE yet do not count)."""

        def ready() -> bool:
            n = sum(1 for lk in self._links if lk.remote is not None and topic in lk.remote)
            return n >= count

        with self._changed:
            return self._changed.wait_for(ready, timeout)

    def subscribe(
        self, topic: str, maxsize: int = 1024, max_bytes: int = DEFAULT_SUBSCRIPTION_BYTES
    ) -> Subscription:
        """A new subscription to ``topic`` (exact match) whose queue holds up to
        ``maxsize`` messages (at least 1) and ``max_bytes`` of data (at least 1; a larger
        message still goes in when the queue is empty); more are dropped and counted."""
        _check_topic(topic)
        if type(maxsize) is not int:
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__!r}")
        if maxsize < 1:
            raise ValueError("a subscription's queue holds at least 1 message")
        _check_size("max_bytes", max_bytes, 1, None)
        sub = Subscription(self, topic, maxsize, max_bytes)
        with self._lock:
            subs = self._subs.setdefault(topic, [])
            subs.append(sub)
            if len(subs) == 1:
                self._recompute({topic})
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.topic, [])
            if sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subs[sub.topic]
                    self._recompute({sub.topic})

    def publish(self, topic: str, data: bytes, *, hops: int | None = None) -> bytes:
        """Publish ``data`` (bytes-like) on ``topic``, forwarded up to ``hops`` times (an
        int in 0..255; default ``max_hops``); returns the message id. Data above the
        node's ``max_message_size`` (with the frame around it) is refused,
        :class:`~dtp.messaging.errors.PayloadTooLarge`, and nothing is delivered."""
        _check_topic(topic)
        try:
            size = memoryview(data).nbytes
        except TypeError:
            size = 0  # not bytes-like: bytes_like says so, as a socket would
        if size > self.max_message_size:
            # before any copy: refusing 300 MB took two copies and 1.2 GB at peak (4.7 s
            # traced), and above 4 GiB msgpack's own ValueError came out instead
            raise E.PayloadTooLarge(
                f"{size} bytes of data exceed the node's max_message_size of "
                f"{self.max_message_size}"
            )
        data = bytes_like(data)
        message_id = os.urandom(16)
        hops = self.max_hops if hops is None else hops
        if type(hops) is not int:  # peers refuse anything else (a bool included)
            raise TypeError(f"hops must be an int, not {type(hops).__name__!r}")
        if not 0 <= hops <= 255:
            raise ValueError("hops must be in 0..255")
        frame = encode_frame(
            [PUBLISH, message_id, topic, hops, data, self.node_id], self.max_message_size
        )
        with self._lock:
            self._remember(message_id, hops)
            links = [link for link in self._links if link.wants(topic)]
        self._deliver(topic, data, message_id, self.node_id)
        if hops > 0:
            for link in links:
                link.offer(frame)
        return message_id

    def _remember(self, message_id: bytes, hops: int) -> int | None:
        """(lock held) Note that ``message_id`` goes on with ``hops`` left; the most hops
        it had before (None: new). An id keeps its place in the cache."""
        before = self._seen.get(message_id)
        if before is None or hops > before:
            self._seen[message_id] = hops
        if before is None and len(self._seen) > self.seen_cache:
            self._seen.popitem(last=False)
        return before

    def _route(
        self, message_id: bytes, topic: str, hops: int, data: bytes, origin: str | None, src: Link
    ) -> None:
        with self._lock:
            before = self._remember(message_id, hops)
            if before is not None:
                self.duplicates += 1
                # a copy with more hops left than the first goes on (not delivered again):
                # on a mesh the first copy may come the long way round with fewer hops
                # left, and was the only one forwarded, so subscribers the short path
                # reached within the hop limit missed the message
                if hops <= before or hops <= 1:
                    return
            links = [link for link in self._links if link is not src and link.wants(topic)]
        if before is None:
            self._deliver(topic, data, message_id, origin)
        if hops <= 1:
            self.hop_limited += 1
            return
        # the node's own cap, not encode_frame's default: a message this node accepted
        # (at most max_message_size) re-encodes no larger, so it always fits
        frame = encode_frame(
            [PUBLISH, message_id, topic, hops - 1, data, origin], self.max_message_size
        )
        for link in links:
            link.offer(frame)

    def _deliver(self, topic: str, data: bytes, message_id: bytes, origin: str | None) -> None:
        with self._lock:
            subs = list(self._subs.get(topic, ()))
        for sub in subs:
            sub._offer(topic, data, message_id, origin)

    def close(self) -> None:
        """Close every link and every subscription (their waiting :meth:`Subscription.get`
        calls wake up). The node stays usable locally: new subscriptions, publishing and
        new links work as on a new node.

        The streams are left to their owners, and so is each link's reader thread: it is
        blocked in ``recv`` and ends when that returns (:meth:`Link.close`), at the latest
        when the owner closes the stream."""
        for link in self.links:
            link.close()
        with self._lock:
            subs = [sub for subs in self._subs.values() for sub in subs]
        for sub in subs:
            sub.close()


def _check_size(name: str, value: object, low: int, high: int | None) -> None:
    """Refuse a constructor size that is not an int in ``low..high``."""
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {type(value).__name__!r}")
    if high is None and value < low:
        raise ValueError(f"{name} must be at least {low}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}")


def _fair_share(
    desired: dict[str, int], sources: list[dict[str, int]], limit: int
) -> dict[str, int]:
    """The ``limit`` topics of ``desired`` (topic -> distance to tell a peer) to tell it:
    this node's own subscriptions (distance 0) first, then one topic from each neighbour
    in turn (``sources``: what each other neighbour declared), each neighbour's nearest
    first. So every neighbour gets an equal share of the places left and a neighbour
    declaring many topics takes only what the others leave: cut by distance and name
    alone, one neighbour's topics named to sort first took every place, and the other
    neighbours' subscribers were denied every message from beyond this node. A topic
    several neighbours declared counts once, in the first share that reaches it."""
    chosen = dict.fromkeys(sorted(t for t, d in desired.items() if d == 0)[:limit], 0)
    turns = [
        iter(sorted((d, t) for t, d in remote.items() if desired.get(t))) for remote in sources
    ]
    while turns and len(chosen) < limit:
        for turn in list(turns):
            for _, topic in turn:
                if topic not in chosen:
                    chosen[topic] = desired[topic]
                    break
            else:
                turns.remove(turn)
            if len(chosen) >= limit:
                break
    return chosen


def _is_control(message: object) -> bool:
    """Whether a decoded frame claims to be a SUBSCRIBE or UNSUBSCRIBE."""
    return (
        isinstance(message, list)
        and len(message) > 0
        and type(message[0]) is int
        and message[0] in (SUBSCRIBE, UNSUBSCRIBE)
    )


def _valid_topic(topic: object) -> bool:
    if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_LENGTH:
        return False
    try:
        return len(topic.encode()) <= MAX_TOPIC_LENGTH
    except UnicodeEncodeError:  # a lone surrogate: not text the wire can carry
        return False


def _check_topic(topic: str) -> None:
    if not _valid_topic(topic):
        raise E.PubSubError(f"a topic is 1..{MAX_TOPIC_LENGTH} bytes of text")
