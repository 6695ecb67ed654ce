"""RpcClient / AsyncRpcClient: one client shared by many threads (tiny timeouts,
cancellations from other threads, close() while calls wait), a notification handler that
calls the client, in_flight during a call, broken answers from the peer, a junk flood;
the asyncio client's deadline while the peer does not read, cancellation mid-send, and
the loop shutting down. Real DTP connections on 127.0.0.1.

Deadlines of calls whose thread waits while another thread reads the stream for
everybody (a follower): the call's own deadline ends it on time, and the CANCEL of a
call that timed out so leaves at once, neither waiting for the end of the reader's
current read (which may have begun before the call was made, with up to a second to
wait)."""

from __future__ import annotations

import asyncio
import random
import struct
import threading
import time
from typing import Any

import pytest

import dtp.aio
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging._framing import encode_frame
from dtp.messaging._protocol import RequestReceived
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, CallContext, RpcClient, RpcServer
from dtp.messaging.rpc import _blocking_client as rpc_client
from tests.messaging.rpc_world import ScriptedPeer, Served
from tests.support.polling import wait_for


def _echo_sleep_server(workers: int) -> RpcServer:
    rpc = RpcServer(workers=workers)

    def echo_sleep(p: list[Any]) -> Any:
        time.sleep(p[1])
        return p[0]

    rpc.register("es", echo_sleep)
    return rpc


@pytest.mark.parametrize("workers", [0, 4])
def test_eight_threads_share_one_client(workers: int) -> None:
    """Eight threads, every way of calling: each call gets its own answer or a typed
    error, no thread is left waiting, and in_flight comes back to 0."""
    s = Served(_echo_sleep_server(workers))
    try:
        client = s.connect()
        wrong: list[Any] = []
        outcomes: dict[str, int] = {}
        lock = threading.Lock()

        def worker(k: int) -> None:
            rng = random.Random(k)
            for i in range(60):
                token = f"{k}-{i}"
                pause = rng.choice([0, 0, 0.001, 0.01])
                mode = rng.randrange(5)
                try:
                    if mode == 0:
                        got = client.call("es", [token, 0], timeout=5)
                    elif mode == 1:
                        got = client.call("es", [token, pause], timeout=rng.choice([0.002, 5]))
                    elif mode == 2:
                        call = client.start("es", [token, pause], timeout=5)
                        if rng.random() < 0.5:
                            call.cancel()
                        got = call.result()
                    elif mode == 3:
                        call = client.start("es", [token, pause], timeout=5)
                        got = call.result(timeout=rng.choice([0.002, 5]))
                    else:
                        got = client.call("es", [token, pause])
                    name = "ok"
                    if got != token:
                        wrong.append((token, got))
                except (E.RpcTimeout, E.RpcCancelled) as exc:
                    name = type(exc).__name__
                except Exception as exc:  # anything else is wrong
                    name = "other"
                    wrong.append((token, repr(exc)))
                with lock:
                    outcomes[name] = outcomes.get(name, 0) + 1

        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        assert wrong == []
        assert sum(outcomes.values()) == 480 and outcomes.get("ok", 0) > 100
        assert wait_for(lambda: client.in_flight == 0, 5)
        assert client.violations == []
        assert client.call("es", ["last", 0], timeout=5) == "last"
    finally:
        s.close()


@pytest.mark.parametrize("workers", [0, 4])
def test_close_with_eight_threads_waiting_leaves_none_waiting(workers: int) -> None:
    """Seven threads call in a loop (some calls without a timeout, some cancelled from
    an eighth thread); close() ends every wait with RpcConnectionLost within about a
    second."""
    s = Served(_echo_sleep_server(workers))
    try:
        client = s.connect()
        started: list[Any] = []
        lock = threading.Lock()
        lost: list[BaseException] = []
        stop = threading.Event()

        def worker(k: int) -> None:
            rng = random.Random(k)
            while True:
                token = f"{k}"
                try:
                    if rng.random() < 0.3:
                        client.call("es", [token, rng.choice([0, 0.2])], timeout=None)
                    else:
                        call = client.start("es", [token, rng.choice([0, 0.01, 0.2])])
                        with lock:
                            started.append(call)
                        call.result(timeout=rng.choice([None, 0.02]))
                except E.RpcConnectionLost as exc:
                    with lock:
                        lost.append(exc)
                    return
                except (E.RpcTimeout, E.RpcCancelled):
                    pass

        def canceller() -> None:
            rng = random.Random(99)
            while not stop.is_set():
                with lock:
                    call = rng.choice(started) if started else None
                if call is not None:
                    call.cancel()
                time.sleep(0.002)

        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(7)]
        cancelling = threading.Thread(target=canceller, daemon=True)
        for thread in [*threads, cancelling]:
            thread.start()
        time.sleep(0.6)
        closed = time.monotonic()
        client.close()
        for thread in threads:
            thread.join(5)
        stop.set()
        cancelling.join(5)
        assert not any(thread.is_alive() for thread in threads)
        assert time.monotonic() - closed < 3
        assert len(lost) == 7
        assert client.in_flight == 0 and not client._reading
    finally:
        s.close()


