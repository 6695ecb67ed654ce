"""What :class:`~dtp.messaging._protocol.RpcProtocol` reports of the peer's messages and of
its deadlines: one frozen dataclass per event, and :data:`RpcEvent`, their union."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dtp.messaging import errors as E


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """The peer asks us to run ``method``; answer with ``send_response``/``send_error``."""

    #: Correlation id chosen by the peer (unique among its requests in flight).
    request_id: int
    method: str
    #: Any msgpack value (JSON-RPC style: a list or a map, or nil).
    params: Any
    #: Local time (the ``now`` clock) after which the peer no longer waits; None = never.
    deadline: float | None
    #: Optional map of extensions (receipts ``"r"``, prepaid response escrow ``"re"``).
    meta: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class NotificationReceived:
    """A one-way message: no answer is expected (or possible)."""

    method: str
    params: Any
    meta: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The result of one of our requests."""

    request_id: int
    result: Any
    meta: Mapping[str, Any] | None
    #: The raw msgpack body of the frame (hashed by response-escrow acknowledgements).
    body: bytes


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """One of our requests failed on the peer's side."""

    request_id: int
    #: The typed error: a :class:`~dtp.messaging.errors.RemoteError` subclass by code,
    #: :class:`~dtp.messaging.errors.MessageTooLarge` for an answer over our cap, or
    #: :class:`~dtp.messaging.errors.MalformedMessage` for an answer that breaks the
    #: format (its id readable, the rest not).
    error: E.RemoteError | E.MessagingProtocolError


@dataclass(frozen=True, slots=True)
class RequestCancelled:
    """A request the peer sent us ended before we answered: the peer cancelled it
    (``reason == "cancelled"``) or its deadline passed (``"deadline"``)."""

    request_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class RequestTimedOut:
    """One of our requests reached its deadline unanswered; a CANCEL was queued."""

    request_id: int


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The peer acknowledged our response to ``request_id`` with a signature (response
    escrow, docs/escrow.md "Response escrow")."""

    request_id: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer sent a frame that breaks the format; it was skipped (and answered with an
    error frame when the peer may wait for one)."""

    error: E.MessagingProtocolError
    #: The id of the request it belonged to, when that much could be read.
    request_id: int | None
    #: A peer's own error report without a request id (``ERROR`` with nil id), if any.
    reported: E.RemoteError | None = None


RpcEvent = (
    RequestReceived
    | NotificationReceived
    | ResponseReceived
    | ErrorReceived
    | RequestCancelled
    | RequestTimedOut
    | AckReceived
    | ProtocolViolation
)
