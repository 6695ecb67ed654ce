"""Conformance transcripts (docs/protocol-vectors.md, docs/protocol.md section 12): one
complete IK and one complete XX connection with fixed static keys, ephemeral keys and
clock, every record in hex (tests/golden/conformance_ik.json, conformance_xx.json).

Each side of the implementation replays its half against the other's recorded records
and must send exactly the recorded bytes; the DATA records open and seal the same on
both core backends; and the handshake is rebuilt from the spec alone -- noiseprotocol,
msgpack, hashlib and cryptography, none of dtp's handshake code -- to the same bytes.

Regenerate the transcripts and the appendix (only after a deliberate change to the
wire format)::

    python -m tests.protocol.test_conformance --regenerate
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import warnings
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.connection import Keypair, NoiseConnection

from dtp.identity._noise import Handshake, make_auth_proof, verify_auth_proof
from dtp.identity.keys import HostIdentity, personal_message_digest
from dtp.native import core as _core
from dtp.native.types import REC_DATA, RawFrame
from dtp.protocol._events import ConnectionTerminated, StreamDataReceived
from dtp.protocol.connection import Connection, ConnectionConfig, _parse_params
from tests.support.backends import BACKENDS
from tests.support.paths import ROOT
from tests.support.vectors import load_vectors

#: The transcripts, in the appendix's order: two complete connections, then a refusal,
#: a failed proof and a run over a lossy carrier (docs/protocol.md section 12).
NAMES = ("IK", "XX", "IK-refusal", "XX-bad-proof", "IK-lossy")
GOLDEN = {
    n: ROOT / "tests" / "golden" / f"conformance_{n.lower().replace('-', '_')}.json" for n in NAMES
}
#: Each transcript's Noise pattern, and those run over a lossy (datagram) carrier.
PATTERN_OF = {n: n.split("-")[0] for n in NAMES}
LOSSY = frozenset({"IK-lossy"})
TITLES = {
    "IK": "Noise IK",
    "XX": "Noise XX",
    "IK-refusal": "Noise IK, refused",
    "XX-bad-proof": "Noise XX, an identity proof that fails",
    "IK-lossy": "Noise IK over a lossy carrier: a lost record, ACK ranges, a retransmission",
}
#: How each side's connection ended: (closed by the peer, code, reason).
ENDINGS = {
    "IK": {"client": (False, 0, "bye"), "server": (True, 0, "bye")},
    "XX": {"client": (False, 0, "bye"), "server": (True, 0, "bye")},
    "IK-refusal": {
        "client": (True, 11, "not on the list"),
        "server": (False, 11, "not on the list"),
    },
    "XX-bad-proof": {"client": (True, 10, None), "server": (False, 10, None)},
    "IK-lossy": {"client": (False, 0, "bye"), "server": (True, 0, "bye")},
}
APPENDIX = ROOT / "docs" / "protocol-vectors.md"
REGENERATE = "python -m tests.protocol.test_conformance --regenerate"


def _run_of(first: int) -> bytes:
    return bytes(range(first, first + 32))


#: The fixed inputs: 32 consecutive byte values each, easy to recognise in a dump.
KEYS = {
    "client_ed25519_seed": _run_of(0x00),
    "client_static_private": _run_of(0x20),
    "client_ephemeral_private": _run_of(0x40),
    "server_static_private": _run_of(0x60),
    "server_ephemeral_private": _run_of(0x80),
}
# (the server's Ed25519 key signs nothing in a connection; any would do)
SERVER_ED25519_SEED = _run_of(0xA0)
PROLOGUE = b"DTP/1"
PROTOCOL_NAMES = {
    "IK": b"Noise_IK_25519_ChaChaPoly_BLAKE2s",
    "XX": b"Noise_XX_25519_ChaChaPoly_BLAKE2s",
}
PATTERN_BYTE = {"IK": 1, "XX": 2}
AUTH_CONTEXT = {"IK": b"DTP-AUTH-IK-V1", "XX": b"DTP-AUTH-V1"}

#: What each side does, step by step; a step's records are what its side sends after
#: taking every record the other side sent before it and doing its actions.
SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "IK": [
        {"side": "client", "now": 0.0, "actions": []},
        {"side": "server", "now": 0.01, "actions": [{"do": "accept"}]},
        {
            "side": "client",
            "now": 0.02,
            "actions": [
                {
                    "do": "open_stream",
                    "returns": 0,
                    "note": "which the ACCEPT opened (no frame announces it)",
                },
                {"do": "send", "stream": 0, "data": b"ping".hex(), "fin": True},
            ],
        },
        {
            "side": "server",
            "now": 0.03,
            "actions": [{"do": "send", "stream": 0, "data": b"pong".hex(), "fin": True}],
        },
        {"side": "client", "now": 0.04, "actions": [{"do": "close", "code": 0, "reason": "bye"}]},
    ],
    "XX": [
        {"side": "client", "now": 0.0, "actions": []},
        {"side": "server", "now": 0.01, "actions": []},
        {
            "side": "client",
            "now": 0.02,
            "actions": [
                {"do": "open_stream", "returns": 0},
                {"do": "send", "stream": 0, "data": b"ping".hex(), "fin": True},
            ],
        },
        {
            "side": "server",
            "now": 0.03,
            "actions": [
                {"do": "accept"},
                {"do": "send", "stream": 0, "data": b"pong".hex(), "fin": True},
                {"do": "open_stream", "returns": 1},
            ],
        },
        {"side": "client", "now": 0.04, "actions": [{"do": "close", "code": 0, "reason": "bye"}]},
    ],
    "IK-refusal": [
        {"side": "client", "now": 0.0, "actions": []},
        {
            "side": "server",
            "now": 0.01,
            "actions": [{"do": "refuse", "code": 11, "reason": "not on the list"}],
        },
    ],
    "XX-bad-proof": [
        {"side": "client", "now": 0.0, "actions": []},
        {"side": "server", "now": 0.01, "actions": []},
        {
            "side": "client",
            "now": 0.02,
            "actions": [{"do": "corrupt_auth"}],
        },
        {"side": "server", "now": 0.03, "actions": []},
    ],
    "IK-lossy": [
        {"side": "client", "now": 0.0, "actions": []},
        {"side": "server", "now": 0.01, "actions": [{"do": "accept"}]},
        {
            "side": "client",
            "now": 0.02,
            "actions": [
                {"do": "open_stream", "returns": 0, "note": "which the ACCEPT opened"},
                {"do": "send", "stream": 0, "data": b"a".hex(), "fin": True},
                {"do": "open_stream", "returns": 2},
                {"do": "send", "stream": 2, "data": b"b".hex(), "fin": True},
                {"do": "open_stream", "returns": 4},
                {"do": "send", "stream": 4, "data": b"c".hex(), "fin": True},
                {"do": "open_stream", "returns": 6},
                {"do": "send", "stream": 6, "data": b"d".hex(), "fin": True},
                {"do": "open_stream", "returns": 8},
                {"do": "send", "stream": 8, "data": b"e".hex(), "fin": True},
            ],
            "lost": [1],
        },
        {
            "side": "server",
            "now": 0.03,
            "actions": [],
            "note": (
                "acknowledges what came, at once since two ack-eliciting records did "
                "(section 9 of protocol.md): two ranges, counter 1 missing between them"
            ),
        },
        {
            "side": "client",
            "now": 0.04,
            "actions": [],
            "note": (
                "finds counter 1 lost (counter 4, three above it, was acknowledged) and "
                "sends its frame again in a new record: the byte and the FIN that ends "
                "stream 2, one STREAM_FIN as before"
            ),
        },
        {
            "side": "server",
            "now": 0.05,
            "actions": [],
            "note": (
                "takes the record; one ack-eliciting record came since its last ACK, "
                "so the next may wait 25 ms from its arrival"
            ),
        },
        {
            "side": "server",
            "now": 0.08,
            "actions": [],
            "note": (
                "acknowledges once the 25 ms are up; the ACK delay is the 30 ms since "
                "the largest counter it acknowledges arrived"
            ),
        },
        {"side": "client", "now": 0.09, "actions": [{"do": "close", "code": 0, "reason": "bye"}]},
    ],
}

FRAME_NAMES = {
    0x00: "PADDING",
    0x01: "PING",
    0x02: "ACK",
    0x03: "MAX_DATA",
    0x04: "MAX_STREAM_DATA",
    0x05: "RESET_STREAM",
    0x06: "STOP_SENDING",
    0x07: "MAX_STREAMS",
    0x08: "STREAM",
    0x09: "STREAM_FIN",
    0x0A: "CLOSE",
    0x0B: "RECEIPT",
    0x0C: "CONTROL",
    0x0D: "DATAGRAM",
}
RECORD_NAMES = {1: "HS_INIT", 2: "HS_RESP", 3: "HS_FINAL", REC_DATA: "DATA"}


# -- the implementation's two sides ---------------------------------------------------------


def _identities() -> tuple[HostIdentity, HostIdentity]:
    client = HostIdentity.from_private_bytes(
        KEYS["client_ed25519_seed"], KEYS["client_static_private"]
    )
    server = HostIdentity.from_private_bytes(SERVER_ED25519_SEED, KEYS["server_static_private"])
    return client, server


def _connection(side: str, name: str, now: float) -> Connection:
    client, server = _identities()
    pattern, reliable = PATTERN_OF[name], name not in LOSSY
    if side == "client":
        config = ConnectionConfig(
            identity=client,
            is_client=True,
            server_static=server.noise_public if pattern == "IK" else None,
            reliable_carrier=reliable,
        )
        ephemeral = KEYS["client_ephemeral_private"]
    else:
        config = ConnectionConfig(identity=server, is_client=False, reliable_carrier=reliable)
        ephemeral = KEYS["server_ephemeral_private"]
    return Connection(config, ephemeral_key=ephemeral, now=now)


def _act(conn: Connection, action: dict[str, Any]) -> None:
    do = action["do"]
    if do == "accept":
        conn.accept()
    elif do == "open_stream":
        assert conn.open_stream() == action["returns"]
    elif do == "send":
        conn.send_stream_data(action["stream"], bytes.fromhex(action["data"]), action["fin"])
    elif do == "close":
        conn.close(action["code"], action["reason"])
    elif do == "refuse":
        conn.refuse(action["reason"], action["code"])
    elif do == "corrupt_auth":
        # the AUTH frame queued behind message 3, its signature's last byte flipped
        auth = conn.records.ctrl[0]
        assert (auth.type, auth.a) == (0x0C, 1)
        proof = bytes(auth.data[:64]) + bytes([auth.data[64] ^ 1]) + bytes(auth.data[65:])
        conn.records.ctrl[0] = auth._replace(data=proof)
    else:  # pragma: no cover - a scenario typo
        raise AssertionError(f"unknown action {do!r}")


def _flight(conn: Connection, name: str, now: float) -> list[bytes]:
    """What ``conn`` sends now, record by record (one datagram each over a lossy carrier)."""
    if name in LOSSY:
        conn.handle_timer(now)
        return conn.datagrams_to_send(now)
    return _split(conn.data_to_send(now))


def _feed(conn: Connection, name: str, record: bytes, now: float) -> None:
    if name in LOSSY:
        conn.receive_datagram(record, now)
    else:
        conn.receive_data(record, now)


def _delivered(step: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of ``step`` that reach the other side (not those listed as lost)."""
    lost = set(step.get("lost", ()))
    return [r for i, r in enumerate(step["records"]) if i not in lost]


