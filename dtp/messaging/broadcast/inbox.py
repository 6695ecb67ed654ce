"""What listeners send a station (:class:`StationInbox`): requests and tips, each checked
and queued for the application, the oldest dropped from a full queue."""

from __future__ import annotations

import logging
import queue
from typing import TYPE_CHECKING, Any

from dtp.errors import ChainError
from dtp.messaging import errors as E
from dtp.messaging.broadcast.events import ListenerRequest, Tip
from dtp.messaging.broadcast.tips import StationTips
from dtp.messaging.broadcast.wire import MAX_REQUEST, REQUEST, TIP

if TYPE_CHECKING:
    from dtp.messaging.broadcast.station_link import _StationLink

logger = logging.getLogger(__name__)


class StationInbox(StationTips):
    """The inbox of :class:`~dtp.messaging.broadcast.station.BroadcastStation`."""

    def _inbox(self, box: queue.Queue[Any], item: object) -> None:
        """Queue a tip or request, dropping the oldest when the queue is full: dropping
        the newest let one listener's flood shut every other one out."""
        with self._inbox_lock:  # (one link's reader at a time: evict, then put)
            while True:
                try:
                    box.put_nowait(item)
                    return
                except queue.Full:
                    pass
                try:
                    old = box.get_nowait()
                except queue.Empty:
                    continue  # the application took one meanwhile
                self.inbox_dropped += 1
                if isinstance(old, Tip):
                    # paid for and accepted: not silently lost (counted, and logged, but
                    # not once per tip: a flood of 1-MIST tips would flood the log too)
                    self.tips_dropped += 1
                    if self.tips_dropped == 1 or self.tips_dropped % 100 == 0:
                        logger.warning(
                            "broadcast: tips queue full, accepted tips dropped unseen: "
                            "%d so far (the last of %d MIST from %s)",
                            self.tips_dropped,
                            old.amount,
                            old.address,
                        )

    def _handle(self, link: _StationLink, message: Any) -> None:
        if not isinstance(message, list) or not message:
            raise E.MalformedMessage("a broadcast frame is an array")
        kind = message[0]
        if kind == REQUEST and len(message) == 2 and isinstance(message[1], str):
            if len(message[1].encode()) > MAX_REQUEST:
                raise E.MalformedMessage("request too long")
            self._inbox(self.requests, ListenerRequest(link.name, message[1]))
            return
        if kind == TIP and len(message) == 6:
            try:
                self._inbox(self.tips, self._check_tip(message))
            except E.InvalidTip:
                self.invalid_tips += 1
            except (ChainError, OSError) as exc:
                # the ledger failed to say what the tipper contributed (or the tip state
                # could not be saved): the listener did nothing wrong, so its link stays
                # up and its reader goes on
                self.unchecked_tips += 1
                logger.warning("broadcast: a tip could not be checked: %s", exc)
            return
        raise E.MalformedMessage("not a broadcast frame for the station")
