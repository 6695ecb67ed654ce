"""What both RPC servers share (the blocking :class:`~dtp.messaging.rpc._blocking_server.RpcServer`
and :class:`~dtp.messaging.rpc._asyncio_server.AsyncRpcServer`): the handler registry,
:class:`CallContext`, the options' checks, the error answers, and running the fee
engine's end step."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, overload

from dtp.messaging import errors as E
from dtp.messaging._protocol import (
    NotificationReceived,
    RequestReceived,
    RpcProtocol,
    _check_count,
    _check_our_method,
)
from dtp.messaging.method_rules import MethodRules
from dtp.messaging.rpc._engine import KeepResponse, PayRequest, ServerCallFees
from dtp.messaging.rpc._fees import (
    PaymentsCache,
    RequestPayments,
    ResponseFeePolicy,
)

logger = logging.getLogger(__name__)


@dataclass
class CallContext:
    """What a handler registered with ``context=True`` gets besides the params."""

    request_id: int
    method: str
    #: ``time.monotonic()`` value after which the caller stops waiting (None: never).
    deadline: float | None
    meta: Mapping[str, Any] | None
    #: The client's verified Sui address (from the DTP handshake), when known.
    peer_address: str | None
    #: Set when the caller cancels, the deadline passes or the client ends its side of
    #: the stream (it may still read the answer: a half-close): long handlers should
    #: check it.
    #: Only a server that reads while handlers run sees these: :class:`RpcServer` with
    #: a worker pool. Inline (``workers=0``) it stays clear: check :attr:`deadline`.
    #: :class:`AsyncRpcServer` sets it at the end of the client's side only: for a
    #: cancel or the deadline it cancels the handler's task instead.
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: The ResponseEscrow this request prepaid, if any.
    escrow_id: str | None = None
    #: The prices the request was charged (:meth:`RpcServerBase.request_cost`), as its
    #: method's pricing returned them: what a handler forwards must be what was priced,
    #: even if the rules would answer otherwise by now (serve_jsonrpc's per-entry
    #: verdicts ride on it).
    cost: tuple[int | None, ...] = (None,)
    #: How many requests of the SLA the request was counted as, when the client metered
    #: it above that (a JSON-RPC document with requests the rules refuse): its response
    #: says so, for the client's meter (docs/messaging.md §2.5). None otherwise.
    counted: int | None = None


Handler = Callable[..., Any]


def end_request(
    fees: ServerCallFees, request_id: int, escrow_id: str | None, body: bytes | None
) -> None:
    """Both servers: tell the fee engine how a request ended (``body``: its answer;
    None: none) and run the step it names on the ResponseFeePolicy (its lock is the
    driver side's). Before the response can leave: the client's ACK may come at once."""
    step = fees.ended(request_id, escrow_id, body)
    if type(step) is KeepResponse:
        step.policy.responded(step.escrow_id, step.body)
    elif step is not None:
        step.policy.release(step.escrow_id)


def note_counted(
    ctx: CallContext | None, step: PayRequest, event: RequestReceived, peer: str | None
) -> CallContext | None:
    """Both servers, once ``step`` admitted the request of ``event``: its context, made
    now if it had none, carrying what its answer must say it was counted as
    (:attr:`PayRequest.counted`: it was metered above that); ``ctx`` as it was otherwise."""
    counted = step.counted
    if counted is None:
        return ctx
    if ctx is None:
        ctx = CallContext(event.request_id, event.method, event.deadline, event.meta, peer)
    ctx.counted = counted
    return ctx


def answer_meta(fees: ServerCallFees, ctx: CallContext | None) -> dict[str, int] | None:
    """Both servers: the RESPONSE meta of the request of ``ctx`` (what it was counted as,
    when it was metered above it; None mostly)."""
    return None if ctx is None else fees.counted_meta(ctx.counted)


def refuse_missing(proto: RpcProtocol, event: RequestReceived, fees: ServerCallFees) -> None:
    """Both servers' answer to a request for a method nobody registered: counted as
    nothing, and said so on a stream paid per request (:meth:`ServerCallFees.refusal_data`)."""
    proto.send_error(
        event.request_id,
        E.METHOD_NOT_FOUND,
        f"no method {event.method!r}",
        fees.refusal_data(None),
        request=event,
    )


def notification_failed(method: str) -> None:
    """Log the failure of the handler of notification ``method`` (in an ``except``):
    a notification has no answer, so both servers only log it."""
    logger.exception("notification handler %s failed", method)


def call_notification(
    entry: tuple[Handler, bool], event: NotificationReceived, peer: str | None
) -> Any:
    """Both servers: call a notification's handler (``entry``: registered handler and
    whether it takes a context, built only then); returns what it returned (an
    awaitable, for the asyncio server to await), or None when it raised (logged)."""
    fn, wants_ctx = entry
    try:
        if wants_ctx:
            return fn(event.params, CallContext(0, event.method, None, event.meta, peer))
        return fn(event.params)
    except Exception:
        notification_failed(event.method)
        return None


def tell_client_ended(contexts: Iterable[CallContext]) -> None:
    """Both servers, when the client ends its side of the stream: every running
    handler's ``ctx.cancelled`` is set at once. What the client asked is still answered
    (it may still read: a half-close), but nothing tells a half-close from a close for
    good, and a long handler waiting for either would hold the stream for good
    (tests/messaging/test_rpc_half_close.py)."""
    for ctx in list(contexts):
        ctx.cancelled.set()


class Registry:
    """The handlers a server answers with, by name: methods and notifications (the
    blocking and the asyncio server register theirs so)."""

    def __init__(self) -> None:
        self.methods: dict[str, tuple[Handler, bool]] = {}
        self.notifications: dict[str, tuple[Handler, bool]] = {}
        #: Per-method access and prices for the methods served here (None: every
        #: method open to all, at the SLA's request price); docs/messaging.md §2.5.
        self.rules: MethodRules | None = None
        # method -> what prices its requests from their params and the client: the
        # JSON-RPC method's, which looks inside the document (serve_jsonrpc)
        self._pricing: dict[str, Pricing] = {}

    def price(self, name: str, pricing: Pricing) -> None:
        """Price (and admit) the requests of method ``name`` with ``pricing(params,
        client)``: the prices of what the request asks for (MIST each, None for the
        SLA's request price), or MethodNotAllowed. It runs before the request's fee
        is taken (docs/messaging.md §2.5); :attr:`rules` then does not apply to it."""
        _check_our_method(name)
        if not callable(pricing):
            raise TypeError(f"pricing must be callable, not {type(pricing).__name__!r}")
        self._pricing[name] = pricing

    def notification_allowed(self, method: str, client: str | None) -> bool:
        """Whether :attr:`rules` let ``client`` send notification ``method``: one they
        refuse is dropped, as a notification gets no answer (nor a fee: it pays none)."""
        rules = self.rules
        return rules is None or rules.allowed(method, client)

    @property
    def priced(self) -> bool:
        """Whether a method of this server has its own pricing (:meth:`price`)."""
        return bool(self._pricing)

    def request_cost(self, method: str, params: Any, client: str | None) -> tuple[int | None, ...]:
        """What a request of ``method`` costs ``client``: the prices it pays (MIST each,
        None for the SLA's own request price; the fee engine turns them into requests of
        the connection's SLA), or MethodNotAllowed, which answers it (-32006) before
        any fee is taken."""
        pricing = self._pricing.get(method)
        if pricing is not None:
            cost = pricing(params, client)
            # (a tuple as it is, a subclass's own fields with it: CallContext.cost)
            return cost if isinstance(cost, tuple) else tuple(cost)
        rules = self.rules
        if rules is None:
            return ONE_REQUEST
        return (rules.check(method, client),)

    def register(
        self, name: str, fn: Handler, *, context: bool = False, notification: bool = False
    ) -> None:
        """Serve ``fn`` as method (or, with ``notification``, notification) ``name``.
        A name that no request could carry, a handler that cannot be called, or a name
        already taken is refused here (TypeError / ValueError), not at the first call:
        silently replacing a handler would hide the mistake."""
        _check_our_method(name)
        if not callable(fn):
            raise TypeError(f"a handler must be callable, not {type(fn).__name__!r}")
        table = self.notifications if notification else self.methods
        if name in table:
            kind = "notification" if notification else "method"
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = (fn, context)

    @overload
    def method(self, name: Handler, *, context: bool = False) -> Handler: ...

    @overload
    def method(
        self, name: str | None = None, *, context: bool = False
    ) -> Callable[[Handler], Handler]: ...

    def method(
        self, name: str | Handler | None = None, *, context: bool = False
    ) -> Handler | Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`: ``@server.method()`` and the bare
        ``@server.method`` register the function under its own name,
        ``@server.method("name")`` under that one (``context=True`` as register's). It
        returns the function itself.

        The bare form is taken because it is how such decorators are commonly written:
        without it the function would arrive here as ``name``, and the decorator would
        return its inner wrapper in the function's place and register nothing (clients
        would get MethodNotFound, and calling the function a puzzling TypeError)."""

        def wrap_as(given: str | None) -> Callable[[Handler], Handler]:
            def wrap(fn: Handler) -> Handler:
                own = given or getattr(fn, "__name__", None)
                if not isinstance(own, str):
                    # (a partial, a callable object): said plainly, not an AttributeError
                    raise TypeError(
                        f"a {type(fn).__name__!r} handler has no name of its own: "
                        "give one, method(name)"
                    )
                # register makes every check, whichever form named the method
                self.register(own, fn, context=context)
                return fn

            return wrap

        if name is None or isinstance(name, str):
            return wrap_as(name)
        if callable(name):
            return wrap_as(None)(name)
        # neither a name nor a function: refused now, as register would refuse it
        raise TypeError(f"a method name is a str, not {type(name).__name__!r}")


#: What prices one request: the prices of what it asks for, from its params and the
#: client's address (None: anonymous). Raises MethodNotAllowed to refuse it.
Pricing = Callable[[Any, "str | None"], Iterable["int | None"]]
#: The prices of a request of a method with no rule: one request of the SLA.
ONE_REQUEST: Final[tuple[int | None, ...]] = (None,)


def check_server_options(
    max_message_size: object, max_pending: object, payments: object, response_fees: object
) -> None:
    """A server's options, checked when it is made rather than at each stream's
    RpcProtocol (where ``max_pending=0`` would fail every client that connects, an
    uncallable payments source every request, a wrong fee policy the first prepaid one)."""
    _check_count("max_message_size", max_message_size, 1)
    _check_count("max_pending", max_pending, 1)
    if not (payments is None or isinstance(payments, RequestPayments) or callable(payments)):
        raise TypeError(
            "payments must be a RequestPayments, a function of the connection ID or None, "
            f"not {type(payments).__name__!r}"
        )
    if response_fees is not None and not isinstance(response_fees, ResponseFeePolicy):
        raise TypeError(
            "response_fees must be a ResponseFeePolicy or None, "
            f"not {type(response_fees).__name__!r}"
        )


def error_reply(exc: BaseException) -> tuple[int, str, Any]:
    """The error (code, message, data) a request is answered with when its handler
    raised ``exc``: both servers answer so."""
    if isinstance(exc, E.RemoteError):
        return exc.code, exc.message, exc.data
    if isinstance(exc, TypeError):
        # taken for params the handler cannot take; its text is sent only when Python
        # raised it binding the call (the handler never ran): a handler's own text stays
        # private, as any other exception's does
        tb = exc.__traceback__
        detail = f": {exc}" if tb is not None and tb.tb_next is None else ""
        return E.INVALID_PARAMS, f"invalid params{detail}", None
    return E.INTERNAL_ERROR, f"internal error ({type(exc).__name__})", None


def failure_reply(method: str, exc: BaseException) -> tuple[int, str, Any]:
    """:func:`error_reply` for the handler of ``method`` that raised ``exc``, logged
    with its traceback unless the handler meant it (a RemoteError) or the params did
    not fit (a TypeError): both servers answer and log so."""
    if not isinstance(exc, E.RemoteError | TypeError):
        logger.error("handler %s failed", method, exc_info=exc)
    return error_reply(exc)


def refusal_reply(fees: ServerCallFees, method: str, exc: Exception) -> tuple[int, str, Any]:
    """The answer to a request of ``method`` refused before it was counted: its pricing
    (the method rules) or its fee admission raised ``exc`` (:meth:`ServerCallFees.refusal`).
    Logged when the check failed itself rather than refused (not a RemoteError): that
    request's failure alone."""
    if not isinstance(exc, E.RemoteError):
        logger.error("the fee check of %s failed", method, exc_info=exc)
    return fees.refusal(exc)


class ServerBase(Registry):
    """What both servers (:class:`RpcServer`, ``AsyncRpcServer``) take, checked here
    before anything starts, and keep: the message and pending bounds, and the fees
    (``payments``, resolved once per connection through a PaymentsCache, and
    ``response_fees``)."""

    def __init__(
        self,
        max_message_size: int,
        max_pending: int,
        payments: RequestPayments | Callable[[str | None], RequestPayments | None] | None,
        response_fees: ResponseFeePolicy | None,
        rules: MethodRules | None = None,
    ) -> None:
        check_server_options(max_message_size, max_pending, payments, response_fees)
        if rules is not None and not isinstance(rules, MethodRules):
            raise TypeError(f"rules must be MethodRules or None, not {type(rules).__name__!r}")
        super().__init__()
        self.rules = rules
        self.max_message_size = max_message_size
        self.max_pending = max_pending
        self.payments = payments
        self._payments = PaymentsCache(payments)
        self.response_fees = response_fees

    def use_payments(
        self, payments: RequestPayments | Callable[[str | None], RequestPayments | None]
    ) -> None:
        """Take ``payments`` as the per-request fee source, before serving: what
        :func:`dtp.socket.serve` does with ``billing="requests"``, handing each paid
        connection's check over (a server made with ``payments`` of its own is refused:
        ValueError, two sources would each count the requests)."""
        if self.payments is not None:
            raise ValueError("this server has its payments already")
        check_server_options(self.max_message_size, self.max_pending, payments, None)
        self.payments = payments
        self._payments = PaymentsCache(payments)
