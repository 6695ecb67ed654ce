"""The rules of ``dtp::transport_control``: a connection's open, close, finalize and settle."""

from __future__ import annotations

from typing import Any

from dtp.errors import ChainError, move_error
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS
from dtp.ledger.local.rules._common import OBJECT_TYPES, SHARED, Exec, Obj, rule
from dtp.ledger.local.rules._escrow import (
    assert_spending_cap,
    claim_loaded,
    refund_remainder,
    reserve,
)
from dtp.ledger.local.rules._host import admit, new_sla


@rule("transport_control::open_with_session_key")
def tc_open_with_session_key(
    x: Exec, host_id: str, port: int, cap_id: str, public_key: bytes, amount: int
) -> str:
    """``transport_control::open_with_session_key``: ``open`` whose receipt key is a
    session key the sender chose (docs/escrow.md §6.2)."""
    return tc_open(x, host_id, port, cap_id, public_key, amount, key_of_client=False)


@rule("transport_control::open")
def tc_open(
    x: Exec,
    host_id: str,
    port: int,
    cap_id: str,
    public_key: bytes,
    amount: int,
    *,
    subscription: str | None = None,
    sponsor: str | None = None,
    key_of_client: bool = True,
) -> str:
    """``transport_control::open``; with ``subscription`` it is ``open_prepaid`` (prices
    and minimum deposit all zero, the service's half-close timeout kept, the
    subscription recorded; used by ``subscription::open_connection``); with ``sponsor``
    it is ``open_sponsored`` (the lane recorded; used by ``sponsor::open_connection``); with
    ``key_of_client=False`` it is ``open_with_session_key`` (the key need not be the
    sender's, docs/escrow.md §6.2). The host is only read."""
    host = x.load(host_id, "Host")
    cap = x.load(cap_id, "SpendingCap")
    x.take_coin(amount)
    client = x.sender
    if cap["owner"] != client:
        raise move_error("spending_cap", "ENotCapOwner", f"cap {cap_id} belongs to {cap['owner']}")
    sla = admit(host, host_id, port, client)
    if subscription is not None:
        sla = new_sla(0, 0, 0, sla["half_close_timeout_ms"])
    if amount < sla["min_deposit"]:
        raise move_error(
            "transport_control",
            "EInsufficientDeposit",
            f"{amount} MIST < {sla['min_deposit']} for port {port} of host {host_id}",
        )
    connection = x.new_id()
    server = host["authority"]
    if len(public_key) != 32:
        raise move_error("escrow", "EInvalidPublicKey", f"got {len(public_key)} bytes")
    if key_of_client and sui_address_from_public_key(public_key) != client:
        raise move_error("escrow", "EKeyMismatch", f"the key's address is not {client}")
    escrow_id = x.create(
        "Escrow",
        SHARED,
        {
            "connection": connection,
            "client": client,
            "client_public_key": public_key,
            "server": server,
            "spending_cap": cap_id,
            "reserved": amount,
            "claim_epoch": x.epoch,
            "claimed_in_epoch": 0,
            "sla": sla,
            "funds": amount,
            "deposited": amount,
            "claimed": 0,
            "refunded": 0,
            "latest_nonce": 0,
            "settled": False,
        },
    )
    # the whole deposit, so that no claim on it can be refused by the cap later (a
    # deposit of 0, a subscribed open's, always fits)
    reserve(x, cap, cap_id, amount)
    x.objects[connection] = Obj(
        connection,
        OBJECT_TYPES["TransportControl"],
        SHARED,
        0,
        {
            "version": x.code_version,
            "host": host_id,
            "port": port,
            "client": client,
            "server": server,
            "sla": sla,
            "escrow": escrow_id,
            "spending_cap": cap_id,
            "state": {"kind": "Open"},
            "opened_at_ms": x.now_ms,
            "settled": False,
            "subscription": subscription,
            "sponsor": sponsor,
        },
        None,
    )
    x.emit(
        "transport_control",
        "ConnectionOpened",
        {
            "connection": connection,
            "host": host_id,
            "port": port,
            "client": client,
            "server": server,
            "escrow": escrow_id,
            "deposit": amount,
            "sla": sla,
            "at_ms": x.now_ms,
        },
    )
    return connection


