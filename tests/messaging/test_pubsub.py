"""Pub/sub over real DTP connections: convergence on a 5-peer mesh with loops (so every
message arrives over several paths), de-duplication, the hop limit, a slow subscriber and
a peer that stops reading (neither stalls the others; drops are counted and reported),
and malformed frames."""

from __future__ import annotations

import struct
import threading
import time

import pytest

import dtp.socket
from dtp.messaging import errors as E
from dtp.messaging._framing import encode_frame
from dtp.messaging.pubsub import PubSubNode, Subscription
from tests.messaging.mesh import Mesh, drain
from tests.support.polling import thread_stacks, wait_for


def test_five_peer_mesh_converges_without_duplicates(mesh: Mesh) -> None:
    subs = [node.subscribe("news") for node in mesh.nodes]
    other = mesh.nodes[3].subscribe("other")
    mesh.settle("news")
    sent = []
    for i in range(40):
        publisher = mesh.nodes[i % 5]
        publisher.publish("news", f"m{i}".encode())
        sent.append(f"m{i}".encode())
    for sub in subs:
        got = drain(sub, 40)
        assert sorted(got) == sorted(sent)
    time.sleep(0.2)
    for sub in subs:
        assert sub.qsize() == 0  # nothing delivered twice
    assert sum(node.duplicates for node in mesh.nodes) > 0  # loops did carry copies
    assert other.qsize() == 0
    # messages from one publisher arrive in order at every subscriber
    one = [node.subscribe("ordered") for node in mesh.nodes]
    mesh.settle("ordered")
    for i in range(30):
        mesh.nodes[2].publish("ordered", bytes([i]))
    for sub in one:
        assert drain(sub, 30) == [bytes([i]) for i in range(30)]


def test_hop_limit(mesh: Mesh) -> None:
    line = Mesh(4, [(0, 1), (1, 2), (2, 3)])
    try:
        subs = [node.subscribe("t") for node in line.nodes]
        line.settle("t")
        line.nodes[0].publish("t", b"short", hops=2)
        assert drain(subs[2], 1) == [b"short"]
        time.sleep(0.3)
        assert subs[3].qsize() == 0 and subs[1].qsize() == 1
        assert line.nodes[2].hop_limited == 1
    finally:
        line.close()


def test_slow_subscriber_drops_are_counted_and_reported(mesh: Mesh) -> None:
    slow = mesh.nodes[1].subscribe("load", maxsize=5)
    fast = mesh.nodes[1].subscribe("load", maxsize=1000)
    assert mesh.nodes[0].wait_for_interest("load", timeout=10)
    for i in range(100):
        mesh.nodes[0].publish("load", bytes([i]))
    assert len(drain(fast, 100)) == 100
    assert slow.dropped == 95 and slow.delivered == 5
    first = [slow.get(timeout=1) for _ in range(5)]
    assert all(d.dropped_before == 0 for d in first)
    mesh.nodes[0].publish("load", b"after")
    nxt = slow.get(timeout=5)
    assert nxt.data == b"after" and nxt.dropped_before == 95


def test_peer_that_stops_reading_never_stalls_the_others() -> None:
    mesh = Mesh(3, [(0, 1)], link_queue=8)
    try:
        # node 2 is linked to node 0 over a connection whose node-2 side nobody reads
        client = dtp.socket.create_connection(
            mesh.servers[2].address, server_key=mesh.ids[2].noise_public, timeout=10
        )
        stuck, _ = mesh.servers[2].accept(timeout=10)
        mesh.socks += [client, stuck]
        client.settimeout(None)
        link = mesh.nodes[0].attach(client, "0->stuck")
        sub = mesh.nodes[1].subscribe("flood")
        assert mesh.nodes[0].wait_for_interest("flood", timeout=10)
        payload = b"z" * 60_000
        start = time.monotonic()
        for i in range(100):  # paced by the healthy peer: each arrives while one is stuck
            mesh.nodes[0].publish("flood", payload[:-1] + bytes([i]))
            assert sub.get(timeout=10).data[-1] == i
        assert time.monotonic() - start < 30
        assert link.dropped > 0
        # the stuck peer starts reading again: it is told how many it missed
        mesh.nodes[2].attach(stuck, "stuck")
        deadline = time.monotonic() + 20
        mesh.nodes[0].publish("flood", b"tail")
        while time.monotonic() < deadline:
            reported = sum(lk.dropped_upstream for lk in mesh.nodes[2].links)
            if reported:
                break
            time.sleep(0.05)
            mesh.nodes[0].publish("flood", b"tail")
        assert 0 < reported <= link.dropped
    finally:
        mesh.close()


