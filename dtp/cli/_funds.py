"""``dtp balance|fund|transfer|connections|refund|claim``: what an identity holds and is
owed on the ledger, getting SUI and moving it, and getting back what is owed (each
command: docs/cli.md).

Every command takes the ledger options of :mod:`dtp.cli._ledger` (``--ledger SPEC``...)
and works through the :class:`~dtp.ledger.interface.Ledger` interface alone, so on either
ledger. Read-only ones need no key: the address comes from the identity file, or on
Sui without one from ``$DTP_SUI_KEY`` or the Sui CLI's active address.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

from dtp.cli._common import CliError as _CliError
from dtp.cli._common import UsageError as _UsageError
from dtp.cli._common import address as _address
from dtp.cli._common import amount as _amount
from dtp.cli._common import emit as _emit
from dtp.cli._common import given_path as _given_path
from dtp.cli._common import identity as _identity
from dtp.cli._common import ledger as _ledger
from dtp.cli._common import ledger_spec as _ledger_spec
from dtp.ledger._connections import (
    ConnectionReport,
    find_connections,
    format_ms,
)
from dtp.ledger._objects import ConnectionState, normalize_id

__all__ = ["register"]

MIST_PER_SUI: Final = 1_000_000_000
#: What ``dtp fund`` mints on the embedded ledger without ``--amount`` (10 SUI, as
#: ``dtp localnet faucet`` and Sui's faucets give).
FUND_DEFAULT: Final = 10 * MIST_PER_SUI
#: Longest sleep between two looks at the ledger clock while ``refund --wait`` waits:
#: a clock that is not the wall clock (a LocalLedger's, advanced by hand) is seen to
#: move within it.
_WAIT_POLL: Final = 1.0


def sui_text(mist: int) -> str:
    """MIST as SUI, exactly: ``1.5`` for 1 500 000 000."""
    whole, frac = divmod(mist, MIST_PER_SUI)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".")


def _parse_id(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            return normalize_id(text, what)
        except ValueError as exc:  # (InvalidObjectId: its message says what is wrong)
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# -- balance -------------------------------------------------------------------------


def _balance(args: argparse.Namespace) -> int:
    address = args.address if args.address is not None else _address(args)
    ledger = _ledger(args, create=False)
    try:
        mist = ledger.balance(address)
        coins = ledger.gas_coin_count(address)
    finally:
        ledger.close()
    data: dict[str, Any] = {"address": address, "balance_mist": mist, "balance_sui": sui_text(mist)}
    if coins is not None:
        data["gas_coins"] = coins
    _emit(args, data)
    return 0


# -- fund and transfer -------------------------------------------------------------------


def _mist(value: int, option: str) -> int:
    """An amount of MIST a faucet or a transfer moves: 1 to 2**64-1 (checked before the
    ledger is opened: a refused amount creates no ledger file)."""
    if not 0 < value < 2**64:
        raise _UsageError(f"{option} must be from 1 MIST to 2**64-1 MIST, got {value}.")
    return value


def _fund(args: argparse.Namespace) -> int:
    """Test SUI to ``ADDRESS`` (default: the identity's): the embedded ledger mints it;
    on Sui a faucet sends it (Sui's faucets give their own fixed amount)."""
    spec = _ledger_spec(args)
    amount = None if args.amount is None else _mist(args.amount, "--amount")
    if spec.is_sui:
        from dtp.ledger._faucet import faucet_url, request_sui

        url = faucet_url(args.faucet, spec.network)
        address = args.address if args.address is not None else _address(args)
        gift = request_sui(url, address, amount)
        data: dict[str, Any] = {
            "address": address,
            "faucet": url,
            "coin": gift.coin_id,
            "received_mist": gift.amount,
        }
        if gift.digest:
            data["digest"] = gift.digest
        _emit(args, data)
        return 0
    if args.faucet is not None:
        raise _UsageError(
            f"--faucet names a Sui faucet, and {spec.setting} names {spec.describe()}: the "
            "embedded ledger mints test SUI itself (leave --faucet out)."
        )
    # the address (the identity read) before the ledger is opened, as `dtp localnet
    # faucet` does: a missing identity creates no ledger file
    address = args.address if args.address is not None else _address(args)
    amount = FUND_DEFAULT if amount is None else amount
    ledger = _ledger(args)
    try:
        balance = ledger.faucet(address, amount)
    finally:
        ledger.close()
    _emit(
        args,
        {
            "address": address,
            "faucet": "embedded",
            "received_mist": amount,
            "balance_mist": balance,
        },
    )
    return 0


def _transfer(args: argparse.Namespace) -> int:
    """``amount`` MIST from the identity to ``ADDRESS`` (on Sui, plus the gas the
    identity pays). Refused whole when the balance cannot cover it: nothing moves."""
    amount = _mist(args.amount, "--amount")
    identity = _identity(args)
    sender = str(identity.sui_address)
    ledger = _ledger(args, create=False)
    try:
        ledger.transfer(identity, args.address, amount)
        balance = ledger.balance(sender)
    finally:
        ledger.close()
    _emit(
        args,
        {"from": sender, "to": args.address, "sent_mist": amount, "balance_mist": balance},
    )
    return 0


# -- connections -----------------------------------------------------------------------


def _report(report: ConnectionReport, as_server: bool) -> dict[str, Any]:
    tc, escrow = report.connection, report.escrow
    return {
        "connection": tc.id,
        "host": tc.host,
        "port": tc.port,
        "peer": tc.client if as_server else tc.server,
        "state": tc.state.label,
        "state_text": report.state_text(),
        "half_closed_by": tc.half_closed_by,
        "half_closed_at_ms": tc.half_closed_at_ms,
        "settled": tc.settled,
        "deposit_mist": escrow.deposited,
        "claimed_mist": escrow.claimed,
        "refunded_mist": escrow.refunded,
        "balance_mist": escrow.balance,
        "claimable_mist": report.claimable,
        "refundable_mist": report.refundable,
        "client_settles_at_ms": report.settles_at_ms,
        "when": report.when(as_server),
    }


def _receipts_path(args: argparse.Namespace) -> Path | None:
    """The receipt store in ``--state-dir`` (None without the option), which must be
    there."""
    state_dir = _given_path(args.state_dir, "--state-dir", "a directory")
    if state_dir is None:
        return None
    from dtp.daemon._state import RECEIPTS_FILE

    path = state_dir / RECEIPTS_FILE
    if not path.is_file():
        raise _CliError(
            f"No receipt store at {path}: give the daemon's state directory "
            "([daemon] state_dir) with --state-dir."
        )
    return path


def _receipts(args: argparse.Namespace) -> Any:
    """The receipt store of ``--state-dir`` opened (None without the option); read
    only, so a running daemon's store may be read."""
    from dtp.payments.receipt_store import ReceiptStore

    path = _receipts_path(args)
    return None if path is None else ReceiptStore(path)


def _latest_receipt(store: Any, connection_id: str) -> Any:
    stored = store.latest(connection_id)
    return None if stored is None else stored.receipt


def _connections(args: argparse.Namespace) -> int:
    as_server = args.host is not None
    address = None if as_server else _address(args)
    store = _receipts(args)
    try:
        ledger = _ledger(args, create=False)
        try:
            if as_server:
                # a mistyped or shortened host ID (0x8a4f) would list none, as a host
                # with no connections does: say that no such host is on this ledger
                ledger.get_host(args.host)
            scan = find_connections(
                ledger,
                client=address,
                host=args.host,
                settled=args.all,
                limit=args.limit,
                receipt_of=None if store is None else partial(_latest_receipt, store),
            )
        finally:
            ledger.close()
    finally:
        if store is not None:
            store.close()
    rows = [_report(r, as_server) for r in scan.reports]
    whose = {"host": args.host} if as_server else {"client": address}
    if args.json:
        _emit(args, {**whose, "connections": rows, "complete": scan.complete})
        return 0
    owner = f"host {args.host}" if as_server else f"client {address}"
    kinds = "connections" if args.all else "connections open or not yet settled"
    print(f"{kinds} of {owner}: {len(rows)}")
    for row in rows:
        claimable = "unknown" if row["claimable_mist"] is None else row["claimable_mist"]
        print(
            f"\n{row['connection']}\n"
            f"  service:    {row['host']}:{row['port']}\n"
            f"  peer:       {row['peer']} ({'client' if as_server else 'server'})\n"
            f"  state:      {row['state_text']}\n"
            f"  deposit:    {row['deposit_mist']} MIST; claimed {row['claimed_mist']}, "
            f"refunded {row['refunded_mist']}\n"
            f"  claimable:  {claimable}; refundable: {row['refundable_mist']}\n"
            f"  when:       {row['when']}"
        )
    if not scan.complete:
        print(
            f"\n(the scan stopped after {scan.events_read} events: pass a larger --limit "
            "to look further)"
        )
    return 0


# -- refund ------------------------------------------------------------------------------


def _refund(args: argparse.Namespace) -> int:
    """One connection's refund by hand: the refund engine's steps (half-close, wait,
    settle; :func:`dtp.payments._refund_engine.refund_step`), gas not weighed -- asked
    for, the deposit is taken back whatever it costs."""
    from dtp.errors import ConnectionStateError, ObjectNotFound
    from dtp.payments._refund_engine import RefundAction, refund_step
    from dtp.payments._refunds import collect_refund

    identity = _identity(args)
    ledger = _ledger(args, create=False)
    try:
        cid = args.connection
        try:
            tc = ledger.get_connection(cid)
        except ObjectNotFound:
            # (the ledger's own words name the Move struct, TransportControl, and not
            # which ledger was asked: the usual slip is the wrong ID or the wrong --ledger)
            raise ObjectNotFound(
                f"No connection {cid} on {_ledger_spec(args).describe()}: `dtp connections` "
                "lists the identity's (pass --ledger for another ledger)."
            ) from None
        if tc.client != identity.sui_address:
            raise _CliError(
                f"Connection {cid} is the client {tc.client}'s, not {identity.sui_address}'s: "
                "only its client is refunded (its server settles with `dtp claim --settle`)."
            )
        now = ledger.clock_ms()
        step = refund_step(tc, now)
        if step.action is RefundAction.FORGET:
            refunded = ledger.get_escrow(tc.escrow).refunded
            _emit(
                args,
                {
                    "connection": cid,
                    "refunded_mist": refunded,
                    "settled": True,
                    "already_settled": True,
                },
            )
            return 0
        if step.action is RefundAction.HALF_CLOSE:
            # (the server may close it meanwhile: its close started the timeout)
            with contextlib.suppress(ConnectionStateError):
                ledger.close_connection(identity, cid)
            tc = ledger.get_connection(cid)
            now = ledger.clock_ms()
            step = refund_step(tc, now)
        at = step.at_ms
        if step.action is RefundAction.WAIT and at is not None:
            if not args.wait:
                # done what can be done now: not a failure (exit 0), but not refunded
                # either: "settled": false, and when, on stdout; the sentence on stderr
                state = "half-closed" if tc.state == ConnectionState.HALF_CLOSED else "closed"
                print(
                    f"dtp: Connection {cid} is {state}; its client may settle from "
                    f"{format_ms(at)} on (in {_duration(at - now)}, ledger time): run "
                    f"`dtp refund {cid}` again then, or pass --wait.",
                    file=sys.stderr,
                )
                _emit(
                    args,
                    {
                        "connection": cid,
                        "refunded_mist": 0,
                        "settled": False,
                        "already_settled": False,
                        "state": state,
                        "settles_at_ms": at,
                    },
                )
                return 0
            _wait_for(ledger, at)
        refunded = collect_refund(ledger, identity, cid)
    finally:
        ledger.close()
    _emit(
        args,
        {"connection": cid, "refunded_mist": refunded, "settled": True, "already_settled": False},
    )
    return 0


def _duration(ms: int) -> str:
    seconds = max(0, -(-ms // 1000))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _wait_for(ledger: Any, at_ms: int) -> None:
    """Sleep until the ledger clock reaches ``at_ms`` (looked at again at least every
    :data:`_WAIT_POLL` seconds), a bar on a terminal meanwhile."""
    from dtp.cli._progress import progress

    print(f"dtp: waiting until {format_ms(at_ms)} (ledger time) to settle", file=sys.stderr)
    start = ledger.clock_ms()
    with progress("waiting for the half-close timeout", total=max(1, at_ms - start)) as shown:
        while (now := ledger.clock_ms()) < at_ms:
            shown.update(now - start, f"{_duration(at_ms - now)} left")
            time.sleep(min(_WAIT_POLL, max(0.05, (at_ms - now) / 1000)))


# -- claim ---------------------------------------------------------------------------------


def _claim(args: argparse.Namespace) -> int:
    from dtp.daemon._state import LOCK_FILE, lock_holder
    from dtp.identity._files import lock_exclusive

    path = _receipts_path(args)
    assert path is not None  # (required)
    state_dir = path.parent
    identity = _identity(args)
    ledger = _ledger(args, create=False)
    try:
        # The daemon's own lock first: a daemon running on this state directory claims
        # its receipts itself (as connections end, and those a crash left at its
        # start), and claiming under it would settle connections it still serves.
        try:
            lock = lock_exclusive(state_dir / LOCK_FILE)
        except BlockingIOError:
            pid = lock_holder(state_dir)
            who = f" (pid {pid})" if pid is not None else ""
            raise _CliError(
                f"A dtp daemon{who} is running on {state_dir}: it claims its receipts "
                "itself; stop it to claim by hand."
            ) from None
        try:
            return _claim_from(args, ledger, identity, path)
        finally:
            if lock is not None:
                os.close(lock)
    finally:
        ledger.close()


def _deleted(
    args: argparse.Namespace, ledger: Any, cid: str, store: Any, done: dict[str, Any]
) -> int:
    """The answer for a connection not on the ledger: settled and then deleted by its
    client (docs/escrow.md §7, "Deletion"), the receipt written off; or never one."""
    from dtp.errors import ObjectNotFound
    from dtp.payments._settlement import deleted_once_settled

    claimed = deleted_once_settled(ledger, cid, store)
    if claimed is None:
        raise ObjectNotFound(f"Connection {cid} is not on the ledger, nor was it settled there.")
    _emit(
        args,
        {
            **done,
            "claimed_mist": 0,
            "total_claimed_mist": claimed,
            "settled": True,
            "already_claimed": claimed >= done["receipt_mist"],
            "already_settled": True,
        },
    )
    return 0


def _claim_from(args: argparse.Namespace, ledger: Any, identity: Any, path: Path) -> int:
    from dtp.errors import ObjectNotFound
    from dtp.ledger._connections import claimable_with
    from dtp.payments._settlement import claim_and_settle
    from dtp.payments.receipt_store import ReceiptStore

    cid = args.connection
    store = ReceiptStore(path)
    try:
        # and the store's run locks: any other live server on it (a paid server of a
        # program of the user's own) may hold its live connections' receipts
        if not store.attach_server():
            store.detach_server()
            raise _CliError(
                f"Another server is using the receipt store {path}: stop it to claim by hand."
            )
        try:
            stored = store.latest(cid)
            if stored is None:
                raise _CliError(f"The receipt store {path} holds no receipt for {cid}.")
            receipt = stored.receipt
            done = {"connection": cid, "receipt_mist": receipt.total_amount}
            try:
                tc = ledger.get_connection(cid)
            except ObjectNotFound:
                return _deleted(args, ledger, cid, store, done)
            if tc.server != identity.sui_address:
                raise _CliError(
                    f"Connection {cid} pays {tc.server}, not {identity.sui_address}: pass "
                    "the daemon's identity file with --identity."
                )
            escrow = ledger.get_escrow(tc.escrow)
            if args.settle and not tc.settled:
                settlement = claim_and_settle(ledger, identity, cid, store, escrow=escrow)
                if settlement is not None:
                    _emit(args, {**done, **_settled(settlement), "claimed_mist": settlement.paid})
                    return 0
                # None: settled since it was read (by its client, once the half-close
                # timeout passed), the receipt written off: said below
                try:
                    tc = ledger.get_connection(cid)
                except ObjectNotFound:  # (and deleted by its client since)
                    return _deleted(args, ledger, cid, store, done)
                escrow = ledger.get_escrow(tc.escrow)
            # a receipt beyond the deposit claims nothing, yet is not done with: the
            # ledger's refusal of the claim below says why
            beyond = receipt.total_amount > escrow.deposited
            if tc.settled or (not beyond and claimable_with(receipt, escrow) == 0):
                # nothing more to get from it: marked, so that no recovery tries again
                store.mark_claimed(cid, max(escrow.claimed, receipt.total_amount))
                seen = receipt.nonce <= escrow.latest_nonce
                _emit(
                    args,
                    {
                        **done,
                        "claimed_mist": 0,
                        "total_claimed_mist": escrow.claimed,
                        "settled": tc.settled,
                        "already_claimed": seen or escrow.claimed >= receipt.total_amount,
                        "already_settled": tc.settled,
                    },
                )
                return 0
            paid = ledger.claim(identity, tc.escrow, stored.receipt)
            store.mark_claimed(cid, stored.receipt.total_amount)
            _emit(
                args,
                {
                    **done,
                    "claimed_mist": paid,
                    "total_claimed_mist": escrow.claimed + paid,
                    "settled": False,
                },
            )
            return 0
        finally:
            store.detach_server()
    finally:
        store.close()


def _settled(settlement: Any) -> dict[str, Any]:
    return {
        "total_claimed_mist": settlement.claimed,
        "refunded_mist": settlement.refunded,
        "settled": True,
    }


# -- registration --------------------------------------------------------------------------


def register(subparsers: Any, leaf: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``balance``, ``fund``, ``transfer``, ``connections``, ``refund`` and ``claim``
    to ``subparsers`` (``leaf(group, name, handler, help)`` adds one with the common
    ledger options)."""
    balance = leaf(subparsers, "balance", _balance, "SUI balance of the identity or ADDRESS")
    balance.add_argument(
        "address", nargs="?", type=_parse_id("address"), help="address (default: the identity's)"
    )

    fund = leaf(subparsers, "fund", _fund, "get test SUI from a faucet (embedded, localnet's)")
    fund.add_argument(
        "address", nargs="?", type=_parse_id("address"), help="address (default: the identity's)"
    )
    fund.add_argument(
        "--amount",
        type=_amount,
        help="MIST, or 1.5sui (default: 10 SUI on the embedded ledger, the faucet's own "
        "amount on Sui, whose faucets give a fixed one)",
    )
    fund.add_argument(
        "--faucet",
        metavar="URL",
        help="on Sui: the faucet to ask (default $DTP_SUI_FAUCET, else the network's: "
        "localnet's http://127.0.0.1:9123, devnet's)",
    )

    transfer = leaf(subparsers, "transfer", _transfer, "send SUI from the identity to an address")
    transfer.add_argument("address", type=_parse_id("address"), help="the recipient's address")
    transfer.add_argument(
        "--amount", type=_amount, required=True, help="MIST, or 1.5sui (the gas is paid besides)"
    )

    conns = leaf(subparsers, "connections", _connections, "list ledger connections")
    conns.add_argument(
        "--host", type=_parse_id("host ID"), help="a host's connections (default: as a client)"
    )
    conns.add_argument("--all", action="store_true", help="settled connections too")
    conns.add_argument(
        "--state-dir",
        help="the host's daemon state directory: what its receipts can claim is shown",
    )
    conns.add_argument(
        "--limit",
        type=_positive,
        default=10_000,
        help="read at most this many of the connections' ConnectionOpened events (default 10000)",
    )

    refund = leaf(subparsers, "refund", _refund, "half-close a connection and get the rest back")
    refund.add_argument("connection", type=_parse_id("connection ID"), help="connection ID")
    refund.add_argument(
        "--wait", action="store_true", help="wait for the half-close timeout, then settle"
    )

    claim = leaf(subparsers, "claim", _claim, "claim a connection's latest stored receipt")
    claim.add_argument("connection", type=_parse_id("connection ID"), help="connection ID")
    claim.add_argument(
        "--state-dir", required=True, help="the daemon's state directory (its receipt store)"
    )
    claim.add_argument("--settle", action="store_true", help="settle the connection afterwards")