def assert_participant(x: Exec, tc: dict[str, Any], tc_id: str) -> None:
    if x.sender not in (tc["client"], tc["server"]):
        raise move_error(
            "transport_control",
            "ENotParticipant",
            f"{x.sender} is neither client nor server of connection {tc_id}",
        )


def _close_fully(x: Exec, tc: dict[str, Any], tc_id: str, half_closed_at: int) -> None:
    tc["state"] = {"kind": "Closed", "half_closed_at_ms": half_closed_at, "closed_at_ms": x.now_ms}
    x.emit(
        "transport_control",
        "ConnectionClosed",
        {"connection": tc_id, "by": x.sender, "at_ms": x.now_ms},
    )


def closed_error(tc_id: str) -> ChainError:
    return move_error("transport_control", "EConnectionClosed", f"connection {tc_id}")


@rule("transport_control::close")
def tc_close(x: Exec, tc_id: str) -> None:
    tc = x.load(tc_id, "TransportControl")
    assert_participant(x, tc, tc_id)
    state = tc["state"]
    if state["kind"] == "Open":
        tc["state"] = {"kind": "HalfClosed", "by": x.sender, "at_ms": x.now_ms}
        x.emit(
            "transport_control",
            "ConnectionHalfClosed",
            {"connection": tc_id, "by": x.sender, "at_ms": x.now_ms},
        )
    elif state["kind"] == "HalfClosed":
        if state["by"] == x.sender:
            raise move_error(
                "transport_control", "EAlreadyHalfClosed", f"{x.sender} on connection {tc_id}"
            )
        _close_fully(x, tc, tc_id, state["at_ms"])
    else:
        raise closed_error(tc_id)


@rule("transport_control::finalize")
def tc_finalize(x: Exec, tc_id: str) -> None:
    tc = x.load(tc_id, "TransportControl")
    assert_participant(x, tc, tc_id)
    state = tc["state"]
    if state["kind"] == "Open":
        raise move_error("transport_control", "ENotHalfClosed", f"connection {tc_id} is open")
    if state["kind"] == "HalfClosed":
        _assert_timeout_passed(x, tc, tc_id, state["at_ms"])
        _close_fully(x, tc, tc_id, state["at_ms"])
    else:
        raise closed_error(tc_id)


def half_close_timeout_ms(tc: dict[str, Any]) -> int:
    """``transport_control::half_close_timeout_ms``: the connection's own, its SLA's (the
    default for a connection a file kept from before the timeout was a term)."""
    return int(tc["sla"].get("half_close_timeout_ms", HALF_CLOSE_TIMEOUT_MS))


def _assert_timeout_passed(x: Exec, tc: dict[str, Any], tc_id: str, since: int) -> None:
    timeout = half_close_timeout_ms(tc)
    if x.now_ms < since + timeout:
        raise move_error(
            "transport_control",
            "ETimeoutNotReached",
            f"connection {tc_id} half-closed at {since} ms, now {x.now_ms} ms, timeout "
            f"{timeout} ms",
        )


def _assert_settleable(
    tc: dict[str, Any], tc_id: str, escrow: dict[str, Any], escrow_id: str, cap_id: str
) -> None:
    """Not settled yet, ``escrow_id`` its escrow, ``cap_id`` the escrow's spending cap."""
    if tc["settled"]:
        raise move_error("transport_control", "EAlreadySettled", f"connection {tc_id}")
    if escrow_id != tc["escrow"]:
        raise move_error(
            "transport_control", "EWrongEscrow", f"connection {tc_id} uses escrow {tc['escrow']}"
        )
    assert_spending_cap(escrow, escrow_id, cap_id)


