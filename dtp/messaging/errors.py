"""Errors of :mod:`dtp.messaging`, all under :class:`dtp.errors.DTPError`.

- Bad bytes from the peer (a frame that is not msgpack, not a message, or too large) raise
  subclasses of :class:`dtp.errors.RemoteProtocolError`; each carries ``wire_code``, the
  JSON-RPC-style integer that the error frame sent back to the peer uses.
- A call that the remote side answered with an error raises :class:`RemoteError` (or the
  subclass for its code: :class:`MethodNotFound`, :class:`InvalidParams`, …).
- Local outcomes of a call: :class:`RpcTimeout` (the deadline passed),
  :class:`RpcCancelled`, :class:`RpcConnectionLost`.
- Sealed messages: :class:`SealedDecryptError` (detail-free), :class:`ForgedSender`,
  :class:`MalformedSealed`.
- Broadcast stations: :class:`OffAir` (nothing sent), :class:`ForgedBroadcast`,
  :class:`ReplayedBroadcast`, :class:`InvalidTip`.
- Discovery: :class:`ForgedAnnouncement`, :class:`ExpiredAnnouncement`.
"""

from __future__ import annotations

from typing import Any, Final

from dtp.errors import (
    AccessDenied,
    DTPError,
    DTPTimeoutError,
    ErrorCode,
    PaymentError,
    RemoteProtocolError,
)

__all__ = [
    "WIRE_CODES",
    "BadLoginAnswer",
    "Cancelled",
    "DeadlineExceeded",
    "DiscoveryError",
    "ExpiredAnnouncement",
    "ForgedAnnouncement",
    "ForgedBroadcast",
    "ForgedSender",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "InvalidSession",
    "InvalidTip",
    "LoginExpired",
    "LoginRefused",
    "MalformedMessage",
    "MalformedSealed",
    "MessageTooLarge",
    "MessagingError",
    "MethodNotAllowed",
    "MethodNotFound",
    "NotEncodable",
    "OffAir",
    "ParseError",
    "PayloadTooLarge",
    "PaymentRequired",
    "PubSubError",
    "RemoteError",
    "ReplayedBroadcast",
    "RequestTooLarge",
    "ResponseTooLarge",
    "RpcCancelled",
    "RpcConnectionLost",
    "RpcError",
    "RpcTimeout",
    "SealedDecryptError",
    "SealedError",
    "ServerBusy",
    "SessionExpired",
    "StationError",
    "remote_error",
]

# -- wire error codes (JSON-RPC 2.0 §5.1 where it has one, -320xx for DTP's own) --------------

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
MESSAGE_TOO_LARGE: Final = -32001
DEADLINE_EXCEEDED: Final = -32002
CANCELLED: Final = -32003
PAYMENT_REQUIRED: Final = -32004
SERVER_BUSY: Final = -32005
#: The provider's method rules refuse this client the method (docs/messaging.md §2.5).
METHOD_NOT_ALLOWED: Final = -32006
#: A login was refused (docs/messaging.md §3.1): the client is not allowed, or the
#: challenge was answered already.
LOGIN_REFUSED: Final = -32007
#: A login answer whose signature (the sealed sender proof) does not verify, or that is
#: not sealed to the server by a proven sender.
BAD_LOGIN_ANSWER: Final = -32008
#: A login challenge answered after it expired.
LOGIN_EXPIRED: Final = -32009
#: A session token that is not one the server issued (altered, another server's).
INVALID_SESSION: Final = -32010
#: A session token past its expiry.
SESSION_EXPIRED: Final = -32011


class MessagingError(DTPError):
    """Root of the messaging layer's errors."""


# -- the peer sent bad bytes --------------------------------------------------------------------


class MessagingProtocolError(RemoteProtocolError, MessagingError):
    """The peer sent a frame that breaks the messaging wire format (docs/messaging.md)."""

    wire_code: int = INVALID_REQUEST
    code = ErrorCode.FRAME_VALUE
    default_message = "invalid message"


class MalformedMessage(MessagingProtocolError):
    """A frame's body is not valid msgpack, or not a message of the wire format."""

    wire_code = PARSE_ERROR


class MessageTooLarge(MessagingProtocolError):
    """A frame exceeds the receiver's size cap (it is skipped; the stream stays usable)."""

    wire_code = MESSAGE_TOO_LARGE
    code = ErrorCode.FRAME_SIZE
    default_message = "message exceeds the size cap"