def test_close_ends_a_write_the_peer_holds_up() -> None:
    """A thread whose request (no timeout) waited for the peer's flow control went on
    waiting after close(), for as long as the peer did not read."""
    done = threading.Event()

    def script(request: RequestReceived, send: Any) -> None:
        if request.method == "block":
            done.wait(10)  # reads nothing meanwhile

    peer = ScriptedPeer(script)
    try:
        client = RpcClient(peer.sock, max_message_size=4 << 20)
        client.start("block")
        outcome: list[BaseException] = []

        def write() -> None:
            try:
                for _ in range(40):  # 36 MB: far more than the peer's window
                    client.start("x", b"y" * 900_000)
            except E.RpcConnectionLost as exc:
                outcome.append(exc)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive()  # held up by the peer
        closed = time.monotonic()
        client.close()
        thread.join(4)
        assert not thread.is_alive()
        assert time.monotonic() - closed < 2
        assert len(outcome) == 1
    finally:
        done.set()
        peer.close()


def test_in_flight_counts_a_call_on_a_quiet_stream() -> None:
    """A call on a quiet stream has no RpcCall: in_flight said 0 while it waited."""
    rpc = RpcServer(workers=2)
    rpc.register("sleep", lambda p: time.sleep(p) or "slept")
    s = Served(rpc)
    try:
        client = s.connect(timeout=5)
        thread = threading.Thread(target=client.call, args=("sleep", 0.6), daemon=True)
        thread.start()
        assert wait_for(lambda: client._reading, 5)
        assert client.in_flight == 1
        pipelined = client.start("sleep", 0.01)
        assert client.in_flight == 2
        assert pipelined.result() == "slept"
        thread.join(5)
        assert client.in_flight == 0
    finally:
        s.close()


def test_a_notification_handler_may_call_the_client() -> None:
    """on_notification ran under the client's lock: a handler that called the client
    (to fetch what the notification announced) waited for its own thread for good."""

    def script(request: RequestReceived, send: Any) -> None:
        rid = request.request_id
        if request.method == "announce":
            send(
                encode_frame([3, "changed", [1], None])
                + encode_frame([3, "changed", [2], None])
                + encode_frame([1, rid, "announced", None])
            )
        else:
            send(encode_frame([1, rid, ["fetched", request.params], None]))

    peer = ScriptedPeer(script)
    try:
        fetched: list[Any] = []
        client: RpcClient | None = None

        def on_note(method: str, params: Any) -> None:
            assert client is not None
            fetched.append(client.call("fetch", params[0], timeout=2))

        client = RpcClient(peer.sock, timeout=5, on_notification=on_note)
        outcome: list[Any] = []
        for how in ("call", "start"):
            thread = threading.Thread(
                target=lambda how=how: outcome.append(
                    client.call("announce") if how == "call" else client.start("announce").result()
                ),
                daemon=True,
            )
            thread.start()
            thread.join(6)
            assert not thread.is_alive(), "the notification handler's call never returned"
        assert outcome == ["announced", "announced"]
        assert fetched == [["fetched", 1], ["fetched", 2]] * 2  # in order
        assert client.in_flight == 0
    finally:
        peer.close()


def test_a_broken_answer_fails_its_call_at_once() -> None:
    """An answer that names the call but breaks the format (meta not a map, a code
    that is a bool...) fails that call with MalformedMessage; it waited for its
    deadline (or for good). The stream goes on."""
    answers = {
        "bad_meta": lambda rid: encode_frame([1, rid, "r", "not a map"]),
        "short": lambda rid: encode_frame([1, rid, "r"]),
        "bool_code": lambda rid: encode_frame([2, rid, True, "m", None]),
        "ok": lambda rid: encode_frame([1, rid, "ok", None]),
    }
    peer = ScriptedPeer(lambda request, send: send(answers[request.method](request.request_id)))
    try:
        client = RpcClient(peer.sock)
        for method in ("bad_meta", "short", "bool_code"):
            started = time.monotonic()
            with pytest.raises(E.MalformedMessage):
                client.call(method, timeout=None)
            with pytest.raises(E.MalformedMessage):
                client.start(method, timeout=30).result()
            assert time.monotonic() - started < 2
        assert client.call("ok", timeout=5) == "ok"
        assert client.in_flight == 0
    finally:
        peer.close()


