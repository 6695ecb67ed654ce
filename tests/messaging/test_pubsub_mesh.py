"""The gossip mesh's rules (docs/messaging.md §4.3), on the sans-I/O router and a
virtual clock: grafting up to D, repairs at the heartbeat, pruning with backoff and
peer exchange, IHAVE / IWANT, scores applied to the mesh (P3 included)."""

from __future__ import annotations

import os
import random

import pytest

from dtp.messaging._framing import decode_body, encode_frame
from dtp.messaging._pubsub_mesh import (
    GRAFT,
    HELLO,
    IHAVE,
    IWANT,
    PRUNE,
    MeshParams,
    MeshRouter,
    UnsupportedVersion,
)
from dtp.messaging._pubsub_scoring import PeerScores, ScoreParams
from dtp.messaging.errors import MalformedMessage

T = "t"


def router(
    peers: int = 0,
    *,
    params: MeshParams | None = None,
    scores: dict[str, float] | None = None,
    join: bool = True,
    mesh_peers: bool = True,
) -> MeshRouter[str]:
    """A router with ``peers`` peers p0.. that said HELLO (unless ``mesh_peers`` is
    False) and declared ``T``; joined to ``T``."""
    table = scores if scores is not None else {}
    r: MeshRouter[str] = MeshRouter(
        "me",
        params=params or MeshParams(),
        rng=random.Random(7),
        score=lambda key, now: table.get(str(key), 0.0),
        address="here",
    )
    if join:
        r.join(T, 0.0)
    for i in range(peers):
        add(r, f"p{i}", mesh=mesh_peers)
    return r


def add(r: MeshRouter[str], peer: str, *, mesh: bool = True, now: float = 0.0) -> list:
    r.add_peer(peer, peer, peer)
    if mesh:
        r.control(peer, [HELLO, 2, f"id-{peer}", f"addr-{peer}"], now)
    return r.interest(peer, [T], [], now)


def kinds(frames: list) -> list[tuple[str, int]]:
    return [(peer, decode_body(frame[4:])[0]) for peer, frame in frames]


def test_peers_that_declare_a_joined_topic_are_grafted_up_to_d_and_no_more() -> None:
    r = router()
    grafted = []
    for i in range(10):
        frames = add(r, f"p{i}")
        grafted += [p for p, k in kinds(frames) if k == GRAFT]
    assert len(r.mesh[T]) == 6 == len(grafted)
    assert set(grafted) == r.mesh[T]


def test_joining_a_topic_grafts_d_of_its_peers_at_once() -> None:
    r = router(10, join=False)
    assert T not in r.mesh
    frames = r.join(T, 1.0)
    assert len(r.mesh[T]) == 6
    assert sorted(p for p, k in kinds(frames) if k == GRAFT) == sorted(r.mesh[T])


def test_full_messages_go_to_the_mesh_only_and_every_flooding_peer() -> None:
    r = router(10)
    add(r, "old", mesh=False)  # the flooding kind: no HELLO
    mesh = set(r.mesh[T])
    frame = encode_frame([10, os.urandom(16), T, 8, b"x", None])
    targets = r.received("p9" if "p9" not in mesh else "p8", T, os.urandom(16), frame, 1.0)
    assert "old" in targets
    assert set(targets) - {"old"} <= mesh
    assert len(targets) == 1 + len(mesh)  # (the source is not in the mesh)


def test_a_peer_that_has_declared_nothing_gets_everything_only_if_it_floods() -> None:
    r = router()
    r.add_peer("quiet-old", "quiet-old", "quiet-old")
    r.add_peer("quiet-new", "quiet-new", "quiet-new")
    r.control("quiet-new", [HELLO, 2, "n", None], 0.0)
    assert r.wants("quiet-old", T)
    assert not r.wants("quiet-new", T)


def test_the_heartbeat_grafts_a_mesh_under_d_lo_back_up_to_d() -> None:
    r = router(10)
    for peer in list(r.mesh[T])[:3]:
        r.remove_peer(peer, 1.0)
    assert len(r.mesh[T]) == 3 < r.params.d_lo
    frames = r.heartbeat(2.0)
    assert len(r.mesh[T]) == 6
    assert len([k for _, k in kinds(frames) if k == GRAFT]) == 3