def _split(flight: bytes) -> list[bytes]:
    batch = _core.parse_records(flight)
    assert batch.consumed == len(flight)
    return [flight[r.offset : r.offset + 12 + r.body_len] for r in batch.records]


def _other(side: str) -> str:
    return "server" if side == "client" else "client"


class _Received:
    """What one side's application saw: stream bytes by stream, and the end."""

    def __init__(self) -> None:
        self.streams: dict[int, bytes] = {}
        self.termination: ConnectionTerminated | None = None

    def drain(self, conn: Connection) -> None:
        while (event := conn.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                self.streams[event.stream_id] = self.streams.get(event.stream_id, b"") + bytes(
                    event.data
                )
            elif isinstance(event, ConnectionTerminated):
                self.termination = event


# -- the handshake from the spec alone -------------------------------------------------------


def _noise(pattern: str, initiator: bool) -> NoiseConnection:
    """A noiseprotocol handshake with the transcript's keys (section 8.1's parameters)."""
    noise = NoiseConnection.from_name(PROTOCOL_NAMES[pattern])
    noise.set_prologue(PROLOGUE)
    side = "client" if initiator else "server"
    if initiator:
        noise.set_as_initiator()
    else:
        noise.set_as_responder()
    noise.set_keypair_from_private_bytes(Keypair.STATIC, KEYS[f"{side}_static_private"])
    noise.set_keypair_from_private_bytes(Keypair.EPHEMERAL, KEYS[f"{side}_ephemeral_private"])
    if initiator and pattern == "IK":
        noise.set_keypair_from_public_bytes(
            Keypair.REMOTE_STATIC, _x25519_public(KEYS["server_static_private"])
        )
    with warnings.catch_warnings():
        # (noiseprotocol warns that a fixed ephemeral key is for tests only: it is one)
        warnings.simplefilter("ignore", UserWarning)
        noise.start_handshake()
    return noise


def _x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _ed25519_public(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def _blake2b256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _uleb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _personal_message_digest(message: bytes) -> bytes:
    """Section 8.4: BLAKE2b-256 of Sui's personal-message intent and the message as a
    BCS ``vector<u8>``."""
    return _blake2b256(b"\x03\x00\x00" + _uleb128(len(message)) + message)


def _sui_address(ed25519_public: bytes) -> str:
    return "0x" + _blake2b256(b"\x00" + ed25519_public).hex()


class _SpecHandshake:
    """Both ends of one handshake as section 8 states it, on noiseprotocol alone."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.client = _noise(pattern, initiator=True)
        self.server = _noise(pattern, initiator=False)
        self.messages = 0

    def take(self, body: bytes) -> bytes:
        """The payload of the next handshake message, whose record body is ``body``;
        asserts that its writer, given that payload, writes exactly ``body``."""
        self.messages += 1
        writer, reader = (self.client, self.server)
        if self.messages % 2 == 0:
            writer, reader = reader, writer
        noise_message = body
        if self.messages == 1:  # 8.1: message 1 alone opens with the pattern byte
            assert body[0] == PATTERN_BYTE[self.pattern]
            noise_message = body[1:]
        payload = bytes(reader.read_message(noise_message))
        assert bytes(writer.write_message(payload)) == noise_message
        return payload

    def result(self) -> dict[str, str]:
        """The handshake hash and the keys of section 8.3, once it is complete."""
        assert self.client.handshake_finished and self.server.handshake_finished
        h = bytes(self.client.get_handshake_hash())
        assert h == bytes(self.server.get_handshake_hash())
        protocol = self.client.noise_protocol
        c2s, s2c = bytes(protocol.cipher_state_encrypt.k), bytes(protocol.cipher_state_decrypt.k)
        server = self.server.noise_protocol
        assert (bytes(server.cipher_state_decrypt.k), bytes(server.cipher_state_encrypt.k)) == (
            c2s,
            s2c,
        )
        return {
            "handshake_hash": h.hex(),
            "client_to_server": c2s.hex(),
            "server_to_client": s2c.hex(),
        }


def _ik_binding() -> bytes:
    """Section 8.4: what an IK identity proof signs, after its context."""
    return hashlib.blake2s(
        PROTOCOL_NAMES["IK"]
        + struct.pack("<H", len(PROLOGUE))
        + PROLOGUE
        + _x25519_public(KEYS["server_static_private"])
        + _x25519_public(KEYS["client_ephemeral_private"])
    ).digest()


def _proof(message: bytes) -> bytes:
    """Section 8.4: the 97-byte proof, ``0x00 || Ed25519 signature || public key``."""
    seed = KEYS["client_ed25519_seed"]
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(_personal_message_digest(message))
    return b"\x00" + signature + _ed25519_public(seed)


def _seal(key: bytes, counter: int, plaintext: bytes) -> bytes:
    """Section 4.1: a DATA record."""
    header = struct.pack("<BBHQ", REC_DATA, 0, len(plaintext) + 16, counter)
    nonce = b"\x00" * 4 + struct.pack("<Q", counter)
    return header + ChaCha20Poly1305(key).encrypt(nonce, plaintext, header)


# -- building a transcript -------------------------------------------------------------------


def _frame_json(frame: RawFrame) -> dict[str, Any]:
    return {
        "type": frame.type,
        "a": frame.a,
        "b": frame.b,
        "c": frame.c,
        "data": bytes(frame.data).hex(),
        "ranges": [list(r) for r in frame.ranges],
    }


def _json_frame(frame: dict[str, Any]) -> RawFrame:
    return RawFrame(
        frame["type"],
        frame["a"],
        frame["b"],
        frame["c"],
        bytes.fromhex(frame["data"]),
        tuple((lo, hi) for lo, hi in frame["ranges"]),
    )


def build(name: str) -> dict[str, Any]:
    """The transcript ``name``, both sides of the implementation wired together."""
    pattern = PATTERN_OF[name]
    conns = {side: _connection(side, name, 0.0) for side in ("client", "server")}
    inbox: dict[str, list[bytes]] = {"client": [], "server": []}
    spec = _SpecHandshake(pattern)
    keys: dict[str, str] = {}
    counters = {"client": 0, "server": 0}
    payloads: list[str] = []
    steps = []
    for step in SCENARIOS[name]:
        side, now = step["side"], step["now"]
        conn = conns[side]
        for record in inbox[side]:
            _feed(conn, name, record, now)
        inbox[side].clear()
        for action in step["actions"]:
            _act(conn, action)
        records = []
        for record in _flight(conn, name, now):
            kind, counter = record[0], struct.unpack_from("<Q", record, 4)[0]
            entry: dict[str, Any] = {"kind": kind, "counter": counter, "hex": record.hex()}
            if kind == REC_DATA:
                if not keys:
                    keys = spec.result()
                key = keys["client_to_server" if side == "client" else "server_to_client"]
                assert counter == counters[side]
                counters[side] += 1
                opened = _core.Aead(bytes.fromhex(key)).open_frames(record)
                (only,) = opened.records
                entry["plaintext"] = _core.encode_frames(only.frames).hex()
                entry["frames"] = [_frame_json(f) for f in only.frames]
            else:
                entry["payload"] = spec.take(record[12:]).hex()
                payloads.append(entry["payload"])
            records.append(entry)
        done = {**step, "records": records}
        inbox[_other(side)].extend(bytes.fromhex(r["hex"]) for r in _delivered(done))
        steps.append(done)
    client_ed = _ed25519_public(KEYS["client_ed25519_seed"])
    transcript: dict[str, Any] = {
        "description": (
            f"A DTP connection: {TITLES[name]} (docs/protocol-vectors.md). "
            f"Regenerate with `{REGENERATE}` after a deliberate change."
        ),
        "pattern": pattern,
        "carrier": "lossy" if name in LOSSY else "reliable",
        "protocol_name": PROTOCOL_NAMES[pattern].decode(),
        "prologue": PROLOGUE.hex(),
        "keys": {name: value.hex() for name, value in KEYS.items()},
        "public": {
            "client_ed25519": client_ed.hex(),
            "client_sui_address": _sui_address(client_ed),
            "client_static": _x25519_public(KEYS["client_static_private"]).hex(),
            "client_ephemeral": _x25519_public(KEYS["client_ephemeral_private"]).hex(),
            "server_static": _x25519_public(KEYS["server_static_private"]).hex(),
            "server_ephemeral": _x25519_public(KEYS["server_ephemeral_private"]).hex(),
        },
        "client_params": payloads[0],
        "server_params": payloads[1],
        **keys,
        "auth": _auth(pattern, keys["handshake_hash"]),
        "steps": steps,
    }
    return transcript


def _auth(pattern: str, handshake_hash: str) -> dict[str, str]:
    bound = _ik_binding() if pattern == "IK" else bytes.fromhex(handshake_hash)
    message = AUTH_CONTEXT[pattern] + bound
    return {
        "signed_over": ("ik_binding" if pattern == "IK" else "handshake_hash"),
        "bound": bound.hex(),
        "message": message.hex(),
        "digest": _personal_message_digest(message).hex(),
        "proof": _proof(message).hex(),
    }


def _load(name: str) -> dict[str, Any]:
    transcript: dict[str, Any] = json.loads(GOLDEN[name].read_text())
    return transcript


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
@pytest.mark.parametrize("name", NAMES)
def test_each_side_sends_exactly_the_transcript(name: str, side: str) -> None:
    """One side of the implementation, fed the other side's recorded records (those
    that were not lost), sends every record of its own byte for byte, and its
    application sees the scenario."""
    transcript = _load(name)
    steps = transcript["steps"]
    conn = _connection(side, name, steps[0]["now"])
    seen = _Received()
    fed = 0  # steps of the other side whose records were fed
    for number, step in enumerate(steps):
        if step["side"] != side:
            continue
        for earlier in steps[fed:number]:
            if earlier["side"] != side:
                for record in _delivered(earlier):
                    _feed(conn, name, bytes.fromhex(record["hex"]), step["now"])
        fed = number
        seen.drain(conn)
        for action in step["actions"]:
            _act(conn, action)
        sent = [r.hex() for r in _flight(conn, name, step["now"])]
        assert sent == [r["hex"] for r in step["records"]], (
            f"step {number + 1} ({side}) differs: run `{REGENERATE}` after a deliberate change"
        )
    for earlier in steps[fed:]:
        if earlier["side"] != side:
            for record in _delivered(earlier):
                _feed(conn, name, bytes.fromhex(record["hex"]), steps[-1]["now"])
    seen.drain(conn)
    assert seen.streams == _sent_by(steps, _other(side))
    by_peer, code, reason = ENDINGS[name][side]
    term = seen.termination
    assert term is not None and (term.by_peer, term.error_code) == (by_peer, code), term
    if reason is not None:
        assert term.reason == reason
    if side == "server" and code in (0, 11):  # the client proved who it is
        assert conn.peer_address == transcript["public"]["client_sui_address"]
    if name not in LOSSY:  # (a lossy carrier's closing side may repeat its CLOSE)
        assert conn.data_to_send(steps[-1]["now"]) == b""


def _sent_by(steps: list[dict[str, Any]], side: str) -> dict[int, bytes]:
    sent: dict[int, bytes] = {}
    for step in steps:
        if step["side"] == side:
            for action in step["actions"]:
                if action["do"] == "send":
                    stream = action["stream"]
                    sent[stream] = sent.get(stream, b"") + bytes.fromhex(action["data"])
    return sent


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("name", NAMES)
def test_the_data_records_open_and_seal_alike_on_each_backend(
    name: str, b: SimpleNamespace
) -> None:
    """Each direction's DATA records, counted from 0 (section 8.3), open in order under
    its key to the listed frames, and sealing those frames gives the records again."""
    transcript = _load(name)
    for side, key in (("client", "client_to_server"), ("server", "server_to_client")):
        records = [r for s in transcript["steps"] if s["side"] == side for r in s["records"]]
        data = [r for r in records if r["kind"] == REC_DATA]
        assert [r["counter"] for r in records] == [0] * (len(records) - len(data)) + list(
            range(len(data))
        )
        aead = b.Aead(bytes.fromhex(transcript[key]))
        aead.set_in_order()
        opened = aead.open_frames(b"".join(bytes.fromhex(r["hex"]) for r in data))
        assert opened.error is None and len(opened.records) == len(data)
        for record, got in zip(data, opened.records, strict=True):
            frames = [_json_frame(f) for f in record["frames"]]
            assert [RawFrame(*f[:4], bytes(f.data), f.ranges) for f in got.frames] == frames
            assert b.encode_frames(frames).hex() == record["plaintext"]
        plaintexts = [bytes.fromhex(r["plaintext"]) for r in data]
        sealed = b.Aead(bytes.fromhex(transcript[key])).seal(0, plaintexts)
        assert sealed.hex() == "".join(r["hex"] for r in data)


@pytest.mark.parametrize("name", NAMES)
def test_the_transcript_follows_from_the_spec_alone(name: str) -> None:
    """Section 8 without dtp: noiseprotocol with the listed keys reads and writes every
    handshake message to the same bytes and payloads; the parameters, the identity
    proof, the handshake hash, the keys and each DATA record's sealing are what the
    spec says."""
    pattern = PATTERN_OF[name]
    t = _load(name)
    spec = _SpecHandshake(pattern)
    for step in t["steps"]:
        for record in step["records"]:
            raw = bytes.fromhex(record["hex"])
            kind, flags, length, counter = struct.unpack_from("<BBHQ", raw)
            assert (flags, length) == (0, len(raw) - 12)
            if kind == REC_DATA:
                continue
            # 8.1: one message per record, the record kind its number, counter 0
            assert (kind, counter) == (spec.messages + 1, 0)
            assert spec.take(raw[12:]).hex() == record["payload"]
    assert spec.result() == {
        name: t[name] for name in ("handshake_hash", "client_to_server", "server_to_client")
    }
    # 8.2: the parameters
    client_params = msgpack.unpackb(bytes.fromhex(t["client_params"]))
    server_params = msgpack.unpackb(bytes.fromhex(t["server_params"]))
    defaults = {"v": 1, "md": 8 << 20, "msd": 4 << 20, "ms": 128, "it": 60000}
    assert server_params == defaults
    auth = t["auth"]
    if pattern == "IK":
        assert client_params == {**defaults, "auth": bytes.fromhex(auth["proof"])}
        assert auth["bound"] == _ik_binding().hex()
    else:
        assert client_params == defaults
        assert auth["bound"] == t["handshake_hash"]
    # 8.4: the proof's bytes, and where it travels
    message = AUTH_CONTEXT[pattern] + bytes.fromhex(auth["bound"])
    assert auth["message"] == message.hex()
    assert auth["digest"] == _personal_message_digest(message).hex()
    proof = bytes.fromhex(auth["proof"])
    assert proof == _proof(message) and len(proof) == 97
    Ed25519PublicKey.from_public_bytes(proof[65:]).verify(
        proof[1:65], bytes.fromhex(auth["digest"])
    )
    assert _sui_address(proof[65:]) == t["public"]["client_sui_address"]
    client_data = [
        r
        for s in t["steps"]
        if s["side"] == "client"
        for r in s["records"]
        if r["kind"] == REC_DATA
    ]
    first_data = client_data[0] if client_data else None
    assert (first_data is None) == (name == "IK-refusal")  # (refused, it sent none)
    if first_data is None:
        pass
    elif name == "XX-bad-proof":  # the AUTH carries the proof, its signature's end flipped
        bad = proof[:64] + bytes([proof[64] ^ 1]) + proof[65:]
        assert first_data["frames"][0] == _frame_json(RawFrame(0x0C, 1, 0, 0, bad))
        with pytest.raises(InvalidSignature):
            Ed25519PublicKey.from_public_bytes(bad[65:]).verify(
                bad[1:65], bytes.fromhex(auth["digest"])
            )
    elif pattern == "XX":  # the client's first DATA record opens with its AUTH
        assert first_data["frames"][0] == _frame_json(RawFrame(0x0C, 1, 0, 0, proof))
    # 4.1 / 8.3: each DATA record sealed with its direction's key and counter
    for side, key in (("client", "client_to_server"), ("server", "server_to_client")):
        data = [
            r
            for s in t["steps"]
            if s["side"] == side
            for r in s["records"]
            if r["kind"] == REC_DATA
        ]
        for counter, record in enumerate(data):
            sealed = _seal(bytes.fromhex(t[key]), counter, bytes.fromhex(record["plaintext"]))
            assert sealed.hex() == record["hex"]


def _vector_params(vector: dict[str, Any]) -> dict[str, Any]:
    params = dict(vector["params"])
    if "cid" in params:
        params["cid"] = bytes.fromhex(params["cid"])
    return params


def test_the_transport_parameter_vectors() -> None:
    """Section 8.2's vectors: the encoding this implementation writes for those
    settings, and what it reads back."""
    vectors = {v["name"]: v for v in load_vectors("transport-params")}
    client, server = _identities()
    configs = {
        "transport-params-default": ConnectionConfig(identity=server, is_client=False),
        "transport-params-client": ConnectionConfig(
            identity=client,
            is_client=True,
            connection_window=65536,
            stream_window=16384,
            max_streams=4,
            idle_timeout=30.0,
            connection_id=b"\x03" * 32,
            port=443,
        ),
    }
    assert set(vectors) == set(configs)
    for name, vector in vectors.items():
        params, encoded = _vector_params(vector), bytes.fromhex(vector["hex"])
        assert msgpack.packb(params) == encoded, name
        conn = Connection(configs[name], ephemeral_key=KEYS["client_ephemeral_private"], now=0.0)
        assert conn._transport_params() == encoded, name
        assert _parse_params(encoded, from_client=True) == params, name


def test_the_ik_binding_vector() -> None:
    (vector,) = load_vectors("ik-binding")
    prologue = bytes.fromhex(vector["prologue"])
    server_static = bytes.fromhex(vector["server_static"])
    ephemeral = bytes.fromhex(vector["client_ephemeral"])
    spec = hashlib.blake2s(
        PROTOCOL_NAMES["IK"]
        + struct.pack("<H", len(prologue))
        + prologue
        + server_static
        + ephemeral
    ).digest()
    assert spec.hex() == vector["binding"] == _ik_binding().hex()
    assert ephemeral == _x25519_public(KEYS["client_ephemeral_private"])
    hs = Handshake.initiator(
        KEYS["client_static_private"],
        KEYS["client_ephemeral_private"],
        remote_static=server_static,
        prologue=prologue,
    )
    assert hs.auth_binding.hex() == vector["binding"]


def test_the_identity_proof_vectors() -> None:
    """Section 8.4's vectors, derived from the text and made and checked by dtp.identity._noise."""
    vectors = {v["name"]: v for v in load_vectors("identity-proof")}
    assert set(vectors) == {"identity-proof-ik", "identity-proof-xx"}
    for name, v in vectors.items():
        pattern = name[-2:].upper()
        assert v["context"] == AUTH_CONTEXT[pattern].decode()
        message = v["context"].encode() + bytes.fromhex(v["bound"])
        assert v["message"] == message.hex()
        assert (
            v["digest"]
            == _personal_message_digest(message).hex()
            == (personal_message_digest(message).hex())
        )
        assert v["proof"] == _proof(message).hex() == _load(pattern)["auth"]["proof"]
        identity = HostIdentity.from_private_bytes(
            bytes.fromhex(v["ed25519_seed"]), KEYS["client_static_private"]
        )
        early = pattern == "IK"
        proof = make_auth_proof(identity, bytes.fromhex(v["bound"]), early=early)
        assert proof.hex() == v["proof"]
        assert verify_auth_proof(proof, bytes.fromhex(v["bound"]), early=early) == v["address"]
        assert v["address"] == _sui_address(proof[65:]) == identity.sui_address


def test_the_appendix_shows_the_transcripts() -> None:
    assert APPENDIX.read_text(encoding="utf-8") == render_appendix({p: _load(p) for p in GOLDEN}), (
        f"docs/protocol-vectors.md is out of date: run `{REGENERATE}`"
    )


# -- the appendix ----------------------------------------------------------------------------


#: The fields of each frame type in its slots a, b, c (section 3.1), for the appendix.
_FIELDS = {
    "PADDING": ("length",),
    "MAX_DATA": ("max",),
    "MAX_STREAM_DATA": ("stream", "max"),
    "RESET_STREAM": ("stream", "error code", "final size"),
    "STOP_SENDING": ("stream", "error code"),
    "MAX_STREAMS": ("max",),
    "STREAM": ("stream", "offset"),
    "STREAM_FIN": ("stream", "offset"),
    "CLOSE": ("code",),
    "CONTROL": ("kind",),
}


def _describe_frame(frame: dict[str, Any]) -> str:
    name = FRAME_NAMES[frame["type"]]
    data = bytes.fromhex(frame["data"])
    slots = (frame["a"], frame["b"], frame["c"])
    fields = _FIELDS.get(name, ())
    words = [name] + [
        f"{field} {value}" for field, value in zip(fields, slots[: len(fields)], strict=True)
    ]
    if name == "ACK":
        ranges = [f"{lo}" if lo == hi else f"{lo} to {hi}" for lo, hi in frame["ranges"]]
        plural = "s" if len(ranges) > 1 or " to " in ranges[0] else ""
        words.append(f"counter{plural} {' and '.join(ranges)}, ack delay {frame['c']} µs")
    if name == "CONTROL" and frame["a"] in (1, 2):
        words[-1] += " (AUTH)" if frame["a"] == 1 else " (ACCEPT)"
    if name == "CLOSE":
        words.append(f'reason "{data.decode()}"')
    elif frame["a"] == 1 and name == "CONTROL":
        words.append(f"the {len(data)}-byte identity proof")
    elif data:
        words.append(f'data "{data.decode()}"')
    elif name == "STREAM" and frame["b"] == 0:
        words.append("no data (announces the stream)")
    elif name in ("STREAM_FIN", "CONTROL", "DATAGRAM", "RECEIPT"):
        words.append("no data")
    return ", ".join(words)


def _describe_action(action: dict[str, Any], proof: bytes) -> str:
    do = action["do"]
    if do == "send":
        fin = ", then its end" if action["fin"] else ""
        data = bytes.fromhex(action["data"]).decode()
        return f'sends "{data}" on stream {action["stream"]}{fin}'
    if do == "open_stream":
        note = f", {action['note']}" if "note" in action else ""
        return f"opens a stream: ID {action['returns']}{note}"
    if do == "close":
        return f'closes with code {action["code"]} and reason "{action["reason"]}"'
    if do == "refuse":
        return f'refuses the client with code {action["code"]} and reason "{action["reason"]}"'
    if do == "corrupt_auth":
        return (
            "sends an identity proof whose signature's last byte (byte 64 of the proof) "
            f"has its lowest bit flipped: 0x{proof[64]:02x} becomes 0x{proof[64] ^ 1:02x}"
        )
    return "accepts the client"


def _params_text(payload: str) -> str:
    params = msgpack.unpackb(bytes.fromhex(payload))
    shown = {k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in params.items()}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def render_appendix(transcripts: dict[str, dict[str, Any]]) -> str:
    """docs/protocol-vectors.md for these transcripts."""
    first = transcripts["IK"]
    out = [
        "# DTP conformance transcripts",
        "",
        "This appendix to [protocol.md](protocol.md) (section 12) is normative: it shows two",
        "complete connections, one over Noise IK and one over Noise XX, then three that go",
        "wrong -- an IK client refused, an XX client whose identity proof fails, and an IK",
        "connection over a lossy carrier that loses a record -- every record in hex, with",
        "every key fixed, so that an implementation can be checked against it byte for byte.",
        "All use the default transport parameters and the prologue `DTP/1`. The same data is",
        "in `tests/golden/conformance_*.json`; `tests/protocol/test_conformance.py` replays",
        "each side of this implementation against it on both core backends, rebuilds the",
        "handshake from the spec alone, and checks that this page shows exactly that data",
        f"(`{REGENERATE}` rewrites them).",
        "",
        "What is normative is section 12 of protocol.md: each handshake record, and each DATA",
        "record *for its plaintext* (its sealing, counter and header). Which frames share a",
        "record, and when credit frames such as MAX_STREAMS go out, is this implementation's",
        "choice: a receiver accepts any packing.",
        "",
        "Over the reliable carrier nothing depends on the clock, so the step times only give",
        "the order; over the lossy one they drive the acknowledgement and loss timers",
        "(section 9 of protocol.md). A step is one side's turn: it takes every record the",
        "other side sent before (except those marked lost), does what the step says, and",
        "sends the records listed, in that order (one `data_to_send` of this implementation,",
        "or one datagram per record over the lossy carrier; over TCP records may be split",
        "across segments any way).",
        "",
        "## Keys",
        "",
        "Each private key is 32 consecutive byte values. The server's Ed25519 key signs",
        "nothing in a connection.",
        "",
        "| key | private | public |",
        "|---|---|---|",
    ]
    public = first["public"]
    rows = [
        ("client Ed25519 (Sui)", "client_ed25519_seed", "client_ed25519"),
        ("client X25519 static", "client_static_private", "client_static"),
        ("client X25519 ephemeral", "client_ephemeral_private", "client_ephemeral"),
        ("server X25519 static", "server_static_private", "server_static"),
        ("server X25519 ephemeral", "server_ephemeral_private", "server_ephemeral"),
    ]
    for label, private, pub in rows:
        out.append(f"| {label} | `{first['keys'][private]}` | `{public[pub]}` |")
    out += [
        "",
        f"The client's Sui address: `{public['client_sui_address']}`.",
        "",
    ]
    for number, (name, t) in enumerate(transcripts.items(), 1):
        pattern = t["pattern"]
        auth = t["auth"]
        bound = "IK binding" if pattern == "IK" else "handshake hash"
        out += [
            f"## {number}. {TITLES[name]}",
            "",
            f"Protocol name `{t['protocol_name']}`.",
            "",
            "| value | hex |",
            "|---|---|",
            f"| client parameters ({_params_text(t['client_params'])}) | `{t['client_params']}` |",
            f"| server parameters ({_params_text(t['server_params'])}) | `{t['server_params']}` |",
            *([f"| the IK binding | `{auth['bound']}` |"] if pattern == "IK" else []),
            f"| signed message (context \\|\\| {bound}) | `{auth['message']}` |",
            f"| its personal-message digest | `{auth['digest']}` |",
            f"| identity proof | `{auth['proof']}` |",
            f"| handshake hash | `{t['handshake_hash']}` |",
            f"| client → server key | `{t['client_to_server']}` |",
            f"| server → client key | `{t['server_to_client']}` |",
            "",
        ]
        for index, step in enumerate(t["steps"], 1):
            side, peer = step["side"], _other(step["side"])
            proof = bytes.fromhex(auth["proof"])
            does = "; ".join(_describe_action(a, proof) for a in step["actions"])
            if index == 1:
                does = "starts the handshake"
            elif "note" in step:
                does = step["note"]
            elif not does:
                does = "answers" if step["records"] else "sends nothing"
            out += [
                f"**Step {index}** ({step['now']:.2f} s), {side} → {peer}: the {side} {does}.",
                "",
            ]
            lost = set(step.get("lost", ()))
            for i, record in enumerate(step["records"]):
                kind = RECORD_NAMES[record["kind"]]
                if record["kind"] == REC_DATA:
                    frames = "; ".join(_describe_frame(f) for f in record["frames"])
                    what = (
                        f"counter {record['counter']}: {frames}. Plaintext `{record['plaintext']}`."
                    )
                elif record["payload"]:
                    what = f"payload `{record['payload']}`."
                else:
                    what = "empty payload."
                if i in lost:
                    what += " **Lost**: the carrier never delivers it."
                out += [f"- {kind}, {what}", "", "  ```", f"  {record['hex']}", "  ```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def regenerate() -> None:
    """Rewrite the golden transcripts and docs/protocol-vectors.md."""
    transcripts = {name: build(name) for name in GOLDEN}
    for name, transcript in transcripts.items():
        GOLDEN[name].write_text(json.dumps(transcript, indent=2) + "\n")
        print(f"wrote {GOLDEN[name]}")
    APPENDIX.write_text(render_appendix(transcripts), encoding="utf-8")
    print(f"wrote {APPENDIX}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    else:
        print(f"usage: {REGENERATE}", file=sys.stderr)
        sys.exit(2)


def _repacked(transcript: dict[str, Any], side: str, how: str) -> list[list[bytes]]:
    """``side``'s records of each step, its DATA frames packed anew: all of a step's in
    one record (``"joined"``) or each frame in a record of its own (``"split"``), sealed
    with the next counters (section 12: packing is the sender's choice)."""
    key = bytes.fromhex(transcript["client_to_server" if side == "client" else "server_to_client"])
    counter = 0
    flights = []
    for step in transcript["steps"]:
        if step["side"] != side:
            flights.append([])
            continue
        records = [bytes.fromhex(r["hex"]) for r in step["records"] if r["kind"] != REC_DATA]
        frames = [
            _core.encode_frames([_json_frame(f)])
            for r in step["records"]
            if r["kind"] == REC_DATA
            for f in r["frames"]
        ]
        plaintexts = [b"".join(frames)] if how == "joined" and frames else frames
        for plaintext in plaintexts:
            records.append(_seal(key, counter, plaintext))
            counter += 1
        flights.append(records)
    return flights


@pytest.mark.parametrize("how", ["joined", "split"])
@pytest.mark.parametrize("side", ["client", "server"])
@pytest.mark.parametrize("name", ["IK", "XX"])
def test_a_receiver_accepts_any_packing_of_the_frames(name: str, side: str, how: str) -> None:
    """Section 12: the other side's frames packed into records differently (all of a
    step in one record, or one frame per record) are read to the same effect."""
    transcript = _load(name)
    steps = transcript["steps"]
    flights = _repacked(transcript, _other(side), how)
    conn = _connection(side, name, 0.0)
    seen = _Received()
    for step, flight in zip(steps, flights, strict=True):
        if step["side"] == side:
            for action in step["actions"]:
                _act(conn, action)
            conn.data_to_send(step["now"])
        else:
            for record in flight:
                conn.receive_data(record, step["now"])
        seen.drain(conn)
    assert seen.streams == _sent_by(steps, _other(side))
    by_peer, code, reason = ENDINGS[name][side]
    term = seen.termination
    assert term is not None and (term.by_peer, term.error_code, term.reason) == (
        by_peer,
        code,
        reason,
    )
