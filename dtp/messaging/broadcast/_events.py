"""What a listener receives (:class:`BroadcastMessage`, :class:`AirChange`) and what a
station receives from its listeners (:class:`Tip`, :class:`ListenerRequest`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BroadcastMessage:
    """A verified broadcast message."""

    #: The broadcast's channel name.
    channel: str
    #: Sequence number (strictly increasing; gaps are messages this listener missed).
    seq: int
    payload: bytes
    #: Messages missed just before this one (the gap in sequence numbers since the last
    #: message :meth:`BroadcastListener.get` returned: the station's drops and the
    #: listener's own, when its queue was full).
    missed_before: int


@dataclass(frozen=True, slots=True)
class AirChange:
    """The station went on or off air."""

    on_air: bool
    #: Why (``"covered"``, ``"pool exhausted"``, ``"cancelled"``…).
    reason: str
    #: The sequence number the next message will carry.
    next_seq: int


@dataclass(frozen=True, slots=True)
class Tip:
    """A tip the station accepted."""

    #: The tipper's Sui address (proven by its signature).
    address: str
    amount: int
    message: str
    tip_id: bytes


@dataclass(frozen=True, slots=True)
class ListenerRequest:
    """A listener's message to the station."""

    #: The station's name for the listener's link.
    listener: str
    text: str
