"""Every Move call that dtp/ledger/sui/_tx.py builds must match a callable Move function.

No `sui` binary exists here, so a Move signature that drifts from the transaction builder
(a renamed function, a reordered or added parameter, a parameter that became `&mut` while
the builder passes the object read-only, a `public` lost) would only show on a live
network, where every such call fails. This test parses move/dtp/sources with a light
parser and checks each MoveCall of every builder (built from the same inputs as the
golden-vector tests, then decoded from BCS):

- the target `module::function` exists and is `public` or `entry` (not `public(package)`,
  not private, not `#[test_only]`);
- the argument count equals the parameter count, not counting a trailing `&TxContext` /
  `&mut TxContext` (the Clock counts: sui_tx passes it explicitly);
- each argument fits its parameter: a pure input fits the parameter's BCS type exactly
  (u8/u16/u64/address/vector<u8>/String/vector<vector<u8>>), the Clock goes to `&Clock`,
  other shared objects go to a parameter of their Move type (`&T`, `&mut T` or `T`), and
  one passed read-only never to `&mut T` or by value (and one passed mutable never to a
  read-only `&T`: Sui would order it with the Host's writers), a `SplitCoins` result goes to
  `Coin<SUI>`, and the result of an earlier call has the type the parameter wants.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pysui.sui.sui_bcs import bcs

import tests.ledger.coordination_tx_cases as coord_cases
import tests.ledger.deletion_tx_cases as deletion_cases
import tests.ledger.messaging_tx_cases as msg_cases
import tests.ledger.payment_model_cases as econ_cases
import tests.ledger.sui_tx_cases as sui_cases
from dtp.errors import InvalidArgument
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui import _tx_deletion as sui_tx_deletion
from dtp.ledger.sui._tx import CLOCK_ID
from tests.support.paths import MOVE_SOURCES

SOURCES = MOVE_SOURCES


# -- a light Move parser --------------------------------------------------------------------------


@dataclass(frozen=True)
class MoveFun:
    module: str
    name: str
    visibility: str  # "public", "public(package)", "private"
    entry: bool
    test_only: bool
    params: tuple[tuple[str, str], ...]  # (name, type) without a trailing TxContext
    returns: str

    @property
    def callable_from_ptb(self) -> bool:
        return (self.visibility == "public" or self.entry) and not self.test_only


def _strip(text: str) -> str:
    """Remove string literals and comments (keeping offsets irrelevant)."""
    text = re.sub(r'[bx]"(?:[^"\\]|\\.)*"', '""', text)
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _norm(type_text: str) -> str:
    """`&mut   sui::coin::Coin< SUI >` -> `&mut Coin<SUI>` (last path segments)."""
    t = re.sub(r"\s+", " ", type_text.strip())
    t = re.sub(r"&\s*mut\s+", "&mut ", t)
    t = re.sub(r"&\s*(?!mut )", "&", t)
    t = re.sub(r"\b(?:\w+::)+(\w+)", r"\1", t)
    return re.sub(r"\s*([<>,])\s*", r"\1", t)


_FUN = re.compile(
    r"(?P<attrs>(?:#\[[^\]]*\]\s*)*)"
    r"(?P<vis>public\s*(?:\(\s*(?:package|friend)\s*\))?\s+)?"
    r"(?P<entry>entry\s+)?(?:native\s+)?fun\s+(?P<name>\w+)\s*(?:<[^>]*>)?\s*\("
)


def parse_module(path: Path) -> tuple[str, dict[str, MoveFun]]:
    text = _strip(path.read_text())
    header = re.search(r"\bmodule\s+\w+::(\w+)\s*[;{]", text)
    assert header, f"{path}: no module header"
    module = header.group(1)
    functions: dict[str, MoveFun] = {}
    for match in _FUN.finditer(text):
        start = match.end()
        depth, i = 1, start
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        params_text = text[start : i - 1]
        body = text.index("{", i)
        returns = text[i:body].strip()
        returns = _norm(returns[1:]) if returns.startswith(":") else ""
        params = []
        for param in _split_top(params_text):
            name, _, type_text = param.partition(":")
            params.append((name.strip(), _norm(type_text)))
        if params and params[-1][1] in ("&TxContext", "&mut TxContext"):
            params.pop()
        vis = re.sub(r"\s+", "", match.group("vis") or "") or "private"
        functions[match.group("name")] = MoveFun(
            module,
            match.group("name"),
            vis,
            bool(match.group("entry")),
            "test_only" in match.group("attrs") or "#[test]" in match.group("attrs"),
            tuple(params),
            returns,
        )
    return module, functions


def parse_package() -> dict[str, dict[str, MoveFun]]:
    modules = {}
    for path in sorted(SOURCES.glob("*.move")):
        module, functions = parse_module(path)
        modules[module] = functions
    return modules


MODULES = parse_package()


# -- the builders' transactions -----------------------------------------------------------------

#: Object ID -> Move struct name, for the inputs the test cases use.
OBJECT_TYPES: dict[str, str] = {
    sui_cases.HOST.object_id: "Host",
    sui_cases.CAP.object_id: "SpendingCap",
    sui_cases.CONN.object_id: "TransportControl",
    sui_cases.ESCROW.object_id: "Escrow",
    sui_cases.BCAST.object_id: "Broadcast",
    sui_cases.PIPE.object_id: "Pipe",
    msg_cases.ESCROW_REF.object_id: "ResponseEscrow",
    msg_cases.HOST_REF.object_id: "Host",
    econ_cases.OFFER.object_id: "SubscriptionOffer",
    econ_cases.SUB.object_id: "Subscription",
    econ_cases.POOL.object_id: "SponsorPool",
    econ_cases.LANE.object_id: "SponsorLane",
    econ_cases.SALE.object_id: "TicketSale",
    econ_cases.TERMS.object_id: "RetentionTerms",
    econ_cases.RECORD.object_id: "RetainedRecord",
    coord_cases.REGISTRY.object_id: "Registry",
    CLOCK_ID: "Clock",
}


def _built() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, (args, _) in sui_cases.CASES.items():
        out[name] = sui_tx.BUILDERS[name](sui_cases.CTX, *args)
    for name, (args, _, _) in econ_cases.CASES.items():
        out[name] = sui_tx.ECONOMICS_BUILDERS[name](sui_cases.CTX, *args)
    for name, args in msg_cases.SUI_CASES.items():
        out[name] = sui_tx.MESSAGING_BUILDERS[name](sui_cases.CTX, *args)
    for name, (args, _, _) in coord_cases.CASES.items():
        out[name] = sui_tx.COORDINATION_BUILDERS[name](sui_cases.CTX, *args)
    for name, (args, _) in deletion_cases.CASES.items():
        out[name] = sui_tx_deletion.DELETION_BUILDERS[name](sui_cases.CTX, *args)
    return out


BUILT = _built()


def test_every_builder_is_covered() -> None:
    builders = set(sui_tx.BUILDERS) | set(sui_tx.ECONOMICS_BUILDERS)
    builders |= set(sui_tx.MESSAGING_BUILDERS) | set(sui_tx.COORDINATION_BUILDERS)
    builders |= set(sui_tx_deletion.DELETION_BUILDERS)
    assert builders == set(BUILT)


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


_FIXED = {"u8": 1, "bool": 1, "u16": 2, "u32": 4, "u64": 8, "u128": 16, "u256": 32}
_FIXED |= {"address": 32, "ID": 32}


def _pure_fits(type_text: str, data: bytes) -> bool:
    """Whether `data` is exactly one BCS value of the Move type `type_text`."""

    def consume(t: str, pos: int) -> int:
        if t in _FIXED:
            return pos + _FIXED[t]
        if t in ("vector<u8>", "String"):
            n, pos = _uleb(data, pos)
            return pos + n
        inner = re.fullmatch(r"vector<(.+)>", t)
        if inner:
            n, pos = _uleb(data, pos)
            for _ in range(n):
                pos = consume(inner.group(1), pos)
            return pos
        raise AssertionError(f"{t} is not a pure type")

    try:
        return consume(type_text, 0) == len(data)
    except IndexError:
        return False


def _move_calls(raw: bytes) -> tuple[list[Any], list[Any]]:
    ptx = bcs.TransactionData.from_bytes(raw).value.TransactionKind.value
    return list(ptx.Inputs), list(ptx.Command)


def _struct_of(param_type: str) -> tuple[str, str]:
    """(`&`, `&mut` or `` for by value, the struct name)."""
    for prefix in ("&mut ", "&"):
        if param_type.startswith(prefix):
            return prefix.strip(), param_type[len(prefix) :]
    return "", param_type


def _check_call(name: str, index: int, call: Any, inputs: list[Any], commands: list[Any]) -> None:
    where = f"{name}: command {index} {call.Module}::{call.Function}"
    functions = MODULES.get(call.Module)
    assert functions is not None, f"{where}: no module {call.Module} in move/dtp/sources"
    fun = functions.get(call.Function)
    assert fun is not None, f"{where}: no function {call.Function} in module {call.Module}"
    assert fun.callable_from_ptb, (
        f"{where}: {fun.visibility}{' entry' if fun.entry else ''} function"
        f"{' (test_only)' if fun.test_only else ''} cannot be called from a transaction"
    )
    assert list(call.Type_Arguments) == []
    args = list(call.Arguments)
    assert len(args) == len(fun.params), (
        f"{where}: {len(args)} arguments, the Move function takes {len(fun.params)} "
        f"({', '.join(f'{n}: {t}' for n, t in fun.params)})"
    )
    for position, (arg, (param, param_type)) in enumerate(zip(args, fun.params, strict=True)):
        at = f"{where}, argument {position} ({param}: {param_type})"
        if arg.enum_name == "Input":
            call_arg = inputs[arg.value]
            if call_arg.enum_name == "Pure":
                assert _pure_fits(param_type, bytes(call_arg.value)), (
                    f"{at}: pure bytes {bytes(call_arg.value).hex()} do not fit"
                )
                continue
            obj = call_arg.value
            ref, struct = _struct_of(param_type)
            if obj.enum_name == "SharedObject":
                object_id = obj.value.ObjectID.to_address_str()
                mutable = obj.value.Mutable
            else:
                object_id = obj.value.ObjectID.to_address_str()
                mutable = True
            expected = OBJECT_TYPES.get(object_id)
            assert expected is not None, f"{at}: unknown object {object_id} in the test cases"
            assert struct == expected, f"{at}: a {expected} is passed"
            if not mutable:
                assert ref == "&", f"{at}: the {expected} is passed read-only"
            else:
                # Sui orders every transaction that takes a shared object mutably, even
                # one whose Move code only reads it (docs/escrow.md "Throughput")
                assert ref != "&" or obj.enum_name != "SharedObject", (
                    f"{at}: the {expected} is only read but passed mutable"
                )
        elif arg.enum_name == "NestedResult":
            source, _ = arg.value
            assert commands[source].enum_name == "SplitCoin", f"{at}: not a SplitCoins result"
            assert param_type == "Coin<SUI>", f"{at}: a Coin<SUI> is passed"
        elif arg.enum_name == "GasCoin":
            assert param_type in ("Coin<SUI>", "&mut Coin<SUI>"), f"{at}: the gas coin is passed"
        elif arg.enum_name == "Result":
            source = commands[arg.value]
            assert source.enum_name == "MoveCall", f"{at}: result of a {source.enum_name}"
            producer = MODULES[source.value.Module][source.value.Function]
            assert producer.returns == param_type, (
                f"{at}: {producer.module}::{producer.name} returns {producer.returns}"
            )
        else:  # pragma: no cover - no other argument kind is built
            raise AssertionError(f"{at}: unexpected argument {arg.enum_name}")


@pytest.mark.parametrize("name", sorted(BUILT))
def test_builder_calls_match_move_signatures(name: str) -> None:
    inputs, commands = _move_calls(BUILT[name])
    calls = [(i, c.value) for i, c in enumerate(commands) if c.enum_name == "MoveCall"]
    assert calls, f"{name}: no MoveCall"
    for index, call in calls:
        _check_call(name, index, call, inputs, commands)


def test_target_tables_name_callable_functions() -> None:
    tables = (
        sui_tx.TARGETS,
        sui_tx.ECONOMICS_TARGETS,
        sui_tx.MESSAGING_TARGETS,
        sui_tx_deletion.DELETION_TARGETS,
    )
    for table in tables:
        for method, (module, function) in table.items():
            fun = MODULES.get(module, {}).get(function)
            assert fun is not None, f"{method}: {module}::{function} is not in the Move sources"
            assert fun.callable_from_ptb, f"{method}: {module}::{function} is not public"


# -- the checker itself ---------------------------------------------------------------------------


def test_parser_reads_visibility_and_drops_tx_context(tmp_path: Path) -> None:
    source = tmp_path / "m.move"
    source.write_text(
        "module dtp::m;\n"
        "// fun commented(a: u64) {}\n"
        'const E: vector<u8> = b"fun fake(x: u8) {";\n'
        "public fun a(x: &mut Host, y: vector<vector<u8>>, c: &Clock, ctx: &mut TxContext): ID {"
        " abort 0 }\n"
        "public(package) fun b(coin: sui::coin::Coin<SUI>) {}\n"
        "entry fun c(ctx: &TxContext) {}\n"
        "fun d() {}\n"
        "#[test_only]\npublic fun e() {}\n"
    )
    module, functions = parse_module(source)
    assert module == "m"
    assert set(functions) == {"a", "b", "c", "d", "e"}
    a = functions["a"]
    assert a.params == (("x", "&mut Host"), ("y", "vector<vector<u8>>"), ("c", "&Clock"))
    assert a.returns == "ID" and a.callable_from_ptb
    assert functions["b"].params == (("coin", "Coin<SUI>"),)
    assert not functions["b"].callable_from_ptb
    assert functions["c"].callable_from_ptb and functions["c"].params == ()
    assert not functions["d"].callable_from_ptb
    assert not functions["e"].callable_from_ptb


def test_pure_fits() -> None:
    assert _pure_fits("u16", b"\x07\x00")
    assert not _pure_fits("u16", b"\x07\x00\x00\x00\x00\x00\x00\x00")
    assert _pure_fits("vector<u8>", b"\x02ab")
    assert not _pure_fits("vector<u8>", b"\x03ab")
    assert _pure_fits("vector<vector<u8>>", b"\x02\x01a\x00")
    assert _pure_fits("address", bytes(32))


def test_a_drifted_signature_is_caught() -> None:
    """The check fails on a Move function that takes one argument more than sui_tx passes."""
    inputs, commands = _move_calls(BUILT["top_up"])
    index, call = next((i, c.value) for i, c in enumerate(commands) if c.enum_name == "MoveCall")
    original = MODULES["escrow"]["top_up"]
    drifted = MoveFun(
        original.module,
        original.name,
        original.visibility,
        original.entry,
        original.test_only,
        (*original.params, ("clock", "&Clock")),
        original.returns,
    )
    MODULES["escrow"]["top_up"] = drifted
    try:
        with pytest.raises(AssertionError, match="takes 4"):
            _check_call("top_up", index, call, inputs, commands)
    finally:
        MODULES["escrow"]["top_up"] = original


def test_a_shared_object_passed_mutable_to_a_reader_is_caught() -> None:
    """A `&Host` passed as a mutable shared input (as open_connection did when the open
    counted connections) would serialise every open of the host on Sui."""
    raw = BUILT["open_connection"]
    data = bcs.TransactionData.from_bytes(raw)
    ptx = data.value.TransactionKind.value
    host_input = next(
        i
        for i in ptx.Inputs
        if i.enum_name == "Object"
        and i.value.value.ObjectID.to_address_str() == sui_cases.HOST.object_id
    )
    assert host_input.value.value.Mutable is False
    host_input.value.value.Mutable = True
    inputs, commands = list(ptx.Inputs), list(ptx.Command)
    index, call = next((i, c.value) for i, c in enumerate(commands) if c.enum_name == "MoveCall")
    with pytest.raises(AssertionError, match="only read but passed mutable"):
        _check_call("open_connection", index, call, inputs, commands)


# -- what one transaction can carry ---------------------------------------------------------------

#: Sui refuses a pure argument of this many bytes or more (protocol config
#: `max_pure_argument_size`, checked as `len < limit` before any Move code runs).
MAX_PURE_ARGUMENT_SIZE = 16 * 1024


def _byte_string_calls(size: int) -> dict[str, Callable[[], bytes]]:
    """The builders whose data is one pure byte string, bound to ``size`` bytes of it."""
    data = b"\xab" * size
    return {
        "pipe_send": lambda: sui_tx.pipe_send(sui_cases.CTX, sui_cases.PIPE, 0, data),
        "broadcast_transmit": lambda: sui_tx.broadcast_transmit(
            sui_cases.CTX, sui_cases.BCAST, data
        ),
        "mailbox_send": lambda: sui_tx.mailbox_send(sui_cases.CTX, msg_cases.HOST_REF, data),
        "response_escrow_deliver": lambda: sui_tx.response_escrow_deliver(
            sui_cases.CTX, msg_cases.ESCROW_REF, data
        ),
        "send_retained": lambda: sui_tx.send_retained(
            sui_cases.CTX, econ_cases.PIPE, econ_cases.CONN, econ_cases.TERMS, 0, data, 0
        ),
    }


def _byte_string_builders(size: int) -> dict[str, bytes]:
    return {name: build() for name, build in _byte_string_calls(size).items()}


def _largest_pure(raw: bytes) -> int:
    inputs, _ = _move_calls(raw)
    return max(len(bytes(i.value)) for i in inputs if i.enum_name == "Pure")


def test_16381_bytes_fit_one_pure_argument() -> None:
    """docs/escrow.md §8: 16381 bytes of data (2-byte length prefix) is what fits."""
    for name, raw in _byte_string_builders(16381).items():
        assert _largest_pure(raw) == MAX_PURE_ARGUMENT_SIZE - 1, name
    # one byte more is refused by Sui, and so by the builders, before anything is sent
    assert len(sui_tx.encode_bytes(b"\xab" * 16382)) == MAX_PURE_ARGUMENT_SIZE
    for name, build in _byte_string_calls(16382).items():
        with pytest.raises(InvalidArgument, match="over Sui's limit"):
            build()
        assert name


def test_largest_accepted_data_fits_one_pure_argument() -> None:
    from dtp.ledger._objects import MAX_DATA_LENGTH
    from dtp.ledger.interface import MAX_MAIL_PAYLOAD, MAX_RESPONSE_LENGTH

    largest = max(MAX_DATA_LENGTH, MAX_MAIL_PAYLOAD, MAX_RESPONSE_LENGTH)
    for name, raw in _byte_string_builders(largest).items():
        assert _largest_pure(raw) < MAX_PURE_ARGUMENT_SIZE, name


def test_terms_with_their_own_half_close_timeout_call_its_constructor() -> None:
    """Terms of the default half-close timeout are built with `host::new_sla` (the bytes
    of the golden vectors, unchanged); others with `host::new_sla_with_half_close_timeout`,
    its four u64 from the Sla, its result the `Sla` the next call takes."""
    from dtp.ledger._objects import Sla

    sla = Sla(10, 5, 1000, 3_600_000)
    built = {
        "add_service": sui_tx.add_service(sui_cases.CTX, sui_cases.HOST, 7, "raw", sla, 3),
        "update_service": sui_tx.update_service(sui_cases.CTX, sui_cases.HOST, 7, sla, 0),
    }
    for name, raw in built.items():
        inputs, commands = _move_calls(raw)
        calls = [(i, c.value) for i, c in enumerate(commands) if c.enum_name == "MoveCall"]
        assert [c.Function for _, c in calls] == ["new_sla_with_half_close_timeout", name]
        constructor = calls[0][1]
        values = [bytes(inputs[a.value].value) for a in constructor.Arguments]
        assert values == [v.to_bytes(8, "little") for v in (10, 5, 1000, 3_600_000)]
        for index, call in calls:
            _check_call(name, index, call, inputs, commands)
    default = sui_tx.update_service(sui_cases.CTX, sui_cases.HOST, 7, Sla(10, 5, 1000), 0)
    _, commands = _move_calls(default)
    assert commands[0].value.Function == "new_sla"
