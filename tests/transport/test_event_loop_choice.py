"""dtp.eventloop: the loop ``dtp.aio.run`` and the daemon take (uvloop when installed,
asyncio's when asked for), and a DTP round trip on each."""

from __future__ import annotations

import asyncio

import pytest

import dtp.aio
from dtp.errors import MissingExtra
from dtp.eventloop import asyncio_loop, loop_factory, loop_name
from dtp.identity.keys import HostIdentity

pytest.importorskip("uvloop", reason="the fast extra (uvloop) is a test dependency")


async def _echo_round_trip() -> tuple[str, bytes]:
    identity = HostIdentity.generate()

    async def echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await dtp.aio.start_server(echo, "127.0.0.1", 0, identity=identity)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", port, server_key=identity.noise_public
        )
        writer.write(b"ping")
        await writer.drain()
        got = await reader.read(100)
        writer.close()
        await writer.wait_closed()
    return loop_name(), got


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_round_trip_on_either_loop(loop: str) -> None:
    assert dtp.aio.run(_echo_round_trip(), loop=loop) == (loop, b"ping")


def test_auto_takes_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DTP_EVENT_LOOP", raising=False)
    assert dtp.aio.run(_echo_round_trip()) == ("uvloop", b"ping")
    monkeypatch.setenv("DTP_EVENT_LOOP", "asyncio")
    assert dtp.aio.run(_echo_round_trip())[0] == "asyncio"


def test_bad_choices_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="loop must be one of auto, asyncio, uvloop"):
        dtp.aio.run(asyncio.sleep(0), loop="trio")
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # (as if not installed)
    with pytest.raises(MissingExtra, match=r"dtp-sui\[fast\]"):
        loop_factory("uvloop")
    assert loop_factory("auto") is asyncio_loop


def test_asyncio_is_the_standard_librarys_loop_whatever_the_policy() -> None:
    # a program that installed uvloop's policy still gets asyncio's loop when it asks
    # for "asyncio" (the daemon's event_loop = "asyncio", dtp.aio.run(loop="asyncio"))
    import uvloop

    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        assert dtp.aio.run(_echo_round_trip(), loop="asyncio") == ("asyncio", b"ping")
        loop = loop_factory("asyncio")()
        try:
            assert isinstance(loop, asyncio.BaseEventLoop) and loop_name(loop) == "asyncio"
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(before)


def test_this_folder_runs_on_the_loop_the_suite_says() -> None:
    """tests/transport is in tests/uvloop.txt: under scripts/test.sh's C parts
    (DTP_TEST_LOOP=uvloop-listed) its asyncio tests run on uvloop, on asyncio's loop
    elsewhere (tests/conftest.py)."""
    import os

    chosen = os.environ.get("DTP_TEST_LOOP", "asyncio")
    expected = "asyncio" if chosen == "asyncio" else "uvloop"

    async def which() -> str:
        return loop_name()

    assert asyncio.run(which()) == expected
    runner = asyncio.Runner()
    try:
        assert runner.run(which()) == expected
    finally:
        runner.close()