def test_the_heartbeat_cuts_a_mesh_over_d_hi_back_to_d_keeping_the_best_scored() -> None:
    scores = {f"p{i}": float(i) for i in range(14)}
    r = router(14, scores=scores)
    for i in range(14):  # they all graft us
        r.control(f"p{i}", [GRAFT, [T]], 0.0)
    assert len(r.mesh[T]) == 12  # d_hi: the 13th and 14th were pruned at once
    r.control("p13", [PRUNE, [T], 0, []], 0.0)  # (room for one more)
    r.mesh[T].update({"p13", "p12"})
    frames = r.heartbeat(1.0)
    assert len(r.mesh[T]) == 6
    assert {"p13", "p12", "p11", "p10"} <= r.mesh[T]  # d_score = 4 best kept
    assert len([k for _, k in kinds(frames) if k == PRUNE]) == 14 - 6


def test_a_peer_below_zero_is_pruned_at_the_heartbeat_and_not_grafted() -> None:
    scores: dict[str, float] = {}
    r = router(10, scores=scores)
    victim = sorted(r.mesh[T])[0]
    scores[victim] = -1.0
    frames = r.heartbeat(1.0)
    assert victim not in r.mesh[T]
    assert (victim, PRUNE) in kinds(frames)
    # its GRAFT is answered with a PRUNE, and the heartbeat does not take it back
    answer = r.control(victim, [GRAFT, [T]], 2.0)
    assert kinds(answer) == [(victim, PRUNE)]
    for now in range(3, 200):
        r.heartbeat(float(now))
        assert victim not in r.mesh[T]
    assert r.counters["graft_refused"] == 1


def test_a_prune_keeps_both_sides_apart_for_the_backoff() -> None:
    params = MeshParams(d=4, d_lo=4, d_hi=8, d_score=2, prune_backoff=60)
    r = router(4, params=params)
    assert r.mesh[T] == {"p0", "p1", "p2", "p3"}
    r.control("p0", [PRUNE, [T], 60, []], 10.0)
    assert "p0" not in r.mesh[T]
    r.heartbeat(11.0)  # under d_lo, but p0 is in its backoff: nobody to graft
    assert r.mesh[T] == {"p1", "p2", "p3"}
    r.heartbeat(69.0)
    assert "p0" not in r.mesh[T]
    frames = r.heartbeat(71.0)
    assert "p0" in r.mesh[T]
    assert ("p0", GRAFT) in kinds(frames)


def test_a_graft_within_the_backoff_is_pruned_again_and_the_backoff_starts_over() -> None:
    r = router(2)
    r.control("p0", [PRUNE, [T], 30, []], 0.0)
    answer = r.control("p0", [GRAFT, [T]], 5.0)
    assert kinds(answer) == [("p0", PRUNE)]
    assert "p0" not in r.mesh[T]
    assert kinds(r.control("p0", [GRAFT, [T]], 31.0)) == [("p0", PRUNE)]  # 5 + 60 > 31
    assert r.control("p0", [GRAFT, [T]], 92.0) == []  # 31 + 60 < 92
    assert "p0" in r.mesh[T]


def test_a_full_mesh_prunes_a_graft_naming_its_peers_to_try_instead() -> None:
    params = MeshParams(d=2, d_lo=1, d_hi=2, d_score=1)
    r = router(2, params=params)
    add(r, "late")
    answer = r.control("late", [GRAFT, [T]], 1.0)
    [(peer, frame)] = answer
    kind, topics, backoff, px = decode_body(frame[4:])
    assert (peer, kind, topics, backoff) == ("late", PRUNE, [T], 60)
    assert sorted(px) == [["id-p0", "addr-p0"], ["id-p1", "addr-p1"]]


def test_peer_exchange_is_taken_from_peers_in_good_standing_only() -> None:
    scores = {"bad": -5.0}
    r = router(scores=scores)
    add(r, "good")
    add(r, "bad")
    r.control("good", [PRUNE, [T], 60, [["x", "addr-x"], ["me", "self"]]], 0.0)
    r.control("bad", [PRUNE, [T], 60, [["sybil", "addr-s"]]], 0.0)
    assert dict(r.exchanged) == {"x": "addr-x"}  # not itself, not the bad peer's


def test_ihave_asks_for_the_unseen_ids_and_iwant_is_served_a_bounded_number_of_times() -> None:
    r = router(2)
    seen, unseen = os.urandom(16), os.urandom(16)
    frame = encode_frame([10, seen, T, 8, b"x", None])
    r.received("p0", T, seen, frame, 0.0)
    answer = r.control("p1", [IHAVE, T, [seen, unseen]], 0.5)
    assert [decode_body(f[4:]) for _, f in answer] == [[IWANT, [unseen]]]
    # p1 asks for what we have: served, at most gossip_retransmission times
    served = [r.control("p1", [IWANT, [seen, unseen]], 0.6) for _ in range(5)]
    assert [len(s) for s in served] == [1, 1, 1, 0, 0]
    assert served[0] == [("p1", frame)]


