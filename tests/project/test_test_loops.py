"""The suite's event loop switch (DTP_TEST_LOOP, tests/conftest.py): a test outside the
paths tests/uvloop.txt lists runs on asyncio's loop unless every test is to run on
uvloop; tests/transport/test_event_loop_choice.py checks a listed folder's side."""

from __future__ import annotations

import asyncio
import os

from dtp.eventloop import loop_name
from tests.support.paths import ROOT

TEST_LOOP = os.environ.get("DTP_TEST_LOOP", "asyncio")
UVLOOP_LISTED = ROOT / "tests" / "uvloop.txt"


def test_an_unlisted_test_runs_on_asyncio_unless_all_run_on_uvloop() -> None:
    assert os.environ.get("DTP_TEST_LOOP", "asyncio") == TEST_LOOP

    async def which() -> str:
        return loop_name()

    assert asyncio.run(which()) == ("uvloop" if TEST_LOOP == "uvloop" else "asyncio")


def test_the_listed_paths_are_test_folders_or_files() -> None:
    names = [line.split("#", 1)[0].strip() for line in UVLOOP_LISTED.read_text().splitlines()]
    listed = [name for name in names if name]
    assert "tests/transport" in listed
    for name in listed:
        path = ROOT / name
        assert name.startswith("tests/") and (path.is_dir() or path.suffix == ".py"), name
        assert path.exists(), name
