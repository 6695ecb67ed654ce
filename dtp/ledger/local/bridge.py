"""The ledger bridge: what a web page uses on a LocalLedger (docs/web-frontend.md, "On the
embedded ledger").

A page on Sui reads and writes the chain through a full node; a LocalLedger is a SQLite
file a page cannot open, so :class:`LocalLedgerBridge` answers a small JSON-over-HTTP API
in its place, as a full node would: it builds LocalLedger transactions for the page's
wallet (``/ledger/build``), runs those the wallet signed (``/ledger/execute``: the
ledger verifies the signature against the transaction's sender), and reads back the
objects a page checks (escrows, connections). It holds no key, signs nothing, and runs
nothing unsigned.

Its limits, for whoever serves one (the docs say the same):

- no authentication, no rate limit and no TLS of its own: anyone who reaches it may
  build, run (their own signed transactions) and read. LocalLedger transactions carry
  no gas, so nothing prices that use: serve it on loopback, or to a test network,
  never to the Internet (a page on a public network uses Sui);
- its faucet mints test SUI from nothing: off unless ``faucet`` is given (a demo's,
  a test's);
- it answers as the ledger says: a page that must not trust whoever serves the bridge
  reads the ledger from somewhere it trusts, as on Sui;
- request bodies are capped (:data:`MAX_BODY`); one call runs at a time.

:func:`serve_bridge` serves it (and, optionally, a folder of static files beside it: a
page and the ``web/dtp-client`` package) from a thread.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from dtp._http_json import answer_json
from dtp.errors import DTPError
from dtp.ledger._objects import normalize_id
from dtp.ledger.local._ledger import LocalLedger
from dtp.ledger.local._tx import Address, TxValue

__all__ = ["BUILDS", "MAX_BODY", "LocalLedgerBridge", "LocalLedgerBridgeServer", "serve_bridge"]

#: The largest request body the bridge reads (bytes); larger: 413.
MAX_BODY: Final = 64 * 1024
#: The calls ``/ledger/build`` builds: what a page's wallet opens a paid connection with
#: (docs/escrow.md §4, §6.2), and what it ends one with.
BUILDS: Final = (
    "spending_cap::create",
    "transport_control::open",
    "transport_control::open_with_session_key",
    "transport_control::close",
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, int | str | bool) or value is None:
        return value
    return str(value)


def _field(body: Mapping[str, Any], name: str) -> Any:
    if name not in body:
        raise ValueError(f"the call needs {name!r}")
    return body[name]


def _int(body: Mapping[str, Any], name: str) -> int:
    value = _field(body, name)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name!r} is an integer (or its decimal string), got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name!r} is an integer (or its decimal string), got {value!r}") from None


def _hex(body: Mapping[str, Any], name: str) -> bytes:
    value = _field(body, name)
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is a hex string, got {value!r}")
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise ValueError(f"{name!r} is a hex string, got {value[:80]!r}") from None


class LocalLedgerBridge:
    """The bridge's calls on ``ledger`` (a handle of its own: one call at a time).

    ``info``: what ``GET /ledger/info`` answers besides the ledger's ``package`` (the
    dtp package's ID, which a page's receipts name): the service a page connects to,
    say. ``faucet``: MIST ``/ledger/faucet`` gives an address each time it is asked
    (0: no faucet, the call is unknown)."""

    def __init__(
        self, ledger: LocalLedger, info: Mapping[str, Any] | None = None, *, faucet: int = 0
    ) -> None:
        if isinstance(faucet, bool) or not isinstance(faucet, int) or faucet < 0:
            raise ValueError(f"faucet is MIST (an int >= 0), got {faucet!r}")
        self.ledger = ledger
        self.info = {"package": ledger.package_id, **(info or {})}
        self.faucet = faucet
        self._lock = threading.Lock()

    def call(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Answer ``/ledger/<name>`` with ``body`` (the request's JSON object). KeyError
        for a call it does not have; ValueError (or the ledger's DTPError) for a
        request it cannot run."""
        if not isinstance(body, Mapping):
            raise ValueError("the request body is a JSON object")
        with self._lock:
            if name == "info":
                return dict(self.info)
            if name == "faucet" and self.faucet:
                address = normalize_id(str(_field(body, "address")), "address")
                return {"balance": self.ledger.faucet(address, self.faucet)}
            if name == "build":
                return {"tx": self.build(body).hex()}
            if name == "execute":
                result = self.ledger.execute(_hex(body, "tx"), _hex(body, "signature"))
                events = [
                    {"name": e.name, "fields": _jsonable(dict(e.fields))} for e in result.events
                ]
                return {"value": _jsonable(result.value), "events": events}
            if name == "escrow":
                escrow = self.ledger.get_escrow(str(_field(body, "id")))
                return {
                    "deposited": escrow.deposited,
                    "claimed": escrow.claimed,
                    "refunded": escrow.refunded,
                    "receiptKey": escrow.client_public_key.hex(),
                }
            if name == "connection":
                connection = self.ledger.get_connection(str(_field(body, "id")))
                return {
                    "state": connection.state.name,
                    "client": connection.client,
                    "escrow": connection.escrow,
                    "settled": connection.settled,
                }
        raise KeyError(name)

    def build(self, body: Mapping[str, Any]) -> bytes:
        """The transaction bytes of ``body["call"]`` (one of :data:`BUILDS`) from
        ``body["sender"]``, with a fresh nonce: the wallet signs them (intent
        ``[0, 0, 0]``, as a Sui transaction), ``/ledger/execute`` runs them."""
        sender = normalize_id(str(_field(body, "sender")), "address")
        call = _field(body, "call")
        if call == "spending_cap::create":
            return self.ledger.build_tx(
                sender, "spending_cap", "create", [_int(body, "max_per_epoch")]
            )
        if call in ("transport_control::open", "transport_control::open_with_session_key"):
            args: list[TxValue] = [
                Address(normalize_id(str(_field(body, "host")), "host")),
                _int(body, "port"),
                Address(normalize_id(str(_field(body, "cap")), "cap")),
                _hex(body, "public_key"),
                _int(body, "deposit"),
            ]
            return self.ledger.build_tx(sender, "transport_control", call.split("::")[1], args)
        if call == "transport_control::close":
            connection = Address(normalize_id(str(_field(body, "connection")), "connection"))
            return self.ledger.build_tx(sender, "transport_control", "close", [connection])
        raise ValueError(f"the bridge builds {', '.join(BUILDS)}, not {call!r}")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """``/ledger/*`` to the bridge; any other GET to the static folder (if any)."""

    bridge: LocalLedgerBridge
    static: bool

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/ledger/info":
            self._answer(200, self.bridge.call("info", {}))
        elif self.static and not self.path.startswith("/ledger/"):
            super().do_GET()
        else:
            self._answer(404, {"error": "NotFound", "message": self.path})

    def do_HEAD(self) -> None:
        if self.static and not self.path.startswith("/ledger/"):
            super().do_HEAD()
        else:
            self._answer(404, {"error": "NotFound", "message": self.path})

    def do_POST(self) -> None:
        if not self.path.startswith("/ledger/"):
            self._answer(404, {"error": "NotFound", "message": self.path})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._answer(
                413, {"error": "TooLarge", "message": f"a body of {MAX_BODY} bytes at most"}
            )
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            self._answer(200, self.bridge.call(self.path[len("/ledger/") :], body))
        except KeyError as exc:
            self._answer(404, {"error": "NotFound", "message": f"no call {exc}"})
        except (DTPError, ValueError, TypeError) as exc:
            # a refused transaction (the firewall, a bad signature) is the page's to show
            self._answer(400, {"error": type(exc).__name__, "message": str(exc)})

    def _answer(self, status: int, body: dict[str, Any]) -> None:

        answer_json(self, status, body)


