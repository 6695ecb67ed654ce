"""A ledger file's path passed where its ledger goes (``ledger="localnet.sqlite"``, the
README's file name): both APIs refuse the connect with a TypeError that says what to
pass, before anything is read or connected, where an AttributeError ('get_host') came
from deep in the resolution."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity

ADDRESS = "dtp://0x" + "12" * 32 + ":7000"
PATHS = [("str", "localnet.sqlite"), ("Path", Path("localnet.sqlite"))]


def _expected(kind: str, path: Any) -> str:
    return (
        f"ledger must be a ledger object, not the {kind} {path!r}: LocalLedger(path) opens "
        "a ledger file, dtp.open_ledger(spec) any ledger"
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
