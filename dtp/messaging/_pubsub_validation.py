"""Per-topic validation hooks of a pub/sub node (docs/messaging.md §4.1).

A hook is called with a :class:`PeerMessage` in the reader thread of the link that
brought the message, before the message is delivered or forwarded, and returns a
:class:`~dtp.messaging._pubsub_scoring.Verdict`, or an awaitable of one (a coroutine
function works as a hook). An awaitable runs on the event loop given with the hook
(``loop=``: the hook may use that loop's objects) or else on a private loop of the
reader thread, and is given ``timeout`` seconds. A hook that raises, times out or
returns anything but a Verdict counts as IGNORE and is logged: it neither crashes the
link nor penalises a peer for the node's own fault.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from dtp.messaging._pubsub_scoring import Verdict

__all__ = ["Hook", "PeerMessage", "Validator"]

logger = logging.getLogger("dtp.messaging.pubsub")


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """A message a peer sent, as a validation hook sees it."""

    topic: str
    data: bytes
    message_id: bytes
    #: Node id of the publisher, as it stated it (nobody checked it).
    origin: str | None
    #: Name of the link it came on.
    link: str
    #: The peer's label in :meth:`PubSubNode.scores` (its Noise static key in hex, or
    #: the link's name when the stream has none).
    peer: str


Hook: TypeAlias = Callable[[PeerMessage], "Verdict | Awaitable[Verdict]"]

_private = threading.local()


def close_private_loop() -> None:
    """Close the calling thread's private loop, if a hook made one (a link's reader
    calls this as it ends)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_private, "loop", None)
    if loop is not None:
        _private.loop = None
        loop.close()


def _private_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_private, "loop", None)
    if loop is None or loop.is_closed():
        loop = _private.loop = asyncio.new_event_loop()
    return loop


class Validator:
    """A topic's hook, with where its awaitables run and how long they may take."""

    __slots__ = ("_count", "failures", "hook", "loop", "timeout")

    def __init__(self, hook: Hook, loop: asyncio.AbstractEventLoop | None, timeout: float) -> None:
        self.hook = hook
        self.loop = loop
        self.timeout = timeout
        #: Calls that raised, timed out or returned no Verdict (each counted as IGNORE).
        self.failures = 0
        self._count = threading.Lock()  # every link's reader may call the hook

    def __call__(self, message: PeerMessage) -> Verdict:
        try:
            result: Any = self.hook(message)
            if inspect.isawaitable(result):
                result = self._await(result)
        except Exception as exc:  # the hook's fault, not the peer's: IGNORE
            self._failed()
            logger.warning(
                "pubsub validator of topic %r raised %s on a message from %s: ignored",
                message.topic,
                type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}",
                message.peer,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            return Verdict.IGNORE
        if not isinstance(result, Verdict):
            self._failed()
            logger.warning(
                "pubsub validator of topic %r returned %r, not a Verdict: ignored",
                message.topic,
                result,
            )
            return Verdict.IGNORE
        return result

    def _failed(self) -> None:
        with self._count:
            self.failures += 1

    def _await(self, awaitable: Awaitable[Any]) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(awaitable, self.timeout)

        loop = self.loop
        if loop is None:
            return _private_loop().run_until_complete(bounded())
        if loop.is_closed():
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never awaited: no "never awaited" warning
            raise RuntimeError("the validator's event loop is closed")
        future = asyncio.run_coroutine_threadsafe(bounded(), loop)
        try:
            # a little longer than the timeout inside: a loop too busy to run it at
            # all still ends the wait
            return future.result(self.timeout + 1.0)
        except TimeoutError:
            future.cancel()
            raise
