"""Topic pub/sub over a mesh of DTP streams (docs/messaging.md §4: the frames, interest
routing, drops, validation and peer scores, and why each rule holds).

A :class:`PubSubNode` holds links to peers (any open bidirectional stream: attach a
:class:`dtp.socket.DTPSocket` with :meth:`PubSubNode.attach`). A published message gets a
random 16-byte id and a hop limit; every node delivers it to its local subscribers once
(a bounded cache of ids bound to the message's content) and forwards it, while hops
remain, to the peers *interested* in its topic, so loops and duplicate paths cost
bandwidth but never duplicate deliveries. Interest is a distance vector per topic,
bounded by the node's horizon (``max_hops``), so it only ever points along paths to real
subscribers and converges after an unsubscription.

Nothing waits on a slow party: each link and each subscription has a bounded queue, and
what does not fit is dropped for that party only and counted (a peer learns it from a
DROPPED frame, a subscriber from :attr:`Delivery.dropped_before`). A per-topic
validation hook (:meth:`PubSubNode.set_validator`) judges each new message from a peer,
and every peer has a decaying score (:mod:`dtp.messaging._pubsub_scoring`): below the
graylist threshold its messages are dropped unread, below the disconnect threshold its
links are closed (:meth:`PubSubNode.scores`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import queue
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging._framing import Oversized, bytes_like, decode_body, encode_frame, read_frames
from dtp.messaging._protocol import _check_wait
from dtp.messaging._pubsub_mesh import (
    HELLO,
    IWANT,
    MeshParams,
    MeshRouter,
    UnsupportedVersion,
    is_mesh_control,
)
from dtp.messaging._pubsub_scoring import PeerScore, PeerScores, ScoreParams, Standing, Verdict
from dtp.messaging._pubsub_validation import Hook, PeerMessage, Validator, close_private_loop
from dtp.messaging.rpc import BlockingStream

__all__ = [
    "DEFAULT_SUBSCRIPTION_BYTES",
    "MAX_ORIGIN_LENGTH",
    "MAX_TOPIC_LENGTH",
    "Delivery",
    "Link",
    "MeshParams",
    "PeerMessage",
    "PeerScore",
    "PubSubNode",
    "ScoreParams",
    "Standing",
    "Subscription",
    "Verdict",
]

logger = logging.getLogger(__name__)

PUBLISH: Final = 10  # [10, id, topic, hops_left, data, origin]
DROPPED: Final = 11  # [11, count]
SUBSCRIBE: Final = 12  # [12, [[topic, distance], ...]]
UNSUBSCRIBE: Final = 13  # [13, [topic, ...]]
#: Most topics one peer may declare interest in (more are refused and counted), and so
#: most a node tells a peer: its own subscriptions first, then an equal share per other
#: neighbour (:meth:`PubSubNode._told`).
MAX_PEER_TOPICS: Final = 4096
_CHUNK: Final = 512  # topics per SUBSCRIBE / UNSUBSCRIBE frame
#: Updates of interest a link sends at once, then a second, each coalescing what changed
#: meanwhile (:meth:`Link._next_flush`).
_FLUSH_BURST: Final = 8
_FLUSH_RATE: Final = 10.0
MAX_TOPIC_LENGTH: Final = 256
#: Longest origin (a node id, in characters) a node accepts in a PUBLISH frame, and so
#: the longest ``node_id`` a :class:`PubSubNode` may have.
MAX_ORIGIN_LENGTH: Final = 256
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
#: Score keys of links whose stream names no peer (an id() could be reused by a later
#: link while the closed one's score is still kept).
_LINK_SERIALS: Final = itertools.count()
#: The first two bytes of every well-formed PUBLISH body (a msgpack array of 6, kind
#: 10): what a graylisted peer's frames are recognised by without decoding them.
_PUBLISH_HEAD: Final = b"\x96\x0a"
#: Hops stored in the seen cache for a message a validator rejected or ignored: later
#: copies are not judged again (a rejected one counts against whoever sends it).
_REJECTED: Final = -1
_IGNORED: Final = -2
#: A node's mesh unless told otherwise (MeshParams is frozen: one instance serves all).
_DEFAULT_MESH: Final = MeshParams()
_WAKE: Final = b"\x00wake"
#: The mesh's control frames a link holds at most (a heartbeat queues a few per link).
_CONTROL_QUEUE: Final = 256  # identity-compared: the writer should flush control state


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

    def _delivered(self, item: Delivery | None) -> Delivery:
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
        if timeout is not None:
            _check_wait(timeout)
        return self._delivered(self._queue.get(timeout=timeout))

    def get_nowait(self) -> Delivery:
        return self._delivered(self._queue.get_nowait())

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
        # Unbounded underneath, bounded by offer (in frames and bytes, under _drop_lock):
        # the writer's wake-up marker (at most one waits) and _STOP then always fit, and
        # take no place of a frame. In a queue of maxsize, a wake-up would take the place
        # of the next message, dropped although the peer read everything.
        self._out: queue.Queue[bytes] = queue.Queue()
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        #: Frames waiting in the queue, markers not counted (under _drop_lock).
        self._queued_frames = 0
        #: The mesh's control frames waiting (under _drop_lock), and those dropped past
        #: _CONTROL_QUEUE (a peer that stops reading).
        self._queued_control = 0
        self.control_dropped = 0
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
        #: Messages from the peer that a validator rejected (each scored as invalid).
        self.rejected = 0
        #: PUBLISH frames dropped unread because the peer was graylisted.
        self.graylisted_drops = 0
        #: Why the link was refused (a HELLO of a version this node does not speak).
        self.error: E.MessagingProtocolError | None = None
        key = getattr(stream, "peer_static_key", None)
        # Scored per peer, not per link: a peer's second link shares its score, and one
        # that reconnects finds it (the Noise static key is authenticated by the
        # handshake). A stream without one is scored on its own.
        if isinstance(key, bytes) and key:
            self.peer_key: Hashable = ("key", key)
            self.peer = key.hex()
        else:
            self.peer_key = ("link", next(_LINK_SERIALS))
            self.peer = name
        #: Topics the peer declared past MAX_PEER_TOPICS, refused (violations too).
        self.refused_topics = 0
        #: Topics of interest this node did not tell the peer at its last update: past
        #: MAX_PEER_TOPICS, the shares of the neighbours that declared the most.
        self.withheld = 0
        #: Topics the peer declared interest in, with its distance to a subscriber; None
        #: until its first SUBSCRIBE frame (until then it gets every message).
        self.remote: dict[str, int] | None = None
        #: (node lock) The peer's declarations, nearest first, for its share
        #: (:meth:`PubSubNode._told`); None: to sort again.
        self._ranked: list[tuple[int, str]] | None = None
        #: (node lock) Topics of the node's index that only this peer declared: they are
        #: told to every peer but this one.
        self._sole: set[str] = set()
        #: (node lock) Whether the last update withheld topics: then what the peer is
        #: told depends on every neighbour's declarations (its share of the places).
        self._over = False
        #: What the peer has been told (writer thread only; None: nothing yet).
        self._advertised: dict[str, int] | None = None
        self._dirty = threading.Event()
        self._dirty.set()
        #: Updates of interest sent to the peer (each one or more frames).
        self.updates = 0
        self._flush_tokens = float(_FLUSH_BURST)
        self._flush_clock = time.monotonic()
        self._wake_pending = False
        self.closed = threading.Event()
        # Held by the reader while it handles a frame, and waited for by close(): once
        # close() returns, no frame of this link is delivered or forwarded any more.
        self._handling = threading.Lock()
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

    def _ranking(self) -> list[tuple[int, str]]:
        """(node lock held) The peer's declarations, nearest first: the order its share
        is taken in. Those past the horizon come last and count for it where a nearer
        neighbour makes them worth telling, as they always did."""
        if self._ranked is None:
            self._ranked = sorted((d, t) for t, d in (self.remote or {}).items())
        return self._ranked

    def mark_dirty(self) -> None:
        """Ask the writer to send the peer what changed in this node's interest. The
        state, not a queue of changes, is sent, so nothing is lost when the writer puts
        the update off (:meth:`_next_flush`): it sends the state of then. The wake-up
        takes no place of a frame in the queue, and at most one waits there."""
        self._dirty.set()
        with self._drop_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._out.put_nowait(_WAKE)

    def _flush_control(self) -> None:
        self._dirty.clear()
        with self.node._lock:
            # computed here, from the node's one index, rather than kept per link: a
            # copy per link of every other neighbour's interest cost O(links^2 x
            # topics) (433 MB and 25 s of CPU for 32 neighbours of 4096 topics)
            desired, withheld = self.node._told(self)
            self._over = withheld > 0
        if withheld and not self.withheld:
            logger.warning(
                "pubsub link %s: %d topics of interest past the limit of %d are not "
                "told to the peer (counted in withheld)",
                self.name,
                withheld,
                MAX_PEER_TOPICS,
            )
        self.withheld = withheld
        told = self._advertised
        if told is None and self.node._mesh is not None:
            # a mesh node's first frame: HELLO (the flooding kind sends none)
            self.stream.sendall(self.node._mesh.hello_frame())
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
        frames or in bytes. The mesh's control frames (small) have a bound of their own
        and take no place of a message: a GRAFT waiting must not make a message above the
        byte cap, which goes when the queue is empty, a drop."""
        if self.closed.is_set():
            return False
        size = len(frame)
        if _is_mesh_frame(frame):
            with self._drop_lock:
                if self._queued_control >= _CONTROL_QUEUE:
                    self.control_dropped += 1
                    return False
                self._queued_control += 1
            self._out.put_nowait(frame)
            return True
        with self._drop_lock:
            # a count alone let a peer that stops reading hold maxsize frames of up to
            # max_message_size each (256 MiB by default) per link
            if self._queued_frames >= self._maxsize or (
                self._queued_bytes and self._queued_bytes + size > self._max_bytes
            ):
                self.dropped += 1
                self._unreported += 1
                return False
            self._queued_frames += 1
            self._queued_bytes += size
        self._out.put_nowait(frame)  # (never full: offer bounds it)
        return True

    def _write_loop(self) -> None:
        try:
            while True:
                # a flush put off for want of a token is due when the next one comes
                wait = self._next_flush() if self._dirty.is_set() else None
                try:
                    frame: bytes | None = self._out.get(timeout=wait)
                except queue.Empty:
                    frame = None
                if frame is _STOP or self.closed.is_set():
                    return
                with self._drop_lock:
                    unreported, self._unreported = self._unreported, 0
                    if frame is _WAKE:
                        self._wake_pending = False
                    elif frame is not None and _is_mesh_frame(frame):
                        self._queued_control -= 1
                    elif frame is not None:
                        self._queued_frames -= 1
                        self._queued_bytes -= len(frame)
                if self._dirty.is_set() and self._next_flush() == 0:
                    self._flush_tokens -= 1
                    self.updates += 1
                    self._flush_control()
                if unreported:
                    self.stream.sendall(encode_frame([DROPPED, unreported]))
                if frame is None or frame is _WAKE:
                    continue
                self.stream.sendall(frame)
                if frame[4:6] == _PUBLISH_HEAD:
                    self.sent += 1  # messages (the mesh's control frames go uncounted)
        except (DTPError, OSError) as exc:
            logger.debug("pubsub link %s: writing failed: %s", self.name, exc)
            self.close()

    def _next_flush(self) -> float:
        """(writer thread) Seconds until the writer may tell the peer what changed: 0
        while it has tokens (_FLUSH_BURST, refilled at _FLUSH_RATE a second). Each update
        costs the node lock O(what is told): a neighbour churning thousands of topics
        must not make every link update on each of its frames."""
        now = time.monotonic()
        self._flush_tokens = min(
            _FLUSH_BURST, self._flush_tokens + (now - self._flush_clock) * _FLUSH_RATE
        )
        self._flush_clock = now
        return 0.0 if self._flush_tokens >= 1 else (1 - self._flush_tokens) / _FLUSH_RATE

    def _read_loop(self) -> None:
        cap = self.node.max_message_size
        # a peer's SUBSCRIBE frame of 512 topics (up to 134 KB) does not depend on this
        # node's max_message_size, and one skipped as too large would lose that interest
        # for good (its subscribers never sent those topics): control frames are read
        # up to _CONTROL_CAP, and anything else above the node's cap is still refused
        reads = _PatientReads(self.stream, self.closed)
        frames = read_frames(reads, max(cap, _CONTROL_CAP), self.closed, 256 * 1024)
        node = self.node
        try:
            for item in frames:
                if self.closed.is_set():
                    break  # a closed link neither delivers nor forwards
                if isinstance(item, Oversized):
                    self.violations += 1
                    node._invalid(self)
                    continue
                if item[:2] == _PUBLISH_HEAD and node._standing(self) is not Standing.OK:
                    # dropped unread: no decoding, hashing or validation for a peer
                    # below the graylist threshold, and one more invalid message, so a
                    # peer that goes on sending sinks to the disconnect threshold
                    self.graylisted_drops += 1
                    node._invalid(self)
                    continue
                try:
                    message = decode_body(item)
                    if (
                        len(item) > cap
                        and not _is_control(message)
                        and not is_mesh_control(message)
                    ):
                        raise E.MessageTooLarge("a pub/sub message above max_message_size")
                    with self._handling:
                        # Checked again where close() waits: a frame decoded while
                        # the link closed was delivered and forwarded after close().
                        if self.closed.is_set():
                            break
                        self._handle(message)
                except UnsupportedVersion as exc:
                    # a peer of another version: refused, the link closed
                    self.error = exc
                    logger.warning("pubsub link %s refused: %s", self.name, exc)
                    break
                except E.MessagingProtocolError:
                    self.violations += 1
                    node._invalid(self)
        except E.MessagingProtocolError as exc:
            # the stream ended inside a frame (read_frames): a message cut off, which
            # the link ended on with nothing counted, as for a clean end of stream
            self.violations += 1
            logger.debug("pubsub link %s: reading failed: %s", self.name, exc)
        except (DTPError, OSError) as exc:
            logger.debug("pubsub link %s: reading failed: %s", self.name, exc)
        finally:
            close_private_loop()
            self.close()

    def _cut_off(self) -> None:
        """(reader thread) The peer's score fell below the disconnect threshold: close
        the link and end its connection (the one case a node ends a stream it did not
        open: a link that only stopped reading left the peer's frames to fill the
        connection's window, and the connection open)."""
        if self.closed.is_set():
            return
        logger.warning(
            "pubsub link %s: peer %s below the disconnect threshold; link closed",
            self.name,
            self.peer,
        )
        self.close()
        end = getattr(self.stream, "abort", None)
        with contextlib.suppress(DTPError, OSError):
            if callable(end):
                end("pub/sub peer score below the disconnect threshold")
            else:
                close = getattr(self.stream, "close", None)
                if callable(close):
                    close()

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
                and (
                    origin is None or (isinstance(origin, str) and len(origin) <= MAX_ORIGIN_LENGTH)
                )
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
        elif self.node._mesh is not None and is_mesh_control(message):
            self.node._mesh_control(self, message)
            return
        raise E.MalformedMessage("not a pub/sub frame")

    def close(self) -> None:
        """Stop the writer thread and forget the link. The stream is left to its owner,
        so the reader thread, blocked in ``recv``, ends only when that returns: the next
        bytes arrive (they are discarded), the stream ends (closed by its owner or the
        peer) or its timeout, if it has one, passes.

        A frame the reader is handling at that moment is handled before ``close``
        returns (delivered and forwarded, or not, as it would be on an open link);
        afterwards the link neither delivers nor forwards anything."""
        first = not self.closed.is_set()
        self.closed.set()
        if threading.current_thread() is not self._reader:
            # The reader calls close() when its stream ends, holding nothing; any other
            # caller waits for the frame being handled. Every caller waits, not only the
            # first, so node.close() cannot close subscriptions under a frame still
            # on its way to them while the writer's close() is the one waiting.
            with self._handling:
                pass
        if not first:
            return
        self._out.put_nowait(_STOP)
        self.node._detach(self)


