"""Posting a ledger carrier's payloads (:class:`CarrierSending`): records framed and
posted over the pipe's inner pipes, least loaded first."""

from __future__ import annotations

from collections.abc import Sequence

from dtp.errors import ConnectionClosed, ConnectionStateError
from dtp.hostid.ledger_carrier.carrier_fields import CarrierFields
from dtp.hostid.ledger_carrier.framing import frame_record
from dtp.protocol.buffers import bytes_like


class CarrierClosed(ConnectionClosed, RuntimeError):
    """A send on a carrier that was closed (:meth:`LedgerCarrier.close`): a
    :class:`~dtp.errors.ConnectionClosed`, as a write on a closed connection raises, and
    a RuntimeError too, for callers that catch that."""


class CarrierSending(CarrierFields):
    """The sending side of :class:`~dtp.hostid.ledger_carrier.carrier.LedgerCarrier`."""

    @property
    def inner_count(self) -> int:
        """How many inner pipes our pipe has."""
        return len(self._sent)

    def in_flight(self) -> list[int]:
        """Per inner of our pipe: payloads sent and not yet acknowledged by the peer."""
        return [s - a for s, a in zip(self._sent, self._acked, strict=True)]

    def _pick_inner(self) -> int:
        loads = self.in_flight()
        best = min(loads)
        n = len(loads)
        for step in range(n):
            i = (self._rr + step) % n
            if loads[i] == best:
                self._rr = (i + 1) % n
                return i
        raise AssertionError("unreachable")

    def _post(self, payload: bytes, *, data: bool = False) -> None:
        with self._post_lock:
            inner = self._pick_inner()
            if data and self.retention_terms is not None and not self.retention_over:
                try:
                    record = self.ledger.send_retained(
                        self.identity, self.pipe_id, self.retention_terms, inner, payload
                    )
                except ConnectionStateError as exc:
                    if exc.name != "EConnectionNotOpen":
                        raise
                    # closed on the ledger (a half-close, a settlement): records are
                    # kept only on an Open connection (docs/escrow.md §16), but the
                    # last payloads (a CLOSE) still go, plainly, as SYNCs do
                    self.retention_over = True
                else:
                    with self._retained_lock:
                        self.retained.append(record)
                    self.retained_sent += 1
                    # we own the pipe: retention::send took the inner's next seq
                    self._sent[inner] += 1
                    self.payloads_sent += 1
                    return
            seq = self.ledger.pipe_send(self.identity, self.pipe_id, inner, payload)
            self._sent[inner] = max(self._sent[inner], seq + 1)
            self.payloads_sent += 1

    def send(self, records: Sequence[bytes]) -> None:
        """Post whole DTP records (each as one payload, or fragments when too large).
        Ledger errors propagate: nothing is dropped silently. Safe to call from another
        thread than :meth:`receive`. A record that is not bytes-like (TypeError) or
        needs more than 255 fragments (ValueError) refuses the call, nothing posted."""
        if self.closed:
            raise CarrierClosed("the carrier is closed")
        # checked before anything is posted: bytes passed as the list posted one
        # zero-filled "record" per byte (``bytes(97)``), a transaction each, and an int
        # record as many zero bytes
        if isinstance(records, bytes | bytearray | memoryview | str):
            raise TypeError(
                f"records must be a sequence of byte strings, not {type(records).__name__}"
            )
        # (any buffer, as a socket takes: an array.array record was taken before the
        # type check, which then refused it as "not bytes-like")
        whole = [bytes_like(record) for record in records]
        with self._post_lock:
            # all framed first: a record too large for 255 fragments is refused before
            # the records ahead of it are posted (they were, then the ValueError)
            fid = self._next_fragment_id
            framed: list[list[bytes]] = []
            for record in whole:
                framed.append(frame_record(record, fid, self.max_payload))
                if len(framed[-1]) > 1:
                    fid = (fid + 1) & 0xFFFFFFFF
            self._next_fragment_id = fid
            for payloads in framed:
                for payload in payloads:
                    self._post(payload, data=True)
