"""``PaidWriter.serve_streams`` (dtp.hostid.paid._aio): a paid service answering a call a
stream, each stream a paid pair behind the receipt gate. A metered client's calls are all
answered, an answer larger than the credit going out as its receipts come, and each
handler's writer closed once what it held went out; a client that pays nothing gets no
more than the credit served and its connection is closed for want of payment after the
pause timeout, its waiting streams never reaching the handler. Real LocalLedger files,
real DTP connections on 127.0.0.1, the server in this process."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import dtp.aio
from dtp.errors import DTPError
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from tests.support.paid_twins import ident
from tests.support.settlements import settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7101
STINGY = ServicePolicy(allowance=1000, pause_timeout=1.0)  # 1000 MIST: about 100 KiB
SERVER, CLIENT = ident(0x97), ident(0x98)
BIG = 300 * 1024  # three times the credit


@pytest.fixture
def ledger(tmp_path: Path) -> LocalLedger:
    opened = LocalLedger(tmp_path / "ledger.db")
    opened.faucet(CLIENT.sui_address, 10_000_000)
    return opened


def _served(
    ledger: LocalLedger, tmp_path: Path, metering: MeteringConfig | None
) -> dict[str, object]:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "calls", SLA)
    handled: list[int] = []
    out: dict[str, object] = {"handled": handled}

    async def service(reader: PaidReader, writer: PaidWriter) -> None:
        async def call(r: PaidReader, w: PaidWriter) -> None:
            handled.append(w.stream_id)
            request = await r.read()
            # "big": an answer of three credits, held and let out as receipts come; the
            # handler returns without closing (serve_streams closes once it went)
            w.write(b"x" * BIG if request == b"big" else request.upper())

        async def first(r: PaidReader, w: PaidWriter) -> None:
            with contextlib.suppress(DTPError):
                while await r.read(4096):
                    pass
            w.close()

        await asyncio.gather(first(reader, writer), writer.serve_streams(call))

    async def run() -> None:
        server = await dtp.aio.serve(
            host_id,
            PORT,
            service,
            ledger=ledger,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=STINGY,
        )
        async with server:
            options = {} if metering is None else {"metering": metering}
            _reader, writer = await dtp.aio.open_connection(
                f"dtp://{host_id}:{PORT}",
                timeout=10,
                ledger=ledger,
                identity=CLIENT,
                deposit=SLA.min_deposit,
                **options,
            )
            answers: list[bytes | str] = []
            try:
                for body in (b"one", b"two", b"big", b"three"):
                    r, w = await writer.open_stream()
                    w.write_eof(body)
                    try:
                        answers.append(await asyncio.wait_for(r.read(), 10))
                    except DTPError as exc:
                        answers.append(type(exc).__name__)
                        break
            finally:
                out["answers"] = answers
                writer.close()
                with contextlib.suppress(DTPError):
                    await asyncio.wait_for(writer.wait_closed(), 10)
            for _ in range(200):  # (the settlement follows the connection's end)
                if server.settlements:
                    break
                await asyncio.sleep(0.05)
            out["settlements"] = list(server.settlements)

    asyncio.run(run())
    return out


def test_every_call_is_answered_a_large_answer_as_receipts_come(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    got = _served(ledger, tmp_path, None)
    assert got["answers"] == [b"ONE", b"TWO", b"x" * BIG, b"THREE"]
    assert got["handled"] == [2, 4, 6, 8]
    ((connection_id, settled),) = got["settlements"]  # type: ignore[misc]
    escrow = settled_escrow(ledger, connection_id)
    # four requests and every byte both ways, claimed as the receipts said
    assert escrow.claimed == settled.claimed > 4 * SLA.price_per_request + BIG * 10 // 1024
    assert escrow.claimed + escrow.refunded == SLA.min_deposit


def test_a_client_that_pays_nothing_is_served_the_credit_then_closed(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    got = _served(ledger, tmp_path, MeteringConfig(enabled=False))
    answers = got["answers"]
    assert answers[:2] == [b"ONE", b"TWO"]  # type: ignore[index]
    # the large answer is cut at the credit: the connection closes for want of payment
    assert answers[2] in ("PaymentRequired", "ConnectionClosed")  # type: ignore[index]
    assert got["handled"] == [2, 4, 6]  # (the fourth stream never reached a handler)
    ((connection_id, settled),) = got["settlements"]  # type: ignore[misc]
    assert settled.claimed == 0  # no receipt: nothing to claim, the deposit back
    escrow = settled_escrow(ledger, connection_id)
    assert (escrow.claimed, escrow.refunded) == (0, SLA.min_deposit)
