"""Benchmark workloads shared by bench/compare.py and the pytest-benchmark suites.

Each workload builds its inputs once and returns a :class:`Workload`: an operation of
ours and one of the peer we compare against, each doing ``units`` units of work per
call. A peer may instead be measured by a ``peer_rate`` function (e.g. ``openssl speed``,
which reports its own rate).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Callable

from bench.workload import Floor, Workload
from dtp.native import core as _core
from dtp.native import reference as _reference
from dtp.native.types import FRAME_STREAM, HamUpdate, RawFrame

MB = 1_000_000


# -- aead_seal_16k ---------------------------------------------------------------------


def _openssl_rate(seconds: float) -> float:
    """OpenSSL's own ChaCha20-Poly1305 speed on 16 KiB blocks, MB/s."""
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("the openssl command is needed for the aead_seal_16k peer")
    out = subprocess.run(
        [
            exe,
            "speed",
            "-seconds",
            str(max(1, round(seconds))),
            "-bytes",
            "16384",
            "-evp",
            "chacha20-poly1305",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"^chacha20-poly1305\s+([\d.]+)k", out, re.I | re.M)
    if match is None:
        raise RuntimeError(f"could not read openssl speed output: {out!r}")
    return float(match.group(1)) * 1000 / MB


def aead_seal_16k() -> Workload:
    aead = _core.NativeAead(os.urandom(32))
    data = os.urandom(64 * 16384)
    counter = [0]

    def ours() -> object:
        sealed, n = aead.seal_chunks(counter[0], data, 16384)
        counter[0] += n
        return sealed

    return Workload(
        "aead_seal_16k",
        "MB/s",
        len(data) / MB,
        ours,
        peer_rate=_openssl_rate,
        bar=0.7,
        note="C batch seal of 64 x 16 KiB records vs `openssl speed -evp chacha20-poly1305`",
    )


# -- aead_roundtrip_1k -----------------------------------------------------------------


def _noise_pair() -> tuple[object, object]:
    from noise.connection import Keypair, NoiseConnection

    initiator = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_BLAKE2s")
    responder = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_BLAKE2s")
    initiator.set_as_initiator()
    responder.set_as_responder()
    initiator.start_handshake()
    responder.start_handshake()
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    assert initiator.handshake_finished and responder.handshake_finished
    del Keypair
    return initiator, responder


def aead_roundtrip_1k() -> Workload:
    key = os.urandom(32)
    sender, receiver = _core.NativeAead(key), _core.NativeAead(key)
    data = os.urandom(64 * 1024)
    messages = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    counter = [0]

    def ours() -> object:
        sealed, n = sender.seal_chunks(counter[0], data, 1024)
        counter[0] += n
        result = receiver.open(sealed)
        assert len(result.records) == n and result.error is None
        return result

    initiator, responder = _noise_pair()

    def peer() -> object:
        out = [responder.decrypt(initiator.encrypt(m)) for m in messages]  # type: ignore[attr-defined]
        assert len(out) == len(messages)
        return out

    return Workload(
        "aead_roundtrip_1k",
        "MB/s",
        len(data) / MB,
        ours,
        peer,
        bar=Floor(2.0),
        note="seal+open of 1 KiB records in batches of 64 vs noiseprotocol encrypt+decrypt",
    )


# -- frame_decode_small ----------------------------------------------------------------


def _small_stream_frames(count: int) -> bytes:
    frames = []
    offset = 0
    for _ in range(count):
        # 1 type + 1 stream + 4 offset + 1 length + 57 data = 64 bytes per frame
        frames.append(RawFrame(FRAME_STREAM, 3, 1 << 20 | offset, 0, os.urandom(57)))
        offset += 57
    encoded = _reference.encode_frames(frames)
    assert len(encoded) == 64 * count, len(encoded)
    return encoded


def frame_decode_small() -> Workload:
    count = 1000
    buf = _small_stream_frames(count)

    def ours() -> object:
        batch = _core.native_decode_frames(buf)
        assert len(batch) == count
        return batch

    def peer() -> object:
        batch = _reference.decode_frames(buf)
        assert len(batch) == count
        return batch

    return Workload(
        "frame_decode_small",
        "frames/s",
        count,
        ours,
        peer,
        bar=20.0,
        note="decode of 64-byte STREAM frames, 1000 per call, vs the Python twin",
    )


# -- ham_merge -------------------------------------------------------------------------


def ham_conflict_batch(updates: int = 200_000, souls: int = 10_000, seed: int = 7) -> bytes:
    """``updates`` writes to 4 fields of each of ``souls`` souls, with conflicting
    states (several writes per field, some with equal states and different values)."""
    rng = random.Random(seed)
    out = []
    for i in range(updates):
        soul = b"soul/%d" % rng.randrange(souls)
        field = b"f%d" % rng.randrange(4)
        state = 1_700_000_000_000.0 + rng.randrange(1000)
        value = struct.pack(">I", rng.randrange(1 << 32)) + b"v%d" % i
        out.append(HamUpdate(soul, field, state, value))
    return _core.encode_ham_batch(out)


def ham_merge() -> Workload:
    n = 200_000
    batch = ham_conflict_batch(n)
    now = 1_800_000_000_000.0

    def ours() -> object:
        return _core.NativeHamGraph().merge(batch, now)

    def peer() -> object:
        return _reference.HamGraph().merge(batch, now)

    return Workload(
        "ham_merge",
        "merges/s",
        n,
        ours,
        peer,
        bar=20.0,
        note="200k conflicting updates over 10k souls, one encoded batch, vs the Python twin",
    )


ALL: dict[str, Callable[[], Workload]] = {
    "aead_seal_16k": aead_seal_16k,
    "aead_roundtrip_1k": aead_roundtrip_1k,
    "frame_decode_small": frame_decode_small,
    "ham_merge": ham_merge,
}


# The network rows live in bench/net.py (they import Workload from here).
from bench.graph_rows import (  # noqa: E402
    graph_put,
    graph_sync_100k,
    gun_relay_puts,
    ham_merge_vs_gun,
)
from bench.ledger_rows import ledger_open_close, receipt_verify  # noqa: E402
from bench.messaging_rows import (  # noqa: E402
    pubsub_fanout,
    rpc_pipelined,
    rpc_raw_frame,
    rpc_roundtrip,
    rpc_roundtrip_uvloop,
    rpc_roundtrip_zmq,
)
from bench.net import NET_ROWS  # noqa: E402

ALL.update(NET_ROWS)
ALL["receipt_verify"] = receipt_verify
ALL["ledger_open_close"] = ledger_open_close
ALL["graph_sync_100k"] = graph_sync_100k
ALL["graph_put"] = graph_put
ALL["ham_merge_vs_gun"] = ham_merge_vs_gun
ALL["gun_relay_puts"] = gun_relay_puts
ALL["rpc_roundtrip"] = rpc_roundtrip
ALL["rpc_roundtrip_zmq"] = rpc_roundtrip_zmq
ALL["rpc_roundtrip_uvloop"] = rpc_roundtrip_uvloop
ALL["rpc_raw_frame"] = rpc_raw_frame
ALL["rpc_pipelined"] = rpc_pipelined
ALL["pubsub_fanout"] = pubsub_fanout

from bench.udp_rows import udp_tunnel_pps  # noqa: E402

ALL["udp_tunnel_pps"] = udp_tunnel_pps

from bench.economics_rows import sponsored_cycle, subscribed_open_close  # noqa: E402

ALL.update(subscribed_open_close=subscribed_open_close, sponsored_cycle=sponsored_cycle)

from bench.ledger_carrier_rows import ledger_carrier_bulk  # noqa: E402

ALL["ledger_carrier_bulk"] = ledger_carrier_bulk

from bench.tunnel_rows import TUNNEL_ROWS  # noqa: E402

ALL.update(TUNNEL_ROWS)

from bench.collab_rows import collab_text_sync  # noqa: E402

ALL["collab_text_sync"] = collab_text_sync

from bench.hostid_rows import HOSTID_ROWS  # noqa: E402

ALL.update(HOSTID_ROWS)

from bench.churn_rows import churn_memory  # noqa: E402

ALL["churn_memory"] = churn_memory

from bench.idle_rows import connections_10k, idle_memory_10k  # noqa: E402

ALL["idle_memory_10k"] = idle_memory_10k
ALL["connections_10k"] = connections_10k

from bench.retention_rows import ledger_retention_bulk  # noqa: E402

ALL["ledger_retention_bulk"] = ledger_retention_bulk

from bench.sui_rows import SUI_ROWS  # noqa: E402

ALL.update(SUI_ROWS)

from bench.query_rows import graph_query_1m  # noqa: E402

ALL["graph_query_1m"] = graph_query_1m

from bench.pacing_rows import PACING_ROWS  # noqa: E402

ALL.update(PACING_ROWS)

from bench.web_rows import WEB_ROWS  # noqa: E402

ALL.update(WEB_ROWS)
