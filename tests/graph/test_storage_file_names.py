"""The graph's SQLite persistence and value encoding (dtp.graph._persist,
dtp.graph.values): a database file reached by a second name, and values nested deeper
than put() writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dtp
from dtp.errors import LocalProtocolError, RemoteProtocolError
from dtp.graph import Graph
from dtp.graph._persist import GraphStorageError
from dtp.graph.values import decode_value, encode_value
from dtp.native.core import HamUpdate, encode_ham_batch


def _nested(depth: int, inner: object = 1) -> object:
    """``inner`` inside ``depth`` containers (lists and objects in turn)."""
    value = inner
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# -- a database file with two names ------------------------------------------------------------


def test_a_graph_file_with_a_second_name_is_refused(tmp_path: Path) -> None:
    """The lock (``<path>-lock``) and SQLite's ``-wal`` are found by the file's name: a
    hard link to an open graph's file got a second graph beside the first, from another
    process, which read the file without the first one's writes and wrote into a -wal
    of its own (its writes gone when the file was opened by its first name). The file
    is refused under either name while it has two."""
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    g = Graph(first)
    g.put("n", {"x": 1})
    g.flush()
    os.link(first, second)
    root = Path(dtp.__file__).resolve().parents[1]
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from dtp.graph import Graph\n"
            "from dtp.graph._persist import GraphStorageError\n"
            "try:\n"
            f"    g = Graph({str(second)!r})\n"
            "except GraphStorageError as exc:\n"
            "    print('refused:', exc)\n"
            "    sys.exit(0)\n"
            "g.put('n', {'y': 2})\n"
            "g.close()\n"
            "print('opened')\n",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        # (the child imports the dtp under test, not whichever the venv points at)
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("refused:"), child.stdout
    assert "hard links" in child.stdout
    g.close()
    for path in (first, second):
        with pytest.raises(GraphStorageError, match="hard links"):
            Graph(path)
    second.unlink()
    g = Graph(first)  # one name again: opens, with what was written
    assert g.get("n") == {"x": 1}
    g.close()


def test_a_closed_graph_file_with_a_second_name_is_refused_by_either(tmp_path: Path) -> None:
    """Not only beside an open graph: a -wal left by the first name (a crash) is not
    seen under the second, which then shows an older graph; refused typed, and the
    file is left as it was."""
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    g = Graph(first)
    g.put("n", {"x": 1})
    g.close()
    before = first.read_bytes()
    os.link(first, second)
    with pytest.raises(GraphStorageError, match="2 names"):
        Graph(second)
    assert first.read_bytes() == before
    assert not (tmp_path / "b.db-wal").exists()


# -- values nested deeper than put() writes ----------------------------------------------------


@pytest.mark.parametrize("depth", [65, 66, 200, 900])
def test_a_value_nested_past_64_levels_is_refused_when_decoded(depth: int) -> None:
    """decode_value refused depth only by a RecursionError (past about 1000 levels),
    while put() wrote at most 64 (format 1 wrote arrays and objects; format 2 writes
    neither, Gun holding none): a peer's value of a few hundred levels was read or
    refused as the caller's stack was shallow or deep."""
    value = _nested(depth)
    with pytest.raises(LocalProtocolError, match=r"no arrays|link"):
        encode_value(value)
    raw = json.dumps(value, separators=(",", ":")).encode()
    with pytest.raises(RemoteProtocolError, match="nested too deeply"):
        decode_value(raw)


def test_decoding_a_deep_value_does_not_depend_on_the_callers_stack() -> None:
    """The same bytes, decoded at the top and 150 frames down (a callback in a sync
    thread), gave a value at the top and a refusal below."""
    raw = b"[" * 900 + b"]" * 900

    def outcome(frames: int) -> str:
        if frames:
            return outcome(frames - 1)
        try:
            decode_value(raw)
        except RemoteProtocolError:
            return "refused"
        return "read"

    assert outcome(0) == outcome(150) == "refused"


@pytest.mark.parametrize("inner", [1, [], {}, [1], {"a": None}])
def test_legacy_values_read_back_down_to_the_depth_limit(inner: object) -> None:
    """What put() of format 1 wrote (arrays and objects, no value below 64 levels)
    reads back; anything deeper is refused from a peer, at every depth around the
    limit."""
    below = 1 if isinstance(inner, list | dict) and inner else 0  # (its items)
    for depth in range(60, 68):
        raw = json.dumps(_nested(depth, inner), separators=(",", ":")).encode()
        if depth + below <= 64:
            assert decode_value(raw) == _nested(depth, inner)
        else:
            with pytest.raises(RemoteProtocolError, match="nested too deeply"):
                decode_value(raw)


def test_get_leaves_a_peers_too_deep_value_out_and_keeps_the_rest() -> None:
    """A peer's field nested past the limit is left out of get() (as other values that
    are not graph values) and get_field raises the typed error; the node's other fields
    are untouched."""
    g = Graph()
    g.put("doc", {"name": "x"})
    deep = json.dumps(_nested(300)).encode()
    legacy = b'[1,{"a":2}]'  # (as format 1 wrote it: read, not written, by format 2)
    g.merge(encode_ham_batch([HamUpdate(b"doc", b"deep", 1.0, deep)]))
    g.merge(encode_ham_batch([HamUpdate(b"doc", b"ok", 1.0, legacy)]))
    assert g.get("doc") == {"name": "x", "ok": [1, {"a": 2}]}
    with pytest.raises(RemoteProtocolError, match="nested too deeply"):
        g.get_field("doc", "deep")
    g.close()
