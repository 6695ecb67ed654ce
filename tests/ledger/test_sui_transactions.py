"""SuiLedger: golden transaction bytes for every builder, BCS layouts against LocalLedger,
effects/abort parsing, configuration, offline behaviour, and live tests: on the Sui node
configured by DTP_SUI_RPC, DTP_SUI_PACKAGE and a funded DTP_SUI_KEY when they are set,
otherwise on the node stand-in of dtp/testing/sui_node (which proves the flow, not Sui).

Regenerate the golden vectors (only after a deliberate change to the builders)::

    python -m tests.ledger.test_sui_transactions --regenerate
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest
from pysui.sui.sui_bcs import bcs

from dtp.errors import (
    ChainError,
    ConnectionStateError,
    FirewallDenied,
    InsufficientFunds,
    InvalidArgument,
    InvalidObjectId,
    ObjectNotFound,
    WrongSigner,
)
from dtp.identity.keys import HostIdentity, verify_transaction
from dtp.ledger._objects import Broadcast, ConnectionState, Host, Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import (
    SuiConfig,
    SuiConfigError,
    SuiLedger,
    event_from_proto,
    execution_error,
    parse_executed,
)
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._client import LedgerUnavailable, parse_endpoint
from dtp.ledger.sui._codec import (
    EVENT_LAYOUTS,
    OBJECT_LAYOUTS,
    BcsDecodeError,
    decode,
    decode_event,
    decode_object,
    encode_event,
    encode_object,
    service_to_fields,
)
from dtp.ledger.sui._tx import CLOCK_ID, GasData, SharedRef, TxContext
from dtp.payments.receipts import Receipt, fee
from tests.ledger.sui_tx_cases import (
    CAP,
    CASES,
    CONN,
    CTX,
    ESCROW,
    GAS_COIN,
    GAS_COIN_2,
    HOST,
    OTHER,
    OWN,
    PACKAGE,
    PIPE,
    SENDER,
    SLA,
    S,
)
from tests.support.golden_tx import regenerate_main, write_golden
from tests.support.paths import GOLDEN as GOLDEN_DIR
from tests.support.ports import free_port
from tests.support.sui_network import SuiNetwork, transfer

GOLDEN = GOLDEN_DIR / "sui_transactions.json"

# -- deterministic inputs -----------------------------------------------------------------------


def build_all() -> dict[str, str]:
    return {name: sui_tx.BUILDERS[name](CTX, *args).hex() for name, (args, _) in CASES.items()}


def load_golden() -> dict[str, str]:
    data = json.loads(GOLDEN.read_text())
    return dict(data["transactions"])


# -- golden vectors -------------------------------------------------------------------------------


def test_every_state_changing_method_has_a_builder_and_a_case() -> None:
    from dtp.ledger.interface import Ledger

    readers = {
        "get_object", "get_host", "get_cap", "get_connection", "get_escrow", "get_pipe",
        "get_broadcast", "balance", "clock_ms", "epoch", "events", "wait_events",
        "is_allowed", "is_denied", "firewall_list", "package_id",
    }  # fmt: skip
    methods = {n for n in Ledger.__abstractmethods__ if n not in readers}
    assert methods == set(sui_tx.BUILDERS) == set(sui_tx.TARGETS) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_bytes(name: str) -> None:
    args, _ = CASES[name]
    built = sui_tx.BUILDERS[name](CTX, *args)
    golden = load_golden()
    assert name in golden, (
        f"no golden vector for {name}; run "
        "python -m tests.ledger.test_sui_transactions --regenerate"
    )
    assert built.hex() == golden[name]


def _kind(arg: Any, inputs: list[Any]) -> str:
    if arg.enum_name == "Input":
        call_arg = inputs[arg.value]
        if call_arg.enum_name == "Pure":
            return "pure"
        return S if call_arg.value.enum_name == "SharedObject" else OWN
    if arg.enum_name == "NestedResult":
        return "coin"
    return "result"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_bytes_decode(name: str) -> None:
    _, expect = CASES[name]
    raw = bytes.fromhex(load_golden()[name])
    data = bcs.TransactionData.from_bytes(raw).value
    assert data.Sender.to_address_str() == SENDER.sui_address
    gas = data.GasData
    assert [p.ObjectID.to_address_str() for p in gas.Payment] == [
        GAS_COIN.object_id,
        GAS_COIN_2.object_id,
    ]
    assert (gas.Price, gas.Budget, gas.Owner.to_address_str()) == (
        1000,
        10_000_000,
        SENDER.sui_address,
    )
    assert data.TransactionExpiration.enum_name == "None"
    ptx = data.TransactionKind.value
    inputs = list(ptx.Inputs)
    commands = list(ptx.Command)
    calls = [c.value for c in commands if c.enum_name == "MoveCall"]
    splits = [c.value for c in commands if c.enum_name == "SplitCoin"]
    assert len(calls) == expect.get("calls", 1)
    assert len(splits) == expect.get("splits", 0)
    assert not [c for c in commands if c.enum_name not in ("MoveCall", "SplitCoin")]
    for split in splits:
        assert split.FromCoin.enum_name == "GasCoin"
    main = calls[-1]
    module, function = sui_tx.TARGETS[name]
    assert (main.Package.to_address_str(), main.Module, main.Function) == (
        PACKAGE,
        module,
        function,
    )
    assert list(main.Type_Arguments) == []
    assert [_kind(a, inputs) for a in main.Arguments] == expect["args"]
    if expect.get("calls", 1) == 2:
        assert (calls[0].Module, calls[0].Function) == ("host", "new_sla")
    pure = [bytes(i.value).hex() for i in inputs if i.enum_name == "Pure"]
    assert pure == expect["pure"]
    shared = {
        i.value.value.ObjectID.to_address_str(): (
            i.value.value.SequenceNumber,
            i.value.value.Mutable,
        )
        for i in inputs
        if i.enum_name == "Object" and i.value.enum_name == "SharedObject"
    }
    for object_id, mutable in expect.get("mutable", {}).items():
        assert shared[object_id][1] is mutable
    if CLOCK_ID in shared:
        assert shared[CLOCK_ID] == (1, False)
    # Transaction bytes sign with Sui intent signing and verify against the sender.
    assert verify_transaction(raw, SENDER.sign_transaction(raw)) == SENDER.sui_address


def test_owned_object_reference_is_exact() -> None:
    data = bcs.TransactionData.from_bytes(bytes.fromhex(load_golden()["pipe_send"])).value
    (obj,) = [i for i in data.TransactionKind.value.Inputs if i.enum_name == "Object"]
    ref = obj.value.value
    assert obj.value.enum_name == "ImmOrOwnedObject"
    assert (ref.ObjectID.to_address_str(), ref.SequenceNumber) == (PIPE.object_id, 21)
    assert ref.ObjectDigest.to_digest_str() == PIPE.digest


def test_shared_object_used_twice_is_one_mutable_input() -> None:
    # A wrong cap that is the escrow itself: Sui allows each object once per transaction.
    raw = sui_tx.settle(CTX, CONN, ESCROW, SharedRef(ESCROW.object_id, 13))
    inputs = bcs.TransactionData.from_bytes(raw).value.TransactionKind.value.Inputs
    objects = [i for i in inputs if i.enum_name == "Object"]
    ids = [o.value.value.ObjectID.to_address_str() for o in objects]
    assert sorted(ids) == sorted([CONN.object_id, ESCROW.object_id, CLOCK_ID])
    escrow = objects[ids.index(ESCROW.object_id)]
    assert escrow.value.value.Mutable is True
    raw = sui_tx.create_pipe(CTX, CONN, 1)
    (obj,) = [
        i for i in bcs.TransactionData.from_bytes(raw).value.TransactionKind.value.Inputs
        if i.enum_name == "Object"
    ]  # fmt: skip
    assert obj.value.value.Mutable is False


@pytest.mark.parametrize(
    ("name", "args", "exc"),
    [
        ("create_spending_cap", (-1,), InvalidArgument),
        ("create_spending_cap", (2**64,), InvalidArgument),
        ("create_spending_cap", (True,), InvalidArgument),
        ("remove_service", (HOST, 65536), InvalidArgument),
        ("set_firewall_mode", (HOST, 256), InvalidArgument),
        ("allow", (HOST, "0xzz"), InvalidObjectId),
        ("allow", (HOST, "12"), InvalidObjectId),
        ("top_up", (ESCROW, CAP, 2**64), InvalidArgument),
        ("set_endpoints", (HOST, "tcp://not-a-list"), InvalidArgument),
    ],
)
def test_builders_reject_bad_arguments(name: str, args: tuple[Any, ...], exc: type) -> None:
    with pytest.raises(exc):
        sui_tx.BUILDERS[name](CTX, *args)


def test_no_gas_coin_is_refused() -> None:
    ctx = TxContext(PACKAGE, SENDER.sui_address, GasData((), 1000, 1))
    with pytest.raises(InvalidArgument):
        sui_tx.create_spending_cap(ctx, 1)


# -- BCS layouts against LocalLedger --------------------------------------------------------------


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


def _local_world() -> tuple[LocalLedger, dict[str, str]]:
    server, client, listener = ident(0x33), ident(0x11), ident(0x44)
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    ledger.faucet(client.sui_address, 1_000_000)
    ledger.faucet(listener.sui_address, 1_000_000)
    host = ledger.create_host(server, b"\x01" * 32, ["tcp://127.0.0.1:7000"])
    ledger.add_service(server, host, 7, "raw", SLA, 4)
    ledger.update_service(server, host, 7, SLA, 5)
    ledger.add_service(server, host, 8, "http", Sla(1, 1, 1))
    ledger.remove_service(server, host, 8)
    ledger.set_firewall_mode(server, host, 1)
    ledger.allow(server, host, client.sui_address)
    ledger.deny(server, host, listener.sui_address)
    ledger.set_client_limits(server, host, 3, 1000, 10)
    cap = ledger.create_spending_cap(client, 1_000_000)
    ledger.set_max_per_epoch(client, cap, 900_000)
    opened = ledger.open_connection(client, host, 7, cap, 5_000)
    ledger.top_up(client, opened.escrow_id, 100)
    receipt = Receipt(
        ledger.receipt_scope(opened.connection_id), 4096, 2, fee(SLA, 4096, 2), 1
    ).sign(client)
    ledger.claim(server, opened.escrow_id, receipt)
    pipe = ledger.create_pipe(client, opened.connection_id, 2)
    ledger.pipe_send(client, pipe, 1, b"data")
    ledger.pipe_sync(client, pipe, 1, 1)
    ids = {"host": host, "cap": cap, "conn": opened.connection_id, "escrow": opened.escrow_id}
    ids["pipe"] = pipe
    ledger.close_connection(client, opened.connection_id)
    ids["tc_half"] = opened.connection_id
    b = ledger.create_broadcast(server, "news", 10, 1_000)
    ledger.broadcast_contribute(listener, b, 55)
    ledger.broadcast_transmit(server, b, b"on air")
    ids["broadcast"] = b
    return ledger, ids


def test_event_layouts_match_local_ledger_events() -> None:
    ledger, ids = _local_world()
    server, client, listener = ident(0x33), ident(0x11), ident(0x44)
    ledger.broadcast_heartbeat(server, ids["broadcast"])
    ledger.advance_clock(5_000)
    ledger.broadcast_claim(server, ids["broadcast"])  # slots 0-4 paid (BroadcastSlotsPaid)
    ledger.advance_clock(2_000)
    ledger.broadcast_cancel(server, ids["broadcast"])  # 5 MIST cover no slot: skipped
    ledger.broadcast_withdraw(listener, ids["broadcast"])
    ledger.close_connection(server, ids["conn"])
    ledger.settle(server, ids["conn"])
    ledger.destroy_pipe(client, ids["pipe"])
    ledger.destroy_connection(client, ids["conn"])
    # a Host of an older package version (as Move's set_version_for_testing makes one),
    # migrated: version::ObjectMigrated
    ledger._db.execute(
        "UPDATE objects SET data = json_set(data, '$.version', 0) WHERE id = ?", (ids["host"],)
    )
    ledger.create_admin_cap(server)
    assert ledger.migrate(server, ids["host"]) == 1
    events, _ = ledger.events()
    seen = set()
    for event in events:
        key = (event.module, event.name)
        assert key in EVENT_LAYOUTS, key
        layout = EVENT_LAYOUTS[key]
        assert {f for f, _ in layout[1]} == set(event.fields), key
        raw = encode_event(event.module, event.name, event.fields)
        assert decode_event(event.module, event.name, raw) == dict(event.fields)
        seen.add(key)
    # Every event layout was exercised.
    assert set(EVENT_LAYOUTS) == seen


def test_object_layouts_round_trip_local_objects() -> None:
    ledger, ids = _local_world()
    objects = [
        ledger.get_host(ids["host"]),
        ledger.get_cap(ids["cap"]),
        ledger.get_connection(ids["conn"]),
        ledger.get_escrow(ids["escrow"]),
        ledger.get_pipe(ids["pipe"]),
        ledger.get_broadcast(ids["broadcast"]),
    ]
    assert objects[2].state == ConnectionState.HALF_CLOSED
    for obj in objects:
        struct_name = type(obj).__name__
        raw = encode_object(obj, "0x" + "77" * 32)
        # a Table's entries are objects beside it, read and passed in
        entries: dict[Any, Any] = {}
        if isinstance(obj, Broadcast):
            entries = {key: dataclasses.asdict(stake) for key, stake in obj.stakes.items()}
        if isinstance(obj, Host):
            entries = {port: service_to_fields(s) for port, s in obj.services.items()}
        assert decode_object(struct_name, obj.version, raw, entries) == obj
    ledger.close_connection(ident(0x33), ids["conn"])
    closed = ledger.get_connection(ids["conn"])
    assert closed.state == ConnectionState.CLOSED
    assert decode_object("TransportControl", closed.version, encode_object(closed)) == closed
    assert set(OBJECT_LAYOUTS) == {
        "Host",
        "SpendingCap",
        "TransportControl",
        "Escrow",
        "Pipe",
        "Broadcast",
    }


def test_decode_rejects_bad_bcs() -> None:
    with pytest.raises(BcsDecodeError):
        decode(("vec", "u64"), b"\x02" + b"\x00" * 8)
    with pytest.raises(BcsDecodeError):
        decode("u64", b"\x00" * 9)
    with pytest.raises(BcsDecodeError):
        decode("bool", b"\x02")
    with pytest.raises(BcsDecodeError):
        decode_event("host", "Nope", b"")


# -- parsing node answers --------------------------------------------------------------------------


def _abort(
    code: int, *, clever: int | None = None, package: str = PACKAGE, module: str = "host"
) -> Any:
    return sui_prot.ExecutionError(
        description="MoveAbort",
        kind=sui_prot.ExecutionErrorExecutionErrorKind.MOVE_ABORT,
        abort=sui_prot.MoveAbort(
            abort_code=code,
            location=sui_prot.MoveLocation(package=package, module=module),
            clever_error=None if clever is None else sui_prot.CleverError(error_code=clever),
        ),
    )


def test_move_aborts_map_like_local_ledger() -> None:
    exc = execution_error(_abort(8), [PACKAGE], "open")
    assert isinstance(exc, FirewallDenied) and exc.qualified_name == "host::EFirewallDenied"
    clever_code = (1 << 63) | (52 << 48) | (123 << 32) | 7
    exc = execution_error(_abort(clever_code, module="transport_control"), [PACKAGE], "close")
    assert isinstance(exc, ConnectionStateError) and exc.name == "EConnectionClosed"
    exc = execution_error(_abort(clever_code, clever=33, module="escrow"), [PACKAGE], "claim")
    assert exc.name == "EReplayedReceipt"
    foreign = execution_error(_abort(2, package="0x2", module="balance"), [PACKAGE], "x")
    assert type(foreign) is ChainError and foreign.name == "MoveAbort"
    # named by its full ID, as the local ledger names it, however short the node wrote it
    assert f"0x{'0' * 63}2::balance " in str(foreign)
    short = sui_prot.ExecutionError(
        kind=sui_prot.ExecutionErrorExecutionErrorKind.INSUFFICIENT_COIN_BALANCE
    )
    exc = execution_error(short, [PACKAGE], "open")
    assert isinstance(exc, InsufficientFunds) and exc.name == "InsufficientCoinBalance"


def _event(module: str, name: str, fields: dict[str, Any]) -> Any:
    return sui_prot.Event(
        package_id=PACKAGE,
        module=module,
        sender=SENDER.sui_address,
        event_type=f"{PACKAGE}::{module}::{name}",
        contents=sui_prot.Bcs(name=name, value=encode_event(module, name, fields)),
        transaction_digest="Digest111",
    )


def test_parse_executed_effects_and_events() -> None:
    conn, escrow = "0x" + "c1" * 32, "0x" + "c2" * 32
    opened = {
        "connection": conn, "host": HOST.object_id, "port": 7, "client": SENDER.sui_address,
        "server": OTHER, "escrow": escrow, "deposit": 5000, "sla": SLA.to_fields(), "at_ms": 9,
    }  # fmt: skip
    created = sui_prot.ChangedObjectIdOperation.CREATED
    executed = sui_prot.ExecutedTransaction(
        digest="Digest111",
        effects=sui_prot.TransactionEffects(
            status=sui_prot.ExecutionStatus(success=True),
            gas_used=sui_prot.GasCostSummary(
                computation_cost=1000, storage_cost=5000, storage_rebate=700
            ),
            changed_objects=[
                sui_prot.ChangedObject(
                    object_id=conn,
                    id_operation=created,
                    object_type=f"{PACKAGE}::transport_control::TransportControl",
                ),
                sui_prot.ChangedObject(
                    object_id=escrow, id_operation=created, object_type=f"{PACKAGE}::escrow::Escrow"
                ),
                sui_prot.ChangedObject(
                    object_id="0x" + "c3" * 32,
                    id_operation=created,
                    object_type="0x2::dynamic_field::Field<address, u64>",
                ),
                sui_prot.ChangedObject(
                    object_id=HOST.object_id,
                    id_operation=sui_prot.ChangedObjectIdOperation.NONE,
                    object_type=f"{PACKAGE}::host::Host",
                ),
            ],
        ),
        events=sui_prot.TransactionEvents(
            events=[
                _event("transport_control", "ConnectionOpened", opened),
                sui_prot.Event(event_type="0x2::other::Thing", contents=sui_prot.Bcs(value=b"")),
            ]
        ),
    )
    out = parse_executed(executed, [PACKAGE], "open")
    assert out.created_of("TransportControl") == conn
    assert out.created_of("Escrow") == escrow
    assert out.created_of("Host") is None
    assert out.gas_cost == 5300
    (event,) = out.events
    assert event.type == "dtp::transport_control::ConnectionOpened"
    assert event["escrow"] == escrow and event["sla"] == SLA.to_fields()
    assert event.sender == SENDER.sui_address and event.tx_digest == "Digest111"

    failed = sui_prot.ExecutedTransaction(
        digest="D",
        effects=sui_prot.TransactionEffects(
            status=sui_prot.ExecutionStatus(success=False, error=_abort(8))
        ),
    )
    with pytest.raises(FirewallDenied):
        parse_executed(failed, [PACKAGE], "open")


def test_event_from_other_package_is_ignored() -> None:
    ev = _event("host", "HostCreated", {"host": HOST.object_id, "authority": OTHER})
    assert event_from_proto(ev, ["0x" + "ee" * 32]) is None
    got = event_from_proto(ev, [PACKAGE], "ab01", 42)
    assert got is not None and got.cursor == "ab01" and got.timestamp_ms == 42


# -- configuration and offline behaviour -----------------------------------------------------------


def test_parse_endpoint() -> None:
    assert parse_endpoint("https://fullnode.testnet.sui.io:443") == (
        "fullnode.testnet.sui.io",
        443,
        True,
    )
    assert parse_endpoint("http://127.0.0.1:9000") == ("127.0.0.1", 9000, False)
    assert parse_endpoint("fullnode.devnet.sui.io:443") == ("fullnode.devnet.sui.io", 443, True)
    assert parse_endpoint("http://localhost") == ("localhost", 9000, False)
    with pytest.raises(ValueError):
        parse_endpoint("ftp://x")


def test_from_env_requires_rpc_and_package() -> None:
    with pytest.raises(SuiConfigError) as info:
        SuiLedger.from_env({})
    assert "DTP_SUI_RPC and DTP_SUI_PACKAGE" in str(info.value)
    with pytest.raises(SuiConfigError, match="DTP_SUI_PACKAGE"):
        SuiLedger.from_env({"DTP_SUI_RPC": "http://127.0.0.1:9000", "DTP_SUI_PACKAGE": "nope"})
    with pytest.raises(SuiConfigError, match="DTP_SUI_RPC"):
        SuiLedger.from_env({"DTP_SUI_RPC": "ftp://x", "DTP_SUI_PACKAGE": PACKAGE})
    with pytest.raises(SuiConfigError, match="DTP_SUI_KEY"):
        SuiLedger.from_env(
            {"DTP_SUI_RPC": "http://127.0.0.1:9000", "DTP_SUI_PACKAGE": PACKAGE, "DTP_SUI_KEY": "x"}
        )


def test_from_env_key_is_not_kept_as_text() -> None:
    keystring = SENDER.to_sui_keystring()
    ledger = SuiLedger.from_env(
        {
            "DTP_SUI_RPC": "http://127.0.0.1:9000",
            "DTP_SUI_PACKAGE": "0xd7",
            "DTP_SUI_KEY": keystring,
        }
    )
    assert ledger.package == "0x" + "00" * 31 + "d7"
    assert ledger.default_signer is not None
    assert ledger.default_signer.sui_address == SENDER.sui_address
    assert keystring not in repr(ledger.config) and keystring not in repr(ledger)
    ledger.close()


def test_unreachable_node_raises_ledger_unavailable() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    ledger = SuiLedger(SuiConfig(endpoint, PACKAGE, timeout=5))
    assert ledger._node._thread is None and ledger._node._channel is None  # no I/O yet
    with pytest.raises(LedgerUnavailable) as info:
        ledger.balance(OTHER)
    assert endpoint in str(info.value) and info.value.module == "sui"
    assert isinstance(info.value, ChainError)
    with pytest.raises(LedgerUnavailable):
        ledger.create_spending_cap(SENDER, 5)
    with pytest.raises(LedgerUnavailable):
        ledger.get_host(HOST.object_id)
    # Bad arguments fail before any network access.
    with pytest.raises(InvalidArgument):
        ledger.create_spending_cap(SENDER, -1)
    ledger.close()
    ledger.close()


# -- live tests (a real Sui node when configured, else the stand-in) -----------------------------


@pytest.fixture
def sui(sui_network: SuiNetwork) -> SuiLedger:
    """SuiLedger on the configured node, or on the stand-in, with a funded default
    signer (tests/support/sui_network.py)."""
    return sui_network.ledger(sui_network.funder)


def test_live_connection_lifecycle(sui: SuiLedger) -> None:
    funder = sui.default_signer
    assert funder is not None
    server, client = HostIdentity.generate(), HostIdentity.generate()
    transfer(sui, funder, server.sui_address, 300_000_000)
    transfer(sui, funder, client.sui_address, 300_000_000)

    host = sui.create_host(server, server.noise_public, ["tcp://203.0.113.7:7000"])
    sui.add_service(server, host, 7, "raw", SLA)
    h = sui.get_host(host)
    assert h.authority == server.sui_address and h.services[7].sla == SLA

    cap = sui.create_spending_cap(client, 1_000_000)
    before = sui.balance(client.sui_address)
    opened = sui.open_connection(client, host, 7, cap, 5_000)
    gas = sui.last_outcome.gas_cost if sui.last_outcome else 0
    assert sui.balance(client.sui_address) == before - 5_000 - gas
    escrow = sui.get_escrow(opened.escrow_id)
    assert (escrow.balance, escrow.deposited, escrow.connection) == (
        5_000,
        5_000,
        opened.connection_id,
    )
    # the whole deposit is reserved on the cap at the open
    assert sui.get_cap(cap).remaining(sui.epoch()) == 1_000_000 - 5_000

    amount = fee(SLA, 10_000, 4)
    receipt = Receipt(sui.receipt_scope(opened.connection_id), 10_000, 4, amount, 1).sign(client)
    server_before = sui.balance(server.sui_address)
    assert sui.claim(server, opened.escrow_id, receipt) == amount
    gas = sui.last_outcome.gas_cost if sui.last_outcome else 0
    assert sui.balance(server.sui_address) == server_before + amount - gas
    with pytest.raises(ChainError) as info:
        sui.claim(server, opened.escrow_id, receipt)
    assert info.value.name == "EReplayedReceipt"

    sui.close_connection(client, opened.connection_id)
    assert sui.get_connection(opened.connection_id).state == ConnectionState.HALF_CLOSED
    sui.close_connection(server, opened.connection_id)
    assert sui.get_connection(opened.connection_id).state == ConnectionState.CLOSED

    client_before = sui.balance(client.sui_address)
    settlement = sui.settle(server, opened.connection_id)
    assert (settlement.paid, settlement.claimed, settlement.refunded) == (0, amount, 5_000 - amount)
    assert sui.balance(client.sui_address) == client_before + 5_000 - amount
    escrow = sui.get_escrow(opened.escrow_id)
    assert escrow.settled and escrow.balance == 0
    assert escrow.deposited == escrow.claimed + escrow.refunded
    # the refund left the cap; the claim counts in its epoch (if that is still the
    # current one)
    left = sui.get_cap(cap)
    assert escrow.reserved == 0 and left.outstanding == 0
    if escrow.claim_epoch == sui.epoch():
        assert left.remaining(sui.epoch()) == 1_000_000 - amount


def test_live_firewall_and_events(sui: SuiLedger) -> None:
    funder = sui.default_signer
    assert funder is not None
    server, client = HostIdentity.generate(), HostIdentity.generate()
    transfer(sui, funder, server.sui_address, 200_000_000)
    transfer(sui, funder, client.sui_address, 200_000_000)
    _, cursor = sui.events(None, limit=1)
    host = sui.create_host(server, server.noise_public)
    sui.add_service(server, host, 9, "raw", SLA)
    sui.deny(server, host, client.sui_address)
    cap = sui.create_spending_cap(client, 1_000)
    with pytest.raises(FirewallDenied):
        sui.open_connection(client, host, 9, cap, 5_000)
    from dtp.ledger._objects import EventFilter

    events, _ = sui.wait_events(cursor, 60, EventFilter(object_id=host))
    assert events and events[0].name in ("HostCreated", "ServiceAdded", "HostUpdated")


def test_live_a_missing_object_is_named_as_local_ledger_names_it(sui: SuiLedger) -> None:
    missing = "0x" + "12" * 32
    with pytest.raises(ObjectNotFound) as info:
        sui.get_host(missing)
    assert str(info.value) == f"No Host with ID {missing} exists on this network."
    with pytest.raises(ObjectNotFound, match=f"^No SpendingCap with ID {missing} exists"):
        sui.get_cap(missing)


def test_live_pipe_owned_by_sender(sui: SuiLedger) -> None:
    funder = sui.default_signer
    assert funder is not None
    server, client = HostIdentity.generate(), HostIdentity.generate()
    transfer(sui, funder, server.sui_address, 200_000_000)
    transfer(sui, funder, client.sui_address, 200_000_000)
    host = sui.create_host(server, server.noise_public)
    sui.add_service(server, host, 7, "raw", SLA)
    cap = sui.create_spending_cap(client, 1_000_000)
    opened = sui.open_connection(client, host, 7, cap, 1_000)
    pipe = sui.create_pipe(client, opened.connection_id, 2)
    assert sui.pipe_send(client, pipe, 1, b"hi") == 0
    assert sui.pipe_send(client, pipe, 1, b"again") == 1
    with pytest.raises(WrongSigner):
        sui.pipe_send(server, pipe, 0, b"x")
    sui.destroy_pipe(client, pipe)


# -- regeneration ---------------------------------------------------------------------------------


def regenerate() -> None:
    """Rewrite tests/golden/sui_transactions.json from the current builders."""
    write_golden(
        GOLDEN,
        "dtp.ledger.sui._tx builders for the fixed inputs of tests/ledger/test_sui_transactions.py",
        build_all(),
        package=PACKAGE,
        sender=SENDER.sui_address,
        gas={"price": 1000, "budget": 10_000_000},
    )


if __name__ == "__main__":
    regenerate_main(regenerate)
