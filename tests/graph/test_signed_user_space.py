"""Signed user-space updates a replica already holds are not verified again.

A batch of signed updates sent again -- a resync pushing a leaf both sides hold, the
same change forwarded by several neighbours, a peer replaying what it got -- paid one
Ed25519 verification per update every time (about 0.1 ms each: a repeat cost as much
as the first merge, 20x more than merging it). An update identical to the stored one
(same state, same stored bytes, signature included) was checked when it first came;
anything else is still checked."""

from __future__ import annotations

import pytest

from dtp.graph import Graph, namespace
from dtp.identity.keys import HostIdentity
from dtp.native.core import decode_ham_batch, encode_ham_batch
from dtp.native.types import HamUpdate


@pytest.fixture
def signed_batch() -> tuple[HostIdentity, bytes]:
    owner = HostIdentity.generate()
    source = Graph(identity=owner)
    for i in range(20):
        source.put(namespace.user_soul(owner, f"post/{i}"), {"text": f"hello {i}"})
    batch = b"".join(source.export())
    source.close()
    return owner, batch


@pytest.mark.parametrize("ham", ["c", "python"])
def test_a_repeated_signed_batch_is_not_verified_again(
    signed_batch: tuple[HostIdentity, bytes], ham: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, batch = signed_batch
    graph = Graph(ham=ham)
    checked: list[HamUpdate] = []
    real_check = namespace.check

    def counting_check(update: HamUpdate) -> str | None:
        checked.append(update)
        return real_check(update)

    monkeypatch.setattr(namespace, "check", counting_check)
    assert graph.merge(batch).applied == 20
    assert len(checked) == 20
    checked.clear()
    for _ in range(3):
        report = graph.merge(batch)
        assert report.same == 20 and report.refused == 0
    assert checked == []
    graph.close()


def test_a_forged_copy_of_a_held_field_is_still_refused(
    signed_batch: tuple[HostIdentity, bytes],
) -> None:
    _, batch = signed_batch
    graph = Graph()
    graph.merge(batch)
    held = decode_ham_batch(batch)
    forged = []
    for u in held[:3]:
        # the value and state it holds, under a signature that is not the owner's
        bad_signature = bytes(64)
        forged.append(u._replace(value=u.value[:32] + bad_signature + u.value[96:]))
    # ... and one with a greater value at the same state (it would win the tie)
    u = held[3]
    forged.append(u._replace(value=u.value + b" "))
    report = graph.merge(encode_ham_batch(forged + held[4:]))
    assert report.refused == 4
    assert report.same == len(held) - 4
    assert graph.snapshot() == {(u.soul, u.field): (u.state, u.value) for u in held}
    graph.close()
