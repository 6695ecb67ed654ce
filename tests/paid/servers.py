"""A paid DTP service the tests run in a separate OS process, on a shared LocalLedger file.

    python -m tests.paid.servers LEDGER HOST_ID PORT SEED_HEX RECEIPTS
        [--api blocking|asyncio] [--mode echo|sink] [--pause-timeout S] [--refresh S]
        [--claim-above MIST|none] [--claim-age FRACTION|none] [--claim-interval S]

The host (authority = the identity from SEED_HEX) and its service must exist. Prints
one JSON line {"port", "recovered"} once serving (the endpoint is published in the Host
by then), then serves until killed. Modes: ``echo`` echoes every stream; ``sink`` counts
the bytes of the first stream until EOF and replies with the count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dtp.aio
import dtp.socket
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._live_claims import CLAIM_AGE, CLAIM_INTERVAL
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from tests.support.paths import ROOT
from tests.support.servers import blocking_handler
from tests.support.settlements import is_settled, settled_escrow, settlement

# -- the client's side: this module run in its own process, on a test's ledger ---------
# (tests/paid/test_end_to_end.py, test_server_killed.py)

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7000
SERVER_SEED = bytes([0x71]) * 32
SERVER = HostIdentity.from_private_bytes(SERVER_SEED, SERVER_SEED)
METERING = MeteringConfig(every_bytes=64 * 1024, every_ms=200)


@dataclass
class World:
    """A test's LocalLedger file (in ``tmp``) with the echo service of SERVER on PORT."""

    tmp: Path
    ledger: LocalLedger
    host_id: str

    @property
    def address(self) -> str:
        return f"dtp://{self.host_id}:{PORT}"

    @property
    def receipts(self) -> Path:
        return self.tmp / "receipts.db"

    def conserved(self) -> bool:
        a = self.ledger.audit()
        return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]

    def wait_settled(self, cid: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not is_settled(self.ledger, cid):
            assert time.monotonic() < deadline, f"connection {cid} not settled in time"
            time.sleep(0.05)

    def wait_marked(self, cids: list[str], timeout: float = 15.0) -> None:
        """Until the server's receipt store holds a receipt of each of ``cids`` and has
        nothing left unclaimed. Both, because the receipt writer may still hold a
        connection's first receipt when the ledger already shows it settled (its fsync
        is slow under load): an empty store is not yet a marked one."""
        deadline = time.monotonic() + timeout
        with ReceiptStore(self.receipts) as store:
            while any(store.latest(cid) is None for cid in cids) or list(store.unclaimed()):
                assert time.monotonic() < deadline, "claims not marked in the store in time"
                time.sleep(0.02)

    def claimed(self, cid: str) -> int:
        done = settlement(self.ledger, cid)
        if done is not None and done.deleted:
            return done.claimed  # (its client deleted it once settled)
        return settled_escrow(self.ledger, cid).claimed

    def connect(
        self,
        client: HostIdentity,
        deposit: int | None = None,
        *,
        metering: MeteringConfig | None = METERING,
        **options: Any,
    ) -> dtp.socket.DTPSocket:
        """``client``'s connection by host ID to the service (15 s timeout), with
        ``deposit`` in escrow (None: the SLA's minimum) and ``options`` as
        ``create_connection`` takes them."""
        return dtp.socket.create_connection(
            self.address,
            timeout=15,
            ledger=self.ledger,
            identity=client,
            deposit=deposit,
            metering=metering,
            **options,
        )


@contextmanager
def hosted_world(tmp_path: Path, sla: Sla = SLA) -> Iterator[World]:
    """A :class:`World` in ``tmp_path``: its LocalLedger file with SERVER's host offering
    the echo service on PORT at ``sla``'s prices (closed at the end)."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", sla)
    try:
        yield World(tmp_path, ledger, host_id)
    finally:
        ledger.close()


@contextmanager
def paid_server(
    world: World,
    api: str = "blocking",
    mode: str = "echo",
    pause_timeout: float = 10.0,
    refresh: float = 2.0,
    claims: tuple[str, ...] = (),
) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    """The paid service in its own process; yields (process, its announcement).
    ``claims``: its command line's options of the claims while a connection lives
    (``--claim-above``, ``--claim-age``, ``--claim-interval`` and their values)."""
    cmd = [
        sys.executable,
        "-m",
        "tests.paid.servers",
        str(world.tmp / "ledger.db"),
        world.host_id,
        str(PORT),
        SERVER_SEED.hex(),
        str(world.receipts),
        "--api",
        api,
        "--mode",
        mode,
        "--pause-timeout",
        str(pause_timeout),
        "--refresh",
        str(refresh),
        *claims,
    ]
    with open(world.tmp / "server.log", "a") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(
                "paid server did not start:\n" + (world.tmp / "server.log").read_text()
            )
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def fund(world: World, *clients: HostIdentity, amount: int = 100_000) -> None:
    for client in clients:
        world.ledger.faucet(client.sui_address, amount)


def _announce(port: int, recovered: int) -> None:
    print(json.dumps({"port": port, "recovered": recovered}), flush=True)


def serve_blocking(args: argparse.Namespace, identity: HostIdentity, policy: ServicePolicy) -> None:
    server = dtp.socket.serve(
        args.host_id,
        args.port,
        # (the paid tests were written against an echo that neither shuts its side nor
        # lingers after the first stream ends)
        blocking_handler(args.mode, shut_wr=False, linger=0),
        ledger=LocalLedger(args.ledger),
        identity=identity,
        receipts=args.receipts,
        policy=policy,
    )
    _announce(server.address[1], len(server.recovered))
    server.serve_forever()


async def serve_asyncio(
    args: argparse.Namespace, identity: HostIdentity, policy: ServicePolicy
) -> None:
    async def handle(reader: PaidReader, writer: PaidWriter) -> None:
        if args.mode == "sink":
            total = 0
            while data := await reader.read(1 << 16):
                total += len(data)
            writer.write(str(total).encode())
            await writer.drain()
            return
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    server = await dtp.aio.serve(
        args.host_id,
        args.port,
        handle,
        ledger=LocalLedger(args.ledger),
        identity=identity,
        receipts=args.receipts,
        policy=policy,
    )
    _announce(server.address[1], len(server.recovered))
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ledger")
    parser.add_argument("host_id")
    parser.add_argument("port", type=int)
    parser.add_argument("seed")
    parser.add_argument("receipts")
    parser.add_argument("--api", choices=["blocking", "asyncio"], default="blocking")
    parser.add_argument("--mode", choices=["echo", "sink"], default="echo")
    parser.add_argument("--pause-timeout", type=float, default=10.0)
    parser.add_argument("--refresh", type=float, default=2.0)
    # (the claims while a connection lives: the policy's settings, as text; "none": None)
    parser.add_argument("--claim-above", default=None)
    parser.add_argument("--claim-age", default=str(CLAIM_AGE))
    parser.add_argument("--claim-interval", type=float, default=CLAIM_INTERVAL)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    seed = bytes.fromhex(args.seed)
    identity = HostIdentity.from_private_bytes(seed, seed)
    policy = ServicePolicy(
        pause_timeout=args.pause_timeout,
        refresh_interval=args.refresh,
        claim_above=None if args.claim_above in (None, "none") else int(args.claim_above),
        claim_age=None if args.claim_age == "none" else float(args.claim_age),
        claim_interval=args.claim_interval,
    )
    if args.api == "blocking":
        serve_blocking(args, identity, policy)
    else:
        asyncio.run(serve_asyncio(args, identity, policy))


if __name__ == "__main__":
    sys.exit(main())
