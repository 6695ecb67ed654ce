"""One listener of a station (:class:`_StationLink`): the station's frames out through a
bounded queue, where a message may be dropped and an AIR frame never is, and the
listener's tips and requests in."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging._framing import Oversized, decode_body, read_frames
from dtp.messaging.pubsub import _PatientReads

if TYPE_CHECKING:
    from dtp.messaging.rpc import BlockingStream

logger = logging.getLogger(__name__)

# what a station link queues: its HELLO, messages (dropped when the queue is full) and
# AIR frames (never dropped, at most one beyond the bound)
_Q_HELLO: Final = 0
_Q_MESSAGE: Final = 1
_Q_AIR: Final = 2


class LinkedStation(Protocol):
    """What a link calls back in its station
    (:class:`~dtp.messaging.broadcast._station.BroadcastStation`)."""

    def _handle(self, link: _StationLink, message: Any) -> None: ...

    def _detach(self, link: _StationLink) -> None: ...


class _StationLink:
    """One listener of a station: a reader thread (tips, requests) and a writer thread with
    a bounded queue of frames."""

    def __init__(
        self, station: LinkedStation, stream: BlockingStream, name: str, maxsize: int
    ) -> None:
        self.station = station
        self.stream = stream
        self.name = name
        self._maxsize = maxsize
        # (kind, frame): the kind says what may be dropped or replaced when it is full
        self._out: deque[tuple[int, bytes]] = deque()
        self._cond = threading.Condition(threading.Lock())
        #: Frames dropped for this listener because it was slow (messages only: an AIR
        #: frame takes the place of one, which is counted here).
        self.dropped = 0
        self.violations = 0
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name=f"bcast-r-{name}")
        self._writer = threading.Thread(target=self._write_loop, name=f"bcast-w-{name}")
        self._reader.daemon = self._writer.daemon = True

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def queue_hello(self, frame: bytes) -> None:
        """Queue the HELLO (the first frame, into an empty queue)."""
        with self._cond:
            self._out.append((_Q_HELLO, frame))
            self._cond.notify()

    def offer(self, frame: bytes) -> bool:
        """Queue a message frame; False (and counted) when the queue is full."""
        with self._cond:
            if self.closed.is_set():
                return False
            if len(self._out) >= self._maxsize:
                self.dropped += 1
                return False
            self._out.append((_Q_MESSAGE, frame))
            self._cond.notify()
            return True

    def offer_air(self, frame: bytes) -> None:
        """Queue an AIR frame, full queue or not: dropped, it would never be sent again
        and the listener would stay on air after a cancel. In a full queue it takes the place of
        the newest message (counted in :attr:`dropped`, which the listener sees as a gap
        in sequence numbers), else of the newest AIR frame (older news of the air state),
        else (the HELLO and AIR frames only) goes in above the bound: at most once, since
        the next one replaces it."""
        with self._cond:
            if self.closed.is_set():
                return
            if len(self._out) >= self._maxsize:
                for want in (_Q_MESSAGE, _Q_AIR):
                    index = next(
                        (i for i in range(len(self._out) - 1, -1, -1) if self._out[i][0] == want),
                        None,
                    )
                    if index is not None:
                        del self._out[index]
                        if want == _Q_MESSAGE:
                            self.dropped += 1
                        break
            self._out.append((_Q_AIR, frame))
            self._cond.notify()

    def _write_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._out and not self.closed.is_set():
                        self._cond.wait()
                    if self.closed.is_set():
                        return
                    _, frame = self._out.popleft()
                self.stream.sendall(frame)
        except (DTPError, OSError) as exc:
            logger.debug("broadcast link %s: writing failed: %s", self.name, exc)
            self.close()

    def _read_loop(self) -> None:
        try:
            # (reads wait through the stream's timeout: a listener may stay quiet)
            for item in read_frames(_PatientReads(self.stream, self.closed), 4096, self.closed):
                if self.closed.is_set():
                    return  # a closed link takes no more tips or requests
                if isinstance(item, Oversized):
                    self.violations += 1
                    continue
                try:
                    self.station._handle(self, decode_body(item))
                except E.MessagingProtocolError:
                    self.violations += 1
        except E.MessagingProtocolError as exc:
            # the stream ended inside a frame (read_frames): a message cut off, counted
            # (it ended the link as a clean end of stream does, with nothing counted)
            self.violations += 1
            logger.debug("broadcast link %s: reading failed: %s", self.name, exc)
        except (DTPError, OSError) as exc:
            logger.debug("broadcast link %s: reading failed: %s", self.name, exc)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the writer thread and forget the link. The stream is left to its owner,
        so the reader thread, blocked in ``recv``, ends only when that returns: the next
        bytes arrive (they are discarded), the stream ends or its timeout passes."""
        with self._cond:
            if self.closed.is_set():
                return
            self.closed.set()
            self._out.clear()
            self._cond.notify_all()
        self.station._detach(self)
