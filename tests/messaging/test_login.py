"""The login flow of sealed messaging (docs/messaging.md §3.1) over real DTP sockets,
on the blocking and the asyncio server: a client logs in (challenge, sealed signed
answer, session token) and calls a method that needs the session; the refusals come
back typed -- an answer whose sender proof does not verify, one sealed anonymously, a
challenge answered late or twice, an address the server's rule refuses, a token
altered or expired."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import AccessDenied
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging._sealed_messages import seal
from dtp.messaging.login import LOGIN_ANSWER, LOGIN_CHALLENGE, LoginServer, login, login_async
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, CallContext, RpcClient, RpcServer

HOST = "0x" + "0c" * 32
ALICE, MALLORY = HostIdentity.generate(), HostIdentity.generate()


class Clock:
    """The server's clock, moved by the tests (seconds since the epoch)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Served:
    """A login server behind a real DTP socket, either kind; ``whoami`` needs a session."""

    def __init__(self, kind: str, **login_kw: Any) -> None:
        self.identity = HostIdentity.generate()
        self.clock = Clock()
        self.login = LoginServer(self.identity, host_id=HOST, clock=self.clock, **login_kw)

        def whoami(params: Any, ctx: CallContext) -> str:
            return self.login.session_of(ctx).address

        self.kind = kind
        if kind == "blocking":
            rpc = RpcServer(workers=2)
            self.login.serve(rpc)
            rpc.register("whoami", whoami, context=True)
            server = dtp.socket.create_server(("127.0.0.1", 0), identity=self.identity)
            thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
            thread.start()
            self.address = server.address

            def stop() -> None:
                server.close()
                rpc.close()
                thread.join(10)

        else:
            arpc = AsyncRpcServer()
            self.login.serve(arpc)
            arpc.register("whoami", whoami, context=True)
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            holder: dict[str, Any] = {}

            async def main() -> None:
                holder["server"] = await dtp.aio.start_server(
                    arpc.serve_connection, "127.0.0.1", 0, identity=self.identity
                )
                ready.set()
                await holder["server"].wait_closed()

            thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
            thread.start()
            assert ready.wait(10)
            self.address = holder["server"].address

            def stop() -> None:
                loop.call_soon_threadsafe(holder["server"].close)
                thread.join(10)
                loop.close()

        self._stop = stop
        self.socks: list[dtp.socket.DTPSocket] = []

    def client(self, identity: HostIdentity | None = None) -> RpcClient:
        sock = dtp.socket.create_connection(
            self.address, server_key=self.identity.noise_public, identity=identity, timeout=10
        )
        self.socks.append(sock)
        return RpcClient(sock, timeout=10)

    def stop(self) -> None:
        for sock in self.socks:
            sock.close()
        self._stop()


@pytest.fixture(params=["blocking", "asyncio"])
def served(request: pytest.FixtureRequest) -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(**kw: Any) -> Served:
        made.append(Served(request.param, **kw))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def test_a_client_logs_in_and_its_session_opens_methods(served: Callable[..., Served]) -> None:
    s = served()
    # (over an anonymous DTP connection: the login is what proves the address)
    client = s.client()
    session = login(client, ALICE, s.identity.noise_public, host_id=HOST)
    assert session.address == ALICE.sui_address
    assert session.expires_ms == int(s.clock.now * 1000) + 3600_000
    assert client.call("whoami", None, meta={"s": session.token}) == ALICE.sui_address
    with pytest.raises(E.InvalidSession, match="log in first"):
        client.call("whoami", None)
    assert s.login.verify(session.token).address == ALICE.sui_address


