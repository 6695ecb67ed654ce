"""Servers on 127.0.0.1 that play a Sui node: a gRPC one answering each method from a table
(GrpcNode), and an HTTP/2 one answering every request with one status and no gRPC
(Http2Status, a rate-limiting proxy), for the tests of SuiNode's faults."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from dtp.testing._loops import LoopThread
from dtp.testing.sui_node._server import RawCodec

#: Long enough that a test finishing means what it checks held, not that a timeout fired.
NODE_TIMEOUT = 120.0
#: "Does not hang" bound for joins (slow, loaded CI machine).
JOIN = 60.0
Answer = Callable[[bytes], bytes]
_METHODS = {
    "LedgerService": ("GetObject", "GetEpoch", "GetCheckpoint"),
    "StateService": ("GetBalance", "ListDynamicFields", "ListOwnedObjects"),
    "TransactionExecutionService": ("ExecuteTransaction",),
}


class _Handlers:
    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __mapping__(self) -> dict[str, Handler]:
        return {
            f"/sui.rpc.v2.{service}/{name}": Handler(
                self._handler(name), Cardinality.UNARY_UNARY, bytes, bytes
            )
            for service, names in _METHODS.items()
            for name in names
        }

    def _handler(self, name: str) -> Callable[[Any], Any]:
        async def handle(stream: Any) -> None:
            request = await stream.recv_message()
            self.calls.append(name)
            answer = self.answers.get(name)
            if answer is None:
                raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not played here")
            await stream.send_message(answer(request))

        return handle


class GrpcNode:
    """A gRPC server on 127.0.0.1 answering from ``answers`` (method name -> bytes)."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.handlers = _Handlers(answers)
        self.loop = LoopThread()

        async def start() -> Server:
            server = Server([self.handlers], codec=RawCodec())
            await server.start("127.0.0.1", 0)
            return server

        self.server = self.loop.run(start(), JOIN)
        self.port = self.server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        try:
            self.loop.run(stop(), JOIN)
        finally:
            self.loop.close(timeout=JOIN)


def constant_answer(message: Any) -> Answer:
    """An answer that is ``message`` (serialized) whatever the request."""
    data = bytes(message)
    return lambda _request: data


def error_answer(status: Status, text: str) -> Answer:
    """An answer that is the gRPC error ``status`` with ``text``."""

    def answer(_request: bytes) -> bytes:
        raise GRPCError(status, text)

    return answer


class Http2Status:
    """An HTTP/2 (h2c) server on 127.0.0.1 that answers every request with ``status`` and
    no gRPC at all, as a rate-limiting proxy in front of a node does."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = LoopThread()
        self.server = self.loop.run(asyncio.start_server(self._serve, "127.0.0.1", 0), JOIN)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        paths: dict[int, str] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {
                            (k.decode() if isinstance(k, bytes) else k): (
                                v.decode() if isinstance(v, bytes) else v
                            )
                            for k, v in event.headers
                        }
                        paths[event.stream_id] = headers.get(":path", "")
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        self.requests.append(paths.get(event.stream_id, ""))
                        conn.send_headers(
                            event.stream_id,
                            [(":status", str(self.status)), ("content-type", "text/plain")],
                            end_stream=True,
                        )
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self.tasks.discard(task)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            # the connections still open end too (3.11's wait_closed does not wait for them)
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.server.wait_closed()

        try:
            self.loop.run(stop(), JOIN)
        finally:
            self.loop.close(timeout=JOIN)
