"""The sealed inbox's state file on its own (``InboxStateFile``): a snapshot and its
journal, on a real file, without an inbox around it."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtp.messaging._inbox_state_file import InboxStateFile, mark_seen
from dtp.messaging.errors import SealedError

HOST = "0x" + "ab" * 32


class Seen:
    """The inbox's side: its seen ids (oldest first) and how it marks them seen."""

    def __init__(self) -> None:
        self.ids: OrderedDict[bytes, float] = OrderedDict()

    def see(self, message_ids: list[bytes]) -> None:
        mark_seen(self.ids, message_ids)

    def file(self, path: Path, host: str = HOST) -> InboxStateFile:
        return InboxStateFile(path, host, self.ids)


def test_a_first_load_writes_a_snapshot_naming_the_host_and_has_no_cursor(tmp_path: Path) -> None:
    path = tmp_path / "inbox.json"
    assert Seen().file(path).load() is None
    state = json.loads(path.read_bytes())
    assert state["host"] == HOST and state["cursor"] is None and state["seen"] == []
    assert not path.with_suffix(".json.log").exists()  # no journal before the first line


def test_remembered_ids_and_cursor_are_appended_then_loaded_again(tmp_path: Path) -> None:
    path = tmp_path / "inbox.json"
    first = Seen()
    state_file = first.file(path)
    state_file.load()
    ids = [bytes([n]) * 16 for n in range(3)]
    first.see(ids)
    state_file.remember(ids, "cursor-1", cursor_moved=True)
    journal = path.with_suffix(".json.log").read_bytes().splitlines()
    assert journal[:3] == [m.hex().encode() for m in ids] and journal[3].startswith(b"c:")
    again = Seen()
    assert again.file(path).load() == "cursor-1"
    assert list(again.ids) == ids


def test_a_cursor_line_for_another_snapshot_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "inbox.json"
    seen = Seen()
    state_file = seen.file(path)
    state_file.load()
    state_file.remember([], "old", cursor_moved=True)
    stale = path.with_suffix(".json.log").read_bytes()
    state_file.save("new")  # a new snapshot, a new token
    path.with_suffix(".json.log").write_bytes(stale)  # as a stop before it was emptied
    assert Seen().file(path).load() == "new"


def test_another_hosts_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inbox.json"
    Seen().file(path).load()
    with pytest.raises(SealedError, match="belongs to host"):
        Seen().file(path, "0x" + "cd" * 32).load()


def test_a_torn_last_journal_line_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "inbox.json"
    seen = Seen()
    state_file = seen.file(path)
    state_file.load()
    state_file.remember([b"\x01" * 16], None)
    journal = path.with_suffix(".json.log")
    journal.write_bytes(journal.read_bytes() + b"0203")  # a line cut short by a stop
    again = Seen()
    again.file(path).load()
    assert list(again.ids) == [b"\x01" * 16]
    assert journal.read_bytes() == (b"\x01" * 16).hex().encode() + b"\n"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.lists(st.binary(min_size=16, max_size=16), max_size=3),
            st.one_of(st.none(), st.text(min_size=1, max_size=12)),
            st.booleans(),
        ),
        max_size=12,
    )
)
def test_what_was_remembered_or_saved_is_what_loads(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[list[bytes], str | None, bool]]
) -> None:
    """Whatever mix of appended lines and snapshots: a new load has every id seen, in
    order, and the last cursor written."""
    path = tmp_path_factory.mktemp("inbox") / "inbox.json"
    seen = Seen()
    state_file = seen.file(path)
    cursor = state_file.load()
    for ids, moved_to, snapshot in steps:
        seen.see(ids)
        moved = moved_to is not None and moved_to != cursor
        if moved:
            cursor = moved_to
        if snapshot:
            state_file.save(cursor)
        else:
            state_file.remember(ids, cursor, moved)
    again = Seen()
    assert again.file(path).load() == cursor
    assert list(again.ids) == list(seen.ids)
