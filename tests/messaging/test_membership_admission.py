"""Group admission (docs/messaging.md §6.2, "Admission"), on both drivers over real DTP
connections: a stranger -- a peer that reaches a member's port but that the group does
not name -- is refused (at the handshake when the group lists addresses, keys or a
registry's members; at its first frame when it proves no group key), counted in the
member's ``refused_peers``, and never heard: its join goes nowhere and its forged "m2 is
dead" reaches no member's engine. The proof and the registry's refresh on their own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest

import dtp.socket
from dtp.errors import ChainError, ConnectionRefused, DTPError, InvalidObjectId
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging._framing import encode_frame
from dtp.messaging._membership import MembershipConfig, MembershipEvent, MemberState
from dtp.messaging._membership_admission import Gate, GroupAdmission
from dtp.messaging._membership_socket import join_group
from dtp.messaging._membership_wire import NOTICE
from dtp.messaging.coordination import Registry
from dtp.transport._hooks import PeerInfo
from tests.messaging.membership_net import Group, states
from tests.support.polling import wait_for

pytestmark = pytest.mark.timeout(120)

CONFIG = MembershipConfig(
    probe_interval=0.2, probe_timeout=0.1, suspicion_timeout=1.5, sync_interval=0.5
)
KEY = bytes(range(32))


@pytest.fixture(params=["socket", "aio"])
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def groups(driver: str) -> Iterator[Any]:
    made: list[Group] = []

    def make(admission: GroupAdmission, identities: list[HostIdentity]) -> Group:
        group = Group(
            driver, 3, CONFIG, forwarders=False, admission=admission, identities=identities
        )
        made.append(group)
        return group

    yield make
    for group in made:
        group.close()


def whole(group: Group) -> bool:
    return group.wait_all(lambda i, ms: sum(m.state is MemberState.ALIVE for m in ms) == 3, 30)


def forged_death(group: Group, stranger: HostIdentity) -> bytes:
    """A well-formed NOTICE from the stranger saying m2 died, at an incarnation ahead of
    m2's own (heard, it would win)."""
    m2 = group.nodes[2].me
    me = ["x", "127.0.0.1", 9, stranger.noise_public, 0, 0]
    dead = [m2.id, m2.host, m2.port, m2.key, m2.incarnation + 5, int(MemberState.DEAD)]
    return encode_frame([1, NOTICE, me, 0, None, [dead]])


def assert_never_heard(group: Group, stranger_events: list[MembershipEvent]) -> None:
    """No member heard of the stranger or of m2's death, for a few periods."""
    time.sleep(10 * CONFIG.probe_interval)
    for i, events in enumerate(group.events):
        about = {(e.kind, e.member.id) for e in events}
        assert not any(who == "x" for _, who in about), (i, about)
        # (the lie, heard, is a death; a suspicion refuted is the protocol's own under load)
        assert ("dead", "m2") not in about, (i, about)
        assert states(group.view(i)).keys() == {"m0", "m1", "m2"}
        assert group.nodes[i].refused == 0  # (nothing of the stranger's was read)
    assert stranger_events == []  # it heard of nobody either


def test_a_stranger_without_the_group_key_is_never_heard(groups: Any) -> None:
    group: Group = groups(GroupAdmission(keys=(KEY,)), [HostIdentity.generate() for _ in range(3)])
    assert whole(group)
    target = group.nodes[1]
    stranger = HostIdentity.generate()
    # its join, with no key, then with another key: each connection dropped unread
    stranger_events: list[MembershipEvent] = []
    for admission in (None, GroupAdmission(keys=(b"another key, 16+",))):
        node = group.start("x", stranger, [group.nodes[0].seed()], admission, stranger_events)
        time.sleep(3 * CONFIG.sync_interval)
        group.call(node, "close")
    # and its lie, on a connection of its own
    with dtp.socket.create_connection(
        target.address, server_key=target.me.key, identity=stranger, timeout=10
    ) as sock:
        sock.sendall(forged_death(group, stranger))
        assert wait_for(lambda: target.refused_peers >= 1, 10)
    assert wait_for(lambda: group.nodes[0].refused_peers >= 2, 10)
    assert_never_heard(group, stranger_events)


@pytest.mark.parametrize("by", ["address", "noise key"])
def test_a_stranger_off_the_list_is_refused_at_the_handshake(groups: Any, by: str) -> None:
    identities = [HostIdentity.generate() for _ in range(3)]
    if by == "address":
        admission = GroupAdmission(addresses=frozenset(i.sui_address for i in identities))
    else:
        admission = GroupAdmission(noise_keys=frozenset(i.noise_public for i in identities))
    group: Group = groups(admission, identities)
    assert whole(group)
    stranger = HostIdentity.generate()
    stranger_events: list[MembershipEvent] = []
    node = group.start("x", stranger, [group.nodes[0].seed()], None, stranger_events)
    time.sleep(3 * CONFIG.sync_interval)
    group.call(node, "close")
    target = group.nodes[1]
    with pytest.raises(ConnectionRefused, match="not a member of this group"):
        dtp.socket.create_connection(
            target.address, server_key=target.me.key, identity=stranger, timeout=10
        )
    assert target.refused_peers == 1 and group.nodes[0].refused_peers >= 1
    assert_never_heard(group, stranger_events)


