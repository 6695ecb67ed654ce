"""A forwarder of the release before receipt format version 2 (docs/escrow.md §6) sends
129-byte version-1 receipts on the control stream: the daemon reads a receipt's version
byte first and aborts the connection at once, saying why -- reading a whole receipt of
this version's 193 bytes, it held the first one unanswered until more bytes came."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._runner import Daemon
from dtp.errors import DTPError
from tests.daemon.inproc import RETRY_BOUND, FileLedgerClient, run_with_file_client, service
from tests.support.scopes import v1_receipt_bytes


def test_a_version_1_receipt_is_refused_at_once(tmp_path: Path) -> None:
    async def scenario(daemon: Daemon, client: FileLedgerClient, *_unused: Any) -> None:
        cid = await client.open_ledger(7000)
        reader, writer = await client.connect(cid, 7000)
        old = v1_receipt_bytes(cid, 40960, 0, 400, 1, client.identity)
        assert len(old) == 129
        writer.write(old)
        await writer.drain()
        with pytest.raises(DTPError) as ended:
            await asyncio.wait_for(reader.read(1), RETRY_BOUND)
        assert "bad receipt" in str(ended.value)
        assert "version 1 is not supported" in str(ended.value)
        assert daemon.fees is not None and daemon.fees.held(cid) is None  # nothing kept

    paid = "price_per_kib = 10\nmin_deposit = 1000\n"
    run_with_file_client(tmp_path, lambda b: service(7000, b, paid), scenario)
