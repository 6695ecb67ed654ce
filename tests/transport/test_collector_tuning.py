"""The first DTP server of a process sizes CPython's collector for serving
(dtp.transport._collector): what exists is frozen, the youngest threshold raised; a
program's own thresholds, a collector turned off and ``DTP_SERVER_GC=default`` are
left alone. Each case runs in a fresh process: the tuning is once per process, and the
suite's own process keeps the collector as it is (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.paths import ROOT

_PROBE = """
import asyncio, gc, json, sys
setup = sys.argv[1]
if setup == "own":
    gc.set_threshold(5000, 20, 20)
elif setup == "off":
    gc.disable()
import dtp.aio, dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.transport._collector import collector_tuned

identity = HostIdentity.generate()
before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
if sys.argv[2] == "blocking":
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    server.close()
else:
    async def main():
        server = await dtp.aio.start_server(lambda r, w: None, "127.0.0.1", 0, identity=identity)
        server.close()
        await server.wait_closed()
    asyncio.run(main())
after = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
print(json.dumps({"before": before, "after": after, "tuned": collector_tuned()}))
"""


def _probe(setup: str, api: str, gc_env: str | None) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DTP_SERVER_GC", None)
    if gc_env is not None:
        env["DTP_SERVER_GC"] = gc_env
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, setup, api],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_the_first_server_freezes_what_exists_and_raises_the_youngest_threshold(api: str) -> None:
    result = _probe("default", api, None)
    assert result["before"] == {"threshold": [700, 10, 10], "frozen": 0}
    after = result["after"]
    assert isinstance(after, dict)
    assert after["threshold"] == [10_000, 10, 10]
    # the modules and the program's state, some tens of thousands of objects
    assert after["frozen"] > 10_000
    assert result["tuned"] is True


@pytest.mark.parametrize(
    ("setup", "gc_env", "threshold"),
    [
        ("own", None, [5000, 20, 20]),  # the program's own thresholds are kept
        ("off", None, [700, 10, 10]),  # a collector turned off stays as it was
        ("default", "default", [700, 10, 10]),  # the environment says no
    ],
)
def test_a_program_s_own_collector_settings_are_left_alone(
    setup: str, gc_env: str | None, threshold: list[int]
) -> None:
    result = _probe(setup, "asyncio", gc_env)
    assert result["after"] == {"threshold": threshold, "frozen": 0}
    assert result["tuned"] is False