def _settle(
    x: Exec,
    tc: dict[str, Any],
    tc_id: str,
    escrow: tuple[dict[str, Any], str],
    cap: tuple[dict[str, Any], str],
) -> int:
    """The settlement of a closed connection: what its escrow holds unclaimed goes back
    to the client (returned), and ConnectionSettled says so."""
    refunded = refund_remainder(x, escrow[0], escrow[1], cap[0], cap[1])
    tc["settled"] = True
    x.emit(
        "transport_control",
        "ConnectionSettled",
        {
            "connection": tc_id,
            "escrow": tc["escrow"],
            "by": x.sender,
            "claimed": escrow[0]["claimed"],
            "refunded": refunded,
        },
    )
    return refunded


@rule("transport_control::settle")
def tc_settle(x: Exec, tc_id: str, escrow_id: str, cap_id: str) -> int:
    tc = x.load(tc_id, "TransportControl")
    escrow = x.load(escrow_id, "Escrow")
    cap = x.load(cap_id, "SpendingCap")
    assert_participant(x, tc, tc_id)
    _assert_settleable(tc, tc_id, escrow, escrow_id, cap_id)
    return _settle_checked(x, tc, tc_id, (escrow, escrow_id), (cap, cap_id))


def _settle_checked(
    x: Exec,
    tc: dict[str, Any],
    tc_id: str,
    escrow: tuple[dict[str, Any], str],
    cap: tuple[dict[str, Any], str],
) -> int:
    """:func:`tc_settle` after its checks of the participant and the escrow and cap."""
    is_server = x.sender == tc["server"]
    state = tc["state"]
    if state["kind"] == "Open":
        # the server may close and settle at once (it forgoes further claims); the
        # client must half-close and leave the server its timeout to claim
        if not is_server:
            raise move_error("transport_control", "EConnectionOpen", f"connection {tc_id}")
        _close_fully(x, tc, tc_id, x.now_ms)
    elif state["kind"] == "HalfClosed":
        if not is_server:
            _assert_timeout_passed(x, tc, tc_id, state["at_ms"])
        _close_fully(x, tc, tc_id, state["at_ms"])
    elif not is_server:
        _assert_timeout_passed(x, tc, tc_id, state["half_closed_at_ms"])
    return _settle(x, tc, tc_id, escrow, cap)


def tc_end_prepaid(x: Exec, tc: dict[str, Any], tc_id: str, escrow_id: str, cap_id: str) -> int:
    """``transport_control::end_prepaid`` (by ``subscription::end_connection``, which
    checked the subscription): closed in any state but settled, and settled at once by
    whoever sends it; the whole escrow goes back to the client."""
    escrow = x.load(escrow_id, "Escrow")
    cap = x.load(cap_id, "SpendingCap")
    _assert_settleable(tc, tc_id, escrow, escrow_id, cap_id)
    state = tc["state"]
    if state["kind"] == "Open":
        _close_fully(x, tc, tc_id, x.now_ms)
    elif state["kind"] == "HalfClosed":
        _close_fully(x, tc, tc_id, state["at_ms"])
    return _settle(x, tc, tc_id, (escrow, escrow_id), (cap, cap_id))


@rule("transport_control::settle_with_receipt")
def tc_settle_with_receipt(x: Exec, tc_id: str, escrow_id: str, cap_id: str, *receipt: Any) -> int:
    """The claim of ``receipt`` (its five fields, as ``escrow::claim`` takes them), then
    the settlement."""
    tc = x.load(tc_id, "TransportControl")
    escrow = x.load(escrow_id, "Escrow")
    cap = x.load(cap_id, "SpendingCap")
    _assert_settleable(tc, tc_id, escrow, escrow_id, cap_id)
    paid = claim_loaded(x, escrow, escrow_id, *receipt)
    # tc_settle on the objects loaded: its loads and _assert_settleable would repeat
    # those above, which the claim cannot have changed (it writes the escrow's counts
    # and funds, not its cap, nor the connection)
    assert_participant(x, tc, tc_id)
    _settle_checked(x, tc, tc_id, (escrow, escrow_id), (cap, cap_id))
    return paid
