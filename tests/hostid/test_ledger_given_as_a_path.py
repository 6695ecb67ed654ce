"""A ledger file's path passed where its ledger goes (``ledger="localnet.sqlite"``, the
README's file name): both APIs refuse the connect with a TypeError that says what to
pass, before anything is read or connected, where an AttributeError ('get_host') came
from deep in the resolution."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity

ADDRESS = "dtp://0x" + "12" * 32 + ":7000"
PATHS = [
    ("str", "localnet.sqlite"),
    ("Path", Path("localnet.sqlite")),
    ("bytes", b"localnet.sqlite"),
]


def _expected(kind: str, path: Any) -> str:
    # (LocalLedger takes no bytes: the hint decodes them)
    opened = "os.fsdecode(path)" if kind == "bytes" else "path"
    return (
        f"ledger must be a ledger object, not the {kind} {path!r}: LocalLedger({opened}) "
        "opens a ledger file, dtp.open_ledger(spec) any ledger"
    )


@pytest.mark.parametrize(("kind", "path"), PATHS, ids=[kind for kind, _ in PATHS])
def test_the_blocking_connect_says_what_a_ledger_is(
    kind: str, path: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError) as refused:
        dtp.socket.create_connection(ADDRESS, ledger=path, identity=HostIdentity.generate())
    assert str(refused.value).startswith("ledger must be a ledger object, not the ")
    assert str(refused.value) == _expected(type(path).__name__, path)
    assert list(tmp_path.iterdir()) == []  # no file made under that name


@pytest.mark.parametrize(("kind", "path"), PATHS, ids=[kind for kind, _ in PATHS])
def test_the_asyncio_connect_says_it_too(kind: str, path: Any) -> None:
    async def connect() -> None:
        await dtp.aio.open_connection(ADDRESS, ledger=path, identity=HostIdentity.generate())

    with pytest.raises(TypeError) as refused:
        asyncio.run(connect())
    assert str(refused.value) == _expected(type(path).__name__, path)


@pytest.mark.parametrize("kind", ["str", "bytes"])
def test_the_servers_say_it_before_they_listen(kind: str, tmp_path: Path) -> None:
    identity, host = HostIdentity.generate(), "0x" + "12" * 32
    named = str(tmp_path / "localnet.sqlite")
    path: str | bytes = named if kind == "str" else os.fsencode(named)
    made = [
        lambda: dtp.socket.create_server(
            ("127.0.0.1", 0), identity=identity, ledger=path, host_id=host, port=7000
        ),
        lambda: dtp.socket.serve(host, 7000, lambda sock: None, ledger=path, identity=identity),
    ]
    for make in made:
        with pytest.raises(TypeError) as refused:
            make()
        assert str(refused.value) == _expected(kind, path)

    async def serve() -> None:
        await dtp.aio.serve(host, 7000, _echo, ledger=path, identity=identity)

    async def start() -> None:
        await dtp.aio.start_server(
            _echo, "127.0.0.1", 0, identity=identity, ledger=path, host_id=host, dtp_port=7000
        )

    for coro in (serve, start):
        with pytest.raises(TypeError) as refused:
            asyncio.run(coro())
        assert str(refused.value) == _expected(kind, path)
    assert list(tmp_path.iterdir()) == []


async def _echo(reader: Any, writer: Any) -> None:
    writer.close()
