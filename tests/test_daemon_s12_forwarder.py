"""The forwarder when opening a tunnel fails in an unexpected way: the local client is
closed and the failure counted, instead of the client waiting forever."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
from dtp.address import HostAddress
from dtp.chain.local import LocalLedger
from dtp.daemon.config import Backend, ForwardConfig
from dtp.daemon.forwarder import Forwarder
from dtp.daemon.state import StatusBook
from dtp.keys import HostIdentity


def test_an_unexpected_error_opening_the_connection_closes_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found with 1100 local clients at once: past 1024 descriptors the TCP carrier's
    select() raises ValueError; the tunnel task died with it ("Task exception was never
    retrieved"), its local client hung and its socket stayed open for good."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("filedescriptor out of range in select()")

    monkeypatch.setattr(dtp.aio, "open_connection", broken)
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    book = StatusBook(tmp_path)
    config = ForwardConfig(
        "f", Backend("127.0.0.1", 0), HostAddress.parse("dtp://0x" + "ab" * 32 + ":80")
    )
    forwarder = Forwarder(config, ledger, HostIdentity.generate(), book)

    async def run() -> bytes:
        host, port = await forwarder.start()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"hello")
                with contextlib.suppress(ConnectionResetError):
                    return await asyncio.wait_for(reader.read(), 5)
                return b""
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        finally:
            await forwarder.drain(1.0)

    try:
        assert asyncio.run(run()) == b""
    finally:
        ledger.close()
    row = book.forwards["f"]
    assert (row.errors, row.tunnels, row.active_tunnels) == (1, 0, 0)
