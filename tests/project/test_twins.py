"""The blocking and asyncio drivers of a feature stay twins (docs/architecture.md, the
engines): each pair calls the same set of its sans-I/O engine's methods, and their twin
classes (or twin functions, by the functions they define) define the methods both have
in the same order, and a class that plays one role in both has one name, so that one
reads against the other.

The calls are read from the source with ``ast``: an attribute of one of the engine's
classes (a method, a property, a field its ``__init__`` sets) taken on a name that holds
the engine in the driver (``core.verdict``, ``self.core.verdict``, ``self.credit.sent``).
A call only one twin makes is named in the pair's ``one_sided`` table with the reason
its twin has no such step; the test fails on any other difference, and on an entry that
no longer differs, so the table only shrinks.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field

import pytest

from tests.support.paths import ROOT

PACKAGE = ROOT / "dtp"

BLOCKING = "blocking"
ASYNCIO = "asyncio"


@dataclass(frozen=True)
class Twins:
    """A pair of drivers of one engine."""

    name: str
    blocking: str  # the blocking driver's module, under dtp/
    asyncio: str  # the asyncio driver's module
    engine: str  # the engine's module
    classes: tuple[str, ...]  # the engine's classes there
    holders: tuple[str, ...]  # the names the drivers hold the engine by
    #: calls only one twin makes: name -> (which twin, why the other has no such step)
    one_sided: dict[str, tuple[str, str]] = field(default_factory=dict)


_PAID_CACHE = (
    "blocking reads take from a credit cached between looks at the gate (one look per "
    "CREDIT_MAX: bench/compare.py paid_bulk), shared by the connection's threads; "
    "asyncio reads ask read_room at each call, and its held writes refill at each look"
)
_PAID_DATAGRAM_WAITS = (
    "a blocking datagram send waits until the credit covers it, then ends a pause of "
    "datagram sends itself; an asyncio send never waits (datagrams_now)"
)
_PAID_DATAGRAM_DROPS = (
    "an asyncio datagram send never waits: what the credit does not cover is dropped, a "
    "pause's step without its wait; a blocking send waits (reserve_datagrams)"
)
_PAID_WRITE_NOW = (
    "an asyncio write never waits: what the gate and the bytes/s bucket allow goes at "
    "once and is charged after it went; a blocking write waits first (wait_send, pace)"
)

TWINS = [
    Twins(
        "paid connection",
        "hostid/paid/_blocking.py",
        "hostid/paid/_asyncio.py",
        "hostid/paid/_engine.py",
        ("PaidConnectionEngine", "Credit", "PausedCall"),
        ("core", "credit", "pause", "PaidConnectionEngine"),
        {
            "read": (BLOCKING, _PAID_CACHE),
            "read_credit": (BLOCKING, _PAID_CACHE),
            "spent": (BLOCKING, _PAID_CACHE),
            "void": (BLOCKING, _PAID_CACHE),
            "send": (BLOCKING, _PAID_CACHE),
            "reserve_datagrams": (BLOCKING, _PAID_DATAGRAM_WAITS),
            "datagrams_paid": (BLOCKING, _PAID_DATAGRAM_WAITS),
            "unpaid_datagrams_since": (
                BLOCKING,
                "looked at before the engine lock is taken, so that the receipt writer's "
                "thread never waits on it; asyncio has no such lock",
            ),
            "call_deadline": (
                BLOCKING,
                "a blocking call waits out a pause within its socket's timeout; an asyncio "
                "caller bounds its wait by cancelling it",
            ),
            "datagrams_now": (ASYNCIO, _PAID_DATAGRAM_DROPS),
            "datagrams_dropped": (ASYNCIO, _PAID_DATAGRAM_DROPS),
            "datagram_room": (ASYNCIO, _PAID_DATAGRAM_DROPS),
            "write_now": (ASYNCIO, _PAID_WRITE_NOW),
            "charge_sent": (ASYNCIO, _PAID_WRITE_NOW),
        },
    ),
    Twins(
        "paid server",
        "hostid/paid/_blocking_server.py",
        "hostid/paid/_asyncio_server.py",
        "hostid/paid/_server_core.py",
        ("PaidServerCore", "EndPhase", "PolicyRefresh"),
        ("core", "phase", "refresh"),
        {
            "reserved": (
                BLOCKING,
                "the blocking DTPServer reserves an admitted connection's ID in the "
                "admission's thread and reports it back (ReportedConnections)",
            ),
            "unreserved": (
                BLOCKING,
                "the blocking DTPServer reports the release of that reservation from "
                "whichever thread ended the connection",
            ),
            "cancel": (ASYNCIO, "an end phase's step cut short by a task's cancellation"),
            "cancelled": (ASYNCIO, "an end phase's step cut short by a task's cancellation"),
            "closed": (
                ASYNCIO,
                "the blocking server's threads wait on an Event set with it (_closed)",
            ),
        },
    ),
    Twins(
        "udp relay and forwarder",
        "hostid/udp/_blocking.py",
        "hostid/udp/_asyncio.py",
        "hostid/udp/_engine.py",
        ("RelayEngine", "FlowAccount", "UdpBilling"),
        ("engine", "billing", "flow", "self"),
        {
            "run_kept": (
                BLOCKING,
                "a kept receipt is counted under the blocking relay's engine lock (the "
                "writer's thread); on asyncio its count hops to the loop",
            ),
            "meter": (
                ASYNCIO,
                "an asyncio flow exists before its connection opens (its datagrams wait "
                "in pending) and gets its meter once it opened; a blocking session is "
                "made with it",
            ),
        },
    ),
    Twins(
        "rpc client",
        "messaging/rpc/_blocking_client.py",
        "messaging/rpc/_asyncio_client.py",
        "messaging/rpc/_engine.py",
        ("ClientFees", "PaidCall"),
        ("fees", "_fees", "paid", "call"),
        {
            "escrow_id": (
                BLOCKING,
                "the blocking RpcCall handle names the escrow its call prepaid; an "
                "asyncio call is awaited, with no handle",
            ),
            "orphaned": (
                ASYNCIO,
                "an asyncio call cancelled while its deposit runs leaves an escrow no "
                "request names; a blocking call cannot be cancelled",
            ),
        },
    ),
    Twins(
        "rpc server",
        "messaging/rpc/_blocking_server.py",
        "messaging/rpc/_asyncio_server.py",
        "messaging/rpc/_engine.py",
        ("ServerCallFees",),
        ("fees", "_fees", "call_fees"),
    ),
    Twins(
        "graph sync",
        "graph/sync/_blocking.py",
        "graph/sync/_asyncio.py",
        "graph/sync/_session.py",
        ("SyncSession",),
        ("session", "self"),
    ),
    Twins(
        "membership node",
        "messaging/_membership_socket.py",
        "messaging/_membership_aio.py",
        "messaging/_membership.py",
        ("Membership",),
        ("engine",),
    ),
]

#: Twin classes whose shared methods come in the same order, or twin functions whose
#: shared inner functions do: (blocking module, class or function, asyncio module, its twin)
ORDERED = [
    ("hostid/paid/_blocking.py", "PaidConnection", "hostid/paid/_asyncio.py", "PaidConnection"),
    (
        "hostid/paid/_blocking_server.py",
        "PaidServer",
        "hostid/paid/_asyncio_server.py",
        "PaidAioServer",
    ),
    ("hostid/udp/_blocking.py", "relay_udp", "hostid/udp/_asyncio.py", "relay_udp_async"),
    ("hostid/udp/_blocking.py", "UdpForwarder", "hostid/udp/_asyncio.py", "AsyncUdpForwarder"),
    (
        "messaging/rpc/_blocking_client.py",
        "RpcClient",
        "messaging/rpc/_asyncio_client.py",
        "AsyncRpcClient",
    ),
    (
        "messaging/rpc/_blocking_server.py",
        "RpcServer",
        "messaging/rpc/_asyncio_server.py",
        "AsyncRpcServer",
    ),
    ("graph/sync/_blocking.py", "sync_blocking", "graph/sync/_asyncio.py", "sync_stream"),
    (
        "messaging/_membership_socket.py",
        "MemberNode",
        "messaging/_membership_aio.py",
        "AsyncMemberNode",
    ),
]


#: Steps both twins of an ORDERED pair define (by name, in the shared order): a step
#: one twin inlines in its main loop cannot be read against the other's
#: (blocking class or function -> its named steps)
NAMED_STEPS = {
    "relay_udp": ("relay_replies", "send_control", "read_control", "relay_datagram"),
}


#: Classes that play one role in both twins, under one name: (blocking module, asyncio
#: module, the classes both define)
SAME_CLASSES = [
    ("hostid/udp/_blocking.py", "hostid/udp/_asyncio.py", ("_Flow",)),
]


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / module).read_text(encoding="utf-8"))


def _class(module: str, name: str) -> ast.ClassDef:
    for node in _tree(module).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"dtp/{module} defines no class {name}")


def engine_names(module: str, classes: tuple[str, ...]) -> set[str]:
    """The public methods, properties and fields of ``classes`` in ``module``."""
    names: set[str] = set()
    for name in classes:
        cls = _class(module, name)
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(item.name)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                names.add(item.target.id)
        for node in ast.walk(cls):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
    return {name for name in names if not name.startswith("_")}


def engine_calls(tree: ast.Module, holders: tuple[str, ...], names: set[str]) -> set[str]:
    """Which of ``names`` the driver ``tree`` takes on a name in ``holders`` (``x.name``
    or ``y.x.name``, ``x`` a holder)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr not in names:
            continue
        value = node.value
        holder = (
            value.id
            if isinstance(value, ast.Name)
            else value.attr
            if isinstance(value, ast.Attribute)
            else None
        )
        if holder in holders:
            found.add(node.attr)
    return found