class LocalLedgerBridgeServer(http.server.ThreadingHTTPServer):
    """A :class:`LocalLedgerBridge` over HTTP, served from a thread by :func:`serve_bridge`;
    :meth:`close` stops it."""

    daemon_threads = True
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (the port it is bound to)."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(10)
            self._thread = None
        self.server_close()

    def __enter__(self) -> LocalLedgerBridgeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_bridge(
    bridge: LocalLedgerBridge,
    address: tuple[str, int] = ("127.0.0.1", 0),
    *,
    static: Path | str | None = None,
) -> LocalLedgerBridgeServer:
    """Serve ``bridge`` on ``address`` (loopback, a free port, by default) from a thread:
    ``/ledger/*`` is the bridge, and with ``static`` every other GET a file of that
    folder (a page and the package it loads, from one origin). Returns the started
    server (``.url``; ``.close()``)."""
    handler = type(
        "BridgeHandler",
        (_Handler,),
        {"bridge": bridge, "static": static is not None},
    )
    factory = functools.partial(handler, directory=str(static)) if static is not None else handler
    server = LocalLedgerBridgeServer(address, factory)
    thread = threading.Thread(target=server.serve_forever, name="dtp-ledger-bridge", daemon=True)
    server._thread = thread
    thread.start()
    return server
