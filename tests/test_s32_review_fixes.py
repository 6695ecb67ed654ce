"""Second readers' finds in this session's fixes, each failing on the code before:

- a tunnel's refusal reason was cut at 1024 bytes mid-character (the client showed a
  U+FFFD) and a lone surrogate raised: cut as a CLOSE's reason is;
- ConnectionConfig took a keepalive_interval below 0 (the timer always due: a PING
  each time it was looked at), NaN or 0 (no keepalive, silently);
- the daemon demo started its daemons with the caller's DTP_PASSPHRASE, which, set but
  empty, is now refused: the demo failed with "did not start".
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from dtp.connection import ConnectionConfig
from dtp.daemon import demo_step
from dtp.daemon.tunnel import refusal
from dtp.keys import HostIdentity

ID = HostIdentity.generate()


def test_a_long_tunnel_refusal_is_cut_on_a_character_boundary() -> None:
    raw = refusal("é" * 600)  # 1200 bytes of 2-byte characters
    (length,) = struct.unpack(">H", raw[1:3])
    reason = raw[3:].decode("utf-8")  # (strict: a split character raises)
    assert length == len(raw) - 3 <= 1024
    assert reason == "é" * 512
    assert refusal("\ud800")[3:] == b"?"


@pytest.mark.parametrize("bad", [-1.0, 0, 0.0, math.nan, math.inf])
def test_a_bad_keepalive_interval_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="keepalive_interval"):
        ConnectionConfig(identity=ID, is_client=True, keepalive_interval=bad)


@pytest.mark.parametrize("bad", ["15", True])
def test_a_keepalive_interval_of_the_wrong_type_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="keepalive_interval"):
        ConnectionConfig(identity=ID, is_client=True, keepalive_interval=bad)  # type: ignore[arg-type]


def test_good_keepalive_intervals_are_taken() -> None:
    for good in (None, 0.25, 15, 3600.0):
        assert ConnectionConfig(identity=ID, is_client=True, keepalive_interval=good)


def test_the_demo_starts_its_daemons_without_the_callers_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str] | None] = []

    class Started(Exception):
        pass

    def popen(*args: object, **kwargs: object) -> None:
        seen.append(kwargs.get("env"))  # type: ignore[arg-type]
        raise Started

    monkeypatch.setenv("DTP_PASSPHRASE", "")
    monkeypatch.setattr(demo_step.subprocess, "Popen", popen)
    with pytest.raises(Started):
        demo_step._start(tmp_path / "provider.toml", [])
    assert len(seen) == 1 and seen[0] is not None
    assert "DTP_PASSPHRASE" not in seen[0] and "PATH" in seen[0]