def test_malformed_frames_are_skipped(mesh: Mesh) -> None:
    sub = mesh.nodes[1].subscribe("x")
    assert mesh.nodes[0].wait_for_interest("x", timeout=10)
    raw = mesh.socks[0]  # node 0's side of the 0-1 link
    raw.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    raw.sendall(encode_frame([10, b"short-id", "x", 3, b"d", None]))
    raw.sendall(encode_frame([99]))
    raw.sendall(encode_frame([12, [["", 1]]]))  # SUBSCRIBE to an empty topic
    raw.sendall(encode_frame([12, [["ok", 256]]]))  # distance out of range
    raw.sendall(encode_frame([13, [5]]))  # UNSUBSCRIBE from a non-topic
    mesh.nodes[0].publish("x", b"fine")
    assert drain(sub, 1) == [b"fine"]
    link = next(lk for lk in mesh.nodes[1].links if lk.name == "1<-0")
    # "fine" may come round the mesh before this link has read the bad frames
    assert wait_for(lambda: link.violations >= 6)
    assert link.violations == 6
    with pytest.raises(E.PubSubError):
        mesh.nodes[0].publish("", b"x")
    with pytest.raises(E.PubSubError):
        mesh.nodes[0].subscribe("t" * 300)


def test_close_is_clean(mesh: Mesh) -> None:
    mesh.nodes[0].close()
    assert mesh.nodes[0].links == []
    sub = mesh.nodes[0].subscribe("solo")
    mesh.nodes[0].publish("solo", b"local only")
    assert sub.get(timeout=1).data == b"local only"
    threading.Event().wait(0.05)


def test_messages_go_only_toward_subscribers() -> None:
    # a star: 1 in the middle, leaves 0, 2 and 3; nodes of the flooding kind, so that
    # every copy is counted (with a mesh, node 1 would gossip the first 20 messages'
    # ids to the new subscriber at 3, which may fetch them: docs/messaging.md §4.3)
    star = Mesh(4, [(0, 1), (1, 2), (1, 3)], mesh=None)
    try:
        # every peer has sent its first SUBSCRIBE (until then a link gets everything)
        assert wait_for(lambda: all(lk.remote is not None for n in star.nodes for lk in n.links))
        sub = star.nodes[2].subscribe("a")
        assert star.nodes[0].wait_for_interest("a", timeout=10)
        assert star.nodes[0].interested_links("a") == ["0->1"]
        for i in range(20):
            star.nodes[0].publish("a", bytes([i]))
        assert drain(sub, 20) == [bytes([i]) for i in range(20)]
        star.nodes[0].publish("nobody", b"x")  # no interest anywhere: never leaves node 0
        time.sleep(0.2)
        assert sum(lk.received for lk in star.nodes[3].links) == 0
        assert sum(lk.received for lk in star.nodes[1].links) == 20
        # the leaf unsubscribes: interest is withdrawn along the path
        sub.close()
        assert wait_for(lambda: star.nodes[0].interested_links("a") == [])
        star.nodes[0].publish("a", b"unheard")
        time.sleep(0.2)
        assert sum(lk.received for lk in star.nodes[1].links) == 20
        # a new subscriber at another leaf
        sub3 = star.nodes[3].subscribe("a")
        assert star.nodes[0].wait_for_interest("a", timeout=10)
        star.nodes[0].publish("a", b"again")
        assert drain(sub3, 1) == [b"again"]
        assert sum(lk.received for lk in star.nodes[2].links) == 20
    finally:
        star.close()


def test_stale_interest_in_loops_dies_out(mesh: Mesh) -> None:
    sub = mesh.nodes[3].subscribe("loop")
    for node in mesh.nodes:
        if node is not mesh.nodes[3]:
            assert node.wait_for_interest("loop", timeout=10)
    mesh.nodes[0].publish("loop", b"one")
    assert drain(sub, 1) == [b"one"]
    sub.close()

    def clear() -> bool:
        return all(node.interested_links("loop") == [] for node in mesh.nodes)

    assert wait_for(clear)


def test_interest_stops_at_the_horizon() -> None:
    line = Mesh(4, [(0, 1), (1, 2), (2, 3)], max_hops=2)
    try:
        sub = line.nodes[3].subscribe("far")
        assert line.nodes[1].wait_for_interest("far", timeout=10)  # distance 1 via 2
        # distance 2 is beyond the horizon: node 0 never hears of it
        assert wait_for(lambda: line.nodes[0].links[0].remote is not None)
        time.sleep(0.2)
        assert line.nodes[0].interested_links("far") == []
        line.nodes[1].publish("far", b"near enough")
        assert drain(sub, 1) == [b"near enough"]
    finally:
        line.close()