def drift(twins: Twins, blocking_tree: ast.Module, aio_tree: ast.Module) -> list[str]:
    """What is wrong with the pair's calls: a call only one twin makes that the table
    does not name for it, or one the table names that both twins make now."""
    names = engine_names(twins.engine, twins.classes)
    blocking = engine_calls(blocking_tree, twins.holders, names)
    aio = engine_calls(aio_tree, twins.holders, names)
    if not blocking & aio:
        return ["the holders name no engine: the pair's table is out of date"]
    one_sided = {name: BLOCKING for name in blocking - aio}
    one_sided.update({name: ASYNCIO for name in aio - blocking})
    expected = {name: side for name, (side, _why) in twins.one_sided.items()}
    problems = [
        f"only the {side} twin calls {name}, and the table gives no reason (give the "
        "step one name both call, or say why the other has none)"
        for name, side in sorted(one_sided.items())
        if expected.get(name) != side
    ]
    problems += [
        f"the table says only the {side} twin calls {name}, which is no longer so"
        for name, side in sorted(expected.items())
        if one_sided.get(name) != side
    ]
    return problems


@pytest.mark.parametrize("twins", TWINS, ids=[t.name for t in TWINS])
def test_twins_call_the_same_engine_steps(twins: Twins) -> None:
    assert drift(twins, _tree(twins.blocking), _tree(twins.asyncio)) == []