# -- a call failed ------------------------------------------------------------------------------


class RpcError(MessagingError):
    """A remote call did not produce a result."""


#: The class of each wire code, for :func:`remote_error`: every :class:`RemoteError`
#: subclass that names its own code (``class E(RemoteError, wire_code=N)``) enters it.
WIRE_CODES: Final[dict[int, type[RemoteError]]] = {}


class RemoteError(RpcError):
    """The remote side answered with an error: ``code``, ``message`` and ``data``."""

    wire_code: int = INTERNAL_ERROR

    def __init_subclass__(cls, *, wire_code: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if wire_code is not None:
            cls.wire_code = wire_code
            WIRE_CODES[wire_code] = cls

    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        self.code: int = self.wire_code if code is None else code
        self.message = message
        self.data = data
        super().__init__(f"[{self.code}] {message}")


class ParseError(RemoteError, wire_code=PARSE_ERROR):
    """The remote side could not decode our message."""


class InvalidRequest(RemoteError, wire_code=INVALID_REQUEST):
    """The remote side says our message is not a valid request."""


class MethodNotFound(RemoteError, wire_code=METHOD_NOT_FOUND):
    """No such method on the remote side."""


class InvalidParams(RemoteError, wire_code=INVALID_PARAMS):
    """The method refused its parameters."""


class InternalError(RemoteError, wire_code=INTERNAL_ERROR):
    """The remote handler failed."""


class RequestTooLarge(RemoteError, wire_code=MESSAGE_TOO_LARGE):
    """Our request exceeded the remote side's size cap (or, as the subclass
    :class:`ResponseTooLarge`, its answer did)."""


#: The message of the ``MESSAGE_TOO_LARGE`` error that answers a request whose result
#: exceeds the server's size cap: it tells that error from a request over the cap, which
#: has the same code (docs/messaging.md §2).
RESPONSE_TOO_LARGE_TEXT: Final = "response exceeds the size cap"


class ResponseTooLarge(RequestTooLarge):
    """The remote handler's result exceeded the remote side's size cap, so it answered
    with an error instead (wire code ``MESSAGE_TOO_LARGE``, message
    :data:`RESPONSE_TOO_LARGE_TEXT`). A :class:`RequestTooLarge`, so code written
    ``except RequestTooLarge`` catches it too.
    An answer over *our* cap is :class:`MessageTooLarge` instead."""


class DeadlineExceeded(RemoteError, wire_code=DEADLINE_EXCEEDED):
    """The remote side gave up: the request's deadline passed there."""


class Cancelled(RemoteError, wire_code=CANCELLED):
    """The remote side cancelled the request."""


class PaymentRequired(RemoteError, PaymentError, wire_code=PAYMENT_REQUIRED):
    """The request is not covered by a valid receipt or prepaid response fee (a
    :class:`dtp.errors.PaymentError`, as a paid connection closed for want of
    receipts is)."""


class ServerBusy(RemoteError, wire_code=SERVER_BUSY):
    """The remote side has too many requests in progress."""


class MethodNotAllowed(RemoteError, AccessDenied, wire_code=METHOD_NOT_ALLOWED):
    """The provider's method rules refuse this client the method (its address is not
    allowed, or denied, for it): nothing was charged. A :class:`dtp.errors.AccessDenied`."""


class LoginRefused(RemoteError, AccessDenied, wire_code=LOGIN_REFUSED):
    """A login (docs/messaging.md §3.1) or a session was refused; the subclasses say why.
    Raised as it is when the server's rule refuses the client, or the challenge was
    answered already. A :class:`dtp.errors.AccessDenied`."""


class BadLoginAnswer(LoginRefused, wire_code=BAD_LOGIN_ANSWER):
    """The answer to a login challenge does not prove its sender: not sealed to the
    server, anonymous, its signature (the sealed sender proof) not verifying, or not
    the challenge the server issued."""


class LoginExpired(LoginRefused, wire_code=LOGIN_EXPIRED):
    """The login challenge was answered after its expiry: ask for a new one."""


class InvalidSession(LoginRefused, wire_code=INVALID_SESSION):
    """A session token the server did not issue (altered, or another server's)."""


class SessionExpired(LoginRefused, wire_code=SESSION_EXPIRED):
    """A session token past its expiry: log in again."""


def remote_error(code: int, message: str, data: Any = None) -> RemoteError:
    """The typed exception for an error frame (unknown codes give :class:`RemoteError`;
    ``MESSAGE_TOO_LARGE`` with :data:`RESPONSE_TOO_LARGE_TEXT` gives
    :class:`ResponseTooLarge`)."""
    cls = WIRE_CODES.get(code, RemoteError)
    if cls is RequestTooLarge and message == RESPONSE_TOO_LARGE_TEXT:
        cls = ResponseTooLarge  # (the same code: only the message tells them apart)
    return cls(message, code, data)


class RpcTimeout(RpcError, DTPTimeoutError):
    """No answer before the call's deadline (the request was cancelled)."""


class RpcCancelled(RpcError):
    """The call was cancelled locally."""


class RpcConnectionLost(RpcError, ConnectionError):
    """The stream or connection ended before the answer came. A ConnectionError, as
    the transport's own connection errors are: code written for sockets (``except
    OSError``) catches it."""


class _BadBytes(RemoteProtocolError):
    """A peer's sealed message, broadcast or announcement that fails its check: an
    ``ErrorCode.ARG`` with the class's own message unless one is given."""


# -- sealed messages ----------------------------------------------------------------------------


class SealedError(MessagingError):
    """A sealed message cannot be opened or sent."""


class SealedDecryptError(SealedError):
    """A sealed message is not for us, or was tampered with. Carries no detail on purpose."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__("sealed message failed to open")


class MalformedSealed(SealedError, _BadBytes):
    """Sealed-message bytes do not follow the format (docs/messaging.md)."""

    default_message = "malformed sealed message"


class ForgedSender(SealedError):
    """The claimed sender does not match the key that sealed the message."""


class SealedExpired(SealedError):
    """A sealed message dated outside the inbox's ``max_age``: older than that (too old
    to tell from a copy of one already delivered and forgotten), or that far ahead of
    the inbox's clock (docs/messaging.md §3)."""