def test_closed_link_withdraws_its_interest() -> None:
    line = Mesh(3, [(0, 1), (1, 2)])
    try:
        line.nodes[2].subscribe("t")
        assert line.nodes[0].wait_for_interest("t", timeout=10)
        for lk in line.nodes[1].links:
            if lk.name == "1->2":
                lk.close()
        assert wait_for(lambda: line.nodes[0].interested_links("t") == [])
    finally:
        line.close()


def test_messages_above_one_mib_are_forwarded_with_the_nodes_cap() -> None:
    # the forwarding node re-encoded with framing's 1 MiB default, so a larger message
    # (within the node's own cap) ended the link to its sender instead of going on
    line = Mesh(3, [(0, 1), (1, 2)], max_message_size=4 << 20)
    try:
        subs = [node.subscribe("big") for node in line.nodes]
        line.settle("big")
        big = b"x" * (2 << 20)
        line.nodes[0].publish("big", big)
        for sub in subs:
            assert sub.get(timeout=10).data == big
        assert [len(node.links) for node in line.nodes] == [1, 2, 1]
        line.nodes[0].publish("big", b"small")
        for sub in subs:
            assert sub.get(timeout=10).data == b"small"
    finally:
        line.close()


def blocked_get(sub: Subscription) -> tuple[threading.Thread, list[BaseException]]:
    """A thread waiting in ``sub.get()`` (no timeout); what it raised goes in the list."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            sub.get()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive()
    return thread, raised


def test_closing_a_subscription_wakes_get_after_the_queue_drains() -> None:
    node = PubSubNode("solo")
    sub = node.subscribe("t", maxsize=2)
    thread, raised = blocked_get(sub)
    sub.close()
    thread.join(5)
    assert not thread.is_alive() and isinstance(raised[0], E.PubSubError)
    with pytest.raises(E.PubSubError):  # and every later get, waiting or not
        sub.get(timeout=5)
    with pytest.raises(E.PubSubError):
        sub.get_nowait()
    # what was queued first is still delivered, even from a full queue
    full = node.subscribe("t", maxsize=2)
    for data in (b"a", b"b", b"dropped"):
        node.publish("t", data)
    full.close()
    node.publish("t", b"after close")
    assert full.qsize() == 2 and full.dropped == 1
    assert [full.get(timeout=1).data, full.get_nowait().data] == [b"a", b"b"]
    assert full.qsize() == 0
    with pytest.raises(E.PubSubError):
        full.get(timeout=5)


def test_closing_the_node_wakes_get_and_drops_what_its_links_still_read() -> None:
    line = Mesh(2, [(0, 1)])
    try:
        sub = line.nodes[1].subscribe("t")
        assert line.nodes[0].wait_for_interest("t", timeout=10)
        thread, raised = blocked_get(sub)
        (link,) = line.nodes[1].links
        line.nodes[1].close()
        thread.join(5)
        assert not thread.is_alive() and isinstance(raised[0], E.PubSubError)
        # node 1 stays usable locally, but its closed link neither delivers nor forwards
        # what node 0 (which has not noticed) still sends; the link's reader thread ends
        # at those bytes, without waiting for the stream's owner
        fresh = line.nodes[1].subscribe("t")
        line.nodes[0].publish("t", b"too late")
        assert wait_for(lambda: not link._reader.is_alive()), thread_stacks()
        time.sleep(0.1)
        assert fresh.qsize() == 0
        line.nodes[1].publish("t", b"local")
        assert fresh.get(timeout=1).data == b"local"
    finally:
        line.close()


def test_subscription_queue_size_is_checked() -> None:
    node = PubSubNode("solo")
    with pytest.raises(ValueError):
        node.subscribe("t", maxsize=0)  # was an unbounded queue
    with pytest.raises(TypeError):
        node.subscribe("t", maxsize=1.5)  # type: ignore[arg-type]
    one = node.subscribe("t", maxsize=1)
    node.publish("t", b"kept")
    node.publish("t", b"dropped")
    assert one.dropped == 1 and one.get_nowait().data == b"kept"


def test_publish_takes_only_bytes_like_data_and_an_int_hop_count() -> None:
    # bytes(5) made publish("t", 5) send five zero bytes, and hops=1.5 went out in a
    # frame every peer refuses
    node = PubSubNode("solo")
    sub = node.subscribe("t")
    for bad in (5, "text", None, [1, 2]):
        with pytest.raises(TypeError, match="a bytes-like object is required"):
            node.publish("t", bad)  # type: ignore[arg-type]
    for hops in (1.5, "3", True):
        with pytest.raises(TypeError, match="hops must be an int"):
            node.publish("t", b"x", hops=hops)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        node.publish("t", b"x", hops=256)
    assert sub.qsize() == 0
    node.publish("t", bytearray(b"ba"))
    node.publish("t", memoryview(b"mv"), hops=0)
    assert [sub.get_nowait().data for _ in range(2)] == [b"ba", b"mv"]
