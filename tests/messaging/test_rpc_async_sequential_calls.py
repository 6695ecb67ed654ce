"""Sequential calls through the asyncio RPC pair, on the paths a lone call takes: the
client reading its answer in the caller's own task, its deadline kept by the protocol's
timers (one loop timer for the client), and a request for a plain handler answered by
the server's stream task rather than a task of its own -- with what a request's own
task gave it kept (its context variables, an awaitable result awaited with the
request's deadline, a failure answered)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import dtp.aio
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("SEEN", default="unset")


async def with_pair(rpc: AsyncRpcServer, body: Callable[[AsyncRpcClient], Awaitable[None]]) -> None:
    identity = HostIdentity.generate()
    server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
    async with server:
        reader, writer = await dtp.aio.open_connection(
            *server.address, server_key=identity.noise_public
        )
        client = AsyncRpcClient(reader, writer, timeout=30)
        try:
            await body(client)
        finally:
            await client.close()
            writer.close()
            await writer.wait_closed()


def test_a_plain_handlers_context_variables_stay_its_own() -> None:
    """Each request's handler runs in a copy of the stream's context, as in a task of
    its own: what one sets, the next request does not see."""
    rpc = AsyncRpcServer()

    def mark(value: str) -> str:
        before = SEEN.get()
        SEEN.set(value)
        return before

    rpc.register("mark", mark)

    async def body(client: AsyncRpcClient) -> None:
        for value in ("a", "b", "c"):
            assert await client.call("mark", value) == "unset"

    asyncio.run(with_pair(rpc, body))


def test_a_plain_handler_returning_an_awaitable_is_awaited_within_its_deadline() -> None:
    """A plain function whose result is a coroutine: the coroutine is awaited (its
    result is the answer), and past the request's deadline the caller gets RpcTimeout
    and the coroutine is cancelled."""
    rpc = AsyncRpcServer()
    ended: list[str] = []

    async def later(delay: float, value: Any) -> Any:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        return value

    rpc.register("later", lambda p: later(p[0], p[1]))

    async def body(client: AsyncRpcClient) -> None:
        assert await client.call("later", [0.01, "done"]) == "done"
        with pytest.raises(E.RpcTimeout):
            await client.call("later", [30, "never"], timeout=0.2)
        for _ in range(100):  # (the server sees the deadline, or the CANCEL, soon after)
            if ended:
                break
            await asyncio.sleep(0.05)
        assert ended == ["cancelled"]
        # the stream goes on, on the quick path again
        assert await client.call("later", [0, 7]) == 7

    asyncio.run(with_pair(rpc, body))


def test_a_plain_handlers_failure_is_answered_and_the_stream_goes_on() -> None:
    rpc = AsyncRpcServer()

    def fail(kind: str) -> None:
        if kind == "remote":
            raise E.RemoteError("refused here", -32050, {"why": "test"})
        raise RuntimeError("private detail")

    rpc.register("fail", fail)
    rpc.register("echo", lambda p: p)

    async def body(client: AsyncRpcClient) -> None:
        with pytest.raises(E.RemoteError) as refused:
            await client.call("fail", "remote")
        assert (refused.value.code, refused.value.data) == (-32050, {"why": "test"})
        with pytest.raises(E.RemoteError) as failed:
            await client.call("fail", "other")
        assert failed.value.code == E.INTERNAL_ERROR and "private" not in failed.value.message
        assert await client.call("echo", b"x" * 100) == b"x" * 100
        assert rpc.served == 1

    asyncio.run(with_pair(rpc, body))


def test_sequential_calls_keep_one_loop_timer_and_no_protocol_timers() -> None:
    """A call's deadline is the protocol's timer, run by one loop timer of the client's:
    calls answered in time leave no timer behind, and the loop timer stays the one
    armed for the first deadline (none made per call)."""
    rpc = AsyncRpcServer()
    rpc.register("echo", lambda p: p)

    async def body(client: AsyncRpcClient) -> None:
        assert await client.call("echo", 0) == 0
        armed = client._timer
        assert armed is not None
        for i in range(200):
            assert await client.call("echo", i) == i
        assert client._timer is armed
        assert client._proto._timers == [] and client._proto.in_flight == 0

    asyncio.run(with_pair(rpc, body))


def test_a_timed_out_call_tells_the_server_and_the_next_call_is_answered() -> None:
    rpc = AsyncRpcServer()
    cancelled = asyncio.Event()

    async def hold(_: Any) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    rpc.register("hold", hold)
    rpc.register("echo", lambda p: p)

    async def body(client: AsyncRpcClient) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(E.RpcTimeout):
            await client.call("hold", None, timeout=0.2)
        assert loop.time() - started >= 0.2 - 0.001  # (uvloop's clock counts whole ms)
        await asyncio.wait_for(cancelled.wait(), 10)  # the client's CANCEL reached it
        assert await client.call("echo", "after") == "after"
        assert client._futures == {} and client._proto.in_flight == 0

    asyncio.run(with_pair(rpc, body))


def test_a_lone_call_reads_its_answer_and_overlapping_calls_are_all_answered() -> None:
    """A call alone in flight reads its answer in its own task (no reader task between
    calls); calls made while it reads are answered whichever answer comes first (taken
    by the reading call, or by the reader it hands over to), and a call cancelled in
    its read leaves the stream whole for the next."""
    rpc = AsyncRpcServer()

    async def slow(p: Any) -> Any:
        await asyncio.sleep(0.1)
        return p

    rpc.register("slow", slow)
    rpc.register("echo", lambda p: p)

    async def body(client: AsyncRpcClient) -> None:
        assert await client.call("echo", 1) == 1
        assert client._task is None
        # the reading call's answer last, then first
        pair = await asyncio.gather(client.call("slow", "a"), client.call("echo", "b"))
        assert pair == ["a", "b"]
        pair = await asyncio.gather(client.call("echo", "c"), client.call("slow", "d"))
        assert pair == ["c", "d"]
        await asyncio.sleep(0)
        assert client._task is None and client._futures == {}  # (the reader ended)
        cut = asyncio.create_task(client.call("slow", "e"))
        await asyncio.sleep(0.02)
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        assert await client.call("echo", "f") == "f"
        assert client._futures == {} and client._proto.in_flight == 0

    asyncio.run(with_pair(rpc, body))


def test_a_loop_turn_lets_the_others_run_once_with_no_python_call() -> None:
    """``await LOOP_TURN`` (the server's turn between a read and its inline answer) is
    a bare yield: the task's step ends, the tasks ready run, the task goes on at the
    next; each await a new iterator, made with no Python frame (a profile function sees
    no call)."""
    from dtp.messaging.rpc._streams import LOOP_TURN

    async def main() -> list[str]:
        order: list[str] = []

        async def other() -> None:
            order.append("other")
            await LOOP_TURN
            order.append("other again")

        task = asyncio.get_running_loop().create_task(other())
        calls: list[str] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                calls.append(frame.f_code.co_qualname)

        order.append("before")
        sys.setprofile(profile)
        try:
            await LOOP_TURN
        finally:
            sys.setprofile(None)
        order.append("after")
        await LOOP_TURN
        await task
        assert "_LoopTurn.__await__" not in calls, calls
        return order

    assert asyncio.run(main()) == ["before", "other", "after", "other again"]


def test_a_loop_turn_awaits_alike_where_a_partial_binds_self() -> None:
    """The await looks ``__await__`` up through the descriptor protocol: a bare
    functools.partial there warns on Python 3.13 (an AttributeError under warnings as
    errors) and binds the instance from 3.14 (``iter((None,), turn)``, a TypeError).
    What the class holds gives a no-argument callable through ``__get__`` itself, the
    way every version calls it, so the turn does not rest on the partial's binding."""
    from dtp.messaging.rpc._streams import LOOP_TURN, _LoopTurn

    held = vars(_LoopTurn)["__await__"]
    get = getattr(type(held), "__get__", None)
    assert get is not None, "a bare partial: bound (3.14) or warned about (3.13)"
    it = get(held, LOOP_TURN, _LoopTurn)()
    assert list(it) == [None]
    assert list(get(held, LOOP_TURN, _LoopTurn)()) == [None]  # (a fresh one each await)
