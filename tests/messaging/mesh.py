"""Pub/sub nodes linked by real DTP connections on 127.0.0.1 (``Mesh``), a hand-driven raw
peer of one of them (``RawPeer``), and a reader of what a subscription got, for the
pub/sub and discovery tests."""

from __future__ import annotations

import queue
import threading
import time

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging._framing import decode_body, encode_frame, read_frames
from dtp.messaging.pubsub import PubSubNode


class Mesh:
    """Nodes linked by DTP connections on 127.0.0.1."""

    def __init__(self, n: int, edges: list[tuple[int, int]], **kw: object) -> None:
        self.nodes = [PubSubNode(f"n{i}", **kw) for i in range(n)]  # type: ignore[arg-type]
        self.ids = [HostIdentity.generate() for _ in range(n)]
        self.servers = [dtp.socket.create_server(("127.0.0.1", 0), identity=i) for i in self.ids]
        self.socks: list[dtp.socket.DTPSocket] = []
        for a, b in edges:
            self.link(a, b)

    def link(self, a: int, b: int) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
        client = dtp.socket.create_connection(
            self.servers[b].address, server_key=self.ids[b].noise_public, timeout=10
        )
        server_side, _ = self.servers[b].accept(timeout=10)
        client.settimeout(None)
        server_side.settimeout(None)
        self.socks += [client, server_side]
        self.nodes[a].attach(client, f"{a}->{b}")
        self.nodes[b].attach(server_side, f"{b}<-{a}")
        return client, server_side

    def settle(self, topic: str) -> None:
        """Wait until every link of every node has declared interest in ``topic`` (once
        every node subscribes to it, subscriptions have spread)."""
        for node in self.nodes:
            assert node.wait_for_interest(topic, len(node.links), timeout=10)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        for sock in self.socks:
            sock.abort("test over")
        for server in self.servers:
            server.close()


def drain(sub: object, count: int, timeout: float = 10.0) -> list[bytes]:
    """Up to ``count`` messages from the subscription ``sub``, waiting ``timeout`` s at most."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        try:
            out.append(sub.get(timeout=0.05).data)  # type: ignore[attr-defined]
        except queue.Empty:
            continue
    return out


class RawPeer:
    """A hand-driven peer of mesh node ``at`` over a real DTP connection: it sends the
    frames it is given and records every frame the node sends it."""

    def __init__(
        self, mesh: Mesh, at: int, name: str = "raw", identity: HostIdentity | None = None
    ) -> None:
        self.sock = dtp.socket.create_connection(
            mesh.servers[at].address,
            server_key=mesh.ids[at].noise_public,
            timeout=10,
            identity=identity,
        )
        node_side, _ = mesh.servers[at].accept(timeout=10)
        self.sock.settimeout(None)
        node_side.settimeout(None)
        mesh.socks += [self.sock, node_side]
        self.link = mesh.nodes[at].attach(node_side, name)
        self.frames: list[object] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for body in read_frames(self.sock, 1 << 24, self._stop):
                if isinstance(body, bytes):
                    self.frames.append(decode_body(body))
        except Exception:
            pass

    def send(self, message: object) -> None:
        self.sock.sendall(encode_frame(message, 1 << 24))

    def subscribe(self, topics: list[str], distance: int = 0) -> None:
        for i in range(0, len(topics), 512):
            self.send([12, [[t, distance] for t in topics[i : i + 512]]])

    def told(self) -> dict[str, int]:
        """The interest the node declared to this peer so far."""
        state: dict[str, int] = {}
        for frame in list(self.frames):
            if isinstance(frame, list) and frame and frame[0] == 12:
                state.update({t: d for t, d in frame[1]})
            elif isinstance(frame, list) and frame and frame[0] == 13:
                for t in frame[1]:
                    state.pop(t, None)
        return state
