"""``dtp::registry`` on LocalLedger (docs/escrow.md §21): each refusal typed, in the order of
registry.move, and changing nothing; the SuiLedger builders pinned by golden bytes; the
Registry's BCS layout against LocalLedger's data; and a state machine of three servers
on a virtual clock against a model of the rules: a name's tokens strictly increase, at
most one unexpired holder exists at any time, and a write succeeds exactly when its
token is the name's current one, its sender the holder, and the lease unexpired.

Regenerate the golden vectors (only after a deliberate change to the builders)::

    python -m tests.ledger.test_coordination_rules --regenerate
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pysui.sui.sui_bcs import bcs

from dtp.errors import (
    ChainError,
    CoordinationError,
    FencedOut,
    InvalidArgument,
    LeaseHeld,
    NotAuthorized,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._coordination import (
    MAX_KEYS,
    MAX_LEASE_MS,
    MAX_MEMBERS,
    MAX_NAMES,
    MAX_VALUE_LEN,
    Coordination,
)
from dtp.ledger.local import LocalLedger
from dtp.ledger.local.rules import from_json
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._coordination import decode_registry
from dtp.testing.sui_node._objects import object_contents
from tests.ledger.coordination_tx_cases import CASES
from tests.ledger.sui_tx_cases import CTX, PACKAGE, SENDER
from tests.support.golden_tx import regenerate_main, write_golden
from tests.support.paths import GOLDEN as GOLDEN_DIR


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


GOLDEN = GOLDEN_DIR / "coordination_transactions.json"
OWNER, A, B, OUTSIDER = ident(0x60), ident(0x61), ident(0x62), ident(0x63)


class World:
    """A registry of OWNER with members A and B, on a ledger frozen at 1000 ms."""

    def __init__(self, path: Path | str) -> None:
        self.ledger = LocalLedger(path, clock_ms=1_000)
        self.id = self.ledger.create_registry(OWNER)
        self.ledger.registry_admit(OWNER, self.id, A.sui_address)
        self.ledger.registry_admit(OWNER, self.id, B.sui_address)

    def refused(
        self, exc: type[ChainError], name: str, call: Callable[..., Any], *args: Any
    ) -> None:
        before = self.ledger.dump()
        with pytest.raises(exc) as info:
            call(*args)
        assert info.value.name == name, info.value
        assert info.value.module == "registry"
        assert self.ledger.dump() == before, "a refused call changed the ledger"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "ledger.db")


def test_a_lease_is_taken_renewed_released_and_taken_again(world: World) -> None:
    ledger, r = world.ledger, world.id
    assert ledger.acquire_lease(A, r, "leader", "a", 500) == 1
    world.refused(LeaseHeld, "ELeaseHeld", ledger.acquire_lease, B, r, "leader", "b", 500)
    # its own holder renews rather than acquire again
    world.refused(LeaseHeld, "ELeaseHeld", ledger.acquire_lease, A, r, "leader", "a", 500)
    ledger.advance_clock(499)
    assert ledger.renew_lease(A, r, "leader", 1, 500) == 1_999
    ledger.advance_clock(499)
    world.refused(LeaseHeld, "ELeaseHeld", ledger.acquire_lease, B, r, "leader", "b", 500)
    ledger.release_lease(A, r, "leader", 1)
    assert ledger.acquire_lease(B, r, "leader", "b", 500) == 2
    lease = ledger.get_registry(r).leases["leader"]
    assert (lease.holder, lease.owner, lease.token) == (b"b", B.sui_address, 2)
    assert lease.expires_at_ms == ledger.clock_ms() + 500


def test_an_expired_lease_is_free_and_its_holder_fenced_out(world: World) -> None:
    ledger, r = world.ledger, world.id
    token = ledger.acquire_lease(A, r, "leader", "a", 500)
    ledger.registry_put(A, r, "leader", token, "config", b"v1")
    ledger.advance_clock(500)  # now == expires_at: over (the rule is now < expires_at)
    world.refused(FencedOut, "ELeaseExpired", ledger.renew_lease, A, r, "leader", token, 500)
    world.refused(
        FencedOut, "ELeaseExpired", ledger.registry_put, A, r, "leader", token, "config", b"v2"
    )
    new = ledger.acquire_lease(B, r, "leader", "b", 500)
    assert new == token + 1
    # the late writes of the old holder: refused on its token before anything else
    for call, args in (
        (ledger.registry_put, (A, r, "leader", token, "config", b"late")),
        (ledger.registry_remove, (A, r, "leader", token, "config")),
        (ledger.renew_lease, (A, r, "leader", token, 500)),
        (ledger.release_lease, (A, r, "leader", token)),
    ):
        world.refused(FencedOut, "EStaleToken", call, *args)
    # the current token in another sender's hands is still not theirs
    world.refused(
        NotAuthorized, "ENotHolder", ledger.registry_put, A, r, "leader", new, "config", b"x"
    )
    assert ledger.registry_put(B, r, "leader", new, "config", b"v2") == 2
    entry = ledger.get_registry(r).entries["config"]
    assert (entry.value, entry.name, entry.token, entry.version) == (b"v2", "leader", new, 2)
    ledger.registry_remove(B, r, "leader", new, "config")
    ledger.registry_remove(B, r, "leader", new, "config")  # absent: nothing happens
    assert ledger.get_registry(r).entries == {}


def test_membership(world: World) -> None:
    ledger, r = world.ledger, world.id
    world.refused(
        NotAuthorized, "ENotMember", ledger.acquire_lease, OUTSIDER, r, "leader", "x", 500
    )
    world.refused(
        NotAuthorized, "ENotRegistryOwner", ledger.registry_admit, A, r, OUTSIDER.sui_address
    )
    token = ledger.acquire_lease(A, r, "leader", "a", 500)
    ledger.registry_revoke(OWNER, r, A.sui_address)
    ledger.registry_revoke(OWNER, r, A.sui_address)  # idempotent
    world.refused(NotAuthorized, "ENotMember", ledger.renew_lease, A, r, "leader", token, 500)
    world.refused(NotAuthorized, "ENotMember", ledger.registry_put, A, r, "leader", token, "k", b"")
    ledger.release_lease(A, r, "leader", token)  # a revoked member still gives its lease up
    state = ledger.get_registry(r)
    assert state.members == (B.sui_address,)
    assert state.is_member(OWNER.sui_address) and not state.is_member(A.sui_address)
    assert ledger.acquire_lease(OWNER, r, "leader", "owner", 500) == token + 1


def test_bad_arguments_are_refused_in_the_move_order(world: World) -> None:
    ledger, r = world.ledger, world.id
    for duration in (0, MAX_LEASE_MS + 1):
        world.refused(
            InvalidArgument, "EInvalidDuration", ledger.acquire_lease, A, r, "n", "a", duration
        )
    for name in ("", "n" * 65):
        world.refused(InvalidArgument, "EInvalidEntry", ledger.acquire_lease, A, r, name, "a", 9)
    world.refused(InvalidArgument, "EInvalidEntry", ledger.acquire_lease, A, r, "n", "h" * 65, 9)
    # the member check comes first
    world.refused(NotAuthorized, "ENotMember", ledger.acquire_lease, OUTSIDER, r, "", "a", 0)
    world.refused(FencedOut, "ENoLease", ledger.renew_lease, A, r, "nobody", 1, 9)
    world.refused(FencedOut, "ENoLease", ledger.release_lease, A, r, "nobody", 1)
    token = ledger.acquire_lease(A, r, "n", "a", 900)
    world.refused(
        InvalidArgument,
        "EInvalidEntry",
        ledger.registry_put,
        A,
        r,
        "n",
        token,
        "k",
        b"v" * (MAX_VALUE_LEN + 1),
    )
    world.refused(InvalidArgument, "EInvalidEntry", ledger.registry_put, A, r, "n", token, "", b"")
    # the size checks come before the lease's
    world.refused(
        InvalidArgument, "EInvalidEntry", ledger.registry_put, A, r, "n", token + 5, "", b""
    )
    assert ledger.registry_put(A, r, "n", token, "k", b"v" * MAX_VALUE_LEN) == 1
    # a str that has no UTF-8 never reaches the ledger
    with pytest.raises(InvalidArgument):
        ledger.acquire_lease(A, r, "\ud800", "a", 9)


def test_the_registry_is_bounded(world: World) -> None:
    ledger, r = world.ledger, world.id
    for i in range(MAX_MEMBERS - 2):
        ledger.registry_admit(OWNER, r, "0x" + f"{i + 1:064x}")
    world.refused(
        CoordinationError, "ERegistryFull", ledger.registry_admit, OWNER, r, "0x" + "ee" * 32
    )
    ledger.registry_admit(OWNER, r, A.sui_address)  # already in: no room needed
    for i in range(MAX_NAMES):
        ledger.acquire_lease(A, r, f"n{i}", "a", 1000)
    world.refused(CoordinationError, "ERegistryFull", ledger.acquire_lease, A, r, "more", "a", 9)
    for i in range(MAX_KEYS):
        ledger.registry_put(A, r, "n0", 1, f"k{i}", b"")
    world.refused(
        CoordinationError, "ERegistryFull", ledger.registry_put, A, r, "n0", 1, "more", b""
    )
    ledger.registry_put(A, r, "n0", 1, "k0", b"again")  # an existing key needs no room
    ledger.registry_remove(A, r, "n0", 1, "k1")
    ledger.registry_put(A, r, "n0", 1, "more", b"")


def test_the_registry_layout_reads_localledgers_data(world: World) -> None:
    ledger, r = world.ledger, world.id
    token = ledger.acquire_lease(A, r, "leader", "ä", 700)
    ledger.registry_put(A, r, "leader", token, "ключ", b"\x00\xff")
    ledger.release_lease(A, r, "leader", token)
    state = ledger.get_registry(r)
    (row,) = [row for row in ledger.dump()["objects"] if row[0] == r]
    contents = object_contents("Registry", r, from_json(row[4]))
    assert decode_registry(state.version, contents) == state


# -- golden bytes -------------------------------------------------------------------------------


def build_all() -> dict[str, str]:
    return {
        name: sui_tx.COORDINATION_BUILDERS[name](CTX, *args).hex()
        for name, (args, _, _) in CASES.items()
    }


def test_every_registry_method_has_a_builder_and_a_case() -> None:
    methods = {
        name
        for name in vars(Coordination)
        if not name.startswith("_") and not name.startswith("get_")
    }
    assert methods == set(sui_tx.COORDINATION_BUILDERS) == set(CASES)


def _kind(arg: Any, inputs: list[Any]) -> str:
    call_arg = inputs[arg.value]
    if call_arg.enum_name == "Pure":
        return "pure"
    assert call_arg.value.enum_name == "SharedObject"
    return "shared"


@pytest.mark.parametrize("name", sorted(CASES))
def test_registry_golden_bytes(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())["transactions"]
    built = build_all()[name]
    assert built == golden[name], (
        "run python -m tests.ledger.test_coordination_rules --regenerate after a deliberate change"
    )
    _, kinds, mutable = CASES[name]
    data = bcs.TransactionData.from_bytes(bytes.fromhex(built)).value
    assert data.Sender.to_address_str() == SENDER.sui_address
    ptx = data.TransactionKind.value
    inputs = list(ptx.Inputs)
    (call,) = [c.value for c in ptx.Command if c.enum_name == "MoveCall"]
    assert (call.Package.to_address_str(), call.Module, call.Function) == (
        PACKAGE,
        *sui_tx.COORDINATION_TARGETS[name],
    )
    assert [_kind(a, inputs) for a in call.Arguments] == kinds
    shared = {
        i.value.value.ObjectID.to_address_str(): i.value.value.Mutable
        for i in inputs
        if i.enum_name == "Object" and i.value.enum_name == "SharedObject"
    }
    assert shared == mutable


# -- the rules against a model, on a virtual clock ---------------------------------------------

SERVERS = (A, B, OWNER)
NAMES = ("leader", "lock")


@dataclass
class ModelLease:
    owner: str
    token: int
    expires_at_ms: int


class RegistryMachine(RuleBasedStateMachine):
    """Three servers acquire, renew, release and write under two names while the clock
    moves; every call's outcome is predicted by the model before it is made."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World(":memory:")
        self.ledger = self.world.ledger
        self.leases: dict[str, ModelLease] = {}
        #: every token each server was given, per name, in order
        self.issued: dict[str, list[int]] = {n: [] for n in NAMES}
        #: what each server last got for each name (it may be stale)
        self.tokens: dict[tuple[str, str], int] = {}
        self.values: dict[str, bytes] = {}

    def _now(self) -> int:
        return self.ledger.clock_ms()

    def _live(self, name: str) -> bool:
        lease = self.leases.get(name)
        return lease is not None and self._now() < lease.expires_at_ms

    @rule(ms=st.integers(0, 700))
    def time_passes(self, ms: int) -> None:
        self.ledger.advance_clock(ms)

    @rule(who=st.sampled_from(SERVERS), name=st.sampled_from(NAMES), d=st.integers(1, 600))
    def acquire(self, who: HostIdentity, name: str, d: int) -> None:
        if self._live(name):
            with pytest.raises(LeaseHeld):
                self.ledger.acquire_lease(who, self.world.id, name, "h", d)
            return
        token = self.ledger.acquire_lease(who, self.world.id, name, "h", d)
        last = self.leases[name].token if name in self.leases else 0
        assert token == last + 1
        self.leases[name] = ModelLease(who.sui_address, token, self._now() + d)
        self.issued[name].append(token)
        self.tokens[(who.sui_address, name)] = token

    def _expect(self, who: HostIdentity, name: str, token: int) -> str | None:
        """The error a call under (name, token) by ``who`` must raise now, or None."""
        lease = self.leases.get(name)
        if lease is None:
            return "ENoLease"
        if token != lease.token:
            return "EStaleToken"
        if who.sui_address != lease.owner:
            return "ENotHolder"
        if self._now() >= lease.expires_at_ms:
            return "ELeaseExpired"
        return None

    def _token_of(self, who: HostIdentity, name: str, stale: bool) -> int:
        token = self.tokens.get((who.sui_address, name), 1)
        return max(0, token - 1) if stale else token

    @rule(
        who=st.sampled_from(SERVERS),
        name=st.sampled_from(NAMES),
        stale=st.booleans(),
        d=st.integers(1, 600),
    )
    def renew(self, who: HostIdentity, name: str, stale: bool, d: int) -> None:
        token = self._token_of(who, name, stale)
        expected = self._expect(who, name, token)
        if expected is not None:
            with pytest.raises(ChainError) as info:
                self.ledger.renew_lease(who, self.world.id, name, token, d)
            assert info.value.name == expected
            return
        assert self.ledger.renew_lease(who, self.world.id, name, token, d) == self._now() + d
        self.leases[name].expires_at_ms = self._now() + d

    @rule(who=st.sampled_from(SERVERS), name=st.sampled_from(NAMES), stale=st.booleans())
    def release(self, who: HostIdentity, name: str, stale: bool) -> None:
        token = self._token_of(who, name, stale)
        expected = self._expect(who, name, token)
        if expected == "ELeaseExpired":
            expected = None  # release works after expiry too
        if expected is not None:
            with pytest.raises(ChainError) as info:
                self.ledger.release_lease(who, self.world.id, name, token)
            assert info.value.name == expected
            return
        self.ledger.release_lease(who, self.world.id, name, token)
        self.leases[name].expires_at_ms = 0

    @rule(
        who=st.sampled_from(SERVERS),
        name=st.sampled_from(NAMES),
        stale=st.booleans(),
        key=st.sampled_from(("a", "b")),
        value=st.binary(max_size=8),
    )
    def put(self, who: HostIdentity, name: str, stale: bool, key: str, value: bytes) -> None:
        token = self._token_of(who, name, stale)
        expected = self._expect(who, name, token)
        if expected is not None:
            with pytest.raises(ChainError) as info:
                self.ledger.registry_put(who, self.world.id, name, token, key, value)
            assert info.value.name == expected
            return
        self.ledger.registry_put(who, self.world.id, name, token, key, value)
        self.values[key] = value

    @invariant()
    def tokens_strictly_increase(self) -> None:
        for issued in self.issued.values():
            assert issued == sorted(set(issued))
            assert issued == list(range(1, len(issued) + 1))

    @invariant()
    def at_most_one_unexpired_holder(self) -> None:
        state = self.ledger.get_registry(self.world.id)
        now = self._now()
        for name in NAMES:
            holders = [
                lease.owner
                for lease in state.leases.values()
                if lease.name == name and lease.held_at(now)
            ]
            assert len(holders) == (1 if self._live(name) else 0)
        assert {k: e.value for k, e in state.entries.items()} == self.values


TestRegistryRules = RegistryMachine.TestCase


def regenerate() -> None:
    """Rewrite tests/golden/coordination_transactions.json from the current builders."""
    write_golden(
        GOLDEN,
        (
            "the dtp.ledger.sui._tx registry builders (dtp::registry) for the fixed inputs of "
            "tests/ledger/coordination_tx_cases.py"
        ),
        build_all(),
    )


if __name__ == "__main__":
    regenerate_main(regenerate)