class _Topic:
    """One topic of a node's interest index: the distance each neighbour declared (only
    those within the horizon) and the two nearest, from which what every link is told
    follows in O(1): the nearest *other* neighbour's distance + 1."""

    __slots__ = ("best", "dists", "second")

    def __init__(self) -> None:
        self.dists: dict[Link, int] = {}
        self.best: tuple[int, Link] | None = None
        self.second: tuple[int, Link] | None = None

    def rank(self) -> None:
        best: tuple[int, Link] | None = None
        second: tuple[int, Link] | None = None
        for link, d in self.dists.items():
            if best is None or d < best[0]:
                best, second = (d, link), best
            elif second is None or d < second[0]:
                second = (d, link)
        self.best, self.second = best, second

    def told(self, link: Link) -> int | None:
        """The distance ``link`` is told (no local subscriber): the nearest other's + 1."""
        nearest = self.second if self.best is not None and self.best[1] is link else self.best
        return None if nearest is None else nearest[0] + 1


#: Owners of remembered message ids besides links (:meth:`PubSubNode._remember`).
_LOCAL: Final = "local"
_GONE: Final = "gone"


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
        scoring: ScoreParams | None = None,
        clock: Callable[[], float] = time.monotonic,
        mesh: MeshParams | None = _DEFAULT_MESH,
        address: str | None = None,
    ) -> None:
        """``mesh``: the degrees and timings of the bounded gossip mesh kept per topic
        (docs/messaging.md §4.3; gossipsub v1.1's defaults); None makes a node of the
        flooding kind, which forwards every message to every interested peer and
        speaks no mesh frames. ``address``: where peers may reach this node, named to others
        in peer exchange. ``scoring``: the weights and thresholds of peer scores (default
        :class:`ScoreParams()`, docs/messaging.md §4.2); ``clock``: the seconds they
        decay on (a monotonic clock; tests pass a virtual one).

        ``link_queue`` and ``link_queue_bytes`` bound each link's queue of frames (in
        count and in bytes): a peer that reads slowly or not at all has what does not fit
        dropped, and counted. Sizes out of range are a ValueError (a TypeError when not
        ints): a queue of 0 was unbounded, a ``seen_cache`` of 0 delivered each message
        once per path, a ``max_message_size`` of 0 ended every link's reader.

        ``node_id`` (the origin of this node's messages; default: 16 random hex digits)
        is a str of 1..:data:`MAX_ORIGIN_LENGTH` characters of text (a TypeError when not
        a str, else a ValueError): peers refuse a PUBLISH with any other origin, so
        every message of such a node would be lost at the first hop while publish() goes
        on returning ids."""
        for name, value, low, high in (
            ("max_hops", max_hops, 0, 255),
            ("link_queue", link_queue, 1, None),
            ("link_queue_bytes", link_queue_bytes, 1, None),
            ("seen_cache", seen_cache, 1, None),
            ("max_message_size", max_message_size, 1, 0xFFFFFFFF),
        ):
            _check_size(name, value, low, high)
        if node_id is not None:
            _check_node_id(node_id)
        if scoring is not None and not isinstance(scoring, ScoreParams):
            raise TypeError(f"scoring must be ScoreParams, not {type(scoring).__name__!r}")
        if not callable(clock):
            raise TypeError("clock must be callable (seconds, monotonic)")
        if mesh is not None and not isinstance(mesh, MeshParams):
            raise TypeError(f"mesh must be MeshParams, not {type(mesh).__name__!r}")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str, not {type(address).__name__!r}")
        self._scores = PeerScores(scoring)
        self._clock = clock
        self._validators: dict[str, Validator] = {}
        #: Messages from peers that validators rejected / ignored (each counted once,
        #: when first judged).
        self.rejected = 0
        self.ignored = 0
        self.node_id = os.urandom(8).hex() if node_id is None else node_id
        self.max_hops = max_hops
        self.link_queue = link_queue
        self.link_queue_bytes = link_queue_bytes
        self.seen_cache = seen_cache
        self.max_message_size = max_message_size
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        #: Messages seen (keys of :func:`_message_key`: the id bound to the content),
        #: each with the most hops left it was forwarded with.
        self._seen: dict[bytes, int] = {}
        #: The same keys by who brought them first (a link, _LOCAL or _GONE), oldest
        #: first: a full cache forgets the oldest key of whoever holds the most.
        self._seen_by: dict[object, OrderedDict[bytes, None]] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._links: list[Link] = []
        #: Links attached so far (under _lock), for the default names.
        self._attached = 0
        #: Streams links of this node have read (held weakly): :meth:`attach` refuses them.
        self._read_streams: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Interest per topic, once per node (entries: one per declaration within the
        #: horizon); _both counts the topics also subscribed here.
        self._index: dict[str, _Topic] = {}
        self._both = 0
        self.duplicates = 0
        self.hop_limited = 0
        self._mesh: MeshRouter[Link] | None = None
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if mesh is not None:
            scores = self._scores
            self._mesh = MeshRouter(
                self.node_id,
                params=mesh,
                rng=random.Random(),
                score=scores.score,
                on_graft=scores.graft,
                on_prune=scores.prune,
                on_mesh_delivery=scores.mesh_delivery,
                address=address,
            )

    @property
    def links(self) -> list[Link]:
        with self._lock:
            return list(self._links)

    def attach(self, stream: BlockingStream, name: str = "") -> Link:
        """Start exchanging messages with the peer at the other end of ``stream``.

        A stream that a link of this node reads or has read is refused,
        :class:`~dtp.messaging.errors.PubSubError`: to link to the same peer again
        after closing a link (or the node), open a new stream. A non-blocking stream
        (``gettimeout()`` 0) is refused, ValueError. A link without a ``name`` is
        ``<node_id>-<n>``, ``n`` counting the links this node has attached."""
        if not all(callable(getattr(stream, m, None)) for m in ("recv", "sendall")):
            # (None or a bytes object would crash the link's reader thread instead)
            raise TypeError(
                f"attach() needs a stream (recv, sendall), not {type(stream).__name__!r}"
            )
        gettimeout = getattr(stream, "gettimeout", None)
        if callable(gettimeout) and gettimeout() == 0:
            # Its first recv would raise BlockingIOError: the link would close at once
            # (logged at debug only) while publish() goes on returning ids for nobody.
            raise ValueError(
                "attach() needs a blocking stream (a timeout of None or above 0), not a "
                "non-blocking one: its reads would end the link at once"
            )
        with self._lock:
            # two readers on one stream split its frames between them: each decoder
            # sees parts of frames, and the link skips or misreads nearly every frame
            # and stays up, silently (1 message of 100 gets through). A closed link's
            # reader discards what it reads next, frames and part of one, so the
            # stream no longer starts at a frame for a new link either.
            if self._was_read(stream) or any(lk.stream is stream for lk in self._links):
                raise E.PubSubError("the stream is (or was) read by a link of this node")
            # Counted over the node's life, not the live links: after a link closed,
            # len(self._links) gave the next link the name of a live one.
            link = Link(
                self,
                stream,
                name or f"{self.node_id}-{self._attached}",
                self.link_queue,
                self.link_queue_bytes,
            )
            self._attached += 1
            self._scores.connect(link.peer_key, link.peer, self._clock())
            if self._mesh is not None:
                # (its HELLO goes first, from the link's writer: _flush_control)
                self._mesh.add_peer(link, link.peer_key, link.peer)
                self._start_heartbeat()
            with contextlib.suppress(TypeError):  # a stream without weak references
                self._read_streams.add(stream)
            # what the new link is told is computed when its writer starts; nobody
            # else's interest depends on a peer that declared nothing yet
            self._links.append(link)
        link.start()
        return link

    # -- defences (docs/messaging.md §4.1, §4.2) ---------------------------------------------

    def set_validator(
        self,
        topic: str,
        hook: Hook | None,
        *,
        loop: Any = None,
        timeout: float = 5.0,
    ) -> None:
        """Judge every new message of ``topic`` (exact match) that a peer sends before
        it is delivered or forwarded: ``hook(PeerMessage)`` returns a :class:`Verdict`
        (or an awaitable of one: a coroutine function works). ACCEPT delivers and
        forwards it; IGNORE drops it; REJECT drops it and counts it against the peer
        that sent it (and any other that sends a copy). A hook that raises, takes more
        than ``timeout`` seconds (awaitables only) or returns no Verdict counts as
        IGNORE and is logged. ``loop``: the event loop an awaitable runs on (default: a
        private loop of the link's reader thread). A sync hook runs in the reader
        thread of the peer's link: a slow one slows that peer only.

        One hook per topic: a new one replaces the last; None removes it. Messages the
        node's own application publishes are not judged (``publish`` may run on the
        very loop an async hook needs)."""
        _check_topic(topic)
        if hook is None:
            with self._lock:
                self._validators.pop(topic, None)
            return
        if not callable(hook):
            raise TypeError(f"hook must be callable, not {type(hook).__name__!r}")
        _check_wait(timeout)
        if loop is not None and not callable(getattr(loop, "call_soon_threadsafe", None)):
            raise TypeError(f"loop must be an asyncio event loop, not {type(loop).__name__!r}")
        with self._lock:
            self._validators[topic] = Validator(hook, loop, timeout)

    def validator_failures(self, topic: str) -> int:
        """Calls of ``topic``'s hook that raised, timed out or returned no Verdict (0
        with no hook)."""
        with self._lock:
            validator = self._validators.get(topic)
        return 0 if validator is None else validator.failures

    def scores(self) -> dict[str, PeerScore]:
        """Every known peer's score now, by peer (its Noise static key in hex, or the
        link's name for a stream without one): peers with a link, and for a while
        (docs/messaging.md §4.2) those whose links closed."""
        return self._scores.view(self._clock())

    def _standing(self, link: Link) -> Standing:
        return self._scores.standing(link.peer_key, self._clock())

    def _invalid(self, link: Link) -> None:
        """(``link``'s reader) The peer sent one invalid message: score it, and cut it
        off below the disconnect threshold."""
        standing = self._scores.invalid(link.peer_key, link.peer, self._clock())
        if standing is Standing.DISCONNECT:
            link._cut_off()

    def _judge(self, message: PeerMessage) -> Verdict:
        """The verdict of ``message``'s topic hook (ACCEPT with none)."""
        with self._lock:
            validator = self._validators.get(message.topic)
        return Verdict.ACCEPT if validator is None else validator(message)

    def _was_read(self, stream: object) -> bool:
        """(lock held) Whether a link of this node read ``stream`` (False for a stream
        that cannot be weakly referenced or hashed: only a live link's is then known)."""
        try:
            return stream in self._read_streams
        except TypeError:
            return False

    def _detach(self, link: Link) -> None:
        with self._lock:
            if link in self._links:
                self._links.remove(link)
                self._scores.disconnect(link.peer_key, self._clock())
                if self._mesh is not None:
                    self._mesh.remove_peer(link, self._clock())
                gone = self._seen_by.pop(link, None)
                if gone:
                    self._seen_by.setdefault(_GONE, OrderedDict()).update(gone)
                if link.remote:
                    dirty: set[Link | None] = set()
                    for topic in link.remote:
                        self._declare(link, topic, None, dirty)
                    self._mark(dirty)
                    self._reshare(link)
                self._changed.notify_all()

    # -- interest routing ----------------------------------------------------------------------

    def _declare(self, link: Link, topic: str, dist: int | None, dirty: set[Link | None]) -> None:
        """(lock held) ``link``'s distance to ``topic`` is now ``dist`` (None: withdrawn):
        update the index and add to ``dirty`` the links whose told distance changed
        (docs/messaging.md §4). O(1) unless the nearest two change (O(declarers))."""
        index = self._index
        entry = index.get(topic)
        if dist is not None and dist + 1 >= self.max_hops:
            dist = None  # past the horizon: it tells nobody anything
        if entry is None:
            if dist is None:
                return
            entry = index[topic] = _Topic()
            self._both += topic in self._subs
        elif entry.dists.get(link) == dist:
            return
        before = (entry.best, entry.second)
        sole = next(iter(entry.dists)) if len(entry.dists) == 1 else None
        if dist is None:
            del entry.dists[link]
        else:
            entry.dists[link] = dist
        if len(entry.dists) == 1:
            new_sole: Link | None = next(iter(entry.dists))
        else:
            new_sole = None
        if sole is not new_sole:
            if sole is not None:
                sole._sole.discard(topic)
            if new_sole is not None:
                new_sole._sole.add(topic)
        if not entry.dists:
            del index[topic]
            self._both -= topic in self._subs
            self._mesh_topic(topic)
        elif len(entry.dists) == 1 and sole is None:
            self._mesh_topic(topic)
        entry.rank()
        if topic in self._subs or self.max_hops == 0:
            return  # told at distance 0 (or nothing) whoever declares it
        self._changes(before, (entry.best, entry.second), dirty)

    def _changes(
        self,
        before: tuple[tuple[int, Link] | None, tuple[int, Link] | None],
        after: tuple[tuple[int, Link] | None, tuple[int, Link] | None],
        dirty: set[Link | None],
    ) -> None:
        """(lock held) Add to ``dirty`` the links told another distance when a topic's
        nearest two go from ``before`` to ``after``: every link but the nearest is told
        the nearest's distance + 1, the nearest the second's."""

        def told(
            pair: tuple[tuple[int, Link] | None, tuple[int, Link] | None], x: Link | None
        ) -> int | None:
            best, second = pair
            nearest = second if best is not None and best[1] is x else best
            return None if nearest is None else nearest[0]

        if told(before, None) != told(after, None):
            dirty.add(None)  # every link: added per topic, it cost O(topics x links)
            return
        for pair in (before, after):
            if pair[0] is not None:
                x = pair[0][1]
                if told(before, x) != told(after, x):
                    dirty.add(x)

    def _local(self, topic: str, dirty: set[Link | None]) -> None:
        """(lock held) ``topic`` gained its first or lost its last local subscriber."""
        if topic in self._index:
            self._both += 1 if topic in self._subs else -1
        self._mesh_topic(topic)
        if self.max_hops:
            dirty.add(None)  # every link is told 0, or now the nearest's + 1 or nothing

    def _mark(self, dirty: set[Link | None]) -> None:
        """(lock held) Wake the writers of ``dirty`` (None: of every link)."""
        for link in self._links if None in dirty else dirty:
            if link is not None:
                link.mark_dirty()

    def _reshare(self, source: Link) -> None:
        """(lock held) What ``source`` declared changed: past MAX_PEER_TOPICS, what each
        other link is told depends on every topic that neighbour declared (its share,
        :meth:`_told`), not only on the ones :meth:`_declare` saw change."""
        for link in self._links:
            if link is not source and link._over:
                link.mark_dirty()

    def _told(self, link: Link) -> tuple[dict[str, int], int]:
        """(lock held) What to tell ``link`` (topic -> distance), and how many topics of
        interest that leaves out. At most MAX_PEER_TOPICS, the peer refusing topics past
        that in the order they come: this node's own subscriptions first, then one topic
        from each other neighbour in turn, each neighbour's nearest first, so that one
        neighbour declaring many topics takes only the places the others leave (cut by
        distance and name alone, its topics could take every place). A topic several
        neighbours declared counts once, in the first share that reaches it.
        O(topics told + the index when under the limit), not O(all topics)."""
        if self.max_hops == 0:
            return {}, 0
        subs, index = self._subs, self._index
        # topics known here, less those only this peer declared (unless local)
        count = len(subs) + len(index) - self._both
        count -= sum(1 for t in link._sole if t not in subs)
        if count <= MAX_PEER_TOPICS:
            told = dict.fromkeys(subs, 0)
            for topic, entry in index.items():
                if topic not in subs:
                    dist = entry.told(link)
                    if dist is not None:
                        told[topic] = dist
            return told, 0
        chosen = dict.fromkeys(sorted(subs)[:MAX_PEER_TOPICS], 0)
        turns = [iter(lk._ranking()) for lk in self._links if lk is not link and lk.remote]
        while turns and len(chosen) < MAX_PEER_TOPICS:
            for turn in list(turns):
                for _, topic in turn:
                    if topic not in chosen and topic not in subs:
                        known = index.get(topic)
                        dist = None if known is None else known.told(link)
                        if dist is not None:
                            chosen[topic] = dist
                            break
                else:
                    turns.remove(turn)
                if len(chosen) >= MAX_PEER_TOPICS:
                    break
        return chosen, count - len(chosen)

    def _interest(self, link: Link, sets: dict[str, int], unsets: list[str]) -> None:
        """A peer declared (``sets``) or withdrew (``unsets``) interest."""
        with self._lock:
            if link.closed.is_set():
                # closed by its writer while its reader handled this frame: _detach took
                # its interest out of the index (or will, once it has the lock), and
                # what went in now would stay there, told to every other peer
                return
            if link.remote is None:
                link.remote = {}
            remote = link.remote
            dirty: set[Link | None] = set()
            changed = False  # only a change can move anyone's interest: a repeat costs nothing
            added: list[str] = []
            removed: list[str] = []
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
                    if topic not in remote:
                        added.append(topic)
                    remote[topic] = dist
                    self._declare(link, topic, dist, dirty)
                    changed = True
            for topic in unsets:
                if remote.pop(topic, None) is not None:
                    removed.append(topic)
                    self._declare(link, topic, None, dirty)
                    changed = True
            if self._mesh is not None:
                # (an empty first SUBSCRIBE too: the peer has declared, and now gets
                # only what it declared)
                _send(self._mesh.interest(link, added, removed, self._clock()))
            if changed:
                link._ranked = None
                self._mark(dirty)
                self._reshare(link)
            self._changed.notify_all()

    def interested_links(self, topic: str) -> list[str]:
        """Names of the links whose peer wants ``topic``: those a message of it is
        forwarded to without a mesh (with one, only the topic's :meth:`mesh_peers` and
        flooding peers among them). A topic that is not one is a
        :class:`~dtp.messaging.errors.PubSubError`, as for :meth:`publish`: it answered,
        naming every peer yet to subscribe."""
        _check_topic(topic)
        with self._lock:
            return [link.name for link in self._links if link.wants(topic)]

    def wait_for_interest(self, topic: str, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` links have *declared* interest in ``topic``
        (peers that have not sent SUBSCRIBE yet do not count)."""
        _check_topic(topic)
        if type(count) is not int:
            raise TypeError(f"count must be an int, not {type(count).__name__!r}")
        if timeout is not None:
            _check_wait(timeout)

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
                dirty: set[Link | None] = set()
                self._local(topic, dirty)
                self._mark(dirty)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.topic, [])
            if sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subs[sub.topic]
                    dirty: set[Link | None] = set()
                    self._local(sub.topic, dirty)
                    self._mark(dirty)

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
        key = _message_key(message_id, topic, data)
        with self._lock:
            self._remember(key, hops, _LOCAL)
            if self._mesh is not None:
                links = self._mesh.published(topic, message_id, frame, self._clock())
            else:
                links = [link for link in self._links if link.wants(topic)]
        self._deliver(topic, data, message_id, self.node_id)
        if hops > 0:
            for link in links:
                link.offer(frame)
        return message_id

    def _remember(self, key: bytes, hops: int, owner: object) -> int | None:
        """(lock held) Note that the message of ``key`` (:func:`_message_key`; brought by
        ``owner``: a link or _LOCAL) goes on with ``hops`` left; the most hops it had
        before (None: new). A full cache forgets the oldest key of the owner holding
        the most, so that a peer sending PUBLISH frames with fresh ids can push the
        others down only to as many keys as it holds (forgetting the oldest of all, it
        would push every real id out, and a copy still circling a loop would be
        delivered again)."""
        before = self._seen.get(key)
        if before is not None:
            if hops > before:
                self._seen[key] = hops
            return before
        self._seen[key] = hops
        mine = self._seen_by.get(owner)
        if mine is None:
            mine = self._seen_by[owner] = OrderedDict()
        mine[key] = None
        if len(self._seen) > self.seen_cache:
            # O(owners): links plus two (an emptied one stays until its link closes)
            largest = max(self._seen_by.values(), key=len)
            del self._seen[largest.popitem(last=False)[0]]
        return None

    def _route(
        self, message_id: bytes, topic: str, hops: int, data: bytes, origin: str | None, src: Link
    ) -> None:
        # once per frame received, outside the lock: hashing the data is the one cost
        # that grows with the message, and the links it goes on to share the key
        key = _message_key(message_id, topic, data)
        with self._lock:
            if src.closed.is_set():
                # A closed link neither delivers nor forwards. Nor does it remember: a
                # copy of this message from another peer is then new, not a duplicate.
                return
            known = self._seen.get(key)
            judged = known is None and topic in self._validators
        if judged:
            # Outside the lock: a hook may take its time. Two links bringing the same
            # new message at once may both ask; the cache below still delivers it once.
            verdict = self._judge(PeerMessage(topic, data, message_id, origin, src.name, src.peer))
            if verdict is not Verdict.ACCEPT:
                self._drop(key, hops, src, verdict)
                return
        with self._lock:
            if src.closed.is_set():
                return
            known = self._seen.get(key)
            if known is not None and known < 0:
                verdict = Verdict.REJECT if known == _REJECTED else Verdict.IGNORE
            else:
                verdict = Verdict.ACCEPT
                before = self._remember(key, hops, src)
                mesh = self._mesh
                if mesh is not None and (before is not None or hops <= 1):
                    # seen (and a mesh peer credited for it: P3); nothing to pass on
                    mesh.received(src, topic, message_id, None, self._clock())
                if before is not None:
                    self.duplicates += 1
                    # a copy with more hops left than the first goes on (not delivered
                    # again): on a mesh the first copy may come the long way round with
                    # fewer hops left, and every subscriber within the hop limit of the
                    # short path still gets the message (docs/messaging.md §4,
                    # test_a_copy_with_more_hops_left_goes_on_after_a_hop_limited_one)
                    if hops <= before or hops <= 1:
                        return
                if hops <= 1:
                    # (counted under the lock: several readers count at once)
                    self.hop_limited += 1
                if mesh is not None:
                    # the mesh's peers (after the frame is made, below), or on a copy
                    # with more hops left, where the first one went
                    links = [] if before is None else mesh.targets(topic, src, self._clock())
                else:
                    links = [link for link in self._links if link is not src and link.wants(topic)]
        if verdict is not Verdict.ACCEPT:
            # judged before (here or on another link) and dropped: so is this copy,
            # and a copy of an invalid message is invalid too (gossipsub v1.1 P4)
            self._drop(key, hops, src, verdict)
            return
        if before is None:
            self._scores.first_delivery(src.peer_key, src.peer, self._clock())
            self._deliver(topic, data, message_id, origin)
        if hops <= 1:
            return
        # the node's own cap, not encode_frame's default: a message this node accepted
        # (at most max_message_size) re-encodes no larger, so it always fits
        frame = encode_frame(
            [PUBLISH, message_id, topic, hops - 1, data, origin], self.max_message_size
        )
        if mesh is not None and before is None:
            with self._lock:
                if src.closed.is_set():
                    return
                links = mesh.received(src, topic, message_id, frame, self._clock())
        for link in links:
            link.offer(frame)

    # -- the mesh (docs/messaging.md §4.3) ---------------------------------------------------

    def _mesh_topic(self, topic: str) -> None:
        """(lock held) Join or leave ``topic``'s mesh: a node is in a topic while it has
        subscribers of it or a neighbour declared interest in it (it relays)."""
        mesh = self._mesh
        if mesh is None:
            return
        now = self._clock()
        if topic in self._subs or topic in self._index:
            frames = mesh.join(topic, now)
        else:
            frames = mesh.leave(topic, now)
        _send(frames)

    def _mesh_control(self, link: Link, message: list[Any]) -> None:
        """(``link``'s reader) A HELLO, GRAFT, PRUNE, IHAVE or IWANT from the peer."""
        assert self._mesh is not None
        with self._lock:
            if link.closed.is_set():
                return
            frames = self._mesh.control(link, message, self._clock())
        _send(frames)

    def _start_heartbeat(self) -> None:
        """(lock held) The mesh's heartbeat thread, while the node has links."""
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._heartbeat_stop.clear()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"pubsub-heartbeat-{self.node_id}", daemon=True
        )
        self._heartbeat.start()

    def _beat(self) -> None:
        mesh = self._mesh
        assert mesh is not None
        while not self._heartbeat_stop.wait(mesh.params.heartbeat):
            with self._lock:
                if not self._links:
                    self._heartbeat = None
                    return
                frames = mesh.heartbeat(self._clock())
            _send(frames)

    def mesh_peers(self, topic: str) -> list[str]:
        """Names of the links in ``topic``'s mesh ([] without a mesh, or not in it)."""
        with self._lock:
            if self._mesh is None:
                return []
            return sorted(link.name for link in self._mesh.mesh.get(topic, ()))

    def mesh_counters(self) -> dict[str, int]:
        """What the mesh sent and refused: GRAFT, PRUNE, IHAVE and IWANT frames, messages
        served for IWANTs, GRAFTs refused ({} without a mesh)."""
        with self._lock:
            return {} if self._mesh is None else dict(self._mesh.counters)

    def exchanged_peers(self) -> dict[str, str | None]:
        """Peers named by PRUNEs (peer exchange), node id -> address, oldest first: the
        application may link to them."""
        with self._lock:
            return {} if self._mesh is None else dict(self._mesh.exchanged)

    def _drop(self, key: bytes, hops: int, src: Link, verdict: Verdict) -> None:
        """A message from ``src`` judged IGNORE or REJECT: remember the verdict (copies
        are not judged again, and count as it did) and score a rejection against the
        peer."""
        with self._lock:
            if src.closed.is_set():
                return
            known = self._seen.get(key)
            if known is None:
                self._remember(key, hops, src)
                self._seen[key] = _REJECTED if verdict is Verdict.REJECT else _IGNORED
                if verdict is Verdict.REJECT:
                    self.rejected += 1
                else:
                    self.ignored += 1
            else:
                self.duplicates += 1
                if known >= 0:
                    # accepted on another link while this one asked: delivered there
                    return
                verdict = Verdict.REJECT if known == _REJECTED else Verdict.IGNORE
        if verdict is Verdict.REJECT:
            src.rejected += 1
            self._invalid(src)

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


def _is_mesh_frame(frame: bytes) -> bool:
    """Whether a queued frame is one of the mesh's control frames (kinds 14..18, a
    one-byte int after the 4-byte length and the array's one-byte header)."""
    return len(frame) > 5 and HELLO <= frame[5] <= IWANT


def _send(frames: list[tuple[Link, bytes]]) -> None:
    """Queue each of the mesh's frames on its link."""
    for link, frame in frames:
        link.offer(frame)


def _check_size(name: str, value: object, low: int, high: int | None) -> None:
    """Refuse a constructor size that is not an int in ``low..high``."""
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {type(value).__name__!r}")
    if high is None and value < low:
        raise ValueError(f"{name} must be at least {low}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}")


def _check_node_id(node_id: object) -> None:
    """Refuse a ``node_id`` that peers would refuse as the origin of a PUBLISH."""
    if not isinstance(node_id, str):
        raise TypeError(f"node_id must be a str, not {type(node_id).__name__!r}")
    if not 1 <= len(node_id) <= MAX_ORIGIN_LENGTH:
        raise ValueError(f"node_id must be 1..{MAX_ORIGIN_LENGTH} characters")
    try:
        node_id.encode()
    except UnicodeEncodeError:  # a lone surrogate: msgpack cannot put it on the wire
        raise ValueError("node_id must be text (a lone surrogate is not)") from None


def _message_key(message_id: bytes, topic: str, data: bytes) -> bytes:
    """What the seen cache remembers a message by: its id bound to a digest of its topic
    and data, so that a copy of a genuine message's id with another topic (and 255
    hops), sent first, is another message, not a duplicate that stops the genuine one
    on every path through the node. The origin is left out: stated by the publisher and
    checked by nobody, a copy that differs only there carries the same message
    (delivered once, with the first copy's origin), and a node's own message coming
    back round a loop stays a duplicate. The topic is length-prefixed and the data comes
    last, so no two contents share the bytes hashed."""
    digest = hashlib.blake2b(message_id, digest_size=16)
    name = topic.encode()
    digest.update(len(name).to_bytes(2, "big"))
    digest.update(name)
    digest.update(data)
    return digest.digest()


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
