"""The blocking transport's client: the carrier connect, the handshake and the keys made
ahead for the next connect, for a plain address (:func:`create_connection`) and for the
host-ID connect of :mod:`dtp.hostid._blocking` alike."""

from __future__ import annotations

import logging
import socket as _socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dtp.errors import DTPTimeoutError, HandshakeError
from dtp.identity._ahead import (
    anonymous_identities_wanted,
    make_ephemeral_key,
    new_anonymous_identity,
    new_anonymous_noise_key,
    next_ephemeral_public,
    offer_anonymous_identity,
    offer_ephemeral_key,
    prepare_static_secret,
    take_anonymous_identity,
)
from dtp.identity._noise import (
    anonymous_identity_proving,
    prepare_auth_proof,
    prepare_handshake,
    static_secret_kept,
)
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import CloseCode, Connection, ConnectionConfig, direct_client_config
from dtp.transport._session import (
    Session,
    bounded_by_caller,
    check_connect_timeout,
    connect_timed_out,
)
from dtp.transport.blocking import sched
from dtp.transport.blocking._engine import Engine
from dtp.transport.blocking._socket import DTPSocket
from dtp.transport.carriers._tcp import endpoint_text

if TYPE_CHECKING:
    import ssl as _ssl

logger = logging.getLogger(__name__)


# socket.create_connection's "timeout left out": the process's default socket timeout
# (typed Any so that it stands as the default of a ``float | None`` parameter, as in
# the stdlib's stubs)
DEFAULT_TIMEOUT: Any = _socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]


def connect_timeout(timeout: float | None) -> float | None:
    """A blocking connect's ``timeout``, checked (:func:`check_connect_timeout`): left
    out, or passed on as socket.create_connection takes it (http.client and others do),
    the process's default socket timeout."""
    if timeout is DEFAULT_TIMEOUT:
        timeout = _socket.getdefaulttimeout()
    check_connect_timeout(timeout)
    return timeout


def create_connection(
    address: tuple[str, int],
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    identity: HostIdentity | None = None,
    config: ConnectionConfig | None = None,
) -> DTPSocket:
    """Connect to the DTP server at the carrier endpoint ``address`` (``(host, port)``)
    and return the connection's first stream; the arguments are
    :func:`dtp.socket.create_connection`'s, which connects by host ID as well."""
    timeout = connect_timeout(timeout)
    cfg, anonymous = direct_client_config(
        config, identity, server_key, expected_server_key, take_anonymous_identity
    )
    return connect(address, timeout, cfg, anonymous=anonymous)


def create_websocket_connection(
    url: str,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    identity: HostIdentity | None = None,
    config: ConnectionConfig | None = None,
    origin: str | None = None,
    ssl: _ssl.SSLContext | None = None,
) -> DTPSocket:
    """:func:`dtp.socket.create_connection` for a WebSocket URL (docs/protocol.md §13;
    see there for the arguments, and the timeouts of :func:`dtp.aio.open_connection`'s
    WebSocket connect): the carrier is
    :mod:`dtp.transport.carriers._websocket_bridge`'s. Needs the ``ws`` extra."""
    from dtp.transport.carriers._websocket import parse_url
    from dtp.transport.carriers._websocket_bridge import (
        open_websocket_carrier,
        websocket_connect_error,
    )

    timeout = connect_timeout(timeout)
    wsuri = parse_url(url)  # (a bad URL is a ValueError before anything is made)
    if ssl is not None and not wsuri.secure:
        raise ValueError("ssl is for a wss:// URL")
    cfg, anonymous = direct_client_config(
        config, identity, server_key, expected_server_key, take_anonymous_identity
    )
    start = sched.monotonic()
    upgrade_bound = bounded_by_caller(cfg, timeout).handshake_timeout
    if timeout is not None:
        upgrade_bound = min(upgrade_bound, timeout)
    try:
        carrier = open_websocket_carrier(url, origin=origin, ssl=ssl, bound=upgrade_bound)
    except BaseException as exc:
        if isinstance(exc, TimeoutError) and timeout is not None and upgrade_bound >= timeout:
            raise connect_timed_out(url, timeout) from None
        error = websocket_connect_error(url, exc, upgrade_bound)
        if error is exc:
            raise
        raise error from exc
    remaining = None if timeout is None else max(0.0, timeout - (sched.monotonic() - start))
    try:
        sock = connect((wsuri.host, wsuri.port), remaining, cfg, url, carrier, anonymous=anonymous)
    except DTPTimeoutError:
        if timeout is None:
            raise
        raise connect_timed_out(url, timeout) from None  # (the whole bound, not what was left)
    sock.settimeout(timeout)
    return sock