def test_the_members_of_a_ledger_registry_form_the_group(groups: Any, tmp_path: Path) -> None:
    identities = [HostIdentity.generate() for _ in range(3)]
    ledger = LocalLedger(tmp_path / "ledger.db")
    owner = Registry.create(ledger, identities[0])  # the owner is in: m0
    for member in identities[1:]:
        owner.admit(member.sui_address)
    # (refresh 0: the registry is read at every handshake, so an admission counts at once)
    group: Group = groups(GroupAdmission(registry=owner, refresh=0), identities)
    assert whole(group)
    stranger = HostIdentity.generate()
    outside: list[MembershipEvent] = []
    node = group.start("x", stranger, [group.nodes[0].seed()], None, outside)
    assert wait_for(lambda: group.nodes[0].refused_peers >= 1, 10)
    assert outside == [] and all("x" not in states(group.view(i)) for i in range(3))
    # admitted on the ledger: its next sync with its seed gets in, and the group takes it
    owner.admit(stranger.sui_address)
    assert group.wait_all(lambda i, ms: states(ms).get("x") == MemberState.ALIVE, 30)
    assert group.call(node, "wait_until", lambda ms: len(ms) == 4, 30)
    group.call(node, "close")


# -- the parts on their own -------------------------------------------------------------


def test_a_proof_holds_for_its_own_handshake_and_key_only() -> None:
    h1, h2 = b"\x01" * 32, b"\x02" * 32
    old, new = b"o" * 32, b"n" * 32
    sender = Gate(GroupAdmission(keys=(old,)))
    proof = sender.proof(h1)[4:]
    assert Gate(GroupAdmission(keys=(old,))).check(proof, h1)
    assert Gate(GroupAdmission(keys=(new, old))).check(proof, h1)  # (a key rolled out)
    for gate, handshake in (
        (Gate(GroupAdmission(keys=(old,))), h2),  # replayed on another connection
        (Gate(GroupAdmission(keys=(new,))), h1),  # the old key retired
    ):
        assert not gate.check(proof, handshake) and gate.refused == 1
    fields = msgpack.unpackb(proof)
    for bad in (
        msgpack.packb([2, 1, fields[2]]),
        msgpack.packb([2, 0, fields[2][:-1]]),
        msgpack.packb([1, 1, ["x"], 0, None, []]),
        b"\xc1",
    ):
        gate = Gate(GroupAdmission(keys=(old,)))
        assert not gate.check(bad, h1) and gate.refused == 1


class _Registry:
    """A registry whose reads are counted, and fail while ``down``."""

    def __init__(self) -> None:
        self.members = ("0x" + "b" * 64,)
        self.reads = 0
        self.down = False

    def state(self) -> Any:
        self.reads += 1
        if self.down:
            raise ChainError("ledger unavailable")
        return type("S", (), {"owner": "0x" + "a" * 64, "members": self.members})()


def test_a_registry_is_read_at_most_every_refresh_and_its_last_list_kept() -> None:
    registry = _Registry()
    now = [0.0]
    gate = Gate(GroupAdmission(registry=registry, refresh=5.0), clock=lambda: now[0])  # type: ignore[arg-type]

    def peer(c: str) -> PeerInfo:
        return PeerInfo("0x" + c * 64, None, None, b"k" * 32)

    assert gate.admit(peer("a")) is None and gate.admit(peer("b")) is None
    assert gate.admit(peer("c")) == "not a member of this group (not a member of its registry)"
    assert registry.reads == 1 and gate.refused == 1
    registry.members = ("0x" + "c" * 64,)
    now[0] = 4.9
    assert gate.admit(peer("c")) is not None and registry.reads == 1
    now[0] = 5.0
    assert gate.admit(peer("c")) is None and gate.admit(peer("b")) is not None
    registry.down = True
    now[0] = 20.0
    assert gate.admit(peer("c")) is None and registry.reads == 3  # (the last list)
    down = Gate(GroupAdmission(registry=registry), clock=lambda: now[0])  # type: ignore[arg-type]
    assert down.admit(peer("a")) == "this group's registry could not be read"


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"keys": (b"short",)}, ValueError),
        ({"keys": ("text" * 8,)}, ValueError),
        ({"addresses": "0x1"}, TypeError),
        ({"addresses": ["not an address"]}, InvalidObjectId),
        ({"noise_keys": [b"x" * 31]}, ValueError),
        ({"refresh": -1}, ValueError),
    ],
)
def test_a_bad_admission_is_refused(kw: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        GroupAdmission(**kw)


def test_an_admission_of_another_type_is_refused_before_anything_listens() -> None:
    with pytest.raises(TypeError, match="GroupAdmission"):
        join_group("a", HostIdentity.generate(), admission=(KEY,))  # type: ignore[arg-type]


def test_an_admission_keeps_what_it_was_given_in_normal_form() -> None:
    admission = GroupAdmission(keys=[KEY], addresses=["0xA"])  # type: ignore[arg-type]
    assert admission.keys == (KEY,) and admission.addresses == frozenset({"0x" + "0" * 63 + "a"})
    assert replace(admission, refresh=1.0).addresses == admission.addresses
    assert (
        not GroupAdmission(keys=(KEY,)).checks_peers and GroupAdmission(addresses=()).checks_peers
    )
    assert issubclass(InvalidObjectId, DTPError)