def test_frames_kept_for_iwant_are_bounded_in_bytes_oldest_forgotten_first() -> None:
    r = router(1, params=MeshParams(history_bytes=2500))
    ids = [os.urandom(16) for _ in range(4)]
    for message_id in ids:
        r.received(
            "p0", T, message_id, encode_frame([10, message_id, T, 8, bytes(1000), None]), 0.0
        )
    served = [len(r.control("p0", [IWANT, [i]], 0.1)) for i in ids]
    assert served == [0, 0, 1, 1]  # two frames of ~1,040 bytes fit in 2,500


def test_ihave_is_read_a_bounded_number_of_times_per_heartbeat() -> None:
    r = router(1, params=MeshParams(max_ihave_frames=2))
    answers = [r.control("p0", [IHAVE, T, [os.urandom(16)]], 0.1) for _ in range(4)]
    assert [len(a) for a in answers] == [1, 1, 0, 0]
    r.heartbeat(1.0)
    assert len(r.control("p0", [IHAVE, T, [os.urandom(16)]], 1.1)) == 1


def test_messages_are_gossiped_to_peers_outside_the_mesh_then_forgotten() -> None:
    r = router(12)
    message_id = os.urandom(16)
    frame = encode_frame([10, message_id, T, 8, b"x", None])
    r.received(sorted(r.mesh[T])[0], T, message_id, frame, 0.5)
    outside = {f"p{i}" for i in range(12)} - r.mesh[T]
    gossiped: set[str] = set()
    for beat in range(1, 8):
        frames = r.heartbeat(float(beat))
        ihaves = [(p, decode_body(f[4:])) for p, f in frames if decode_body(f[4:])[0] == IHAVE]
        for peer, message in ihaves:
            assert peer in outside
            assert message == [IHAVE, T, [message_id]]
            gossiped.add(peer)
        if beat > r.params.history_gossip:
            assert not ihaves
    assert gossiped == outside  # 6 of 6 a heartbeat (d_lazy)
    # after history_length heartbeats an IWANT finds nothing
    assert r.control("p0", [IWANT, [message_id]], 8.0) == []


def test_publishing_to_a_topic_not_joined_goes_to_a_fanout_that_expires() -> None:
    r = router(10, join=False, params=MeshParams(flood_publish=False, fanout_ttl=60))
    frame = encode_frame([10, os.urandom(16), T, 8, b"x", None])
    targets = r.published(T, os.urandom(16), frame, 0.0)
    assert len(targets) == 6
    assert set(targets) == r.fanout[T]
    r.heartbeat(30.0)
    assert T in r.fanout
    r.heartbeat(61.0)
    assert T not in r.fanout
    # joining takes the fanout's peers first
    r.published(T, os.urandom(16), frame, 62.0)
    fanout = set(r.fanout[T])
    r.join(T, 63.0)
    assert r.mesh[T] == fanout


def test_flood_publishing_sends_a_nodes_own_message_to_every_peer_of_the_topic() -> None:
    scores = {"p9": -1.0}
    r = router(10, scores=scores)
    frame = encode_frame([10, os.urandom(16), T, 8, b"x", None])
    targets = r.published(T, os.urandom(16), frame, 0.0)
    assert sorted(targets) == sorted(f"p{i}" for i in range(9))  # not the one below 0


def test_a_peer_that_withdraws_interest_leaves_the_mesh() -> None:
    r = router(3)
    assert "p0" in r.mesh[T]
    r.interest("p0", [], [T], 1.0)
    assert "p0" not in r.mesh[T]
    r.heartbeat(2.0)
    assert "p0" not in r.mesh[T]


def test_leaving_a_topic_prunes_every_mesh_peer_with_the_shorter_backoff() -> None:
    r = router(3)
    frames = r.leave(T, 1.0)
    assert sorted(kinds(frames)) == [("p0", PRUNE), ("p1", PRUNE), ("p2", PRUNE)]
    assert {decode_body(f[4:])[2] for _, f in frames} == {10}
    assert T not in r.mesh
    # joined again within the backoff: nobody to graft; after it, all three
    assert r.join(T, 5.0) == [] and r.mesh[T] == set()
    r.heartbeat(12.0)
    assert r.mesh[T] == {"p0", "p1", "p2"}