def connect(
    address: tuple[str, Any],
    timeout: float | None,
    cfg: ConnectionConfig,
    name: str | None = None,
    carrier: _socket.socket | None = None,
    *,
    while_waiting: Callable[[Connection], None] | None = None,
    anonymous: bool = False,
    timer: bool = True,
    socket_class: type[DTPSocket] = DTPSocket,
) -> DTPSocket:
    """Carrier connect + handshake + acceptance with a ready client config; with
    ``carrier`` (a connected socket, e.g. a ledger bridge's), over that instead of TCP.
    ``while_waiting(connection)`` runs once the first handshake message is out, while
    the server works on it; what it raises fails the connect. ``anonymous``: the
    identity is a throwaway one (the next connect will want another). ``timer=False``:
    the caller starts the engine's timers (``Engine.start_timer``) once it has set the
    engine up (a metered client's payment: its passes come more often).
    ``socket_class``: the socket made (a connection by host ID's: ``HostSocket``)."""
    start = sched.monotonic()
    cfg = bounded_by_caller(cfg, timeout)
    # the first handshake message is written before the TCP connect, so that it follows
    # the connect at once and the server reads it as it accepts, on the accepting thread
    # (not a hop to its reader thread); a bad server key fails here, before anything is
    # connected.
    session = Session(cfg, now=sched.monotonic())
    tcp = sched.connect_tcp(address, timeout) if carrier is None else carrier
    try:
        engine = Engine(tcp, session, name=name or f"client-{address[0]}:{address[1]}")
    except BaseException:
        tcp.close()
        raise
    if carrier is not None:
        engine.peername = address

    def open_first_stream() -> None:
        # as the handshake completes: the stream's opening shares the record (and the
        # send) that carries our AUTH proof
        session.on_handshake = None
        if not engine.conn.closed:  # a refusal can come in the same read (IK)
            engine.conn.open_stream()

    session.on_handshake = open_first_stream
    keys = NextConnectKeys(cfg, anonymous)
    try:
        with engine.lock:
            engine.flush()
            # the server now works on our first message. What it may wait for (the open
            # landing) goes first; then the next connect's keys (off its critical path,
            # until the reply is here), betting it goes to the same server
            if while_waiting is not None:
                while_waiting(engine.conn)
            keys.make(engine.sock)
            remaining = None if timeout is None else max(0.0, timeout - (sched.monotonic() - start))
            engine.pump(
                lambda: session.conn.handshake_hash is not None or session.terminated is not None,
                remaining,
            )
            if session.terminated is None:
                if session.on_handshake is not None:
                    open_first_stream()
                    engine.flush()
                if not session.accepted:
                    # (the rest of them while the verdict comes: an IK server answers
                    # before its hooks decide)
                    keys.make(engine.sock)
                remaining = None if timeout is None else timeout - (sched.monotonic() - start)
                engine.pump(
                    lambda: session.accepted or session.terminated is not None,
                    None if remaining is None else max(0.0, remaining),
                )
            if not session.accepted:
                raise HandshakeError.for_client(session.error)
    except DTPTimeoutError:
        engine.abort(CloseCode.HANDSHAKE_FAILED, "client gave up")
        if timeout is None:
            raise  # (a ledger call's, in while_waiting)
        # (the pump's "timed out" names neither the server nor the bound)
        raise connect_timed_out(name or endpoint_text(*address), timeout) from None
    except BaseException:
        engine.abort(CloseCode.HANDSHAKE_FAILED, "client gave up")
        raise
    # what the waits left unmade (the verdict came with the reply) is made at the
    # connection's next wait on the carrier (Engine._make_ahead), not here, where it
    # would delay what the caller does next
    if not keys.done:
        with engine.lock:
            engine.ahead = keys
    if timer:
        engine.start_timer()
    sock = socket_class(engine, 0, primary=True)
    sock.settimeout(timeout)
    return sock