@pytest.mark.parametrize("pair", ORDERED, ids=[f"{p[1]}/{p[3]}" for p in ORDERED])
def test_twin_classes_keep_one_order(pair: tuple[str, str, str, str]) -> None:
    blocking_module, blocking_class, aio_module, aio_class = pair

    def methods(module: str, name: str) -> list[str]:
        """The functions defined in the body of the class or function ``name``."""
        scopes = [
            node
            for node in _tree(module).body
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name == name
        ]
        assert len(scopes) == 1, f"dtp/{module} defines no one {name}"
        return [
            item.name
            for item in scopes[0].body
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]

    blocking = methods(blocking_module, blocking_class)
    aio = methods(aio_module, aio_class)
    shared = set(blocking) & set(aio)
    assert len(shared) > 1
    assert set(NAMED_STEPS.get(blocking_class, ())) <= shared
    assert [m for m in blocking if m in shared] == [m for m in aio if m in shared]


@pytest.mark.parametrize("pair", SAME_CLASSES, ids=[p[0] for p in SAME_CLASSES])
def test_twins_name_a_class_of_one_role_alike(pair: tuple[str, str, tuple[str, ...]]) -> None:
    blocking_module, aio_module, names = pair
    for name in names:
        _class(blocking_module, name)
        _class(aio_module, name)


def test_a_step_one_twin_stops_calling_is_drift() -> None:
    """The reading above sees a call: the paid blocking driver asking its gate's verdict
    under another name is drift, and so is a table entry that both twins now make."""
    twins = TWINS[0]
    source = (PACKAGE / twins.blocking).read_text(encoding="utf-8")
    assert "self.core.verdict(" in source
    renamed = ast.parse(source.replace("self.core.verdict(", "self.core.judge("))
    assert drift(twins, renamed, _tree(twins.asyncio)) == [
        "only the asyncio twin calls verdict, and the table gives no reason (give the step "
        "one name both call, or say why the other has none)"
    ]
    both = ast.parse(
        (PACKAGE / twins.asyncio).read_text(encoding="utf-8") + "\nself.core.call_deadline\n"
    )
    assert drift(twins, _tree(twins.blocking), both) == [
        "the table says only the blocking twin calls call_deadline, which is no longer so"
    ]
