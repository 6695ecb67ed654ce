"""A paid server's options (dtp/hostid/paid/_server_core.py: ServerOptions), checked in
one place for both servers: their defaults, and each bad one refused with its own error
before the ledger is read or written -- driven without I/O, then through ``PaidServer``,
``dtp.socket.serve`` and ``dtp.aio.serve``."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import InvalidArgument
from dtp.hostid.paid import PaidServer, ServicePolicy
from dtp.hostid.paid._server_core import ServerOptions
from dtp.transport._admission import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)
from tests.paid.world import PORT, SERVER, World


def _options(**given: Any) -> dict[str, Any]:
    """The keyword arguments both servers default to, with ``given`` over them."""
    options: dict[str, Any] = {
        "address": ("127.0.0.1", 0),
        "endpoint": None,
        "policy": None,
        "config": None,
        "backlog": 128,
        "max_handshakes": DEFAULT_MAX_HANDSHAKES,
        "max_handshakes_per_address": DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        "max_waiting_per_address": DEFAULT_MAX_WAITING_PER_ADDRESS,
        "open_grace": None,
    }
    options.update(given)
    return options


def test_the_defaults_are_filled_in() -> None:
    options = ServerOptions.checked(SERVER, **_options())
    assert options.policy == ServicePolicy()
    assert options.open_grace is None
    assert options.endpoint is None
    policy = ServicePolicy(pause_timeout=1.0)
    given = ServerOptions.checked(SERVER, **_options(policy=policy, open_grace=2))
    assert given.policy is policy
    assert given.open_grace == 2.0 and isinstance(given.open_grace, float)


#: (the identity, the options over the defaults, the error, what its message says)
BAD: list[tuple[object, dict[str, Any], type[Exception], str | None]] = [
    (b"\x01" * 32, {}, TypeError, "identity must be"),
    (SERVER, {"address": "127.0.0.1:0"}, TypeError, "address must be a"),
    (SERVER, {"address": ("127.0.0.1", 70000)}, InvalidArgument, "address: port 70000"),
    (SERVER, {"endpoint": ("example.org", -1)}, InvalidArgument, "endpoint: port -1"),
    (SERVER, {"max_handshakes": 0}, ValueError, None),
    (SERVER, {"max_handshakes_per_address": 0}, ValueError, None),
    (SERVER, {"backlog": 1.5}, TypeError, "integer"),
    (SERVER, {"open_grace": math.nan}, InvalidArgument, "open_grace must be"),
    (SERVER, {"open_grace": -1}, InvalidArgument, "open_grace must be"),
]


@pytest.mark.parametrize(("identity", "given", "error", "says"), BAD)
def test_a_bad_option_is_refused_with_its_error(
    identity: object, given: dict[str, Any], error: type[Exception], says: str | None
) -> None:
    with pytest.raises(error, match=says):
        ServerOptions.checked(identity, **_options(**given))


@pytest.mark.parametrize("server", ["blocking", "socket", "asyncio"])
@pytest.mark.parametrize(("identity", "given", "error", "says"), BAD)
def test_both_servers_refuse_a_bad_option_before_the_ledger(
    tmp_path: Path,
    server: str,
    identity: object,
    given: dict[str, Any],
    error: type[Exception],
    says: str | None,
) -> None:
    """Before the store is opened and the Host read: the blocking server constructed
    directly and through ``dtp.socket.serve`` (which leaves every check to it)."""
    w = World(tmp_path)
    receipts = tmp_path / "r.db"
    kwargs = _options(**given)
    try:
        with pytest.raises(error, match=says):
            if server in ("blocking", "socket"):
                make = PaidServer if server == "blocking" else dtp.socket.serve
                make(
                    w.host_id,
                    PORT,
                    lambda sock: None,
                    ledger=w.server_book,
                    identity=identity,  # type: ignore[arg-type]
                    receipts=receipts,
                    **kwargs,
                )
            else:
                asyncio.run(
                    dtp.aio.serve(
                        w.host_id,
                        PORT,
                        lambda r, wr: None,
                        ledger=w.server_book,
                        identity=identity,  # type: ignore[arg-type]
                        receipts=receipts,
                        **kwargs,
                    )
                )
        assert not receipts.exists()
        assert not w.book.get_host(w.host_id).endpoints
    finally:
        w.close()


#: (websocket= and origins= over the defaults, the error, what its message says)
WEBSOCKET_BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    (
        {"origins": ["https://a.example"]},
        ValueError,
        r"origins are for a WebSocket listener \(websocket=\(host, port\)\)",
    ),
    ({"websocket": "127.0.0.1:0"}, TypeError, "websocket must be a"),
    ({"websocket": ("127.0.0.1", 70000)}, InvalidArgument, "websocket: port 70000"),
    ({"websocket": ("127.0.0.1", 0), "origins": "https://a.example"}, TypeError, "one string"),
    (
        {"websocket": ("127.0.0.1", 0), "origins": ["https://a.example", ""]},
        ValueError,
        "an origin must be a non-empty string, not ''",
    ),
]


@pytest.mark.parametrize("server", ["paid", "start_server"])
@pytest.mark.parametrize(("given", "error", "says"), WEBSOCKET_BAD)
def test_a_paid_server_and_start_server_refuse_websocket_arguments_alike(
    server: str, given: dict[str, Any], error: type[Exception], says: str
) -> None:
    """One check (dtp.transport.carriers._tcp.checked_websocket_listen) for both, so
    the same error and words, before anything listens."""
    pytest.importorskip("websockets")
    with pytest.raises(error, match=says):
        if server == "paid":
            ServerOptions.checked(SERVER, **_options(**given))
        else:
            asyncio.run(
                dtp.aio.start_server(lambda r, w: None, "127.0.0.1", 0, identity=SERVER, **given)
            )


def test_origins_are_kept_read_once() -> None:
    """Origins given as an iterator are read once: checked and kept, not used up."""
    pytest.importorskip("websockets")
    given = (o for o in ["https://a.example", "*"])
    options = ServerOptions.checked(SERVER, **_options(websocket=("127.0.0.1", 0), origins=given))
    assert options.websocket == ("127.0.0.1", 0)
    assert options.origins == ("https://a.example", "*")
    assert ServerOptions.checked(SERVER, **_options(websocket=("::1", 0))).origins is None


def test_dtp_socket_serve_names_a_bad_identity_first(tmp_path: Path) -> None:
    """The error a user of ``dtp.socket.serve`` reads for an identity that is no
    HostIdentity: its exact text, and before any other bad option's."""
    w = World(tmp_path)
    try:
        with pytest.raises(TypeError) as refused:
            dtp.socket.serve(
                w.host_id,
                PORT,
                lambda sock: None,
                ledger=w.server_book,
                identity=b"\x01" * 32,  # type: ignore[arg-type]
                receipts=tmp_path / "r.db",
                max_handshakes=0,
                open_grace=-1,
            )
        assert str(refused.value) == (
            "identity must be a dtp.identity.keys.HostIdentity (the server's keys), not bytes"
        )
        assert not (tmp_path / "r.db").exists()
    finally:
        w.close()
