"""What both RPC clients share besides the fee engine's steps (:class:`ClientBase`)."""

from __future__ import annotations

from typing import Any

from dtp.messaging import errors as E
from dtp.messaging._protocol import (
    RequestReceived,
    RpcProtocol,
    _check_our_timeout,
)
from dtp.messaging.rpc._engine import Check, ClientFees, Meta
from dtp.messaging.rpc._fees import FEE_META_RESERVE, ResponsePrepay
from dtp.payments.receipts import Meter


def check_client_options(timeout: float | None, on_notification: object) -> None:
    """The options both clients take, checked as the client is made (RpcClient's and
    AsyncRpcClient's)."""
    if timeout is not None:
        # refused now: every call and notification would fail with it, a
        # notification perhaps with its frame half written
        _check_our_timeout(timeout)
    if on_notification is not None and not callable(on_notification):
        # found out only when a notification came: in the reader, failing its call
        raise TypeError(f"on_notification must be callable, not {type(on_notification).__name__!r}")


class ClientBase:
    """What both RPC clients (:class:`RpcClient`, ``AsyncRpcClient``) share besides the
    fee engine's steps: their ``meter`` and ``prepay``, a paid call's check, the error
    of a call on a closed client, and the answer to a request the peer sends."""

    _fees: ClientFees
    _proto: RpcProtocol
    _closed: BaseException | None

    @property
    def meter(self) -> Meter | None:
        """The meter signing a receipt for every request (per-request fees), if any."""
        return self._fees.meter

    @meter.setter
    def meter(self, meter: Meter | None) -> None:
        self._fees.meter = meter

    @property
    def prepay(self) -> ResponsePrepay | None:
        """What prepays each call's response fee, if anything."""
        return self._fees.prepay

    @prepay.setter
    def prepay(self, prepay: ResponsePrepay | None) -> None:
        self._fees.prepay = prepay

    def _closed_error(self) -> E.RpcConnectionLost:
        """What a call, start or notification raises once the client is closed (or its
        stream failed: ``_closed`` says why)."""
        return E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})")

    def _refuse(self, event: RequestReceived) -> None:
        """Answer a request the peer sent us: a client serves nothing (both clients
        name the method, as a server does for one it does not have)."""
        self._proto.send_error(
            event.request_id, E.METHOD_NOT_FOUND, f"no method {event.method!r} here"
        )

    def _can_send(self, method: str, params: Any, timeout: float | None) -> Check:
        """A paid call's check (under ``_lock`` in the blocking client): raises as
        sending the request would."""

        def check(meta: Meta) -> None:
            if self._closed is not None:
                raise self._closed_error()
            self._proto.check_request(
                method, params, timeout=timeout, meta=meta, reserve=FEE_META_RESERVE
            )

        return check