def test_an_answer_whose_signature_does_not_verify_is_refused(
    served: Callable[..., Served],
) -> None:
    s = served()
    client = s.client()

    class Impostor:
        """Mallory's keys claiming Alice's Ed25519 key: the sender proof fails."""

        ed25519_public = ALICE.ed25519_public
        noise_public = MALLORY.noise_public
        noise_private_bytes = MALLORY.noise_private_bytes
        sign = MALLORY.sign

    challenge = client.call(LOGIN_CHALLENGE)
    forged = seal(s.identity.noise_public, challenge, sender=Impostor())  # type: ignore[arg-type]
    with pytest.raises(E.BadLoginAnswer, match="does not prove its sender") as refused:
        client.call(LOGIN_ANSWER, forged)
    assert refused.value.code == -32008
    assert isinstance(refused.value, E.LoginRefused) and isinstance(refused.value, AccessDenied)
    # anonymous (pattern N), altered, sealed to another server, not our challenge
    anonymous = seal(s.identity.noise_public, client.call(LOGIN_CHALLENGE))
    altered = bytearray(seal(s.identity.noise_public, client.call(LOGIN_CHALLENGE), sender=ALICE))
    altered[-1] ^= 1
    elsewhere = seal(
        HostIdentity.generate().noise_public, client.call(LOGIN_CHALLENGE), sender=ALICE
    )
    invented = seal(s.identity.noise_public, b"\x01" + bytes(40), sender=ALICE)
    other_host = seal(
        s.identity.noise_public,
        client.call(LOGIN_CHALLENGE),
        sender=ALICE,
        recipient_host="0x" + "0d" * 32,
    )
    for bad in (anonymous, bytes(altered), elsewhere, invented, other_host):
        with pytest.raises(E.BadLoginAnswer):
            client.call(LOGIN_ANSWER, bad)
    with pytest.raises(E.InvalidParams):
        client.call(LOGIN_ANSWER, "not bytes")


def test_a_late_or_second_answer_and_a_refused_address_get_no_session(
    served: Callable[..., Served],
) -> None:
    s = served(allow=lambda address: address != MALLORY.sui_address, challenge_ttl=30)
    client = s.client()
    challenge = client.call(LOGIN_CHALLENGE)
    answer = seal(s.identity.noise_public, challenge, sender=ALICE)
    s.clock.now += 30
    with pytest.raises(E.LoginExpired) as late:
        client.call(LOGIN_ANSWER, answer)
    assert late.value.code == -32009
    s.clock.now -= 1  # (within its time again: a clock is not monotonic)
    client.call(LOGIN_ANSWER, answer)
    with pytest.raises(E.LoginRefused, match="answered already") as again:
        client.call(LOGIN_ANSWER, answer)
    assert again.value.code == -32007
    with pytest.raises(E.LoginRefused, match="may not log in"):
        login(client, MALLORY, s.identity.noise_public)


def test_an_expired_or_altered_token_is_refused(served: Callable[..., Served]) -> None:
    s = served(session_ttl=60)
    client = s.client(ALICE)
    session = login(client, ALICE, s.identity.noise_public)
    altered = bytearray(session.token)
    altered[12] ^= 1  # (another address)
    for token in (bytes(altered), session.token[:-1], "text"):
        with pytest.raises(E.InvalidSession) as bad:
            client.call("whoami", None, meta={"s": token})
        assert bad.value.code == -32010
    # another server's token (its own secret) is not this one's
    other = LoginServer(s.identity, secret=b"k" * 32, clock=s.clock)
    with pytest.raises(E.InvalidSession):
        s.login.verify(other._issue(ALICE.sui_address, 2**62).token)
    s.clock.now += 59
    assert client.call("whoami", None, meta={"s": session.token}) == ALICE.sui_address
    s.clock.now += 1
    with pytest.raises(E.SessionExpired) as expired:
        client.call("whoami", None, meta={"s": session.token})
    assert expired.value.code == -32011


def test_the_asyncio_client_logs_in(served: Callable[..., Served]) -> None:
    s = served()
    seen: dict[str, Any] = {}

    async def main() -> None:
        reader, writer = await dtp.aio.open_connection(
            *s.address, server_key=s.identity.noise_public
        )
        async with AsyncRpcClient(reader, writer, timeout=10) as client:
            session = await login_async(client, ALICE, s.identity.noise_public, host_id=HOST)
            seen["who"] = await client.call("whoami", None, meta={"s": session.token})
        writer.close()

    asyncio.run(main())
    assert seen["who"] == ALICE.sui_address


def test_server_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="challenge_ttl"):
        LoginServer(ALICE, challenge_ttl=0)
    with pytest.raises(ValueError, match="secret"):
        LoginServer(ALICE, secret=b"short")
    with pytest.raises(TypeError, match="allow"):
        LoginServer(ALICE, allow="everyone")  # type: ignore[arg-type]
