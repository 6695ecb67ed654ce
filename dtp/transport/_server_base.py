"""What the blocking and the asyncio DTP servers share (:class:`dtp.socket.DTPServer`,
:class:`dtp.aio.DTPServer`): their admission engine made from their settings, the
counters it and the handshakes keep, and the looks at them. Each server keeps only its
way of waiting (threads, or the event loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig, first_message_window
from dtp.transport._admission import (
    AddressSlots,
    Admission,
    HeapRelease,
    ReplayGuard,
    Why,
    checked_first_message_timeout,
)
from dtp.transport._collector import tune_for_serving
from dtp.transport._hooks import Listener, Reservations

A = TypeVar("A")


class AdmittingServer(Generic[A]):
    """A DTP server's admission (dtp.transport._admission, docs/protocol.md §8) and its
    counters; ``A`` is the server's kind of new connection (its ``_Arrival``)."""

    identity: HostIdentity
    handshakes_failed: int
    refused: int
    #: Connections closed unserved: their address's line, or the server's, was full,
    #: or they waited in it past the handshake timeout
    busy_refused: int
    #: Connections closed before their complete first handshake record: timed out
    #: (``first_message_timeout``), or the oldest, making room for newer ones
    unproven_closed: int
    #: Half-handshakes (waiting for their client's next message) ended to make room
    #: for proven connections waiting for a slot (also in :attr:`handshakes_failed`)
    half_handshakes_evicted: int
    _admission: Admission[A]
    _address_slots: AddressSlots[A] | None
    _attached: Listener | None
    _config: ConnectionConfig
    _replays: ReplayGuard
    _heap: HeapRelease
    _serving: Reservations | None

    def _admit_by(
        self,
        identity: HostIdentity,
        config: ConnectionConfig | None,
        *,
        reservations: Reservations | None,
        max_handshakes: int,
        max_handshakes_per_address: int | None,
        max_waiting_per_address: int,
        backlog: int,
        first_message_timeout: float,
        gone: Callable[[A], bool],
    ) -> None:
        """Make the server's admission from its settings (the server's ``_begin``,
        ``_close_unserved`` and ``_give_way`` are its steps), zero its counters, and set
        up what both servers serve with: ``identity``, the ``reservations`` the hooks'
        accepted connections take, the heap's release and the collector."""
        self._admission = Admission(
            max_handshakes=max_handshakes,
            max_handshakes_per_address=max_handshakes_per_address,
            max_waiting_per_address=max_waiting_per_address,
            max_waiting=max(backlog, 1),
            max_unproven=max(backlog, 1),
            first_message_timeout=first_message_window(
                config, checked_first_message_timeout(first_message_timeout)
            ),
            start=self._begin,
            close=self._close_unserved,
            give_way=self._give_way,
            gone=gone,
        )
        self._address_slots = self._admission.address_slots
        self.handshakes_failed = 0
        self.refused = 0
        self.busy_refused = 0
        self.unproven_closed = 0
        self.half_handshakes_evicted = 0
        # IK first messages seen: a replayed one is turned away before the hooks, so it
        # never holds a client's ledger connection (dtp.transport._admission)
        self._replays = ReplayGuard()
        self.identity = identity
        # (what the admission counts while a connection is served: hooks.Reservations)
        self._serving = reservations
        # the heap's free pages go back to the system after churn (dtp.transport._admission)
        self._heap = HeapRelease()
        # the collector sized for serving, once per process (dtp.transport._collector)
        tune_for_serving()

    def _begin(self, arrival: A) -> bool:
        raise NotImplementedError

    def _close_unserved(self, arrivals: list[A], why: Why) -> None:
        raise NotImplementedError

    def _give_way(self, arrival: A) -> None:
        raise NotImplementedError

    @property
    def attached(self) -> Listener | None:
        """The listener :meth:`attach` gave this server, if any."""
        return self._attached

    @property
    def connection_config(self) -> ConnectionConfig:
        """The configuration the server's connections start from (its identity's)."""
        return self._config

    @property
    def handshakes_in_progress(self) -> int:
        """Handshakes in progress now (at most ``max_handshakes``)."""
        return self._admission.in_progress

    @property
    def handshakes_waiting(self) -> int:
        """Connections waiting for one of the ``max_handshakes`` slots (not those
        waiting in their own address's line, nor for their first message)."""
        return self._admission.waiting

    @property
    def unproven(self) -> int:
        """Connections waiting for their complete first handshake record now."""
        return len(self._admission.unproven)

    @property
    def replays_refused(self) -> int:
        """Replayed IK first messages turned away (also counted in
        :attr:`handshakes_failed`): see :mod:`dtp.transport._admission`."""
        return self._replays.refused
