"""The stand-in's faucet over HTTP, in the shape of Sui's own faucet service, so that a
running node can be funded from anywhere that reaches it (another process, another
network namespace, ``curl``), as ``sui client faucet --url`` funds a localnet:

    POST /v2/gas   {"FixedAmountRequest": {"recipient": "0x…", "amount": 5000}}
    →  200         {"status": "Success", "coins_sent": [{"amount": 5000, "id": "0x…",
                    "transferTxDigest": "…"}]}

``amount`` (MIST) is the stand-in's addition; without it a request gets
:data:`DEFAULT_AMOUNT`, as Sui's faucet gives a fixed amount. ``/gas`` (the older path)
answers the same. A bad request gets 400 with ``{"status": {"Failure": {"internal":
"<why>"}}}``. :func:`request_funds` is the client (``python -m dtp.testing.sui_node fund``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from dtp._http_json import answer_json
from dtp.errors import FaucetError, InvalidObjectId
from dtp.ledger._faucet import ask_faucet
from dtp.ledger._objects import normalize_id
from dtp.testing.sui_node._http_server import QuietHandler, ThreadedHttpServer

__all__ = ["DEFAULT_AMOUNT", "FaucetError", "FaucetServer", "request_funds"]

#: MIST a request without an amount gets (10 SUI).
DEFAULT_AMOUNT: Final = 10 * 10**9
#: The largest amount one request may ask for (a u64 coin).
MAX_AMOUNT: Final = 2**64 - 1
_PATHS: Final = ("/v2/gas", "/gas")
_MAX_BODY: Final = 4096


class FaucetServer(ThreadedHttpServer):
    """Serves ``pay(address, amount) -> coin ID`` as Sui's faucet API on ``host:port``
    (port 0: any free one) in a daemon thread, from :meth:`start` until :meth:`close`."""

    def __init__(self, pay: Callable[[str, int], str], host: str, port: int = 0) -> None:
        self._pay = pay
        super().__init__(self._handler(), host, port, "sui-node-faucet")

    def _handler(self) -> type[QuietHandler]:
        pay = self._pay

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                if self.path not in _PATHS:
                    self._answer(404, _failure(f"no such path {self.path!r} (POST /v2/gas)"))
                    return
                try:
                    recipient, amount = _parse(self._body())
                    coin = pay(recipient, amount)
                except (ValueError, InvalidObjectId) as exc:
                    self._answer(400, _failure(str(exc)))
                    return
                sent = {"amount": amount, "id": coin, "transferTxDigest": ""}
                self._answer(200, {"status": "Success", "coins_sent": [sent]})

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= _MAX_BODY:
                    raise ValueError(f"a request body of 1..{_MAX_BODY} bytes, got {length}")
                return self.rfile.read(length)

            def _answer(self, status: int, body: dict[str, Any]) -> None:

                answer_json(self, status, body)

        return Handler


def _failure(why: str) -> dict[str, Any]:
    return {"status": {"Failure": {"internal": why}}}


def _parse(body: bytes) -> tuple[str, int]:
    """``(recipient, amount)`` of a faucet request body; ValueError says what is wrong."""
    try:
        doc = json.loads(body)
        request = doc["FixedAmountRequest"]
        recipient = request["recipient"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            'the body is {"FixedAmountRequest": {"recipient": "0x…", "amount": MIST}}'
        ) from None
    if not isinstance(recipient, str):
        raise ValueError("recipient is an address, 0x + 64 hex digits")
    amount = request.get("amount", DEFAULT_AMOUNT)
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise ValueError(f"amount is MIST, an integer in 1..2**64-1, got {amount!r}")
    return normalize_id(recipient, "recipient"), amount


def request_funds(
    faucet_url: str, recipient: str, amount: int | None = None, *, timeout: float = 30
) -> str:
    """Ask the faucet at ``faucet_url`` (``http://host:port/v2/gas``, as the stand-in's
    ready line prints it) for ``amount`` MIST (its default when None) to ``recipient``;
    returns the new coin's ID. Raises :class:`~dtp.errors.FaucetError` with the
    faucet's reason (:func:`dtp.ledger._faucet.ask_faucet`, ``dtp fund``'s client)."""
    return ask_faucet(faucet_url, recipient, amount, timeout=timeout).coin_id