def test_a_junk_flood_from_a_peer_that_does_not_read_holds_no_call_past_its_deadline() -> None:
    """Each junk frame got an ERROR back, ten times its size: a peer sending junk and
    not reading made the reading thread wait on its flow control (a call with a 1 s
    timeout still waiting after 8 s)."""

    done = threading.Event()

    def script(request: RequestReceived, send: Any) -> None:
        if request.method == "junk":
            send((struct.pack(">I", 1) + b"\xc1") * 400_000)
            done.wait(10)  # reads nothing meanwhile

    peer = ScriptedPeer(script)
    try:
        client = RpcClient(peer.sock)
        outcome: list[Any] = []

        def call() -> None:
            started = time.monotonic()
            try:
                client.call("junk", timeout=1.0)
            except E.RpcError as exc:
                outcome.append((type(exc), time.monotonic() - started))

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(8)
        assert not thread.is_alive()
        assert outcome and outcome[0][0] is E.RpcTimeout and outcome[0][1] < 4
    finally:
        done.set()
        peer.close()


# -- asyncio ------------------------------------------------------------------------------------


def test_async_call_deadline_covers_a_send_the_peer_does_not_take() -> None:
    """The deadline covered only the wait for the answer: a call whose request the
    peer's flow control held waited in drain() for good; cancelled there, it left its
    future and request behind (no CANCEL; 'Future exception was never retrieved')."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
        held: list[Any] = []

        async def never_reads(reader: Any, writer: Any) -> None:
            held.append(writer)
            await asyncio.sleep(30)

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(never_reads, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            client = AsyncRpcClient(reader, writer, max_message_size=4 << 20)
            started = loop.time()
            for _ in range(12):  # a few fill the window; the rest wait in drain()
                with pytest.raises(E.RpcTimeout):
                    await asyncio.wait_for(client.call("x", b"y" * 900_000, timeout=0.3), 3)
            assert loop.time() - started < 12 * 0.3 + 2
            # cancelled while its send waits: nothing left behind
            task = loop.create_task(client.call("x", b"z" * 900_000))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client._futures == {} and client._proto.in_flight == 0
            await client.close()
            writer.close()
            for w in held:
                w.close()
        import gc

        gc.collect()
        await asyncio.sleep(0)
        assert unhandled == []

    asyncio.run(main())


def _call_in_cleanup_at_loop_end(reader_task: bool) -> list[Any]:
    """What a call made by a task's cleanup, as asyncio.run() ends and cancels every
    task, comes to (``reader_task``: with a background reader, which notifications
    keep, cancelled with the rest); asyncio.run() must return."""
    rpc = RpcServer(workers=2)
    rpc.register("echo", lambda p: p)
    rpc.register("sleep", lambda p: time.sleep(p) or "slept")
    s = Served(rpc)
    try:
        outcome: list[Any] = []

        async def main() -> None:
            reader, writer = await dtp.aio.open_connection(
                *s.server.address, server_key=s.identity.noise_public
            )
            on_notification = (lambda method, params: None) if reader_task else None
            client = AsyncRpcClient(reader, writer, on_notification=on_notification)
            assert await client.call("echo", 1) == 1

            async def with_cleanup() -> None:
                try:
                    await asyncio.sleep(30)
                finally:
                    try:
                        outcome.append(await client.call("sleep", 1))
                    except E.RpcConnectionLost as exc:
                        outcome.append(exc)
                    writer.close()

            asyncio.get_running_loop().create_task(with_cleanup())
            await asyncio.sleep(0.05)  # main ends: asyncio.run cancels the rest

        thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        thread.start()
        thread.join(6)
        assert not thread.is_alive(), "asyncio.run() never returned"
        return outcome
    finally:
        s.close()


def test_async_client_fails_its_calls_when_its_reading_is_cancelled() -> None:
    """asyncio.run() ending cancels every task, the client's reader too; a task whose
    cleanup then called the client waited for an answer nobody would read, and
    asyncio.run() never returned."""
    outcome = _call_in_cleanup_at_loop_end(reader_task=True)
    assert len(outcome) == 1 and isinstance(outcome[0], E.RpcConnectionLost)


def test_async_call_alone_reads_its_answer_as_the_loop_ends() -> None:
    """A call alone in flight reads its answer in its own task: one made by a task's
    cleanup as asyncio.run() ends, with no reader to cancel, is answered."""
    assert _call_in_cleanup_at_loop_end(reader_task=False) == ["slept"]


def test_async_calls_leave_no_protocol_timers_behind() -> None:
    """Each call with a timeout pushed a protocol timer that the asyncio client, which
    keeps deadlines itself, never expired: one kept per call for the client's life."""

    async def main() -> None:
        rpc = AsyncRpcServer()
        rpc.register("echo", lambda p: p)

        async def slow(p: Any) -> Any:
            await asyncio.sleep(5)

        rpc.register("slow", slow)
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            client = AsyncRpcClient(reader, writer, timeout=30)
            for i in range(300):
                assert await client.call("echo", i) == i
            with pytest.raises(E.RpcTimeout):
                await client.call("slow", None, timeout=0.05)
            assert len(client._proto._timers) == 0 and client._proto.in_flight == 0
            await client.close()
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_an_async_call_cancelled_during_its_deposit_leaves_the_escrow_for_refund() -> None:
    """The deposit runs in a thread the cancellation cannot stop: the escrow it makes
    waits in ``unanswered`` for its refund, never lost with its fee locked."""
    from dtp.ledger.local import LocalLedger
    from dtp.messaging.rpc import ResponsePrepay

    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 1_000)
    entered, release = threading.Event(), threading.Event()

    class SlowPrepay(ResponsePrepay):
        def deposit(self, timeout: float) -> str:
            entered.set()
            release.wait(10)
            return super().deposit(timeout)

    prepay = SlowPrepay(ledger, client_id, server_id.sui_address, 10)

    async def main() -> None:
        rpc = AsyncRpcServer()
        rpc.register("echo", lambda p: p)
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=server_id)
        reader, writer = await dtp.aio.open_connection(
            *server.address, server_key=server_id.noise_public
        )
        try:
            async with AsyncRpcClient(reader, writer, timeout=5, prepay=prepay) as client:
                call = asyncio.create_task(client.call("echo", 1))
                while not entered.is_set():
                    await asyncio.sleep(0.01)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                release.set()
                for _ in range(500):
                    if prepay.unanswered:
                        break
                    await asyncio.sleep(0.01)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    assert len(prepay.unanswered) == 1
    assert ledger.get_response_escrow(prepay.unanswered[0]).state == 0  # open, refundable
    ledger.close()


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Any:
    # reads of 10 minutes: a call that waited for the end of the reader's read would
    # wait that long, so the bounds below need no tighter than "not held up"
    # (the quiet call's first read and the leader's reads)
    monkeypatch.setattr(rpc_client, "_READ_SLICE", 600.0)
    gate = threading.Event()
    cancelled = threading.Event()
    rpc = RpcServer(workers=4)
    rpc.register("block", lambda p: gate.wait(10))

    def wait_cancel(p: Any, ctx: CallContext) -> Any:
        if ctx.cancelled.wait(10):
            cancelled.set()
        return None

    rpc.register("wait_cancel", wait_cancel, context=True)
    s = Served(rpc)
    client = s.connect()
    # another thread reads for everybody, with no deadline of its own
    reader = threading.Thread(target=client.call, args=("block", None))
    reader.start()
    assert wait_for(lambda: client._reading and client.in_flight == 1)
    yield client, cancelled
    gate.set()
    reader.join(5)
    s.close()


def test_a_calls_own_deadline(setup: tuple[RpcClient, threading.Event]) -> None:
    client, _ = setup
    started = time.monotonic()
    with pytest.raises(E.RpcTimeout):
        client.call("wait_cancel", None, timeout=0.1)
    assert time.monotonic() - started < 30  # (not the read slice, 600 s here)


def test_a_result_timeouts_cancel_leaves_at_once(
    setup: tuple[RpcClient, threading.Event],
) -> None:
    client, cancelled = setup
    call = client.start("wait_cancel", None)
    started = time.monotonic()
    with pytest.raises(E.RpcTimeout):
        call.result(timeout=0.1)
    # the server's handler sees the CANCEL well before the reader's read ends
    assert cancelled.wait(30)
    assert time.monotonic() - started < 30