# -- pub/sub, discovery -------------------------------------------------------------------------


class PubSubError(MessagingError):
    """A pub/sub operation is invalid (topic too long, node closed, …)."""


class DiscoveryError(MessagingError):
    """A discovery record is invalid or cannot be published."""


class PayloadTooLarge(MessagingError, ValueError):
    """A message we were asked to send exceeds the size cap (nothing was sent)."""


class NotEncodable(MessagingError, TypeError):
    """A value we were asked to send cannot be encoded as msgpack (nothing was sent): a
    type msgpack does not know (a set, an object...), or an int outside -2**63 to
    2**64-1, which msgpack reports as an OverflowError. A TypeError, as for any value
    of the wrong kind."""


def not_encodable(exc: Exception) -> NotEncodable:
    """The :class:`NotEncodable` for what msgpack raised packing a message of ours."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, OverflowError):
        reason = f"{reason} (msgpack takes ints from -2**63 to 2**64-1)"
    return NotEncodable(f"cannot encode the message as msgpack: {reason}")


# -- broadcast stations -------------------------------------------------------------------------


class StationError(MessagingError):
    """A broadcast station or listener operation failed."""


class OffAir(StationError):
    """The station is off air (the pool does not cover the slot in progress, or the
    broadcast is cancelled); nothing was sent."""


class ForgedBroadcast(StationError, _BadBytes):
    """A broadcast message's signature does not verify under the broadcaster's key."""

    default_message = "broadcast signature does not verify"


class ReplayedBroadcast(StationError, _BadBytes):
    """A broadcast message's sequence number is not above the last one accepted."""

    default_message = "broadcast message replayed or out of order"


class NoTicket(StationError):
    """The station of a ticketed broadcast refused this listener: the ledger shows its
    address holding no ticket of the broadcast's sale (docs/escrow.md §9). Raised by the
    station's ``attach`` and, at the listener, by ``get`` once the refusal arrived."""


class InvalidTip(StationError, _BadBytes):
    """A tip is not signed by its contributor or not covered by its contributions."""

    default_message = "invalid tip"


# -- discovery (continued) ----------------------------------------------------------------------


class ForgedAnnouncement(DiscoveryError, _BadBytes):
    """A discovery announcement is not signed by the host's authority."""

    default_message = "announcement signature does not verify"


class ExpiredAnnouncement(DiscoveryError):
    """A discovery announcement's expiry has passed."""
