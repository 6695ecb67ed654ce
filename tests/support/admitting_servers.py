"""An asyncio DTP server that admits a Host's clients through the ledger and serves
them nothing, on 127.0.0.1 (any free port): for the tests of what such a server checks,
and leaves behind, as it starts."""

from __future__ import annotations

from typing import Any

import dtp.aio
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger


def _nothing(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    """A connection callback that leaves each connection to the server."""


async def start_admitting(
    identity: HostIdentity, ledger: Ledger, host_id: str, port: int, **options: Any
) -> dtp.aio.DTPServer:
    """``dtp.aio.start_server`` for ``host_id``'s DTP ``port``, as ``identity``, with
    ledger admission; ``options``: its other keywords (``carriers``, say)."""
    return await dtp.aio.start_server(
        _nothing,
        "127.0.0.1",
        0,
        identity=identity,
        ledger=ledger,
        host_id=host_id,
        dtp_port=port,
        **options,
    )