def test_hello_of_another_version_is_refused_and_control_before_hello_is_malformed() -> None:
    r = router()
    r.add_peer("x", "x", "x")
    with pytest.raises(MalformedMessage, match="before the peer's HELLO"):
        r.control("x", [GRAFT, [T]], 0.0)
    with pytest.raises(UnsupportedVersion, match="version 3"):
        r.control("x", [HELLO, 3, "x", None], 0.0)
    r.control("x", [HELLO, 2, "x", None], 0.0)
    with pytest.raises(MalformedMessage, match="second HELLO"):
        r.control("x", [HELLO, 2, "x", None], 0.0)


@pytest.mark.parametrize(
    "message",
    [
        [GRAFT, "t"],
        [GRAFT, [1]],
        [GRAFT, ["t"] * 513],
        [PRUNE, [T], -1, []],
        [PRUNE, [T], 1.5, []],
        [PRUNE, [T], 1, [["x"]]],
        [PRUNE, [T], 1, [["x", 5]]],
        [PRUNE, [T], 1, [["x", None]] * 17],
        [IHAVE, "", [os.urandom(16)]],
        [IHAVE, T, [b"short"]],
        [IWANT, [os.urandom(15)]],
        [IWANT, [os.urandom(16)] * 513],
        [99],
    ],
)
def test_malformed_control_frames_are_refused(message: list) -> None:
    r = router(1)
    with pytest.raises(MalformedMessage):
        r.control("p0", message, 0.0)


def test_mesh_peers_that_deliver_too_little_fall_below_zero_and_are_pruned() -> None:
    """P3 on a virtual clock: a peer grafted for longer than the activation time that
    brought fewer messages than the threshold is scored below 0, so the heartbeat
    prunes it; one that delivers stays."""
    scores = PeerScores(
        ScoreParams(
            mesh_delivery_threshold=5,
            mesh_delivery_activation=10,
            mesh_delivery_weight=-1,
        )
    )
    r: MeshRouter[str] = MeshRouter(
        "me",
        params=MeshParams(d=2, d_lo=1, d_hi=4, d_score=1),
        rng=random.Random(1),
        score=scores.score,
        on_graft=scores.graft,
        on_prune=scores.prune,
        on_mesh_delivery=scores.mesh_delivery,
    )
    r.join(T, 0.0)
    for peer in ("lazy", "busy"):
        scores.connect(peer, peer, 0.0)
        add(r, peer)
    assert r.mesh[T] == {"lazy", "busy"}
    for k in range(20):
        message_id = os.urandom(16)
        frame = encode_frame([10, message_id, T, 8, b"x", None])
        r.received("busy", T, message_id, frame, 1.0 + k * 0.2)
        r.received("lazy", T, message_id, None, 3.0 + k * 0.2)  # 2 s late: no credit
    r.heartbeat(9.0)  # before the activation: nobody is penalised
    assert r.mesh[T] == {"lazy", "busy"}
    assert scores.score("lazy", 9.0) == 0.0
    assert scores.score("lazy", 11.0) == -25.0  # (5 - 0)^2, once grafted 10 s
    assert scores.score("busy", 11.0) == 0.0  # 20 deliveries: no deficit
    frames = r.heartbeat(11.0)
    assert r.mesh[T] == {"busy"}
    assert ("lazy", PRUNE) in kinds(frames)
    # out of the mesh, its deficit no longer counts; the backoff keeps it out
    assert scores.score("lazy", 11.0) == 0.0
    r.heartbeat(12.0)
    assert r.mesh[T] == {"busy"}
    view = scores.view(11.0)
    assert view["busy"].meshes == 1 and 17 < view["busy"].mesh_deliveries < 20  # (decaying)
    assert view["lazy"].meshes == 0


def test_mesh_params_are_checked() -> None:
    with pytest.raises(ValueError, match="d_lo <= d <= d_hi"):
        MeshParams(d=3, d_lo=4)
    with pytest.raises(ValueError, match="d_score"):
        MeshParams(d_score=7)
    with pytest.raises(ValueError, match="heartbeat"):
        MeshParams(heartbeat=0)
    with pytest.raises(TypeError, match="flood_publish"):
        MeshParams(flood_publish=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="px_peers"):
        MeshParams(px_peers=17)
