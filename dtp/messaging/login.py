"""The login flow of sealed messaging: a challenge, a signed answer, a session token
(docs/messaging.md §3.1: the bytes, the tags, the refusals and their wire codes).

The client asks for a challenge the server can recognise without keeping it, answers
with it sealed to the server's Noise key with the ``X`` pattern (its sender proof binds
its Sui address, and nobody else can read or replay it to another server), and gets a
session token that handlers take from a request's meta ``"s"``
(:meth:`LoginServer.session_of`). Refusals are typed
(:class:`~dtp.messaging.errors.LoginRefused` and its subclasses, all
:class:`dtp.errors.AccessDenied`), so a client over RPC raises the same class.

The server's rules take ``now_ms`` (ms since the epoch) where they need a time, read
from ``clock`` only when it is not given.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger._objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging._sealed_messages import open_sealed, seal

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, CallContext, RpcClient, RpcServer

__all__ = [
    "LOGIN_ANSWER",
    "LOGIN_CHALLENGE",
    "SESSION_META",
    "LoginServer",
    "Session",
    "login",
    "login_async",
]

#: The RPC method that hands out a challenge (no params; the challenge's bytes).
LOGIN_CHALLENGE: Final = "login.challenge"
#: The RPC method that takes the sealed answer (params: its bytes; result:
#: ``[token, address, expires_ms]``).
LOGIN_ANSWER: Final = "login.answer"
#: The request meta key a session token travels in.
SESSION_META: Final = "s"

_VERSION: Final = 1
_CHALLENGE_DOMAIN: Final = b"DTP-LOGIN-CHALLENGE-V1"
_SESSION_DOMAIN: Final = b"DTP-LOGIN-SESSION-V1"
_NONCE: Final = 16
_CHALLENGE_TAG: Final = 16
_SESSION_TAG: Final = 32
#: version, nonce, expiry (u64 ms), tag
_CHALLENGE_SIZE: Final = 1 + _NONCE + 8 + _CHALLENGE_TAG
#: version, expiry (u64 ms), address (32 bytes), tag
_SESSION_SIZE: Final = 1 + 8 + 32 + _SESSION_TAG
_EXPIRY: Final = struct.Struct(">Q")


@dataclass(frozen=True)
class Session:
    """A logged-in client."""

    #: The bytes to present (request meta ``"s"``); opaque to the client.
    token: bytes
    #: The client's Sui address, proven by its answer's signature.
    address: str
    #: When the token stops being accepted (ms since the epoch, the server's clock).
    expires_ms: int


class LoginServer:
    """The server's side of the login flow for the host whose keys are ``identity``
    (answers are sealed to its Noise key). ``host_id``: when set, an answer must name
    this host as its recipient (or none). ``challenge_ttl`` and ``session_ttl``: seconds
    a challenge and a session token are good for. ``allow``: whether an address may
    log in (None: every address that proves itself). ``secret``: the key of the tags
    (32 random bytes by default: the tokens then last as long as this object; pass a
    stored one to keep them across restarts). Thread-safe."""

    def __init__(
        self,
        identity: HostIdentity,
        *,
        host_id: str | None = None,
        challenge_ttl: float = 60.0,
        session_ttl: float = 3600.0,
        allow: Callable[[str], bool] | None = None,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for what, ttl in (("challenge_ttl", challenge_ttl), ("session_ttl", session_ttl)):
            if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 1e9:
                raise ValueError(f"{what} is a number of seconds above 0, got {ttl!r}")
        if secret is None:
            secret = os.urandom(32)
        elif not isinstance(secret, bytes) or not 16 <= len(secret) <= 64:
            raise ValueError("secret is 16 to 64 bytes")
        if allow is not None and not callable(allow):
            raise TypeError(f"allow must be callable, not {type(allow).__name__!r}")
        self.identity = identity
        self.host_id = None if host_id is None else normalize_id(host_id, "host ID")
        self.challenge_ttl_ms = int(challenge_ttl * 1000)
        self.session_ttl_ms = int(session_ttl * 1000)
        self.allow = allow
        self.clock = clock
        self._secret = secret
        self._lock = threading.Lock()
        # nonces answered, until their challenge expires: each challenge logs in once
        self._answered: dict[bytes, int] = {}

    def _now(self, now_ms: int | None) -> int:
        return int(self.clock() * 1000) if now_ms is None else now_ms

    def _tag(self, domain: bytes, body: bytes, size: int) -> bytes:
        mac = hashlib.blake2b(key=self._secret, digest_size=size)
        mac.update(domain + self.identity.noise_public + body)
        return mac.digest()

    def challenge(self, now_ms: int | None = None) -> bytes:
        """A fresh challenge, good for ``challenge_ttl`` seconds from ``now_ms``."""
        body = bytes([_VERSION]) + os.urandom(_NONCE)
        body += _EXPIRY.pack(self._now(now_ms) + self.challenge_ttl_ms)
        return body + self._tag(_CHALLENGE_DOMAIN, body, _CHALLENGE_TAG)

    def answer(self, sealed: bytes, now_ms: int | None = None) -> Session:
        """The session for a sealed answer to one of our challenges, or the typed
        refusal: BadLoginAnswer (not sealed to us, anonymous, a sender proof that does
        not verify, not our challenge, another recipient host), LoginExpired (the
        challenge's time passed), LoginRefused (answered already, or ``allow`` says
        no)."""
        try:
            opened = open_sealed(self.identity, sealed)
        except E.SealedError as exc:
            # (SealedDecryptError, MalformedSealed, ForgedSender: the signature)
            raise E.BadLoginAnswer(f"the answer does not prove its sender: {exc}") from None
        if opened.sender_address is None:
            raise E.BadLoginAnswer("an anonymous answer proves no address: seal it with sender=")
        if self.host_id is not None and opened.recipient_host is not None:
            try:
                named = normalize_id(opened.recipient_host, "host ID")
            except ValueError:
                named = None
            if named != self.host_id:
                raise E.BadLoginAnswer("the answer is addressed to another host")
        challenge = opened.body
        if len(challenge) != _CHALLENGE_SIZE or challenge[0] != _VERSION:
            raise E.BadLoginAnswer("the answer holds no challenge of ours")
        body, tag = challenge[:-_CHALLENGE_TAG], challenge[-_CHALLENGE_TAG:]
        if not hmac.compare_digest(tag, self._tag(_CHALLENGE_DOMAIN, body, _CHALLENGE_TAG)):
            raise E.BadLoginAnswer("the answer holds no challenge of ours")
        nonce = body[1 : 1 + _NONCE]
        (expires,) = _EXPIRY.unpack(body[1 + _NONCE :])
        now = self._now(now_ms)
        if now >= expires:
            raise E.LoginExpired("the challenge expired: ask for another")
        with self._lock:
            for old in [n for n, e in self._answered.items() if e <= now]:
                del self._answered[old]
            if nonce in self._answered:
                raise E.LoginRefused("the challenge was answered already")
            self._answered[nonce] = expires
        address = opened.sender_address
        if self.allow is not None and not self.allow(address):
            raise E.LoginRefused(f"{address} may not log in")
        return self._issue(address, now + self.session_ttl_ms)

    def _issue(self, address: str, expires_ms: int) -> Session:
        body = bytes([_VERSION]) + _EXPIRY.pack(expires_ms) + bytes.fromhex(address[2:])
        token = body + self._tag(_SESSION_DOMAIN, body, _SESSION_TAG)
        return Session(token, address, expires_ms)

    def verify(self, token: object, now_ms: int | None = None) -> Session:
        """The session ``token`` stands for, or InvalidSession (not one we issued) or
        SessionExpired."""
        if not isinstance(token, bytes) or len(token) != _SESSION_SIZE or token[0] != _VERSION:
            raise E.InvalidSession("not a session token")
        body, tag = token[:-_SESSION_TAG], token[-_SESSION_TAG:]
        if not hmac.compare_digest(tag, self._tag(_SESSION_DOMAIN, body, _SESSION_TAG)):
            raise E.InvalidSession("not a session token of this server")
        (expires,) = _EXPIRY.unpack(body[1:9])
        if self._now(now_ms) >= expires:
            raise E.SessionExpired("the session expired: log in again")
        return Session(token, "0x" + body[9:].hex(), expires)

    def session_of(self, ctx: CallContext, now_ms: int | None = None) -> Session:
        """The session of the request ``ctx`` is for (its meta ``"s"``): for a handler
        registered with ``context=True``. InvalidSession when it carries none."""
        token = None if ctx.meta is None else ctx.meta.get(SESSION_META)
        if token is None:
            raise E.InvalidSession("this method needs a session: log in first")
        return self.verify(token, now_ms)

    def serve(self, server: RpcServer | AsyncRpcServer) -> None:
        """Register :data:`LOGIN_CHALLENGE` and :data:`LOGIN_ANSWER` on ``server``."""

        def challenge(params: Any) -> bytes:
            return self.challenge()

        def answer(params: Any) -> list[Any]:
            if not isinstance(params, bytes):
                raise E.InvalidParams("login.answer takes the sealed answer's bytes")
            session = self.answer(params)
            return [session.token, session.address, session.expires_ms]

        server.register(LOGIN_CHALLENGE, challenge)
        server.register(LOGIN_ANSWER, answer)


def _answer(
    identity: HostIdentity, challenge: Any, server_static: bytes, host_id: str | None
) -> bytes:
    if not isinstance(challenge, bytes):
        raise E.MalformedMessage("the server's challenge is not bytes")
    return seal(server_static, challenge, sender=identity, recipient_host=host_id)


def _session(identity: HostIdentity, result: Any) -> Session:
    if (
        not isinstance(result, list)
        or len(result) != 3
        or not isinstance(result[0], bytes)
        or not isinstance(result[1], str)
        or type(result[2]) is not int
    ):
        raise E.MalformedMessage("the server's login answer is not [token, address, expiry]")
    ours = sui_address_from_public_key(identity.ed25519_public)
    if normalize_id(result[1], "address") != ours:
        raise E.MalformedMessage("the server logged another address in")
    return Session(result[0], ours, result[2])


def login(
    client: RpcClient,
    identity: HostIdentity,
    server_static: bytes,
    *,
    host_id: str | None = None,
    timeout: float | None = None,
) -> Session:
    """Log ``identity`` in at the server behind ``client``, whose Noise static key is
    ``server_static`` (its Host publishes it; a DTP socket's ``server_key``). Returns
    the :class:`Session`; pass ``meta={"s": session.token}`` with later calls. Raises
    the server's refusal (LoginRefused and subclasses)."""
    kw: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    challenge = client.call(LOGIN_CHALLENGE, None, **kw)
    sealed = _answer(identity, challenge, server_static, host_id)
    return _session(identity, client.call(LOGIN_ANSWER, sealed, **kw))


async def login_async(
    client: AsyncRpcClient,
    identity: HostIdentity,
    server_static: bytes,
    *,
    host_id: str | None = None,
    timeout: float | None = None,
) -> Session:
    """:func:`login` through an asyncio client."""
    kw: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    challenge = await client.call(LOGIN_CHALLENGE, None, **kw)
    sealed = _answer(identity, challenge, server_static, host_id)
    return _session(identity, await client.call(LOGIN_ANSWER, sealed, **kw))
