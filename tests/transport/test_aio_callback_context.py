"""A dtp.aio connection's timer runs the user's sink callbacks when it ends the
connection (an idle timeout, a lost peer): they see the context variables of the code
that made the connection, as asyncio's own callbacks do, and none that another
connection's callbacks set. On the simulated network (virtual clock: the timeouts cost
no waiting), whose current host is itself a context variable."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import dtp.aio
from dtp.testing.identities import identity
from dtp.testing.network import Link, SimNetwork, SimulationError

KEY = identity(1)
REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


async def _echo(reader: Any, writer: Any) -> None:
    try:
        while data := await reader.read(100):
            writer.write(data)
    except Exception:
        pass  # (the partition ends it too)


def test_a_sink_ended_by_the_connections_timer_sees_the_callers_context() -> None:
    net = SimNetwork(seed=1)
    net.add_hosts("client", "server")
    net.link("client", "server", Link(delay=0.01))
    seen: list[tuple[str, str | None, str]] = []

    async def connection(name: str, done: asyncio.Future[None]) -> None:
        REQUEST.set(name)
        with net.host("client"):
            reader, writer = await dtp.aio.open_connection(
                "server", 7000, server_key=KEY.noise_public
            )

        def on_end(error: BaseException | None) -> None:
            try:
                host = net.current_host().name
            except SimulationError as exc:  # (no host current: the context was lost)
                host = repr(exc)
            seen.append((name, REQUEST.get(), host))
            REQUEST.set("set by " + name)  # (must not reach the other connection)
            done.set_result(None)

        reader.set_sink(lambda data: None, on_end)
        await done
        writer.close()

    async def main() -> None:
        await dtp.aio.start_server(_echo, "server", 7000, identity=KEY)
        loop = asyncio.get_running_loop()
        ended = [loop.create_future() for _ in range(2)]
        # each in a task of its own, so each has a context of its own
        tasks = [
            asyncio.create_task(connection(name, done))
            for name, done in zip(("a", "b"), ended, strict=True)
        ]
        await asyncio.sleep(0.5)
        net.partition({"client"}, {"server"})  # only the timers can end them now
        await asyncio.gather(*tasks)

    net.run(main())
    assert sorted(seen) == [("a", "a", "client"), ("b", "b", "client")]
