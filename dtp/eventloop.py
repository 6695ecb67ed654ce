"""Which asyncio event loop DTP runs on: uvloop when it is installed (the ``fast``
extra, ``pip install 'dtp-sui[fast]'``), else the standard library's.

The choice is one word, the same everywhere: ``"auto"`` (uvloop if importable, else
asyncio), ``"uvloop"`` (uvloop, or :class:`~dtp.errors.MissingExtra` naming the extra)
or ``"asyncio"``. The daemon reads it from ``[daemon] event_loop``; :func:`run` (also
``dtp.aio.run``) from its argument, else ``$DTP_EVENT_LOOP``, else ``"auto"``.

A program that runs its own loop keeps it: the asyncio API works on whichever loop
calls it (its tests run on both, ``DTP_TEST_LOOP=uvloop``: tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, Final, Literal, TypeVar, cast

from dtp.errors import MissingExtra

__all__ = [
    "EVENT_LOOPS",
    "EventLoopName",
    "asyncio_loop",
    "loop_factory",
    "loop_name",
    "run",
    "uvloop_installed",
]

EventLoopName = Literal["auto", "asyncio", "uvloop"]
#: The accepted names, in the order docs list them.
EVENT_LOOPS: Final[tuple[EventLoopName, ...]] = ("auto", "asyncio", "uvloop")
#: The variable :func:`run` reads when it is given no choice.
ENV_VAR: Final = "DTP_EVENT_LOOP"

_T = TypeVar("_T")


def uvloop_installed() -> bool:
    """Whether ``uvloop`` can be imported (it is only imported when asked for)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _check(name: str, setting: str) -> EventLoopName:
    if name not in EVENT_LOOPS:
        raise ValueError(f"{setting} must be one of {', '.join(EVENT_LOOPS)}, got {name!r}")
    return name


def asyncio_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the standard library's own (the selector loop; the proactor on
    Windows), whatever event loop policy the program installed: after
    ``uvloop.install()`` (or ``asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())``),
    ``asyncio.new_event_loop()`` makes a uvloop loop, so ``"asyncio"`` asked for uvloop's
    (tests/transport/test_event_loop_choice.py)."""
    return asyncio.DefaultEventLoopPolicy().new_event_loop()


def loop_factory(
    name: str = "auto", *, setting: str = "event_loop"
) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of the kind ``name`` says (for
    :class:`asyncio.Runner`'s ``loop_factory``). ``setting`` names where ``name`` came
    from, for the errors: :class:`ValueError` for a name not in :data:`EVENT_LOOPS`,
    :class:`~dtp.errors.MissingExtra` for ``"uvloop"`` without uvloop installed."""
    chosen = _check(name, setting)
    if chosen == "asyncio":
        return asyncio_loop
    try:
        import uvloop
    except ImportError:
        if chosen == "auto":
            return asyncio_loop
        raise MissingExtra("fast", f"{setting} = uvloop", "uvloop") from None
    return cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: what ``loop`` (default: the running one) is."""
    loop = loop if loop is not None else asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, _T], *, loop: str | None = None, debug: bool | None = None) -> _T:
    """``asyncio.run(main)`` on the loop ``loop`` names (default ``$DTP_EVENT_LOOP``,
    else ``"auto"``: uvloop when installed)."""
    setting = "loop" if loop is not None else ENV_VAR
    name = loop if loop is not None else (os.environ.get(ENV_VAR, "").strip() or "auto")
    try:
        factory = loop_factory(name, setting=setting)
    except BaseException:
        main.close()  # (never awaited: no "coroutine was never awaited" warning)
        raise
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
