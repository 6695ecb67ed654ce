"""``python -m dtp.graph gun``: two Gun peers in their own processes, the second
following the first over DTP sync (``--sync``, ``--peer``) -- a Gun peer's write at one
reaches a Gun peer of the other -- and the command line's refusals."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench import gun_peer
from tests.support.gun_wire import GunWireClient, node
from tests.support.paths import ROOT


def test_a_gun_write_crosses_dtp_sync_between_two_gun_peers(tmp_path: Path) -> None:
    key = tmp_path / "host.key"
    with gun_peer.EndpointProcess(
        "--db", str(tmp_path / "a.db"), "--sync", "127.0.0.1:0", "--key", str(key), "--no-site"
    ) as a:
        assert key.exists() and a.info["sync"][1] > 0 and len(a.info["key"]) == 64
        host, port = a.info["sync"]
        with (
            gun_peer.EndpointProcess(
                "--peer", f"{host}:{port}", "--peer-key", a.info["key"], "--no-site"
            ) as b,
            GunWireClient(a.url) as at_a,
            GunWireClient(b.url) as at_b,
        ):
            assert "put" not in at_b.get("room")  # follows "room" at b
            now = time.time() * 1000
            assert at_a.put({"room": node("room", {"topic": "across DTP"}, now)})["ok"]
            live = at_b.wait_for(lambda m: "put" in m and "@" not in m, timeout=20)
            assert live["put"]["room"]["topic"] == "across DTP"
            # and back: b's Gun peer writes, a's reads it
            assert at_b.put({"room": node("room", {"reply": "ok"}, now + 1)})["ok"]
            deadline = time.monotonic() + 20
            while "reply" not in at_a.get("room").get("put", {}).get("room", {}):
                assert time.monotonic() < deadline, "b's write did not reach a"
                time.sleep(0.1)
    # the same key file again: the same host
    with gun_peer.EndpointProcess("--sync", "127.0.0.1:0", "--key", str(key), "--no-site") as again:
        assert again.info["address"] == a.info["address"]


def _refused(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtp.graph", "gun", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_command_lines_are_refused(tmp_path: Path) -> None:
    out = _refused("--peer", "127.0.0.1:1")
    assert out.returncode == 2 and "--peer and --peer-key go together" in out.stderr
    out = _refused("--peer", "127.0.0.1:1", "--peer-key", "abcd")
    assert out.returncode == 2 and "64 hex digits" in out.stderr
    out = _refused("--listen", "nowhere")
    assert out.returncode == 2 and "HOST:PORT" in out.stderr
    out = _refused("--db", str(tmp_path))  # a directory, not a graph file
    assert out.returncode == 1 and "python -m dtp.graph:" in out.stderr