class NextConnectKeys:
    """Keys for a next connect like this one (dtp.identity._ahead), made in steps while
    this connect waits: an ephemeral key (in IK, with its DH with the server's key); an
    anonymous identity (who connects anonymously once usually does again), or our static
    key's DH with the server's; and in IK the Noise state and the identity proof for
    that key (dtp.identity._noise.prepare_auth_proof). :meth:`make` stops between steps
    once the server's reply is here: the rest is made in the connection's next waits
    (:meth:`Engine._make_ahead`), at the latest at its close (:meth:`Engine._release`).

    A step is one scalar multiplication or signature at most (about 30 µs), so that the
    reply, which :meth:`make` looks for between steps only, waits on one such at most;
    a key made by one step and finished by the next is handed to no one in between."""

    def __init__(self, cfg: ConnectionConfig, anonymous: bool) -> None:
        self._cfg = cfg
        self._anonymous = anonymous
        self._identity: HostIdentity | None = cfg.identity
        self._ephemeral_made: tuple[bytes, Any] | None = None
        self._noise_made: tuple[bytes, Any] | None = None
        self._identity_made: HostIdentity | None = None
        self._steps: list[Callable[[], None]] = [self._ephemeral, self._offer_ephemeral]
        if anonymous:
            self._steps += [self._anonymous_noise_key, self._anonymous_identity]
        self._steps += [self._static, self._noise_state, self._auth_proof]

    @property
    def done(self) -> bool:
        """Whether every step is made."""
        return not self._steps

    def make(self, carrier: _socket.socket | None = None) -> bool:
        """Make the steps left, stopping early once the ``carrier`` socket has something
        to read (every step when it is None); whether all are made (or given up).

        A step that fails gives up the rest: they are a bet on a next connect, made
        in the waits of this connect or, later, of the connection's reads and close,
        none of which may fail for it -- a close that raised here never released its
        carrier. The next connect makes its own keys (and meets the failure itself)."""
        steps = self._steps
        while steps:
            if carrier is not None and has_input(carrier):
                return False
            step = steps.pop(0)
            try:
                step()
            except Exception:
                steps.clear()
                logger.debug("keys for the next connect not made", exc_info=True)
        return True

    def _ephemeral(self) -> None:
        self._ephemeral_made = make_ephemeral_key()

    def _offer_ephemeral(self) -> None:
        made, self._ephemeral_made = self._ephemeral_made, None
        if made is not None:
            offer_ephemeral_key(made, self._cfg.server_static)

    def _anonymous_noise_key(self) -> None:
        if anonymous_identities_wanted():
            self._noise_made = new_anonymous_noise_key()

    def _anonymous_identity(self) -> None:
        noise, self._noise_made = self._noise_made, None
        if noise is None:
            return
        # with its identity proof for the next connect (the _auth_proof step is then
        # left out), in one call for the key and the signature where fastcrypto is
        server_key = self._cfg.server_static
        ephemeral = next_ephemeral_public()
        made = None
        if server_key is not None and ephemeral is not None:
            made = anonymous_identity_proving(noise, server_key, ephemeral)
        if made is not None and self._auth_proof in self._steps:
            self._steps.remove(self._auth_proof)  # (made with it)
        self._identity_made = made if made is not None else new_anonymous_identity(noise)

    def _static(self) -> None:
        server_key = self._cfg.server_static
        if self._anonymous:
            made, self._identity_made = self._identity_made, None
            offered = made is not None and offer_anonymous_identity(made, server_key)
            self._identity = made if offered else None
        elif server_key is not None and not static_secret_kept(self._cfg.identity, server_key):
            prepare_static_secret(self._cfg.identity, server_key)

    def _noise_state(self) -> None:
        server_key = self._cfg.server_static
        if self._identity is not None and server_key is not None:
            prepare_handshake(self._identity.noise_private_bytes(), server_key, initiator=True)

    def _auth_proof(self) -> None:
        server_key = self._cfg.server_static
        ephemeral = next_ephemeral_public()
        if self._identity is not None and server_key is not None and ephemeral is not None:
            prepare_auth_proof(self._identity, server_key, ephemeral)


def has_input(carrier: _socket.socket) -> bool:
    """Whether ``carrier`` has bytes to read now (a look, no wait)."""
    try:
        return bool(sched.wait_ready([carrier], [], 0)[0])
    except (OSError, ValueError):  # closed meanwhile: the pump says how
        return True
